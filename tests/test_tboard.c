// test_tboard.c: the TensorBoard writer's own parts (train/tboard.h), without a run: CRC-32C
// against its standard check value and values from the tensorboard package's Python
// implementation; the TFRecord framing of a written file walked by hand (lengths, masked
// CRCs, records in order); the resume cut-back (steps <= the kept step stay, later ones and
// a record a kill cut short go, the file is appended to, never restarted). That TensorBoard
// reads the events is tests/tensorboard.sh's job.
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../train/tboard.h"
#include "test.h"

// The TFRecord mask, written from its definition (not tboard.c's code).
static uint32_t mask(uint32_t c) {
    return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

// Walks the records of path; returns how many are well framed (-1 when one is not) and
// stores the byte size in *size. A record's step, when it has one, is the varint after the
// byte 0x10 (field 2, varint) that follows the 9-byte wall_time field: steps[] gets them.
static int walk(const char *path, long *size, int64_t *steps, int max) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)*size + 1);
    size_t n = fread(b, 1, (size_t)*size, f);
    fclose(f);
    int count = 0;
    size_t at = 0;
    while (at < n) {
        uint64_t len;
        uint32_t hc, dc;
        if (n - at < 16) goto bad;
        memcpy(&len, b + at, 8);
        memcpy(&hc, b + at + 8, 4);
        if (hc != mask(tb_crc32c(b + at, 8)) || len > n - at - 16) goto bad;
        memcpy(&dc, b + at + 12 + len, 4);
        if (dc != mask(tb_crc32c(b + at + 12, (size_t)len))) goto bad;
        const uint8_t *d = b + at + 12;
        int64_t step = 0;
        if (len > 10 && d[0] == 0x09 && d[9] == 0x10)
            for (int k = 10, sh = 0; k < (int)len; k++, sh += 7) {
                step |= (int64_t)(d[k] & 0x7F) << sh;
                if (!(d[k] & 0x80)) break;
            }
        if (count < max) steps[count] = step;
        count++;
        at += 16 + (size_t)len;
    }
    free(b);
    return count;
bad:
    free(b);
    return -1;
}

int main(void) {
    test_counts tc = {0, 0};
    // CRC-32C: the standard check value, then values of the tensorboard package's crc32c
    TEST_CHECK(&tc, tb_crc32c("123456789", 9) == 0xE3069283u, "check value: %08x",
               tb_crc32c("123456789", 9));
    TEST_CHECK(&tc, tb_crc32c("", 0) == 0, "empty: %08x", tb_crc32c("", 0));
    TEST_CHECK(&tc, tb_crc32c("brain.Event:2", 13) == 0x8B8B6CC1u, "file_version: %08x",
               tb_crc32c("brain.Event:2", 13));
    uint8_t bytes[768];
    for (int i = 0; i < 768; i++) bytes[i] = (uint8_t)i;
    TEST_CHECK(&tc, tb_crc32c(bytes, sizeof(bytes)) == 0x9FA293B3u, "0..255 x3: %08x",
               tb_crc32c(bytes, sizeof(bytes)));

    char dir[] = "/tmp/test_tboard_XXXXXX";
    TEST_CHECK(&tc, mkdtemp(dir) != NULL, "mkdtemp");
    char tbdir[64];
    snprintf(tbdir, sizeof(tbdir), "%s/tb", dir);
    tb_writer w;
    mm_err err;
    TEST_CHECK(&tc, tb_open(&w, tbdir, 0, &err) == 0 && w.created, "open: %s", err.msg);
    char line[128];
    for (int s = 1; s <= 5; s++) {
        int n =
            snprintf(line, sizeof(line), "{\"step\":%d,\"loss\":%.9g,\"gap\":null}\n", s, 1.0 / s);
        TEST_CHECK(&tc, tb_metrics_line(&w, line, (size_t)n) == 0, "line %d", s);
    }
    TEST_CHECK(&tc, tb_text(&w, "captions", 5, "| a | b |") == 0, "text");
    char path[sizeof(w.path)];
    snprintf(path, sizeof(path), "%s", w.path);
    TEST_CHECK(&tc, tb_close(&w) == 0 && tb_close(&w) == 0, "close twice");
    long size = 0;
    int64_t steps[16];
    int n = walk(path, &size, steps, 16);
    TEST_CHECK(&tc, n == 7 && steps[0] == 0 && steps[1] == 1 && steps[5] == 5 && steps[6] == 5,
               "written: %d records (want the version record, 5 steps and the text)", n);

    // resume at step 3: steps 4, 5 and the text of step 5 go; the same file is appended to
    TEST_CHECK(&tc, tb_open(&w, tbdir, 3, &err) == 0 && !w.created, "reopen: %s", err.msg);
    TEST_CHECK(&tc, strcmp(w.path, path) == 0, "appends to %s, not %s", path, w.path);
    n = snprintf(line, sizeof(line), "{\"step\":4,\"loss\":0.5}");
    TEST_CHECK(&tc, tb_metrics_line(&w, line, (size_t)n) == 0, "line 4 again");
    tb_close(&w);
    long size4 = 0;
    n = walk(path, &size4, steps, 16);
    TEST_CHECK(&tc, n == 5 && steps[3] == 3 && steps[4] == 4, "after the cut-back: %d records", n);

    // a record a kill cut short (its first 9 bytes) is dropped; whole records stay
    FILE *f = fopen(path, "ab");
    fwrite("\x20\0\0\0\0\0\0\0\x01", 1, 9, f);
    fclose(f);
    TEST_CHECK(&tc, tb_open(&w, tbdir, 100, &err) == 0, "reopen after a cut: %s", err.msg);
    tb_close(&w);
    n = walk(path, &size, steps, 16);
    TEST_CHECK(&tc, n == 5 && size == size4, "cut record dropped: %d records, %ld bytes (want %ld)",
               n, size, size4);

    // a directory that cannot be made: one line naming it
    snprintf(tbdir, sizeof(tbdir), "%s/tb/%s/x", dir, strrchr(path, '/') + 1);
    TEST_CHECK(&tc, tb_open(&w, tbdir, 0, &err) != 0 && strstr(err.msg, "tfevents") && !w.f,
               "open under a file: %s", err.msg);
    unlink(path);
    snprintf(tbdir, sizeof(tbdir), "%s/tb", dir);
    rmdir(tbdir);
    rmdir(dir);
    return test_finish(&tc);
}
