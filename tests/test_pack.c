// test_pack.c: the pieces of `mmdata pack` checked against files this test writes itself
// through the real libraries (libpng, TurboJPEG, libsndfile): decoded pixels and samples
// match what was written (exactly where the format is lossless and nothing is resized), the
// resize rule matches an independent computation (numerical integration of the box filter,
// the interpolation formula written out), audio keeps its frequency through resampling,
// and the UTF-8 validator, JSON-lines and CSV parsers accept and refuse what they should,
// naming the line and column.
//
// `test_pack --fixtures DIR` only writes a few image files for tests/pack_cli.sh.
#include <ftw.h>
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <sndfile.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "data/data.h"
#include "data/data_internal.h"
#include "test.h"

static char tmpdir[64];

static const char *tpath(const char *name) {
    static char p[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof(p[k]), "%s/%s", tmpdir, name);
    return p[k];
}

static int rm_cb(const char *p, const struct stat *s, int f, struct FTW *w) {
    (void)s, (void)f, (void)w;
    return remove(p);
}

static void write_bytes(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    MM_CHECK(f, "cannot write %s", path);
    if (n) MM_CHECK(fwrite(buf, 1, n, f) == n, "short write %s", path);
    fclose(f);
}

// ---------------------------------------------------------------------------------------
// Writers through the libraries.

// vals (h, w, c) sample values; c from the colour type; depth 8 or 16.
static void write_png(const char *path, int w, int h, int color_type, int depth,
                      const uint16_t *vals) {
    int c = color_type == PNG_COLOR_TYPE_GRAY         ? 1
            : color_type == PNG_COLOR_TYPE_GRAY_ALPHA ? 2
            : color_type == PNG_COLOR_TYPE_RGB        ? 3
                                                      : 4;
    FILE *f = fopen(path, "wb");
    MM_CHECK(f, "cannot write %s", path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    size_t bps = (size_t)depth / 8, row = (size_t)w * c * bps;
    uint8_t *buf = malloc(row * h);
    for (size_t i = 0; i < (size_t)w * h * c; i++) {
        if (depth == 8) buf[i] = (uint8_t)vals[i];
        else buf[2 * i] = (uint8_t)(vals[i] >> 8), buf[2 * i + 1] = (uint8_t)vals[i];
    }
    MM_CHECK(setjmp(png_jmpbuf(png)) == 0, "libpng failed writing %s", path);
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, depth, color_type, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, buf + (size_t)y * row);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
    free(buf);
}

// A palette PNG (indices (h, w), 4 palette entries, the last transparent), optionally
// interlaced (Adam7).
static void write_png_palette(const char *path, int w, int h, const uint8_t *idx, int interlace) {
    FILE *f = fopen(path, "wb");
    MM_CHECK(f, "cannot write %s", path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    MM_CHECK(setjmp(png_jmpbuf(png)) == 0, "libpng failed writing %s", path);
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, 8, PNG_COLOR_TYPE_PALETTE,
                 interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_color pal[4] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}};
    png_byte trans[4] = {255, 255, 128, 0};
    png_set_PLTE(png, info, pal, 4);
    png_set_tRNS(png, info, trans, 4, NULL);
    png_write_info(png, info);
    int passes = png_set_interlace_handling(png);
    for (int p = 0; p < passes; p++)
        for (int y = 0; y < h; y++) png_write_row(png, (png_bytep)(idx + (size_t)y * w));
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
}

static void write_jpeg(const char *path, const uint8_t *px, int w, int h, int c, int quality) {
    tjhandle tj = tjInitCompress();
    unsigned char *jpg = NULL;
    unsigned long n = 0;
    MM_CHECK(tjCompress2(tj, px, w, 0, h, c == 1 ? TJPF_GRAY : TJPF_RGB, &jpg, &n,
                         c == 1 ? TJSAMP_GRAY : TJSAMP_444, quality, 0) == 0,
             "tjCompress2: %s", tjGetErrorStr2(tj));
    write_bytes(path, jpg, n);
    tjFree(jpg);
    tjDestroy(tj);
}

static void write_audio(const char *path, int format, int rate, int ch, const int16_t *pcm,
                        int frames) {
    SF_INFO si = {0};
    si.samplerate = rate, si.channels = ch, si.format = format;
    SNDFILE *sf = sf_open(path, SFM_WRITE, &si);
    MM_CHECK(sf, "sf_open(%s): %s", path, sf_strerror(NULL));
    MM_CHECK(sf_writef_short(sf, pcm, frames) == frames, "short audio write");
    sf_close(sf);
}

// A sine of f Hz and amplitude amp (of full scale) at rate, n frames, ch identical channels.
static int16_t *sine(double f, double amp, int rate, int n, int ch) {
    int16_t *p = malloc(sizeof(int16_t) * (size_t)n * ch);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < ch; k++)
            p[(size_t)i * ch + k] = (int16_t)lrint(amp * 32767 * sin(2 * M_PI * f * i / rate));
    return p;
}

// Frequency by counting sign changes over the middle of the clip (away from the ends).
static double zero_cross_hz(const int16_t *p, int n, int rate) {
    int a = n / 10, b = n - n / 10, first = -1, last = -1, crossings = 0;
    for (int i = a + 1; i < b; i++) {
        if ((p[i - 1] < 0) != (p[i] < 0)) {
            if (first < 0) first = i;
            last = i;
            crossings++;
        }
    }
    if (crossings < 3) return 0;
    return (crossings - 1) / 2.0 / ((double)(last - first) / rate);
}

static double rms(const int16_t *p, int a, int b) {
    double s = 0;
    for (int i = a; i < b; i++) s += (double)p[i] * p[i];
    return sqrt(s / (b - a)) / 32768.0;
}

// ---------------------------------------------------------------------------------------
// Images: what was written comes back.
static void test_png_exact(test_counts *tc) {
    enum { W = 7, H = 5 };
    uint16_t v[H * W * 4];
    uint8_t out[H * W * 4];
    mm_err err;
    // grey 8-bit: exact to 1 channel, replicated to 3
    for (int i = 0; i < H * W; i++) v[i] = (uint16_t)(i * 37 % 256);
    write_png(tpath("g8.png"), W, H, PNG_COLOR_TYPE_GRAY, 8, v);
    int ok = data_image_load(tpath("g8.png"), H, W, 1, out, &err) == 0, same = 1;
    for (int i = 0; i < H * W; i++) same &= out[i] == v[i];
    TEST_CHECK(tc, ok && same, "grey 8-bit PNG comes back exactly (%s)", ok ? "" : err.msg);
    ok = data_image_load(tpath("g8.png"), H, W, 3, out, &err) == 0, same = 1;
    for (int i = 0; i < H * W * 3; i++) same &= out[i] == v[i / 3];
    TEST_CHECK(tc, ok && same, "grey PNG to RGB replicates the value");

    // grey+alpha 8-bit: to grey = value composited over black, round(v * a / 255)
    for (int i = 0; i < H * W; i++) v[2 * i] = (uint16_t)(i * 53 % 256), v[2 * i + 1] = (uint16_t)(i * 29 % 256);
    write_png(tpath("ga8.png"), W, H, PNG_COLOR_TYPE_GRAY_ALPHA, 8, v);
    ok = data_image_load(tpath("ga8.png"), H, W, 1, out, &err) == 0, same = 1;
    for (int i = 0; i < H * W; i++) same &= out[i] == (v[2 * i] * v[2 * i + 1] * 2 + 255) / 510;
    TEST_CHECK(tc, ok && same, "grey+alpha PNG composites over black exactly");
    data_image_src src;
    uint8_t *file;
    size_t n;
    {
        char *b;
        MM_CHECK(mm_read_file(tpath("ga8.png"), &b, &n, &err) == 0, "%s", err.msg);
        file = (uint8_t *)b;
    }
    ok = data_image_decode(file, n, &src, &err) == 0;
    TEST_CHECK(tc, ok && src.c == 2 && src.depth == 8 && src.h == H && src.w == W,
               "grey+alpha decodes as 2 channels of 8 bits");
    if (ok) {
        same = 1;
        for (int i = 0; i < H * W * 2; i++) same &= ((uint8_t *)src.px)[i] == v[i];
        TEST_CHECK(tc, same, "grey+alpha raw samples match");
        data_image_src_free(&src);
    }
    free(file);

    // RGB 8-bit: exact; to grey by BT.601 luma (within rounding)
    for (int i = 0; i < H * W * 3; i++) v[i] = (uint16_t)((i * 97 + 11) % 256);
    write_png(tpath("rgb8.png"), W, H, PNG_COLOR_TYPE_RGB, 8, v);
    ok = data_image_load(tpath("rgb8.png"), H, W, 3, out, &err) == 0, same = 1;
    for (int i = 0; i < H * W * 3; i++) same &= out[i] == v[i];
    TEST_CHECK(tc, ok && same, "RGB PNG comes back exactly");
    ok = data_image_load(tpath("rgb8.png"), H, W, 1, out, &err) == 0;
    int worst = 0;
    for (int i = 0; i < H * W; i++) {
        double y = 0.299 * v[3 * i] + 0.587 * v[3 * i + 1] + 0.114 * v[3 * i + 2];
        int d = abs(out[i] - (int)lround(y));
        if (d > worst) worst = d;
    }
    TEST_CHECK(tc, ok && worst <= 1, "RGB to grey is BT.601 luma (worst error %d)", worst);

    // RGBA 8-bit: exact as RGBA where alpha > 0 (transparent pixels become 0,0,0,0);
    // composited over black as RGB
    for (int i = 0; i < H * W * 4; i++) v[i] = (uint16_t)((i * 61 + 7) % 256);
    v[3] = 0;  // pixel 0 fully transparent
    write_png(tpath("rgba8.png"), W, H, PNG_COLOR_TYPE_RGBA, 8, v);
    ok = data_image_load(tpath("rgba8.png"), H, W, 4, out, &err) == 0, same = 1;
    for (int i = 0; i < H * W; i++)
        for (int k = 0; k < 4; k++)
            same &= out[4 * i + k] == (v[4 * i + 3] == 0 ? 0 : v[4 * i + k]);
    TEST_CHECK(tc, ok && same, "RGBA PNG comes back exactly as RGBA");
    ok = data_image_load(tpath("rgba8.png"), H, W, 3, out, &err) == 0, same = 1;
    for (int i = 0; i < H * W; i++)
        for (int k = 0; k < 3; k++)
            same &= out[3 * i + k] == (v[4 * i + k] * v[4 * i + 3] * 2 + 255) / 510;
    TEST_CHECK(tc, ok && same, "RGBA to RGB composites over black exactly");

    // 16-bit RGB: raw samples exact; to 8 bits round(x * 255 / 65535)
    for (int i = 0; i < H * W * 3; i++) v[i] = (uint16_t)((i * 40503u + 1234) % 65536);
    write_png(tpath("rgb16.png"), W, H, PNG_COLOR_TYPE_RGB, 16, v);
    {
        char *b;
        MM_CHECK(mm_read_file(tpath("rgb16.png"), &b, &n, &err) == 0, "%s", err.msg);
        file = (uint8_t *)b;
    }
    ok = data_image_decode(file, n, &src, &err) == 0;
    TEST_CHECK(tc, ok && src.depth == 16 && src.c == 3, "16-bit RGB decodes as 16 bits");
    if (ok) {
        same = 1;
        for (int i = 0; i < H * W * 3; i++) same &= ((uint16_t *)src.px)[i] == v[i];
        TEST_CHECK(tc, same, "16-bit raw samples match");
        data_image_src_free(&src);
    }
    free(file);
    ok = data_image_load(tpath("rgb16.png"), H, W, 3, out, &err) == 0, same = 1;
    for (int i = 0; i < H * W * 3; i++)
        same &= out[i] == (uint8_t)(((uint64_t)v[i] * 255 * 2 + 65535) / (2 * 65535));
    TEST_CHECK(tc, ok && same, "16-bit RGB to 8 bits rounds exactly");

    // 16-bit grey+alpha
    for (int i = 0; i < H * W; i++) v[2 * i] = (uint16_t)(i * 2000), v[2 * i + 1] = 65535;
    write_png(tpath("ga16.png"), W, H, PNG_COLOR_TYPE_GRAY_ALPHA, 16, v);
    ok = data_image_load(tpath("ga16.png"), H, W, 1, out, &err) == 0, same = 1;
    for (int i = 0; i < H * W; i++)
        same &= out[i] == (uint8_t)(((uint64_t)v[2 * i] * 510 + 65535) / (2 * 65535));
    TEST_CHECK(tc, ok && same, "16-bit grey+alpha (opaque) to grey rounds exactly");

    // palette with transparency, plain and interlaced: RGBA from the palette, exactly
    static const uint8_t pal[4][4] = {{255, 0, 0, 255}, {0, 255, 0, 255}, {0, 0, 255, 128},
                                      {0, 0, 0, 0}};
    uint8_t idx[H * W];
    for (int i = 0; i < H * W; i++) idx[i] = (uint8_t)(i * 7 % 4);
    for (int il = 0; il < 2; il++) {
        write_png_palette(tpath("pal.png"), W, H, idx, il);
        ok = data_image_load(tpath("pal.png"), H, W, 4, out, &err) == 0, same = 1;
        for (int i = 0; i < H * W; i++) same &= memcmp(out + 4 * i, pal[idx[i]], 4) == 0;
        TEST_CHECK(tc, ok && same, "%s palette PNG with tRNS comes back exactly as RGBA",
                   il ? "interlaced" : "plain");
    }
}

static void test_jpeg(test_counts *tc) {
    enum { W = 24, H = 16 };
    uint8_t px[H * W * 3], out[H * W * 3];
    for (int y = 0; y < H; y++)  // smooth: JPEG keeps it within a few levels
        for (int x = 0; x < W; x++) {
            px[(y * W + x) * 3 + 0] = (uint8_t)(40 + 8 * x);
            px[(y * W + x) * 3 + 1] = (uint8_t)(200 - 9 * y);
            px[(y * W + x) * 3 + 2] = (uint8_t)(100 + 3 * x + 4 * y);
        }
    write_jpeg(tpath("rgb.jpg"), px, W, H, 3, 95);
    mm_err err;
    int ok = data_image_load(tpath("rgb.jpg"), H, W, 3, out, &err) == 0, worst = 0;
    for (int i = 0; i < H * W * 3; i++)
        if (abs(out[i] - px[i]) > worst) worst = abs(out[i] - px[i]);
    TEST_CHECK(tc, ok && worst <= 6, "RGB JPEG within 6 levels (worst %d) %s", worst,
               ok ? "" : err.msg);
    uint8_t g[H * W];
    for (int i = 0; i < H * W; i++) g[i] = (uint8_t)(30 + i % W * 7 + i / W * 2);
    write_jpeg(tpath("grey.jpg"), g, W, H, 1, 95);
    ok = data_image_load(tpath("grey.jpg"), H, W, 1, out, &err) == 0, worst = 0;
    for (int i = 0; i < H * W; i++)
        if (abs(out[i] - g[i]) > worst) worst = abs(out[i] - g[i]);
    TEST_CHECK(tc, ok && worst <= 6, "grey JPEG within 6 levels (worst %d)", worst);

    // a JPEG cut in half is refused, not packed with grey where the data ran out
    char *b;
    size_t n;
    MM_CHECK(mm_read_file(tpath("rgb.jpg"), &b, &n, &err) == 0, "%s", err.msg);
    write_bytes(tpath("cut.jpg"), b, n / 2);
    free(b);
    ok = data_image_load(tpath("cut.jpg"), H, W, 3, out, &err);
    TEST_CHECK(tc, ok == -1 && strstr(err.msg, "JPEG"), "truncated JPEG refused: %s", err.msg);
}

// ---------------------------------------------------------------------------------------
// The resize rule against independent computations.

// Expected box-filtered value: the mean of the source over the footprint [y0, y1) x [x0, x1)
// (source pixel units), by midpoint integration on a fine grid.
static double box_mean(const uint8_t *src, int w, double y0, double y1, double x0, double x1) {
    enum { N = 240 };
    double s = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            int y = (int)floor(y0 + (y1 - y0) * (i + 0.5) / N);
            int x = (int)floor(x0 + (x1 - x0) * (j + 0.5) / N);
            s += src[y * w + x];
        }
    return s / (N * N);
}

static void test_resize(test_counts *tc) {
    mm_err err;
    data_image_src s = {0};
    uint8_t out[64 * 64 * 4];
    // (a) cover + centre crop at scale 1: a 4x8 image into 4x4 keeps columns 2..5
    uint8_t a[4 * 8];
    for (int i = 0; i < 32; i++) a[i] = (uint8_t)(i * 7);
    s = (data_image_src){4, 8, 1, 8, a};
    data_image_fit(&s, 4, 4, 1, out);
    int same = 1;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) same &= out[y * 4 + x] == a[y * 8 + x + 2];
    TEST_CHECK(tc, same, "wide image at scale 1: centre 4 columns kept exactly");
    // tall: 8x4 into 4x4 keeps rows 2..5
    s = (data_image_src){8, 4, 1, 8, a};
    data_image_fit(&s, 4, 4, 1, out);
    same = 1;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) same &= out[y * 4 + x] == a[(y + 2) * 4 + x];
    TEST_CHECK(tc, same, "tall image at scale 1: centre 4 rows kept exactly");

    // (b) shrinking by a non-integer factor with a crop: 6x9 (h x w) into 4x4.
    // scale = max(4/6, 4/9) = 2/3: resized 4x6, crop 1 column each side; each output pixel
    // averages a 1.5 x 1.5 source footprint.
    uint8_t b[6 * 9];
    for (int i = 0; i < 54; i++) b[i] = (uint8_t)((i * 89 + 13) % 256);  // high contrast
    s = (data_image_src){6, 9, 1, 8, b};
    data_image_fit(&s, 4, 4, 1, out);
    int worst = 0;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) {
            double e = box_mean(b, 9, 1.5 * y, 1.5 * (y + 1), 1.5 * (x + 1), 1.5 * (x + 2));
            int d = abs(out[y * 4 + x] - (int)lround(e));
            if (d > worst) worst = d;
        }
    TEST_CHECK(tc, worst <= 1, "shrink 6x9 -> 4x4 is the box mean of each footprint (worst %d)",
               worst);
    // and a large shrink: 64x48 (h x w) into 8x8: scale = 8/48, resized 11x8 (64/6 = 10.67
    // rounds to 11), crop (11 - 8) / 2 = 1 resized row; 64/11 source rows per resized row
    static uint8_t c[64 * 48];
    for (int i = 0; i < 64 * 48; i++) c[i] = (uint8_t)((i * 131 + i / 48 * 7) % 256);
    s = (data_image_src){64, 48, 1, 8, c};
    data_image_fit(&s, 8, 8, 1, out);
    worst = 0;
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++) {
            double sy = 64.0 / 11, sx = 48.0 / 8;
            double e = box_mean(c, 48, sy * (y + 1), sy * (y + 2), sx * x, sx * (x + 1));
            int d = abs(out[y * 8 + x] - (int)lround(e));
            if (d > worst) worst = d;
        }
    TEST_CHECK(tc, worst <= 1, "shrink 64x48 -> 8x8 is the box mean (worst %d)", worst);

    // (c) enlarging: 2x3 into 4x6, linear between pixel centres, edges clamped
    uint8_t d2[6] = {0, 100, 200, 50, 250, 10};
    s = (data_image_src){2, 3, 1, 8, d2};
    data_image_fit(&s, 4, 6, 1, out);
    worst = 0;
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 6; x++) {
            double cy = fmin(fmax((y + 0.5) / 2 - 0.5, 0), 1), cx = fmin(fmax((x + 0.5) / 2 - 0.5, 0), 2);
            int y0 = (int)cy, x0 = (int)cx, y1 = y0 + (y0 < 1), x1 = x0 + (x0 < 2);
            double fy = cy - y0, fx = cx - x0;
            double e = (1 - fy) * ((1 - fx) * d2[y0 * 3 + x0] + fx * d2[y0 * 3 + x1]) +
                       fy * ((1 - fx) * d2[y1 * 3 + x0] + fx * d2[y1 * 3 + x1]);
            int dd = abs(out[y * 6 + x] - (int)lround(e));
            if (dd > worst) worst = dd;
        }
    TEST_CHECK(tc, worst <= 1, "enlarge 2x3 -> 4x6 is bilinear (worst %d)", worst);

    // (d) alpha is premultiplied while filtering: one opaque red pixel among three
    // transparent green ones averages to red at a quarter alpha, not to a red-green mix
    uint8_t e4[2 * 2 * 4] = {255, 0, 0, 255, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0};
    s = (data_image_src){2, 2, 4, 8, e4};
    data_image_fit(&s, 1, 1, 4, out);
    TEST_CHECK(tc, out[0] == 255 && out[1] == 0 && out[2] == 0 && out[3] == 64,
               "RGBA shrink premultiplies: got %d %d %d %d, want 255 0 0 64", out[0], out[1],
               out[2], out[3]);
    data_image_fit(&s, 1, 1, 3, out);
    TEST_CHECK(tc, out[0] == 64 && out[1] == 0 && out[2] == 0,
               "RGBA shrink to RGB composites over black: got %d %d %d", out[0], out[1], out[2]);

    // a PNG of another size goes through the same rule end to end
    uint16_t v[6 * 9];
    for (int i = 0; i < 54; i++) v[i] = b[i];
    write_png(tpath("g69.png"), 9, 6, PNG_COLOR_TYPE_GRAY, 8, v);
    uint8_t direct[16];
    s = (data_image_src){6, 9, 1, 8, b};
    data_image_fit(&s, 4, 4, 1, direct);
    int ok = data_image_load(tpath("g69.png"), 4, 4, 1, out, &err) == 0;
    TEST_CHECK(tc, ok && memcmp(out, direct, 16) == 0, "PNG load = decode + fit");
}

static void test_image_errors(test_counts *tc) {
    mm_err err;
    uint8_t out[8 * 8 * 3];
    int rc = data_image_load(tpath("nope.png"), 8, 8, 3, out, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "cannot open"), "missing image: %s", err.msg);
    write_bytes(tpath("empty.png"), "", 0);
    rc = data_image_load(tpath("empty.png"), 8, 8, 3, out, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "empty"), "empty image: %s", err.msg);
    write_bytes(tpath("text.png"), "hello, not an image\n", 20);
    rc = data_image_load(tpath("text.png"), 8, 8, 3, out, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "not a PNG or JPEG"), "text as image: %s", err.msg);
    uint16_t v[16 * 16 * 3];
    for (int i = 0; i < 16 * 16 * 3; i++) v[i] = (uint16_t)(i * 13 % 256);
    write_png(tpath("ok.png"), 16, 16, PNG_COLOR_TYPE_RGB, 8, v);
    char *b;
    size_t n;
    MM_CHECK(mm_read_file(tpath("ok.png"), &b, &n, &err) == 0, "%s", err.msg);
    write_bytes(tpath("cut.png"), b, n - 30);  // loses the end of IDAT and IEND
    rc = data_image_load(tpath("cut.png"), 8, 8, 3, out, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "PNG"), "truncated PNG: %s", err.msg);
    b[n / 2] ^= 0x5a;  // inside IDAT: the chunk CRC no longer matches
    write_bytes(tpath("flip.png"), b, n);
    rc = data_image_load(tpath("flip.png"), 8, 8, 3, out, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "PNG"), "corrupted PNG: %s", err.msg);
    free(b);
}

// ---------------------------------------------------------------------------------------
// Audio.
static void test_audio(test_counts *tc) {
    data_media *m = data_media_new();
    mm_err err;
    data_audio_info ai;
    enum { N = 3000 };
    int16_t want[N], got[8000 * 2];
    for (int i = 0; i < N; i++) want[i] = (int16_t)((i * 7919) % 60000 - 30000);
    write_audio(tpath("m.wav"), SF_FORMAT_WAV | SF_FORMAT_PCM_16, 8000, 1, want, N);
    int rc = data_audio_load(m, tpath("m.wav"), 8000, 4000, got, &ai, &err);
    TEST_CHECK(tc, rc == 0 && ai.n == N && !ai.trimmed && memcmp(got, want, sizeof(want)) == 0,
               "mono 16-bit WAV at the target rate comes back exactly (%s)", rc ? err.msg : "");
    write_audio(tpath("m.flac"), SF_FORMAT_FLAC | SF_FORMAT_PCM_16, 8000, 1, want, N);
    rc = data_audio_load(m, tpath("m.flac"), 8000, 4000, got, &ai, &err);
    TEST_CHECK(tc, rc == 0 && ai.n == N && memcmp(got, want, sizeof(want)) == 0,
               "FLAC comes back exactly (%s)", rc ? err.msg : "");
    // stereo: the mean of the channels (sums kept even so the mean is exact)
    int16_t st[2 * N], mean[N];
    for (int i = 0; i < N; i++) {
        st[2 * i] = (int16_t)((i * 31) % 20000 * 2 - 20000);
        st[2 * i + 1] = (int16_t)(((i * 17) % 9000) * 2);
        mean[i] = (int16_t)((st[2 * i] + st[2 * i + 1]) / 2);
    }
    write_audio(tpath("s.wav"), SF_FORMAT_WAV | SF_FORMAT_PCM_16, 8000, 2, st, N);
    rc = data_audio_load(m, tpath("s.wav"), 8000, 4000, got, &ai, &err);
    TEST_CHECK(tc, rc == 0 && ai.n == N && ai.src_channels == 2 &&
                       memcmp(got, mean, sizeof(mean)) == 0,
               "stereo WAV is mixed down to the exact mean");
    // longer than max_len: the first max_len samples, marked trimmed
    rc = data_audio_load(m, tpath("m.wav"), 8000, 1000, got, &ai, &err);
    TEST_CHECK(tc, rc == 0 && ai.n == 1000 && ai.trimmed && memcmp(got, want, 2000) == 0,
               "a long clip is cut to max_len");

    // resampling keeps frequency and level: 440 Hz at 22050 and 44100 Hz stereo -> 8000 Hz
    int rates[3] = {22050, 44100, 11025};
    for (int r = 0; r < 3; r++) {
        int n_in = rates[r] / 4;  // 0.25 s
        int16_t *sn = sine(440, 0.5, rates[r], n_in, 2);
        write_audio(tpath("sine.wav"), SF_FORMAT_WAV | SF_FORMAT_PCM_16, rates[r], 2, sn, n_in);
        free(sn);
        rc = data_audio_load(m, tpath("sine.wav"), 8000, 4000, got, &ai, &err);
        double hz = rc ? 0 : zero_cross_hz(got, ai.n, 8000);
        double lvl = rc ? 0 : rms(got, ai.n / 10, ai.n - ai.n / 10);
        TEST_CHECK(tc, rc == 0 && abs(ai.n - 2000) <= 1 && fabs(hz - 440) < 4 &&
                           fabs(lvl - 0.5 / sqrt(2)) < 0.01,
                   "%d Hz -> 8000 Hz: %d samples (want 2000), %.1f Hz (want 440), rms %.4f "
                   "(want %.4f) %s",
                   rates[r], ai.n, hz, lvl, 0.5 / sqrt(2), rc ? err.msg : "");
    }
    // OGG/Vorbis, when this libsndfile writes it
    {
        int16_t *sn = sine(300, 0.4, 16000, 16000, 1);
        SF_INFO si = {0};
        si.samplerate = 16000, si.channels = 1, si.format = SF_FORMAT_OGG | SF_FORMAT_VORBIS;
        if (sf_format_check(&si)) {
            write_audio(tpath("s.ogg"), si.format, 16000, 1, sn, 16000);
            rc = data_audio_load(m, tpath("s.ogg"), 8000, 4000, got, &ai, &err);
            double hz = rc ? 0 : zero_cross_hz(got, ai.n, 8000);
            TEST_CHECK(tc, rc == 0 && ai.n == 4000 && ai.trimmed && fabs(hz - 300) < 3,
                       "OGG/Vorbis 16 kHz -> 8 kHz: %d samples, %.1f Hz (%s)", ai.n, hz,
                       rc ? err.msg : "");
        }
        free(sn);
    }
    // bad audio
    rc = data_audio_load(m, tpath("none.wav"), 8000, 4000, got, &ai, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "cannot open"), "missing audio: %s", err.msg);
    write_audio(tpath("zero.wav"), SF_FORMAT_WAV | SF_FORMAT_PCM_16, 8000, 1, want, 0);
    rc = data_audio_load(m, tpath("zero.wav"), 8000, 4000, got, &ai, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "no samples"), "zero-length audio: %s", err.msg);
    write_bytes(tpath("junk.wav"), "RIFF....WAVEjunkjunkjunk", 24);
    rc = data_audio_load(m, tpath("junk.wav"), 8000, 4000, got, &ai, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "not a readable audio file"), "junk audio: %s",
               err.msg);
    write_bytes(tpath("empty.wav"), "", 0);
    rc = data_audio_load(m, tpath("empty.wav"), 8000, 4000, got, &ai, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "empty"), "empty audio file: %s", err.msg);
    data_media_free(m);
}

// The header's length (what pack's audio_len is chosen from) against the decoded length: it
// may exceed it by at most one sample (soxr rounds, the probe takes the ceiling), never fall
// short, so the longest clip is never cut by the length chosen for it.
static void test_audio_probe(test_counts *tc) {
    data_media *m = data_media_new();
    mm_err err;
    static int16_t got[20000];
    const int rates[] = {8000, 22050, 44100, 16000, 11025, 48000};
    const int lens[] = {1, 7, 999, 2205, 11025, 12345};
    int worst = 0, bad = 0, n_cases = 0;
    for (size_t r = 0; r < sizeof(rates) / sizeof(rates[0]); r++) {
        for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
            int16_t *sn = sine(300, 0.3, rates[r], lens[l], 2);
            write_audio(tpath("p.wav"), SF_FORMAT_WAV | SF_FORMAT_PCM_16, rates[r], 2, sn, lens[l]);
            free(sn);
            int64_t est = -1;
            data_audio_info ai = {0};
            int rp = data_audio_probe(m, tpath("p.wav"), 8000, &est, &err);
            int rl = data_audio_load(m, tpath("p.wav"), 8000, 20000, got, &ai, &err);
            if (rl != 0) ai.n = 0;  // a clip too short to leave a sample at 8 kHz
            int d = (int)(est - ai.n);
            bad += rp != 0 || d < 0 || d > 1 || (rates[r] == 8000 && d != 0);
            worst = d > worst ? d : worst;
            n_cases++;
        }
    }
    TEST_CHECK(tc, bad == 0, "probe vs decoded length over %d rates x lengths: %d bad, worst +%d",
               n_cases, bad, worst);
    int64_t est;
    int rc = data_audio_probe(m, tpath("junk.wav"), 8000, &est, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "not a readable audio file"), "probe of junk: %s",
               err.msg);
    data_media_free(m);
}

// ---------------------------------------------------------------------------------------
// UTF-8 and captions.
static void test_utf8(test_counts *tc) {
    static const struct {
        const char *s;
        int n;
        const char *why;  // NULL = valid; else a word of the reason
        int at;
    } cases[] = {
        {"plain ascii", 11, NULL, 0},
        {"caf\xC3\xA9", 5, NULL, 0},
        {"\xE4\xB8\xAD\xE6\x96\x87", 6, NULL, 0},
        {"\xF0\x9F\x98\x80", 4, NULL, 0},  // U+1F600
        {"\xF4\x8F\xBF\xBF", 4, NULL, 0},  // U+10FFFF, the last code point
        {"\xED\x9F\xBF", 3, NULL, 0},      // U+D7FF, just below the surrogates
        {"\xEE\x80\x80", 3, NULL, 0},      // U+E000, just above
        {"a\xC0\x80", 3, "overlong", 1},
        {"\xC1\xBF", 2, "overlong", 0},
        {"\xE0\x80\xAF", 3, "overlong", 0},
        {"\xF0\x8F\xBF\xBF", 4, "overlong", 0},
        {"ab\xED\xA0\x80", 5, "surrogate", 2},
        {"\xED\xBF\xBF", 3, "surrogate", 0},
        {"\xF4\x90\x80\x80", 4, "U+10FFFF", 0},
        {"\xF5\x80\x80\x80", 4, "0xF5", 0},
        {"\xFF", 1, "0xF5", 0},
        {"x\x80", 2, "continuation", 1},
        {"\xE2\x82", 2, "cut short", 0},
        {"\xE2\x28\xA1", 3, "cut short", 0},
        {"a\0b", 3, "NUL", 1},
        // core's rule plus no NUL: whichever comes first is the reason
        {"ab\0\xC0\x80", 5, "NUL", 2},
        {"\xC0\x80\0", 3, "overlong", 0},
        {"\xC3\0", 2, "cut short", 0},
        {"\xC3\xA9\0", 3, "NUL", 2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t at = 99;
        const uint8_t *s = (const uint8_t *)cases[i].s;
        const char *why = data_utf8_why(s, (size_t)cases[i].n, &at);
        long reader = data_utf8_bad_at(s, (size_t)cases[i].n);
        if (!cases[i].why)
            TEST_CHECK(tc, !why && reader == -1, "case %zu valid: got '%s'", i, why ? why : "");
        else
            TEST_CHECK(tc, why && strstr(why, cases[i].why) && at == (size_t)cases[i].at &&
                               reader == cases[i].at,
                       "case %zu: want '%s' at %d, got '%s' at %zu (reader: %ld)", i,
                       cases[i].why, cases[i].at, why ? why : "(valid)", at, reader);
    }
    mm_err err;
    TEST_CHECK(tc, data_caption_check("12345", 5, 5, &err) == 0, "5 bytes fit text_max 5");
    TEST_CHECK(tc, data_caption_check("123456", 6, 5, &err) == -1 && strstr(err.msg, "text_max"),
               "6 bytes exceed text_max 5: %s", err.msg);
    char out[64];
    int n;
    write_bytes(tpath("cap.txt"), "\xEF\xBB\xBF" "line one\r\n", 13);
    int rc = data_caption_load(tpath("cap.txt"), 48, out, &n, &err);
    TEST_CHECK(tc, rc == 0 && n == 8 && memcmp(out, "line one", 8) == 0,
               "caption file: BOM and final CRLF dropped");
    write_bytes(tpath("cap2.txt"), "a\n\n", 3);
    rc = data_caption_load(tpath("cap2.txt"), 48, out, &n, &err);
    TEST_CHECK(tc, rc == 0 && n == 2 && memcmp(out, "a\n", 2) == 0,
               "caption file: only one final newline dropped");
    write_bytes(tpath("cap3.txt"), "bad \xC0\xAF", 6);
    rc = data_caption_load(tpath("cap3.txt"), 48, out, &n, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "byte 4") && strstr(err.msg, "overlong"),
               "caption file with an overlong form: %s", err.msg);
}

// ---------------------------------------------------------------------------------------
// JSON lines.
static void test_json(test_counts *tc) {
    data_json_obj o;
    int col;
    mm_err err;
    const char *good =
        " { \"caption\" : \"q\\\"b\\\\s\\/f\\b\\f\\n\\r\\t \\u00e9\\u4E2D\\ud83d\\ude00 raw \xC3\xA9\", "
        "\"image\": null, \"audio\":\"x.wav\"}  ";
    int rc = data_json_parse_line(good, strlen(good), &o, &col, &err);
    const char want[] = "q\"b\\s/f\b\f\n\r\t \xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80 raw \xC3\xA9";
    TEST_CHECK(tc, rc == 0 && o.n == 3, "good object parses (%s)", rc ? err.msg : "");
    if (rc == 0) {
        TEST_CHECK(tc, !strcmp(o.key[0], "caption") && o.val_n[0] == sizeof(want) - 1 &&
                           memcmp(o.val[0], want, sizeof(want) - 1) == 0,
                   "every escape decodes to the right UTF-8 bytes");
        TEST_CHECK(tc, !strcmp(o.key[1], "image") && o.val[1] == NULL, "null is absent");
        TEST_CHECK(tc, !strcmp(o.val[2], "x.wav") && o.col[2] == (int)(strstr(good, "\"audio") - good) + 1,
                   "columns of keys");
        data_json_obj_free(&o);
    }
    rc = data_json_parse_line("{}", 2, &o, &col, &err);
    TEST_CHECK(tc, rc == 0 && o.n == 0, "empty object");
    static const struct {
        const char *s;
        int col;
        const char *why;
    } bad[] = {
        {"[1]", 1, "expected '{'"},
        {"{\"a\": \"b\",}", 11, "trailing"},
        {"{\"a\" \"b\"}", 6, "':'"},
        {"{\"a\": 5}", 7, "string or null"},
        {"{\"a\": true}", 7, "string or null"},
        {"{\"a\": {\"b\": \"c\"}}", 7, "string or null"},
        {"{\"a\": \"x\", \"a\": \"y\"}", 12, "twice"},
        {"{\"a\": \"\\ud800\"}", 8, "high surrogate"},
        {"{\"a\": \"\\ud800\\u0041\"}", 8, "high surrogate"},
        {"{\"a\": \"\\udc00\"}", 8, "low surrogate"},
        {"{\"a\": \"\\x41\"}", 8, "unknown escape"},
        {"{\"a\": \"\\u12g4\"}", 8, "4 hex"},
        {"{\"a\": \"\\u0000\"}", 8, "NUL"},
        {"{\"a\": \"b}", 7, "not closed"},
        {"{\"a\": \"b\"} x", 12, "after the object"},
        {"{\"a\": \"b\" \"c\": \"d\"}", 11, "',' or '}'"},
        {"{\"a\": \"tab\there\"}", 11, "control character"},
        {"{a: \"b\"}", 2, "quoted key"},
        {"", 1, "expected '{'"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        col = -1;
        rc = data_json_parse_line(bad[i].s, strlen(bad[i].s), &o, &col, &err);
        TEST_CHECK(tc, rc == -1 && col == bad[i].col && strstr(err.msg, bad[i].why),
                   "bad JSON %zu '%s': want col %d '%s', got rc %d col %d '%s'", i, bad[i].s,
                   bad[i].col, bad[i].why, rc, col, rc ? err.msg : "");
        if (rc == 0) data_json_obj_free(&o);
    }
}

// ---------------------------------------------------------------------------------------
// CSV.
static void test_csv(test_counts *tc) {
    const char *csv =
        "image,caption\r\n"
        "a.png,\"hello, world\"\r\n"
        "\n"
        "b.png,\"say \"\"hi\"\"\nsecond line\"\n"
        "c.png,plain\n"
        ",\n"
        "d.png,\"no newline at the end\"";
    size_t n = strlen(csv), pos = 0;
    int line = 1, el, ec;
    data_csv_row r;
    mm_err err;
    static const struct {
        int line;
        const char *a, *b;
    } want[] = {{1, "image", "caption"},
                {2, "a.png", "hello, world"},
                {4, "b.png", "say \"hi\"\nsecond line"},
                {6, "c.png", "plain"},
                {7, "", ""},
                {8, "d.png", "no newline at the end"}};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int rc = data_csv_next(csv, n, &pos, &line, &r, &el, &ec, &err);
        TEST_CHECK(tc, rc == 1 && r.n == 2 && r.line == want[i].line &&
                           !strcmp(r.cell[0], want[i].a) && !strcmp(r.cell[1], want[i].b),
                   "CSV record %zu: rc %d, %d fields, line %d (want %d)", i, rc, r.n,
                   rc == 1 ? r.line : -1, want[i].line);
        if (rc == 1) data_csv_row_free(&r);
    }
    int rc = data_csv_next(csv, n, &pos, &line, &r, &el, &ec, &err);
    TEST_CHECK(tc, rc == 0, "CSV end of input");

    const char *bad = "a,b\nx,y\"z\nok,\"q\"r\nfine,row\nlast,\"never closed\n";
    n = strlen(bad), pos = 0, line = 1;
    rc = data_csv_next(bad, n, &pos, &line, &r, &el, &ec, &err);
    if (rc == 1) data_csv_row_free(&r);
    rc = data_csv_next(bad, n, &pos, &line, &r, &el, &ec, &err);
    TEST_CHECK(tc, rc == -1 && el == 2 && ec == 4 && strstr(err.msg, "unquoted"),
               "quote inside an unquoted field: line %d col %d: %s", el, ec, err.msg);
    rc = data_csv_next(bad, n, &pos, &line, &r, &el, &ec, &err);
    TEST_CHECK(tc, rc == -1 && el == 3 && ec == 7 && strstr(err.msg, "closing quote"),
               "text after a closing quote: line %d col %d: %s", el, ec, err.msg);
    rc = data_csv_next(bad, n, &pos, &line, &r, &el, &ec, &err);
    TEST_CHECK(tc, rc == 1 && r.line == 4 && !strcmp(r.cell[0], "fine"),
               "reading goes on after a bad record");
    if (rc == 1) data_csv_row_free(&r);
    rc = data_csv_next(bad, n, &pos, &line, &r, &el, &ec, &err);
    TEST_CHECK(tc, rc == -1 && el == 5 && ec == 6 && strstr(err.msg, "not closed"),
               "unclosed quote: line %d col %d: %s", el, ec, err.msg);
}

// A cut keeps the longest prefix of at most max bytes that ends between characters: checked
// against every max for a string of 1-, 2-, 3- and 4-byte characters, by a property that
// must hold (the prefix is valid UTF-8, fits, and one more character would not fit).
static void test_caption_cut(test_counts *tc) {
    const char *s = "a\xc3\xa9\xe2\x80\x94\xf0\x9f\x98\x80z\xe4\xb8\xad";  // a é — 😀 z 中
    size_t n = strlen(s);
    int bad = 0;
    for (size_t max = 0; max <= n + 2; max++) {
        size_t k = data_caption_cut(s, n, max), at;
        size_t next = k;  // the end of the next character
        if (next < n) next++;
        while (next < n && ((unsigned char)s[next] & 0xC0) == 0x80) next++;
        bad += k > max || data_utf8_why((const uint8_t *)s, k, &at) != NULL ||
               (k < n && next <= max) || (max >= n && k != n);
    }
    TEST_CHECK(tc, bad == 0, "caption cut at a character boundary: %d bad of %zu", bad, n + 3);
}

// Key maps: explicit names replace the defaults, aliases work, ignored keys are read past.
static void test_manifest_keys(test_counts *tc) {
    mm_err err;
    data_manifest m;
    const char *jl =
        "{\"file_name\": \"a.png\", \"text\": \"t\", \"id\": \"7\"}\n"
        "{\"pic\": \"b.png\", \"caption\": \"c\"}\n";
    write_bytes(tpath("k.jsonl"), jl, strlen(jl));
    data_manifest_keys k = {{0}, "id"};
    int rc = data_manifest_read(tpath("k.jsonl"), &k, &m, &err);
    TEST_CHECK(tc,
               rc == 0 && m.n == 2 && !m.rec[0].error && m.rec[0].field[DATA_MF_IMAGE] &&
                   strstr(m.rec[0].field[DATA_MF_IMAGE], "/a.png") &&
                   !strcmp(m.rec[0].field[DATA_MF_CAPTION], "t") && m.rec[0].file_name,
               "file_name and text are the image and the caption; id ignored");
    TEST_CHECK(tc,
               rc == 0 && m.n == 2 && m.rec[1].error && strstr(m.rec[1].error, "'pic'") &&
                   strstr(m.rec[1].error, "file_name"),
               "an unknown key is an error even beside file_name records: %s",
               rc == 0 && m.rec[1].error ? m.rec[1].error : "(none)");
    if (rc == 0) data_manifest_free(&m);
    k.key[DATA_MF_IMAGE] = "pic";
    k.ignore = "id,file_name";
    rc = data_manifest_read(tpath("k.jsonl"), &k, &m, &err);
    TEST_CHECK(tc,
               rc == 0 && m.n == 2 && !m.rec[1].error &&
                   strstr(m.rec[1].field[DATA_MF_IMAGE], "/b.png") &&
                   !m.rec[0].field[DATA_MF_IMAGE],
               "--image-key pic: pic is the image, file_name ignored");
    if (rc == 0) data_manifest_free(&m);
    data_manifest_keys dup = {{"x", NULL, "x", NULL}, NULL};
    TEST_CHECK(tc, data_manifest_keys_check(&dup, &err) == -1 && strstr(err.msg, "'x'"),
               "two fields, one key: %s", err.msg);
    data_manifest_keys ign = {{NULL, NULL, "x", NULL}, "a,x"};
    TEST_CHECK(tc, data_manifest_keys_check(&ign, &err) == -1 && strstr(err.msg, "ignored"),
               "a mapped key ignored: %s", err.msg);
}

// ---------------------------------------------------------------------------------------
// Manifests: both formats, paths resolved, bad records kept with their error.
static void test_manifest(test_counts *tc) {
    mm_err err;
    data_manifest m;
    const char *jl =
        "{\"image\": \"img/a.png\", \"caption\": \"one\"}\n"
        "\n"
        "{\"audio\": \"/abs/b.wav\", \"caption_file\": \"c.txt\"}\n"
        "{\"image\": \"x.png\", \"colour\": \"red\"}\n"
        "{\"caption\": \"x\", \"caption_file\": \"y.txt\"}\n"
        "not json\n"
        "{\"caption\": \"\"}\n";
    write_bytes(tpath("m.jsonl"), jl, strlen(jl));
    int rc = data_manifest_read(tpath("m.jsonl"), NULL, &m, &err);
    TEST_CHECK(tc, rc == 0 && m.n == 6, "jsonl: 6 records (blank line skipped): %d", m.n);
    if (rc == 0 && m.n == 6) {
        char want[256];
        snprintf(want, sizeof(want), "%s/img/a.png", tmpdir);
        TEST_CHECK(tc, m.rec[0].line == 1 && !strcmp(m.rec[0].field[DATA_MF_IMAGE], want) &&
                           !strcmp(m.rec[0].field[DATA_MF_CAPTION], "one"),
                   "relative path resolved against the manifest's folder");
        snprintf(want, sizeof(want), "%s/c.txt", tmpdir);
        TEST_CHECK(tc, m.rec[1].line == 3 && !strcmp(m.rec[1].field[DATA_MF_AUDIO], "/abs/b.wav") &&
                           !strcmp(m.rec[1].field[DATA_MF_CAPTION_FILE], want),
                   "absolute path kept; line numbers count blank lines");
        TEST_CHECK(tc, m.rec[2].error && strstr(m.rec[2].error, "unknown key 'colour'") &&
                           m.rec[2].col == 20,
                   "unknown key: col %d: %s", m.rec[2].col, m.rec[2].error);
        TEST_CHECK(tc, m.rec[3].error && strstr(m.rec[3].error, "both"), "caption and file");
        TEST_CHECK(tc, m.rec[4].error && m.rec[4].line == 6 && m.rec[4].col == 1,
                   "malformed line kept with its error");
        TEST_CHECK(tc, !m.rec[5].error && !m.rec[5].field[DATA_MF_CAPTION],
                   "an empty caption is absent");
        data_manifest_free(&m);
    }
    const char *cv = "caption,image\n\"a, b\",img/x.jpg\nonly one field\n";
    write_bytes(tpath("m.csv"), cv, strlen(cv));
    rc = data_manifest_read(tpath("m.csv"), NULL, &m, &err);
    TEST_CHECK(tc, rc == 0 && m.n == 2, "csv: 2 records");
    if (rc == 0 && m.n == 2) {
        TEST_CHECK(tc, m.rec[0].line == 2 && !strcmp(m.rec[0].field[DATA_MF_CAPTION], "a, b") &&
                           strstr(m.rec[0].field[DATA_MF_IMAGE], "/img/x.jpg"),
                   "csv fields by header");
        TEST_CHECK(tc, m.rec[1].error && strstr(m.rec[1].error, "1 fields, the header has 2"),
                   "csv field count: %s", m.rec[1].error ? m.rec[1].error : "(none)");
        data_manifest_free(&m);
    }
    write_bytes(tpath("h.csv"), "image,size\nx.png,3\n", 19);
    rc = data_manifest_read(tpath("h.csv"), NULL, &m, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "h.csv:1") && strstr(err.msg, "'size'"),
               "unknown CSV column: %s", err.msg);
    write_bytes(tpath("m.txt"), "x\n", 2);
    rc = data_manifest_read(tpath("m.txt"), NULL, &m, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, ".jsonl or .csv"), "unknown type: %s", err.msg);
    rc = data_manifest_read(tpath("absent.jsonl"), NULL, &m, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "absent.jsonl"), "missing manifest: %s", err.msg);
}

// ---------------------------------------------------------------------------------------
// Fixtures for tests/pack_cli.sh: images in several layouts and sizes, an empty WAV.
static int write_fixtures(const char *dir) {
    char p[512];
    uint8_t rgb[32 * 32 * 3];
    mm_rng r;  // noise: no PNG compresses it much, so cutting the file cuts its pixels
    mm_rng_init(&r, 7, 0);
    for (int i = 0; i < 32 * 32 * 3; i++) rgb[i] = (uint8_t)mm_rng_below(&r, 256);
    mm_err err;
    snprintf(p, sizeof(p), "%s/rgb32.png", dir);  // the packer's size: must come back as is
    if (data_png_write(p, rgb, 32, 32, 3, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    static uint8_t big[60 * 100 * 3];
    for (int y = 0; y < 60; y++)
        for (int x = 0; x < 100; x++) {
            big[(y * 100 + x) * 3] = (uint8_t)(x * 2), big[(y * 100 + x) * 3 + 1] = (uint8_t)(y * 4);
            big[(y * 100 + x) * 3 + 2] = 128;
        }
    snprintf(p, sizeof(p), "%s/photo.jpg", dir);
    write_jpeg(p, big, 100, 60, 3, 90);
    static uint16_t v[64 * 48 * 4];
    for (int i = 0; i < 40 * 40; i++) v[i] = (uint16_t)(i * 41);
    snprintf(p, sizeof(p), "%s/grey16.png", dir);
    write_png(p, 40, 40, PNG_COLOR_TYPE_GRAY, 16, v);
    for (int i = 0; i < 30 * 20 * 2; i++) v[i] = (uint16_t)(i % 2 ? 200 : i % 256);
    snprintf(p, sizeof(p), "%s/ga.png", dir);
    write_png(p, 20, 30, PNG_COLOR_TYPE_GRAY_ALPHA, 8, v);
    for (int i = 0; i < 64 * 48 * 4; i++) v[i] = (uint16_t)(i * 7 % 256);
    snprintf(p, sizeof(p), "%s/rgba.png", dir);
    write_png(p, 64, 48, PNG_COLOR_TYPE_RGBA, 8, v);
    snprintf(p, sizeof(p), "%s/zero.wav", dir);  // a valid WAV holding no samples
    write_audio(p, SF_FORMAT_WAV | SF_FORMAT_PCM_16, 8000, 1, NULL, 0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--fixtures")) return write_fixtures(argv[2]);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_pack.XXXXXX");
    MM_CHECK(mkdtemp(tmpdir), "mkdtemp failed");
    test_counts tc = {0};
    test_png_exact(&tc);
    test_jpeg(&tc);
    test_resize(&tc);
    test_image_errors(&tc);
    test_audio(&tc);
    test_audio_probe(&tc);
    test_caption_cut(&tc);
    test_manifest_keys(&tc);
    test_utf8(&tc);
    test_json(&tc);
    test_csv(&tc);
    test_manifest(&tc);
    nftw(tmpdir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
    return test_finish(&tc);
}
