// test_act16_cuda.c: the CUDA ops with bf16 activations (cuda.h act16: activations and their
// gradients bf16 in memory, fp32 arithmetic in the kernels, fp32 parameters, parameter
// gradients and statistics) against the CPU reference run on the same bf16 values. It is the
// gate of bf16 end to end (issue 15): an op joins the trainer's bf16 path once it passes here.
//
// What a pass proves: each bf16 output is the fp32 result rounded to nearest, once. The
// measure, per tensor, is the largest (|gpu - ref| - atol * max|ref|) / ulp over the elements,
// ulp the bf16 spacing at the larger of |gpu| and |ref|, atol the fp32 tolerance of
// test_ops_cuda.c (1e-5; 1e-4 where tensor cores accumulate) for the difference in fp32
// before the rounding. Rounding to nearest keeps it at 0.5 at most; truncating, or rounding
// twice, goes past it. Where an op rounds an intermediate that it also stores (the residual before
// its LayerNorm, a GELU input or output written between two unfused ops), the reference
// rounds it too; where an op keeps it in fp32 (cuBLASLt's epilogues), the reference does.
// fp32 outputs (parameter gradients, statistics) are held to test_ops_cuda.c's relative
// measure. Accumulating ops start from random gradients, so their += is checked too.
//
// Needs a GPU (tests/gpu/run.sh), or runs through the emulation (tests/cuda_build.sh, in the
// emulator's four thread orders). Prints one row per check and "N passed, N failed".
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/data.h"
#include "../../model/cuda/cuda.h"
#include "../test.h"
#include "check_cuda.h"

// ---------------------------------------------------------------------------------------
// bf16 buffers and the measure

static uint16_t bf16_bits(float f) {
    f = bf16_round(f);
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)(u >> 16);
}

static float bf16_value(uint16_t b) {
    const uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// A device activation of n bf16 values from host floats (rounded); typed float * for the
// ops' signatures, as the trainer passes them.
static float *adev(T *t, const float *h, size_t n) {
    uint16_t *b = mm_malloc((n ? n : 1) * 2);
    for (size_t i = 0; i < n; i++) b[i] = bf16_bits(h[i]);
    float *d = cuda_alloc(t->c, (n ? n : 1) * 2);
    cuda_upload(t->c, d, b, n * 2);
    free(b);
    return d;
}

// n bf16 values of device activation d as host floats (caller frees)
static float *aget(T *t, const float *d, size_t n) {
    cuda_ctx_sync(t->c);
    uint16_t *b = mm_malloc((n ? n : 1) * 2);
    float *h = mm_malloc((n ? n : 1) * 4);
    cuda_download(t->c, b, d, n * 2);
    for (size_t i = 0; i < n; i++) h[i] = bf16_value(b[i]);
    free(b);
    return h;
}

// The spacing of bf16 numbers at |x| (0 at 0).
static double bf16_ulp(double x) {
    int e;
    if (x == 0 || !isfinite(x)) return 0;
    frexp(fabs(x), &e);  // |x| in [2^(e-1), 2^e): 8 significant bits
    return ldexp(1, e - 8);
}

// See the file comment; INFINITY when a is non-finite where ref is finite.
static double ulp_err(const float *a, const float *ref, size_t n, double atol) {
    double mb = 0, worst = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)ref[i]) > mb) mb = fabs((double)ref[i]);
    const double abs_tol = atol * (mb > 0 ? mb : 1);
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) && isfinite(ref[i])) return INFINITY;
        const double d = fabs((double)a[i] - (double)ref[i]) - abs_tol;
        const double u = bf16_ulp(fmax(fabs((double)a[i]), fabs((double)ref[i])));
        const double e = d <= 0 ? 0 : u > 0 ? d / u : INFINITY;
        if (e > worst) worst = e;
    }
    return worst;
}

// Checks bf16 device activation d against ref: rounded to nearest (tol 0.5) or, with atol 0
// and tol 0, bitwise the reference rounded.
static void acheck(T *t, const char *op, const char *shape, const char *what, const float *d,
                   const float *ref, size_t n, double atol, double tol) {
    float *h = aget(t, d, n);
    float *r = tol == 0 ? hround(ref, n) : hcopy(ref, n);
    row(t, op, shape, what, ulp_err(h, r, n, atol), tol);
    free(h);
    free(r);
}

// Two bf16 device activations hold the same bits.
static void asame(T *t, const char *op, const char *shape, const char *what, const float *d1,
                  const float *d2, size_t n) {
    float *a = aget(t, d1, n), *b = aget(t, d2, n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += memcmp(&a[i], &b[i], 4) != 0;
    printf("%-16s %-30s %-10s %11zu %8s  %s\n", op, shape, what, diff, "0 diff",
           diff ? "FAIL" : "ok");
    TEST_CHECK(&t->tc, diff == 0, "%s %s %s: %zu elements differ", op, shape, what, diff);
    free(a);
    free(b);
}

// rand rounded to bf16: the values a bf16 activation can hold
static float *arand(T *t, size_t n, float scale) {
    float *h = hrand(t, n, scale);
    for (size_t i = 0; i < n; i++) h[i] = bf16_round(h[i]);
    return h;
}

enum { TC = 1, EXACT = 2 };  // tolerance kinds: tensor-core accumulation, bitwise
static void acheck_k(T *t, const char *op, const char *shape, const char *what, const float *d,
                     const float *ref, size_t n, int kind) {
    acheck(t, op, shape, what, d, ref, n,
           kind == EXACT ? 0
           : kind == TC  ? 1e-4
                         : 1e-5,
           kind == EXACT ? 0 : 0.5);
}

// ---------------------------------------------------------------------------------------
// matmul: the weight and bias from the parameters' bf16 copy (at an offset that leaves the
// bias's copy unaligned when `odd`, so it is converted on its own) or, with no valid copy,
// converted per call

static void test_matmul(T *t, int N, int IC, int OC, int with_bias, int from_copy, int odd) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d IC%d OC%d%s%s", N, IC, OC, with_bias ? " b" : "",
             from_copy ? (odd ? " copy+1" : " copy") : "");
    const size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    const size_t off = odd ? 1 : 0, np = off + nw + OC;
    float *params = hrand(t, np, 0.5f);  // [off] w (OC, IC), bias (OC)
    float *inp = arand(t, ni, 1), *dout = arand(t, no, 1), *dinp0 = arand(t, ni, 1);
    float *dw0 = hrand(t, nw, 1), *db0 = hrand(t, OC, 1);
    float *rp = hround(params, np), *rw = rp + off, *rb = rw + nw;
    float *out = mm_malloc(no * 4), *dinp = hcopy(dinp0, ni), *dw = hcopy(dw0, nw),
          *db = hcopy(db0, OC);
    model_ops_cpu.matmul_fwd(&mm_backend_cpu, out, inp, rw, with_bias ? rb : NULL, N, IC, OC);
    model_ops_cpu.matmul_bwd(&mm_backend_cpu, dinp, dw, with_bias ? db : NULL, dout, inp, rw, N, IC,
                             OC);
    float *d_p = dev(t, params, np * 4), *d_w = d_p + off, *d_b = d_w + nw;
    float *d_inp = adev(t, inp, ni), *d_dout = adev(t, dout, no), *d_out = adev(t, out, no),
          *d_dinp = adev(t, dinp0, ni), *d_dw = dev(t, dw0, nw * 4), *d_db = dev(t, db0, OC * 4);
    t->c->p16_valid = 0;
    if (from_copy) model_ops_cuda.params_ready(t->be, d_p, np);
    const size_t lt0 = t->c->lt_matmuls[CU_LT_BIAS];
    model_ops_cuda.matmul_fwd(t->be, d_out, d_inp, d_w, with_bias ? d_b : NULL, N, IC, OC);
    acheck_k(t, "matmul_fwd", shape, "out", d_out, out, no, TC);
#ifdef MM_CUDA_EMU  // the emulation always has an algorithm for the bias epilogue
    if (with_bias)
        TEST_CHECK(&t->tc, t->c->lt_matmuls[CU_LT_BIAS] == lt0 + 1,
                   "matmul_fwd %s: cuBLASLt not used", shape);
#else
    (void)lt0;
#endif
    model_ops_cuda.matmul_bwd(t->be, d_dinp, d_dw, with_bias ? d_db : NULL, d_dout, d_inp, d_w, N,
                              IC, OC);
    acheck_k(t, "matmul_bwd", shape, "dinp", d_dinp, dinp, ni, TC);
    check(t, "matmul_bwd", shape, "dw", d_dw, dw, nw, 1e-4);
    check(t, "matmul_bwd", shape, "dbias", d_db, with_bias ? db : db0, OC, 1e-5);
    // no dinp: the weight gradient alone
    cuda_upload(t->c, d_dw, dw0, nw * 4);
    model_ops_cuda.matmul_bwd(t->be, NULL, d_dw, NULL, d_dout, d_inp, d_w, N, IC, OC);
    check(t, "matmul_bwd", shape, "dw nodinp", d_dw, dw, nw, 1e-4);
    t->c->p16_valid = 0;
    void *h[] = {params, inp, dout, dinp0, dw0, db0, rp, out, dinp, dw, db};
    void *d[] = {d_p, d_inp, d_dout, d_out, d_dinp, d_dw, d_db};
    free_all(11, h);
    cuda_free_all(7, d);
}

// matmul + GELU, forward and backward: fused by cuBLASLt where it has an algorithm (OC, and
// backward IC, a multiple of 8), where the GELU reads the unrounded product; else the two
// ops, where it reads the rounded one that was stored
static void test_matmul_gelu(T *t, int N, int IC, int OC) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d IC%d OC%d", N, IC, OC);
    const size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    float *params = hrand(t, nw + OC, 0.5f), *inp = arand(t, ni, 1);
    float *rp = hround(params, nw + OC), *rw = rp, *rb = rp + nw;
    float *pre = mm_malloc(no * 4), *out = mm_malloc(no * 4);
    model_ops_cpu.matmul_gelu_fwd(&mm_backend_cpu, pre, out, inp, rw, rb, N, IC, OC);
    float *d_p = dev(t, params, (nw + OC) * 4), *d_inp = adev(t, inp, ni);
    float *d_pre = adev(t, pre, no), *d_out = adev(t, out, no);
    model_ops_cuda.params_ready(t->be, d_p, nw + OC);
    const size_t lt0 = t->c->lt_matmuls[CU_LT_GELU_BIAS];
    model_ops_cuda.matmul_gelu_fwd(t->be, d_pre, d_out, d_inp, d_p, d_p + nw, N, IC, OC);
    const int fused = t->c->lt_matmuls[CU_LT_GELU_BIAS] > lt0;
    acheck_k(t, "matmul_gelu_fwd", shape, "pre", d_pre, pre, no, TC);
    float *pre16 = hround(pre, no), *out2 = mm_malloc(no * 4);
    if (!fused) model_ops_cpu.gelu_fwd(&mm_backend_cpu, out2, pre16, no);
    acheck_k(t, "matmul_gelu_fwd", shape, fused ? "out fused" : "out 2 ops", d_out,
             fused ? out : out2, no, TC);
#ifdef MM_CUDA_EMU
    TEST_CHECK(&t->tc, fused == (OC % 8 == 0), "matmul_gelu_fwd %s: fused %d", shape, fused);
#endif

    // backward: the GELU's input pre16 (N, OC) is now the matmul's input side: a layer
    // (OC -> IC) whose input act = GELU(pre16), dout (N, IC)
    float *w2 = hrand(t, nw, 0.5f), *rw2 = hround(w2, nw), *act = mm_malloc(no * 4);
    float *dout = arand(t, ni, 1), *dw0 = hrand(t, nw, 1), *db0 = hrand(t, IC, 1);
    model_ops_cpu.gelu_fwd(&mm_backend_cpu, act, pre16, no);
    for (size_t i = 0; i < no; i++) act[i] = bf16_round(act[i]);
    float *dpre = mm_malloc(no * 4), *dact = mm_malloc(no * 4), *dw = hcopy(dw0, nw),
          *db = hcopy(db0, IC);
    model_ops_cpu.matmul_gelu_bwd(&mm_backend_cpu, dpre, dact, dw, db, dout, act, pre16, rw2, N, OC,
                                  IC);
    float *d_w2 = dev(t, w2, nw * 4), *d_dout = adev(t, dout, ni), *d_act = adev(t, act, no),
          *d_pre16 = adev(t, pre16, no), *d_dpre = adev(t, dpre, no), *d_dact = adev(t, dact, no),
          *d_dw = dev(t, dw0, nw * 4), *d_db = dev(t, db0, IC * 4);
    const size_t lt1 = t->c->lt_matmuls[CU_LT_DGELU];
    model_ops_cuda.matmul_gelu_bwd(t->be, d_dpre, d_dact, d_dw, d_db, d_dout, d_act, d_pre16, d_w2,
                                   N, OC, IC);
    const int bfused = t->c->lt_matmuls[CU_LT_DGELU] > lt1;
    float *dpre2 = mm_malloc(no * 4), *dact16 = hround(dact, no);
    memset(dpre2, 0, no * 4);
    if (!bfused) model_ops_cpu.gelu_bwd(&mm_backend_cpu, dpre2, pre16, dact16, no);
    acheck_k(t, "matmul_gelu_bwd", shape, bfused ? "dpre fused" : "dpre 2 ops", d_dpre,
             bfused ? dpre : dpre2, no, TC);
    check(t, "matmul_gelu_bwd", shape, "dw", d_dw, dw, nw, 1e-4);
    check(t, "matmul_gelu_bwd", shape, "dbias", d_db, db, IC, 1e-5);
#ifdef MM_CUDA_EMU
    TEST_CHECK(&t->tc, bfused == (OC % 8 == 0), "matmul_gelu_bwd %s: fused %d", shape, bfused);
#endif
    void *h[] = {params, inp, rp,  pre,  out,  pre16, out2, w2,    rw2,   act,
                 dout,   dw0, db0, dpre, dact, dw,    db,   dpre2, dact16};
    void *d[] = {d_p,   d_inp,   d_pre,  d_out,  d_w2, d_dout,
                 d_act, d_pre16, d_dpre, d_dact, d_dw, d_db};
    free_all(19, h);
    cuda_free_all(12, d);
}

// ---------------------------------------------------------------------------------------
// layernorm and the fused residual add in front of it

static void test_layernorm(T *t, int N, int C) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d C%d", N, C);
    const size_t n = (size_t)N * C;
    float *x = hrand(t, n, 2), *g = hrand(t, C, 1), *b = hrand(t, C, 1), *dout = arand(t, n, 1);
    for (size_t i = 0; i < n; i++) x[i] = bf16_round(x[i] + 3);  // |mean| >> std in some rows
    float *dx0 = arand(t, n, 1), *dg0 = hrand(t, C, 1), *db0 = hrand(t, C, 1);
    float *out = mm_malloc(n * 4), *mean = mm_malloc(N * 4), *rstd = mm_malloc(N * 4);
    float *dx = hcopy(dx0, n), *dg = hcopy(dg0, C), *db = hcopy(db0, C);
    model_ops_cpu.layernorm_fwd(&mm_backend_cpu, out, mean, rstd, x, g, b, N, C);
    model_ops_cpu.layernorm_bwd(&mm_backend_cpu, dx, dg, db, dout, x, g, mean, rstd, N, C);
    float *d_x = adev(t, x, n), *d_g = dev(t, g, C * 4), *d_b = dev(t, b, C * 4),
          *d_dout = adev(t, dout, n), *d_out = adev(t, out, n), *d_mean = cuda_alloc(t->c, N * 4),
          *d_rstd = cuda_alloc(t->c, N * 4), *d_dx = adev(t, dx0, n), *d_dg = dev(t, dg0, C * 4),
          *d_db = dev(t, db0, C * 4);
    model_ops_cuda.layernorm_fwd(t->be, d_out, d_mean, d_rstd, d_x, d_g, d_b, N, C);
    acheck_k(t, "layernorm_fwd", shape, "out", d_out, out, n, 0);
    check(t, "layernorm_fwd", shape, "mean", d_mean, mean, N, 1e-5);
    check(t, "layernorm_fwd", shape, "rstd", d_rstd, rstd, N, 1e-5);
    cuda_upload(t->c, d_mean, mean, N * 4);  // the backward alone from here
    cuda_upload(t->c, d_rstd, rstd, N * 4);
    model_ops_cuda.layernorm_bwd(t->be, d_dx, d_dg, d_db, d_dout, d_x, d_g, d_mean, d_rstd, N, C);
    acheck_k(t, "layernorm_bwd", shape, "dx", d_dx, dx, n, 0);
    check(t, "layernorm_bwd", shape, "dg", d_dg, dg, C, 1e-5);
    check(t, "layernorm_bwd", shape, "db", d_db, db, C, 1e-5);

    // res = round(x + dout); out and the statistics from that rounded res, as the backward
    // sees it; bitwise add + layernorm_fwd of this backend; out of place and in place
    float *res = mm_malloc(n * 4);
    model_ops_cpu.add(&mm_backend_cpu, res, x, dout, n);
    for (size_t i = 0; i < n; i++) res[i] = bf16_round(res[i]);
    model_ops_cpu.layernorm_fwd(&mm_backend_cpu, out, mean, rstd, res, g, b, N, C);
    float *s_res = adev(t, res, n), *s_out = adev(t, out, n), *s_mean = cuda_alloc(t->c, N * 4),
          *s_rstd = cuda_alloc(t->c, N * 4);
    model_ops_cuda.add(t->be, s_res, d_x, d_dout, n);
    model_ops_cuda.layernorm_fwd(t->be, s_out, s_mean, s_rstd, s_res, d_g, d_b, N, C);
    for (int inplace = 0; inplace < 2; inplace++) {
        const char *op = "add_layernorm_fwd";
        if (inplace) snprintf(shape, sizeof(shape), "N%d C%d in place", N, C);
        float *d_res = adev(t, x, n);
        model_ops_cuda.add_layernorm_fwd(t->be, d_res, d_out, d_mean, d_rstd, inplace ? d_res : d_x,
                                         d_dout, d_g, d_b, N, C);
        acheck_k(t, op, shape, "res", d_res, res, n, EXACT);
        acheck_k(t, op, shape, "out", d_out, out, n, 0);
        check(t, op, shape, "mean", d_mean, mean, N, 1e-5);
        check(t, op, shape, "rstd", d_rstd, rstd, N, 1e-5);
        asame(t, op, shape, "out = add, layernorm_fwd", d_out, s_out, n);
        check_same(t, op, shape, "rstd = add, layernorm_fwd", d_rstd, s_rstd, N);
        cuda_free(d_res);
    }
    void *h[] = {x, g, b, dout, dx0, dg0, db0, out, mean, rstd, dx, dg, db, res};
    void *d[] = {d_x,  d_g,  d_b,  d_dout, d_out, d_mean, d_rstd,
                 d_dx, d_dg, d_db, s_res,  s_out, s_mean, s_rstd};
    free_all(14, h);
    cuda_free_all(14, d);
}

// ---------------------------------------------------------------------------------------
// elementwise: GELU forward and backward (+=), add (in place too), dropout

static void test_elementwise(T *t, size_t n) {
    char shape[64];
    snprintf(shape, sizeof(shape), "n%zu", n);
    float *x = arand(t, n, 4), *y = arand(t, n, 1), *dout = arand(t, n, 1), *dx0 = arand(t, n, 1);
    float *out = mm_malloc(n * 4), *dx = hcopy(dx0, n), *sum = mm_malloc(n * 4);
    model_ops_cpu.gelu_fwd(&mm_backend_cpu, out, x, n);
    model_ops_cpu.gelu_bwd(&mm_backend_cpu, dx, x, dout, n);
    model_ops_cpu.add(&mm_backend_cpu, sum, x, y, n);
    float *d_x = adev(t, x, n), *d_y = adev(t, y, n), *d_dout = adev(t, dout, n),
          *d_out = adev(t, out, n), *d_dx = adev(t, dx0, n);
    model_ops_cuda.gelu_fwd(t->be, d_out, d_x, n);
    acheck_k(t, "gelu_fwd", shape, "out", d_out, out, n, 0);
    model_ops_cuda.gelu_bwd(t->be, d_dx, d_x, d_dout, n);
    acheck_k(t, "gelu_bwd", shape, "dx", d_dx, dx, n, 0);
    model_ops_cuda.add(t->be, d_out, d_x, d_y, n);
    acheck_k(t, "add", shape, "out", d_out, sum, n, EXACT);
    model_ops_cuda.add(t->be, d_x, d_x, d_y, n);
    acheck_k(t, "add", shape, "in place", d_x, sum, n, EXACT);
    void *h[] = {x, y, dout, dx0, out, dx, sum};
    void *d[] = {d_x, d_y, d_dout, d_out, d_dx};
    free_all(7, h);
    cuda_free_all(5, d);
}

static void test_dropout(T *t, int B, size_t n, double p) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d n%zu p%.2f", B, n, p);
    const size_t tot = (size_t)B * n;
    float *x = arand(t, tot, 1), *out = mm_malloc(tot * 4);
    uint64_t keys[4] = {7, 8, 9, 10};
    uint64_t *d_keys = dev(t, keys, sizeof(keys));
    const uint32_t thr = (uint32_t)(p * (1 << 24));
    const model_drop hd = {keys, 3, 2, thr, (float)(1 / (1 - p)), 0},
                     dd = {d_keys, 3, 2, thr, (float)(1 / (1 - p)), 0};
    model_ops_cpu.dropout(&mm_backend_cpu, out, x, &hd, B, n);
    float *d_x = adev(t, x, tot), *d_y = adev(t, x, tot);
    model_ops_cuda.dropout(t->be, d_x, d_x, &dd, B, n);
    acheck_k(t, "dropout", shape, "in place", d_x, out, tot, EXACT);
    model_ops_cuda.dropout(t->be, d_y, d_y, NULL, B, n);  // none: x unchanged
    acheck_k(t, "dropout", shape, "none", d_y, x, tot, EXACT);
    free(x), free(out);
    void *d[] = {d_x, d_y, d_keys};
    cuda_free_all(3, d);
}

// ---------------------------------------------------------------------------------------
// attention: bf16 activations against this backend's own op on fp32 activations holding the
// same bf16 values, whose results test_ops_cuda.c checks against the CPU. The kernels'
// arithmetic does not depend on the storage, so the bf16 outputs must be those results
// rounded, bit for bit, on every path: flash on tensor cores (bf16 kernels), and the paths
// without bf16 kernels (the cuBLAS core, SIMT flash, dropout) through fp32 copies.

static void test_attention(T *t, int B, int Tn, int P, int NH, int HD, double pdrop, int path) {
    const int C = NH * HD;
    const size_t nqkv = (size_t)B * Tn * 3 * C, no = (size_t)B * Tn * C;
    const size_t nl = (size_t)B * NH * Tn, ns = model_ops_cuda.attention_saved(t->be, B, NH, Tn);
    cuda_ctx *c = t->c;
    c->flash_tc = path == 0;
    c->attn_core_bytes = path == 1 ? SIZE_MAX : 0;
    const int ftc = path == 0 && pdrop == 0 && HD % 16 == 0 && HD <= 64;
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d T%d P%d NH%d HD%d %s%s", B, Tn, P, NH, HD,
             ftc         ? "flash-TC"
             : path == 1 ? "cuBLAS"
                         : "flash",
             pdrop > 0 ? " drop" : "");
    uint64_t keys[8];
    for (int b = 0; b < B && b < 8; b++) keys[b] = 1000003u * (uint64_t)(b + 1);
    uint64_t *d_keys = dev(t, keys, sizeof(keys));
    const uint32_t thr = (uint32_t)(pdrop * (1 << 24));
    const model_drop dd = {d_keys, 2, 1, thr, (float)(1 / (1 - pdrop)), 1};
    const model_drop *drop = pdrop > 0 ? &dd : NULL;
    float *qkv = arand(t, nqkv, 2), *dout = arand(t, no, 1), *dqkv0 = arand(t, nqkv, 1);
    uint8_t *kv = make_mask(t, B, Tn, P);
    uint8_t *d_kv = dev(t, kv, (size_t)B * Tn);
    float *out = mm_malloc(no * 4), *dqkv = mm_malloc(nqkv * 4);

    // the fp32 activations' results
    c->act16 = 0;
    float *f_qkv = dev(t, qkv, nqkv * 4), *f_out = cuda_alloc(c, no * 4),
          *f_att = cuda_alloc(c, ns * 4), *f_dout = dev(t, dout, no * 4),
          *f_dqkv = dev(t, dqkv0, nqkv * 4);
    model_ops_cuda.attention_fwd(t->be, f_out, f_att, f_qkv, d_kv, B, Tn, P, NH, HD, drop);
    cuda_ctx_sync(c);
    cuda_download(c, out, f_out, no * 4);
    for (size_t i = 0; i < no; i++) out[i] = bf16_round(out[i]);  // what a bf16 forward keeps
    cuda_upload(c, f_out, out, no * 4);
    model_ops_cuda.attention_bwd(t->be, f_dqkv, f_dout, f_qkv, f_out, f_att, B, Tn, P, NH, HD,
                                 drop);
    cuda_ctx_sync(c);
    cuda_download(c, dqkv, f_dqkv, nqkv * 4);

    c->act16 = 1;
    float *a_qkv = adev(t, qkv, nqkv), *a_out = adev(t, out, no), *a_att = cuda_alloc(c, ns * 4),
          *a_dout = adev(t, dout, no), *a_dqkv = adev(t, dqkv0, nqkv);
    model_ops_cuda.attention_fwd(t->be, a_out, a_att, a_qkv, d_kv, B, Tn, P, NH, HD, drop);
    acheck_k(t, "attention_fwd", shape, "out", a_out, out, no, EXACT);
    check_same(t, "attention_fwd", shape, "lse", a_att, f_att, nl);
    model_ops_cuda.attention_bwd(t->be, a_dqkv, a_dout, a_qkv, a_out, a_att, B, Tn, P, NH, HD,
                                 drop);
    acheck_k(t, "attention_bwd", shape, "dqkv", a_dqkv, dqkv, nqkv, EXACT);
    void *h[] = {qkv, dout, dqkv0, kv, out, dqkv};
    void *d[] = {d_keys, d_kv,  f_qkv, f_out, f_att,  f_dout,
                 f_dqkv, a_qkv, a_out, a_att, a_dout, a_dqkv};
    free_all(6, h);
    cuda_free_all(12, d);
}

// ---------------------------------------------------------------------------------------
// ops checked against this backend's own fp32-activation op on the same bf16 values
// (test_ops_cuda.c checks that one against the CPU): their bf16 outputs must be its outputs
// rounded, bit for bit, and their fp32 outputs the same bits, as the kernels compute in fp32
// either way. Inputs are bf16 values; each op runs once per storage (act16 0, then 1).

// Compares bf16 activation d16 with the fp32 activation d32 rounded (EXACT).
static void acmp(T *t, const char *op, const char *shape, const char *what, const float *d16,
                 const float *d32, size_t n) {
    float *h = mm_malloc((n ? n : 1) * 4);
    cuda_ctx_sync(t->c);
    cuda_download(t->c, h, d32, n * 4);
    acheck_k(t, op, shape, what, d16, h, n, EXACT);
    free(h);
}

// A pair of device copies of host values h (bf16 values): fp32 ([0]) and bf16 ([1]).
typedef struct {
    float *d[2];
} pair;
static pair pdev(T *t, const float *h, size_t n) {
    return (pair){{dev(t, h, (n ? n : 1) * 4), adev(t, h, n)}};
}
static void pfree(int n, pair *p) {
    for (int i = 0; i < n; i++) {
        cuda_free(p[i].d[0]);
        cuda_free(p[i].d[1]);
    }
}

static void test_xent(T *t, int N, int V, float eps) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d V%d eps%g", N, V, eps);
    const size_t n = (size_t)N * V, ns = model_ops_cuda.xent_saved(t->be, N, V);
    float *logits = arand(t, n, 4), *dloss = hrand(t, N, 1);
    int32_t *tg = mm_malloc((size_t)N * 4);
    for (int i = 0; i < N; i++) tg[i] = i % 3 == 1 ? -1 : (int32_t)mm_rng_below(&t->rng, V);
    int32_t *d_tg = dev(t, tg, (size_t)N * 4);
    float *d_dloss = dev(t, dloss, (size_t)N * 4);
    pair lg = pdev(t, logits, n), dl = pdev(t, logits, n), fb = pdev(t, logits, n);
    float *loss[2], *lse[2], *loss2[2];
    for (int a = 0; a < 2; a++) {
        t->c->act16 = a;
        loss[a] = cuda_alloc(t->c, (size_t)N * 4);
        loss2[a] = cuda_alloc(t->c, (size_t)N * 4);
        lse[a] = cuda_alloc(t->c, ns * 4);
        model_ops_cuda.xent_fwd(t->be, loss[a], lse[a], lg.d[a], d_tg, N, V, eps);
        model_ops_cuda.xent_bwd(t->be, dl.d[a], lg.d[a], lse[a], d_tg, d_dloss, N, V, eps);
        model_ops_cuda.xent_fwd_bwd(t->be, loss2[a], fb.d[a], d_tg, d_dloss, N, V, eps);
    }
    check_same(t, "xent_fwd", shape, "loss", loss[1], loss[0], N);
    check_same(t, "xent_fwd", shape, "lse", lse[1], lse[0], N);
    acmp(t, "xent_bwd", shape, "dlogits", dl.d[1], dl.d[0], n);
    check_same(t, "xent_fwd_bwd", shape, "loss", loss2[1], loss2[0], N);
    acmp(t, "xent_fwd_bwd", shape, "dlogits", fb.d[1], fb.d[0], n);
    pair all[] = {lg, dl, fb};
    pfree(3, all);
    void *d[] = {d_tg, d_dloss, loss[0], loss[1], lse[0], lse[1], loss2[0], loss2[1]};
    cuda_free_all(8, d);
    free(logits), free(dloss), free(tg);
}

// row copies, patchify and back, the LM's embedding rows and their backward
static void test_glue(T *t, int B, int n_img, int n_aud, int Tt, int C, int V) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d P%d+%d Tt%d C%d V%d", B, n_img, n_aud, Tt, C, V);
    const int T = n_img + n_aud + Tt;
    const size_t nx = (size_t)B * T * C, ni = (size_t)B * n_img * C, na = (size_t)B * n_aud * C;
    float *ei = arand(t, ni, 1), *ea = arand(t, na, 1), *dx = arand(t, nx, 1);
    float *ip = hrand(t, (size_t)n_img * C, 1), *ap = hrand(t, (size_t)n_aud * C, 1),
          *wte = hrand(t, (size_t)V * C, 1), *tp = hrand(t, (size_t)Tt * C, 1);
    int32_t *tok = mm_malloc((size_t)B * Tt * 4);
    uint8_t has[8] = {1, 0, 1, 1, 0, 1, 1, 0};
    for (int i = 0; i < B * Tt; i++) tok[i] = (int32_t)mm_rng_below(&t->rng, V < 5 ? V : 5);
    int32_t *d_tok = dev(t, tok, (size_t)B * Tt * 4);
    uint8_t *d_has = dev(t, has, sizeof(has)), *d_kv = cuda_alloc(t->c, nx);
    float *d_ip = dev(t, ip, (size_t)n_img * C * 4), *d_ap = dev(t, ap, (size_t)n_aud * C * 4),
          *d_wte = dev(t, wte, (size_t)V * C * 4), *d_tp = dev(t, tp, (size_t)Tt * C * 4);
    pair pe = pdev(t, ei, ni), pa = pdev(t, ea, na), pdx = pdev(t, dx, nx), x0 = pdev(t, dx, nx),
         rows = pdev(t, dx, nx);
    float *g[2][4];
    for (int a = 0; a < 2; a++) {
        t->c->act16 = a;
        lm_ops_cuda.embed_fwd(t->be, x0.d[a], d_kv, pe.d[a], pa.d[a], d_ip, d_ap, d_wte, d_tp,
                              d_tok, Tt, d_has, d_has + 1, B, T, n_img, n_aud, C, V);
        g[a][0] = dev(t, ip, (size_t)n_img * C * 4);
        g[a][1] = dev(t, ap, (size_t)n_aud * C * 4);
        g[a][2] = dev(t, wte, (size_t)V * C * 4);
        g[a][3] = dev(t, tp, (size_t)Tt * C * 4);
        lm_ops_cuda.embed_bwd(t->be, g[a][0], g[a][1], g[a][2], g[a][3], pdx.d[a], d_tok, B, T,
                              n_img, n_aud, C, V);
        // the text rows of dx into rows, at the text's offset of each sample
        model_ops_cuda.copy_rows(t->be, rows.d[a], (size_t)T * C, pdx.d[a], (size_t)T * C,
                                 (size_t)Tt * C, B);
    }
    acmp(t, "embed_fwd", shape, "x0", x0.d[1], x0.d[0], nx);
    check_same(t, "embed_bwd", shape, "g_img_pos", g[1][0], g[0][0], (size_t)n_img * C);
    check_same(t, "embed_bwd", shape, "g_aud_pos", g[1][1], g[0][1], (size_t)n_aud * C);
    check_same(t, "embed_bwd", shape, "g_wte", g[1][2], g[0][2], (size_t)V * C);
    check_same(t, "embed_bwd", shape, "g_tpos", g[1][3], g[0][3], (size_t)Tt * C);
    acmp(t, "copy_rows", shape, "rows", rows.d[1], rows.d[0], nx);
    pair all[] = {pe, pa, pdx, x0, rows};
    pfree(5, all);
    void *d[] = {d_tok,   d_has,   d_kv,    d_ip,    d_ap,    d_wte,   d_tp,   g[0][0],
                 g[0][1], g[0][2], g[0][3], g[1][0], g[1][1], g[1][2], g[1][3]};
    cuda_free_all(15, d);
    void *h[] = {ei, ea, dx, ip, ap, wte, tp, tok};
    free_all(8, h);
}

// patchify and unpatchify; the conv stem's gather, its adjoint (+=) and max pooling
static void test_image_ops(T *t, int B, int H, int W, int c, int p) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d %dx%dx%d p%d", B, H, W, c, p);
    const size_t n = (size_t)B * H * W * c, nc = n * 9, no = n / 4;
    float *img = arand(t, n, 1), *cols = arand(t, nc, 1);
    for (size_t i = 0; i < n; i += 7) img[i] = img[i + 1 < n ? i + 1 : i];  // ties in windows
    pair pi = pdev(t, img, n), pp = pdev(t, img, n), pb = pdev(t, img, n), pc = pdev(t, cols, nc),
         pdc = pdev(t, cols, nc), pdi = pdev(t, img, n), po = pdev(t, cols, no),
         pdo = pdev(t, cols, no), pdm = pdev(t, img, n);
    for (int a = 0; a < 2; a++) {
        t->c->act16 = a;
        model_ops_cuda.patchify(t->be, pp.d[a], pi.d[a], B, H, W, c, p);
        model_ops_cuda.unpatchify(t->be, pb.d[a], pp.d[a], B, H, W, c, p);
        model_ops_cuda.im2col3(t->be, pc.d[a], pi.d[a], B, H, W, c);
        model_ops_cuda.col2im3(t->be, pdi.d[a], pdc.d[a], B, H, W, c);
        model_ops_cuda.maxpool2_fwd(t->be, po.d[a], pi.d[a], B, H, W, c);
        model_ops_cuda.maxpool2_bwd(t->be, pdm.d[a], pdo.d[a], pi.d[a], B, H, W, c);
    }
    acmp(t, "patchify", shape, "patches", pp.d[1], pp.d[0], n);
    acmp(t, "unpatchify", shape, "img", pb.d[1], pb.d[0], n);
    acmp(t, "im2col3", shape, "cols", pc.d[1], pc.d[0], nc);
    acmp(t, "col2im3", shape, "dimg", pdi.d[1], pdi.d[0], n);
    acmp(t, "maxpool2_fwd", shape, "out", po.d[1], po.d[0], no);
    acmp(t, "maxpool2_bwd", shape, "dx", pdm.d[1], pdm.d[0], n);
    pair all[] = {pi, pp, pb, pc, pdc, pdi, po, pdo, pdm};
    pfree(9, all);
    free(img), free(cols);
}

// the models' inputs into activations (rounded to nearest) and logits back (exactly)
static void test_convert(T *t, size_t n) {
    char shape[64];
    snprintf(shape, sizeof(shape), "n%zu", n);
    float *x = hrand(t, n, 3), *back = mm_malloc((n ? n : 1) * 4);
    float *d_x = dev(t, x, (n ? n : 1) * 4), *d_a = adev(t, x, n),
          *d_b = cuda_alloc(t->c, (n ? n : 1) * 4);
    cuda_zero(t->c, d_a, n * 2);
    model_ops_cuda.act_from_real(t->be, d_a, d_x, n);
    acheck_k(t, "act_from_real", shape, "rounded", d_a, x, n, EXACT);
    model_ops_cuda.act_to_real(t->be, d_b, d_a, n);
    float *r = hround(x, n);
    check(t, "act_to_real", shape, "exact", d_b, r, n, 0);
    void *h[] = {x, back, r};
    void *d[] = {d_x, d_a, d_b};
    free_all(3, h);
    cuda_free_all(3, d);
}

// ---------------------------------------------------------------------------------------
// the DiT's SiLU, adaLN modulation and gated residuals (dit_ops), against the CPU on the same
// bf16 values: each output the fp32 result rounded once; the modulation vectors and their
// gradients are activations too, strided in a packed (B, sc) buffer

// device bf16 pointer p advanced by n elements
static float *aoff(float *p, size_t n) {
    return (float *)((uint16_t *)p + n);
}

static void test_dit_block_ops(T *t, int B, int N, int C, int sc) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d N%d C%d sc%d", B, N, C, sc);
    const size_t n = (size_t)B * N * C, nm = (size_t)B * sc, rows = (size_t)B * N;
    const int o_shift = 0, o_scale = C, o_gate = sc - C;  // three vectors in the packed row
    float *x = arand(t, n, 2), *y = arand(t, n, 1), *mod = arand(t, nm, 1), *dout = arand(t, n, 1);
    float *dx0 = arand(t, n, 1), *dmod0 = arand(t, nm, 1);
    float *out = mm_malloc(n * 4), *dx = hcopy(dx0, n), *dmod = hcopy(dmod0, nm),
          *xg = mm_malloc(n * 4), *dy = hcopy(dx0, n), *sl = mm_malloc(n * 4), *dsl = hcopy(dx0, n);
    dit_ops_cpu.silu_fwd(&mm_backend_cpu, sl, x, n);
    dit_ops_cpu.silu_bwd(&mm_backend_cpu, dsl, x, dout, n);
    dit_ops_cpu.modulate_fwd(&mm_backend_cpu, out, x, mod + o_shift, mod + o_scale, sc, B, N, C);
    dit_ops_cpu.modulate_bwd(&mm_backend_cpu, dx, dmod + o_shift, dmod + o_scale, dout, x,
                             mod + o_scale, sc, B, N, C);
    dit_ops_cpu.gated_add_fwd(&mm_backend_cpu, xg, x, y, mod + o_gate, sc, B, N, C);
    dit_ops_cpu.gated_add_bwd(&mm_backend_cpu, dy, dmod + o_gate, dout, y, mod + o_gate, sc, B, N,
                              C);
    float *d_x = adev(t, x, n), *d_y = adev(t, y, n), *d_mod = adev(t, mod, nm),
          *d_dout = adev(t, dout, n), *d_out = adev(t, out, n), *d_dx = adev(t, dx0, n),
          *d_dmod = adev(t, dmod0, nm), *d_dy = adev(t, dx0, n), *d_sl = adev(t, sl, n),
          *d_dsl = adev(t, dx0, n);
    dit_ops_cuda.silu_fwd(t->be, d_sl, d_x, n);
    acheck_k(t, "silu_fwd", shape, "out", d_sl, sl, n, 0);
    dit_ops_cuda.silu_bwd(t->be, d_dsl, d_x, d_dout, n);
    acheck_k(t, "silu_bwd", shape, "dx", d_dsl, dsl, n, 0);
    dit_ops_cuda.modulate_fwd(t->be, d_out, d_x, aoff(d_mod, o_shift), aoff(d_mod, o_scale), sc, B,
                              N, C);
    acheck_k(t, "modulate_fwd", shape, "out", d_out, out, n, 0);
    dit_ops_cuda.modulate_bwd(t->be, d_dx, aoff(d_dmod, o_shift), aoff(d_dmod, o_scale), d_dout,
                              d_x, aoff(d_mod, o_scale), sc, B, N, C);
    acheck_k(t, "modulate_bwd", shape, "dx", d_dx, dx, n, 0);
    dit_ops_cuda.gated_add_fwd(t->be, d_out, d_x, d_y, aoff(d_mod, o_gate), sc, B, N, C);
    acheck_k(t, "gated_add_fwd", shape, "out", d_out, xg, n, 0);
    dit_ops_cuda.gated_add_bwd(t->be, d_dy, aoff(d_dmod, o_gate), d_dout, d_y, aoff(d_mod, o_gate),
                               sc, B, N, C);
    acheck_k(t, "gated_add_bwd", shape, "dy", d_dy, dy, n, 0);
    // the whole packed buffer: shift, scale and gate gradients, and untouched columns
    acheck_k(t, "mod+gate bwd", shape, "dmod", d_dmod, dmod, nm, 0);

    // ln_modulate_fwd without an add, with one, with a gated one (then no modulation): res is
    // the sum rounded, and the LayerNorm's statistics, h and out are those of that res
    float *g = hrand(t, C, 1), *beta = hrand(t, C, 1), *res = mm_malloc(n * 4),
          *h = mm_malloc(n * 4), *mean = mm_malloc(rows * 4), *rstd = mm_malloc(rows * 4);
    float *d_g = dev(t, g, C * 4), *d_beta = dev(t, beta, C * 4), *d_res = adev(t, x, n),
          *d_h = adev(t, x, n), *d_mean = cuda_alloc(t->c, rows * 4),
          *d_rstd = cuda_alloc(t->c, rows * 4);
    static const char *const variant[] = {"", " a+b", " a+gate*b"};
    for (int with = 0; with < 3; with++) {
        snprintf(shape, sizeof(shape), "B%d N%d C%d sc%d%s", B, N, C, sc, variant[with]);
        const int gated = with == 2;
        if (with == 1) model_ops_cpu.add(&mm_backend_cpu, res, x, y, n);
        if (gated) dit_ops_cpu.gated_add_fwd(&mm_backend_cpu, res, x, y, mod + o_gate, sc, B, N, C);
        if (!with) memcpy(res, x, n * 4);
        for (size_t i = 0; i < n; i++) res[i] = bf16_round(res[i]);
        dit_ops_cpu.ln_modulate_fwd(&mm_backend_cpu, NULL, h, gated ? NULL : out, mean, rstd, res,
                                    NULL, NULL, g, beta, gated ? NULL : mod + o_shift,
                                    gated ? NULL : mod + o_scale, sc, B, N, C);
        dit_ops_cuda.ln_modulate_fwd(
            t->be, with ? d_res : NULL, d_h, gated ? NULL : d_out, d_mean, d_rstd, d_x,
            with ? d_y : NULL, gated ? aoff(d_mod, o_gate) : NULL, d_g, d_beta,
            gated ? NULL : aoff(d_mod, o_shift), gated ? NULL : aoff(d_mod, o_scale), sc, B, N, C);
        if (with) acheck_k(t, "ln_modulate_fwd", shape, "res", d_res, res, n, EXACT);
        acheck_k(t, "ln_modulate_fwd", shape, "h", d_h, h, n, 0);
        if (!gated) acheck_k(t, "ln_modulate_fwd", shape, "out", d_out, out, n, 0);
        check(t, "ln_modulate_fwd", shape, "mean", d_mean, mean, rows, 1e-5);
        check(t, "ln_modulate_fwd", shape, "rstd", d_rstd, rstd, rows, 1e-5);
    }
    // its backward from the last case's res, statistics and h (rounded, as stored)
    snprintf(shape, sizeof(shape), "B%d N%d C%d sc%d", B, N, C, sc);
    float *h16 = hround(h, n), *dxl = hcopy(dx0, n), *dml = hcopy(dmod0, nm),
          *dh = mm_malloc(n * 4);
    dit_ops_cpu.modulate_ln_bwd(&mm_backend_cpu, dxl, dml + o_shift, dml + o_scale, dh, dout, h16,
                                mod + o_scale, sc, res, g, mean, rstd, B, N, C);
    float *d_h16 = adev(t, h16, n), *d_dxl = adev(t, dx0, n), *d_dml = adev(t, dmod0, nm);
    cuda_upload(t->c, d_mean, mean, rows * 4);
    cuda_upload(t->c, d_rstd, rstd, rows * 4);
    dit_ops_cuda.modulate_ln_bwd(t->be, d_dxl, aoff(d_dml, o_shift), aoff(d_dml, o_scale), NULL,
                                 d_dout, d_h16, aoff(d_mod, o_scale), sc, d_res, d_g, d_mean,
                                 d_rstd, B, N, C);
    acheck_k(t, "modulate_ln_bwd", shape, "dx", d_dxl, dxl, n, 0);
    acheck_k(t, "modulate_ln_bwd", shape, "dmod", d_dml, dml, nm, 0);
    void *hs[] = {x,   y, mod,  dout, dx0, dmod0, out,  dx,  dmod, xg,  dy, sl,
                  dsl, g, beta, res,  h,   mean,  rstd, h16, dxl,  dml, dh};
    void *ds[] = {d_x, d_y,    d_mod, d_dout, d_out,  d_dx,   d_dmod, d_dy,  d_sl, d_dsl,
                  d_g, d_beta, d_res, d_h,    d_mean, d_rstd, d_h16,  d_dxl, d_dml};
    free_all(23, hs);
    cuda_free_all(19, ds);
}

// the DiT's cross-attention: q (B, Tq, NH, HD), packed kv (B, Tk, 2, NH, HD); as
// test_attention, bf16 against the fp32-activation op on the same values, bit for bit the
// rounded results, on the tensor-core flash kernels (path 0, where they take HD) and the
// cuBLAS core through fp32 copies (path 1). Tk 0: no key, a zero output.
static void test_xattn(T *t, int B, int Tq, int Tk, int NH, int HD, int path) {
    const int C = NH * HD;
    const size_t nq = (size_t)B * Tq * C, nkv = (size_t)B * Tk * 2 * C;
    const size_t na = (size_t)B * NH * Tq * (Tk > 1 ? Tk : 1);
    cuda_ctx *c = t->c;
    c->flash_tc = path == 0;
    const int ftc = path == 0 && HD % 16 == 0 && HD <= 64 && Tk >= 2;
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d Tq%d Tk%d NH%d HD%d %s", B, Tq, Tk, NH, HD,
             ftc ? "flash-TC" : "cuBLAS");
    float *q = arand(t, nq, 2), *kv = arand(t, nkv ? nkv : 1, 2), *dout = arand(t, nq, 1),
          *dq0 = arand(t, nq, 1), *dkv0 = arand(t, nkv ? nkv : 1, 1);
    uint8_t *mask = make_mask(t, B, Tk ? Tk : 1, 0);
    uint8_t *d_mask = dev(t, mask, (size_t)B * (Tk ? Tk : 1));
    pair pq = pdev(t, q, nq), pkv = pdev(t, kv, nkv), pdo = pdev(t, dout, nq),
         pdq = pdev(t, dq0, nq), pdkv = pdev(t, dkv0, nkv), po = pdev(t, dout, nq);
    float *att[2], *out = mm_malloc(nq * 4);
    for (int a = 0; a < 2; a++) {
        c->act16 = a;
        att[a] = cuda_alloc(c, na * 4);
        dit_ops_cuda.xattn_fwd(t->be, po.d[a], att[a], pq.d[a], pkv.d[a], d_mask, B, Tq, Tk, NH,
                               HD);
        if (a == 0) {  // what a bf16 forward keeps, for both backwards
            cuda_ctx_sync(c);
            cuda_download(c, out, po.d[0], nq * 4);
            for (size_t i = 0; i < nq; i++) out[i] = bf16_round(out[i]);
            cuda_upload(c, po.d[0], out, nq * 4);
        }
    }
    acheck_k(t, "xattn_fwd", shape, "out", po.d[1], out, nq, EXACT);
    if (Tk) {
        if (ftc) check_same(t, "xattn_fwd", shape, "lse", att[1], att[0], (size_t)B * NH * Tq);
        else check_same(t, "xattn_fwd", shape, "att", att[1], att[0], na);
        for (int a = 0; a < 2; a++) {
            c->act16 = a;
            dit_ops_cuda.xattn_bwd(t->be, pdq.d[a], pdkv.d[a], pdo.d[a], pq.d[a], pkv.d[a],
                                   po.d[a], att[a], B, Tq, Tk, NH, HD);
        }
        acmp(t, "xattn_bwd", shape, "dq", pdq.d[1], pdq.d[0], nq);
        acmp(t, "xattn_bwd", shape, "dkv", pdkv.d[1], pdkv.d[0], nkv);
    }
    pair all[] = {pq, pkv, pdo, pdq, pdkv, po};
    pfree(6, all);
    void *d[] = {d_mask, att[0], att[1]};
    cuda_free_all(3, d);
    void *h[] = {q, kv, dout, dq0, dkv0, mask, out};
    free_all(7, h);
}

// the DiT's glue on activations: timestep features, positions added and their gradient (fp32
// parameters), the pooled condition and its backward (+=); bf16 against the fp32-activation
// op on the same values (each op from its own copies of them)
static void test_dit_glue(T *t, int B, int Tn, int C) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d T%d C%d", B, Tn, C);
    const size_t n = (size_t)B * Tn * C, nb = (size_t)B * C, np = (size_t)Tn * C;
    float *tt = hrand(t, B, 1), *x = arand(t, n, 1), *pos = hrand(t, np, 1), *dp = arand(t, nb, 1),
          *g0 = hrand(t, np, 1);
    for (int b = 0; b < B; b++) tt[b] = tt[b] < 0 ? -tt[b] : tt[b];  // times in [0, 1]
    uint8_t *kv = make_mask(t, B, Tn, 0);
    for (int b = 0; b < B; b++) kv[(size_t)b * Tn + Tn - 1] = 1;  // the null key: never empty
    uint8_t *d_kv = dev(t, kv, (size_t)B * Tn);
    float *d_t = dev(t, tt, (size_t)B * 4), *d_pos = dev(t, pos, np * 4);
    pair pf = pdev(t, dp, nb), px = pdev(t, x, n), pc = pdev(t, x, n), pl = pdev(t, dp, nb),
         pdl = pdev(t, dp, nb), pdx = pdev(t, x, n), pg = pdev(t, x, n);
    float *g[2];
    for (int a = 0; a < 2; a++) {
        t->c->act16 = a;
        dit_ops_cuda.time_embed(t->be, pf.d[a], d_t, B, C);
        dit_ops_cuda.add_pos(t->be, px.d[a], d_pos, B, Tn, C);
        dit_ops_cuda.pool_fwd(t->be, pl.d[a], pc.d[a], d_kv, B, Tn, C);
        dit_ops_cuda.pool_bwd(t->be, pdx.d[a], pdl.d[a], d_kv, B, Tn, C);
        g[a] = dev(t, g0, np * 4);
        dit_ops_cuda.pos_bwd(t->be, g[a], pg.d[a], np, B, Tn, C);
    }
    acmp(t, "time_embed", shape, "out", pf.d[1], pf.d[0], nb);
    acmp(t, "add_pos", shape, "x", px.d[1], px.d[0], n);
    acmp(t, "pool_fwd", shape, "pool", pl.d[1], pl.d[0], nb);
    acmp(t, "pool_bwd", shape, "dcond", pdx.d[1], pdx.d[0], n);
    check_same(t, "pos_bwd", shape, "g", g[1], g[0], np);
    pair all[] = {pf, px, pc, pl, pdl, pdx, pg};
    pfree(7, all);
    void *d[] = {d_kv, d_t, d_pos, g[0], g[1]};
    cuda_free_all(5, d);
    void *h[] = {tt, x, pos, dp, g0, kv};
    free_all(6, h);
}

int main(void) {
    T t = {.be = NULL, .c = NULL, .tc = {0, 0}};
    mm_rng_init(&t.rng, 4242, 0);
    mm_err err = {{0}};
    if (mm_backend_create(&t.be, "cuda", "bf16", 1, 0, &err) != 0) {
        TEST_CHECK(&t.tc, 0, "no CUDA device: %s", err.msg);
        return test_finish(&t.tc);
    }
    t.c = (cuda_ctx *)t.be->ctx;
    t.c->act16 = 1;
    printf("device: %s; activations bf16 (act16)\n", t.c->device_name);
    printf("%-16s %-30s %-10s %11s %8s\n", "op", "shape", "tensor", "err", "tol");

    static const int mm[][3] = {{1, 1, 1}, {7, 13, 5}, {37, 45, 77}, {64, 96, 160}, {130, 33, 257}};
    for (size_t i = 0; i < sizeof(mm) / sizeof(mm[0]); i++)
        for (int k = 0; k < 4; k++)  // no copy; copy; copy with the bias unaligned; no bias
            test_matmul(&t, mm[i][0], mm[i][1], mm[i][2], k != 3, k == 1 || k == 2, k == 2);
    // fused where OC (forward) and IC (backward) allow: 160 and 64 fused, 77 and 5 two ops
    static const int mg[][3] = {{7, 13, 5}, {37, 45, 77}, {64, 96, 160}, {33, 40, 64}};
    for (size_t i = 0; i < sizeof(mg) / sizeof(mg[0]); i++)
        test_matmul_gelu(&t, mg[i][0], mg[i][1], mg[i][2]);

    static const int ln[][2] = {{1, 1}, {5, 7}, {33, 100}, {70, 768}, {300, 33}};
    for (size_t i = 0; i < sizeof(ln) / sizeof(ln[0]); i++) test_layernorm(&t, ln[i][0], ln[i][1]);

    test_elementwise(&t, 1);
    test_elementwise(&t, 1000);
    test_elementwise(&t, 70003);
    test_dropout(&t, 1, 1, 0.5);
    test_dropout(&t, 3, 1000, 0.1);
    test_dropout(&t, 4, 70003, 0.3);

    // attention shapes as test_ops_cuda.c's: T 1, all causal, all prefix, mixed, several
    // tiles, HD 80 (never the tensor-core kernels); each on flash-TC (where it takes the
    // shape, else the paths below), the cuBLAS core and SIMT flash; with and without dropout
    static const int at[][5] = {{1, 1, 0, 1, 4},      {3, 5, 2, 1, 16},  {3, 37, 10, 2, 16},
                                {2, 64, 64, 4, 32},   {3, 70, 0, 3, 48}, {3, 150, 45, 2, 64},
                                {2, 129, 100, 3, 48}, {2, 33, 7, 1, 80}};
    const size_t core_bytes = t.c->attn_core_bytes;
    const int flash_tc = t.c->flash_tc;
    for (int path = 0; path < 3; path++)
        for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++)
            for (int drop = 0; drop < 2; drop++)
                test_attention(&t, at[i][0], at[i][1], at[i][2], at[i][3], at[i][4],
                               drop ? 0.25 : 0, path);
    t.c->attn_core_bytes = core_bytes;
    t.c->flash_tc = flash_tc;
    t.c->act16 = 1;

    static const int xe[][2] = {{1, 1}, {5, 3}, {37, 259}, {64, 1000}};
    for (size_t i = 0; i < sizeof(xe) / sizeof(xe[0]); i++)
        for (int e = 0; e < 2; e++) test_xent(&t, xe[i][0], xe[i][1], e ? 0.1f : 0);
    test_glue(&t, 1, 1, 1, 1, 1, 3);
    test_glue(&t, 4, 4, 3, 17, 40, 259);
    test_glue(&t, 3, 0, 2, 33, 96, 7);
    test_image_ops(&t, 2, 8, 8, 3, 4);
    test_image_ops(&t, 3, 12, 6, 4, 2);
    test_image_ops(&t, 1, 6, 10, 33, 2);
    test_convert(&t, 1);
    test_convert(&t, 70003);
    // rows of one warp's width and less, several warps' rows in one block, a partial block
    static const int md[][4] = {
        {1, 1, 1, 3}, {3, 17, 40, 240}, {2, 5, 130, 390}, {1, 9, 384, 2304}};
    for (size_t i = 0; i < sizeof(md) / sizeof(md[0]); i++)
        test_dit_block_ops(&t, md[i][0], md[i][1], md[i][2], md[i][3]);
    // cross-attention: one key, the shapes the flash kernels tile partly, HD 80 (never the
    // tensor-core kernels), no key at all
    static const int xa[][5] = {{2, 5, 1, 1, 16},  {3, 37, 20, 2, 16}, {2, 70, 45, 3, 32},
                                {1, 16, 130, 2, 64}, {2, 9, 11, 1, 80},  {2, 4, 0, 2, 16}};
    for (int path = 0; path < 2; path++)
        for (size_t i = 0; i < sizeof(xa) / sizeof(xa[0]); i++)
            test_xattn(&t, xa[i][0], xa[i][1], xa[i][2], xa[i][3], xa[i][4], path);
    t.c->flash_tc = flash_tc;
    test_dit_glue(&t, 1, 1, 4);
    test_dit_glue(&t, 3, 17, 40);
    test_dit_glue(&t, 4, 61, 384);
    t.c->act16 = 1;

    mm_backend_free(t.be);
    return test_finish(&t.tc);
}
