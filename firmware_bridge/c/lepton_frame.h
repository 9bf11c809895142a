/*
 * lepton_frame: the frame codec of firmware_bridge/PROTOCOL.md in portable C99.
 *
 * Decoded frame (little-endian):  version u8 | type u8 | seq u16 | length u16 | payload | crc32 u32
 * On the wire: COBS(decoded frame) followed by one 0x00.
 *
 * No allocation, no globals, no dependencies beyond <stddef.h> and <stdint.h>: the caller owns
 * every buffer. The streaming decoder takes one byte at a time (from a UART interrupt or a DMA
 * ring), decodes COBS on the fly, and drops whatever does not check out; it starts again after
 * the next zero byte, so garbage on the line never needs more than one frame to recover from.
 */
#ifndef LEPTON_FRAME_H
#define LEPTON_FRAME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LF_PROTOCOL_VERSION 1u
#define LF_HEADER_SIZE 6u
#define LF_CRC_SIZE 4u
#define LF_OVERHEAD (LF_HEADER_SIZE + LF_CRC_SIZE)
/* Longest COBS encoding of n bytes, and the most bytes a frame with p payload bytes takes on the wire. */
#define LF_COBS_MAX_ENCODED(n) ((n) + (n) / 254u + 1u)
#define LF_WIRE_MAX(p) (LF_COBS_MAX_ENCODED((p) + LF_OVERHEAD) + 1u)
/* Decoder buffer for frames of up to p payload bytes. */
#define LF_DECODER_BUFFER(p) ((p) + LF_OVERHEAD)

typedef enum {
    LF_OK = 0,
    LF_NONE = 1,          /* decoder: no frame yet, keep feeding */
    LF_FRAME = 2,         /* decoder: a valid frame is in *frame */
    LF_ERR_COBS = -1,     /* malformed COBS: a block cut short by a zero */
    LF_ERR_SHORT = -2,    /* fewer than LF_OVERHEAD bytes */
    LF_ERR_CRC = -3,      /* CRC mismatch */
    LF_ERR_VERSION = -4,  /* another protocol version */
    LF_ERR_LENGTH = -5,   /* the header's length disagrees with the bytes received */
    LF_ERR_OVERFLOW = -6, /* frame longer than the decoder's buffer (header fields still set) */
    LF_ERR_SPACE = -7     /* encoder: output buffer too small */
} lf_status;

typedef struct {
    uint8_t version;
    uint8_t type;
    uint16_t seq;
    uint16_t length;        /* payload bytes */
    const uint8_t *payload; /* points into the decoder's buffer: valid until the next feed */
    int header_valid;       /* on errors: whether type and seq were read (for a NAK) */
    int header_consistent;  /* the header's length matches the bytes received */
} lf_frame;

/* CRC-32 (IEEE 802.3, as zlib's crc32): start with crc = 0; chain calls for data in pieces. */
uint32_t lf_crc32(uint32_t crc, const uint8_t *data, size_t len);

/* COBS-encode len bytes; returns the encoded length, or 0 if cap is too small (never 0 otherwise). */
size_t lf_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);

/* Decode one frame's COBS bytes (no delimiter). LF_OK, LF_ERR_COBS or LF_ERR_SPACE. */
lf_status lf_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* Header, payload, CRC, COBS and the trailing zero into out. LF_OK or LF_ERR_SPACE. */
lf_status lf_frame_encode(uint8_t type, uint16_t seq, const uint8_t *payload, uint16_t len,
                          uint8_t *out, size_t cap, size_t *out_len);

/* Check a decoded frame: length, CRC, version, then the header's length field. */
lf_status lf_frame_parse(const uint8_t *decoded, size_t len, lf_frame *frame);

typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;       /* decoded bytes of the current frame (counted past cap on overflow) */
    uint8_t code;     /* code byte of the current COBS block */
    uint8_t left;     /* data bytes still to come in the current block */
    uint8_t started;  /* a block has begun in this frame */
} lf_decoder;

void lf_decoder_init(lf_decoder *d, uint8_t *buf, size_t cap);

/* Feed one byte. LF_NONE: nothing yet. LF_FRAME: *frame holds a valid frame. Negative: a frame was
 * dropped for that reason (*frame has its header when frame->header_valid). */
lf_status lf_decoder_feed(lf_decoder *d, uint8_t byte, lf_frame *frame);

const char *lf_status_name(lf_status status);

#ifdef __cplusplus
}
#endif

#endif /* LEPTON_FRAME_H */
