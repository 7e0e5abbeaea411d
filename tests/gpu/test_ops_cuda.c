// test_ops_cuda.c: every op of the CUDA backend's two tables (model_ops_cuda, dit_ops_cuda),
// forward and backward, against the CPU backend (the reference) on the same random inputs,
// at a few shapes chosen to break index arithmetic: sizes that are not multiples of 32, T = 1,
// single rows and columns, attention masks with empty rows (a sample whose prefix keys are
// all missing, a sample with no valid key at all), ignored cross-entropy targets, strided
// adaLN vectors. Backward ops start from random gradients, so their += is checked too. Then
// the trainer's kernels (AdamW, EMA, sum of squares, scale) against train/optim.c, and a
// determinism check: the reductions give the same bits when run twice.
//
// Error measure, per tensor: max|gpu - cpu| / max|cpu| (the largest absolute difference
// relative to the tensor's largest reference value; plain max|gpu - cpu| when the reference
// is all zeros). A non-finite GPU value where the reference is finite fails. Tolerances:
// 1e-5 in fp32; bf16 matmuls 1e-2 against the fp32 CPU op, and 1e-4 against the CPU op run
// on the same bf16-rounded inputs, which shows that the products really were bf16 x bf16 with
// fp32-class accumulation (bf16 rounding itself is ~2e-3; 1e-4 rather than 1e-5 because
// tensor cores accumulate with truncation, not round-to-nearest).
//
// Needs a GPU (make cuda; tests/gpu/run.sh), or runs on the CPU through the emulation of
// tests/gpu/cuda_emu.h (make cuda-emu; tests/cuda_build.sh). Prints one table row per check
// and "N passed, N failed".
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/data.h"
#include "../../model/cuda/cuda.h"
#include "../../train/optim.h"
#include "../test.h"
#include "check_cuda.h"

// ---------------------------------------------------------------------------------------
// matmul

// One shape: forward (with or without bias), backward (dinp and dbias present or NULL),
// against the CPU op on the same inputs. In bf16 additionally against the CPU op on
// bf16-rounded inputs.
static void test_matmul(T *t, int N, int IC, int OC, int with_bias, int with_dinp,
                        cuda_precision prec) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d IC%d OC%d%s%s", N, IC, OC, with_bias ? " b" : "",
             with_dinp ? "" : " nodinp");
    const char *op_f = prec == CUDA_BF16 ? "matmul_fwd bf16" : "matmul_fwd";
    const char *op_b = prec == CUDA_BF16 ? "matmul_bwd bf16" : "matmul_bwd";
    const double tol = prec == CUDA_BF16 ? 1e-2 : 1e-5;
    size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    float *inp = hrand(t, ni, 1), *w = hrand(t, nw, 0.5f), *bias = hrand(t, OC, 1);
    float *dout = hrand(t, no, 1), *dinp0 = hrand(t, ni, 1), *dw0 = hrand(t, nw, 1),
          *db0 = hrand(t, OC, 1);
    float *out = mm_malloc(no * sizeof(float)), *dinp = hcopy(dinp0, ni), *dw = hcopy(dw0, nw),
          *db = hcopy(db0, OC);
    model_ops_cpu.matmul_fwd(&mm_backend_cpu, out, inp, w, with_bias ? bias : NULL, N, IC, OC);
    model_ops_cpu.matmul_bwd(&mm_backend_cpu, with_dinp ? dinp : NULL, dw, with_bias ? db : NULL,
                             dout, inp, w, N, IC, OC);
    t->c->precision = prec;
    float *d_inp = dev(t, inp, ni * 4), *d_w = dev(t, w, nw * 4), *d_bias = dev(t, bias, OC * 4),
          *d_dout = dev(t, dout, no * 4), *d_out = cuda_alloc(t->c, no * 4),
          *d_dinp = dev(t, dinp0, ni * 4), *d_dw = dev(t, dw0, nw * 4),
          *d_db = dev(t, db0, OC * 4);
    const size_t lt0 = t->c->lt_matmuls[CU_LT_BIAS];
    model_ops_cuda.matmul_fwd(t->be, d_out, d_inp, d_w, with_bias ? d_bias : NULL, N, IC, OC);
    check(t, op_f, shape, "out", d_out, out, no, tol);
    // bf16 with a bias: cuBLASLt's bias epilogue (the emulation always has an algorithm; a
    // real GPU may fall back to the broadcast + GEMM for some shapes, which is correct too)
#ifdef MM_CUDA_EMU
    if (prec == CUDA_BF16 && with_bias && N > 0 && IC > 0 && OC > 0)
        TEST_CHECK(&t->tc, t->c->lt_matmuls[CU_LT_BIAS] == lt0 + 1,
                   "matmul_fwd bf16 %s: cuBLASLt not used", shape);
#else
    (void)lt0;
#endif
    model_ops_cuda.matmul_bwd(t->be, with_dinp ? d_dinp : NULL, d_dw, with_bias ? d_db : NULL,
                              d_dout, d_inp, d_w, N, IC, OC);
    check(t, op_b, shape, "dinp", d_dinp, with_dinp ? dinp : dinp0, ni, tol);
    check(t, op_b, shape, "dw", d_dw, dw, nw, tol);
    check(t, op_b, shape, "dbias", d_db, with_bias ? db : db0, OC, 1e-5);  // dbias stays fp32
    if (prec == CUDA_BF16) {
        // the CPU op on bf16-rounded inputs: what the GPU computed, up to fp32 summation order
        float *ri = hround(inp, ni), *rw = hround(w, nw), *rd = hround(dout, no);
        float *dinp2 = hcopy(dinp0, ni), *dw2 = hcopy(dw0, nw), *db2 = hcopy(db0, OC);
        model_ops_cpu.matmul_fwd(&mm_backend_cpu, out, ri, rw, with_bias ? bias : NULL, N, IC, OC);
        model_ops_cpu.matmul_bwd(&mm_backend_cpu, with_dinp ? dinp2 : NULL, dw2,
                                 with_bias ? db2 : NULL, rd, ri, rw, N, IC, OC);
        check(t, op_f, shape, "out~bf16in", d_out, out, no, 1e-4);
        check(t, op_b, shape, "dinp~bf16", d_dinp, dinp2, ni, 1e-4);
        check(t, op_b, shape, "dw~bf16in", d_dw, dw2, nw, 1e-4);
        // the backward in passes of 3 rows (matmul_chunk_bytes), the last one shorter: the
        // same sums up to fp32 order
        if (N > 3) {
            const size_t chunk = t->c->matmul_chunk_bytes;
            t->c->matmul_chunk_bytes = (size_t)3 * (OC + IC) * 2;
            cuda_upload(t->c, d_dinp, dinp0, ni * 4);
            cuda_upload(t->c, d_dw, dw0, nw * 4);
            model_ops_cuda.matmul_bwd(t->be, with_dinp ? d_dinp : NULL, d_dw, NULL, d_dout, d_inp,
                                      d_w, N, IC, OC);
            t->c->matmul_chunk_bytes = chunk;
            check(t, op_b, shape, "dinp 3-row", d_dinp, dinp2, ni, 1e-4);
            check(t, op_b, shape, "dw 3-row", d_dw, dw2, nw, 1e-4);
        }
        void *h2[] = {ri, rw, rd, dinp2, dw2, db2};
        free_all(6, h2);
    }
    t->c->precision = CUDA_FP32;
    void *h[] = {inp, w, bias, dout, dinp0, dw0, db0, out, dinp, dw, db};
    void *d[] = {d_inp, d_w, d_bias, d_dout, d_out, d_dinp, d_dw, d_db};
    free_all(11, h);
    cuda_free_all(8, d);
}

// The bf16 copy of the parameters (ops params_ready, cuda.h p16): a matmul whose weight lies
// in it gives the bits of one that converts its own; it is what the matmuls then read (a write
// behind the backend's back goes unseen: every write must go through the backend, and each of
// the backend's writes into the parameters makes it stale); after an upload the matmul
// converts the new weights again.
static void test_params16(T *t, int N, int IC, int OC) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d IC%d OC%d", N, IC, OC);
    const size_t nw = (size_t)OC * IC, np = nw + 8, ni = (size_t)N * IC, no = (size_t)N * OC;
    float *params = hrand(t, np, 0.5f), *inp = hrand(t, ni, 1), *dout = hrand(t, no, 1);
    float *d_p = dev(t, params, np * 4), *d_inp = dev(t, inp, ni * 4), *d_dout = dev(t, dout, no * 4);
    float *w = d_p + 5;  // a weight inside the parameters
    float *o1 = cuda_alloc(t->c, no * 4), *o2 = cuda_alloc(t->c, no * 4);
    float *di1 = cuda_alloc(t->c, ni * 4), *di2 = cuda_alloc(t->c, ni * 4);
    float *dw1 = cuda_alloc(t->c, nw * 4), *dw2 = cuda_alloc(t->c, nw * 4);
    t->c->precision = CUDA_BF16;
    t->c->p16_valid = 0;
    model_ops_cuda.matmul_fwd(t->be, o1, d_inp, w, NULL, N, IC, OC);
    model_ops_cuda.matmul_bwd(t->be, di1, dw1, NULL, d_dout, d_inp, w, N, IC, OC);
    model_ops_cuda.params_ready(t->be, d_p, np);
    TEST_CHECK(&t->tc, t->c->p16_valid, "params_ready %s: no valid copy", shape);
    model_ops_cuda.matmul_fwd(t->be, o2, d_inp, w, NULL, N, IC, OC);
    model_ops_cuda.matmul_bwd(t->be, di2, dw2, NULL, d_dout, d_inp, w, N, IC, OC);
    check_same(t, "params16", shape, "out", o2, o1, no);
    check_same(t, "params16", shape, "dinp", di2, di1, ni);
    check_same(t, "params16", shape, "dw", dw2, dw1, nw);
    // new weights written behind the backend's back: the copy is what the matmul reads
    float *w2 = hrand(t, nw, 0.5f);
    MM_CHECK(cudaMemcpyAsync(w, w2, nw * 4, cudaMemcpyHostToDevice, t->c->stream) == cudaSuccess &&
                 cudaStreamSynchronize(t->c->stream) == cudaSuccess,
             "params16: a raw copy failed");
    model_ops_cuda.matmul_fwd(t->be, o2, d_inp, w, NULL, N, IC, OC);
    check_same(t, "params16", shape, "copy read", o2, o1, no);
    // through the backend: stale, so the matmul converts the new weights
    cuda_upload(t->c, w, w2, nw * 4);
    TEST_CHECK(&t->tc, !t->c->p16_valid, "params16 %s: an upload left the copy valid", shape);
    model_ops_cuda.matmul_fwd(t->be, o2, d_inp, w, NULL, N, IC, OC);
    float *ref = mm_malloc(no * 4);
    model_ops_cpu.matmul_fwd(&mm_backend_cpu, ref, inp, w2, NULL, N, IC, OC);
    check(t, "params16", shape, "after upload", o2, ref, no, 1e-2);
    // every other write of the backend into the parameters makes it stale too, and one
    // outside them does not
    for (int k = 0; k < 4; k++) {
        model_ops_cuda.params_ready(t->be, d_p, np);
        if (k == 0) model_ops_cuda.mem_zero(t->be, d_p + np - 1, 4);
        if (k == 1) model_ops_cuda.mem_copy(t->be, d_p, d_inp, 4);
        if (k == 2) model_ops_cuda.copy_rows(t->be, d_p + 3, 1, d_inp, 1, 1, 2);
        if (k == 3) model_ops_cuda.copy_rows(t->be, di1, 1, d_p, 1, 1, 2);  // reads them only
        TEST_CHECK(&t->tc, t->c->p16_valid == (k == 3), "params16 %s: write %d left it %s",
                   shape, k, t->c->p16_valid ? "valid" : "stale");
    }
    t->c->p16_valid = 0;
    t->c->precision = CUDA_FP32;
    void *h[] = {params, inp, dout, w2, ref};
    void *d[] = {d_p, d_inp, d_dout, o1, o2, di1, di2, dw1, dw2};
    free_all(5, h);
    cuda_free_all(9, d);
}

// ---------------------------------------------------------------------------------------
// layernorm, GELU, add

static void test_layernorm(T *t, int N, int C) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d C%d", N, C);
    size_t n = (size_t)N * C;
    float *x = hrand(t, n, 2), *g = hrand(t, C, 1), *b = hrand(t, C, 1), *dout = hrand(t, n, 1);
    for (size_t i = 0; i < n; i++) x[i] += 3;  // |mean| >> std for some rows: the two passes
    float *dx0 = hrand(t, n, 1), *dg0 = hrand(t, C, 1), *db0 = hrand(t, C, 1);
    float *out = mm_malloc(n * 4), *mean = mm_malloc(N * 4), *rstd = mm_malloc(N * 4);
    float *dx = hcopy(dx0, n), *dg = hcopy(dg0, C), *db = hcopy(db0, C);
    model_ops_cpu.layernorm_fwd(&mm_backend_cpu, out, mean, rstd, x, g, b, N, C);
    model_ops_cpu.layernorm_bwd(&mm_backend_cpu, dx, dg, db, dout, x, g, mean, rstd, N, C);
    float *d_x = dev(t, x, n * 4), *d_g = dev(t, g, C * 4), *d_b = dev(t, b, C * 4),
          *d_dout = dev(t, dout, n * 4), *d_out = cuda_alloc(t->c, n * 4),
          *d_mean = cuda_alloc(t->c, N * 4), *d_rstd = cuda_alloc(t->c, N * 4),
          *d_dx = dev(t, dx0, n * 4), *d_dg = dev(t, dg0, C * 4), *d_db = dev(t, db0, C * 4);
    model_ops_cuda.layernorm_fwd(t->be, d_out, d_mean, d_rstd, d_x, d_g, d_b, N, C);
    check(t, "layernorm_fwd", shape, "out", d_out, out, n, 1e-5);
    check(t, "layernorm_fwd", shape, "mean", d_mean, mean, N, 1e-5);
    check(t, "layernorm_fwd", shape, "rstd", d_rstd, rstd, N, 1e-5);
    // backward from the CPU's saved statistics, so that only the backward is compared
    cuda_upload(t->c, d_mean, mean, N * 4);
    cuda_upload(t->c, d_rstd, rstd, N * 4);
    model_ops_cuda.layernorm_bwd(t->be, d_dx, d_dg, d_db, d_dout, d_x, d_g, d_mean, d_rstd, N, C);
    check(t, "layernorm_bwd", shape, "dx", d_dx, dx, n, 1e-5);
    check(t, "layernorm_bwd", shape, "dg", d_dg, dg, C, 1e-5);
    check(t, "layernorm_bwd", shape, "db", d_db, db, C, 1e-5);
    // determinism: the same backward again from the same start gives the same bits
    float *e_dx = dev(t, dx0, n * 4), *e_dg = dev(t, dg0, C * 4), *e_db = dev(t, db0, C * 4);
    float *f_dx = dev(t, dx0, n * 4), *f_dg = dev(t, dg0, C * 4), *f_db = dev(t, db0, C * 4);
    model_ops_cuda.layernorm_bwd(t->be, e_dx, e_dg, e_db, d_dout, d_x, d_g, d_mean, d_rstd, N, C);
    model_ops_cuda.layernorm_bwd(t->be, f_dx, f_dg, f_db, d_dout, d_x, d_g, d_mean, d_rstd, N, C);
    check_same(t, "layernorm_bwd", shape, "dg rerun", e_dg, f_dg, C);
    check_same(t, "layernorm_bwd", shape, "db rerun", e_db, f_db, C);
    // without gain and bias gradients (dg = db = NULL): the same dx bits
    cuda_upload(t->c, f_dx, dx0, n * 4);
    model_ops_cuda.layernorm_bwd(t->be, f_dx, NULL, NULL, d_dout, d_x, d_g, d_mean, d_rstd, N, C);
    check_same(t, "layernorm_bwd", shape, "dx, no dg db", f_dx, e_dx, n);
    // the fused residual add (res = x + dout here): against the CPU's fused op, and bitwise
    // against this backend's own add + layernorm_fwd; out of place and in place (res = a)
    float *res = mm_malloc(n * 4);
    model_ops_cpu.add_layernorm_fwd(&mm_backend_cpu, res, out, mean, rstd, x, dout, g, b, N, C);
    float *s_res = cuda_alloc(t->c, n * 4), *s_out = cuda_alloc(t->c, n * 4),
          *s_mean = cuda_alloc(t->c, N * 4), *s_rstd = cuda_alloc(t->c, N * 4);
    model_ops_cuda.add(t->be, s_res, d_x, d_dout, n);
    model_ops_cuda.layernorm_fwd(t->be, s_out, s_mean, s_rstd, s_res, d_g, d_b, N, C);
    for (int inplace = 0; inplace < 2; inplace++) {
        const char *op = "add_layernorm_fwd";
        if (inplace) snprintf(shape, sizeof(shape), "N%d C%d in place", N, C);
        float *d_res = inplace ? dev(t, x, n * 4) : cuda_alloc(t->c, n * 4);
        model_ops_cuda.add_layernorm_fwd(t->be, d_res, d_out, d_mean, d_rstd,
                                         inplace ? d_res : d_x, d_dout, d_g, d_b, N, C);
        check(t, op, shape, "res", d_res, res, n, 0);
        check(t, op, shape, "out", d_out, out, n, 1e-5);
        check(t, op, shape, "mean", d_mean, mean, N, 1e-5);
        check(t, op, shape, "rstd", d_rstd, rstd, N, 1e-5);
        check_same(t, op, shape, "out = add, layernorm_fwd", d_out, s_out, n);
        check_same(t, op, shape, "mean = add, layernorm_fwd", d_mean, s_mean, N);
        check_same(t, op, shape, "rstd = add, layernorm_fwd", d_rstd, s_rstd, N);
        cuda_free(d_res);
    }
    void *h[] = {x, g, b, dout, dx0, dg0, db0, out, mean, rstd, dx, dg, db, res};
    void *d[] = {d_x,  d_g,  d_b,  d_dout, d_out, d_mean, d_rstd, d_dx,  d_dg,   d_db,
                 e_dx, e_dg, e_db, f_dx,   f_dg,  f_db,   s_res,  s_out, s_mean, s_rstd};
    free_all(14, h);
    cuda_free_all(20, d);
}

// matmul_gelu_fwd against the CPU's (matmul_fwd then gelu_fwd). In bf16 with OC a multiple
// of 8 it is cuBLASLt's GELU epilogue (the emulation checks that it ran); otherwise the two
// ops, as cuBLASLt refuses a GELU input whose leading dimension is not a multiple of 8.
static void test_matmul_gelu(T *t, int N, int IC, int OC, cuda_precision prec) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d IC%d OC%d%s", N, IC, OC, prec == CUDA_BF16 ? " bf16" : "");
    const double tol = prec == CUDA_BF16 ? 1e-2 : 1e-5;
    const size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    float *inp = hrand(t, ni, 1), *w = hrand(t, nw, 0.5f), *bias = hrand(t, OC, 1);
    float *pre = mm_malloc(no * 4), *out = mm_malloc(no * 4);
    model_ops_cpu.matmul_gelu_fwd(&mm_backend_cpu, pre, out, inp, w, bias, N, IC, OC);
    float *d_inp = dev(t, inp, ni * 4), *d_w = dev(t, w, nw * 4), *d_bias = dev(t, bias, OC * 4),
          *d_pre = cuda_alloc(t->c, no * 4), *d_out = cuda_alloc(t->c, no * 4);
    t->c->precision = prec;
    const size_t lt0 = t->c->lt_matmuls[CU_LT_GELU_BIAS];
    model_ops_cuda.matmul_gelu_fwd(t->be, d_pre, d_out, d_inp, d_w, d_bias, N, IC, OC);
    check(t, "matmul_gelu_fwd", shape, "pre", d_pre, pre, no, tol);
    check(t, "matmul_gelu_fwd", shape, "out", d_out, out, no, tol);
#ifdef MM_CUDA_EMU
    const size_t want = prec == CUDA_BF16 && OC % 8 == 0 ? 1 : 0;
    TEST_CHECK(&t->tc, t->c->lt_matmuls[CU_LT_GELU_BIAS] == lt0 + want,
               "matmul_gelu_fwd %s: %zu cuBLASLt GELU calls, expected %zu", shape,
               t->c->lt_matmuls[CU_LT_GELU_BIAS] - lt0, want);
#else
    (void)lt0;
#endif
    t->c->precision = CUDA_FP32;
    void *h[] = {inp, w, bias, pre, out};
    void *d[] = {d_inp, d_w, d_bias, d_pre, d_out};
    free_all(5, h);
    cuda_free_all(5, d);
}

// matmul_gelu_bwd against the CPU's: dpre and dact start as garbage (the op overwrites them),
// dw and dbias accumulate from random values. In bf16 with IC a multiple of 8 it is cuBLASLt's
// DGELU epilogue (checked under the emulation), else the unfused ops.
static void test_matmul_gelu_bwd(T *t, int N, int IC, int OC, cuda_precision prec) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d IC%d OC%d%s", N, IC, OC, prec == CUDA_BF16 ? " bf16" : "");
    const double tol = prec == CUDA_BF16 ? 1e-2 : 1e-5;
    const size_t ni = (size_t)N * IC, nw = (size_t)OC * IC, no = (size_t)N * OC;
    float *pre = hrand(t, ni, 2), *act = mm_malloc(ni * 4), *w = hrand(t, nw, 0.5f),
          *dout = hrand(t, no, 1), *dw = hrand(t, nw, 1), *db = hrand(t, OC, 1),
          *junk = hrand(t, ni, 9), *dpre = mm_malloc(ni * 4), *dact = mm_malloc(ni * 4);
    model_ops_cpu.gelu_fwd(&mm_backend_cpu, act, pre, ni);
    float *d_pre = dev(t, pre, ni * 4), *d_act = dev(t, act, ni * 4), *d_w = dev(t, w, nw * 4),
          *d_dout = dev(t, dout, no * 4), *d_dw = dev(t, dw, nw * 4), *d_db = dev(t, db, OC * 4),
          *d_dpre = dev(t, junk, ni * 4), *d_dact = dev(t, junk, ni * 4);
    model_ops_cpu.matmul_gelu_bwd(&mm_backend_cpu, dpre, dact, dw, db, dout, act, pre, w, N, IC,
                                  OC);
    t->c->precision = prec;
    const size_t lt0 = t->c->lt_matmuls[CU_LT_DGELU];
    model_ops_cuda.matmul_gelu_bwd(t->be, d_dpre, d_dact, d_dw, d_db, d_dout, d_act, d_pre, d_w, N,
                                   IC, OC);
    check(t, "matmul_gelu_bwd", shape, "dpre", d_dpre, dpre, ni, tol);
    check(t, "matmul_gelu_bwd", shape, "dw", d_dw, dw, nw, tol);
    check(t, "matmul_gelu_bwd", shape, "dbias", d_db, db, OC, 1e-5);  // dbias stays fp32
#ifdef MM_CUDA_EMU
    const size_t want = prec == CUDA_BF16 && IC % 8 == 0 ? 1 : 0;
    TEST_CHECK(&t->tc, t->c->lt_matmuls[CU_LT_DGELU] == lt0 + want,
               "matmul_gelu_bwd %s: %zu cuBLASLt DGELU calls, expected %zu", shape,
               t->c->lt_matmuls[CU_LT_DGELU] - lt0, want);
#else
    (void)lt0;
#endif
    t->c->precision = CUDA_FP32;
    void *h[] = {pre, act, w, dout, dw, db, junk, dpre, dact};
    void *d[] = {d_pre, d_act, d_w, d_dout, d_dw, d_db, d_dpre, d_dact};
    free_all(9, h);
    cuda_free_all(8, d);
}

static void test_elementwise(T *t, size_t n) {
    char shape[64];
    snprintf(shape, sizeof(shape), "n%zu", n);
    float *x = hrand(t, n, 4), *y = hrand(t, n, 1), *dout = hrand(t, n, 1), *dx0 = hrand(t, n, 1);
    float *out = mm_malloc(n * 4), *dx = hcopy(dx0, n), *sum = mm_malloc(n * 4);
    model_ops_cpu.gelu_fwd(&mm_backend_cpu, out, x, n);
    model_ops_cpu.gelu_bwd(&mm_backend_cpu, dx, x, dout, n);
    model_ops_cpu.add(&mm_backend_cpu, sum, x, y, n);
    float *d_x = dev(t, x, n * 4), *d_y = dev(t, y, n * 4), *d_dout = dev(t, dout, n * 4),
          *d_out = cuda_alloc(t->c, n * 4), *d_dx = dev(t, dx0, n * 4);
    model_ops_cuda.gelu_fwd(t->be, d_out, d_x, n);
    check(t, "gelu_fwd", shape, "out", d_out, out, n, 1e-5);
    model_ops_cuda.gelu_bwd(t->be, d_dx, d_x, d_dout, n);
    check(t, "gelu_bwd", shape, "dx", d_dx, dx, n, 1e-5);
    model_ops_cuda.add(t->be, d_y, d_x, d_y, n);  // in place, as the residual adds
    check(t, "add", shape, "out=a+out", d_y, sum, n, 1e-5);
    // DiT SiLU
    float *dx2 = hcopy(dx0, n);
    dit_ops_cpu.silu_fwd(&mm_backend_cpu, out, x, n);
    dit_ops_cpu.silu_bwd(&mm_backend_cpu, dx2, x, dout, n);
    cuda_upload(t->c, d_dx, dx0, n * 4);
    dit_ops_cuda.silu_fwd(t->be, d_out, d_x, n);
    check(t, "silu_fwd", shape, "out", d_out, out, n, 1e-5);
    dit_ops_cuda.silu_bwd(t->be, d_dx, d_x, d_dout, n);
    check(t, "silu_bwd", shape, "dx", d_dx, dx2, n, 1e-5);
    void *h[] = {x, y, dout, dx0, out, dx, sum, dx2};
    void *d[] = {d_x, d_y, d_dout, d_out, d_dx};
    free_all(8, h);
    cuda_free_all(5, d);
}

// ---------------------------------------------------------------------------------------
// attention

// The log-sum-exp of query i's allowed scaled scores, in double from qkv directly (-inf
// for a query without a key): an independent check of what the flash forward saves.
static void ref_lse(float *lse, const float *qkv, const uint8_t *kv, int B, int Tn, int P,
                    int NH, int HD) {
    const int C = NH * HD;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < Tn; i++) {
                const float *q = qkv + ((size_t)b * Tn + i) * 3 * C + (size_t)h * HD;
                double mx = -INFINITY, s = 0;
                const int lim = i < P ? P : i + 1;
                for (int pass = 0; pass < 2; pass++)
                    for (int j = 0; j < lim; j++) {
                        if (!kv[(size_t)b * Tn + j]) continue;
                        const float *k = qkv + ((size_t)b * Tn + j) * 3 * C + C + (size_t)h * HD;
                        double d = 0;
                        for (int e = 0; e < HD; e++) d += (double)q[e] * k[e];
                        d /= sqrt((double)HD);
                        if (pass == 0) mx = d > mx ? d : mx;
                        else s += exp(d - mx);
                    }
                lse[((size_t)b * NH + h) * Tn + i] = (float)(s > 0 ? mx + log(s) : -INFINITY);
            }
}

// The CUDA backend saves lse (B, NH, T) (+ the mask) instead of the probabilities, so its
// backward runs from its own forward (flash attention recomputes the probabilities) and is
// compared with the CPU's backward from the CPU's probabilities. 1e-5 holds: the only
// difference is the order of the sums (online softmax), a few ulps of a row's values.
// pdrop > 0: with dropout on the probabilities (the same counters on both backends: the CPU
// and CUDA masks are the same bits, so the tolerance stays the summation order's), the heads
// placed as from head 1 of a wider layout.
// What a backward added to a (rows, np, C) gradient that started at base, part by part
// (dq, dk, dv of a packed qkv), each against its own largest value: the start and a peaked
// softmax's small dq and dk would hide an error in them in the whole's norm
static void check_parts(T *t, const char *op, const char *shape, const float *d,
                        const float *ref, const float *base, int rows, int np, int C,
                        const char *const *name, double tol) {
    float *h = mm_malloc((size_t)rows * np * C * 4), *a = mm_malloc((size_t)rows * C * 4),
          *b = mm_malloc((size_t)rows * C * 4);
    cuda_ctx_sync(t->c);
    cuda_download(t->c, h, d, (size_t)rows * np * C * 4);
    for (int p = 0; p < np; p++) {
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < C; c++) {
                const size_t i = ((size_t)r * np + p) * C + c;
                a[(size_t)r * C + c] = h[i] - base[i];
                b[(size_t)r * C + c] = ref[i] - base[i];
            }
        row(t, op, shape, name[p], rel_err(a, b, (size_t)rows * C), tol);
    }
    free(h), free(a), free(b);
}
static const char *const qkv_part[3] = {"dq", "dk", "dv"};

static void test_attention(T *t, int B, int Tn, int P, int NH, int HD, double pdrop,
                           cuda_precision prec) {
    const int C = NH * HD;
    size_t nqkv = (size_t)B * Tn * 3 * C, no = (size_t)B * Tn * C, na = (size_t)B * NH * Tn * Tn;
    // the path the op takes (ops_cuda.cu): in bf16 without dropout, flash on tensor cores
    // where the context allows it (flash_tc) and the heads are a multiple of 16 up to 64;
    // else SIMT flash unless the probabilities fit the context's attn_core_bytes or the heads
    // are wider than 64; the cuBLAS core runs on tensor cores in bf16 without dropout. Both
    // tensor-core paths: 1e-2 against the fp32 CPU op, as bf16 matmuls.
    const int ftc = t->c->flash_tc && prec == CUDA_BF16 && pdrop == 0 && HD % 16 == 0 && HD <= 64;
    const int flash = ftc || (HD <= 64 && na * sizeof(float) > t->c->attn_core_bytes);
    const int tc = ftc || (!flash && prec == CUDA_BF16 && pdrop == 0);
    const double tol = tc ? 1e-2 : 1e-5;
    t->c->precision = prec;
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d T%d P%d NH%d HD%d %s%s%s", B, Tn, P, NH, HD,
             ftc ? "flash-TC" : flash ? "flash" : tc ? "cuBLAS-bf16" : "cuBLAS",
             pdrop > 0 ? " drop" : "", prec == CUDA_BF16 && !tc ? " (bf16 ctx)" : "");
    uint64_t keys[8];
    for (int b = 0; b < B && b < 8; b++) keys[b] = 1000003u * (uint64_t)(b + 1);
    uint64_t *d_keys = dev(t, keys, sizeof(keys));
    const uint32_t thr = (uint32_t)(pdrop * (1 << 24));
    const model_drop hd = {keys, 2, 1, thr, (float)(1 / (1 - pdrop)), 1},
                     dd = {d_keys, 2, 1, thr, (float)(1 / (1 - pdrop)), 1};
    const model_drop *hdrop = pdrop > 0 ? &hd : NULL, *ddrop = pdrop > 0 ? &dd : NULL;
    size_t nl = (size_t)B * NH * Tn, ns = model_ops_cuda.attention_saved(t->be, B, NH, Tn);
    // lse rows plus the mask's bytes, far less than the probabilities
    TEST_CHECK(&t->tc, ns * 4 >= nl * 4 + (size_t)B * Tn && ns <= nl + (size_t)B * Tn,
               "attention_saved %zu for %zu rows", ns, nl);
    float *qkv = hrand(t, nqkv, 2), *dout = hrand(t, no, 1), *dqkv0 = hrand(t, nqkv, 1);
    uint8_t *kv = make_mask(t, B, Tn, P);
    float *out = mm_malloc(no * 4), *att = mm_malloc((na ? na : 1) * 4), *dqkv = hcopy(dqkv0, nqkv);
    float *lse = mm_malloc(nl * 4);
    model_ops_cpu.attention_fwd(&mm_backend_cpu, out, att, qkv, kv, B, Tn, P, NH, HD, hdrop);
    model_ops_cpu.attention_bwd(&mm_backend_cpu, dqkv, dout, qkv, out, att, B, Tn, P, NH, HD,
                                hdrop);
    ref_lse(lse, qkv, kv, B, Tn, P, NH, HD);
    float *d_qkv = dev(t, qkv, nqkv * 4), *d_dout = dev(t, dout, no * 4),
          *d_out = cuda_alloc(t->c, no * 4), *d_att = cuda_alloc(t->c, ns * 4),
          *d_dqkv = dev(t, dqkv0, nqkv * 4), *d_dqkv2 = dev(t, dqkv0, nqkv * 4);
    uint8_t *d_kv = dev(t, kv, (size_t)B * Tn);
    model_ops_cuda.attention_fwd(t->be, d_out, d_att, d_qkv, d_kv, B, Tn, P, NH, HD, ddrop);
    check(t, "attention_fwd", shape, "out", d_out, out, no, tol);
    if (flash) {  // only flash saves the lse (the cuBLAS path recomputes everything)
        // -inf rows must match exactly; the finite ones to 1e-5 of the largest |lse|
        float *h = mm_malloc(nl * 4);
        cuda_download(t->c, h, d_att, nl * 4);
        int same_inf = 1;
        for (size_t i = 0; i < nl; i++) {
            same_inf &= isinf(h[i]) == isinf(lse[i]);
            if (isinf(h[i])) h[i] = lse[i] = 0;
        }
        TEST_CHECK(&t->tc, same_inf, "attention_fwd %s: rows without a key differ", shape);
        row(t, "attention_fwd", shape, "lse", rel_err(h, lse, nl), ftc ? 1e-2 : 1e-5);
        free(h);
    }
    model_ops_cuda.attention_bwd(t->be, d_dqkv, d_dout, d_qkv, d_out, d_att, B, Tn, P, NH, HD,
                                 ddrop);
    check(t, "attention_bwd", shape, "dqkv", d_dqkv, dqkv, nqkv, tol);
    check_parts(t, "attention_bwd", shape, d_dqkv, dqkv, dqkv0, B * Tn, 3, C, qkv_part, tol);
    model_ops_cuda.attention_bwd(t->be, d_dqkv2, d_dout, d_qkv, d_out, d_att, B, Tn, P, NH, HD,
                                 ddrop);
    check_same(t, "attention_bwd", shape, "dqkv rerun", d_dqkv, d_dqkv2, nqkv);
    void *h[] = {qkv, dout, dqkv0, kv, out, att, dqkv, lse};
    void *d[] = {d_qkv, d_dout, d_out, d_att, d_dqkv, d_dqkv2, d_kv, d_keys};
    free_all(8, h);
    cuda_free_all(8, d);
    t->c->precision = CUDA_FP32;
}

// The dropout op: the kept elements and their scaled values bitwise the CPU's (the same
// integer test on the same draws, one float product), in place as the model calls it.
static void test_dropout(T *t, int B, size_t n, double p) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d n%zu p%.2f", B, n, p);
    const size_t tot = (size_t)B * n;
    float *x = hrand(t, tot, 1), *out = mm_malloc(tot * 4);
    uint64_t keys[4] = {7, 8, 9, 10};
    uint64_t *d_keys = dev(t, keys, sizeof(keys));
    const uint32_t thr = (uint32_t)(p * (1 << 24));
    const model_drop hd = {keys, 3, 2, thr, (float)(1 / (1 - p)), 0},
                     dd = {d_keys, 3, 2, thr, (float)(1 / (1 - p)), 0};
    model_ops_cpu.dropout(&mm_backend_cpu, out, x, &hd, B, n);
    float *d_x = dev(t, x, tot * 4), *d_ref = dev(t, out, tot * 4);
    model_ops_cuda.dropout(t->be, d_x, d_x, &dd, B, n);
    check_same(t, "dropout", shape, "out", d_x, d_ref, tot);
    free(x), free(out);
    void *d[] = {d_x, d_ref, d_keys};
    cuda_free_all(3, d);
}

// In bf16 (tensor cores) 1e-2 against the fp32 CPU op, as the matmuls.
// In bf16 with flash_tc on, heads of 16..64 (step 16) and two keys or more the op takes the
// tensor-core flash kernels, whose saved buffer is each row's log-sum-exp (checked against
// one computed in double) and the mask, and whose backward runs from its own forward;
// otherwise the saved probabilities are compared and the backward runs from the CPU's.
static void test_xattn(T *t, int B, int Tq, int Tk, int NH, int HD, cuda_precision prec) {
    const int ftc = prec == CUDA_BF16 && t->c->flash_tc && HD % 16 == 0 && HD <= 64 && Tk >= 2;
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d Tq%d Tk%d NH%d HD%d%s", B, Tq, Tk, NH, HD,
             ftc ? " flash-TC" : prec == CUDA_BF16 ? " bf16" : "");
    const double tol = prec == CUDA_BF16 ? 1e-2 : 1e-5;
    t->c->precision = prec;
    const int C = NH * HD;
    size_t nq = (size_t)B * Tq * C, nkv = (size_t)B * Tk * 2 * C, na = (size_t)B * NH * Tq * Tk;
    float *q = hrand(t, nq, 2), *kvv = hrand(t, nkv, 2), *dout = hrand(t, nq, 1),
          *dq0 = hrand(t, nq, 1), *dkv0 = hrand(t, nkv, 1);
    uint8_t *mask = make_mask(t, B, Tk, 0);
    float *out = mm_malloc(nq * 4), *att = mm_malloc((na ? na : 1) * 4), *dq = hcopy(dq0, nq),
          *dkv = hcopy(dkv0, nkv);
    dit_ops_cpu.xattn_fwd(&mm_backend_cpu, out, att, q, kvv, mask, B, Tq, Tk, NH, HD);
    dit_ops_cpu.xattn_bwd(&mm_backend_cpu, dq, dkv, dout, q, kvv, out, att, B, Tq, Tk, NH, HD);
    float *d_q = dev(t, q, nq * 4), *d_kvv = dev(t, kvv, nkv * 4), *d_dout = dev(t, dout, nq * 4),
          *d_out = cuda_alloc(t->c, nq * 4), *d_att = cuda_alloc(t->c, na * 4),
          *d_dq = dev(t, dq0, nq * 4), *d_dkv = dev(t, dkv0, nkv * 4);
    uint8_t *d_mask = dev(t, mask, (size_t)B * Tk);
    dit_ops_cuda.xattn_fwd(t->be, d_out, d_att, d_q, d_kvv, d_mask, B, Tq, Tk, NH, HD);
    check(t, "xattn_fwd", shape, "out", d_out, out, nq, tol);
    if (ftc) {  // -inf rows (no valid key) exactly, the others to 1e-2 of the largest |lse|
        const size_t nl = (size_t)B * NH * Tq;
        float *h = mm_malloc(nl * 4), *ref = mm_malloc(nl * 4);
        cuda_download(t->c, h, d_att, nl * 4);
        const double scale = 1 / sqrt((double)HD);
        int same_inf = 1;
        for (int b = 0; b < B; b++)
            for (int hh = 0; hh < NH; hh++)
                for (int i = 0; i < Tq; i++) {
                    double mx = -INFINITY, sum = 0, sc[4096];
                    for (int j = 0; j < Tk && j < 4096; j++) {
                        double d = 0;
                        for (int e = 0; e < HD; e++)
                            d += (double)q[((size_t)b * Tq + i) * C + hh * HD + e] *
                                 kvv[((size_t)b * Tk + j) * 2 * C + hh * HD + e];
                        sc[j] = mask[(size_t)b * Tk + j] ? d * scale : -INFINITY;
                        mx = fmax(mx, sc[j]);
                    }
                    for (int j = 0; j < Tk && mx > -INFINITY; j++) sum += exp(sc[j] - mx);
                    const size_t k = ((size_t)b * NH + hh) * Tq + i;
                    ref[k] = mx > -INFINITY ? (float)(mx + log(sum)) : -INFINITY;
                    same_inf &= isinf(h[k]) == isinf(ref[k]);
                    if (isinf(h[k]) || isinf(ref[k])) h[k] = ref[k] = 0;
                }
        TEST_CHECK(&t->tc, same_inf, "xattn_fwd %s: rows without a key differ", shape);
        row(t, "xattn_fwd", shape, "lse", rel_err(h, ref, nl), 1e-2);
        free(h), free(ref);
    } else {
        check(t, "xattn_fwd", shape, "att", d_att, att, na, tol);
        cuda_upload(t->c, d_att, att, na * 4);
    }
    dit_ops_cuda.xattn_bwd(t->be, d_dq, d_dkv, d_dout, d_q, d_kvv, d_out, d_att, B, Tq, Tk, NH,
                           HD);
    static const char *const dq_part[1] = {"dq"}, *const dkv_part[2] = {"dk", "dv"};
    check_parts(t, "xattn_bwd", shape, d_dq, dq, dq0, B * Tq, 1, C, dq_part, tol);
    check_parts(t, "xattn_bwd", shape, d_dkv, dkv, dkv0, B * Tk, 2, C, dkv_part, tol);
    void *h[] = {q, kvv, dout, dq0, dkv0, mask, out, att, dq, dkv};
    void *d[] = {d_q, d_kvv, d_dout, d_out, d_att, d_dq, d_dkv, d_mask};
    free_all(10, h);
    cuda_free_all(8, d);
    t->c->precision = CUDA_FP32;
}

// ---------------------------------------------------------------------------------------
// cross-entropy

// eps: label smoothing
static void test_xent(T *t, int N, int V, float eps) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d V%d eps%g", N, V, eps);
    size_t n = (size_t)N * V;
    float *logits = hrand(t, n, 4), *dloss = hrand(t, N, 1);
    int32_t *tg = mm_malloc(N * sizeof(int32_t));
    for (int i = 0; i < N; i++)
        tg[i] = mm_rng_uniform(&t->rng) < 0.25f ? -1 : (int32_t)mm_rng_below(&t->rng, V);
    tg[0] = -1;  // always one ignored row
    float *loss = mm_malloc(N * 4), *probs = mm_malloc(n * 4), *dl = mm_malloc(n * 4);
    model_ops_cpu.xent_fwd(&mm_backend_cpu, loss, probs, logits, tg, N, V, eps);
    model_ops_cpu.xent_bwd(&mm_backend_cpu, dl, logits, probs, tg, dloss, N, V, eps);
    float *junk = hrand(t, n, 7);  // dlogits is overwritten, ignored rows included
    float *d_logits = dev(t, logits, n * 4), *d_dloss = dev(t, dloss, N * 4),
          *d_loss = cuda_alloc(t->c, N * 4), *d_probs = cuda_alloc(t->c, 4),
          *d_dl = dev(t, junk, n * 4);
    int32_t *d_tg = dev(t, tg, N * sizeof(int32_t));
    // the CUDA forward saves each row's log-sum-exp (checked in double from the logits); its
    // backward runs from that, once into a separate buffer and once in place over a copy of
    // the logits (the transformer's way)
    const size_t ns = model_ops_cuda.xent_saved(t->be, N, V);
    TEST_CHECK(&t->tc, ns == (size_t)N, "xent_saved %zu for %d rows", ns, N);
    float *lse = mm_malloc(N * 4);
    for (int i = 0; i < N; i++) {
        double mx = -INFINITY, sum = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, logits[(size_t)i * V + j]);
        for (int j = 0; j < V; j++) sum += exp(logits[(size_t)i * V + j] - mx);
        lse[i] = (float)(mx + log(sum));
    }
    float *d_lse = cuda_alloc(t->c, N * 4), *d_inplace = dev(t, logits, n * 4);
    model_ops_cuda.xent_fwd(t->be, d_loss, d_lse, d_logits, d_tg, N, V, eps);
    check(t, "xent_fwd", shape, "loss", d_loss, loss, N, 1e-5);
    check(t, "xent_fwd", shape, "lse", d_lse, lse, N, 1e-5);
    model_ops_cuda.xent_bwd(t->be, d_dl, d_logits, d_lse, d_tg, d_dloss, N, V, eps);
    check(t, "xent_bwd", shape, "dlogits", d_dl, dl, n, 1e-5);
    model_ops_cuda.xent_bwd(t->be, d_inplace, d_inplace, d_lse, d_tg, d_dloss, N, V, eps);
    check_same(t, "xent_bwd", shape, "in place", d_inplace, d_dl, n);
    // the fused op over another copy of the logits: the bits of the two kernels
    float *d_fused = dev(t, logits, n * 4), *d_floss = cuda_alloc(t->c, N * 4);
    model_ops_cuda.xent_fwd_bwd(t->be, d_floss, d_fused, d_tg, d_dloss, N, V, eps);
    check_same(t, "xent_fwd_bwd", shape, "loss", d_floss, d_loss, N);
    check_same(t, "xent_fwd_bwd", shape, "dlogits", d_fused, d_dl, n);
    free(lse);
    cuda_free(d_lse);
    cuda_free(d_inplace);
    cuda_free(d_fused);
    cuda_free(d_floss);
    void *h[] = {logits, dloss, tg, loss, probs, dl, junk};
    void *d[] = {d_logits, d_dloss, d_loss, d_probs, d_dl, d_tg};
    free_all(7, h);
    cuda_free_all(6, d);
}

// ---------------------------------------------------------------------------------------
// the glue ops (ops_glue_cuda.cu): copies and additions in the CPU's order, so bit-exact
// (tolerance 0), and the embedding-table gradient deterministic run to run

static void test_glue(T *t, int B, int n_img, int n_aud, int Tt, int C, int V) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d P%d+%d Tt%d C%d V%d", B, n_img, n_aud, Tt, C, V);
    const int T = n_img + n_aud + Tt;
    const size_t nx = (size_t)B * T * C, ni = (size_t)B * n_img * C, na = (size_t)B * n_aud * C;
    float *ei = hrand(t, ni, 1), *ea = hrand(t, na, 1), *ip = hrand(t, (size_t)n_img * C, 1),
          *ap = hrand(t, (size_t)n_aud * C, 1), *wte = hrand(t, (size_t)V * C, 1),
          *tp = hrand(t, (size_t)Tt * C, 1), *dx = hrand(t, nx, 1);
    int32_t *tok = mm_malloc((size_t)B * Tt * 4), *tg = mm_malloc((size_t)B * Tt * 4);
    uint8_t has_i[4] = {1, 0, 1, 0}, has_a[4] = {0, 1, 1, 1};
    for (int i = 0; i < B * Tt; i++) {  // few distinct tokens: many repeats
        tok[i] = (int32_t)mm_rng_below(&t->rng, (uint64_t)(V < 5 ? V : 5));
        tg[i] = mm_rng_uniform(&t->rng) < 0.3f ? -1 : tok[i];
    }
    float *x0 = mm_malloc(nx * 4);
    uint8_t *kv = mm_malloc((size_t)B * T);
    lm_ops_cpu.embed_fwd(&mm_backend_cpu, x0, kv, ei, ea, ip, ap, wte, tp, tok, Tt, has_i, has_a,
                            B, T, n_img, n_aud, C, V);
    float *gi = hcopy(ip, (size_t)n_img * C), *ga = hcopy(ap, (size_t)n_aud * C),
          *gw = hcopy(wte, (size_t)V * C), *gt = hcopy(tp, (size_t)Tt * C);
    float *d_gi = dev(t, gi, (size_t)n_img * C * 4), *d_ga = dev(t, ga, (size_t)n_aud * C * 4),
          *d_gw = dev(t, gw, (size_t)V * C * 4), *d_gw2 = dev(t, gw, (size_t)V * C * 4),
          *d_gt = dev(t, gt, (size_t)Tt * C * 4);
    lm_ops_cpu.embed_bwd(&mm_backend_cpu, gi, ga, gw, gt, dx, tok, B, T, n_img, n_aud, C, V);
    float *d_ei = dev(t, ei, ni * 4), *d_ea = dev(t, ea, na * 4),
          *d_ip = dev(t, ip, (size_t)n_img * C * 4), *d_ap = dev(t, ap, (size_t)n_aud * C * 4),
          *d_wte = dev(t, wte, (size_t)V * C * 4), *d_tp = dev(t, tp, (size_t)Tt * C * 4),
          *d_dx = dev(t, dx, nx * 4), *d_x0 = cuda_alloc(t->c, nx * 4);
    int32_t *d_tok = dev(t, tok, (size_t)B * Tt * 4), *d_tg = dev(t, tg, (size_t)B * Tt * 4);
    uint8_t *d_hi = dev(t, has_i, 4), *d_ha = dev(t, has_a, 4), *d_kv = cuda_alloc(t->c, (size_t)B * T);
    lm_ops_cuda.embed_fwd(t->be, d_x0, d_kv, d_ei, d_ea, d_ip, d_ap, d_wte, d_tp, d_tok, Tt,
                             d_hi, d_ha, B, T, n_img, n_aud, C, V);
    check(t, "embed_fwd", shape, "x0", d_x0, x0, nx, 0);
    uint8_t *hkv = mm_malloc((size_t)B * T);
    cuda_download(t->c, hkv, d_kv, (size_t)B * T);
    TEST_CHECK(&t->tc, memcmp(hkv, kv, (size_t)B * T) == 0, "embed_fwd %s: key_valid differs", shape);
    lm_ops_cuda.embed_bwd(t->be, d_gi, d_ga, d_gw, d_gt, d_dx, d_tok, B, T, n_img, n_aud, C, V);
    check(t, "embed_bwd", shape, "img_pos", d_gi, gi, (size_t)n_img * C, 0);
    check(t, "embed_bwd", shape, "aud_pos", d_ga, ga, (size_t)n_aud * C, 0);
    check(t, "embed_bwd", shape, "tpos", d_gt, gt, (size_t)Tt * C, 0);
    check(t, "embed_bwd", shape, "wte", d_gw, gw, (size_t)V * C, 0);
    lm_ops_cuda.embed_bwd(t->be, d_gi, d_ga, d_gw2, d_gt, d_dx, d_tok, B, T, n_img, n_aud, C, V);
    check_same(t, "embed_bwd", shape, "wte twice", d_gw, d_gw2, (size_t)V * C);
    // copy_rows: the text rows of x0, as transformer.c takes them
    float *txt = mm_malloc((size_t)B * Tt * C * 4), *d_txt = cuda_alloc(t->c, (size_t)B * Tt * C * 4);
    model_ops_cpu.copy_rows(&mm_backend_cpu, txt, (size_t)Tt * C, x0 + (size_t)(n_img + n_aud) * C,
                            (size_t)T * C, (size_t)Tt * C, B);
    model_ops_cuda.copy_rows(t->be, d_txt, (size_t)Tt * C, d_x0 + (size_t)(n_img + n_aud) * C,
                             (size_t)T * C, (size_t)Tt * C, B);
    check(t, "copy_rows", shape, "text rows", d_txt, txt, (size_t)B * Tt * C, 0);
    // seq_loss / seq_dloss on the first B * Tt values of dx as losses
    double sl[8], dsl[8];
    lm_ops_cpu.seq_loss(&mm_backend_cpu, sl, dx, tg, B, Tt);
    double *d_sl = cuda_alloc(t->c, sizeof(sl));
    lm_ops_cuda.seq_loss(t->be, d_sl, d_dx, d_tg, B, Tt);
    cuda_download(t->c, dsl, d_sl, (size_t)B * 2 * sizeof(double));
    TEST_CHECK(&t->tc, memcmp(sl, dsl, (size_t)B * 2 * sizeof(double)) == 0,
               "seq_loss %s: differs from the CPU", shape);
    printf("%-16s %-30s %-10s %11s\n", "seq_loss", shape, "mean,n",
           memcmp(sl, dsl, (size_t)B * 2 * sizeof(double)) ? "FAIL" : "ok (bitwise)");
    float *dl = mm_malloc((size_t)B * Tt * 4), *d_dl = cuda_alloc(t->c, (size_t)B * Tt * 4);
    lm_ops_cpu.seq_dloss(&mm_backend_cpu, dl, tg, 0.03125f, B, Tt);
    lm_ops_cuda.seq_dloss(t->be, d_dl, d_tg, 0.03125f, B, Tt);
    check(t, "seq_dloss", shape, "dloss", d_dl, dl, (size_t)B * Tt, 0);
    void *h[] = {ei, ea, ip, ap, wte, tp, dx, tok, tg, x0, kv, gi, ga, gw, gt, hkv, txt, dl};
    void *d[] = {d_gi, d_ga, d_gw, d_gw2, d_gt, d_ei, d_ea, d_ip, d_ap, d_wte, d_tp,
                 d_dx, d_x0, d_tok, d_tg, d_hi, d_ha, d_kv, d_txt, d_sl, d_dl};
    free_all(18, h);
    cuda_free_all(21, d);
}

// the diffusion model's glue ops (ops_dit_cuda.cu): sums in the CPU's order and the CPU's
// double formulas (no FMA contraction), so bit-exact (tolerance 0) except time_embed and
// ddim, whose device cos / sin / sqrt-derived doubles may round one float ulp apart (1e-6)
static void check_bytes(T *t, const char *op, const char *shape, const void *d, const void *ref,
                        size_t bytes) {
    cuda_ctx_sync(t->c);
    uint8_t *h = mm_malloc(bytes ? bytes : 1);
    cuda_download(t->c, h, d, bytes);
    int same = memcmp(h, ref, bytes) == 0;
    printf("%-16s %-30s %-10s %11s\n", op, shape, "bytes", same ? "ok (bitwise)" : "FAIL");
    TEST_CHECK(&t->tc, same, "%s %s: differs from the CPU", op, shape);
    free(h);
}

static void test_dit_glue(T *t, int B, int Tt, int na, int C, int V) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d Tt%d na%d C%d V%d", B, Tt, na, C, V);
    const int Tc = Tt + na + 1;
    const size_t ncond = (size_t)B * Tc * C;
    // time features
    float *tt = hrand(t, (size_t)B, 0.5f);
    for (int b = 0; b < B; b++) tt[b] += 0.5f;  // t in [0, 1]
    float *fe = mm_malloc((size_t)B * C * 4), *d_fe = cuda_alloc(t->c, (size_t)B * C * 4);
    float *d_tt = dev(t, tt, (size_t)B * 4);
    dit_ops_cpu.time_embed(&mm_backend_cpu, fe, tt, B, C);
    dit_ops_cuda.time_embed(t->be, d_fe, d_tt, B, C);
    check(t, "time_embed", shape, "features", d_fe, fe, (size_t)B * C, 1e-6);
    // text tokens: sample 0 without a caption, PAD tails
    int32_t *tok = mm_malloc((size_t)B * Tt * 4), *tk = mm_malloc((size_t)B * Tt * 4);
    uint8_t *ht = mm_malloc((size_t)B), *ha = mm_malloc((size_t)B);
    for (int b = 0; b < B; b++) {
        ht[b] = b != 0;
        ha[b] = b % 3 != 1;
        for (int i = 0; i < Tt; i++)
            tok[(size_t)b * Tt + i] = i > Tt / 2 ? DATA_TOK_PAD : (int32_t)(i * 7 + b) % 256;
    }
    uint8_t *tkv = mm_malloc((size_t)B * Tt), *akv = mm_malloc((size_t)B * na),
            *kv = mm_malloc((size_t)B * Tc);
    dit_ops_cpu.text_tokens(&mm_backend_cpu, tk, tkv, tok, ht, B, Tt, V);
    dit_ops_cpu.sample_keys(&mm_backend_cpu, akv, ha, B, na);
    dit_ops_cpu.cond_keys(&mm_backend_cpu, kv, tkv, akv, B, Tt, na);
    int32_t *d_tok = dev(t, tok, (size_t)B * Tt * 4), *d_tk = cuda_alloc(t->c, (size_t)B * Tt * 4);
    uint8_t *d_ht = dev(t, ht, (size_t)B), *d_ha = dev(t, ha, (size_t)B),
            *d_tkv = cuda_alloc(t->c, (size_t)B * Tt), *d_akv = cuda_alloc(t->c, (size_t)B * na),
            *d_kv = cuda_alloc(t->c, (size_t)B * Tc);
    dit_ops_cuda.text_tokens(t->be, d_tk, d_tkv, d_tok, d_ht, B, Tt, V);
    check_bytes(t, "text_tokens", shape, d_tk, tk, (size_t)B * Tt * 4);
    check_bytes(t, "text_tokens", shape, d_tkv, tkv, (size_t)B * Tt);
    dit_ops_cuda.sample_keys(t->be, d_akv, d_ha, B, na);
    check_bytes(t, "sample_keys", shape, d_akv, akv, (size_t)B * na);
    dit_ops_cuda.cond_keys(t->be, d_kv, d_tkv, d_akv, B, Tt, na);
    check_bytes(t, "cond_keys", shape, d_kv, kv, (size_t)B * Tc);
    // positions, pooled condition and their backward
    float *x = hrand(t, ncond, 1), *pos = hrand(t, (size_t)Tc * C, 1), *dp = hrand(t, (size_t)B * C, 1);
    float *d_x = dev(t, x, ncond * 4), *d_pos = dev(t, pos, (size_t)Tc * C * 4),
          *d_dp = dev(t, dp, (size_t)B * C * 4);
    dit_ops_cpu.add_pos(&mm_backend_cpu, x, pos, B, Tc, C);
    dit_ops_cuda.add_pos(t->be, d_x, d_pos, B, Tc, C);
    check(t, "add_pos", shape, "x", d_x, x, ncond, 0);
    float *pool = mm_malloc((size_t)B * C * 4), *d_pool = cuda_alloc(t->c, (size_t)B * C * 4);
    dit_ops_cpu.pool_fwd(&mm_backend_cpu, pool, x, kv, B, Tc, C);
    dit_ops_cuda.pool_fwd(t->be, d_pool, d_x, d_kv, B, Tc, C);
    check(t, "pool_fwd", shape, "pool", d_pool, pool, (size_t)B * C, 0);
    dit_ops_cpu.pool_bwd(&mm_backend_cpu, x, dp, kv, B, Tc, C);
    dit_ops_cuda.pool_bwd(t->be, d_x, d_dp, d_kv, B, Tc, C);
    check(t, "pool_bwd", shape, "dcond", d_x, x, ncond, 0);
    dit_ops_cpu.pos_bwd(&mm_backend_cpu, pos, x, (size_t)Tc * C, B, Tc, C);
    dit_ops_cuda.pos_bwd(t->be, d_pos, d_x, (size_t)Tc * C, B, Tc, C);
    check(t, "pos_bwd", shape, "g", d_pos, pos, (size_t)Tc * C, 0);
    dit_ops_cpu.pos_bwd(&mm_backend_cpu, pos, x + (size_t)(Tc - 1) * C, (size_t)Tc * C, B, 1,
                        C);  // the null row
    dit_ops_cuda.pos_bwd(t->be, d_pos, d_x + (size_t)(Tc - 1) * C, (size_t)Tc * C, B, 1, C);
    check(t, "pos_bwd", shape, "g strided", d_pos, pos, (size_t)Tc * C, 0);
    // training pairs (both objectives) and the sampler's steps over (B, n), n = Tc * C
    double *coef = mm_malloc((size_t)B * 2 * sizeof(double));
    float *x0 = hrand(t, ncond, 1), *eps = hrand(t, ncond, 2), *xt = mm_malloc(ncond * 4),
          *tg = mm_malloc(ncond * 4);
    float *d_x0 = dev(t, x0, ncond * 4), *d_eps = dev(t, eps, ncond * 4),
          *d_xt = cuda_alloc(t->c, ncond * 4), *d_tg = cuda_alloc(t->c, ncond * 4);
    double *d_coef = cuda_alloc(t->c, (size_t)B * 2 * sizeof(double));
    for (int obj = 0; obj < 2; obj++) {
        for (int b = 0; b < B; b++) tt[b] = (float)((b * 137 + 11) % 1000) / 1000.0f;
        dit_pair_coefs(obj ? DIT_DDPM : DIT_FLOW, B, tt, coef);
        cuda_upload(t->c, d_coef, coef, (size_t)B * 2 * sizeof(double));
        dit_ops_cpu.make_pair(&mm_backend_cpu, xt, tg, x0, eps, coef, !obj, B, (size_t)Tc * C);
        dit_ops_cuda.make_pair(t->be, d_xt, d_tg, d_x0, d_eps, d_coef, !obj, B, (size_t)Tc * C);
        check(t, "make_pair", obj ? "ddpm" : "flow", "x_t", d_xt, xt, ncond, 0);
        check(t, "make_pair", obj ? "ddpm" : "flow", "target", d_tg, tg, ncond, 0);
    }
    dit_ops_cpu.guide(&mm_backend_cpu, xt, tg, 3.5f, ncond);
    dit_ops_cuda.guide(t->be, d_xt, d_tg, 3.5f, ncond);
    check(t, "guide", shape, "pred", d_xt, xt, ncond, 0);
    dit_ops_cpu.euler(&mm_backend_cpu, x0, xt, -0.05f, ncond);
    dit_ops_cuda.euler(t->be, d_x0, d_xt, -0.05f, ncond);
    check(t, "euler", shape, "x", d_x0, x0, ncond, 0);
    const double ab = dit_alpha_bar(600), abp = dit_alpha_bar(400);
    dit_ops_cpu.ddim(&mm_backend_cpu, x0, eps, 1.0 / sqrt(ab), sqrt(1 - ab), sqrt(abp),
                     sqrt(1 - abp), ncond);
    dit_ops_cuda.ddim(t->be, d_x0, d_eps, 1.0 / sqrt(ab), sqrt(1 - ab), sqrt(abp), sqrt(1 - abp),
                      ncond);
    check(t, "ddim", shape, "x", d_x0, x0, ncond, 1e-6);
    dit_ops_cpu.clip(&mm_backend_cpu, eps, ncond);
    dit_ops_cuda.clip(t->be, d_eps, ncond);
    check(t, "clip", shape, "x", d_eps, eps, ncond, 0);
    void *h[] = {tt, fe, tok, tk, ht, ha, tkv, akv, kv, x, pos, dp, pool, coef, x0, eps, xt, tg};
    void *d[] = {d_fe, d_tt, d_tok, d_tk, d_ht, d_ha, d_tkv, d_akv, d_kv, d_x, d_pos,
                 d_dp, d_pool, d_x0, d_eps, d_xt, d_tg, d_coef};
    free_all(18, h);
    cuda_free_all(18, d);
}

static void test_patchify(T *t, int B, int H, int W, int c, int p) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d %dx%dx%d p%d", B, H, W, c, p);
    const size_t n = (size_t)B * H * W * c;
    float *img = hrand(t, n, 1), *pt = mm_malloc(n * 4), *back = mm_malloc(n * 4);
    model_ops_cpu.patchify(&mm_backend_cpu, pt, img, B, H, W, c, p);
    model_ops_cpu.unpatchify(&mm_backend_cpu, back, pt, B, H, W, c, p);
    float *d_img = dev(t, img, n * 4), *d_pt = cuda_alloc(t->c, n * 4), *d_back = cuda_alloc(t->c, n * 4);
    model_ops_cuda.patchify(t->be, d_pt, d_img, B, H, W, c, p);
    check(t, "patchify", shape, "patches", d_pt, pt, n, 0);
    model_ops_cuda.unpatchify(t->be, d_back, d_pt, B, H, W, c, p);
    check(t, "unpatchify", shape, "image", d_back, back, n, 0);
    void *h[] = {img, pt, back};
    void *d[] = {d_img, d_pt, d_back};
    free_all(3, h);
    cuda_free_all(3, d);
}

// The convolutional stem: the gather and its adjoint at any H, W; the pooling at even ones.
// Pooling inputs are rounded to halves so that windows hold ties (the backward must pick the
// CPU's first maximum). Every backward starts from a random gradient (+=). Bit for bit.
static void test_conv(T *t, int B, int H, int W, int c) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d %dx%dx%d", B, H, W, c);
    const size_t n = (size_t)B * H * W * c, nc = n * 9;
    float *img = hrand(t, n, 1), *dc = hrand(t, nc, 1), *di0 = hrand(t, n, 1);
    float *cols = mm_malloc(nc * 4), *di = hcopy(di0, n);
    model_ops_cpu.im2col3(&mm_backend_cpu, cols, img, B, H, W, c);
    model_ops_cpu.col2im3(&mm_backend_cpu, di, dc, B, H, W, c);
    float *d_img = dev(t, img, n * 4), *d_dc = dev(t, dc, nc * 4), *d_di = dev(t, di0, n * 4),
          *d_cols = cuda_alloc(t->c, nc * 4);
    model_ops_cuda.im2col3(t->be, d_cols, d_img, B, H, W, c);
    check(t, "im2col3", shape, "cols", d_cols, cols, nc, 0);
    model_ops_cuda.col2im3(t->be, d_di, d_dc, B, H, W, c);
    check(t, "col2im3", shape, "dimg", d_di, di, n, 0);
    if (H % 2 == 0 && W % 2 == 0) {
        const size_t no = n / 4;
        for (size_t i = 0; i < n; i++) img[i] = roundf(img[i] * 2) / 2;
        float *out = mm_malloc(no * 4), *dout = hrand(t, no, 1);
        memcpy(di, di0, n * 4);
        model_ops_cpu.maxpool2_fwd(&mm_backend_cpu, out, img, B, H, W, c);
        model_ops_cpu.maxpool2_bwd(&mm_backend_cpu, di, dout, img, B, H, W, c);
        float *d_out = cuda_alloc(t->c, no * 4), *d_dout = dev(t, dout, no * 4);
        cuda_upload(t->c, d_img, img, n * 4);
        cuda_upload(t->c, d_di, di0, n * 4);
        model_ops_cuda.maxpool2_fwd(t->be, d_out, d_img, B, H, W, c);
        check(t, "maxpool2_fwd", shape, "out", d_out, out, no, 0);
        model_ops_cuda.maxpool2_bwd(t->be, d_di, d_dout, d_img, B, H, W, c);
        check(t, "maxpool2_bwd", shape, "dx", d_di, di, n, 0);
        void *h[] = {out, dout};
        void *d[] = {d_out, d_dout};
        free_all(2, h);
        cuda_free_all(2, d);
    }
    void *h[] = {img, dc, di0, cols, di};
    void *d[] = {d_img, d_dc, d_di, d_cols};
    free_all(5, h);
    cuda_free_all(4, d);
}

// ---------------------------------------------------------------------------------------
// DiT: modulation, gated residual, MSE

// shift/scale/gate rows live inside a packed (B, sc) buffer at column offsets, as adaLN's
static void test_modulate(T *t, int B, int N, int C, int sc) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d N%d C%d sc%d", B, N, C, sc);
    size_t n = (size_t)B * N * C, nm = (size_t)B * sc;
    float *x = hrand(t, n, 2), *y = hrand(t, n, 1), *mod = hrand(t, nm, 1), *dout = hrand(t, n, 1);
    float *dx0 = hrand(t, n, 1), *dmod0 = hrand(t, nm, 1);
    const int o_shift = 0, o_scale = C, o_gate = sc - C;  // three vectors in the packed row
    float *out = mm_malloc(n * 4), *dx = hcopy(dx0, n), *dmod = hcopy(dmod0, nm),
          *xg = hcopy(x, n), *dy = hcopy(dx0, n);
    dit_ops_cpu.modulate_fwd(&mm_backend_cpu, out, x, mod + o_shift, mod + o_scale, sc, B, N, C);
    dit_ops_cpu.modulate_bwd(&mm_backend_cpu, dx, dmod + o_shift, dmod + o_scale, dout, x,
                             mod + o_scale, sc, B, N, C);
    dit_ops_cpu.gated_add_fwd(&mm_backend_cpu, xg, x, y, mod + o_gate, sc, B, N, C);
    dit_ops_cpu.gated_add_bwd(&mm_backend_cpu, dy, dmod + o_gate, dout, y, mod + o_gate, sc, B, N,
                              C);
    float *d_x = dev(t, x, n * 4), *d_y = dev(t, y, n * 4), *d_mod = dev(t, mod, nm * 4),
          *d_dout = dev(t, dout, n * 4), *d_out = cuda_alloc(t->c, n * 4),
          *d_dx = dev(t, dx0, n * 4), *d_dmod = dev(t, dmod0, nm * 4), *d_dy = dev(t, dx0, n * 4),
          *e_dmod = dev(t, dmod0, nm * 4), *e_dx = dev(t, dx0, n * 4);
    dit_ops_cuda.modulate_fwd(t->be, d_out, d_x, d_mod + o_shift, d_mod + o_scale, sc, B, N, C);
    check(t, "modulate_fwd", shape, "out", d_out, out, n, 1e-5);
    dit_ops_cuda.modulate_bwd(t->be, d_dx, d_dmod + o_shift, d_dmod + o_scale, d_dout, d_x,
                              d_mod + o_scale, sc, B, N, C);
    check(t, "modulate_bwd", shape, "dx", d_dx, dx, n, 1e-5);
    dit_ops_cuda.gated_add_fwd(t->be, d_out, d_x, d_y, d_mod + o_gate, sc, B, N, C);
    check(t, "gated_add_fwd", shape, "out", d_out, xg, n, 1e-5);
    dit_ops_cuda.gated_add_bwd(t->be, d_dy, d_dmod + o_gate, d_dout, d_y, d_mod + o_gate, sc, B, N,
                               C);
    check(t, "gated_add_bwd", shape, "dy", d_dy, dy, n, 1e-5);
    // the whole packed buffer: shift, scale and gate gradients, and untouched columns
    check(t, "mod+gate bwd", shape, "dmod", d_dmod, dmod, nm, 1e-5);
    // determinism of the per-sample reductions
    cuda_upload(t->c, d_x, x, n * 4);
    cuda_upload(t->c, d_dmod, dmod0, nm * 4);
    cuda_upload(t->c, d_dx, dx0, n * 4);
    dit_ops_cuda.modulate_bwd(t->be, d_dx, d_dmod + o_shift, d_dmod + o_scale, d_dout, d_x,
                              d_mod + o_scale, sc, B, N, C);
    dit_ops_cuda.modulate_bwd(t->be, e_dx, e_dmod + o_shift, e_dmod + o_scale, d_dout, d_x,
                              d_mod + o_scale, sc, B, N, C);
    check_same(t, "modulate_bwd", shape, "dmod rerun", d_dmod, e_dmod, nm);
    void *h[] = {x, y, mod, dout, dx0, dmod0, out, dx, dmod, xg, dy};
    void *d[] = {d_x, d_y, d_mod, d_dout, d_out, d_dx, d_dmod, d_dy, e_dmod, e_dx};
    free_all(11, h);
    cuda_free_all(10, d);
}

// LayerNorm (of a, or of a + b into res) and modulation in one kernel, against the CPU's two ops
static void test_ln_modulate(T *t, int B, int N, int C, int sc) {
    char shape[64];
    const size_t n = (size_t)B * N * C, nm = (size_t)B * sc, rows = (size_t)B * N;
    float *a = hrand(t, n, 2), *b = hrand(t, n, 1), *mod = hrand(t, nm, 1), *g = hrand(t, C, 1);
    float *beta = hrand(t, C, 1), *res = mm_malloc(n * 4), *h = mm_malloc(n * 4);
    float *out = mm_malloc(n * 4), *mean = mm_malloc(rows * 4), *rstd = mm_malloc(rows * 4);
    float *d_a = dev(t, a, n * 4), *d_b = dev(t, b, n * 4), *d_mod = dev(t, mod, nm * 4),
          *d_g = dev(t, g, C * 4), *d_beta = dev(t, beta, C * 4), *d_res = cuda_alloc(t->c, n * 4),
          *d_h = cuda_alloc(t->c, n * 4), *d_out = cuda_alloc(t->c, n * 4),
          *d_mean = cuda_alloc(t->c, rows * 4), *d_rstd = cuda_alloc(t->c, rows * 4);
    const int o_gate = 2 * C % sc, o_shift = 3 * C % sc, o_scale = 4 * C % sc;
    static const char *const variant[] = {"", " a+b", " a+gate*b"};
    for (int with = 0; with < 3; with++) {  // no add, add, gated add without modulation
        snprintf(shape, sizeof(shape), "B%d N%d C%d sc%d%s", B, N, C, sc, variant[with]);
        const int gated = with == 2;
        dit_ops_cpu.ln_modulate_fwd(&mm_backend_cpu, with ? res : NULL, h, gated ? NULL : out,
                                    mean, rstd, a, with ? b : NULL, gated ? mod + o_gate : NULL, g,
                                    beta, gated ? NULL : mod + o_shift,
                                    gated ? NULL : mod + o_scale, sc, B, N, C);
        dit_ops_cuda.ln_modulate_fwd(t->be, with ? d_res : NULL, d_h, gated ? NULL : d_out, d_mean,
                                     d_rstd, d_a, with ? d_b : NULL, gated ? d_mod + o_gate : NULL,
                                     d_g, d_beta, gated ? NULL : d_mod + o_shift,
                                     gated ? NULL : d_mod + o_scale, sc, B, N, C);
        if (with) check(t, "ln_modulate_fwd", shape, "res", d_res, res, n, 1e-5);
        check(t, "ln_modulate_fwd", shape, "h", d_h, h, n, 1e-5);
        if (!gated) check(t, "ln_modulate_fwd", shape, "out", d_out, out, n, 1e-5);
        check(t, "ln_modulate_fwd", shape, "mean", d_mean, mean, rows, 1e-5);
        check(t, "ln_modulate_fwd", shape, "rstd", d_rstd, rstd, rows, 1e-5);
    }
    // the backward (h, mean, rstd and the LayerNorm's input res as the last case left them):
    // dx and the packed modulation gradient accumulate; dh is the CPU's scratch
    snprintf(shape, sizeof(shape), "B%d N%d C%d sc%d", B, N, C, sc);
    float *dout = hrand(t, n, 1), *dx = hrand(t, n, 1), *dmod = hrand(t, nm, 1);
    float *dh = mm_malloc(n * 4);
    float *d_dout = dev(t, dout, n * 4), *d_dx = dev(t, dx, n * 4), *d_dmod = dev(t, dmod, nm * 4),
          *d_dh = cuda_alloc(t->c, n * 4);
    dit_ops_cpu.modulate_ln_bwd(&mm_backend_cpu, dx, dmod + o_shift, dmod + o_scale, dh, dout, h,
                                mod + o_scale, sc, res, g, mean, rstd, B, N, C);
    dit_ops_cuda.modulate_ln_bwd(t->be, d_dx, d_dmod + o_shift, d_dmod + o_scale, d_dh, d_dout,
                                 d_h, d_mod + o_scale, sc, d_res, d_g, d_mean, d_rstd, B, N, C);
    check(t, "modulate_ln_bwd", shape, "dx", d_dx, dx, n, 1e-5);
    check(t, "modulate_ln_bwd", shape, "dmod", d_dmod, dmod, nm, 1e-5);
    void *hs[] = {a, b, mod, g, beta, res, h, out, mean, rstd, dout, dx, dmod, dh};
    void *ds[] = {d_a, d_b, d_mod, d_g, d_beta, d_res, d_h, d_out, d_mean, d_rstd, d_dout, d_dx,
                  d_dmod, d_dh};
    free_all(14, hs);
    cuda_free_all(14, ds);
}

static void test_mse(T *t, int B, size_t n) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d n%zu", B, n);
    size_t tot = (size_t)B * n;
    float *pred = hrand(t, tot, 2), *tgt = hrand(t, tot, 2), *dloss = hrand(t, B, 1);
    float *loss = mm_malloc(B * 4), *dp = mm_malloc(tot * 4), *junk = hrand(t, tot, 5);
    dit_ops_cpu.mse_fwd(&mm_backend_cpu, loss, pred, tgt, B, n);
    dit_ops_cpu.mse_bwd(&mm_backend_cpu, dp, pred, tgt, dloss, B, n);
    float *d_pred = dev(t, pred, tot * 4), *d_tgt = dev(t, tgt, tot * 4),
          *d_dloss = dev(t, dloss, B * 4), *d_loss = cuda_alloc(t->c, B * 4),
          *d_loss2 = cuda_alloc(t->c, B * 4), *d_dp = dev(t, junk, tot * 4);
    dit_ops_cuda.mse_fwd(t->be, d_loss, d_pred, d_tgt, B, n);
    check(t, "mse_fwd", shape, "loss", d_loss, loss, B, 1e-5);
    dit_ops_cuda.mse_fwd(t->be, d_loss2, d_pred, d_tgt, B, n);
    check_same(t, "mse_fwd", shape, "loss rerun", d_loss, d_loss2, B);
    dit_ops_cuda.mse_bwd(t->be, d_dp, d_pred, d_tgt, d_dloss, B, n);
    check(t, "mse_bwd", shape, "dpred", d_dp, dp, tot, 1e-5);
    void *h[] = {pred, tgt, dloss, loss, dp, junk};
    void *d[] = {d_pred, d_tgt, d_dloss, d_loss, d_loss2, d_dp};
    free_all(6, h);
    cuda_free_all(6, d);
}

// x-prediction's turn of the estimate into the velocity and back, t on both sides of TMIN
static void test_xpred(T *t, int B, size_t n) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d n%zu", B, n);
    size_t tot = (size_t)B * n;
    float *y = hrand(t, tot, 2), *xt = hrand(t, tot, 2), *tt = hrand(t, B, 0.5f);
    for (int b = 0; b < B; b++) tt[b] += 0.5f;  // in [0, 1]
    if (B > 1) tt[1] = 0.02f;                   // below DIT_XPRED_TMIN
    float *d_y = dev(t, y, tot * 4), *d_xt = dev(t, xt, tot * 4), *d_t = dev(t, tt, B * 4);
    for (int bwd = 0; bwd <= 1; bwd++) {
        dit_ops_cpu.xpred(&mm_backend_cpu, y, xt, tt, bwd, B, n);
        dit_ops_cuda.xpred(t->be, d_y, d_xt, d_t, bwd, B, n);
        check(t, bwd ? "xpred_bwd" : "xpred_fwd", shape, "y", d_y, y, tot, 1e-6);
    }
    void *h[] = {y, xt, tt};
    void *d[] = {d_y, d_xt, d_t};
    free_all(3, h);
    cuda_free_all(3, d);
}

// ---------------------------------------------------------------------------------------
// the trainer's kernels against train/optim.c

static void test_optim(T *t, size_t lo_cut, size_t hi_cut) {
    // a parameter table: awkward sizes, a tensor crossing a chunk boundary, decay and not,
    // sharded and replicated
    const int64_t sizes[] = {5, CUDA_CHUNK + 3, 1000, 70001, 1, 4096};
    const int decay[] = {0, 1, 0, 1, 0, 1}, split[] = {-1, 0, -1, 1, -1, -1};
    enum { NT = 6 };
    model_tensor tens[NT];
    size_t off = 0;
    memset(tens, 0, sizeof(tens));
    for (int i = 0; i < NT; i++) {
        snprintf(tens[i].name, sizeof(tens[i].name), "t%d", i);
        tens[i].ndim = 1;
        tens[i].shape[0] = tens[i].local[0] = sizes[i];
        tens[i].split_dim = split[i];
        tens[i].offset = off;
        tens[i].size = (size_t)sizes[i];
        tens[i].decay = decay[i];
        off += (size_t)sizes[i];
    }
    const size_t n = off, lo = lo_cut, hi = n - hi_cut, nr = hi - lo;
    char shape[64];
    snprintf(shape, sizeof(shape), "n%zu [%zu,%zu)", n, lo, hi);
    optim_cfg cfg = {.lr = 3e-3, .min_lr = 0, .warmup = 0, .total = 10, .beta1 = 0.9,
                     .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1, .grad_clip = 1};
    optim o;
    optim_init(&o, &cfg, tens, NT, lo, hi);
    cuda_seg *segs = mm_calloc(o.n_seg, sizeof(cuda_seg));
    for (int s = 0; s < o.n_seg; s++) {
        if (s % 2) o.seg[s].lr_mult = 0.5f;  // parameter groups
        segs[s] = o.seg[s];
    }
    cuda_plan p;
    cuda_plan_init(&p, t->c, segs, o.n_seg, lo, hi);
    float *params = hrand(t, n, 1), *d_params = dev(t, params, n * 4);
    float *d_grads = cuda_alloc(t->c, nr * 4), *d_m = cuda_alloc(t->c, nr * 4),
          *d_v = cuda_alloc(t->c, nr * 4);
    double sh = 0, rep = 0, gsh = 0, grep = 0;
    for (int step = 1; step <= 3; step++) {
        float *grads = hrand(t, nr, step == 2 ? 1e-3f : 1);
        cuda_upload(t->c, d_grads, grads, nr * 4);
        const double lr = optim_lr(&cfg, step - 1), gs = step == 3 ? 0.5 : 1.0;
        optim_adamw(&o, params, grads, step, lr, gs);
        cuda_adamw(t->c, &p, d_params, d_grads, d_m, d_v, step, lr, cfg.beta1, cfg.beta2,
                   cfg.eps, cfg.weight_decay, gs);
        if (step == 3) {
            optim_sumsq(&o, grads, &sh, &rep);
            cuda_sumsq(t->c, &p, d_grads, &gsh, &grep);
        }
        free(grads);
    }
    check(t, "adamw x3", shape, "params", d_params, params, n, 1e-6);
    check(t, "adamw x3", shape, "m", d_m, o.m, nr, 1e-6);
    check(t, "adamw x3", shape, "v", d_v, o.v, nr, 1e-6);
    row(t, "sumsq", shape, "sharded", fabs(gsh - sh) / (sh > 0 ? sh : 1), 1e-12);
    row(t, "sumsq", shape, "replicated", fabs(grep - rep) / (rep > 0 ? rep : 1), 1e-12);
    // EMA and scale, float for float against the CPU formulas (train/family_dit.c, clipping)
    float *ema = hrand(t, n, 1), *d_ema = dev(t, ema, n * 4);
    const float d = 0.999f;
    for (size_t i = 0; i < n; i++) ema[i] = d * ema[i] + (1.0f - d) * params[i];
    cuda_upload(t->c, d_params, params, n * 4);
    cuda_ema(t->c, d_ema, d_params, n, d);
    check(t, "ema", shape, "ema", d_ema, ema, n, 1e-7);
    for (size_t i = 0; i < n; i++) params[i] *= 0.37f;
    cuda_scale(t->c, d_params, n, 0.37f);
    check(t, "scale", shape, "x", d_params, params, n, 0);
    cuda_plan_free(&p);
    optim_free(&o);
    void *h[] = {segs, params, ema};
    void *dd[] = {d_params, d_grads, d_m, d_v, d_ema};
    free_all(3, h);
    cuda_free_all(5, dd);
}

int main(void) {
    T t = {.be = NULL, .c = NULL, .tc = {0, 0}};
    mm_rng_init(&t.rng, 12345, 0);
    mm_err err = {{0}};
    if (mm_backend_create(&t.be, "cuda", "fp32", 0, 0, &err) != 0) {
        TEST_CHECK(&t.tc, 0, "no CUDA device: %s", err.msg);
        return test_finish(&t.tc);
    }
    t.c = (cuda_ctx *)t.be->ctx;
    cuda_ctx *ctx = t.c;
    printf("device: %s (%d SMs, compute %d.%d, %.1f GiB)\n", ctx->device_name, ctx->sm_count,
           ctx->cc_major, ctx->cc_minor, (double)ctx->mem_bytes / (1 << 30));
    printf("%-16s %-30s %-10s %11s %8s\n", "op", "shape", "tensor", "rel.err", "tol");

    // matmul: fp32 and bf16, with and without bias / dinp, awkward sizes
    static const int mm[][3] = {{1, 1, 1}, {7, 13, 5}, {37, 45, 77}, {64, 96, 160}, {130, 33, 257}};
    for (size_t i = 0; i < sizeof(mm) / sizeof(mm[0]); i++) {
        test_matmul(&t, mm[i][0], mm[i][1], mm[i][2], 1, 1, CUDA_FP32);
        test_matmul(&t, mm[i][0], mm[i][1], mm[i][2], (int)(i % 2), (int)(i % 3 != 1), CUDA_FP32);
    }
    for (size_t i = 1; i < sizeof(mm) / sizeof(mm[0]); i++)
        test_matmul(&t, mm[i][0], mm[i][1], mm[i][2], 1, (int)(i != 2), CUDA_BF16);
    test_params16(&t, 7, 13, 5);
    test_params16(&t, 37, 64, 96);
    // the fused GELU: OC 160 and 64 take cuBLASLt's epilogue in bf16, 77 and 5 the two ops
    static const int mg[][3] = {{7, 13, 5}, {37, 45, 77}, {64, 96, 160}, {33, 40, 64}};
    for (size_t i = 0; i < sizeof(mg) / sizeof(mg[0]); i++)
        for (int p = 0; p < 2; p++)
            test_matmul_gelu(&t, mg[i][0], mg[i][1], mg[i][2], p ? CUDA_BF16 : CUDA_FP32);
    // and its backward, the GELU's input now the matmul's IC: 160 and 64 fused in bf16
    for (size_t i = 0; i < sizeof(mg) / sizeof(mg[0]); i++)
        for (int p = 0; p < 2; p++)
            test_matmul_gelu_bwd(&t, mg[i][0], mg[i][2], mg[i][1], p ? CUDA_BF16 : CUDA_FP32);

    static const int ln[][2] = {{1, 1}, {5, 7}, {33, 100}, {70, 768}, {300, 33}};
    for (size_t i = 0; i < sizeof(ln) / sizeof(ln[0]); i++) test_layernorm(&t, ln[i][0], ln[i][1]);

    test_elementwise(&t, 1);
    test_elementwise(&t, 1000);
    test_elementwise(&t, 70003);

    // attention: T = 1, all-causal, all-prefix, mixed; HD not a multiple of 32; several
    // query and key tiles with the prefix ending inside one (HD 64, the flash kernels' widest;
    // HD 48 with a last tile of one row); HD 80 (always cuBLAS). Each shape on every path:
    // SIMT flash (attn_core_bytes 0) and the cuBLAS core (no limit), the latter in fp32 and in
    // bf16 (tensor cores without dropout; the fp32 core with it), all with flash_tc off; then
    // bf16 with flash_tc on (flash on tensor cores where the shape allows, the bf16 core
    // otherwise; dropout still the fp32 core). Then the context's defaults are restored.
    static const int at[][5] = {{1, 1, 0, 1, 4},   {3, 1, 1, 2, 8},      {3, 5, 2, 1, 3},
                                {3, 37, 10, 2, 16}, {2, 64, 64, 4, 32},   {3, 70, 0, 3, 24},
                                {3, 150, 45, 2, 64}, {2, 129, 100, 3, 48}, {1, 1, 0, 1, 16},
                                {2, 33, 7, 1, 80}};
    const size_t core_bytes = ctx->attn_core_bytes;
    const int flash_tc = ctx->flash_tc;
    for (int path = 0; path < 4; path++) {
        ctx->attn_core_bytes = path == 1 || path == 2 ? SIZE_MAX : 0;
        ctx->flash_tc = path == 3;
        for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++)
            for (int drop = 0; drop < 2; drop++)
                test_attention(&t, at[i][0], at[i][1], at[i][2], at[i][3], at[i][4],
                               drop ? 0.25 : 0, path >= 2 ? CUDA_BF16 : CUDA_FP32);
    }
    ctx->flash_tc = flash_tc;
    test_dropout(&t, 1, 1, 0.5);
    test_dropout(&t, 3, 1000, 0.1);
    test_dropout(&t, 4, 70003, 0.3);
    ctx->attn_core_bytes = core_bytes;

    test_glue(&t, 1, 1, 1, 1, 1, 3);
    test_glue(&t, 4, 4, 3, 17, 40, 259);
    test_glue(&t, 3, 0, 2, 33, 96, 7);
    test_patchify(&t, 2, 8, 8, 3, 4);
    test_patchify(&t, 3, 12, 6, 4, 2);
    static const int cv[][4] = {
        {1, 1, 1, 1}, {2, 5, 7, 3}, {1, 4, 2, 1}, {2, 6, 10, 3}, {3, 8, 6, 33}};
    for (size_t i = 0; i < sizeof(cv) / sizeof(cv[0]); i++)
        test_conv(&t, cv[i][0], cv[i][1], cv[i][2], cv[i][3]);

    static const int xe[][2] = {{1, 1}, {5, 3}, {37, 259}, {64, 1000}};
    for (size_t i = 0; i < sizeof(xe) / sizeof(xe[0]); i++) {
        test_xent(&t, xe[i][0], xe[i][1], 0);
        test_xent(&t, xe[i][0], xe[i][1], 0.1f);
    }

    static const int md[][4] = {{1, 1, 1, 3}, {3, 17, 40, 240}, {2, 1, 130, 390}, {1, 64, 33, 99}};
    for (size_t i = 0; i < sizeof(md) / sizeof(md[0]); i++)
        test_modulate(&t, md[i][0], md[i][1], md[i][2], md[i][3]);
    // rows of one warp's width and less, several warps' rows in one block, a partial block
    static const int lm[][4] = {{1, 1, 1, 6}, {3, 17, 40, 240}, {2, 5, 130, 390}, {1, 9, 384, 2304}};
    for (size_t i = 0; i < sizeof(lm) / sizeof(lm[0]); i++)
        test_ln_modulate(&t, lm[i][0], lm[i][1], lm[i][2], lm[i][3]);

    // cross-attention in fp32, in bf16 on the cuBLAS core (flash_tc off) and in bf16 as the
    // context has it (flash on tensor cores where the heads and Tk >= 2 allow); the last two
    // shapes with several query and key tiles
    static const int xa[][5] = {{1, 1, 1, 1, 4},     {2, 17, 5, 2, 8},   {3, 64, 37, 3, 16},
                                {2, 70, 1, 2, 32},   {2, 130, 70, 2, 64}, {1, 65, 129, 1, 48}};
    const int xflash = ctx->flash_tc;
    for (size_t i = 0; i < sizeof(xa) / sizeof(xa[0]); i++)
        for (int p = 0; p < 3; p++) {
            ctx->flash_tc = p == 2;
            test_xattn(&t, xa[i][0], xa[i][1], xa[i][2], xa[i][3], xa[i][4],
                       p ? CUDA_BF16 : CUDA_FP32);
        }
    ctx->flash_tc = xflash;

    test_mse(&t, 1, 1);
    test_mse(&t, 3, 100);
    test_mse(&t, 2, 10000);
    test_xpred(&t, 1, 1);
    test_xpred(&t, 3, 3072);
    test_mse(&t, 4, 3 * 32 * 32);

    test_dit_glue(&t, 1, 1, 1, 4, 259);
    test_dit_glue(&t, 3, 17, 5, 40, 259);
    test_dit_glue(&t, 4, 33, 8, 96, 259);

    test_optim(&t, 0, 0);
    test_optim(&t, 3, 500);  // a ZeRO-1 shard cutting through tensors

    mm_backend_free(t.be);
    return test_finish(&t.tc);
}
