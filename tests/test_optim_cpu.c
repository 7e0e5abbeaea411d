// test_optim_cpu.c: the CPU backend's optimizer kernels (model/cpu/backend_cpu.c) at the sizes
// where their fast paths and their edges meet: AdamW, vectorized over each thread's share of
// each segment, against a plain scalar loop of the same float formula (bit for bit) and a
// float64 one (to 1e-6), at 1 and 2 threads, on segments that do not start at the plan's lo;
// the gradient sum of squares, whose 16 Ki-element chunks run four side by side, against a
// plain loop that sums each chunk in order and then the chunk sums in order (bit for bit,
// including a partial last chunk and a segment of one chunk); and the large-buffer path of
// the CPU ops' allocator (zeroed, huge-page aligned). Prints "N passed, N failed".
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../model/backend.h"
#include "../model/model.h"
#include "test.h"

enum { CHUNK = 1 << 14 };

// the documented order: each chunk summed in order, then the chunk sums in order
static double sumsq_plain(const float *g, size_t n) {
    double total = 0.0;
    for (size_t c0 = 0; c0 < n; c0 += CHUNK) {
        double s = 0.0;
        for (size_t i = c0; i < n && i < c0 + CHUNK; i++) s += (double)g[i] * (double)g[i];
        total += s;
    }
    return total;
}

static float frand(uint64_t *s) {
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((*s >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static void test_sumsq(test_counts *tc) {
    const mm_backend *be = &mm_backend_cpu;
    // segments: 6 full chunks + a tail (two tasks, the second partial), exactly 4 chunks,
    // one chunk and a bit, a short one; the first two sharded
    const size_t sizes[4] = {6 * CHUNK + 123, 4 * CHUNK, CHUNK + 1, 77};
    const size_t lo = 5;
    mm_opt_seg seg[4];
    size_t off = lo;
    for (int s = 0; s < 4; s++) {
        seg[s] = (mm_opt_seg){
            .offset = off, .size = sizes[s], .decay = 1, .lr_mult = 1, .sharded = s < 2};
        off += sizes[s];
    }
    float *g = malloc((off - lo) * sizeof(float));
    uint64_t st = 42;
    for (size_t i = 0; i < off - lo; i++) g[i] = frand(&st) * (i % 7 == 0 ? 100.0f : 1.0f);
    double want_sh = 0, want_rep = 0;
    for (int s = 0; s < 4; s++) {
        const double v = sumsq_plain(g + (seg[s].offset - lo), sizes[s]);
        if (seg[s].sharded)
            want_sh += v;
        else
            want_rep += v;
    }
    void *plan = be->iface->opt_plan_new(be, seg, 4, lo, off);
    for (int t = 1; t <= 2; t++) {
        omp_set_num_threads(t);
        double sh = -1, rep = -1;
        be->iface->sumsq(be, plan, g, &sh, &rep);
        TEST_CHECK(tc, sh == want_sh && rep == want_rep,
                   "sumsq at %d threads: %.17g %.17g, want %.17g %.17g", t, sh, rep, want_sh,
                   want_rep);
    }
    be->iface->opt_plan_free(be, plan);
    free(g);
}

static void test_adamw(test_counts *tc) {
    const mm_backend *be = &mm_backend_cpu;
    // parameters [0, 3000); the plan covers [100, 3000): segments of odd sizes, one frozen
    // gap (no segment) that must stay untouched
    const size_t N = 3000, lo = 100;
    const mm_opt_seg seg[3] = {{.offset = 100, .size = 1001, .decay = 1, .lr_mult = 1},
                               {.offset = 1101, .size = 17, .decay = 0, .lr_mult = 0.5f},
                               {.offset = 1200, .size = 1800, .decay = 1, .lr_mult = 2}};
    const mm_adamw_args a = {.step = 3,
                             .lr = 0.01,
                             .beta1 = 0.9,
                             .beta2 = 0.95,
                             .eps = 1e-8,
                             .weight_decay = 0.1,
                             .grad_scale = 0.5};
    float *p0 = malloc(N * sizeof(float)), *g = malloc((N - lo) * sizeof(float));
    float *m0 = malloc((N - lo) * sizeof(float)), *v0 = malloc((N - lo) * sizeof(float));
    uint64_t st = 7;
    for (size_t i = 0; i < N; i++) p0[i] = frand(&st);
    for (size_t j = 0; j < N - lo; j++) {
        g[j] = frand(&st);
        m0[j] = 0.1f * frand(&st);
        v0[j] = 0.01f * fabsf(frand(&st));
    }
    // references: the same float formula in a plain loop, and in float64
    float *pf = malloc(N * sizeof(float));
    double *pd = malloc(N * sizeof(double));
    for (size_t i = 0; i < N; i++) pf[i] = p0[i], pd[i] = p0[i];
    const float b1 = 0.9f, b2 = 0.95f, eps = 1e-8f;
    const float ibc1 = (float)(1.0 / (1.0 - pow(0.9, 3))),
                ibc2 = (float)(1.0 / (1.0 - pow(0.95, 3)));
    for (int s = 0; s < 3; s++)
        for (size_t i = seg[s].offset; i < seg[s].offset + seg[s].size; i++) {
            const size_t j = i - lo;
            const float lr = 0.01f * seg[s].lr_mult, wd = 0.1f * seg[s].decay;
            float gi = g[j] * 0.5f;
            float mi = b1 * m0[j] + (1.0f - b1) * gi;
            float vi = b2 * v0[j] + (1.0f - b2) * gi * gi;
            pf[i] -= lr * ((mi * ibc1) / (sqrtf(vi * ibc2) + eps) + wd * pf[i]);
            double gd = g[j] * 0.5, md = 0.9 * m0[j] + 0.1 * gd, vd = 0.95 * v0[j] + 0.05 * gd * gd;
            double mh = md / (1 - pow(0.9, 3)), vh = vd / (1 - pow(0.95, 3));
            pd[i] -= (double)lr * (mh / (sqrt(vh) + 1e-8) + (double)wd * pd[i]);
        }
    void *plan = be->iface->opt_plan_new(be, seg, 3, lo, N);
    float *p = malloc(N * sizeof(float)), *m = malloc((N - lo) * sizeof(float)),
          *v = malloc((N - lo) * sizeof(float));
    for (int t = 1; t <= 2; t++) {
        omp_set_num_threads(t);
        memcpy(p, p0, N * sizeof(float));
        memcpy(m, m0, (N - lo) * sizeof(float));
        memcpy(v, v0, (N - lo) * sizeof(float));
        be->iface->adamw(be, plan, p, g, m, v, &a);
        TEST_CHECK(tc, memcmp(p, pf, N * sizeof(float)) == 0,
                   "adamw at %d threads: not the plain float loop's bits", t);
        double worst = 0;
        for (size_t i = 0; i < N; i++) {
            // relative to the parameter, or to a step (lr 0.01) where the parameter is near 0
            const double e = fabs(p[i] - pd[i]) / (fabs(pd[i]) + 1e-2);
            worst = e > worst ? e : worst;
        }
        TEST_CHECK(tc, worst < 1e-6, "adamw at %d threads: %g from float64", t, worst);
        TEST_CHECK(tc, p[1150] == p0[1150] && m[1150 - lo] == m0[1150 - lo],
                   "adamw touched the gap between segments");
    }
    be->iface->opt_plan_free(be, plan);
    free(p0), free(g), free(m0), free(v0), free(pf), free(pd), free(p), free(m), free(v);
}

static void test_big_alloc(test_counts *tc) {
    const size_t bytes = (5u << 20) + 12;  // above the huge-page threshold, not a page multiple
    unsigned char *p = model_ops_cpu.mem_alloc(&mm_backend_cpu, bytes);
    size_t nonzero = 0;
    for (size_t i = 0; i < bytes; i++) nonzero += p[i] != 0;
    TEST_CHECK(tc, nonzero == 0, "large buffer: %zu bytes not zero", nonzero);
    TEST_CHECK(tc, (uintptr_t)p % (2u << 20) == 0, "large buffer not 2 MiB aligned");
    memset(p, 1, bytes);  // all of it writable
    model_ops_cpu.mem_free(&mm_backend_cpu, p);
}

int main(void) {
    test_counts tc = {0, 0};
    test_sumsq(&tc);
    test_adamw(&tc);
    test_big_alloc(&tc);
    return test_finish(&tc);
}
