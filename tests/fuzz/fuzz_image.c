// fuzz_image.c: libFuzzer harness for the image decoders pack uses (data/media.c): the input
// is an image file's bytes, given to data_image_decode and then data_image_fit, which is
// what data_image_load does once it has read the file (PNG by libpng, JPEG by TurboJPEG).
// Any bytes must give pixels or a one-line error, never a crash. Beyond that it holds the
// pixel limit (issue 16, item 12: a 1 MB PNG whose header said 11585 x 11585 RGBA16 made
// pack allocate 2.1 GB and spend 10 s): an image whose header says more than 64 Mpixel is
// refused with no allocation near its size, in well under a second of CPU, and, when the
// refusal can only have come from the size check, with the size in the message. The header
// is read here independently of media.c. Decoded images are checked for sane shapes and
// for the one exact case of data_image_fit (no resizing, same layout: the pixels unchanged).
#include <sanitizer/allocator_interface.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "../../data/data.h"
#include "fuzz.h"

#define LIMIT_PIXELS ((uint64_t)1 << 26)  // 64 Mpixel, FORMAT.md "Packing"
// What a refusal from the header may allocate: libpng's or TurboJPEG's own state, never
// anything the size of the image (11585 x 11585 RGBA16 is 1 GiB).
#define HEADER_ALLOC_MAX ((size_t)1 << 20)

// The largest single allocation while armed, seen through ASan's allocation hooks.
static int alloc_armed;
static size_t alloc_max;

static void on_malloc(const volatile void *p, size_t size) {
    (void)p;
    if (alloc_armed && size > alloc_max) alloc_max = size;
}

static void on_free(const volatile void *p) {
    (void)p;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

// What the header says, read without media.c.
typedef struct {
    uint64_t w, h;  // 0 when no readable header
    int is_png;
    // A PNG whose valid IHDR is directly followed by IDAT: libpng's png_read_info stops at
    // that IDAT with nothing else to refuse, so only the size check can refuse it.
    int png_size_only;
} header;

// IHDR fields libpng accepts, palette images left out (they need a PLTE before IDAT).
static int png_ihdr_fields_ok(const uint8_t *p) {
    int depth = p[24], ct = p[25];
    int ok = ct == 0 ? depth == 1 || depth == 2 || depth == 4 || depth == 8 || depth == 16
                     : (ct == 2 || ct == 4 || ct == 6) && (depth == 8 || depth == 16);
    return ok && p[26] == 0 && p[27] == 0 && p[28] <= 1;
}

static header read_header(const uint8_t *p, size_t n) {
    header hd = {0};
    if (n >= 33 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) {
        hd.is_png = 1;
        // IHDR: length 13, type, width, height, depth, colour type, 3 method bytes, crc32
        if (be32(p + 8) != 13 || memcmp(p + 12, "IHDR", 4) != 0) return hd;
        if (crc32(crc32(0L, Z_NULL, 0), p + 12, 17) != be32(p + 29)) return hd;  // libpng refuses
        hd.w = be32(p + 16), hd.h = be32(p + 20);
        hd.png_size_only = n >= 41 && memcmp(p + 37, "IDAT", 4) == 0 &&
                           be32(p + 33) <= (1u << 20) && png_ihdr_fields_ok(p) && hd.w <= 65535 &&
                           hd.h <= 65535;  // pack's libpng user limits
    } else if (n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) {
        tjhandle tj = tjInitDecompress();
        // a tables-only stream (no frame) gives 0 and leaves all four untouched
        int w = 0, h = 0, sub = 0, cs = 0;
        if (tj && tjDecompressHeader3(tj, p, (unsigned long)n, &w, &h, &sub, &cs) == 0 && w > 0 &&
            h > 0)
            hd.w = (uint64_t)w, hd.h = (uint64_t)h;
        if (tj) tjDestroy(tj);
    }
    return hd;
}

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void fail(const char *what, const header *hd, const mm_err *err) {
    fprintf(stderr, "fuzz_image: %s (header %llu x %llu): %s\n", what, (unsigned long long)hd->w,
            (unsigned long long)hd->h, err ? err->msg : "");
    abort();
}

// FUZZ_WRITE_SEEDS=DIR: the JPEG seeds, made with TurboJPEG (the PNG seeds and the
// regression inputs come from make_inputs.py, which has no JPEG encoder).
static void write_jpeg_seeds(const char *dir) {
    uint8_t px[9 * 7 * 3];
    for (int i = 0; i < 9 * 7 * 3; i++) px[i] = (uint8_t)(i * 37 + (i / 27) * 11);
    struct {
        const char *name;
        int w, h, pf, sub, flags;
    } seeds[] = {{"rgb420.jpg", 8, 6, TJPF_RGB, TJSAMP_420, 0},
                 {"grey.jpg", 5, 3, TJPF_GRAY, TJSAMP_GRAY, 0},
                 {"rgb444-progressive.jpg", 9, 7, TJPF_RGB, TJSAMP_444, TJFLAG_PROGRESSIVE}};
    for (size_t k = 0; k < sizeof(seeds) / sizeof(seeds[0]); k++) {
        tjhandle tj = tjInitCompress();
        unsigned char *jpg = NULL;
        unsigned long n = 0;
        if (!tj || tjCompress2(tj, px, seeds[k].w, 0, seeds[k].h, seeds[k].pf, &jpg, &n,
                               seeds[k].sub, 90, seeds[k].flags) != 0)
            abort();
        char path[600];
        snprintf(path, sizeof(path), "%s/%s", dir, seeds[k].name);
        fuzz_write(path, jpg, n);
        tjFree(jpg);
        tjDestroy(tj);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (getenv("FUZZ_WRITE_SEEDS")) {
        write_jpeg_seeds(getenv("FUZZ_WRITE_SEEDS"));
        exit(0);
    }
    __sanitizer_install_malloc_and_free_hooks(on_malloc, on_free);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    header hd = read_header(data, size);
    int over = hd.w * hd.h > LIMIT_PIXELS;
    data_image_src src;
    mm_err err = {{0}};
    alloc_max = 0, alloc_armed = 1;
    double t0 = cpu_seconds();
    int rc = data_image_decode(data, size, &src, &err);
    double took = cpu_seconds() - t0;
    alloc_armed = 0;
    if (rc != 0) {
        if (!err.msg[0] || strchr(err.msg, '\n')) fail("error not one line", &hd, &err);
    }
    if (over) {
        if (rc == 0) fail("image over 64 Mpixel decoded", &hd, NULL);
        if (alloc_max > HEADER_ALLOC_MAX) {
            fprintf(stderr, "fuzz_image: allocated %zu bytes before refusing\n", alloc_max);
            fail("image over 64 Mpixel not refused from its header", &hd, &err);
        }
        if (took > 1.0) fail("image over 64 Mpixel refused slowly", &hd, &err);
        char size_said[64];
        snprintf(size_said, sizeof(size_said), "%s of %llu x %llu pixels",
                 hd.is_png ? "PNG" : "JPEG", (unsigned long long)hd.w, (unsigned long long)hd.h);
        if ((!hd.is_png || hd.png_size_only) &&
            (!strstr(err.msg, size_said) || !strstr(err.msg, "exceeds the limit of 64 Mpixel")))
            fail("refusal does not give the size and the limit", &hd, &err);
        return 0;
    }
    if (rc != 0) return 0;
    if (src.h < 1 || src.w < 1 || (uint64_t)src.h * (uint64_t)src.w > LIMIT_PIXELS || src.c < 1 ||
        src.c > 4 || (src.depth != 8 && src.depth != 16) || !src.px ||
        (hd.w && ((uint64_t)src.w != hd.w || (uint64_t)src.h != hd.h)))
        fail("decoded image has an impossible shape", &hd, NULL);
    // fitting to the schema's shape, as pack does, for a few shapes and layouts
    uint8_t out[8 * 8 * 4];
    data_image_fit(&src, 4, 4, 3, out);
    data_image_fit(&src, 3, 5, 1, out);
    data_image_fit(&src, 2, 7, 4, out);
    // FORMAT.md "Packing": exact when no resizing is needed and the layout is kept
    if (src.depth == 8 && (src.c == 1 || src.c == 3) && (size_t)src.h * src.w <= 4096) {
        size_t n = (size_t)src.h * src.w * src.c;
        uint8_t *same = malloc(n);
        data_image_fit(&src, src.h, src.w, src.c, same);
        if (memcmp(same, src.px, n) != 0)
            fail("fit to its own shape changed the pixels", &hd, NULL);
        free(same);
    }
    data_image_src_free(&src);
    return 0;
}
