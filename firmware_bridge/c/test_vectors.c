/*
 * Host test of lepton_frame against the test vectors of PROTOCOL.md (also in test_vectors.txt):
 *   cc -std=c99 -Wall -Wextra -Werror lepton_frame.c test_vectors.c -o test_vectors
 *   ./test_vectors test_vectors.txt
 * Every "frame" vector must encode to its wire bytes and decode back; every "bad" vector must be
 * dropped for the stated reason; every "cobs" vector must encode and decode. Then 100 000 bytes of
 * pseudo-random garbage, followed by every good frame: the decoder must find each one again.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lepton_frame.h"

#define MAX_LINE 65536
#define MAX_BYTES 16384
#define DECODER_PAYLOAD 4096

static int failures = 0;
static int checked = 0;

static void fail(const char *name, const char *what)
{
    printf("FAIL %s: %s\n", name, what);
    failures++;
}

static int hex_value(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "-" is empty. Returns the byte count, or -1 on malformed hex. */
static long parse_hex(const char *text, uint8_t *out, size_t cap)
{
    size_t n = 0, len = strlen(text), i;
    if (strcmp(text, "-") == 0) return 0;
    if (len % 2 != 0 || len / 2 > cap) return -1;
    for (i = 0; i < len; i += 2) {
        int hi = hex_value(text[i]), lo = hex_value(text[i + 1]);
        if (hi < 0 || lo < 0) return -1;
        out[n++] = (uint8_t)(hi * 16 + lo);
    }
    return (long)n;
}

typedef struct {
    uint8_t wire[MAX_BYTES];
    size_t wire_len;
    uint8_t type;
    uint16_t seq;
    uint8_t payload[MAX_BYTES];
    size_t payload_len;
} good_frame;

static good_frame goods[64];
static size_t good_count = 0;

/* Feed bytes; return the status at the last byte, and count frames and errors on the way. */
static lf_status feed_all(lf_decoder *d, const uint8_t *data, size_t len, lf_frame *frame, int *frames, int *errors)
{
    lf_status st = LF_NONE;
    size_t i;
    for (i = 0; i < len; i++) {
        st = lf_decoder_feed(d, data[i], frame);
        if (st == LF_FRAME && frames) (*frames)++;
        if (st < 0 && errors) (*errors)++;
    }
    return st;
}

static int frame_matches(const lf_frame *f, const good_frame *g)
{
    return f->type == g->type && f->seq == g->seq && f->length == g->payload_len &&
           memcmp(f->payload, g->payload, g->payload_len) == 0;
}

static void check_frame(const char *name, char **fields)
{
    static uint8_t buf[MAX_BYTES], decoded[DECODER_PAYLOAD + LF_OVERHEAD];
    good_frame *g = &goods[good_count];
    size_t out_len = 0;
    lf_decoder d;
    lf_frame f;
    long n;
    g->type = (uint8_t)strtoul(fields[0], NULL, 16);
    g->seq = (uint16_t)strtoul(fields[1], NULL, 16);
    n = parse_hex(fields[2], g->payload, sizeof g->payload);
    if (n < 0) { fail(name, "bad payload hex"); return; }
    g->payload_len = (size_t)n;
    n = parse_hex(fields[3], g->wire, sizeof g->wire);
    if (n < 0) { fail(name, "bad wire hex"); return; }
    g->wire_len = (size_t)n;

    if (lf_frame_encode(g->type, g->seq, g->payload, (uint16_t)g->payload_len, buf, sizeof buf, &out_len) != LF_OK)
        fail(name, "encode failed");
    else if (out_len != g->wire_len || memcmp(buf, g->wire, out_len) != 0)
        fail(name, "encoded bytes differ from the vector");
    if (lf_frame_encode(g->type, g->seq, g->payload, (uint16_t)g->payload_len, buf, g->wire_len - 1, &out_len) != LF_ERR_SPACE)
        fail(name, "encode into a buffer one byte short did not report LF_ERR_SPACE");

    lf_decoder_init(&d, decoded, sizeof decoded);
    if (feed_all(&d, g->wire, g->wire_len, &f, NULL, NULL) != LF_FRAME || !frame_matches(&f, g))
        fail(name, "decoding the wire bytes did not give the frame back");
    good_count++;
    checked++;
}

static void check_bad(const char *name, char **fields)
{
    static uint8_t wire[MAX_BYTES], decoded[DECODER_PAYLOAD + LF_OVERHEAD];
    lf_decoder d;
    lf_frame f;
    lf_status st;
    long n = parse_hex(fields[1], wire, sizeof wire);
    if (n < 0) { fail(name, "bad wire hex"); return; }
    lf_decoder_init(&d, decoded, sizeof decoded);
    st = feed_all(&d, wire, (size_t)n, &f, NULL, NULL);
    if (strcmp(lf_status_name(st), fields[0]) != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "expected error %s, got %s", fields[0], lf_status_name(st));
        fail(name, msg);
    }
    checked++;
}

static void check_cobs(const char *name, char **fields)
{
    static uint8_t data[MAX_BYTES], enc[MAX_BYTES], out[MAX_BYTES];
    size_t out_len = 0, got;
    long nd = parse_hex(fields[0], data, sizeof data), ne = parse_hex(fields[1], enc, sizeof enc);
    if (nd < 0 || ne < 0) { fail(name, "bad hex"); return; }
    got = lf_cobs_encode(data, (size_t)nd, out, sizeof out);
    if (got != (size_t)ne || memcmp(out, enc, got) != 0) fail(name, "COBS encoding differs");
    if (lf_cobs_encode(data, (size_t)nd, out, (size_t)ne - 1) != 0) fail(name, "COBS encode ignored a short buffer");
    if (lf_cobs_decode(enc, (size_t)ne, out, sizeof out, &out_len) != LF_OK || out_len != (size_t)nd ||
        memcmp(out, data, out_len) != 0)
        fail(name, "COBS decoding differs");
    checked++;
}

static void check_resync(void)
{
    static uint8_t decoded[DECODER_PAYLOAD + LF_OVERHEAD];
    uint32_t state = 12345u;
    lf_decoder d;
    lf_frame f;
    size_t i, k;
    int errors = 0;
    lf_decoder_init(&d, decoded, sizeof decoded);
    for (i = 0; i < 100000u; i++) {
        state = state * 1664525u + 1013904223u;
        feed_all(&d, (const uint8_t *)&(uint8_t){(uint8_t)(state >> 24)}, 1, &f, NULL, &errors);
    }
    lf_decoder_feed(&d, 0, &f); /* end whatever garbage frame is open */
    for (k = 0; k < good_count; k++) {
        if (feed_all(&d, goods[k].wire, goods[k].wire_len, &f, NULL, NULL) != LF_FRAME || !frame_matches(&f, &goods[k]))
            fail("resync", "a good frame after garbage was not decoded");
    }
    /* A frame longer than the buffer is dropped as overflow, with its header still readable. */
    {
        static uint8_t big[DECODER_PAYLOAD + 64], wire[LF_WIRE_MAX(DECODER_PAYLOAD + 64)];
        size_t wire_len = 0;
        memset(big, 0x5a, sizeof big);
        lf_frame_encode(0x11, 0x4242, big, (uint16_t)sizeof big, wire, sizeof wire, &wire_len);
        if (feed_all(&d, wire, wire_len, &f, NULL, NULL) != LF_ERR_OVERFLOW || !f.header_valid || f.seq != 0x4242)
            fail("overflow", "an over-long frame was not reported as overflow with its header");
        if (feed_all(&d, goods[0].wire, goods[0].wire_len, &f, NULL, NULL) != LF_FRAME)
            fail("overflow", "no recovery after an over-long frame");
    }
    printf("resync: %d garbage frames dropped, then %u good frames decoded\n", errors, (unsigned)good_count);
    checked++;
}

int main(int argc, char **argv)
{
    static char line[MAX_LINE];
    FILE *f;
    if (argc != 2) {
        fprintf(stderr, "usage: %s test_vectors.txt\n", argv[0]);
        return 2;
    }
    f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    while (fgets(line, sizeof line, f)) {
        char *fields[8];
        int n = 0;
        char *tok = strtok(line, " \t\r\n");
        while (tok && n < 8) {
            fields[n++] = tok;
            tok = strtok(NULL, " \t\r\n");
        }
        if (n == 0 || fields[0][0] == '#') continue;
        if (strcmp(fields[0], "frame") == 0 && n == 6) check_frame(fields[1], fields + 2);
        else if (strcmp(fields[0], "bad") == 0 && n == 4) check_bad(fields[1], fields + 2);
        else if (strcmp(fields[0], "cobs") == 0 && n == 4) check_cobs(fields[1], fields + 2);
        else fail(fields[0], "unknown line in the vector file");
    }
    fclose(f);
    if (good_count == 0) fail("vectors", "no frame vectors found");
    else check_resync();
    printf("%d checks, %d failures\n", checked, failures);
    return failures ? 1 : 0;
}
