// test_ops.c: the float32 CPU ops against naive float64 references written here (plain loops,
// no BLAS, GELU through tanh rather than the backend's sigmoid form), at shapes that are not
// multiples of the blocks and vector widths; then the model as a whole in float32: bit-for-bit
// determinism, masking of missing modalities, the tensor table (names, Megatron slices under
// tp), rejection of bad configs, generation and the FLOP formula.
//
// Agreement is measured normwise per output: max|x - ref| / max|ref|. Float32 accumulation
// over K terms errs by ~K * 6e-8 relative at worst, ~1e-6 for these sizes; tolerance 1e-5.
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "../model/backend.h"
#include "../model/model.h"
#include "test.h"
#include "tp_check.h"

static const double TOL = 1e-5;
static const mm_backend *const be = &mm_backend_cpu;
static const model_ops *const ops = &model_ops_cpu;

static float *randn(size_t n, double std, mm_rng *r) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = (float)(std * mm_rng_normal(r));
    return x;
}

static double *zeros(size_t n) {
    return calloc(n, sizeof(double));
}

static double nerr(const float *x, const double *ref, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)x[i] - ref[i]));
        s = fmax(s, fabs(ref[i]));
    }
    return s > 0 ? d / s : d;
}

static void expect(test_counts *tc, const char *what, double err) {
    printf("  %-34s %.2e\n", what, err);
    TEST_CHECK(tc, err <= TOL, "%s: normwise error %.3e > %.0e", what, err, TOL);
}

// ---------------------------------------------------------------------------------------
// float64 references of the matmul ops: ro (N, OC) = inp w^T + b; rdi (N, IC), rdw (OC, IC)
// and rdb (OC) as the backward leaves buffers pre-filled with 1 (it accumulates).
static void matmul_ref(double *ro, double *rdi, double *rdw, double *rdb, const float *inp,
                       const float *w, const float *b, const float *dout, int N, int IC, int OC) {
    for (size_t i = 0; i < (size_t)N * IC; i++) rdi[i] = 1;
    for (size_t i = 0; i < (size_t)OC * IC; i++) rdw[i] = 1;
    for (int o = 0; o < OC; o++) rdb[o] = 1;
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            const float *x = inp + (size_t)n * IC, *wo = w + (size_t)o * IC;
            double s = b[o];
            const double d = dout[(size_t)n * OC + o];
            for (int i = 0; i < IC; i++) s += (double)x[i] * wo[i];
            ro[(size_t)n * OC + o] = s;
            rdb[o] += d;
            for (int i = 0; i < IC; i++) {
                rdi[(size_t)n * IC + i] += d * wo[i];
                rdw[(size_t)o * IC + i] += d * x[i];
            }
        }
}

static void test_matmul(test_counts *tc, mm_rng *r) {
    const int N = 70, IC = 33, OC = 75;  // OC > one 64-column block of the bias reduction
    float *inp = randn((size_t)N * IC, 1, r), *w = randn((size_t)OC * IC, 1, r),
          *b = randn(OC, 1, r), *dout = randn((size_t)N * OC, 1, r);
    float *out = malloc((size_t)N * OC * sizeof(float));
    double *ro = zeros((size_t)N * OC), *rdi = zeros((size_t)N * IC), *rdw = zeros((size_t)OC * IC),
           *rdb = zeros(OC);
    matmul_ref(ro, rdi, rdw, rdb, inp, w, b, dout, N, IC, OC);
    ops->matmul_fwd(be, out, inp, w, b, N, IC, OC);
    expect(tc, "matmul_fwd", nerr(out, ro, (size_t)N * OC));
    {  // matmul_gelu_fwd: the bits of matmul_fwd, then gelu_fwd
        const size_t no = (size_t)N * OC;
        float *g = malloc(no * 4), *pre = malloc(no * 4), *g2 = malloc(no * 4);
        ops->gelu_fwd(be, g, out, no);
        ops->matmul_gelu_fwd(be, pre, g2, inp, w, b, N, IC, OC);
        const int same = !memcmp(pre, out, no * 4) && !memcmp(g2, g, no * 4);
        expect(tc, "matmul_gelu_fwd = matmul, gelu", same ? 0 : 1);
        // matmul_gelu_bwd (this matmul's input taken as GELU(pre), pre of inp's shape):
        // matmul_bwd into a zeroed dact, gelu_bwd into a zeroed dpre, whatever dpre and dact
        // held before (NaN here); dw and dbias accumulate
        const size_t ni = (size_t)N * IC, nw = (size_t)OC * IC;
        float *p = randn(ni, 1, r), *act = malloc(ni * 4), *ra = calloc(ni, 4),
              *rp = calloc(ni, 4), *dpre = malloc(ni * 4), *dact = malloc(ni * 4);
        float *rw = malloc(nw * 4), *rb = malloc(OC * 4), *gw = malloc(nw * 4), *gb = malloc(OC * 4);
        ops->gelu_fwd(be, act, p, ni);
        for (size_t i = 0; i < nw; i++) rw[i] = gw[i] = 1;
        for (int i = 0; i < OC; i++) rb[i] = gb[i] = 1;
        ops->matmul_bwd(be, ra, rw, rb, dout, act, w, N, IC, OC);
        ops->gelu_bwd(be, rp, p, ra, ni);
        for (size_t i = 0; i < ni; i++) dpre[i] = dact[i] = NAN;
        ops->matmul_gelu_bwd(be, dpre, dact, gw, gb, dout, act, p, w, N, IC, OC);
        const int bsame = !memcmp(dpre, rp, ni * 4) && !memcmp(gw, rw, nw * 4) &&
                          !memcmp(gb, rb, OC * 4);
        expect(tc, "matmul_gelu_bwd = matmul_bwd, gelu_bwd", bsame ? 0 : 1);
        free(g), free(pre), free(g2), free(p), free(act), free(ra), free(rp), free(dpre);
        free(dact), free(rw), free(rb), free(gw), free(gb);
    }
    float *di = malloc((size_t)N * IC * 4), *dw = malloc((size_t)OC * IC * 4), *db = malloc(OC * 4);
    for (size_t i = 0; i < (size_t)N * IC; i++) di[i] = 1;
    for (size_t i = 0; i < (size_t)OC * IC; i++) dw[i] = 1;
    for (int i = 0; i < OC; i++) db[i] = 1;
    ops->matmul_bwd(be, di, dw, db, dout, inp, w, N, IC, OC);
    expect(tc, "matmul_bwd dinp (accumulating)", nerr(di, rdi, (size_t)N * IC));
    expect(tc, "matmul_bwd dw (accumulating)", nerr(dw, rdw, (size_t)OC * IC));
    expect(tc, "matmul_bwd dbias (accumulating)", nerr(db, rdb, OC));
    // no bias: the output is the plain product
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) ro[n * OC + o] -= b[o];
    ops->matmul_fwd(be, out, inp, w, NULL, N, IC, OC);
    expect(tc, "matmul_fwd (no bias)", nerr(out, ro, (size_t)N * OC));
    free(inp), free(w), free(b), free(dout), free(out), free(ro), free(rdi), free(rdw), free(rdb);
    free(di), free(dw), free(db);
}

// The matmul ops split a small gemm among the threads themselves (model/cpu/ops_cpu.c), by
// rows of C or, when C is wider than tall, by columns. At 2 and 3 threads, at shapes large
// enough to split both ways and not multiples of 16: every block in place (against float64
// references, bias and accumulation included) and the same bits run after run. (Not the bits
// of 1 thread: OpenBLAS's AVX2 kernels give a row other bits in a block of rows than inside
// a larger call, as its own threading does.)
static void test_matmul_threads(test_counts *tc, mm_rng *r) {
    static const int shapes[][3] = {{1280, 128, 384}, {300, 520, 100}, {777, 64, 259},
                                    {96, 200, 1000}};
    const int saved = omp_get_max_threads();
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        const int N = shapes[s][0], IC = shapes[s][1], OC = shapes[s][2];
        const size_t ni = (size_t)N * IC, no = (size_t)N * OC, nw = (size_t)OC * IC;
        float *inp = randn(ni, 1, r), *w = randn(nw, 1, r), *b = randn(OC, 1, r),
              *dout = randn(no, 1, r);
        double *ro = zeros(no), *rdi = zeros(ni), *rdw = zeros(nw), *rdb = zeros(OC);
        matmul_ref(ro, rdi, rdw, rdb, inp, w, b, dout, N, IC, OC);
        for (int t = 2; t <= 3; t++) {
            omp_set_num_threads(t);
            openblas_set_num_threads(t);
            float *out[2], *di[2], *dw[2], *db[2];
            for (int k = 0; k < 2; k++) {
                out[k] = malloc(no * 4), di[k] = malloc(ni * 4), dw[k] = malloc(nw * 4);
                db[k] = malloc(OC * 4);
                for (size_t i = 0; i < ni; i++) di[k][i] = 1;
                for (size_t i = 0; i < nw; i++) dw[k][i] = 1;
                for (int i = 0; i < OC; i++) db[k][i] = 1;
                ops->matmul_fwd(be, out[k], inp, w, b, N, IC, OC);
                ops->matmul_bwd(be, di[k], dw[k], db[k], dout, inp, w, N, IC, OC);
            }
            const double err = fmax(fmax(nerr(out[0], ro, no), nerr(di[0], rdi, ni)),
                                    fmax(nerr(dw[0], rdw, nw), nerr(db[0], rdb, OC)));
            const int same = !memcmp(out[1], out[0], no * 4) && !memcmp(di[1], di[0], ni * 4) &&
                             !memcmp(dw[1], dw[0], nw * 4) && !memcmp(db[1], db[0], OC * 4);
            char what[64];
            snprintf(what, sizeof(what), "matmul %dx%dx%d, %d threads", N, IC, OC, t);
            expect(tc, what, err);
            snprintf(what, sizeof(what), "  the same bits twice");
            expect(tc, what, same ? 0 : 1);
            for (int k = 0; k < 2; k++) free(out[k]), free(di[k]), free(dw[k]), free(db[k]);
        }
        free(inp), free(w), free(b), free(dout), free(ro), free(rdi), free(rdw), free(rdb);
    }
    omp_set_num_threads(saved);
    openblas_set_num_threads(saved);
}

static void test_layernorm(test_counts *tc, mm_rng *r) {
    const int N = 101, C = 77;
    size_t n = (size_t)N * C;
    float *x = randn(n, 3, r), *g = randn(C, 1, r), *b = randn(C, 1, r), *dout = randn(n, 1, r);
    for (size_t i = 0; i < n; i++) x[i] += 4;  // large mean relative to the spread
    float *out = malloc(n * 4), *mean = malloc(N * 4), *rstd = malloc(N * 4);
    double *ro = zeros(n), *rdx = zeros(n), *rdg = zeros(C), *rdb = zeros(C);
    for (int i = 0; i < N; i++) {
        const float *xr = x + (size_t)i * C;
        const float *dr = dout + (size_t)i * C;
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += xr[c];
        m /= C;
        for (int c = 0; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
        double rs = 1 / sqrt(v / C + 1e-5);
        double a1 = 0, a2 = 0;
        for (int c = 0; c < C; c++) {
            double xh = (xr[c] - m) * rs;
            ro[(size_t)i * C + c] = xh * g[c] + b[c];
            rdg[c] += dr[c] * xh;
            rdb[c] += dr[c];
            a1 += dr[c] * g[c];
            a2 += dr[c] * g[c] * xh;
        }
        for (int c = 0; c < C; c++) {
            double xh = (xr[c] - m) * rs;
            rdx[(size_t)i * C + c] = (dr[c] * g[c] - a1 / C - xh * a2 / C) * rs;
        }
    }
    ops->layernorm_fwd(be, out, mean, rstd, x, g, b, N, C);
    expect(tc, "layernorm_fwd", nerr(out, ro, n));
    float *dx = calloc(n, 4), *dg = calloc(C, 4), *db = calloc(C, 4);
    ops->layernorm_bwd(be, dx, dg, db, dout, x, g, mean, rstd, N, C);
    expect(tc, "layernorm_bwd dx", nerr(dx, rdx, n));
    expect(tc, "layernorm_bwd dg", nerr(dg, rdg, C));
    expect(tc, "layernorm_bwd db", nerr(db, rdb, C));
    {  // without gain and bias gradients (dg = db = NULL): the same dx bits
        float *dx2 = calloc(n, 4), *dx1 = calloc(n, 4), *dg1 = calloc(C, 4), *db1 = calloc(C, 4);
        ops->layernorm_bwd(be, dx1, dg1, db1, dout, x, g, mean, rstd, N, C);
        ops->layernorm_bwd(be, dx2, NULL, NULL, dout, x, g, mean, rstd, N, C);
        expect(tc, "layernorm_bwd without dg, db: the same dx", memcmp(dx1, dx2, n * 4) ? 1 : 0);
        free(dx1), free(dx2), free(dg1), free(db1);
    }
    // the fused residual add: the same bits as add then layernorm_fwd, also in place (res = a)
    float *y = randn(n, 2, r), *res = malloc(n * 4), *res2 = malloc(n * 4), *out2 = malloc(n * 4);
    float *mean2 = malloc(N * 4), *rstd2 = malloc(N * 4);
    ops->add(be, res, x, y, n);
    ops->layernorm_fwd(be, out, mean, rstd, res, g, b, N, C);
    for (int inplace = 0; inplace < 2; inplace++) {
        if (inplace) memcpy(res2, x, n * 4);
        ops->add_layernorm_fwd(be, res2, out2, mean2, rstd2, inplace ? res2 : x, y, g, b, N, C);
        const int same = !memcmp(res2, res, n * 4) && !memcmp(out2, out, n * 4) &&
                         !memcmp(mean2, mean, N * 4) && !memcmp(rstd2, rstd, N * 4);
        expect(tc, inplace ? "add_layernorm_fwd = add, layernorm (in place)"
                           : "add_layernorm_fwd = add, layernorm", same ? 0 : 1);
        memset(out2, 0, n * 4);
    }
    free(y), free(res), free(res2), free(out2), free(mean2), free(rstd2);
    free(x), free(g), free(b), free(dout), free(out), free(mean), free(rstd);
    free(ro), free(rdx), free(rdg), free(rdb), free(dx), free(dg), free(db);
}

static void test_gelu_add(test_counts *tc, mm_rng *r) {
    const size_t n = 1003;
    float *x = randn(n, 3, r), *dout = randn(n, 1, r), *out = malloc(n * 4), *dx = calloc(n, 4);
    x[0] = -30, x[1] = 30, x[2] = 0;  // saturated ends and the origin
    double *ro = zeros(n), *rd = zeros(n);
    const double k = sqrt(2 / M_PI);
    for (size_t i = 0; i < n; i++) {
        double v = x[i], u = k * (v + 0.044715 * v * v * v), th = tanh(u);
        ro[i] = 0.5 * v * (1 + th);
        rd[i] =
            (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * k * (1 + 3 * 0.044715 * v * v)) * dout[i];
    }
    ops->gelu_fwd(be, out, x, n);
    expect(tc, "gelu_fwd (vs tanh form)", nerr(out, ro, n));
    ops->gelu_bwd(be, dx, x, dout, n);
    expect(tc, "gelu_bwd", nerr(dx, rd, n));
    int finite = 1;
    for (size_t i = 0; i < n; i++) finite &= isfinite(out[i]) && isfinite(dx[i]);
    TEST_CHECK(tc, finite, "gelu produced a non-finite value");
    {  // a NaN input stays NaN both ways (the exp inside clamps its argument: x carries it)
        float xn[2] = {NAN, -NAN}, on[2], dn[2] = {0, 0}, one[2] = {1, 1};
        ops->gelu_fwd(be, on, xn, 2);
        ops->gelu_bwd(be, dn, xn, one, 2);
        TEST_CHECK(tc, isnan(on[0]) && isnan(on[1]) && isnan(dn[0]) && isnan(dn[1]),
                   "gelu of NaN gave %g %g, gradient %g %g", on[0], on[1], dn[0], dn[1]);
    }
    // add, also in place (out aliasing a), as the residual stream uses it
    for (size_t i = 0; i < n; i++) ro[i] = (double)x[i] + dout[i];
    ops->add(be, out, x, dout, n);
    expect(tc, "add", nerr(out, ro, n));
    ops->add(be, x, x, dout, n);
    expect(tc, "add in place", nerr(x, ro, n));
    free(x), free(dout), free(out), free(dx), free(ro), free(rd);
}

// Naive attention: returns out and, when dout is given, accumulates dqkv.
static void ref_attention(double *out, double *att, double *dqkv, const float *qkv,
                          const float *dout, const uint8_t *kv, int B, int T, int P, int NH,
                          int HD) {
    int C = NH * HD;
    double scale = 1 / sqrt(HD);
    double *dp = malloc((size_t)T * sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++) {
                const float *q = qkv + ((size_t)b * T + i) * 3 * C + h * HD;
                double *a = att + (((size_t)b * NH + h) * T + i) * T;
                double mx = -INFINITY, s = 0;
                for (int j = 0; j < T; j++) {
                    int ok = kv[b * T + j] && (j < P || j <= i);
                    a[j] = -INFINITY;
                    if (!ok) continue;
                    const float *k = qkv + ((size_t)b * T + j) * 3 * C + C + h * HD;
                    double d = 0;
                    for (int e = 0; e < HD; e++) d += (double)q[e] * k[e];
                    a[j] = d * scale;
                    mx = fmax(mx, a[j]);
                }
                for (int j = 0; j < T; j++) {
                    a[j] = a[j] == -INFINITY ? 0 : exp(a[j] - mx);
                    s += a[j];
                }
                for (int j = 0; j < T; j++) a[j] = s > 0 ? a[j] / s : 0;
                for (int e = 0; e < HD; e++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        o += a[j] * qkv[((size_t)b * T + j) * 3 * C + 2 * C + h * HD + e];
                    out[((size_t)b * T + i) * C + h * HD + e] = o;
                }
                if (!dout) continue;
                const float *dor = dout + ((size_t)b * T + i) * C + h * HD;
                double dot = 0;
                for (int j = 0; j < T; j++) {
                    const float *v = qkv + ((size_t)b * T + j) * 3 * C + 2 * C + h * HD;
                    double *dv = dqkv + ((size_t)b * T + j) * 3 * C + 2 * C + h * HD;
                    dp[j] = 0;
                    for (int e = 0; e < HD; e++) {
                        dp[j] += (double)dor[e] * v[e];
                        dv[e] += a[j] * dor[e];
                    }
                    dot += a[j] * dp[j];
                }
                double *dq = dqkv + ((size_t)b * T + i) * 3 * C + h * HD;
                for (int j = 0; j < T; j++) {
                    double ds = a[j] * (dp[j] - dot) * scale;
                    const float *k = qkv + ((size_t)b * T + j) * 3 * C + C + h * HD;
                    double *dk = dqkv + ((size_t)b * T + j) * 3 * C + C + h * HD;
                    for (int e = 0; e < HD; e++) {
                        dq[e] += ds * k[e];
                        dk[e] += ds * q[e];
                    }
                }
            }
    free(dp);
}

// T 21 runs the CPU kernels on zero-padded copies of every row; T 32 (a multiple of their
// 16-key tiles) has them read and write the saved probabilities in place; HD 16 fills whole
// 16-column tiles (no padded head columns). dqkv starts nonzero: the backward adds to it.
static void test_attention(test_counts *tc, mm_rng *r, int T, int P, int HD) {
    const int B = 3, NH = 3, C = NH * HD;
    size_t nq = (size_t)B * T * 3 * C, no = (size_t)B * T * C, na = (size_t)B * NH * T * T;
    float *qkv = randn(nq, 1, r), *dout = randn(no, 1, r);
    uint8_t *kv = malloc((size_t)B * T);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            kv[b * T + t] = t >= P || (b == 0) || (b == 1 && t >= 4);  // b1: image part gone,
                                                                       // b2: whole prefix gone
    float *out = malloc(no * 4), *att = malloc(na * 4), *dq = randn(nq, 1, r);
    double *ro = zeros(no), *ra = zeros(na), *rd = zeros(nq);
    for (size_t i = 0; i < nq; i++) rd[i] = dq[i];
    ref_attention(ro, ra, rd, qkv, dout, kv, B, T, P, NH, HD);
    ops->attention_fwd(be, out, att, qkv, kv, B, T, P, NH, HD, NULL);
    expect(tc, "attention_fwd out", nerr(out, ro, no));
    expect(tc, "attention_fwd att (probabilities)", nerr(att, ra, na));
    ops->attention_bwd(be, dq, dout, qkv, out, att, B, T, P, NH, HD, NULL);
    expect(tc, "attention_bwd dqkv", nerr(dq, rd, nq));
    int zero = 1;  // masked entries of att are exactly zero
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++)
                    if (!(kv[b * T + j] && (j < P || j <= i)))
                        zero &= att[(((size_t)b * NH + h) * T + i) * T + j] == 0;
    TEST_CHECK(tc, zero, "attention (T %d): masked probabilities must be exactly 0", T);
    free(qkv), free(dout), free(out), free(att), free(dq), free(ro), free(ra), free(rd), free(kv);
}

static void test_xent(test_counts *tc, mm_rng *r) {
    const int N = 31, V = DATA_VOCAB;
    size_t n = (size_t)N * V;
    float *logits = randn(n, 4, r), *dloss = randn(N, 1, r);
    int32_t tg[31];
    for (int i = 0; i < N; i++) tg[i] = i % 5 == 2 ? -1 : (int32_t)mm_rng_below(r, V);
    float *loss = malloc(N * 4), *probs = malloc(n * 4), *dl = malloc(n * 4);
    double *rl = zeros(N), *rp = zeros(n), *rdl = zeros(n);
    for (int i = 0; i < N; i++) {
        const float *l = logits + (size_t)i * V;
        double mx = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) mx = fmax(mx, l[j]);
        for (int j = 0; j < V; j++) s += exp(l[j] - mx);
        for (int j = 0; j < V; j++) rp[(size_t)i * V + j] = exp(l[j] - mx) / s;
        rl[i] = tg[i] < 0 ? 0 : log(s) + mx - l[tg[i]];
        for (int j = 0; j < V; j++)
            rdl[(size_t)i * V + j] =
                tg[i] < 0 ? 0 : (rp[(size_t)i * V + j] - (j == tg[i])) * dloss[i];
    }
    ops->xent_fwd(be, loss, probs, logits, tg, N, V, 0);
    expect(tc, "xent_fwd loss", nerr(loss, rl, N));
    expect(tc, "xent_fwd probs", nerr(probs, rp, n));
    for (size_t i = 0; i < n; i++) dl[i] = 7;  // xent_bwd overwrites
    ops->xent_bwd(be, dl, logits, probs, tg, dloss, N, V, 0);
    expect(tc, "xent_bwd", nerr(dl, rdl, n));
    // the fused op (in place over a copy of the logits): the bits of the two calls, also with
    // label smoothing
    float *fl = malloc(n * 4), *floss = malloc(N * 4);
    for (int k = 0; k < 2; k++) {
        const float eps = k ? 0.1f : 0;
        ops->xent_fwd(be, loss, probs, logits, tg, N, V, eps);
        ops->xent_bwd(be, dl, logits, probs, tg, dloss, N, V, eps);
        memcpy(fl, logits, n * 4);
        ops->xent_fwd_bwd(be, floss, fl, tg, dloss, N, V, eps);
        TEST_CHECK(tc, !memcmp(floss, loss, N * 4) && !memcmp(fl, dl, n * 4),
                   "xent_fwd_bwd (eps %g): not the bits of xent_fwd + xent_bwd", eps);
    }
    free(fl), free(floss);
    free(logits), free(dloss), free(loss), free(probs), free(dl), free(rl), free(rp), free(rdl);
}

// ---------------------------------------------------------------------------------------
// the convolutional stem's ops: each against what it is for, not against its own loops.
// im2col3 + matmul is a 3x3 convolution (a direct one in float64 here); col2im3 is the
// adjoint of im2col3 (<col2im3(d), x> == <d, im2col3(x)>) and accumulates; max pooling is a
// plain max, and its backward sends each gradient to the first maximum of its window.

static double conv_x(const float *img, int b, int y, int x, int k, int H, int W, int c) {
    if (y < 0 || y >= H || x < 0 || x >= W) return 0;
    return img[(((size_t)b * H + y) * W + x) * c + k];
}

static void test_im2col3(test_counts *tc, mm_rng *r, int B, int H, int W, int c, int OC) {
    char shape[32], what[64];
    const size_t npix = (size_t)B * H * W, ncol = npix * 9 * c;
    float *img = randn(npix * c, 1, r), *w = randn((size_t)OC * 9 * c, 1, r),
          *bias = randn(OC, 1, r), *cols = malloc(ncol * 4), *out = malloc(npix * OC * 4);
    for (size_t i = 0; i < ncol; i++) cols[i] = 1e30f;  // padding must be written, not left
    double *ro = zeros(npix * OC);
    for (int b = 0; b < B; b++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                for (int o = 0; o < OC; o++) {
                    double s = bias[o];
                    for (int ky = -1; ky <= 1; ky++)
                        for (int kx = -1; kx <= 1; kx++)
                            for (int k = 0; k < c; k++)
                                s += (double)w[(((size_t)o * 3 + ky + 1) * 3 + kx + 1) * c + k] *
                                     conv_x(img, b, y + ky, x + kx, k, H, W, c);
                    ro[(((size_t)b * H + y) * W + x) * OC + o] = s;
                }
    ops->im2col3(be, cols, img, B, H, W, c);
    ops->matmul_fwd(be, out, cols, w, bias, (int)npix, 9 * c, OC);
    snprintf(shape, sizeof(shape), "B%d %dx%dx%d", B, H, W, c);
    snprintf(what, sizeof(what), "im2col3+matmul %s", shape);
    expect(tc, what, nerr(out, ro, npix * OC));

    // adjoint: both inner products in float64 of float values; col2im3 adds at most 9
    // terms per pixel in float, so they agree to ~9 * 2^-24 of sum |d| |cols|
    float *d = randn(ncol, 1, r), *dimg = calloc(npix * c, 4);
    ops->col2im3(be, dimg, d, B, H, W, c);
    double lhs = 0, rhs = 0, scale = 0;
    for (size_t i = 0; i < npix * c; i++) lhs += (double)dimg[i] * img[i];
    for (size_t i = 0; i < ncol; i++) {
        rhs += (double)d[i] * cols[i];
        scale += fabs((double)d[i] * cols[i]);
    }
    const double adj = fabs(lhs - rhs) / scale;
    printf("  %-34s %.2e\n", "col2im3 adjoint of im2col3", adj);
    TEST_CHECK(tc, adj <= 1e-6, "col2im3 %s: |<col2im3(d), x> - <d, im2col3(x)>| %.3e > 1e-6",
               shape, adj);
    // accumulation: onto a non-zero buffer the result is that buffer plus the gradient
    float *acc = randn(npix * c, 1, r);
    double *ra = zeros(npix * c);
    for (size_t i = 0; i < npix * c; i++) ra[i] = (double)acc[i] + dimg[i];
    ops->col2im3(be, acc, d, B, H, W, c);
    expect(tc, "col2im3 (accumulating)", nerr(acc, ra, npix * c));
    free(img), free(w), free(bias), free(cols), free(out), free(ro), free(d), free(dimg);
    free(acc), free(ra);
}

static void test_maxpool2(test_counts *tc, mm_rng *r, int B, int H, int W, int c) {
    const int Ho = H / 2, Wo = W / 2;
    const size_t n = (size_t)B * H * W * c, no = (size_t)B * Ho * Wo * c;
    float *x = randn(n, 1, r), *dout = randn(no, 1, r), *out = malloc(no * 4), *dx = randn(n, 1, r);
    double *ro = zeros(no), *rd = zeros(n);
    for (size_t i = 0; i < n; i++) rd[i] = dx[i];
    int ties = 0;
    for (size_t o = 0; o < no; o++) {
        const int k = (int)(o % c), xo = (int)(o / c % Wo), yo = (int)(o / c / Wo % Ho),
                  b = (int)(o / c / Wo / Ho);
        size_t at[4];  // window order (0,0), (0,1), (1,0), (1,1)
        for (int j = 0; j < 4; j++)
            at[j] = (((size_t)b * H + 2 * yo + j / 2) * W + 2 * xo + j % 2) * c + k;
        // ties for the maximum, made on purpose in 4 windows of 5: all four, (0,1) and
        // (1,1), (1,0) and (1,1), (0,0) and (1,1)
        float top = fmaxf(fmaxf(x[at[0]], x[at[1]]), fmaxf(x[at[2]], x[at[3]])) + 1;
        static const int tie[5][4] = {{0}, {1, 1, 1, 1}, {0, 1, 0, 1}, {0, 0, 1, 1}, {1, 0, 0, 1}};
        const int *t = tie[o % 5];
        for (int j = 0; j < 4; j++)
            if (t[j]) x[at[j]] = top;
        ties += o % 5 != 0;
        double m = -INFINITY;
        for (int j = 0; j < 4; j++) m = fmax(m, x[at[j]]);
        ro[o] = m;
        int first = 0;
        while (x[at[first]] != m) first++;
        rd[at[first]] += dout[o];
    }
    ops->maxpool2_fwd(be, out, x, B, H, W, c);
    char what[64];
    snprintf(what, sizeof(what), "maxpool2_fwd B%d %dx%dx%d", B, H, W, c);
    expect(tc, what, nerr(out, ro, no));
    ops->maxpool2_bwd(be, dx, dout, x, B, H, W, c);
    snprintf(what, sizeof(what), "maxpool2_bwd (%d ties, accum.)", ties);
    expect(tc, what, nerr(dx, rd, n));
    free(x), free(dout), free(out), free(dx), free(ro), free(rd);
}

static void test_conv(test_counts *tc, mm_rng *r) {
    // c = 1 and 3 (images), wider maps; H != W, odd W, a single pixel
    static const int sh[][5] = {{2, 5, 7, 1, 4}, {1, 6, 3, 3, 5}, {2, 4, 9, 8, 6}, {1, 1, 1, 2, 3}};
    for (size_t i = 0; i < sizeof(sh) / sizeof(sh[0]); i++)
        test_im2col3(tc, r, sh[i][0], sh[i][1], sh[i][2], sh[i][3], sh[i][4]);
    static const int mp[][4] = {{2, 4, 6, 1}, {1, 8, 2, 3}, {3, 6, 10, 5}};
    for (size_t i = 0; i < sizeof(mp) / sizeof(mp[0]); i++)
        test_maxpool2(tc, r, mp[i][0], mp[i][1], mp[i][2], mp[i][3]);
}

// ---------------------------------------------------------------------------------------
// the model in float32

enum { SB = 4 };

typedef struct {
    float *image, *audio;
    uint8_t hi[SB], ha[SB];
    int32_t *tok, *tg;
    model_input in;
} batch;

static void make_batch(batch *b, const model_config *c, mm_rng *r) {
    size_t ni = (size_t)SB * c->img_h * c->img_w * c->img_c,
           na = (size_t)SB * c->audio_F * c->n_mels;
    b->image = randn(ni, 0.5, r);
    b->audio = randn(na, 1, r);
    b->tok = malloc((size_t)SB * c->text_T * 4);
    b->tg = malloc((size_t)SB * c->text_T * 4);
    for (int s = 0; s < SB; s++) {
        b->hi[s] = s != 1;
        b->ha[s] = s != 2;
        for (int t = 0; t < c->text_T; t++) {
            b->tok[s * c->text_T + t] = t == 0 ? DATA_TOK_BOS : 'a' + (int)mm_rng_below(r, 26);
            b->tg[s * c->text_T + t] = t < c->text_T - 1 - s ? 'a' + (int)mm_rng_below(r, 26) : -1;
        }
    }
    for (int t = 0; t < c->text_T; t++) b->tg[3 * c->text_T + t] = -1;  // sample 3: no target
    b->in = (model_input){SB, b->image, b->hi, b->audio, b->ha, b->tok, b->tg, 0, 0, NULL, 0};
}

static void free_batch(batch *b) {
    free(b->image), free(b->audio), free(b->tok), free(b->tg);
}

static void test_model(test_counts *tc, mm_rng *r) {
    model_config c;
    small_model_config(&c);
    mm_err err = {{0}};
    model *m1, *m2;
    TEST_CHECK(tc, model_create(&m1, &c, &mm_backend_cpu, SB, 7, &err) == 0, "create: %s", err.msg);
    TEST_CHECK(tc, model_create(&m2, &c, &mm_backend_cpu, SB, 7, &err) == 0, "create: %s", err.msg);
    size_t np = model_n_params(m1);
    TEST_CHECK(tc, memcmp(model_params(m1), model_params(m2), np * 4) == 0,
               "same seed must give identical weights");
    batch b;
    make_batch(&b, &c, r);
    int sc = -1;
    double l1 = model_forward(m1, &b.in, &sc);
    TEST_CHECK(tc, sc == 3, "n_scored %d, want 3 (sample 3 has no target)", sc);
    // untrained: each scored sample's mean loss is about log(vocab)
    TEST_CHECK(tc, fabs(l1 / 3 - log(DATA_VOCAB)) < 0.1,
               "initial loss per sample %.4f vs ln V %.4f", l1 / 3, log(DATA_VOCAB));
    model_zero_grad(m1);
    model_backward(m1, &b.in, 1.0f / 3);
    // m2 computes the classifier's gradient in its forward (as training does): the same bits
    b.in.loss_scale = 1.0f / 3;
    double l2 = model_forward(m2, &b.in, NULL);
    model_zero_grad(m2);
    model_backward(m2, &b.in, 1.0f / 3);
    b.in.loss_scale = 0;
    TEST_CHECK(tc, l1 == l2, "forward not bit-identical across runs: %.17g vs %.17g", l1, l2);
    TEST_CHECK(tc, memcmp(model_grads(m1), model_grads(m2), np * 4) == 0,
               "backward not bit-identical across runs (one with the fused classifier)");
    double l3 = model_forward(m1, &b.in, NULL);
    TEST_CHECK(tc, l1 == l3, "forward on the same model changed: %.17g vs %.17g", l1, l3);

    // a missing modality is invisible: changing its content changes nothing
    for (size_t i = 0; i < (size_t)c.img_h * c.img_w * c.img_c; i++)
        b.image[(size_t)1 * c.img_h * c.img_w * c.img_c + i] += 1;
    for (size_t i = 0; i < (size_t)c.audio_F * c.n_mels; i++)
        b.audio[(size_t)2 * c.audio_F * c.n_mels + i] -= 2;
    double l4 = model_forward(m1, &b.in, NULL);
    TEST_CHECK(tc, l4 == l1, "absent image/audio content changed the loss (%.17g vs %.17g)", l4,
               l1);
    // ...and a present one is not
    b.image[0] += 1;
    double l5 = model_forward(m1, &b.in, NULL);
    TEST_CHECK(tc, l5 != l1, "present image content did not change the loss");

    // grads: finite, and zero exactly where nothing flows (token rows never seen)
    const model_tensor *ts = model_tensors(m1);
    int finite = 1;
    for (size_t i = 0; i < np; i++) finite &= isfinite(model_grads(m1)[i]);
    TEST_CHECK(tc, finite, "non-finite gradient");
    for (int k = 0; k < model_n_tensors(m1); k++)
        if (!strcmp(ts[k].name, "text.wte")) {
            const float *gw = model_grads(m1) + ts[k].offset + (size_t)'#' * c.d_model;
            int z = 1;
            for (int i = 0; i < c.d_model; i++) z &= gw[i] == 0;
            TEST_CHECK(tc, z, "unused token '#' got an embedding gradient");
        }

    // generation: terminated, bounded, deterministic
    char g1[SB][16], g2[SB][16];
    model_generate(m1, &b.in, &g1[0][0], 16);
    model_generate(m1, &b.in, &g2[0][0], 16);
    for (int s = 0; s < SB; s++) {
        TEST_CHECK(tc, strlen(g1[s]) <= (size_t)c.text_T - 1, "generated text too long");
        TEST_CHECK(tc, !strcmp(g1[s], g2[s]), "generation not deterministic");
    }
    free_batch(&b);
    model_free(m1);
    model_free(m2);
}

static void test_table(test_counts *tc) {
    model_config c;
    small_model_config(&c);
    mm_err err = {{0}};
    model *m;
    TEST_CHECK(tc, model_create(&m, &c, &mm_backend_cpu, 2, 3, &err) == 0, "create: %s", err.msg);
    const model_tensor *t = model_tensors(m);
    int n = model_n_tensors(m);
    TEST_CHECK(tc, n == 8 + 12 * c.n_layers + 3, "tensor count %d", n);
    size_t off = 0;
    int ok = 1;
    for (int k = 0; k < n; k++) {
        ok &= t[k].offset == off;
        off += t[k].size;
        for (int j = 0; j < k; j++) ok &= strcmp(t[j].name, t[k].name) != 0;
    }
    TEST_CHECK(tc, ok && off == model_n_params(m), "tensors must tile the buffer, names unique");
    int seen = 0;
    for (int k = 0; k < n; k++) {
        const model_tensor *x = &t[k];
        const float *p = model_params(m) + x->offset;
        if (!strcmp(x->name, "blocks.1.attn.qkv.w")) {
            seen++;
            TEST_CHECK(tc,
                       x->ndim == 3 && x->shape[0] == 3 && x->shape[1] == c.d_model &&
                           x->split_dim == 1 && x->decay && x->group == MODEL_GROUP_TRUNK,
                       "qkv.w layout");
        }
        if (!strcmp(x->name, "blocks.0.ln2.g")) {
            seen++;
            TEST_CHECK(tc, p[0] == 1 && p[c.d_model - 1] == 1 && !x->decay,
                       "LN gain init 1, no decay");
        }
        if (!strcmp(x->name, "blocks.0.attn.qkv.b")) {
            seen++;
            TEST_CHECK(tc, p[0] == 0 && !x->decay && x->split_dim == 1, "qkv.b: 0, no decay");
        }
        if (!strcmp(x->name, "blocks.0.mlp.fc.b")) {
            seen++;
            TEST_CHECK(tc, p[0] == 0 && !x->decay && x->split_dim == 0, "bias init 0, no decay");
        }
        if (!strcmp(x->name, "img.pos") || !strcmp(x->name, "audio.proj.w") ||
            !strcmp(x->name, "lm_head.w")) {
            seen++;
            int grp = x->name[0] == 'i'   ? MODEL_GROUP_IMAGE
                      : x->name[0] == 'a' ? MODEL_GROUP_AUDIO
                                          : MODEL_GROUP_TEXT;
            TEST_CHECK(tc, x->group == grp && x->decay, "%s group/decay", x->name);
        }
        if (!strcmp(x->name, "blocks.1.mlp.proj.w") || !strcmp(x->name, "text.wte")) {
            seen++;
            double s = 0;
            for (size_t i = 0; i < x->size; i++) s += (double)p[i] * p[i];
            double sd = sqrt(s / x->size);
            double want = x->name[0] == 'b' ? 0.02 / sqrt(2.0 * c.n_layers) : 0.02;
            TEST_CHECK(tc, fabs(sd / want - 1) < 0.1, "%s init std %.4f, want %.4f", x->name, sd,
                       want);
        }
    }
    TEST_CHECK(tc, seen == 9, "expected tensors missing from the table (%d)", seen);

    // tp = 2: each rank's slices are exactly the matching parts of the tp = 1 tensors
    for (int rank = 0; rank < 2; rank++) {
        model_config c2 = c;
        c2.tp = 2;
        c2.tp_rank = rank;
        model *mr;
        TEST_CHECK(tc, model_create(&mr, &c2, &mm_backend_cpu, 1, 3, &err) == 0, "create tp2: %s",
                   err.msg);
        const model_tensor *tr = model_tensors(mr);
        int bad = 0, split = 0;
        for (int k = 0; k < n; k++) {
            const model_tensor *full = &t[k], *loc = &tr[k];
            const float *pf = model_params(m) + full->offset, *pl = model_params(mr) + loc->offset;
            int sd = loc->split_dim;
            if (sd < 0) {
                bad += loc->size != full->size || memcmp(pf, pl, full->size * 4) != 0;
                continue;
            }
            split++;
            size_t inner = 1, outer = 1;
            for (int i = sd + 1; i < loc->ndim; i++) inner *= (size_t)loc->shape[i];
            for (int i = 0; i < sd; i++) outer *= (size_t)loc->shape[i];
            bad += loc->local[sd] * 2 != full->shape[sd] || loc->start != rank * loc->local[sd];
            for (size_t o = 0; o < outer; o++)
                bad += memcmp(pl + o * loc->local[sd] * inner,
                              pf + (o * full->shape[sd] + loc->start) * inner,
                              loc->local[sd] * inner * 4) != 0;
        }
        TEST_CHECK(tc, bad == 0 && split == 6 * c.n_layers,
                   "tp=2 rank %d: %d slice mismatches, "
                   "%d split tensors",
                   rank, bad, split);
        model_free(mr);
    }

    // FLOPs: the documented formula, recomputed by hand
    int T = 6 + 3 + 9;  // (8/4)*(12/4) patches + 6/2 audio tokens + text
    double C = 32, F = 64, L = 2;
    double want = 6.0 * T * L * (4 * C * C + 2 * C * F) + 6.0 * 9 * DATA_VOCAB * C +
                  4.0 * (6 * 48 + 3 * 10) * C + 12.0 * L * T * T * C;
    TEST_CHECK(tc, model_seq_len(m) == T, "seq len %d, want %d", model_seq_len(m), T);
    TEST_CHECK(tc, fabs(model_flops_per_sample(m) - want) < 1, "flops %.0f, want %.0f",
               model_flops_per_sample(m), want);
    model_free(m);
}

static void test_bad_configs(test_counts *tc) {
    struct {
        const char *what, *expect;  // the case (applied in the switch below), message part
    } cases[] = {
        {"heads", "n_heads"},
        {"patch", "patch"},
        {"zero", "d_model must be > 0"},
        {"audio", "audio_group"},
        {"tp", "tp"},
        {"vocab", "vocab"},
        {"neg", "n_layers must be > 0"},
        {"rank", "tp_rank"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        model_config c;
        small_model_config(&c);
        switch (i) {
            case 0:
                c.n_heads = 5;
                break;
            case 1:
                c.img_w = 10;
                break;
            case 2:
                c.d_model = 0;
                break;
            case 3:
                c.audio_F = 1;
                break;
            case 4:
                c.tp = 3;
                break;
            case 5:
                c.vocab = 100;
                break;
            case 6:
                c.n_layers = -1;
                break;
            case 7:
                c.tp = 2, c.tp_rank = 2;
                break;
        }
        mm_err err = {{0}};
        model *m = (model *)&c;  // must be reset to NULL on failure
        int rc = model_create(&m, &c, &mm_backend_cpu, 2, 1, &err);
        TEST_CHECK(tc, rc == -1 && m == NULL && strstr(err.msg, cases[i].expect),
                   "bad config '%s': rc %d, message \"%s\" should mention \"%s\"", cases[i].what,
                   rc, err.msg, cases[i].expect);
        if (i == 0) printf("  e.g. \"%s\"\n", err.msg);
    }
    model_config c;
    small_model_config(&c);
    mm_err err = {{0}};
    model *m;
    TEST_CHECK(tc,
               model_create(&m, &c, &mm_backend_cpu, 0, 1, &err) == -1 && strstr(err.msg, "max_B"),
               "max_B 0 must be rejected");
}

int main(void) {
    test_counts tc = {0, 0};
    mm_rng r;
    mm_rng_init(&r, 5, 0);
    printf("float32 ops vs float64 naive references (normwise, tolerance %.0e)\n", TOL);
    test_matmul(&tc, &r);
    test_matmul_threads(&tc, &r);
    test_layernorm(&tc, &r);
    test_gelu_add(&tc, &r);
    test_attention(&tc, &r, 21, 9, 8);
    test_attention(&tc, &r, 32, 13, 8);
    test_attention(&tc, &r, 32, 13, 16);
    test_attention(&tc, &r, 21, 9, 12);  // k and v transposed by 8 x 8 blocks and edges
    test_xent(&tc, &r);
    test_conv(&tc, &r);
    printf("model (float32)\n");
    test_model(&tc, &r);
    test_table(&tc);
    test_bad_configs(&tc);
    return test_finish(&tc);
}
