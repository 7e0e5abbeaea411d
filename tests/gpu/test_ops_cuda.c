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
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../model/cuda.h"
#include "../../train/optim.h"
#include "../test.h"

typedef struct {
    cuda_ctx *c;
    test_counts tc;
    mm_rng rng;
} T;

// ---------------------------------------------------------------------------------------
// helpers: host/device buffers, comparison

static float *hrand(T *t, size_t n, float scale) {
    float *p = mm_malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = scale * (2 * mm_rng_uniform(&t->rng) - 1);
    return p;
}

static float *hcopy(const float *h, size_t n) {
    float *p = mm_malloc((n ? n : 1) * sizeof(float));
    memcpy(p, h, n * sizeof(float));
    return p;
}

static void *dev(T *t, const void *h, size_t bytes) {
    void *d = cuda_alloc(t->c, bytes);
    cuda_upload(t->c, d, h, bytes);
    return d;
}

// max|a - b| / max|b| (see the file comment); INFINITY when a has a non-finite value where b
// has not.
static double rel_err(const float *a, const float *b, size_t n) {
    double md = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) && isfinite(b[i])) return INFINITY;
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > md) md = d;
        if (fabs((double)b[i]) > mb) mb = fabs((double)b[i]);
    }
    return mb > 0 ? md / mb : md;
}

static void row(T *t, const char *op, const char *shape, const char *what, double err,
                double tol) {
    int ok = err <= tol;
    printf("%-16s %-30s %-10s %11.3e %8.0e  %s\n", op, shape, what, err, tol, ok ? "ok" : "FAIL");
    TEST_CHECK(&t->tc, ok, "%s %s %s: error %.3e above %.0e", op, shape, what, err, tol);
}

// Downloads n floats of d and compares them with ref.
static void check(T *t, const char *op, const char *shape, const char *what, const float *d,
                  const float *ref, size_t n, double tol) {
    cuda_ctx_sync(t->c);
    float *h = mm_malloc((n ? n : 1) * sizeof(float));
    cuda_download(t->c, h, d, n * sizeof(float));
    row(t, op, shape, what, rel_err(h, ref, n), tol);
    free(h);
}

// Bitwise comparison of two device buffers (determinism).
static void check_same(T *t, const char *op, const char *shape, const char *what, const float *d1,
                       const float *d2, size_t n) {
    cuda_ctx_sync(t->c);
    float *a = mm_malloc((n ? n : 1) * sizeof(float)), *b = mm_malloc((n ? n : 1) * sizeof(float));
    cuda_download(t->c, a, d1, n * sizeof(float));
    cuda_download(t->c, b, d2, n * sizeof(float));
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    printf("%-16s %-30s %-10s %11zu %8s  %s\n", op, shape, what, diff, "0 diff",
           diff ? "FAIL" : "ok");
    TEST_CHECK(&t->tc, diff == 0, "%s %s %s: %zu elements differ between two runs", op, shape,
               what, diff);
    free(a);
    free(b);
}

static float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return f;
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

static float *hround(const float *h, size_t n) {
    float *p = hcopy(h, n);
    for (size_t i = 0; i < n; i++) p[i] = bf16_round(p[i]);
    return p;
}

static void free_all(int n, void **p) {
    for (int i = 0; i < n; i++) free(p[i]);
}
static void cuda_free_all(int n, void **p) {
    for (int i = 0; i < n; i++) cuda_free(p[i]);
}

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
    model_ops_cpu.matmul_fwd(out, inp, w, with_bias ? bias : NULL, N, IC, OC);
    model_ops_cpu.matmul_bwd(with_dinp ? dinp : NULL, dw, with_bias ? db : NULL, dout, inp, w, N,
                             IC, OC);
    t->c->precision = prec;
    float *d_inp = dev(t, inp, ni * 4), *d_w = dev(t, w, nw * 4), *d_bias = dev(t, bias, OC * 4),
          *d_dout = dev(t, dout, no * 4), *d_out = cuda_alloc(t->c, no * 4),
          *d_dinp = dev(t, dinp0, ni * 4), *d_dw = dev(t, dw0, nw * 4),
          *d_db = dev(t, db0, OC * 4);
    model_ops_cuda.matmul_fwd(d_out, d_inp, d_w, with_bias ? d_bias : NULL, N, IC, OC);
    check(t, op_f, shape, "out", d_out, out, no, tol);
    model_ops_cuda.matmul_bwd(with_dinp ? d_dinp : NULL, d_dw, with_bias ? d_db : NULL, d_dout,
                              d_inp, d_w, N, IC, OC);
    check(t, op_b, shape, "dinp", d_dinp, with_dinp ? dinp : dinp0, ni, tol);
    check(t, op_b, shape, "dw", d_dw, dw, nw, tol);
    check(t, op_b, shape, "dbias", d_db, with_bias ? db : db0, OC, 1e-5);  // dbias stays fp32
    if (prec == CUDA_BF16) {
        // the CPU op on bf16-rounded inputs: what the GPU computed, up to fp32 summation order
        float *ri = hround(inp, ni), *rw = hround(w, nw), *rd = hround(dout, no);
        float *dinp2 = hcopy(dinp0, ni), *dw2 = hcopy(dw0, nw), *db2 = hcopy(db0, OC);
        model_ops_cpu.matmul_fwd(out, ri, rw, with_bias ? bias : NULL, N, IC, OC);
        model_ops_cpu.matmul_bwd(with_dinp ? dinp2 : NULL, dw2, with_bias ? db2 : NULL, rd, ri, rw,
                                 N, IC, OC);
        check(t, op_f, shape, "out~bf16in", d_out, out, no, 1e-4);
        check(t, op_b, shape, "dinp~bf16", d_dinp, dinp2, ni, 1e-4);
        check(t, op_b, shape, "dw~bf16in", d_dw, dw2, nw, 1e-4);
        void *h2[] = {ri, rw, rd, dinp2, dw2, db2};
        free_all(6, h2);
    }
    t->c->precision = CUDA_FP32;
    void *h[] = {inp, w, bias, dout, dinp0, dw0, db0, out, dinp, dw, db};
    void *d[] = {d_inp, d_w, d_bias, d_dout, d_out, d_dinp, d_dw, d_db};
    free_all(11, h);
    cuda_free_all(8, d);
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
    model_ops_cpu.layernorm_fwd(out, mean, rstd, x, g, b, N, C);
    model_ops_cpu.layernorm_bwd(dx, dg, db, dout, x, g, mean, rstd, N, C);
    float *d_x = dev(t, x, n * 4), *d_g = dev(t, g, C * 4), *d_b = dev(t, b, C * 4),
          *d_dout = dev(t, dout, n * 4), *d_out = cuda_alloc(t->c, n * 4),
          *d_mean = cuda_alloc(t->c, N * 4), *d_rstd = cuda_alloc(t->c, N * 4),
          *d_dx = dev(t, dx0, n * 4), *d_dg = dev(t, dg0, C * 4), *d_db = dev(t, db0, C * 4);
    model_ops_cuda.layernorm_fwd(d_out, d_mean, d_rstd, d_x, d_g, d_b, N, C);
    check(t, "layernorm_fwd", shape, "out", d_out, out, n, 1e-5);
    check(t, "layernorm_fwd", shape, "mean", d_mean, mean, N, 1e-5);
    check(t, "layernorm_fwd", shape, "rstd", d_rstd, rstd, N, 1e-5);
    // backward from the CPU's saved statistics, so that only the backward is compared
    cuda_upload(t->c, d_mean, mean, N * 4);
    cuda_upload(t->c, d_rstd, rstd, N * 4);
    model_ops_cuda.layernorm_bwd(d_dx, d_dg, d_db, d_dout, d_x, d_g, d_mean, d_rstd, N, C);
    check(t, "layernorm_bwd", shape, "dx", d_dx, dx, n, 1e-5);
    check(t, "layernorm_bwd", shape, "dg", d_dg, dg, C, 1e-5);
    check(t, "layernorm_bwd", shape, "db", d_db, db, C, 1e-5);
    // determinism: the same backward again from the same start gives the same bits
    float *e_dx = dev(t, dx0, n * 4), *e_dg = dev(t, dg0, C * 4), *e_db = dev(t, db0, C * 4);
    float *f_dx = dev(t, dx0, n * 4), *f_dg = dev(t, dg0, C * 4), *f_db = dev(t, db0, C * 4);
    model_ops_cuda.layernorm_bwd(e_dx, e_dg, e_db, d_dout, d_x, d_g, d_mean, d_rstd, N, C);
    model_ops_cuda.layernorm_bwd(f_dx, f_dg, f_db, d_dout, d_x, d_g, d_mean, d_rstd, N, C);
    check_same(t, "layernorm_bwd", shape, "dg rerun", e_dg, f_dg, C);
    check_same(t, "layernorm_bwd", shape, "db rerun", e_db, f_db, C);
    void *h[] = {x, g, b, dout, dx0, dg0, db0, out, mean, rstd, dx, dg, db};
    void *d[] = {d_x, d_g, d_b, d_dout, d_out, d_mean, d_rstd, d_dx, d_dg, d_db,
                 e_dx, e_dg, e_db, f_dx, f_dg, f_db};
    free_all(13, h);
    cuda_free_all(16, d);
}

static void test_elementwise(T *t, size_t n) {
    char shape[64];
    snprintf(shape, sizeof(shape), "n%zu", n);
    float *x = hrand(t, n, 4), *y = hrand(t, n, 1), *dout = hrand(t, n, 1), *dx0 = hrand(t, n, 1);
    float *out = mm_malloc(n * 4), *dx = hcopy(dx0, n), *sum = mm_malloc(n * 4);
    model_ops_cpu.gelu_fwd(out, x, n);
    model_ops_cpu.gelu_bwd(dx, x, dout, n);
    model_ops_cpu.add(sum, x, y, n);
    float *d_x = dev(t, x, n * 4), *d_y = dev(t, y, n * 4), *d_dout = dev(t, dout, n * 4),
          *d_out = cuda_alloc(t->c, n * 4), *d_dx = dev(t, dx0, n * 4);
    model_ops_cuda.gelu_fwd(d_out, d_x, n);
    check(t, "gelu_fwd", shape, "out", d_out, out, n, 1e-5);
    model_ops_cuda.gelu_bwd(d_dx, d_x, d_dout, n);
    check(t, "gelu_bwd", shape, "dx", d_dx, dx, n, 1e-5);
    model_ops_cuda.add(d_y, d_x, d_y, n);  // in place, as the residual adds
    check(t, "add", shape, "out=a+out", d_y, sum, n, 1e-5);
    // DiT SiLU
    float *dx2 = hcopy(dx0, n);
    dit_ops_cpu.silu_fwd(out, x, n);
    dit_ops_cpu.silu_bwd(dx2, x, dout, n);
    cuda_upload(t->c, d_dx, dx0, n * 4);
    dit_ops_cuda.silu_fwd(d_out, d_x, n);
    check(t, "silu_fwd", shape, "out", d_out, out, n, 1e-5);
    dit_ops_cuda.silu_bwd(d_dx, d_x, d_dout, n);
    check(t, "silu_bwd", shape, "dx", d_dx, dx2, n, 1e-5);
    void *h[] = {x, y, dout, dx0, out, dx, sum, dx2};
    void *d[] = {d_x, d_y, d_dout, d_out, d_dx};
    free_all(8, h);
    cuda_free_all(5, d);
}

// ---------------------------------------------------------------------------------------
// attention

// key_valid (B, T): random with about 1 in 5 missing; sample 0 misses its whole prefix
// (its prefix queries have no key) and, when B > 2, sample B-1 misses every key.
static uint8_t *make_mask(T *t, int B, int Tk, int P) {
    uint8_t *m = mm_malloc((size_t)B * Tk);
    for (int i = 0; i < B * Tk; i++) m[i] = mm_rng_uniform(&t->rng) >= 0.2f;
    for (int j = 0; j < P && j < Tk; j++) m[j] = 0;
    if (B > 2)
        for (int j = 0; j < Tk; j++) m[(size_t)(B - 1) * Tk + j] = 0;
    return m;
}

static void test_attention(T *t, int B, int Tn, int P, int NH, int HD) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d T%d P%d NH%d HD%d", B, Tn, P, NH, HD);
    const int C = NH * HD;
    size_t nqkv = (size_t)B * Tn * 3 * C, no = (size_t)B * Tn * C, na = (size_t)B * NH * Tn * Tn;
    float *qkv = hrand(t, nqkv, 2), *dout = hrand(t, no, 1), *dqkv0 = hrand(t, nqkv, 1);
    uint8_t *kv = make_mask(t, B, Tn, P);
    float *out = mm_malloc(no * 4), *att = mm_malloc((na ? na : 1) * 4), *dqkv = hcopy(dqkv0, nqkv);
    model_ops_cpu.attention_fwd(out, att, qkv, kv, B, Tn, P, NH, HD);
    model_ops_cpu.attention_bwd(dqkv, dout, qkv, att, B, Tn, P, NH, HD);
    float *d_qkv = dev(t, qkv, nqkv * 4), *d_dout = dev(t, dout, no * 4),
          *d_out = cuda_alloc(t->c, no * 4), *d_att = cuda_alloc(t->c, na * 4),
          *d_dqkv = dev(t, dqkv0, nqkv * 4), *d_dqkv2 = dev(t, dqkv0, nqkv * 4);
    uint8_t *d_kv = dev(t, kv, (size_t)B * Tn);
    model_ops_cuda.attention_fwd(d_out, d_att, d_qkv, d_kv, B, Tn, P, NH, HD);
    check(t, "attention_fwd", shape, "out", d_out, out, no, 1e-5);
    check(t, "attention_fwd", shape, "att", d_att, att, na, 1e-5);
    // backward from the CPU's probabilities, so that only the backward is compared
    cuda_upload(t->c, d_att, att, na * 4);
    model_ops_cuda.attention_bwd(d_dqkv, d_dout, d_qkv, d_att, B, Tn, P, NH, HD);
    check(t, "attention_bwd", shape, "dqkv", d_dqkv, dqkv, nqkv, 1e-5);
    model_ops_cuda.attention_bwd(d_dqkv2, d_dout, d_qkv, d_att, B, Tn, P, NH, HD);
    check_same(t, "attention_bwd", shape, "dqkv rerun", d_dqkv, d_dqkv2, nqkv);
    void *h[] = {qkv, dout, dqkv0, kv, out, att, dqkv};
    void *d[] = {d_qkv, d_dout, d_out, d_att, d_dqkv, d_dqkv2, d_kv};
    free_all(7, h);
    cuda_free_all(7, d);
}

static void test_xattn(T *t, int B, int Tq, int Tk, int NH, int HD) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d Tq%d Tk%d NH%d HD%d", B, Tq, Tk, NH, HD);
    const int C = NH * HD;
    size_t nq = (size_t)B * Tq * C, nkv = (size_t)B * Tk * 2 * C, na = (size_t)B * NH * Tq * Tk;
    float *q = hrand(t, nq, 2), *kvv = hrand(t, nkv, 2), *dout = hrand(t, nq, 1),
          *dq0 = hrand(t, nq, 1), *dkv0 = hrand(t, nkv, 1);
    uint8_t *mask = make_mask(t, B, Tk, 0);
    float *out = mm_malloc(nq * 4), *att = mm_malloc((na ? na : 1) * 4), *dq = hcopy(dq0, nq),
          *dkv = hcopy(dkv0, nkv);
    dit_ops_cpu.xattn_fwd(out, att, q, kvv, mask, B, Tq, Tk, NH, HD);
    dit_ops_cpu.xattn_bwd(dq, dkv, dout, q, kvv, att, B, Tq, Tk, NH, HD);
    float *d_q = dev(t, q, nq * 4), *d_kvv = dev(t, kvv, nkv * 4), *d_dout = dev(t, dout, nq * 4),
          *d_out = cuda_alloc(t->c, nq * 4), *d_att = cuda_alloc(t->c, na * 4),
          *d_dq = dev(t, dq0, nq * 4), *d_dkv = dev(t, dkv0, nkv * 4);
    uint8_t *d_mask = dev(t, mask, (size_t)B * Tk);
    dit_ops_cuda.xattn_fwd(d_out, d_att, d_q, d_kvv, d_mask, B, Tq, Tk, NH, HD);
    check(t, "xattn_fwd", shape, "out", d_out, out, nq, 1e-5);
    check(t, "xattn_fwd", shape, "att", d_att, att, na, 1e-5);
    cuda_upload(t->c, d_att, att, na * 4);
    dit_ops_cuda.xattn_bwd(d_dq, d_dkv, d_dout, d_q, d_kvv, d_att, B, Tq, Tk, NH, HD);
    check(t, "xattn_bwd", shape, "dq", d_dq, dq, nq, 1e-5);
    check(t, "xattn_bwd", shape, "dkv", d_dkv, dkv, nkv, 1e-5);
    void *h[] = {q, kvv, dout, dq0, dkv0, mask, out, att, dq, dkv};
    void *d[] = {d_q, d_kvv, d_dout, d_out, d_att, d_dq, d_dkv, d_mask};
    free_all(10, h);
    cuda_free_all(8, d);
}

// ---------------------------------------------------------------------------------------
// cross-entropy

static void test_xent(T *t, int N, int V) {
    char shape[64];
    snprintf(shape, sizeof(shape), "N%d V%d", N, V);
    size_t n = (size_t)N * V;
    float *logits = hrand(t, n, 4), *dloss = hrand(t, N, 1);
    int32_t *tg = mm_malloc(N * sizeof(int32_t));
    for (int i = 0; i < N; i++)
        tg[i] = mm_rng_uniform(&t->rng) < 0.25f ? -1 : (int32_t)mm_rng_below(&t->rng, V);
    tg[0] = -1;  // always one ignored row
    float *loss = mm_malloc(N * 4), *probs = mm_malloc(n * 4), *dl = mm_malloc(n * 4);
    model_ops_cpu.xent_fwd(loss, probs, logits, tg, N, V);
    model_ops_cpu.xent_bwd(dl, probs, tg, dloss, N, V);
    float *junk = hrand(t, n, 7);  // dlogits is overwritten, ignored rows included
    float *d_logits = dev(t, logits, n * 4), *d_dloss = dev(t, dloss, N * 4),
          *d_loss = cuda_alloc(t->c, N * 4), *d_probs = cuda_alloc(t->c, n * 4),
          *d_dl = dev(t, junk, n * 4);
    int32_t *d_tg = dev(t, tg, N * sizeof(int32_t));
    model_ops_cuda.xent_fwd(d_loss, d_probs, d_logits, d_tg, N, V);
    check(t, "xent_fwd", shape, "loss", d_loss, loss, N, 1e-5);
    check(t, "xent_fwd", shape, "probs", d_probs, probs, n, 1e-5);
    cuda_upload(t->c, d_probs, probs, n * 4);
    model_ops_cuda.xent_bwd(d_dl, d_probs, d_tg, d_dloss, N, V);
    check(t, "xent_bwd", shape, "dlogits", d_dl, dl, n, 1e-5);
    void *h[] = {logits, dloss, tg, loss, probs, dl, junk};
    void *d[] = {d_logits, d_dloss, d_loss, d_probs, d_dl, d_tg};
    free_all(7, h);
    cuda_free_all(6, d);
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
    dit_ops_cpu.modulate_fwd(out, x, mod + o_shift, mod + o_scale, sc, B, N, C);
    dit_ops_cpu.modulate_bwd(dx, dmod + o_shift, dmod + o_scale, dout, x, mod + o_scale, sc, B, N,
                             C);
    dit_ops_cpu.gated_add_fwd(xg, y, mod + o_gate, sc, B, N, C);
    dit_ops_cpu.gated_add_bwd(dy, dmod + o_gate, dout, y, mod + o_gate, sc, B, N, C);
    float *d_x = dev(t, x, n * 4), *d_y = dev(t, y, n * 4), *d_mod = dev(t, mod, nm * 4),
          *d_dout = dev(t, dout, n * 4), *d_out = cuda_alloc(t->c, n * 4),
          *d_dx = dev(t, dx0, n * 4), *d_dmod = dev(t, dmod0, nm * 4), *d_dy = dev(t, dx0, n * 4),
          *e_dmod = dev(t, dmod0, nm * 4), *e_dx = dev(t, dx0, n * 4);
    dit_ops_cuda.modulate_fwd(d_out, d_x, d_mod + o_shift, d_mod + o_scale, sc, B, N, C);
    check(t, "modulate_fwd", shape, "out", d_out, out, n, 1e-5);
    dit_ops_cuda.modulate_bwd(d_dx, d_dmod + o_shift, d_dmod + o_scale, d_dout, d_x,
                              d_mod + o_scale, sc, B, N, C);
    check(t, "modulate_bwd", shape, "dx", d_dx, dx, n, 1e-5);
    dit_ops_cuda.gated_add_fwd(d_x, d_y, d_mod + o_gate, sc, B, N, C);
    check(t, "gated_add_fwd", shape, "x", d_x, xg, n, 1e-5);
    dit_ops_cuda.gated_add_bwd(d_dy, d_dmod + o_gate, d_dout, d_y, d_mod + o_gate, sc, B, N, C);
    check(t, "gated_add_bwd", shape, "dy", d_dy, dy, n, 1e-5);
    // the whole packed buffer: shift, scale and gate gradients, and untouched columns
    check(t, "mod+gate bwd", shape, "dmod", d_dmod, dmod, nm, 1e-5);
    // determinism of the per-sample reductions
    cuda_upload(t->c, d_x, x, n * 4);
    cuda_upload(t->c, d_dmod, dmod0, nm * 4);
    cuda_upload(t->c, d_dx, dx0, n * 4);
    dit_ops_cuda.modulate_bwd(d_dx, d_dmod + o_shift, d_dmod + o_scale, d_dout, d_x,
                              d_mod + o_scale, sc, B, N, C);
    dit_ops_cuda.modulate_bwd(e_dx, e_dmod + o_shift, e_dmod + o_scale, d_dout, d_x,
                              d_mod + o_scale, sc, B, N, C);
    check_same(t, "modulate_bwd", shape, "dmod rerun", d_dmod, e_dmod, nm);
    void *h[] = {x, y, mod, dout, dx0, dmod0, out, dx, dmod, xg, dy};
    void *d[] = {d_x, d_y, d_mod, d_dout, d_out, d_dx, d_dmod, d_dy, e_dmod, e_dx};
    free_all(11, h);
    cuda_free_all(10, d);
}

static void test_mse(T *t, int B, size_t n) {
    char shape[64];
    snprintf(shape, sizeof(shape), "B%d n%zu", B, n);
    size_t tot = (size_t)B * n;
    float *pred = hrand(t, tot, 2), *tgt = hrand(t, tot, 2), *dloss = hrand(t, B, 1);
    float *loss = mm_malloc(B * 4), *dp = mm_malloc(tot * 4), *junk = hrand(t, tot, 5);
    dit_ops_cpu.mse_fwd(loss, pred, tgt, B, n);
    dit_ops_cpu.mse_bwd(dp, pred, tgt, dloss, B, n);
    float *d_pred = dev(t, pred, tot * 4), *d_tgt = dev(t, tgt, tot * 4),
          *d_dloss = dev(t, dloss, B * 4), *d_loss = cuda_alloc(t->c, B * 4),
          *d_loss2 = cuda_alloc(t->c, B * 4), *d_dp = dev(t, junk, tot * 4);
    dit_ops_cuda.mse_fwd(d_loss, d_pred, d_tgt, B, n);
    check(t, "mse_fwd", shape, "loss", d_loss, loss, B, 1e-5);
    dit_ops_cuda.mse_fwd(d_loss2, d_pred, d_tgt, B, n);
    check_same(t, "mse_fwd", shape, "loss rerun", d_loss, d_loss2, B);
    dit_ops_cuda.mse_bwd(d_dp, d_pred, d_tgt, d_dloss, B, n);
    check(t, "mse_bwd", shape, "dpred", d_dp, dp, tot, 1e-5);
    void *h[] = {pred, tgt, dloss, loss, dp, junk};
    void *d[] = {d_pred, d_tgt, d_dloss, d_loss, d_loss2, d_dp};
    free_all(6, h);
    cuda_free_all(6, d);
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
        segs[s] = (cuda_seg){o.seg[s].offset, o.seg[s].size, o.seg[s].decay, o.seg[s].lr_mult,
                             o.seg[s].sharded};
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
    T t = {.c = NULL, .tc = {0, 0}};
    mm_rng_init(&t.rng, 12345, 0);
    cuda_ctx ctx;
    mm_err err = {{0}};
    if (cuda_ctx_init(&ctx, 0, CUDA_FP32, &err) != 0) {
        TEST_CHECK(&t.tc, 0, "no CUDA device: %s", err.msg);
        return test_finish(&t.tc);
    }
    t.c = &ctx;
    printf("device: %s (%d SMs, compute %d.%d, %.1f GiB)\n", ctx.device_name, ctx.sm_count,
           ctx.cc_major, ctx.cc_minor, (double)ctx.mem_bytes / (1 << 30));
    printf("%-16s %-30s %-10s %11s %8s\n", "op", "shape", "tensor", "rel.err", "tol");

    // matmul: fp32 and bf16, with and without bias / dinp, awkward sizes
    static const int mm[][3] = {{1, 1, 1}, {7, 13, 5}, {37, 45, 77}, {64, 96, 160}, {130, 33, 257}};
    for (size_t i = 0; i < sizeof(mm) / sizeof(mm[0]); i++) {
        test_matmul(&t, mm[i][0], mm[i][1], mm[i][2], 1, 1, CUDA_FP32);
        test_matmul(&t, mm[i][0], mm[i][1], mm[i][2], (int)(i % 2), (int)(i % 3 != 1), CUDA_FP32);
    }
    for (size_t i = 1; i < sizeof(mm) / sizeof(mm[0]); i++)
        test_matmul(&t, mm[i][0], mm[i][1], mm[i][2], 1, (int)(i != 2), CUDA_BF16);

    static const int ln[][2] = {{1, 1}, {5, 7}, {33, 100}, {70, 768}, {300, 33}};
    for (size_t i = 0; i < sizeof(ln) / sizeof(ln[0]); i++) test_layernorm(&t, ln[i][0], ln[i][1]);

    test_elementwise(&t, 1);
    test_elementwise(&t, 1000);
    test_elementwise(&t, 70003);

    // attention: T = 1, all-causal, all-prefix, mixed; HD not a multiple of 32
    static const int at[][5] = {{1, 1, 0, 1, 4}, {3, 1, 1, 2, 8},   {3, 5, 2, 1, 3},
                                {3, 37, 10, 2, 16}, {2, 64, 64, 4, 32}, {3, 70, 0, 3, 24}};
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++)
        test_attention(&t, at[i][0], at[i][1], at[i][2], at[i][3], at[i][4]);

    static const int xe[][2] = {{1, 1}, {5, 3}, {37, 259}, {64, 1000}};
    for (size_t i = 0; i < sizeof(xe) / sizeof(xe[0]); i++) test_xent(&t, xe[i][0], xe[i][1]);

    static const int md[][4] = {{1, 1, 1, 3}, {3, 17, 40, 240}, {2, 1, 130, 390}, {1, 64, 33, 99}};
    for (size_t i = 0; i < sizeof(md) / sizeof(md[0]); i++)
        test_modulate(&t, md[i][0], md[i][1], md[i][2], md[i][3]);

    static const int xa[][5] = {{1, 1, 1, 1, 4}, {2, 17, 5, 2, 8}, {3, 64, 37, 3, 16}};
    for (size_t i = 0; i < sizeof(xa) / sizeof(xa[0]); i++)
        test_xattn(&t, xa[i][0], xa[i][1], xa[i][2], xa[i][3], xa[i][4]);

    test_mse(&t, 1, 1);
    test_mse(&t, 3, 100);
    test_mse(&t, 2, 10000);
    test_mse(&t, 4, 3 * 32 * 32);

    test_optim(&t, 0, 0);
    test_optim(&t, 3, 500);  // a ZeRO-1 shard cutting through tensors

    cuda_ctx_free(&ctx);
    return test_finish(&t.tc);
}
