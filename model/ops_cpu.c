// ops_cpu.c: the CPU backend of the ops table (model.h). It exists so that the transformer
// above it is written once against an interface, and so that the CPU path is fast enough to
// be a real target, not only a reference: every matmul is ONE BLAS gemm over all rows,
// attention runs one small gemm per (batch, head) inside an OpenMP loop (OpenBLAS then runs
// single-threaded per call), and everything else is a single OpenMP region per op with
// vectorizable inner loops.
//
// Determinism: the same inputs give bit-identical outputs run after run. Loops use static
// schedules, there are no atomics, and every cross-row reduction (bias gradients, layernorm
// gain/bias gradients) sums fixed-size blocks in a fixed order, so those results do not even
// depend on the thread count. (BLAS gemm splits M/N, not K, across threads, so its results
// are deterministic too.)
//
// Precision: mm_real is float, or double under -DMM_F64 (gradient checks). The float build
// uses a vectorizable exp (Cephes-style, ~1 ulp) because libm's expf is not vectorized
// without -ffast-math and exp dominates softmax and GELU; the double build uses libm's exp so
// that finite differences in float64 are not swamped by approximation noise.
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"

#ifdef MM_F64
#define GEMM cblas_dgemm
#define R_SQRT sqrt
#define R_LOG log
#define R_EXP exp
#else
#define GEMM cblas_sgemm
#define R_SQRT sqrtf
#define R_LOG logf
#define R_EXP fast_expf

// exp(x) for float without libm, so that loops calling it vectorize. Range reduction
// x = n ln2 + r with n = round(x / ln2) done by the 1.5*2^23 trick (the rounded integer sits
// in the low mantissa bits), degree-5 polynomial for e^r on |r| <= ln2/2, scale by 2^n
// built in the exponent field. Inputs are clamped to [-87, 88] (no inf/denormal results).
static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float magic = 12582912.0f;  // 1.5 * 2^23
    float t = x * 1.44269504088896341f + magic;
    float n = t - magic;
    uint32_t tb;
    memcpy(&tb, &t, 4);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // tb - bits(magic) is n as a two's-complement integer
    uint32_t eb = (tb - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &eb, 4);
    return p * scale;
}
#endif

// Rows per partial sum in cross-row reductions: fixed, so results do not depend on threads.
#define ROW_BLOCK 32
// Columns per task in column reductions (bias gradients).
#define COL_BLOCK 64

// ---------------------------------------------------------------------------------------
// matmul

// out (N, OC) = inp (N, IC) @ w^T (OC, IC) + bias (OC).
// The bias is written first and the gemm accumulates on it (beta = 1): OpenBLAS would
// otherwise spend a pass zeroing out for beta = 0, so the bias comes for free.
static void matmul_fwd(mm_real *out, const mm_real *inp, const mm_real *w, const mm_real *bias,
                       int N, int IC, int OC) {
    if (N <= 0) return;
    mm_real beta = 0;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < N; r++)
            memcpy(out + (size_t)r * OC, bias, (size_t)OC * sizeof(mm_real));
        beta = 1;
    }
    GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, IC, 1, inp, IC, w, IC, beta, out, OC);
}

// dst (C) += column sums of src (N, C), each column summed over rows in order.
static void colsum_acc(mm_real *dst, const mm_real *src, int N, int C) {
    int nblk = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * COL_BLOCK;
        int n = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        mm_real acc[COL_BLOCK] = {0};
        for (int r = 0; r < N; r++) {
            const mm_real *row = src + (size_t)r * C + c0;
#pragma omp simd
            for (int c = 0; c < n; c++) acc[c] += row[c];
        }
        for (int c = 0; c < n; c++) dst[c0 + c] += acc[c];
    }
}

// dinp (N, IC) += dout (N, OC) @ w (OC, IC); dw (OC, IC) += dout^T @ inp; dbias (OC) +=
// column sums of dout. dinp and dbias may be NULL.
static void matmul_bwd(mm_real *dinp, mm_real *dw, mm_real *dbias, const mm_real *dout,
                       const mm_real *inp, const mm_real *w, int N, int IC, int OC) {
    if (N <= 0) return;
    if (dinp)
        GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, OC, 1, dout, OC, w, IC, 1, dinp, IC);
    GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, OC, IC, N, 1, dout, OC, inp, IC, 1, dw, IC);
    if (dbias) colsum_acc(dbias, dout, N, OC);
}

// ---------------------------------------------------------------------------------------
// layernorm (eps 1e-5, biased variance, as PyTorch)

static void layernorm_fwd(mm_real *out, mm_real *mean, mm_real *rstd, const mm_real *x,
                          const mm_real *g, const mm_real *b, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        const mm_real *xr = x + (size_t)r * C;
        mm_real *o = out + (size_t)r * C;
        mm_real s = 0;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++) s += xr[c];
        mm_real m = s / C;
        mm_real v = 0;  // two passes: no cancellation when |mean| >> std
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) v += (xr[c] - m) * (xr[c] - m);
        mm_real rs = 1 / R_SQRT(v / C + (mm_real)1e-5);
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = (xr[c] - m) * rs * g[c] + b[c];
        mean[r] = m;
        rstd[r] = rs;
    }
}

// dx (N, C) += ; dg, db (C) += . One pass over the rows computes dx and per-block partial
// dg/db; a second loop adds the blocks in order.
static void layernorm_bwd(mm_real *dx, mm_real *dg, mm_real *db, const mm_real *dout,
                          const mm_real *x, const mm_real *g, const mm_real *mean,
                          const mm_real *rstd, int N, int C) {
    if (N <= 0) return;
    int nblk = (N + ROW_BLOCK - 1) / ROW_BLOCK;
    mm_real *part = mm_malloc((size_t)nblk * 2 * C * sizeof(mm_real));  // (nblk, 2, C)
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int blk = 0; blk < nblk; blk++) {
            mm_real *pg = part + (size_t)blk * 2 * C, *pb = pg + C;
            memset(pg, 0, 2 * (size_t)C * sizeof(mm_real));
            int r1 = (blk + 1) * ROW_BLOCK < N ? (blk + 1) * ROW_BLOCK : N;
            for (int r = blk * ROW_BLOCK; r < r1; r++) {
                const mm_real *xr = x + (size_t)r * C, *dr = dout + (size_t)r * C;
                mm_real *dxr = dx + (size_t)r * C;
                mm_real m = mean[r], rs = rstd[r];
                mm_real s1 = 0, s2 = 0;  // mean(dout*g), mean(dout*g*xhat)
#pragma omp simd reduction(+ : s1, s2)
                for (int c = 0; c < C; c++) {
                    mm_real dn = dr[c] * g[c];
                    s1 += dn;
                    s2 += dn * (xr[c] - m) * rs;
                }
                s1 /= C;
                s2 /= C;
#pragma omp simd
                for (int c = 0; c < C; c++) {
                    mm_real xh = (xr[c] - m) * rs;
                    pg[c] += dr[c] * xh;
                    pb[c] += dr[c];
                    dxr[c] += (dr[c] * g[c] - s1 - xh * s2) * rs;
                }
            }
        }
#pragma omp for schedule(static)
        for (int c = 0; c < C; c++) {
            mm_real sg = 0, sb = 0;
            for (int blk = 0; blk < nblk; blk++) {
                sg += part[(size_t)blk * 2 * C + c];
                sb += part[(size_t)blk * 2 * C + C + c];
            }
            dg[c] += sg;
            db[c] += sb;
        }
    }
    free(part);
}

// ---------------------------------------------------------------------------------------
// GELU, tanh approximation, written as x * sigmoid(2u) = 0.5 x (1 + tanh u),
// u = sqrt(2/pi) (x + 0.044715 x^3): one exp, no tanh, so the float loop vectorizes.
#define GELU_K ((mm_real)0.7978845608028654)
#define GELU_A ((mm_real)0.044715)

static void gelu_fwd(mm_real *out, const mm_real *x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        mm_real v = x[i];
        mm_real u = GELU_K * (v + GELU_A * v * v * v);
        out[i] = v / (1 + R_EXP(-2 * u));
    }
}

static void gelu_bwd(mm_real *dx, const mm_real *x, const mm_real *dout, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        mm_real v = x[i];
        mm_real u = GELU_K * (v + GELU_A * v * v * v);
        mm_real s = 1 / (1 + R_EXP(-2 * u));
        mm_real du = GELU_K * (1 + 3 * GELU_A * v * v);
        dx[i] += (s + 2 * v * s * (1 - s) * du) * dout[i];
    }
}

// out = a + b; out may alias a or b (the transformer adds residuals in place).
static void add(mm_real *out, const mm_real *a, const mm_real *b, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// ---------------------------------------------------------------------------------------
// attention
//
// Per (b, h) the score matrix is computed in two gemms: prefix queries (rows < P) only ever
// see prefix keys, so they multiply (P, HD) x (HD, P); text queries (rows >= P) see keys up
// to themselves, computed as (T-P, HD) x (HD, T) (the upper triangle is wasted, masked to 0).
// A query with no allowed key (a prefix token whose whole prefix is missing) gets an all-zero
// probability row, hence a zero output and zero gradient.

// Number of leading keys query i may look at (then filtered by key_valid).
static inline int key_limit(int i, int P) {
    return i < P ? P : i + 1;
}

// In-place masked softmax of one score row a (T): keys j < lim with kv[j] != 0.
static inline void softmax_row(mm_real *a, const uint8_t *kv, int lim, int T) {
    mm_real mx = -INFINITY;
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < lim; j++) mx = kv[j] && a[j] > mx ? a[j] : mx;
    if (mx == -INFINITY) {
        memset(a, 0, (size_t)T * sizeof(mm_real));
        return;
    }
    mm_real s = 0;
#pragma omp simd reduction(+ : s)
    for (int j = 0; j < lim; j++) {
        mm_real e = kv[j] ? R_EXP(a[j] - mx) : 0;
        a[j] = e;
        s += e;
    }
    mm_real inv = 1 / s;
#pragma omp simd
    for (int j = 0; j < lim; j++) a[j] *= inv;
    if (lim < T) memset(a + lim, 0, (size_t)(T - lim) * sizeof(mm_real));
}

// out (B, T, NH, HD), att (B, NH, T, T), qkv (B, T, 3, NH, HD), key_valid (B, T)
static void attention_fwd(mm_real *out, mm_real *att, const mm_real *qkv, const uint8_t *key_valid,
                          int B, int T, int P, int NH, int HD) {
    MM_CHECK(P >= 0 && P <= T, "attention: prefix %d outside [0, T=%d]", P, T);
    const int C = NH * HD, C3 = 3 * C, TP = T - P;
    const mm_real scale = 1 / R_SQRT((mm_real)HD);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        const mm_real *q = qkv + (size_t)b * T * C3 + (size_t)h * HD;
        const mm_real *k = q + C, *v = q + 2 * C;
        mm_real *a = att + (size_t)bh * T * T;
        mm_real *o = out + (size_t)b * T * C + (size_t)h * HD;
        const uint8_t *kv = key_valid + (size_t)b * T;
        if (P > 0)
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, P, P, HD, scale, q, C3, k, C3, 0, a, T);
        if (TP > 0)
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, TP, T, HD, scale, q + (size_t)P * C3, C3,
                 k, C3, 0, a + (size_t)P * T, T);
        for (int i = 0; i < T; i++) softmax_row(a + (size_t)i * T, kv, key_limit(i, P), T);
        if (P > 0)
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, P, HD, P, 1, a, T, v, C3, 0, o, C);
        if (TP > 0)
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, TP, HD, T, 1, a + (size_t)P * T, T, v,
                 C3, 0, o + (size_t)P * C, C);
    }
}

// dqkv (B, T, 3, NH, HD) +=, dout (B, T, NH, HD), qkv, att (B, NH, T, T) as saved.
static void attention_bwd(mm_real *dqkv, const mm_real *dout, const mm_real *qkv,
                          const mm_real *att, int B, int T, int P, int NH, int HD) {
    MM_CHECK(P >= 0 && P <= T, "attention: prefix %d outside [0, T=%d]", P, T);
    const int C = NH * HD, C3 = 3 * C, TP = T - P;
    const mm_real scale = 1 / R_SQRT((mm_real)HD);
#pragma omp parallel
    {
        mm_real *ds = mm_malloc((size_t)T * T * sizeof(mm_real));  // (T, T) this thread's dscores
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            int b = bh / NH, h = bh % NH;
            size_t base = (size_t)b * T * C3 + (size_t)h * HD;
            const mm_real *q = qkv + base, *k = q + C, *v = q + 2 * C;
            mm_real *dq = dqkv + base, *dk = dq + C, *dv = dq + 2 * C;
            const mm_real *a = att + (size_t)bh * T * T;
            const mm_real *dout_bh = dout + (size_t)b * T * C + (size_t)h * HD;
            const mm_real *a_txt = a + (size_t)P * T, *do_txt = dout_bh + (size_t)P * C;
            mm_real *ds_txt = ds + (size_t)P * T;
            // dprobs = dout @ v^T, only where probabilities can be non-zero
            if (P > 0)
                GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, P, P, HD, 1, dout_bh, C, v, C3, 0, ds,
                     T);
            if (TP > 0)
                GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, TP, T, HD, 1, do_txt, C, v, C3, 0,
                     ds_txt, T);
            // dv += att^T @ dout
            if (P > 0)
                GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, P, HD, P, 1, a, T, dout_bh, C, 1, dv,
                     C3);
            if (TP > 0)
                GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, HD, TP, 1, a_txt, T, do_txt, C, 1,
                     dv, C3);
            // softmax backward: dscore = att * (dprobs - sum(att * dprobs)); masked -> 0
            for (int i = 0; i < T; i++) {
                const mm_real *ar = a + (size_t)i * T;
                mm_real *dr = ds + (size_t)i * T;
                int lim = key_limit(i, P), cols = i < P ? P : T;
                mm_real dot = 0;
#pragma omp simd reduction(+ : dot)
                for (int j = 0; j < lim; j++) dot += ar[j] * dr[j];
#pragma omp simd
                for (int j = 0; j < lim; j++) dr[j] = ar[j] * (dr[j] - dot);
                if (lim < cols) memset(dr + lim, 0, (size_t)(cols - lim) * sizeof(mm_real));
            }
            // scores = scale * q k^T: dq += scale * ds @ k ; dk += scale * ds^T @ q
            if (P > 0) {
                GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, P, HD, P, scale, ds, T, k, C3, 1,
                     dq, C3);
                GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, P, HD, P, scale, ds, T, q, C3, 1, dk,
                     C3);
            }
            if (TP > 0) {
                GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, TP, HD, T, scale, ds_txt, T, k, C3,
                     1, dq + (size_t)P * C3, C3);
                GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, T, HD, TP, scale, ds_txt, T,
                     q + (size_t)P * C3, C3, 1, dk, C3);
            }
        }
        free(ds);
    }
}

// ---------------------------------------------------------------------------------------
// softmax cross-entropy

// loss (N), probs (N, V), logits (N, V), targets (N) in [-1, V)
static void xent_fwd(mm_real *loss, mm_real *probs, const mm_real *logits, const int32_t *targets,
                     int N, int V) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const mm_real *l = logits + (size_t)i * V;
        mm_real *p = probs + (size_t)i * V;
        int t = targets[i];
        MM_CHECK(t >= -1 && t < V, "xent: target %d of row %d outside [-1, %d)", t, i, V);
        mm_real mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
        mm_real s = 0;
#pragma omp simd reduction(+ : s)
        for (int j = 0; j < V; j++) {
            p[j] = R_EXP(l[j] - mx);
            s += p[j];
        }
        mm_real inv = 1 / s;
#pragma omp simd
        for (int j = 0; j < V; j++) p[j] *= inv;
        loss[i] = t < 0 ? 0 : R_LOG(s) - (l[t] - mx);
    }
}

// dlogits (N, V) = (probs - onehot(target)) * dloss (N); ignored rows 0. Overwrites.
static void xent_bwd(mm_real *dlogits, const mm_real *probs, const int32_t *targets,
                     const mm_real *dloss, int N, int V) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const mm_real *p = probs + (size_t)i * V;
        mm_real *d = dlogits + (size_t)i * V;
        int t = targets[i];
        if (t < 0) {
            memset(d, 0, (size_t)V * sizeof(mm_real));
            continue;
        }
        mm_real s = dloss[i];
#pragma omp simd
        for (int j = 0; j < V; j++) d[j] = p[j] * s;
        d[t] -= s;
    }
}

const model_ops model_ops_cpu = {
    .name = "cpu",
    .matmul_fwd = matmul_fwd,
    .matmul_bwd = matmul_bwd,
    .layernorm_fwd = layernorm_fwd,
    .layernorm_bwd = layernorm_bwd,
    .gelu_fwd = gelu_fwd,
    .gelu_bwd = gelu_bwd,
    .add = add,
    .attention_fwd = attention_fwd,
    .attention_bwd = attention_bwd,
    .xent_fwd = xent_fwd,
    .xent_bwd = xent_bwd,
};
