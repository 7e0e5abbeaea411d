// fuzz.h: what the libFuzzer harnesses of tests/fuzz share: a private scratch directory for
// the readers that take a path (HDF5 files, manifests), made once per process.
//
// A harness has state that outlives one input (LLVMFuzzerTestOneInput is called millions of
// times): the scratch directory and the templates built at start. They live in static
// variables of each harness, the one place the project allows them (a fuzzer is not a
// library: one process, one thread, one harness).
#ifndef MM_FUZZ_H
#define MM_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// A fresh directory under $TMPDIR (or /tmp), removed at exit. Aborts when it cannot.
static inline const char *fuzz_scratch(void) {
    static char dir[256];
    if (dir[0]) return dir;
    const char *t = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/mm_fuzz_XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(dir)) abort();
    return dir;
}

// Writes n bytes to path (truncating). Aborts on failure: the harness cannot go on.
static inline void fuzz_write(const char *path, const void *buf, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (n && fwrite(buf, 1, n, f) != n) abort();
    if (fclose(f) != 0) abort();
}

// Reads a whole file into a malloc'd buffer; aborts on failure.
static inline uint8_t *fuzz_read(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) abort();
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) abort();
    fclose(f);
    *n = (size_t)len;
    return buf;
}

#endif  // MM_FUZZ_H
