// test_data_image.c: data/image.c writes the images people look at, so it is checked the way a
// viewer would: PNGs decoded by libpng itself must give back the exact bytes, the grid must put
// every sample where its index says, the float-to-byte map must invert the loader's, and a path
// that cannot be written must give one line naming it and leave nothing behind.
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "../data/data.h"
#include "test.h"

// Decodes path into a malloc'd (h, w, c) buffer with libpng's simplified API; NULL on failure.
static uint8_t *png_read(const char *path, int *h, int *w, int *c) {
    png_image im;
    memset(&im, 0, sizeof(im));
    im.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&im, path)) return NULL;
    *c = PNG_IMAGE_PIXEL_CHANNELS(im.format);
    // keep the stored layout: grey, RGB or RGBA, 8-bit, no colour conversion
    *h = (int)im.height, *w = (int)im.width;
    uint8_t *buf = malloc(PNG_IMAGE_SIZE(im));
    if (!png_image_finish_read(&im, NULL, buf, 0, NULL)) {
        free(buf);
        return NULL;
    }
    return buf;
}

static void test_png(test_counts *tc, const char *root) {
    const int shapes[3][3] = {{17, 23, 3}, {5, 64, 1}, {40, 9, 4}};
    for (int k = 0; k < 3; k++) {
        int h = shapes[k][0], w = shapes[k][1], c = shapes[k][2];
        size_t n = (size_t)h * w * c;
        uint8_t *img = malloc(n);
        for (size_t i = 0; i < n; i++) img[i] = (uint8_t)(i * 37 + (i >> 7) * 11);
        char path[4096];
        snprintf(path, sizeof(path), "%s/img%d.png", root, k);
        mm_err err;
        TEST_CHECK(tc, data_png_write(path, img, h, w, c, &err) == 0, "write: %s", err.msg);
        int rh, rw, rc;
        uint8_t *back = png_read(path, &rh, &rw, &rc);
        TEST_CHECK(tc, back && rh == h && rw == w && rc == c && memcmp(back, img, n) == 0,
                   "%dx%dx%d read back identical", h, w, c);
        char tmp[4200];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        TEST_CHECK(tc, access(tmp, F_OK) != 0, "no temporary file left");
        free(back);
        free(img);
    }

    // rewriting replaces the file whole
    uint8_t a[4 * 4 * 3], b[4 * 4 * 3];
    memset(a, 10, sizeof(a));
    memset(b, 200, sizeof(b));
    char path[4096];
    snprintf(path, sizeof(path), "%s/again.png", root);
    mm_err err;
    int rh, rw, rc;
    TEST_CHECK(tc, data_png_write(path, a, 4, 4, 3, &err) == 0 &&
                       data_png_write(path, b, 4, 4, 3, &err) == 0,
               "rewrite: %s", err.msg);
    uint8_t *back = png_read(path, &rh, &rw, &rc);
    TEST_CHECK(tc, back && memcmp(back, b, sizeof(b)) == 0, "rewritten image read back");
    free(back);

    // errors: one line, naming the path
    const char *bad = "/nonexistent_dir_mmtrain/x.png";
    TEST_CHECK(tc, data_png_write(bad, a, 4, 4, 3, &err) == -1 && strstr(err.msg, bad) &&
                       !strchr(err.msg, '\n'),
               "unwritable path: '%s'", err.msg);
    snprintf(path, sizeof(path), "%s/two.png", root);
    TEST_CHECK(tc, data_png_write(path, a, 4, 4, 2, &err) == -1 && strstr(err.msg, path) &&
                       access(path, F_OK) != 0,
               "2 channels refused: '%s'", err.msg);
    TEST_CHECK(tc, data_png_write(path, a, 0, 4, 3, &err) == -1, "empty image refused");
}

static void test_to_u8(test_counts *tc) {
    // the loader stores u / 127.5 - 1: every byte must come back
    int bad = 0;
    for (int u = 0; u < 256; u++) {
        float v = (float)u / 127.5f - 1.0f;
        uint8_t o;
        data_image_to_u8(&v, 1, &o);
        bad += o != u;
    }
    TEST_CHECK(tc, bad == 0, "%d bytes not recovered from the loader's floats", bad);
    float v[7] = {-1.0f, 1.0f, -3.0f, 7.0f, NAN, 0.0f, -0.998f};
    uint8_t o[7];
    data_image_to_u8(v, 7, o);
    // 0 -> 127.5 rounds up; -0.998 -> 0.255 rounds down
    TEST_CHECK(tc, o[0] == 0 && o[1] == 255 && o[2] == 0 && o[3] == 255 && o[4] == 0 &&
                       o[5] == 128 && o[6] == 0,
               "clipping and rounding: %d %d %d %d %d %d %d", o[0], o[1], o[2], o[3], o[4], o[5],
               o[6]);
}

static void test_grid(test_counts *tc) {
    enum { N = 5, H = 3, W = 4, C = 3, COLS = 3, PAD = 2 };
    uint8_t imgs[N * H * W * C];
    for (int k = 0; k < N; k++)
        for (int i = 0; i < H * W * C; i++) imgs[k * H * W * C + i] = (uint8_t)(k * 40 + i % 7);
    int gh, gw;
    data_image_grid(imgs, N, H, W, C, COLS, PAD, NULL, &gh, &gw);
    TEST_CHECK(tc, gh == 2 * H + 3 * PAD && gw == 3 * W + 4 * PAD, "grid size %dx%d", gh, gw);
    uint8_t *g = malloc((size_t)gh * gw * C);
    data_image_grid(imgs, N, H, W, C, COLS, PAD, g, &gh, &gw);
    int bad = 0;
    for (int y = 0; y < gh; y++)
        for (int x = 0; x < gw; x++)
            for (int ch = 0; ch < C; ch++) {
                int want = 128;  // padding, and the empty sixth cell
                int r = (y - PAD) / (H + PAD), cy = (y - PAD) % (H + PAD);
                int col = (x - PAD) / (W + PAD), cx = (x - PAD) % (W + PAD);
                int k = r * COLS + col;
                if (y >= PAD && x >= PAD && cy < H && cx < W && k < N)
                    want = imgs[((k * H + cy) * W + cx) * C + ch];
                bad += g[((size_t)y * gw + x) * C + ch] != want;
            }
    TEST_CHECK(tc, bad == 0, "%d grid bytes misplaced", bad);
    free(g);
    data_image_grid(imgs, 2, H, W, C, 8, 0, NULL, &gh, &gw);
    TEST_CHECK(tc, gh == H && gw == 2 * W, "more columns than images: %dx%d", gh, gw);
}

static void rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[4096];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

// ---------------------------------------------------------------------------------------
// Issue 16, item 12: a decompression bomb. A PNG whose header says w x h (16-bit RGBA)
// with a few bytes of pixel data: the header alone must be refused, before any allocation.
static void put_chunk(uint8_t *buf, size_t *n, const char *type, const uint8_t *data,
                      uint32_t len) {
    uint8_t *p = buf + *n;
    p[0] = (uint8_t)(len >> 24), p[1] = (uint8_t)(len >> 16), p[2] = (uint8_t)(len >> 8),
    p[3] = (uint8_t)len;
    memcpy(p + 4, type, 4);
    if (len) memcpy(p + 8, data, len);
    uLong crc = crc32(crc32(0L, Z_NULL, 0), p + 4, len + 4);
    p[8 + len] = (uint8_t)(crc >> 24), p[9 + len] = (uint8_t)(crc >> 16),
          p[10 + len] = (uint8_t)(crc >> 8), p[11 + len] = (uint8_t)crc;
    *n += 12 + len;
}

// Writes the bomb's bytes into buf (at least 2048 bytes); returns its length.
static size_t bomb_png(uint8_t *buf, uint32_t w, uint32_t h) {
    size_t n = 0;
    memcpy(buf, "\x89PNG\r\n\x1a\n", 8);
    n = 8;
    uint8_t ihdr[13] = {(uint8_t)(w >> 24),
                        (uint8_t)(w >> 16),
                        (uint8_t)(w >> 8),
                        (uint8_t)w,
                        (uint8_t)(h >> 24),
                        (uint8_t)(h >> 16),
                        (uint8_t)(h >> 8),
                        (uint8_t)h,
                        16,
                        6,
                        0,
                        0,
                        0};
    put_chunk(buf, &n, "IHDR", ihdr, 13);
    uint8_t zeros[1024] = {0}, z[1200];
    uLongf zn = sizeof(z);
    compress(z, &zn, zeros, sizeof(zeros));
    put_chunk(buf, &n, "IDAT", z, (uint32_t)zn);
    put_chunk(buf, &n, "IEND", NULL, 0);
    return n;
}

static void test_bomb(test_counts *tc, const char *root) {
    uint8_t buf[2048];
    size_t n = bomb_png(buf, 11585, 11585);
    data_image_src src;
    mm_err err;
    double t0 = mm_now();
    int rc = data_image_decode(buf, n, &src, &err);
    TEST_CHECK(tc,
               rc == -1 && strstr(err.msg, "11585 x 11585") && strstr(err.msg, "64 Mpixel") &&
                   !strchr(err.msg, '\n'),
               "bomb PNG refused from its header: %s", rc ? err.msg : "decoded");
    TEST_CHECK(tc, mm_now() - t0 < 0.5, "refused at once (%.2f s)", mm_now() - t0);
    if (rc == 0) data_image_src_free(&src);
    // through the file loader too, and the regression input of the fuzz harness is this file
    char path[4096];
    snprintf(path, sizeof(path), "%s/bomb.png", root);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(buf, 1, n, f);
        fclose(f);
    }
    uint8_t out[4 * 4 * 3];
    TEST_CHECK(tc, data_image_load(path, 4, 4, 3, out, &err) == -1 && strstr(err.msg, "Mpixel"),
               "bomb PNG file refused: %s", err.msg);
    // just under the limit (8192 x 8192 = 64 Mpixel) passes the header check and then fails
    // on its missing pixel data, not on its size
    n = bomb_png(buf, 8192, 8192);
    rc = data_image_decode(buf, n, &src, &err);
    TEST_CHECK(tc, rc == -1 && !strstr(err.msg, "Mpixel"), "64 Mpixel is allowed: %s", err.msg);
    n = bomb_png(buf, 8193, 8192);
    rc = data_image_decode(buf, n, &src, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "Mpixel"), "64 Mpixel + 1 row refused: %s", err.msg);
}

// Issue 16, item 13: a FIFO as an image, audio or caption path is refused at once (no writer
// ever comes; an open that waits for one would hang pack forever). Checked in a child with
// an alarm so that a hang is a failure, not a stuck test.
static void test_fifo(test_counts *tc, const char *root) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/fifo", root);
    TEST_CHECK(tc, mkfifo(path, 0644) == 0, "mkfifo");
    for (int kind = 0; kind < 3; kind++) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid == 0) {
            alarm(10);
            mm_err err;
            int rc;
            if (kind == 0) {
                uint8_t out[4 * 4 * 3];
                rc = data_image_load(path, 4, 4, 3, out, &err);
            } else if (kind == 1) {
                data_media *m = data_media_new();
                int16_t pcm[64];
                data_audio_info info;
                rc = data_audio_load(m, path, 8000, 64, pcm, &info, &err);
                data_media_free(m);
            } else {
                char text[17];
                int tn;
                rc = data_caption_load(path, 16, text, &tn, &err);
            }
            _exit(rc == -1 && strstr(err.msg, "not a regular file") ? 0 : 1);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        TEST_CHECK(tc, WIFEXITED(st) && WEXITSTATUS(st) == 0, "FIFO as %s refused at once (%s %d)",
                   kind == 0   ? "image"
                   : kind == 1 ? "audio"
                               : "caption file",
                   WIFSIGNALED(st) ? "signal" : "exit",
                   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
    unlink(path);
}

int main(void) {
    test_counts tc = {0, 0};
    char root[] = "/tmp/mmtrain_test_image_XXXXXX";
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    test_png(&tc, root);
    test_to_u8(&tc);
    test_grid(&tc);
    test_bomb(&tc, root);
    test_fifo(&tc, root);
    rm_dir(root);
    return test_finish(&tc);
}
