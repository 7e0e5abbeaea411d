// check_cuda.h: what the GPU op tests share (test_ops_cuda.c, test_act16_cuda.c): the test
// state, host and device buffers, the error measures against the CPU reference and the table
// row each check prints. Header-only, for those test programs alone.
#ifndef MM_TESTS_GPU_CHECK_CUDA_H
#define MM_TESTS_GPU_CHECK_CUDA_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../model/cuda/cuda.h"
#include "../test.h"

typedef struct {
    const mm_backend *be;  // the CUDA backend
    cuda_ctx *c;           // its context (be->ctx)
    test_counts tc;
    mm_rng rng;
} T;

// ---------------------------------------------------------------------------------------
// helpers: host/device buffers, comparison

static inline float *hrand(T *t, size_t n, float scale) {
    float *p = mm_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = scale * (2 * mm_rng_uniform(&t->rng) - 1);
    return p;
}

static inline float *hcopy(const float *h, size_t n) {
    float *p = mm_malloc((n ? n : 1) * sizeof(float));
    memcpy(p, h, n * sizeof(float));
    return p;
}

static inline void *dev(T *t, const void *h, size_t bytes) {
    void *d = cuda_alloc(t->c, bytes);
    cuda_upload(t->c, d, h, bytes);
    return d;
}

// max|a - b| / max|b|: the largest absolute difference relative to the tensor's largest
// reference value (plain max|a - b| when b is all zeros); INFINITY when a has a non-finite
// value where b has not.
static inline double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) && isfinite(b[i])) return INFINITY;
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > md) md = d;
        if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
    }
    return mb > 0 ? md / mb : md;
}

static inline void row(T *t, const char *op, const char *shape, const char *what, double err,
                       double tol) {
    int ok = err <= tol;
    printf("%-16s %-30s %-10s %11.3e %8.0e  %s\n", op, shape, what, err, tol, ok ? "ok" : "FAIL");
    TEST_CHECK(&t->tc, ok, "%s %s %s: error %.3e above %.0e", op, shape, what, err, tol);
}

// Downloads n floats of d and compares them with ref.
static inline void check(T *t, const char *op, const char *shape, const char *what, const float *d,
                         const float *ref, size_t n, double tol) {
    cuda_ctx_sync(t->c);
    float *h = mm_malloc((n ? n : 1) * sizeof(float));
    cuda_download(t->c, h, d, n * sizeof(float));
    row(t, op, shape, what, rel_err(h, ref, n), tol);
    free(h);
}

// Bitwise comparison of two device buffers (determinism).
static inline void check_same(T *t, const char *op, const char *shape, const char *what,
                              const float *d1, const float *d2, size_t n) {
    cuda_ctx_sync(t->c);
    float *a = mm_malloc((n ? n : 1) * sizeof(float)), *b = mm_malloc((n ? n : 1) * sizeof(float));
    cuda_download(t->c, a, d1, n * sizeof(float));
    cuda_download(t->c, b, d2, n * sizeof(float));
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    printf("%-16s %-30s %-10s %11zu %8s  %s\n", op, shape, what, diff, "0 diff",
           diff ? "FAIL" : "ok");
    TEST_CHECK(&t->tc, diff == 0, "%s %s %s: %zu elements differ between two runs", op, shape, what,
               diff);
    free(a);
    free(b);
}

static inline float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return f;
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static inline float *hround(const float *h, size_t n) {
    float *p = hcopy(h, n);
    for (size_t i = 0; i < n; i++) p[i] = bf16_round(p[i]);
    return p;
}

static inline void free_all(int n, void **p) {
    for (int i = 0; i < n; i++) free(p[i]);
}
static inline void cuda_free_all(int n, void **p) {
    for (int i = 0; i < n; i++) cuda_free(p[i]);
}

// key_valid (B, T): random with about 1 in 5 missing; sample 0 misses its whole prefix
// (its prefix queries have no key) and, when B > 2, sample B-1 misses every key.
static inline uint8_t *make_mask(T *t, int B, int Tk, int P) {
    uint8_t *m = mm_malloc((size_t)B * Tk);
    for (int i = 0; i < B * Tk; i++) m[i] = mm_rng_uniform(&t->rng) >= 0.2f;
    for (int j = 0; j < P && j < Tk; j++) m[j] = 0;
    if (B > 2)
        for (int j = 0; j < Tk; j++) m[(size_t)(B - 1) * Tk + j] = 0;
    return m;
}

#endif  // MM_TESTS_GPU_CHECK_CUDA_H
