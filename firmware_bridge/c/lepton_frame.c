/* lepton_frame.c: see lepton_frame.h and firmware_bridge/PROTOCOL.md. Portable C99. */
#include "lepton_frame.h"

uint32_t lf_crc32(uint32_t crc, const uint8_t *data, size_t len)
{
    size_t i;
    int bit;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        for (bit = 0; bit < 8; bit++) {
            crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
        }
    }
    return ~crc;
}

size_t lf_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    size_t read = 0, write = 1, code_at = 0;
    uint8_t code = 1;
    if (cap == 0) {
        return 0;
    }
    while (read < len) {
        if (in[read] == 0) {
            out[code_at] = code;
            code = 1;
            code_at = write++;
            if (write > cap) {
                return 0;
            }
            read++;
            continue;
        }
        if (write >= cap) {
            return 0;
        }
        out[write++] = in[read++];
        code++;
        if (code == 0xFF) {
            out[code_at] = code;
            code = 1;
            if (read == len) {
                return write; /* a full block at the very end needs no empty block after it */
            }
            code_at = write++;
            if (write > cap) {
                return 0;
            }
        }
    }
    out[code_at] = code;
    return write;
}

lf_status lf_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    size_t i = 0, n = 0, k;
    while (i < len) {
        uint8_t code = in[i];
        if (code == 0 || i + code > len) {
            return LF_ERR_COBS;
        }
        for (k = 1; k < code; k++) {
            if (in[i + k] == 0) {
                return LF_ERR_COBS;
            }
            if (n >= cap) {
                return LF_ERR_SPACE;
            }
            out[n++] = in[i + k];
        }
        i += code;
        if (code != 0xFF && i < len) {
            if (n >= cap) {
                return LF_ERR_SPACE;
            }
            out[n++] = 0;
        }
    }
    *out_len = n;
    return LF_OK;
}

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* COBS-encode a frame given in pieces (header, payload, crc) without assembling it first. */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t write;
    size_t code_at;
    uint8_t code;
    uint8_t closed_full; /* the last byte closed a full block (and opened an empty one) */
    uint8_t full;        /* out of room */
} cobs_writer;

static void cw_open_block(cobs_writer *w)
{
    w->code = 1;
    w->code_at = w->write++; /* its room is checked when the code is stored */
}

static void cw_close_block(cobs_writer *w)
{
    if (w->code_at >= w->cap) {
        w->full = 1;
        return;
    }
    w->out[w->code_at] = w->code;
}

static void cw_byte(cobs_writer *w, uint8_t b)
{
    if (w->full) {
        return;
    }
    w->closed_full = 0;
    if (b == 0) {
        cw_close_block(w);
        cw_open_block(w);
        return;
    }
    if (w->write >= w->cap) {
        w->full = 1;
        return;
    }
    w->out[w->write++] = b;
    if (++w->code == 0xFF) {
        cw_close_block(w);
        cw_open_block(w);
        w->closed_full = 1;
    }
}

lf_status lf_frame_encode(uint8_t type, uint16_t seq, const uint8_t *payload, uint16_t len,
                          uint8_t *out, size_t cap, size_t *out_len)
{
    uint8_t head[LF_HEADER_SIZE];
    uint8_t tail[LF_CRC_SIZE];
    uint32_t crc;
    size_t i;
    cobs_writer w;

    head[0] = LF_PROTOCOL_VERSION;
    head[1] = type;
    put_u16(head + 2, seq);
    put_u16(head + 4, len);
    crc = lf_crc32(0, head, sizeof head);
    crc = lf_crc32(crc, payload, len);
    for (i = 0; i < LF_CRC_SIZE; i++) {
        tail[i] = (uint8_t)(crc >> (8 * i));
    }
    if (cap < 2) {
        return LF_ERR_SPACE;
    }
    w.out = out;
    w.cap = cap - 1; /* keep room for the delimiter */
    w.write = 1;
    w.code_at = 0;
    w.code = 1;
    w.closed_full = 0;
    w.full = 0;
    for (i = 0; i < sizeof head; i++) {
        cw_byte(&w, head[i]);
    }
    for (i = 0; i < len; i++) {
        cw_byte(&w, payload[i]);
    }
    for (i = 0; i < sizeof tail; i++) {
        cw_byte(&w, tail[i]);
    }
    if (w.full) {
        return LF_ERR_SPACE;
    }
    if (w.closed_full) {
        w.write--; /* a full block at the very end needs no empty block after it */
    } else {
        cw_close_block(&w);
        if (w.full) {
            return LF_ERR_SPACE;
        }
    }
    out[w.write++] = 0;
    *out_len = w.write;
    return LF_OK;
}

lf_status lf_frame_parse(const uint8_t *decoded, size_t len, lf_frame *frame)
{
    uint32_t crc;
    frame->header_valid = 0;
    frame->header_consistent = 0;
    if (len < LF_OVERHEAD) {
        return LF_ERR_SHORT;
    }
    frame->version = decoded[0];
    frame->type = decoded[1];
    frame->seq = get_u16(decoded + 2);
    frame->length = get_u16(decoded + 4);
    frame->payload = decoded + LF_HEADER_SIZE;
    frame->header_valid = 1;
    frame->header_consistent = (size_t)frame->length == len - LF_OVERHEAD;
    crc = lf_crc32(0, decoded, len - LF_CRC_SIZE);
    if (crc != get_u32(decoded + len - LF_CRC_SIZE)) {
        return LF_ERR_CRC;
    }
    if (frame->version != LF_PROTOCOL_VERSION) {
        return LF_ERR_VERSION;
    }
    if (!frame->header_consistent) {
        return LF_ERR_LENGTH;
    }
    return LF_FRAME;
}

void lf_decoder_init(lf_decoder *d, uint8_t *buf, size_t cap)
{
    d->buf = buf;
    d->cap = cap;
    d->len = 0;
    d->code = 0;
    d->left = 0;
    d->started = 0;
}

static void decoder_put(lf_decoder *d, uint8_t b)
{
    if (d->len < d->cap) {
        d->buf[d->len] = b;
    }
    d->len++; /* past cap: overflow, reported at the end of the frame */
}

lf_status lf_decoder_feed(lf_decoder *d, uint8_t byte, lf_frame *frame)
{
    lf_status status;
    size_t len;
    if (byte != 0) {
        if (d->left == 0) { /* a code byte: a new block */
            if (d->started && d->code != 0xFF) {
                decoder_put(d, 0);
            }
            d->code = byte;
            d->left = (uint8_t)(byte - 1);
            d->started = 1;
        } else {
            decoder_put(d, byte);
            d->left--;
        }
        return LF_NONE;
    }
    /* The delimiter: the frame is complete (or cut short). */
    len = d->len;
    status = LF_NONE;
    frame->header_valid = 0;
    frame->header_consistent = 0;
    if (!d->started) {
        status = LF_NONE; /* an empty frame: two zeros in a row */
    } else if (d->left != 0) {
        status = LF_ERR_COBS;
    } else if (len > d->cap) {
        status = LF_ERR_OVERFLOW;
        if (d->cap >= LF_HEADER_SIZE) {
            frame->version = d->buf[0];
            frame->type = d->buf[1];
            frame->seq = get_u16(d->buf + 2);
            frame->length = get_u16(d->buf + 4);
            frame->payload = 0;
            frame->header_valid = 1;
            frame->header_consistent = 1;
        }
    } else {
        status = lf_frame_parse(d->buf, len, frame);
    }
    d->len = 0;
    d->code = 0;
    d->left = 0;
    d->started = 0;
    return status;
}

const char *lf_status_name(lf_status status)
{
    switch (status) {
    case LF_OK: return "ok";
    case LF_NONE: return "none";
    case LF_FRAME: return "frame";
    case LF_ERR_COBS: return "cobs";
    case LF_ERR_SHORT: return "short";
    case LF_ERR_CRC: return "crc";
    case LF_ERR_VERSION: return "version";
    case LF_ERR_LENGTH: return "length";
    case LF_ERR_OVERFLOW: return "overflow";
    case LF_ERR_SPACE: return "space";
    }
    return "unknown";
}
