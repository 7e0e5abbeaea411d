// image.c: turns model images back into files a person can look at: [-1, 1] floats to bytes
// (the inverse of the loader's u8 / 127.5 - 1), several samples tiled into one grid, and a PNG
// writer. Sampling and eval write their images through here, so a crash mid-write must never
// leave a truncated PNG behind: the file is encoded in memory and handed to
// mm_write_file_atomic (temp file, fsync, rename).
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

void data_image_to_u8(const float *img, int n, uint8_t *out) {
    for (int i = 0; i < n; i++) {
        float v = (img[i] + 1.0f) * 127.5f;
        // !(v > 0) also maps NaN to 0 rather than to an undefined conversion
        out[i] = !(v > 0.0f) ? 0 : v >= 255.0f ? 255 : (uint8_t)floorf(v + 0.5f);
    }
}

void data_image_grid(const uint8_t *imgs, int n, int h, int w, int c, int cols, int pad,
                     uint8_t *out, int *out_h, int *out_w) {
    MM_CHECK(n >= 1 && h >= 1 && w >= 1 && c >= 1 && cols >= 1 && pad >= 0,
             "data_image_grid: bad layout n=%d h=%d w=%d c=%d cols=%d pad=%d", n, h, w, c, cols,
             pad);
    if (cols > n) cols = n;  // no empty columns
    int rows = (n + cols - 1) / cols;
    int gh = rows * h + (rows + 1) * pad, gw = cols * w + (cols + 1) * pad;
    *out_h = gh, *out_w = gw;
    if (!out) return;
    memset(out, 128, (size_t)gh * gw * c);  // grey padding and empty cells
    size_t row_bytes = (size_t)w * c;
    for (int k = 0; k < n; k++) {
        int y0 = pad + (k / cols) * (h + pad), x0 = pad + (k % cols) * (w + pad);
        for (int y = 0; y < h; y++)
            memcpy(out + ((size_t)(y0 + y) * gw + x0) * c,
                   imgs + ((size_t)k * h + y) * row_bytes, row_bytes);
    }
}

// ---------------------------------------------------------------------------------------
// PNG encoding into a growing memory buffer. libpng reports errors by longjmp; the error
// callback keeps its message so the caller can name the file in one line.
typedef struct {
    uint8_t *buf;  // malloc'd, owned until handed to the caller
    size_t n, cap;
    char msg[200];
} png_mem;

static void png_mem_write(png_structp png, png_bytep data, png_size_t len) {
    png_mem *m = png_get_io_ptr(png);
    if (m->n + len > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < m->n + len) cap *= 2;
        uint8_t *nb = realloc(m->buf, cap);
        if (!nb) png_error(png, "out of memory");
        m->buf = nb, m->cap = cap;
    }
    memcpy(m->buf + m->n, data, len);
    m->n += len;
}

static void png_mem_flush(png_structp png) {
    (void)png;
}

static void png_on_error(png_structp png, png_const_charp msg) {
    png_mem *m = png_get_error_ptr(png);
    snprintf(m->msg, sizeof(m->msg), "%s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png, (void)msg;
}

int data_png_write(const char *path, const uint8_t *rgb, int h, int w, int c, mm_err *err) {
    if (h < 1 || w < 1 || h > 1000000 || w > 1000000 || (c != 1 && c != 3 && c != 4))
        return mm_fail(err, "%s: cannot write a %dx%dx%d image as PNG (sizes 1..1000000, 1, 3 or 4 "
                       "channels)", path, h, w, c);
    // everything the longjmp path frees is set up before setjmp, so no local changes after it
    png_mem *m = mm_calloc(1, sizeof(png_mem));
    png_bytep *rows = mm_malloc(sizeof(png_bytep) * (size_t)h);
    for (int y = 0; y < h; y++) rows[y] = (png_bytep)(rgb + (size_t)y * w * c);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, m, png_on_error,
                                              png_on_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    volatile int rc = -1;  // read after a longjmp
    if (!png || !info) {
        snprintf(m->msg, sizeof(m->msg), "libpng could not start");
    } else if (setjmp(png_jmpbuf(png)) == 0) {
        png_set_write_fn(png, m, png_mem_write, png_mem_flush);
        int type = c == 1 ? PNG_COLOR_TYPE_GRAY : c == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGBA;
        png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8, type, PNG_INTERLACE_NONE,
                     PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
        png_set_rows(png, info, rows);
        png_write_png(png, info, PNG_TRANSFORM_IDENTITY, NULL);
        rc = 0;
    }
    png_destroy_write_struct(png ? &png : NULL, info ? &info : NULL);
    if (rc == 0)
        rc = mm_write_file_atomic(path, m->buf, m->n, err);
    else
        mm_fail(err, "%s: PNG encoding failed: %s", path, m->msg);
    free(rows);
    free(m->buf);
    free(m);
    return rc;
}
