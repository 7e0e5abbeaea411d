// media.c: turns a user's files into the bytes a dataset holds, by the rules in data/FORMAT.md
// "Packing": PNG (libpng) and JPEG (libturbojpeg) images of any size and layout become the
// schema's (H, W, C) uint8; WAV/FLAC/OGG/... clips (libsndfile) of any rate and channel count
// become mono int16 at the schema's rate (libsoxr), at most audio_len samples; caption files
// become strict UTF-8 of at most text_max bytes.
//
// Every function here judges one sample; a bad file is a -1 whose mm_err holds only the
// reason (e.g. "not a PNG or JPEG file"), because the packer names the manifest line and the
// path itself ("FILE:LINE: PATH: reason"). Nothing aborts on bad input.
//
// Threads: the packer decodes on several threads at once. libpng, TurboJPEG and soxr state is
// per call; libsndfile keeps the reason an open failed in one process-wide variable, so opens
// go through the lock in data_media.
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <png.h>
#include <pthread.h>
#include <setjmp.h>
#include <sndfile.h>
#include <soxr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <unistd.h>

#include "data.h"
#include "data_internal.h"

// Decoded images may not exceed this many pixels: 64 Mpixel (8192 x 8192; a 12-megapixel
// photo is ~2^23.5). The header's size is checked before a pixel is allocated or decoded,
// so a decompression bomb (a 1 MB PNG of 11585 x 11585 RGBA16 would take 2.1 GB and 10 s)
// costs nothing; the largest image accepted peaks at ~1 GB per decoding thread (RGBA16
// plus its 16-bit copy). FORMAT.md "Packing" documents the limit.
#define MAX_PIXELS ((int64_t)1 << 26)
#define MAX_MPIXEL 64
#define MAX_SIDE 65535
// Files larger than this are not images or captions anyone packs on purpose.
#define MAX_FILE_BYTES ((size_t)1 << 30)

struct data_media {
    pthread_mutex_t sf_open_lock;  // held around sf_open and reading its error text
};

data_media *data_media_new(void) {
    data_media *m = mm_calloc(1, sizeof(*m));
    MM_CHECK(pthread_mutex_init(&m->sf_open_lock, NULL) == 0, "pthread_mutex_init failed");
    return m;
}

void data_media_free(data_media *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->sf_open_lock);
    free(m);
}

// Opens path for reading only if it is a regular file: opened without blocking (a FIFO's
// open would wait for a writer forever, a device's might) and checked with fstat on that
// same descriptor. *st is filled. NULL with err = "cannot open: ..." or "not a regular file
// (a FIFO)".
static FILE *open_regular(const char *path, struct stat *st, mm_err *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        mm_fail(err, "cannot open: %s", strerror(errno));
        return NULL;
    }
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        const char *kind = S_ISFIFO(st->st_mode)                          ? " (a FIFO)"
                           : S_ISDIR(st->st_mode)                         ? " (a directory)"
                           : S_ISSOCK(st->st_mode)                        ? " (a socket)"
                           : S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode) ? " (a device)"
                                                                          : "";
        close(fd);
        mm_fail(err, "not a regular file%s", kind);
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        mm_fail(err, "cannot open: %s", strerror(errno));
        close(fd);
    }
    return f;
}

// Reads a whole regular file (at most max bytes) into a malloc'd buffer (caller frees).
static int read_small_file(const char *path, size_t max, uint8_t **out, size_t *n, mm_err *err) {
    *out = NULL;
    struct stat st;
    FILE *f = open_regular(path, &st, err);
    if (!f) return -1;
    if ((uint64_t)st.st_size > max) {
        fclose(f);
        return mm_fail(err, "file of %lld bytes is larger than the limit of %zu",
                       (long long)st.st_size, max);
    }
    size_t size = (size_t)st.st_size;
    uint8_t *buf = mm_malloc(size + 1);
    size_t got = fread(buf, 1, size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || got != size) {
        free(buf);
        return mm_fail(err, "read error (%zu of %zu bytes)", got, size);
    }
    buf[size] = 0;
    *out = buf;
    *n = size;
    return 0;
}

// ---------------------------------------------------------------------------------------
// PNG. libpng reports errors by longjmp; what the error path frees lives in the struct, not
// in locals modified after setjmp.
typedef struct {
    const uint8_t *p;
    size_t n, at;
    uint8_t *px;      // decoded rows, malloc'd
    png_bytep *rows;  // (h) pointers into px
    char msg[200];
} png_in;

static void png_in_read(png_structp png, png_bytep data, png_size_t len) {
    png_in *s = png_get_io_ptr(png);
    if (len > s->n - s->at) png_error(png, "file is truncated");
    memcpy(data, s->p + s->at, len);
    s->at += len;
}

static void png_in_error(png_structp png, png_const_charp msg) {
    png_in *s = png_get_error_ptr(png);
    snprintf(s->msg, sizeof(s->msg), "%s", msg);
    png_longjmp(png, 1);
}

static void png_in_warning(png_structp png, png_const_charp msg) {
    (void)png, (void)msg;  // ancillary-chunk trouble only; pixel errors are errors
}

static int png_decode(const uint8_t *buf, size_t n, data_image_src *out, mm_err *err) {
    png_in *s = mm_calloc(1, sizeof(*s));
    s->p = buf, s->n = n;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, s, png_in_error,
                                             png_in_warning);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    volatile int rc = -1;  // read after a longjmp
    if (!png || !info) {
        mm_fail(err, "libpng could not start");
    } else if (setjmp(png_jmpbuf(png)) == 0) {
        png_set_read_fn(png, s, png_in_read);
        png_set_user_limits(png, MAX_SIDE, MAX_SIDE);
        png_read_info(png, info);
        png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
        if ((int64_t)w * h > MAX_PIXELS) {
            snprintf(s->msg, sizeof(s->msg),
                     "PNG of %lu x %lu pixels (%.1f Mpixel) exceeds the limit of %d Mpixel "
                     "(%lld pixels); shrink it before packing",
                     (unsigned long)w, (unsigned long)h, (double)w * h / 1048576.0, MAX_MPIXEL,
                     (long long)MAX_PIXELS);
            png_longjmp(png, 2);
        }
        // palette -> RGB, grey below 8 bits -> 8 bits, tRNS -> an alpha channel; 16 bits stay
        png_set_expand(png);
        png_set_interlace_handling(png);
        png_read_update_info(png, info);
        int c = png_get_channels(png, info), depth = png_get_bit_depth(png, info);
        size_t rowbytes = png_get_rowbytes(png, info);
        if (c < 1 || c > 4 || (depth != 8 && depth != 16) ||
            rowbytes != (size_t)w * c * (size_t)(depth / 8))
            png_error(png, "unexpected pixel layout after expansion");
        s->px = mm_malloc(rowbytes * h);
        s->rows = mm_malloc(sizeof(png_bytep) * h);
        for (png_uint_32 y = 0; y < h; y++) s->rows[y] = s->px + (size_t)y * rowbytes;
        png_read_image(png, s->rows);
        png_read_end(png, NULL);  // a file cut after its pixels is still a broken file
        out->h = (int)h, out->w = (int)w, out->c = c, out->depth = depth;
        if (depth == 16) {  // PNG stores big-endian samples
            size_t k = (size_t)w * h * c;
            uint16_t *v = mm_malloc(sizeof(uint16_t) * k);
            for (size_t i = 0; i < k; i++) v[i] = (uint16_t)(s->px[2 * i] << 8 | s->px[2 * i + 1]);
            free(s->px);
            s->px = (uint8_t *)v;
        }
        out->px = s->px;
        s->px = NULL;
        rc = 0;
    } else if (strncmp(s->msg, "PNG of ", 7) == 0) {
        mm_fail(err, "%s", s->msg);
    } else {
        mm_fail(err, "not a readable PNG: %s", s->msg);
    }
    png_destroy_read_struct(png ? &png : NULL, info ? &info : NULL, NULL);
    free(s->px);
    free(s->rows);
    free(s);
    return rc;
}

// ---------------------------------------------------------------------------------------
// JPEG. Warnings (e.g. "premature end of data") stop decoding: a damaged photo is reported,
// not packed with grey where its data ran out.
static int jpeg_decode(const uint8_t *buf, size_t n, data_image_src *out, mm_err *err) {
    tjhandle tj = tjInitDecompress();
    if (!tj) return mm_fail(err, "TurboJPEG could not start: %s", tjGetErrorStr2(NULL));
    // zeroed: for a stream of tables only, TurboJPEG 2.1 reports success and writes none of them
    int w = 0, h = 0, subsamp = 0, cs = 0, rc = -1;
    if (tjDecompressHeader3(tj, buf, (unsigned long)n, &w, &h, &subsamp, &cs) != 0) {
        mm_fail(err, "not a readable JPEG: %s", tjGetErrorStr2(tj));
    } else if (w == 0 && h == 0) {
        mm_fail(err, "not a readable JPEG: no image frame (tables only)");
    } else if (w < 1 || h < 1) {
        mm_fail(err, "JPEG of %d x %d pixels is empty", w, h);
    } else if (w > MAX_SIDE || h > MAX_SIDE || (int64_t)w * h > MAX_PIXELS) {
        mm_fail(err,
                "JPEG of %d x %d pixels (%.1f Mpixel) exceeds the limit of %d Mpixel (%lld "
                "pixels, sides up to %d); shrink it before packing",
                w, h, (double)w * h / 1048576.0, MAX_MPIXEL, (long long)MAX_PIXELS, MAX_SIDE);
    } else if (cs == TJCS_CMYK || cs == TJCS_YCCK) {
        mm_fail(err, "CMYK JPEGs are not supported (convert to RGB)");
    } else {
        int c = cs == TJCS_GRAY ? 1 : 3;
        uint8_t *px = mm_malloc((size_t)w * h * c);
        if (tjDecompress2(tj, buf, (unsigned long)n, px, w, 0, h, c == 1 ? TJPF_GRAY : TJPF_RGB,
                          TJFLAG_STOPONWARNING) != 0) {
            mm_fail(err, "not a readable JPEG: %s", tjGetErrorStr2(tj));
            free(px);
        } else {
            out->h = h, out->w = w, out->c = c, out->depth = 8, out->px = px;
            rc = 0;
        }
    }
    tjDestroy(tj);
    return rc;
}

int data_image_decode(const uint8_t *buf, size_t n, data_image_src *out, mm_err *err) {
    memset(out, 0, sizeof(*out));
    if (n == 0) return mm_fail(err, "file is empty");
    if (n >= 8 && memcmp(buf, "\x89PNG\r\n\x1a\n", 8) == 0) return png_decode(buf, n, out, err);
    if (n >= 3 && buf[0] == 0xFF && buf[1] == 0xD8 && buf[2] == 0xFF)
        return jpeg_decode(buf, n, out, err);
    return mm_fail(err, "not a PNG or JPEG file (unrecognised first bytes)");
}

void data_image_src_free(data_image_src *s) {
    free(s->px);
    memset(s, 0, sizeof(*s));
}

// ---------------------------------------------------------------------------------------
// Resampling (FORMAT.md "Packing"): scale so the image covers H x W, centre-crop, per axis a
// box filter over each output pixel's footprint when shrinking and linear interpolation
// between pixel centres when enlarging, in premultiplied-alpha floats.

// Taps of one axis: output o reads src[first[o] .. first[o] + count[o]) with weights w.
typedef struct {
    int *first, *count;  // (O)
    float *w;            // (O * max_taps)
    int max_taps;
} taps;

static void taps_make(taps *t, int O, int R, int off, int S) {
    double scale = (double)S / R;  // source pixels per resized pixel
    t->max_taps = scale > 1 ? (int)ceil(scale) + 2 : 2;
    t->first = mm_malloc(sizeof(int) * (size_t)O);
    t->count = mm_malloc(sizeof(int) * (size_t)O);
    t->w = mm_calloc((size_t)O * (size_t)t->max_taps, sizeof(float));
    for (int o = 0; o < O; o++) {
        float *w = t->w + (size_t)o * t->max_taps;
        int r = o + off;
        if (scale > 1) {
            double a = r * scale, b = (r + 1) * scale;
            int s1 = (int)ceil(b), k = 0;
            if (s1 > S) s1 = S;
            t->first[o] = (int)floor(a);
            for (int s = (int)floor(a); s < s1; s++) {
                double lo = a > s ? a : s, hi = b < s + 1 ? b : s + 1;
                if (!(hi > lo)) {  // only at an end, from rounding: leave it out
                    if (k == 0) t->first[o] = s + 1;
                    continue;
                }
                w[k++] = (float)((hi - lo) / scale);
            }
            t->count[o] = k;
        } else {
            double c = (r + 0.5) * scale - 0.5;
            if (c < 0) c = 0;
            if (c > S - 1) c = S - 1;
            int s0 = (int)floor(c);
            double f = c - s0;
            t->first[o] = s0;
            if (f > 0 && s0 + 1 < S) {
                w[0] = (float)(1 - f), w[1] = (float)f, t->count[o] = 2;
            } else {
                w[0] = 1, t->count[o] = 1;
            }
        }
    }
}

static void taps_free(taps *t) {
    free(t->first);
    free(t->count);
    free(t->w);
}

// Source row y as premultiplied floats in the target layout: K = C values per pixel (C = 1:
// luma; 3: RGB; 4: RGB and alpha).
static void row_to_float(const data_image_src *src, int y, int C, float *out) {
    int c = src->c, w = src->w;
    float inv = src->depth == 16 ? 1.0f / 65535 : 1.0f / 255;
    size_t base = (size_t)y * w * c;
    const uint8_t *p8 = src->px;
    const uint16_t *p16 = src->px;
    for (int x = 0; x < w; x++) {
        float v[4] = {0, 0, 0, 1};
        for (int k = 0; k < c; k++) {
            size_t i = base + (size_t)x * c + k;
            v[k] = (src->depth == 16 ? p16[i] : p8[i]) * inv;
        }
        float r, g, b, a;
        if (c <= 2) r = g = b = v[0];
        else r = v[0], g = v[1], b = v[2];
        a = c == 2 ? v[1] : c == 4 ? v[3] : 1.0f;
        float *o = out + (size_t)x * C;
        if (C == 1) {
            // BT.601 luma (what libjpeg and most tools use for grey); a grey source stays exact
            o[0] = (c <= 2 ? r : 0.299f * r + 0.587f * g + 0.114f * b) * a;
        } else {
            o[0] = r * a, o[1] = g * a, o[2] = b * a;
            if (C == 4) o[3] = a;
        }
    }
}

static uint8_t to_u8(float v) {
    float s = v * 255.0f + 0.5f;
    return !(s > 0) ? 0 : s >= 255.0f ? 255 : (uint8_t)s;
}

void data_image_fit(const data_image_src *src, int H, int W, int C, uint8_t *out) {
    MM_CHECK(src->h >= 1 && src->w >= 1 && H >= 1 && W >= 1 && (C == 1 || C == 3 || C == 4),
             "data_image_fit: %dx%d to %dx%dx%d", src->h, src->w, H, W, C);
    int h = src->h, w = src->w;
    double s = fmax((double)H / h, (double)W / w);
    long rh = lround(h * s), rw = lround(w * s);
    if (rh < H) rh = H;
    if (rw < W) rw = W;
    taps ty, tx;
    taps_make(&ty, H, (int)rh, (int)((rh - H) / 2), h);
    taps_make(&tx, W, (int)rw, (int)((rw - W) / 2), w);
    // only the source rows some output row reads
    int y_lo = ty.first[0], y_hi = ty.first[H - 1] + ty.count[H - 1];
    float *row = mm_malloc(sizeof(float) * (size_t)w * C);
    float *mid = mm_calloc((size_t)(y_hi - y_lo) * W * C, sizeof(float));  // (rows, W, C)
    for (int y = y_lo; y < y_hi; y++) {
        row_to_float(src, y, C, row);
        float *m = mid + (size_t)(y - y_lo) * W * C;
        for (int x = 0; x < W; x++) {
            const float *wt = tx.w + (size_t)x * tx.max_taps;
            for (int k = 0; k < C; k++) {
                float acc = 0;
                for (int j = 0; j < tx.count[x]; j++)
                    acc += wt[j] * row[(size_t)(tx.first[x] + j) * C + k];
                m[(size_t)x * C + k] = acc;
            }
        }
    }
    float px[4];
    for (int y = 0; y < H; y++) {
        const float *wt = ty.w + (size_t)y * ty.max_taps;
        for (int x = 0; x < W; x++) {
            for (int k = 0; k < C; k++) {
                float acc = 0;
                for (int j = 0; j < ty.count[y]; j++)
                    acc += wt[j] * mid[((size_t)(ty.first[y] + j - y_lo) * W + x) * C + k];
                px[k] = acc;
            }
            uint8_t *o = out + ((size_t)y * W + x) * C;
            if (C == 4) {  // back to straight alpha; a fully transparent pixel is (0, 0, 0, 0)
                float a = px[3];
                for (int k = 0; k < 3; k++) o[k] = a > 0 ? to_u8(px[k] / a) : 0;
                o[3] = to_u8(a);
            } else {
                for (int k = 0; k < C; k++) o[k] = to_u8(px[k]);
            }
        }
    }
    free(row);
    free(mid);
    taps_free(&ty);
    taps_free(&tx);
}

int data_image_load(const char *path, int H, int W, int C, uint8_t *out, mm_err *err) {
    uint8_t *buf;
    size_t n;
    if (read_small_file(path, MAX_FILE_BYTES, &buf, &n, err)) return -1;
    data_image_src src;
    int rc = data_image_decode(buf, n, &src, err);
    free(buf);
    if (rc) return -1;
    data_image_fit(&src, H, W, C, out);
    data_image_src_free(&src);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Audio.
int data_audio_load(data_media *m, const char *path, int rate, int max_len, int16_t *pcm,
                    data_audio_info *info, mm_err *err) {
    MM_CHECK(rate >= 1 && max_len >= 1, "data_audio_load: rate %d, max_len %d", rate, max_len);
    memset(info, 0, sizeof(*info));
    // fopen first, for the same "cannot open: <errno text>" as every other file
    struct stat st;
    FILE *probe = open_regular(path, &st, err);
    if (!probe) return -1;
    fclose(probe);
    if (st.st_size == 0) return mm_fail(err, "file is empty");
    SF_INFO si;
    memset(&si, 0, sizeof(si));
    pthread_mutex_lock(&m->sf_open_lock);
    SNDFILE *sf = sf_open(path, SFM_READ, &si);
    if (!sf) mm_fail(err, "not a readable audio file: %s", sf_strerror(NULL));
    pthread_mutex_unlock(&m->sf_open_lock);
    if (!sf) return -1;
    info->src_rate = si.samplerate;
    info->src_channels = si.channels;
    info->src_frames = (int64_t)si.frames;
    int rc = -1;
    float *in = NULL, *mono = NULL, *res = NULL;
    if (si.frames <= 0) {
        mm_fail(err, "audio has no samples (zero length)");
        goto done;
    }
    if (si.samplerate < 1 || si.channels < 1 || si.channels > 1024) {
        mm_fail(err, "audio header says %d Hz, %d channels", si.samplerate, si.channels);
        goto done;
    }
    // Read only what the first max_len output samples need, plus a margin so the resampling
    // filter sees real signal, not the end of the input, at the last kept sample.
    int same = si.samplerate == rate;
    int64_t need = same ? max_len
                        : (int64_t)ceil((double)max_len * si.samplerate / rate) +
                              si.samplerate / 20 + 256;
    int64_t want = si.frames < need ? si.frames : need;
    in = malloc(sizeof(float) * (size_t)want * (size_t)si.channels);
    mono = malloc(sizeof(float) * (size_t)want);
    if (!in || !mono) {
        mm_fail(err, "out of memory for %lld frames of audio", (long long)want);
        goto done;
    }
    int64_t got = 0;
    while (got < want) {
        sf_count_t r = sf_readf_float(sf, in + (size_t)got * si.channels, want - got);
        if (r <= 0) break;
        got += r;
    }
    if (got < want) {
        mm_fail(err, "audio data is truncated or corrupt (read %lld of %lld frames%s%s)",
                (long long)got, (long long)want, sf_error(sf) ? ": " : "",
                sf_error(sf) ? sf_strerror(sf) : "");
        goto done;
    }
    for (int64_t i = 0; i < got; i++) {  // down-mix: the mean of the channels
        double acc = 0;
        for (int ch = 0; ch < si.channels; ch++) acc += in[(size_t)i * si.channels + ch];
        mono[i] = (float)(acc / si.channels);
    }
    const float *out = mono;
    size_t out_n = (size_t)got;
    if (!same) {
        size_t cap = (size_t)ceil((double)got * rate / si.samplerate) + 64, done_n = 0;
        res = malloc(sizeof(float) * cap);
        if (!res) {
            mm_fail(err, "out of memory resampling audio");
            goto done;
        }
        soxr_io_spec_t io = soxr_io_spec(SOXR_FLOAT32_I, SOXR_FLOAT32_I);
        soxr_quality_spec_t q = soxr_quality_spec(SOXR_HQ, 0);
        soxr_error_t e = soxr_oneshot(si.samplerate, rate, 1, mono, (size_t)got, NULL, res, cap,
                                      &done_n, &io, &q, NULL);
        if (e) {
            mm_fail(err, "resampling from %d Hz to %d Hz failed: %s", si.samplerate, rate, e);
            goto done;
        }
        out = res, out_n = done_n;
    }
    info->trimmed = got < si.frames || out_n > (size_t)max_len;
    if (out_n > (size_t)max_len) out_n = (size_t)max_len;
    for (size_t i = 0; i < out_n; i++) {  // [-1, 1) -> int16, the reader's pcm / 32768
        float v = out[i] * 32768.0f;
        pcm[i] = !(v > -32768.0f) ? -32768 : v >= 32767.0f ? 32767 : (int16_t)lrintf(v);
    }
    if (out_n == 0) {
        mm_fail(err, "audio has no samples at %d Hz (too short)", rate);
        goto done;
    }
    info->n = (int)out_n;
    rc = 0;
done:
    free(in);
    free(mono);
    free(res);
    sf_close(sf);
    return rc;
}

int data_audio_probe(data_media *m, const char *path, int rate, int64_t *n, mm_err *err) {
    struct stat st;
    FILE *probe = open_regular(path, &st, err);  // never sf_open a FIFO: it would block
    if (!probe) return -1;
    fclose(probe);
    SF_INFO si;
    memset(&si, 0, sizeof(si));
    pthread_mutex_lock(&m->sf_open_lock);
    SNDFILE *sf = sf_open(path, SFM_READ, &si);
    if (!sf) mm_fail(err, "not a readable audio file: %s", sf_strerror(NULL));
    pthread_mutex_unlock(&m->sf_open_lock);
    if (!sf) return -1;
    sf_close(sf);
    if (si.samplerate < 1 || si.frames < 0) return mm_fail(err, "bad audio header");
    *n = si.samplerate == rate ? (int64_t)si.frames
                               : (int64_t)ceil((double)si.frames * rate / si.samplerate);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Captions.
int data_caption_check(const char *s, size_t n, int text_max, mm_err *err) {
    size_t at;
    const char *why = data_utf8_why((const uint8_t *)s, n, &at);
    if (why) return mm_fail(err, "not valid UTF-8: byte %zu: %s", at, why);
    if (n > (size_t)text_max)
        return mm_fail(err, "caption of %zu bytes is longer than text_max %d (see --text-max)", n,
                       text_max);
    return 0;
}

size_t data_caption_cut(const char *s, size_t n, size_t max) {
    if (n <= max) return n;
    size_t k = max;  // s[k] is the first byte left out: not a continuation byte (10xxxxxx)
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    return k;
}

int data_caption_read(const char *path, char **out, size_t *n, mm_err *err) {
    uint8_t *buf;
    size_t len;
    if (read_small_file(path, MAX_FILE_BYTES, &buf, &len, err)) return -1;
    size_t start = 0;
    if (len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) start = 3;
    if (len > start && buf[len - 1] == '\n') {
        len--;
        if (len > start && buf[len - 1] == '\r') len--;
    }
    memmove(buf, buf + start, len - start);
    buf[len - start] = '\0';
    *out = (char *)buf;
    *n = len - start;
    return 0;
}

int data_caption_load(const char *path, int text_max, char *out, int *n, mm_err *err) {
    char *buf;
    size_t len;
    if (data_caption_read(path, &buf, &len, err)) return -1;
    int rc = data_caption_check(buf, len, text_max, err);
    if (rc == 0) {
        memcpy(out, buf, len + 1);
        *n = (int)len;
    }
    free(buf);
    return rc;
}
