// ops_cpu.c: the CPU backend of the ops table (model.h). It exists so that the transformer
// above it is written once against an interface, and so that the CPU path is fast enough to
// be a real target, not only a reference: every matmul is one BLAS gemm over all rows (a
// small one split among the threads by rows or columns of C, see "matmul"), attention runs
// its small per-(batch, head) products through a register-blocked kernel of its own inside
// an OpenMP loop (see "attention" below), and everything else is a single OpenMP region per
// op with vectorizable inner loops.
//
// Determinism: the same inputs give bit-identical outputs run after run. Loops use static
// schedules, there are no atomics, and every cross-row reduction (bias gradients, layernorm
// gain/bias gradients) sums fixed-size blocks in a fixed order, so those results do not even
// depend on the thread count. (Gemms are split by rows or columns, never K, across threads;
// OpenBLAS's AVX2 kernels still give other last bits at another thread count, see "matmul".)
// Sums within a row use MM_LANE_SUM, so they do not depend on the x86-64 level (cpu_isa.h).
//
// Precision: mm_real is float, or double under -DMM_F64 (gradient checks). The float build
// uses a vectorizable exp (Cephes-style, ~1 ulp) because libm's expf is not vectorized
// without -ffast-math and exp dominates softmax and GELU; the double build uses libm's exp so
// that finite differences in float64 are not swamped by approximation noise.
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../model.h"
#include "../model_drop.h"
#include "../model_internal.h"
#include "cpu_isa.h"

#ifdef MM_F64
#define GEMM cblas_dgemm
#define R_SQRT sqrt
#define R_LOG log
#define R_EXP exp
#define R_EXP_CLAMPED exp
#else
#define GEMM cblas_sgemm
#define R_SQRT sqrtf
#define R_LOG logf
#define R_EXP fast_expf
#define R_EXP_CLAMPED fast_expf_clamped

// exp(x) for float without libm, so that loops calling it vectorize. Range reduction
// x = n ln2 + r with n = round(x / ln2) done by the 1.5*2^23 trick (the rounded integer sits
// in the low mantissa bits), degree-5 polynomial for e^r on |r| <= ln2/2, scale by 2^n
// built in the exponent field. Inputs outside [-87, 88] give the value at that end (no
// inf/denormal results); NaN stays NaN.
//
// That range is a select on the result, not a clamp of x first: GCC turns two NaN-keeping
// clamps into a chain of compares and mask-register ops at the head of the dependency chain
// (GELU's loop, which used fast_expf then, ran 30% slower with them, AVX-512, bench_small's
// shapes), while compares beside the polynomial run in parallel with it. Same bits: inside
// the range the input is the same, outside it the constants are what the clamped polynomial
// gave at -87 and 88.
static inline float fast_expf_core(float x);
static inline float fast_expf(float x) {
    const float e = fast_expf_core(x);
    const float lo = 0x1.666d0ep-126f, hi = 0x1.f1056ep+126f;  // fast_expf_core(-87), (88)
    return x < -87.0f ? lo : x > 88.0f ? hi : e;
}

// the polynomial and scaling alone: right for x in [-87, 88], garbage outside it
static inline float fast_expf_core(float x) {
    const float magic = 12582912.0f;  // 1.5 * 2^23
    float t = fmaf(x, 1.44269504088896341f, magic);
    float n = t - magic;
    uint32_t tb;
    memcpy(&tb, &t, 4);
    // explicit fmaf: -std=c11 disables contraction, and fused steps halve the op count
    float r = fmaf(n, -0.693359375f, x);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p * r, r, r) + 1.0f;
    // tb - bits(magic) is n as a two's-complement integer
    uint32_t eb = (tb - 0x4B400000u + 127u) << 23;
    float scale;
    memcpy(&scale, &eb, 4);
    return p * scale;
}

// fast_expf with x clamped into [-87, 88] first: the same bits for every x but NaN, which
// gives exp(-87), for a caller whose result carries a NaN through another operand (GELU's x
// times the sigmoid). There the clamp is what the loop needs: fast_expf's select on the
// result let GCC push GELU's division into each of its three arms, three vdivps per vector
// instead of one (GELU forward and backward a third faster without them, AVX-512,
// bench_small's shapes; replacing the one left by Newton steps was slower still). These
// clamps, unlike NaN-keeping ones, compile to two compare-and-blends beside the polynomial.
static inline float fast_expf_clamped(float x) {
    x = x > -87.0f ? x : -87.0f;
    x = x < 88.0f ? x : 88.0f;
    return fast_expf_core(x);
}
#endif

// Rows per partial sum in cross-row reductions: fixed, so results do not depend on threads.
#define ROW_BLOCK 32
// Columns per task in column reductions (bias gradients).
#define COL_BLOCK 64

// ---------------------------------------------------------------------------------------
// matmul

// C (M, N) = op(A) op(B) + beta C, alpha 1, row-major, the gemm split among the threads by
// the ops themselves when it is small. OpenBLAS (its OpenMP build) threads one gemm by giving
// each thread a block of C and sharing the packed panels of the other operand, and the
// threads wait on each other's panels, spinning in sched_yield. At a small model's shapes
// (a few hundred rows of C per thread, K 128..1280) the waiting made bench_small's 2-thread
// gemms 1.1-1.4x slower than running each thread's block as a gemm of its own (Emerald
// Rapids; the dW products lost most). So there each thread runs a single-threaded gemm
// (OpenBLAS's OpenMP build runs single-threaded inside a parallel region) on its block of
// rows of C, or of columns when C is wider than tall, packing its own copy of the shared
// operand; nothing waits. Past SPLIT_MAX_MNK per thread the shared packing wins instead
// (bench_large's gemms ran 0.95-0.98x as fast split), and one call is left to OpenBLAS.
//
// Bits: the same at every run for a given thread count, as every split is fixed by the
// shape and the count; never split along K. Not always those of one call: OpenBLAS's
// SkylakeX-family kernels give each element the bits it gets inside one call, its AVX2
// (Haswell) kernels do not (nor does their own threading), so the thread count is like a
// layout there (ARCHITECTURE.md). test_ops checks the blocks against float64 references and
// for determinism at 2 and 3 threads. Two OpenBLAS paths chosen per call by the shape are
// kept out of the blocks: the "small matrix" kernels (below M N K = 100^3), by the smallest
// block, SPLIT_MIN_MNK, and the "direct" sgemm (NN with beta 0), which no caller passes.
#define SPLIT_MIN_MNK ((double)(1 << 21))
#define SPLIT_MAX_MNK ((double)(1 << 26))
#define SPLIT_ALIGN 16  // block edges on whole 16-row (16-column) micro-tiles

// Threads to split a gemm of C (M, N) over K among: 1 keeps one call (OpenBLAS threads it as
// it likes), as for large gemms, when blocks would be small, inside a parallel region, or
// under another BLAS threading.
static int gemm_split_threads(int M, int N, int K) {
    if (omp_in_parallel() || openblas_get_parallel() != 2) return 1;
    const double big = M > N ? M : N, mnk = (double)M * N * K;
    int nt = omp_get_max_threads();
    if (mnk / nt > SPLIT_MAX_MNK) return 1;
    while (nt > 1 && (mnk / nt < SPLIT_MIN_MNK || big / nt < 2 * SPLIT_ALIGN)) nt--;
    return nt;
}

// The block [lo, hi) of n rows (or columns) that thread t of nt computes.
static void split_block(int n, int t, int nt, int *lo, int *hi) {
    *lo = (int)((long)n * t / nt / SPLIT_ALIGN * SPLIT_ALIGN);
    *hi = t == nt - 1 ? n : (int)((long)n * (t + 1) / nt / SPLIT_ALIGN * SPLIT_ALIGN);
}

static void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, const mm_real *A,
                 int lda, const mm_real *B, int ldb, mm_real beta, mm_real *C, int ldc) {
    const int nt = gemm_split_threads(M, N, K);
    if (nt == 1) {
        GEMM(CblasRowMajor, ta, tb, M, N, K, 1, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    const int cols = N > M;
#pragma omp parallel num_threads(nt)
    {
        int lo, hi;
        split_block(cols ? N : M, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
        if (hi > lo && cols) {  // columns of C: columns of op(B)
            const mm_real *b = tb == CblasNoTrans ? B + lo : B + (size_t)lo * ldb;
            GEMM(CblasRowMajor, ta, tb, M, hi - lo, K, 1, A, lda, b, ldb, beta, C + lo, ldc);
        } else if (hi > lo) {  // rows of C: rows of op(A)
            const mm_real *a = ta == CblasNoTrans ? A + (size_t)lo * lda : A + lo;
            GEMM(CblasRowMajor, ta, tb, hi - lo, N, K, 1, a, lda, B, ldb, beta,
                 C + (size_t)lo * ldc, ldc);
        }
    }
}

// out (N, OC) = inp (N, IC) @ w^T (OC, IC) + bias (OC).
// The bias is written first and the gemm accumulates on it (beta = 1): OpenBLAS would
// otherwise spend a pass zeroing out for beta = 0, so the bias comes for free.
static void matmul_fwd(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *inp,
                       const mm_real *w, const mm_real *bias, int N, int IC, int OC) {
    if (N <= 0) return;
    mm_real beta = 0;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int r = 0; r < N; r++)
            memcpy(out + (size_t)r * OC, bias, (size_t)OC * sizeof(mm_real));
        beta = 1;
    }
    gemm(CblasNoTrans, CblasTrans, N, OC, IC, inp, IC, w, IC, beta, out, OC);
}

// dst (C) += column sums of src (N, C), each column summed over rows in order.
CPU_ISA_CLONES
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
static void matmul_bwd(const mm_backend *be MM_UNUSED, mm_real *dinp, mm_real *dw, mm_real *dbias,
                       const mm_real *dout, const mm_real *inp, const mm_real *w, int N, int IC,
                       int OC) {
    if (N <= 0) return;
    if (dinp) gemm(CblasNoTrans, CblasNoTrans, N, IC, OC, dout, OC, w, IC, 1, dinp, IC);
    gemm(CblasTrans, CblasNoTrans, OC, IC, N, dout, OC, inp, IC, 1, dw, IC);
    if (dbias) colsum_acc(dbias, dout, N, OC);
}

// ---------------------------------------------------------------------------------------
// layernorm (eps 1e-5, biased variance, as PyTorch)

// one row: o (C) from xr (C); its mean and rstd
static inline void layernorm_row(mm_real *restrict o, mm_real *mean, mm_real *rstd,
                                 const mm_real *restrict xr, const mm_real *restrict g,
                                 const mm_real *restrict b, int C) {
    mm_real s = 0;
    MM_LANE_SUM(s, C, c, xr[c]);
    mm_real m = s / C;
    mm_real v = 0;  // two passes: no cancellation when |mean| >> std
    MM_LANE_SUM(v, C, c, (xr[c] - m) * (xr[c] - m));
    mm_real rs = 1 / R_SQRT(v / C + (mm_real)1e-5);
#pragma omp simd
    for (int c = 0; c < C; c++) o[c] = (xr[c] - m) * rs * g[c] + b[c];
    *mean = m;
    *rstd = rs;
}

CPU_ISA_CLONES
static void layernorm_fwd(const mm_backend *be MM_UNUSED, mm_real *out, mm_real *mean,
                          mm_real *rstd, const mm_real *x, const mm_real *g, const mm_real *b,
                          int N, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++)
        layernorm_row(out + (size_t)r * C, &mean[r], &rstd[r], x + (size_t)r * C, g, b, C);
}

// The row's sum is written, then normalized while it is still in L1: the separate add made
// a pass over all of res that layernorm_fwd read back from further away.
CPU_ISA_CLONES
static void add_layernorm_fwd(const mm_backend *be MM_UNUSED, mm_real *res, mm_real *out,
                              mm_real *mean, mm_real *rstd, const mm_real *a, const mm_real *b,
                              const mm_real *g, const mm_real *beta, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < N; r++) {
        const size_t o = (size_t)r * C;
        mm_real *rr = res + o;
#pragma omp simd
        for (int c = 0; c < C; c++) rr[c] = a[o + c] + b[o + c];
        layernorm_row(out + o, &mean[r], &rstd[r], rr, g, beta, C);
    }
}

// dx (N, C) += ; dg, db (C) += . One pass over the rows computes dx and per-block partial
// dg/db; a second loop adds the blocks in order.
CPU_ISA_CLONES
static void layernorm_bwd(const mm_backend *be MM_UNUSED, mm_real *dx, mm_real *dg, mm_real *db,
                          const mm_real *dout, const mm_real *x, const mm_real *g,
                          const mm_real *mean, const mm_real *rstd, int N, int C) {
    if (N <= 0) return;
    MM_CHECK(!dg == !db, "layernorm_bwd: dg and db are NULL together or not at all");
    const int gains = dg != NULL;
    int nblk = (N + ROW_BLOCK - 1) / ROW_BLOCK;
    // (nblk, 2, C) partial sums of dg, db
    mm_real *part = gains ? mm_malloc((size_t)nblk * 2 * C * sizeof(mm_real)) : NULL;
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int blk = 0; blk < nblk; blk++) {
            mm_real *pg = gains ? part + (size_t)blk * 2 * C : NULL, *pb = gains ? pg + C : NULL;
            if (gains) memset(pg, 0, 2 * (size_t)C * sizeof(mm_real));
            int r1 = (blk + 1) * ROW_BLOCK < N ? (blk + 1) * ROW_BLOCK : N;
            for (int r = blk * ROW_BLOCK; r < r1; r++) {
                const mm_real *xr = x + (size_t)r * C, *dr = dout + (size_t)r * C;
                mm_real *dxr = dx + (size_t)r * C;
                mm_real m = mean[r], rs = rstd[r];
                mm_real s1 = 0, s2 = 0;  // mean(dout*g), mean(dout*g*xhat)
                MM_LANE_SUM(s1, C, c, dr[c] * g[c]);
                MM_LANE_SUM(s2, C, c, dr[c] * g[c] * (xr[c] - m) * rs);
                s1 /= C;
                s2 /= C;
                if (gains) {
#pragma omp simd
                    for (int c = 0; c < C; c++) {
                        mm_real xh = (xr[c] - m) * rs;
                        pg[c] += dr[c] * xh;
                        pb[c] += dr[c];
                        dxr[c] += (dr[c] * g[c] - s1 - xh * s2) * rs;
                    }
                } else {
#pragma omp simd
                    for (int c = 0; c < C; c++) {
                        mm_real xh = (xr[c] - m) * rs;
                        dxr[c] += (dr[c] * g[c] - s1 - xh * s2) * rs;
                    }
                }
            }
        }
        if (gains) {
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
    }
    free(part);
}

// ---------------------------------------------------------------------------------------
// GELU, tanh approximation, written as x * sigmoid(2u) = 0.5 x (1 + tanh u),
// u = sqrt(2/pi) (x + 0.044715 x^3): one exp, no tanh, so the float loop vectorizes.
#define GELU_K ((mm_real)0.7978845608028654)
#define GELU_A ((mm_real)0.044715)

CPU_ISA_CLONES
static void gelu_fwd(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        mm_real v = x[i];
        mm_real u = GELU_K * (v + GELU_A * v * v * v);
        out[i] = v / (1 + R_EXP_CLAMPED(-2 * u));
    }
}

// GELU'(v) * d
CPU_ISA_INLINE mm_real gelu_grad(mm_real v, mm_real d) {
    mm_real u = GELU_K * (v + GELU_A * v * v * v);
    mm_real s = 1 / (1 + R_EXP_CLAMPED(-2 * u));
    mm_real du = GELU_K * (1 + 3 * GELU_A * v * v);
    return (s + 2 * v * s * (1 - s) * du) * d;
}

CPU_ISA_CLONES
static void gelu_bwd(const mm_backend *be MM_UNUSED, mm_real *dx, const mm_real *x,
                     const mm_real *dout, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) dx[i] += gelu_grad(x[i], dout[i]);
}

// dx = GELU'(x) * dout, written: the fused backward's dpre has nothing to add to. "0 +" keeps
// the bits of gelu_bwd into a zeroed dx (a -0 gradient becomes +0 there too).
CPU_ISA_CLONES
static void gelu_bwd_set(mm_real *dx, const mm_real *x, const mm_real *dout, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) dx[i] = (mm_real)0 + gelu_grad(x[i], dout[i]);
}

// The two calls: on the CPU a fused GELU would save one pass over pre, small next to the GEMM.
static void matmul_gelu_fwd(const mm_backend *be, mm_real *pre, mm_real *out, const mm_real *inp,
                            const mm_real *w, const mm_real *bias, int N, int IC, int OC) {
    matmul_fwd(be, pre, inp, w, bias, N, IC, OC);
    gelu_fwd(be, out, pre, (size_t)N * OC);
}

// The bits of the unfused backward: matmul_bwd into a zeroed dact, gelu_bwd into a zeroed
// dpre, except that dpre is written instead of zeroed and added to (one pass over it, not
// three).
static void matmul_gelu_bwd(const mm_backend *be, mm_real *dpre, mm_real *dact, mm_real *dw,
                            mm_real *dbias, const mm_real *dout, const mm_real *act,
                            const mm_real *pre, const mm_real *w, int N, int IC, int OC) {
    const size_t n = (size_t)N * IC;
    model_cpu_mem_zero(be, dact, n * sizeof(mm_real));  // on every thread, as the gemm's blocks
    matmul_bwd(be, dact, dw, dbias, dout, act, w, N, IC, OC);
    gelu_bwd_set(dpre, pre, dact, n);
}

// out = a + b; out may alias a or b (the transformer adds residuals in place).
CPU_ISA_CLONES
static void add(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *a, const mm_real *b,
                size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// 1 when d drops anything
static inline int drop_on(const model_drop *d) {
    return d && d->thr > 0;
}

// out = x * mask * scale per sample (model.h); out may be x
CPU_ISA_CLONES
static void dropout(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *x,
                    const model_drop *d, int B, size_t n) {
    if (!drop_on(d)) {
        if (out != x) memcpy(out, x, (size_t)B * n * sizeof(mm_real));
        return;
    }
    const size_t chunk = 4096;  // per task: the draws of one sample split over threads
    const size_t per = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (size_t task = 0; task < (size_t)B * per; task++) {
        const size_t b = task / per, e0 = task % per * chunk;
        const size_t e1 = e0 + chunk < n ? e0 + chunk : n;
        const uint64_t k = model_drop_site_key(d->keys[b], d->layer, d->place);
        const mm_real *xb = x + b * n;
        mm_real *ob = out + b * n;
        for (size_t e = e0; e < e1; e++)
            ob[e] = model_drop_keep(k, e, d->thr) ? xb[e] * d->scale : 0;
    }
}

// ---------------------------------------------------------------------------------------
// attention
//
// Heads are small (HD 32..64, T a few hundred at most), so one BLAS call per product and
// (batch, head) costs more in call overhead and packing than in arithmetic. Instead each
// (b, h) gathers its q, k, v once into contiguous zero-padded blocks (k and v also
// transposed where a product needs them so) and runs every product through one register-
// blocked micro-kernel, skipping whole tiles that the mask zeroes:
//   - query rows are processed KR at a time; a row block only computes keys below the largest
//     key_limit of its rows (rounded up to KC): prefix rows stop at P, causal rows at i + 1.
//   - in the transposed products (dv, dk) a block of keys only visits the queries that can
//     see it: all of them for a prefix key, queries >= j for a text key.
// Scale, mask and softmax are fused into the score tile loop; the backward pass reuses the
// saved probabilities and folds the 1/sqrt(HD) scale into dscores once.
// A query with no allowed key (a prefix token whose whole prefix is missing) gets an all-zero
// probability row, hence a zero output and zero gradient.

#ifdef MM_F64
#define R_FMA fma
#else
#define R_FMA fmaf
#endif

// Micro-tile: KR rows x KC columns of accumulators, i.e. 16 ymm registers in float. Padded
// extents are multiples of KC (and so of KR).
enum { KR = 8, KC = 16 };

static inline int round_up(int n, int m) {
    return (n + m - 1) / m * m;
}

// Number of leading keys query i may look at (then filtered by key_valid).
static inline int key_limit(int i, int P) {
    return i < P ? P : i + 1;
}

// Columns (keys) the row block starting at i0 must compute: key_limit grows with i, so the
// block's last real row decides. Rounded up to whole tiles, never beyond Tp.
static inline int block_cols(int i0, int T, int P, int Tp) {
    int last = (i0 + KR < T ? i0 + KR : T) - 1;
    int c = round_up(key_limit(last, P), KC);
    return c < Tp ? c : Tp;
}

// First query that can see any key of the block starting at j0: every query sees a prefix
// key, only queries i >= j see a causal key j.
static inline int block_first_query(int j0, int P) {
    return j0 < P ? 0 : j0;
}

// Rows ahead that attention's row loops prefetch. They read (and in the backward, add to)
// one head's slice of every row of qkv, dout and dqkv (a stride of 3 C or C floats), and
// the backward reads the saved probabilities; all went cold since the op that wrote them,
// and the hardware prefetcher does not run far enough ahead on a stride this long and a run
// this short (a few dozen rows per head): without it the first touch of each row stalled
// attention_bwd for half of its time (perf, bench_small). Prefetches change no result.
enum { PF_ROWS = 4 };

// prefetches the n floats at p (one head's slice of a row)
static inline void prefetch_row(const mm_real *p, int n) {
    for (int d = 0; d < n; d += 64 / (int)sizeof(mm_real)) __builtin_prefetch(p + d);
    __builtin_prefetch(p + n - 1);
}

// dst[j * ldd + i] = src[i * lds + j] for i < m, j < n: a head's k (or v) turned into the
// (HD, T) operand the products read. By 8 x 8 blocks transposed in vector registers (GNU
// vector shuffles, lowered at each clone's width), the edges one element at a time: element
// by element, the strided scalar stores took a fifth of attention_fwd (AVX-512, bench_small).
// A copy, so no bits change.
typedef mm_real att_v8 __attribute__((vector_size(8 * sizeof(mm_real))));

CPU_ISA_INLINE void transpose(mm_real *restrict dst, int ldd, const mm_real *restrict src, int lds,
                              int m, int n) {
    const int m8 = m / 8 * 8, n8 = n / 8 * 8;
    for (int i0 = 0; i0 < m8; i0 += 8)
        for (int j0 = 0; j0 < n8; j0 += 8) {
            att_v8 r[8], t[8], u[8];
            for (int i = 0; i < 8; i++)
                memcpy(&r[i], src + (size_t)(i0 + i) * lds + j0, sizeof r[i]);
            for (int i = 0; i < 8; i += 2) {  // pairs of rows interleaved
                t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
                t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
            }
            for (int i = 0; i < 8; i += 4) {  // quads: columns c and c + 4 of four rows
                u[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
                u[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
                u[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
                u[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
            }
            for (int c = 0; c < 4; c++) {  // column c from u[c] and u[c + 4], c + 4 likewise
                const att_v8 lo = __builtin_shufflevector(u[c], u[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
                const att_v8 hi =
                    __builtin_shufflevector(u[c], u[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
                memcpy(dst + (size_t)(j0 + c) * ldd + i0, &lo, sizeof lo);
                memcpy(dst + (size_t)(j0 + c + 4) * ldd + i0, &hi, sizeof hi);
            }
        }
    for (int i = 0; i < m; i++)
        for (int j = i < m8 ? n8 : 0; j < n; j++)
            dst[(size_t)j * ldd + i] = src[(size_t)i * lds + j];
}

// c (KR, KC) (row stride ldc) = sum over k in [k0, k1) of x[r, k] * y (k, KC) (row stride
// ldy), with x[r, k] = x[r * xr + k * xk]: (xr, xk) = (ld, 1) reads x row-major, (1, ld)
// reads it transposed. Overwrites c. fma because -std=c11 turns off contraction and the
// separate multiply and add would halve the throughput. The first k starts the accumulators
// as fma(x, y, +0), the sum's first step: zeroing them first made GCC clear a copy of them in
// memory with rep stos before every tile (a tenth of attention_bwd, AVX-512).
static inline void tile(mm_real *restrict c, int ldc, const mm_real *restrict x, int xr, int xk,
                        const mm_real *restrict y, int ldy, int k0, int k1) {
    mm_real acc[KR][KC];
    if (k1 <= k0) {
        for (int r = 0; r < KR; r++)
            for (int j = 0; j < KC; j++) c[(size_t)r * ldc + j] = 0;
        return;
    }
    {
        const mm_real *yk = y + (size_t)k0 * ldy, *xk_ = x + (size_t)k0 * xk;
        for (int r = 0; r < KR; r++) {
            const mm_real xv = xk_[(size_t)r * xr];
#pragma omp simd
            for (int j = 0; j < KC; j++) acc[r][j] = R_FMA(xv, yk[j], (mm_real)0);
        }
    }
    for (int k = k0 + 1; k < k1; k++) {
        const mm_real *yk = y + (size_t)k * ldy, *xk_ = x + (size_t)k * xk;
        for (int r = 0; r < KR; r++) {
            const mm_real xv = xk_[(size_t)r * xr];
#pragma omp simd
            for (int j = 0; j < KC; j++) acc[r][j] = R_FMA(xv, yk[j], acc[r][j]);
        }
    }
    for (int r = 0; r < KR; r++)
#pragma omp simd
        for (int j = 0; j < KC; j++) c[(size_t)r * ldc + j] = acc[r][j];
}

// One thread's zero-padded work space for one (b, h); see attention_fwd/_bwd for the shapes.
// Padding rows and columns are zero when allocated, and only ever written with zeros (or
// recomputed from zero padding), so the kernels may run over whole tiles.
typedef struct {
    mm_real *q, *k, *v;     // (Tp, Dp) each
    mm_real *kt, *vt;       // (Dp, Tp) each
    mm_real *s, *ds;        // (Tp, Tp) scores/probabilities, their gradient
    mm_real *o, *dq, *dk, *dv;  // (Tp, Dp) each
    mm_real *kv;            // (Tp) 1 for a valid key, 0 otherwise
    mm_real *mem;
} att_scratch;

static void att_scratch_init(att_scratch *w, int Tp, int Dp) {
    size_t td = (size_t)Tp * Dp, tt = (size_t)Tp * Tp, n = 9 * td + 2 * tt + (size_t)Tp;
    mm_real *p = mm_alloc_aligned(n * sizeof(mm_real));
    memset(p, 0, n * sizeof(mm_real));
    w->mem = p;
    w->q = p, p += td;
    w->k = p, p += td;
    w->v = p, p += td;
    w->kt = p, p += td;
    w->vt = p, p += td;
    w->o = p, p += td;
    w->dq = p, p += td;
    w->dk = p, p += td;
    w->dv = p, p += td;
    w->s = p, p += tt;
    w->ds = p, p += tt;
    w->kv = p;
}

// The KC lanes of a row's partial max or sum, reduced as a tree: lane c takes lane c + w for
// w = KC/2, ..., 1. In vector registers (GNU vector extensions, lowered to whatever width the
// clone has), not through the stack lane by lane as the plain loop compiled: softmax_rows
// runs this twice per score row. Same pairs in the same order as the loop, so the same bits.
typedef mm_real att_lanes __attribute__((vector_size(KC * sizeof(mm_real))));
#ifdef MM_F64
typedef int64_t att_lanes_i __attribute__((vector_size(KC * sizeof(int64_t))));
#else
typedef int32_t att_lanes_i __attribute__((vector_size(KC * sizeof(int32_t))));
#endif
_Static_assert(KC == 16, "LANES_DOWN below is written for KC = 16");

// v with lane c replaced by lane c + w, w = 8, 4, 2, 1 (lanes past the end keep theirs: never
// read). A macro: a function returning a vector this wide trips GCC's ABI warning.
#define LANES_DOWN_8(v) \
    __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15)
#define LANES_DOWN_4(v) \
    __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define LANES_DOWN_2(v) \
    __builtin_shufflevector(v, v, 2, 3, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
#define LANES_DOWN_1(v) \
    __builtin_shufflevector(v, v, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)

// the loop's "lane[c] = lane[c + w] > lane[c] ? lane[c + w] : lane[c]" on every lane at once
#define LANES_MAX_STEP(v, hi)                                               \
    do {                                                                    \
        const att_lanes hi_ = (hi);                                         \
        const att_lanes_i gt_ = hi_ > (v);                                  \
        (v) = (att_lanes)(((att_lanes_i)hi_ & gt_) | ((att_lanes_i)(v) & ~gt_)); \
    } while (0)

static inline mm_real lanes_max(const mm_real lane[KC]) {
    att_lanes v;
    memcpy(&v, lane, sizeof v);
    LANES_MAX_STEP(v, LANES_DOWN_8(v));
    LANES_MAX_STEP(v, LANES_DOWN_4(v));
    LANES_MAX_STEP(v, LANES_DOWN_2(v));
    LANES_MAX_STEP(v, LANES_DOWN_1(v));
    return v[0];
}

static inline mm_real lanes_sum(const mm_real lane[KC]) {
    att_lanes v;
    memcpy(&v, lane, sizeof v);
    v += LANES_DOWN_8(v);
    v += LANES_DOWN_4(v);
    v += LANES_DOWN_2(v);
    v += LANES_DOWN_1(v);
    return v[0];
}

// Unnormalized masked softmax of the nr (<= KR) score rows of a row block starting at query
// i0, row stride ld, cols a multiple of KC: a[j] = exp(a[j] - max) for keys j below the row's
// key_limit with kv[j] != 0, 0 for every other j < cols; inv[r] = 1 / the row's sum (0 for a
// row with no allowed key, which is then all zero). Rows are short (a few KC), so latency
// rules: the max and the sum run in KC lanes reduced as a tree, never as a serial chain; each
// phase runs over all rows of the block before the next, so the rows' trees and divisions
// overlap instead of queueing behind each other; and the caller folds the normalization into
// the copy it makes anyway. Per row the operations and their order are those of one row alone.
static inline void softmax_rows(mm_real *restrict s, int ld, int nr, const mm_real *restrict kv,
                                int i0, int P, int cols, mm_real inv[KR]) {
    mm_real lane[KR][KC], mx[KR];
    for (int r = 0; r < nr; r++) {
        const mm_real *a = s + (size_t)r * ld;
        const int lim = key_limit(i0 + r, P);
        for (int c = 0; c < KC; c++) lane[r][c] = -INFINITY;
        for (int j0 = 0; j0 < cols; j0 += KC)
            for (int c = 0; c < KC; c++) {
                const int j = j0 + c;
                const mm_real x = j < lim && kv[j] != 0 ? a[j] : -INFINITY;
                lane[r][c] = x > lane[r][c] ? x : lane[r][c];
            }
    }
    for (int r = 0; r < nr; r++) mx[r] = lanes_max(lane[r]);
    for (int r = 0; r < nr; r++) {
        mm_real *a = s + (size_t)r * ld;
        const int lim = key_limit(i0 + r, P);
        if (mx[r] == -INFINITY) {
            for (int j = 0; j < cols; j++) a[j] = 0;
            continue;
        }
        for (int c = 0; c < KC; c++) lane[r][c] = 0;
        for (int j0 = 0; j0 < cols; j0 += KC)
            for (int c = 0; c < KC; c++) {
                const int j = j0 + c;
                // exp first, then select, so the loop vectorizes; a masked key's value is never
                // used (fast_expf never returns 0, libm's exp may overflow there)
                const mm_real e = R_EXP(a[j] - mx[r]);
                a[j] = j < lim && kv[j] != 0 ? e : 0;
                lane[r][c] += a[j];
            }
    }
    for (int r = 0; r < nr; r++) inv[r] = mx[r] == -INFINITY ? 0 : 1 / lanes_sum(lane[r]);
}

// ds = scale * p * (ds - sum(p * ds)) on the nr (<= KR) rows of a row block (row stride ld,
// cols columns): the softmax backward without dropout. Each row's sum is MM_LANE_SUM's, term
// for term and in its order (so the same bits), but the block's rows run each phase side by
// side: a row's final serial sum of 16 lanes then overlaps the other rows' instead of
// stalling the row loop.
static inline void dsoftmax_rows(const mm_real *restrict p, mm_real *restrict ds, int ld, int nr,
                                 int cols, mm_real scale) {
    mm_real lane[KR][MM_LANES], dot[KR];
    const int nb = cols / MM_LANES * MM_LANES;
    for (int r = 0; r < nr; r++) {
        const mm_real *pr = p + (size_t)r * ld, *dr = ds + (size_t)r * ld;
        for (int l = 0; l < MM_LANES; l++) lane[r][l] = 0;
        for (int b = 0; b < nb; b += MM_LANES)
#pragma omp simd
            for (int l = 0; l < MM_LANES; l++) lane[r][l] += pr[b + l] * dr[b + l];
        for (int j = nb; j < cols; j++) lane[r][0] += pr[j] * dr[j];
    }
    for (int r = 0; r < nr; r++) {
        dot[r] = 0;
        for (int l = 0; l < MM_LANES; l++) dot[r] += lane[r][l];
    }
    for (int r = 0; r < nr; r++) {
        const mm_real *pr = p + (size_t)r * ld;
        mm_real *dr = ds + (size_t)r * ld;
#pragma omp simd
        for (int j = 0; j < cols; j++) dr[j] = scale * pr[j] * (dr[j] - dot[r]);
    }
}

// out (B, T, NH, HD), att (B, NH, T, T), qkv (B, T, 3, NH, HD), key_valid (B, T)
CPU_ISA_CLONES
static void attention_fwd(const mm_backend *be MM_UNUSED, mm_real *out, mm_real *att,
                          const mm_real *qkv, const uint8_t *key_valid, int B, int T, int P, int NH,
                          int HD, const model_drop *drop) {
    const int dropping = drop_on(drop);
    MM_CHECK(P >= 0 && P <= T, "attention: prefix %d outside [0, T=%d]", P, T);
    const int C = NH * HD, C3 = 3 * C, Tp = round_up(T, KC), Dp = round_up(HD, KC);
    const mm_real scale = 1 / R_SQRT((mm_real)HD);
    // PV reads p from att itself where its rows need no padding (T a multiple of KC) and
    // dropout leaves p as it is, as the backward does; from the padded work rows else
    const int direct = !dropping && Tp == T;
#pragma omp parallel
    {
        att_scratch w;
        att_scratch_init(&w, Tp, Dp);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            const int b = bh / NH, h = bh % NH;
            const mm_real *src = qkv + (size_t)b * T * C3 + (size_t)h * HD;
            const uint64_t dk =
                dropping ? model_drop_site_key(drop->keys[b], drop->layer, drop->place) : 0;
            const uint64_t hrow = dropping ? (uint64_t)(drop->head0 + h) * T : 0;
            // gather: q pre-scaled (T, HD), k transposed (HD, T), v (T, HD)
            for (int i = 0; i < T; i++) {
                const mm_real *qi = src + (size_t)i * C3, *vi = qi + 2 * C;
                mm_real *wq = w.q + (size_t)i * Dp, *wv = w.v + (size_t)i * Dp;
                if (i + PF_ROWS < T) {
                    const mm_real *qn = qi + (size_t)PF_ROWS * C3;
                    prefetch_row(qn, HD);
                    prefetch_row(qn + C, HD);
                    prefetch_row(qn + 2 * C, HD);
                }
#pragma omp simd
                for (int d = 0; d < HD; d++) {
                    wq[d] = qi[d] * scale;
                    wv[d] = vi[d];
                }
                w.kv[i] = key_valid[(size_t)b * T + i] != 0;
            }
            transpose(w.kt, Tp, src + C, C3, T, HD);
            mm_real *a = att + (size_t)bh * T * T;
            for (int i0 = 0; i0 < T; i0 += KR) {
                const int cols = block_cols(i0, T, P, Tp);
                mm_real *s = w.s + (size_t)i0 * Tp;
                for (int j0 = 0; j0 < cols; j0 += KC)
                    tile(s + j0, Tp, w.q + (size_t)i0 * Dp, Dp, 1, w.kt + j0, Tp, 0, HD);
                const int i1 = i0 + KR < T ? i0 + KR : T;
                mm_real invs[KR];
                softmax_rows(s, Tp, i1 - i0, w.kv, i0, P, cols, invs);
                for (int i = i0; i < i1; i++) {
                    mm_real *si = w.s + (size_t)i * Tp, *ai = a + (size_t)i * T;
                    const mm_real inv = invs[i - i0];
                    // the whole row: [cols, Tp) of a work row is never written, 0 since
                    // allocation, so the masked tail comes out as 0 * inv = +0 in the same
                    // vector loop (a separate zeroing loop of its own became a memset call
                    // per row)
                    if (direct) {
#pragma omp simd
                        for (int j = 0; j < T; j++) ai[j] = si[j] * inv;
                    } else {
#pragma omp simd
                        for (int j = 0; j < T; j++) ai[j] = si[j] *= inv;
                    }
                    // att keeps p; PV below reads the dropped p * mask * scale
                    if (dropping) {
                        const uint64_t e0 = (hrow + (uint64_t)i) * (uint64_t)T;
                        const int n = cols < T ? cols : T;
                        for (int j = 0; j < n; j++)
                            si[j] = model_drop_keep(dk, e0 + (uint64_t)j, drop->thr)
                                        ? si[j] * drop->scale
                                        : 0;
                    }
                }
                // probabilities are 0 beyond cols, so PV stops there too
                for (int d0 = 0; d0 < Dp; d0 += KC)
                    tile(w.o + (size_t)i0 * Dp + d0, Dp, direct ? a + (size_t)i0 * T : s, Tp, 1,
                         w.v + d0, Dp, 0, cols);
            }
            mm_real *o = out + (size_t)b * T * C + (size_t)h * HD;
            for (int i = 0; i < T; i++) {
                mm_real *oi = o + (size_t)i * C;
                const mm_real *wo = w.o + (size_t)i * Dp;
#pragma omp simd
                for (int d = 0; d < HD; d++) oi[d] = wo[d];
            }
        }
        free(w.mem);
    }
}

// dqkv (B, T, 3, NH, HD) +=, dout (B, T, NH, HD), qkv, att (B, NH, T, T) as saved. out is
// not needed here: the saved probabilities give the softmax backward directly.
CPU_ISA_CLONES
static void attention_bwd(const mm_backend *be MM_UNUSED, mm_real *dqkv, const mm_real *dout,
                          const mm_real *qkv, const mm_real *out, const mm_real *att, int B, int T,
                          int P, int NH, int HD, const model_drop *drop) {
    (void)out;
    const int dropping = drop_on(drop);
    MM_CHECK(P >= 0 && P <= T, "attention: prefix %d outside [0, T=%d]", P, T);
    const int C = NH * HD, C3 = 3 * C, Tp = round_up(T, KC), Dp = round_up(HD, KC);
    const mm_real scale = 1 / R_SQRT((mm_real)HD);
#pragma omp parallel
    {
        // w.o holds dout's head (T, HD), w.s the probabilities (T, T)
        att_scratch w;
        att_scratch_init(&w, Tp, Dp);
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            const int b = bh / NH, h = bh % NH;
            const size_t base = (size_t)b * T * C3 + (size_t)h * HD;
            const mm_real *src = qkv + base, *dsrc = dout + (size_t)b * T * C + (size_t)h * HD;
            const mm_real *a = att + (size_t)bh * T * T;
            const uint64_t dk =
                dropping ? model_drop_site_key(drop->keys[b], drop->layer, drop->place) : 0;
            const uint64_t hrow = dropping ? (uint64_t)(drop->head0 + h) * T : 0;
            // the products read the saved probabilities where they are when their rows need no
            // padding (T a multiple of KC) and dropout does not rewrite them; a padded copy else
            const mm_real *ps = !dropping && Tp == T ? a : w.s;
            for (int i = 0; i < T; i++) {
                const mm_real *qi = src + (size_t)i * C3, *ki = qi + C;
                const mm_real *doi = dsrc + (size_t)i * C, *ai = a + (size_t)i * T;
                if (i + PF_ROWS < T) {
                    const mm_real *qn = qi + (size_t)PF_ROWS * C3;
                    prefetch_row(qn, HD);
                    prefetch_row(qn + C, HD);
                    prefetch_row(qn + 2 * C, HD);
                    prefetch_row(doi + (size_t)PF_ROWS * C, HD);
                    prefetch_row(ai + (size_t)PF_ROWS * T, T);
                }
                mm_real *wq = w.q + (size_t)i * Dp, *wk = w.k + (size_t)i * Dp,
                        *wd = w.o + (size_t)i * Dp, *ws = w.s + (size_t)i * Tp;
#pragma omp simd
                for (int d = 0; d < HD; d++) {
                    wq[d] = qi[d];
                    wk[d] = ki[d];
                    wd[d] = doi[d];
                }
                if (ps == w.s) {
#pragma omp simd
                    for (int j = 0; j < T; j++) ws[j] = ai[j];
                }
            }
            transpose(w.vt, Tp, src + 2 * C, C3, T, HD);
            for (int i0 = 0; i0 < T; i0 += KR) {
                const int cols = block_cols(i0, T, P, Tp);
                mm_real *ds = w.ds + (size_t)i0 * Tp;
                // dprobs = dout v^T
                for (int j0 = 0; j0 < cols; j0 += KC)
                    tile(ds + j0, Tp, w.o + (size_t)i0 * Dp, Dp, 1, w.vt + j0, Tp, 0, HD);
                // dscores = scale * p * (dprobs - sum(p * dprobs)): 0 wherever p is
                const int i1 = i0 + KR < T ? i0 + KR : T;
                if (!dropping) dsoftmax_rows(ps + (size_t)i0 * Tp, ds, Tp, i1 - i0, cols, scale);
                for (int i = i0; i < i1 && dropping; i++) {
                    mm_real *pi = w.s + (size_t)i * Tp;
                    mm_real *di = w.ds + (size_t)i * Tp;
                    // under dropout the product gave d(p * mask * scale): the mask takes it
                    // to dprobs, and the row's p turns into the dropped p that dv needs
                    // (the forward's p' v); sum(p * dprobs) is then dout . out as unmasked
                    const uint64_t e0 = (hrow + (uint64_t)i) * (uint64_t)T;
                    const int n = cols < T ? cols : T;
                    mm_real dot = 0;
                    for (int j = 0; j < cols; j++) {
                        const mm_real f =
                            j < T && model_drop_keep(dk, e0 + (uint64_t)j, drop->thr) ? drop->scale
                                                                                        : 0;
                        di[j] *= f;
                        dot += pi[j] * di[j];
                    }
                    for (int j = 0; j < cols; j++) {
                        const mm_real f = di[j];
                        di[j] = scale * pi[j] * (f - dot);
                    }
                    for (int j = 0; j < n; j++)
                        pi[j] = model_drop_keep(dk, e0 + (uint64_t)j, drop->thr)
                                    ? pi[j] * drop->scale
                                    : 0;
                }
                // dq = dscores k
                for (int d0 = 0; d0 < Dp; d0 += KC)
                    tile(w.dq + (size_t)i0 * Dp + d0, Dp, ds, Tp, 1, w.k + d0, Dp, 0, cols);
            }
            // dv = p^T dout, dk = dscores^T q, a block of keys at a time
            for (int j0 = 0; j0 < T; j0 += KR) {
                const int q0 = block_first_query(j0, P);
                for (int d0 = 0; d0 < Dp; d0 += KC) {
                    tile(w.dv + (size_t)j0 * Dp + d0, Dp, ps + j0, 1, Tp, w.o + d0, Dp, q0, T);
                    tile(w.dk + (size_t)j0 * Dp + d0, Dp, w.ds + j0, 1, Tp, w.q + d0, Dp, q0, T);
                }
            }
            mm_real *dst = dqkv + base;
            for (int i = 0; i < T; i++) {
                mm_real *dq = dst + (size_t)i * C3, *dk = dq + C, *dv = dq + 2 * C;
                if (i + PF_ROWS < T) {
                    mm_real *dn = dq + (size_t)PF_ROWS * C3;
                    prefetch_row(dn, HD);
                    prefetch_row(dn + C, HD);
                    prefetch_row(dn + 2 * C, HD);
                }
                const mm_real *sq = w.dq + (size_t)i * Dp, *sk = w.dk + (size_t)i * Dp,
                              *sv = w.dv + (size_t)i * Dp;
#pragma omp simd
                for (int d = 0; d < HD; d++) {
                    dq[d] += sq[d];
                    dk[d] += sk[d];
                    dv[d] += sv[d];
                }
            }
        }
        free(w.mem);
    }
}

// the probabilities (B, NH, T, T)
static size_t attention_saved(const mm_backend *be MM_UNUSED, int B, int NH, int T) {
    return (size_t)B * NH * T * T;
}

// ---------------------------------------------------------------------------------------
// softmax cross-entropy

// One row: p (V) = softmax(l), returns the loss against target t (0 when t < 0). With
// smoothing eps the loss is lse - (1 - eps) l_t - eps/V sum_j l_j, all shifted by the row's
// max. p may be l itself: the row is read for the loss before p is written.
CPU_ISA_INLINE mm_real xent_row(mm_real *p, const mm_real *l, int t, int V, mm_real eps) {
    mm_real mx = -INFINITY;  // a max is the same in any order: no MM_LANE_SUM needed
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < V; j++) mx = l[j] > mx ? l[j] : mx;
    const mm_real lt = t >= 0 ? l[t] : 0;
    mm_real sl = 0;
    if (t >= 0 && eps > 0) MM_LANE_SUM(sl, V, j, l[j] - mx);
    mm_real s = 0;
    MM_LANE_SUM(s, V, j, (p[j] = R_EXP(l[j] - mx)));
    mm_real inv = 1 / s;
#pragma omp simd
    for (int j = 0; j < V; j++) p[j] *= inv;
    if (t < 0) return 0;
    if (eps > 0) return R_LOG(s) - (1 - eps) * (lt - mx) - eps / V * sl;
    return R_LOG(s) - (lt - mx);
}

// One row: d (V) = (p - q) * s, q = (1 - eps) onehot(t) + eps / V; 0 when t < 0. d may be p.
CPU_ISA_INLINE void xent_row_grad(mm_real *d, const mm_real *p, int t, int V, mm_real s,
                                  mm_real eps) {
    if (t < 0) {
        memset(d, 0, (size_t)V * sizeof(mm_real));
        return;
    }
    if (eps > 0) {
        const mm_real u = eps / V;
#pragma omp simd
        for (int j = 0; j < V; j++) d[j] = (p[j] - u) * s;
        d[t] -= (1 - eps) * s;
        return;
    }
#pragma omp simd
    for (int j = 0; j < V; j++) d[j] = p[j] * s;
    d[t] -= s;
}

// loss (N), probs (N, V), logits (N, V), targets (N) in [-1, V).
CPU_ISA_CLONES
static void xent_fwd(const mm_backend *be MM_UNUSED, mm_real *loss, mm_real *probs,
                     const mm_real *logits, const int32_t *targets, int N, int V, mm_real eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const int t = targets[i];
        MM_CHECK(t >= -1 && t < V, "xent: target %d of row %d outside [-1, %d)", t, i, V);
        loss[i] = xent_row(probs + (size_t)i * V, logits + (size_t)i * V, t, V, eps);
    }
}

// dlogits (N, V) = (probs - q) * dloss (N), q = (1 - eps) onehot(target) + eps / V; ignored
// rows 0. Overwrites. The logits are not read (the probabilities are saved), so dlogits may
// alias them.
CPU_ISA_CLONES
static void xent_bwd(const mm_backend *be MM_UNUSED, mm_real *dlogits, const mm_real *logits,
                     const mm_real *probs, const int32_t *targets, const mm_real *dloss, int N,
                     int V, mm_real eps) {
    (void)logits;
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++)
        xent_row_grad(dlogits + (size_t)i * V, probs + (size_t)i * V, targets[i], V, dloss[i],
                      eps);
}

// Both in one pass over each row, in place: the probabilities land in the logits' row and
// become its gradient there. The same bits as xent_fwd then xent_bwd.
CPU_ISA_CLONES
static void xent_fwd_bwd(const mm_backend *be MM_UNUSED, mm_real *loss, mm_real *logits,
                         const int32_t *targets, const mm_real *dloss, int N, int V, mm_real eps) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const int t = targets[i];
        MM_CHECK(t >= -1 && t < V, "xent: target %d of row %d outside [-1, %d)", t, i, V);
        mm_real *l = logits + (size_t)i * V;
        loss[i] = xent_row(l, l, t, V, eps);
        xent_row_grad(l, l, t, V, dloss[i], eps);
    }
}

// the CPU computes from its parameters as they are
static void params_ready(const mm_backend *be MM_UNUSED, const mm_real *params MM_UNUSED,
                         size_t n MM_UNUSED) {}

// the probabilities (N, V)
static size_t xent_saved(const mm_backend *be MM_UNUSED, int N, int V) {
    return (size_t)N * V;
}

const model_ops model_ops_cpu = {
    .name = "cpu",
    .matmul_fwd = matmul_fwd,
    .matmul_bwd = matmul_bwd,
    .layernorm_fwd = layernorm_fwd,
    .layernorm_bwd = layernorm_bwd,
    .gelu_fwd = gelu_fwd,
    .gelu_bwd = gelu_bwd,
    .matmul_gelu_fwd = matmul_gelu_fwd,
    .matmul_gelu_bwd = matmul_gelu_bwd,
    .add = add,
    .add_layernorm_fwd = add_layernorm_fwd,
    .dropout = dropout,
    .attention_fwd = attention_fwd,
    .attention_bwd = attention_bwd,
    .attention_saved = attention_saved,
    .xent_fwd = xent_fwd,
    .xent_bwd = xent_bwd,
    .xent_fwd_bwd = xent_fwd_bwd,
    .xent_saved = xent_saved,
    .params_ready = params_ready,
    .mem_alloc = model_cpu_mem_alloc,
    .mem_free = model_cpu_mem_free,
    .mem_upload = model_cpu_mem_copy,
    .mem_download = model_cpu_mem_copy,
    .mem_zero = model_cpu_mem_zero,
    .mem_copy = model_cpu_mem_copy,
    .copy_rows = model_cpu_copy_rows,
    .act_from_real = model_cpu_act_copy,
    .act_to_real = model_cpu_act_copy,
    .patchify = model_patchify,
    .unpatchify = model_unpatchify,
    .im2col3 = model_cpu_im2col3,
    .col2im3 = model_cpu_col2im3,
    .maxpool2_fwd = model_cpu_maxpool2_fwd,
    .maxpool2_bwd = model_cpu_maxpool2_bwd,
};
