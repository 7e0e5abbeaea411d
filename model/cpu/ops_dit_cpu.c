// ops_dit_cpu.c: the CPU backend of the ops the diffusion model adds to the common table
// (dit_ops in diffusion.h): SiLU, adaLN modulation, gated residual adds, cross-attention and
// the per-sample MSE. It exists so that model/diffusion.c is written once against an ops
// interface, like the transformer, and a CUDA backend only has to fill another table.
//
// Conventions follow ops_cpu.c: row-major, every backward ACCUMULATES into its gradients
// (except mse_bwd, which overwrites, as xent_bwd does), OpenMP with static schedules, no
// atomics. Every cross-row reduction (the per-sample shift/scale/gate gradients) is owned by
// one task that sums the rows in order, so results do not even depend on the thread count.
// Cross-attention runs two small BLAS gemms per (sample, head) inside an OpenMP loop, as the
// self-attention of ops_cpu.c does (OpenBLAS runs single-threaded inside a parallel region).
//
// Precision: mm_real is float, or double under -DMM_F64 (gradient checks). libm's exp is
// used in both builds: the exponentials here (SiLU on (B, d), softmax over (B, NH, N, Tc))
// are a small share of a step, not worth a second approximation to maintain.
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/data.h"
#include "../diffusion.h"
#include "../model_internal.h"
#include "cpu_isa.h"

#ifdef MM_F64
#define GEMM cblas_dgemm
#define R_EXP exp
#define R_SQRT sqrt
#else
#define GEMM cblas_sgemm
#define R_EXP expf
#define R_SQRT sqrtf
#endif

// Columns per task in the per-sample column reductions.
#define COL_BLOCK 64

// ---------------------------------------------------------------------------------------
// SiLU: x * sigmoid(x)

CPU_ISA_CLONES
static void silu_fwd(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *x, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = x[i] / (1 + R_EXP(-x[i]));
}

// d/dx x s(x) = s (1 + x (1 - s))
CPU_ISA_CLONES
static void silu_bwd(const mm_backend *be MM_UNUSED, mm_real *dx, const mm_real *x,
                     const mm_real *dout, size_t n) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        mm_real s = 1 / (1 + R_EXP(-x[i]));
        dx[i] += dout[i] * s * (1 + x[i] * (1 - s));
    }
}

// ---------------------------------------------------------------------------------------
// adaLN modulation and gated residual (DiT): per-sample vectors broadcast over the N rows

// out (B, N, C) = x * (1 + scale[b]) + shift[b]; shift, scale rows at stride sc.
CPU_ISA_CLONES
static void modulate_fwd(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *x,
                         const mm_real *shift, const mm_real *scale, int sc, int B, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < B * N; r++) {
        const mm_real *sh = shift + (size_t)(r / N) * sc, *sl = scale + (size_t)(r / N) * sc;
        const mm_real *xr = x + (size_t)r * C;
        mm_real *o = out + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = xr[c] * (1 + sl[c]) + sh[c];
    }
}

// dx += dout * (1 + scale); dshift[b] += sum_n dout; dscale[b] += sum_n dout * x. One task per
// (sample, column block) owns those columns of dshift/dscale and adds its rows in order.
CPU_ISA_CLONES
static void modulate_bwd(const mm_backend *be MM_UNUSED, mm_real *dx, mm_real *dshift,
                         mm_real *dscale, const mm_real *dout, const mm_real *x,
                         const mm_real *scale, int sc, int B, int N, int C) {
    const int ncb = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int task = 0; task < B * ncb; task++) {
        int b = task / ncb, c0 = (task % ncb) * COL_BLOCK;
        int n = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        const mm_real *sl = scale + (size_t)b * sc + c0;
        mm_real ash[COL_BLOCK] = {0}, asc[COL_BLOCK] = {0};
        for (int i = 0; i < N; i++) {
            size_t off = ((size_t)b * N + i) * C + c0;
            const mm_real *d = dout + off, *xr = x + off;
            mm_real *dxr = dx + off;
#pragma omp simd
            for (int c = 0; c < n; c++) {
                dxr[c] += d[c] * (1 + sl[c]);
                ash[c] += d[c];
                asc[c] += d[c] * xr[c];
            }
        }
        mm_real *dsh = dshift + (size_t)b * sc + c0, *dsl = dscale + (size_t)b * sc + c0;
        for (int c = 0; c < n; c++) {
            dsh[c] += ash[c];
            dsl[c] += asc[c];
        }
    }
}

// The two calls, into a dh zeroed here
static void modulate_ln_bwd(const mm_backend *be, mm_real *dx, mm_real *dshift, mm_real *dscale,
                            mm_real *dh, const mm_real *dout, const mm_real *h,
                            const mm_real *scale, int sc, const mm_real *x, const mm_real *g,
                            const mm_real *mean, const mm_real *rstd, int B, int N, int C) {
    const size_t n = (size_t)B * N * C;
    model_zero_bufs(1, &dh, &n);
    modulate_bwd(be, dh, dshift, dscale, dout, h, scale, sc, B, N, C);
    model_ops_cpu.layernorm_bwd(be, dx, NULL, NULL, dh, x, g, mean, rstd, B * N, C);
}

// out (B, N, C) = x + gate[b] * y; out may be x
CPU_ISA_CLONES
static void gated_add_fwd(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *x,
                          const mm_real *y, const mm_real *gate, int sc, int B, int N, int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < B * N; r++) {
        const mm_real *gt = gate + (size_t)(r / N) * sc, *yr = y + (size_t)r * C;
        const mm_real *xr = x + (size_t)r * C;
        mm_real *o = out + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = xr[c] + gt[c] * yr[c];
    }
}

// The calls it fuses: on the CPU the fused pass would save a read of res and of h, small next
// to the rest.
static void ln_modulate_fwd(const mm_backend *be, mm_real *res, mm_real *h, mm_real *out,
                            mm_real *mean, mm_real *rstd, const mm_real *a, const mm_real *b,
                            const mm_real *gate, const mm_real *g, const mm_real *beta,
                            const mm_real *shift, const mm_real *scale, int sc, int B, int N,
                            int C) {
    if (b && gate) {
        gated_add_fwd(be, res, a, b, gate, sc, B, N, C);
        model_ops_cpu.layernorm_fwd(be, h, mean, rstd, res, g, beta, B * N, C);
    } else if (b) {
        model_ops_cpu.add_layernorm_fwd(be, res, h, mean, rstd, a, b, g, beta, B * N, C);
    } else {
        model_ops_cpu.layernorm_fwd(be, h, mean, rstd, a, g, beta, B * N, C);
    }
    if (shift) modulate_fwd(be, out, h, shift, scale, sc, B, N, C);
}

// dy += dx * gate; dgate[b] += sum_n dx * y (same task split as modulate_bwd).
CPU_ISA_CLONES
static void gated_add_bwd(const mm_backend *be MM_UNUSED, mm_real *dy, mm_real *dgate,
                          const mm_real *dx, const mm_real *y, const mm_real *gate, int sc, int B,
                          int N, int C) {
    const int ncb = (C + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static)
    for (int task = 0; task < B * ncb; task++) {
        int b = task / ncb, c0 = (task % ncb) * COL_BLOCK;
        int n = C - c0 < COL_BLOCK ? C - c0 : COL_BLOCK;
        const mm_real *gt = gate + (size_t)b * sc + c0;
        mm_real ag[COL_BLOCK] = {0};
        for (int i = 0; i < N; i++) {
            size_t off = ((size_t)b * N + i) * C + c0;
            const mm_real *d = dx + off, *yr = y + off;
            mm_real *dyr = dy + off;
#pragma omp simd
            for (int c = 0; c < n; c++) {
                dyr[c] += d[c] * gt[c];
                ag[c] += d[c] * yr[c];
            }
        }
        mm_real *dg = dgate + (size_t)b * sc + c0;
        for (int c = 0; c < n; c++) dg[c] += ag[c];
    }
}

// ---------------------------------------------------------------------------------------
// cross-attention
//
// Per (b, h): scores (Tq, Tk) = scale q k^T in one gemm, a masked softmax per row, out = att v
// in a second. A query whose sample has no valid key gets a zero row (the DiT always has its
// null token, but the op does not rely on it).

// In-place masked softmax of one score row a (Tk).
static inline void softmax_row(mm_real *a, const uint8_t *kv, int Tk) {
    mm_real mx = -INFINITY;
    for (int j = 0; j < Tk; j++) mx = kv[j] && a[j] > mx ? a[j] : mx;
    if (mx == -INFINITY) {
        memset(a, 0, (size_t)Tk * sizeof(mm_real));
        return;
    }
    mm_real s = 0;
    for (int j = 0; j < Tk; j++) {
        mm_real e = kv[j] ? R_EXP(a[j] - mx) : 0;
        a[j] = e;
        s += e;
    }
    mm_real inv = 1 / s;
#pragma omp simd
    for (int j = 0; j < Tk; j++) a[j] *= inv;
}

// out (B, Tq, NH, HD), att (B, NH, Tq, Tk), q (B, Tq, NH, HD), kv (B, Tk, 2, NH, HD),
// key_valid (B, Tk).
CPU_ISA_CLONES
static void xattn_fwd(const mm_backend *be MM_UNUSED, mm_real *out, mm_real *att, const mm_real *q,
                      const mm_real *kv, const uint8_t *key_valid, int B, int Tq, int Tk, int NH,
                      int HD) {
    const int C = NH * HD, C2 = 2 * C;
    const mm_real scale = 1 / R_SQRT((mm_real)HD);
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH;
        const mm_real *qb = q + (size_t)b * Tq * C + (size_t)h * HD;
        const mm_real *kb = kv + (size_t)b * Tk * C2 + (size_t)h * HD, *vb = kb + C;
        mm_real *a = att + (size_t)bh * Tq * Tk;
        mm_real *o = out + (size_t)b * Tq * C + (size_t)h * HD;
        const uint8_t *valid = key_valid + (size_t)b * Tk;
        GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, Tk, HD, scale, qb, C, kb, C2, 0, a, Tk);
        for (int i = 0; i < Tq; i++) softmax_row(a + (size_t)i * Tk, valid, Tk);
        GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, Tq, HD, Tk, 1, a, Tk, vb, C2, 0, o, C);
    }
}

// dq (B, Tq, NH, HD) +=, dkv (B, Tk, 2, NH, HD) +=; att as saved by xattn_fwd (the
// probabilities: out is not needed). Each (b, h) writes only its head's columns of its
// sample: no two tasks touch the same element.
CPU_ISA_CLONES
static void xattn_bwd(const mm_backend *be MM_UNUSED, mm_real *dq, mm_real *dkv,
                      const mm_real *dout, const mm_real *q, const mm_real *kv,
                      const mm_real *out MM_UNUSED, const mm_real *att, int B, int Tq, int Tk,
                      int NH, int HD) {
    const int C = NH * HD, C2 = 2 * C;
    const mm_real scale = 1 / R_SQRT((mm_real)HD);
#pragma omp parallel
    {
        mm_real *ds = mm_malloc((size_t)Tq * Tk * sizeof(mm_real));  // (Tq, Tk) this thread's
#pragma omp for schedule(static)
        for (int bh = 0; bh < B * NH; bh++) {
            int b = bh / NH, h = bh % NH;
            size_t qo = (size_t)b * Tq * C + (size_t)h * HD,
                   ko = (size_t)b * Tk * C2 + (size_t)h * HD;
            const mm_real *qb = q + qo, *kb = kv + ko, *vb = kb + C, *dob = dout + qo;
            mm_real *dqb = dq + qo, *dkb = dkv + ko, *dvb = dkb + C;
            const mm_real *a = att + (size_t)bh * Tq * Tk;
            // dprobs = dout v^T ; dv += att^T dout
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, Tk, HD, 1, dob, C, vb, C2, 0, ds, Tk);
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, Tk, HD, Tq, 1, a, Tk, dob, C, 1, dvb, C2);
            // softmax backward; masked keys have att 0, hence dscore 0
            for (int i = 0; i < Tq; i++) {
                const mm_real *ar = a + (size_t)i * Tk;
                mm_real *dr = ds + (size_t)i * Tk;
                mm_real dot = 0;
                for (int j = 0; j < Tk; j++) dot += ar[j] * dr[j];
#pragma omp simd
                for (int j = 0; j < Tk; j++) dr[j] = ar[j] * (dr[j] - dot);
            }
            // scores = scale q k^T: dq += scale ds k ; dk += scale ds^T q
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, Tq, HD, Tk, scale, ds, Tk, kb, C2, 1,
                 dqb, C);
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, Tk, HD, Tq, scale, ds, Tk, qb, C, 1, dkb,
                 C2);
        }
        free(ds);
    }
}

// ---------------------------------------------------------------------------------------
// per-sample mean squared error

// loss (B) = mean over the n elements of sample b of (pred - target)^2, summed in order in
// double (n is a whole image: ~3e3 .. 2e5 terms).
CPU_ISA_CLONES
static void mse_fwd(const mm_backend *be MM_UNUSED, mm_real *loss, const mm_real *pred,
                    const mm_real *target, int B, size_t n) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const mm_real *p = pred + (size_t)b * n, *t = target + (size_t)b * n;
        double s = 0;
        for (size_t i = 0; i < n; i++) {
            double d = (double)p[i] - (double)t[i];
            s += d * d;
        }
        loss[b] = (mm_real)(s / (double)n);
    }
}

// dpred (B, n) = 2 (pred - target) / n * dloss[b] (overwrites)
CPU_ISA_CLONES
static void mse_bwd(const mm_backend *be MM_UNUSED, mm_real *dpred, const mm_real *pred,
                    const mm_real *target, const mm_real *dloss, int B, size_t n) {
    const size_t total = (size_t)B * n;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < total; i++)
        dpred[i] = 2 * (pred[i] - target[i]) * (dloss[i / n] / (mm_real)n);
}

// ---------------------------------------------------------------------------------------
// glue (diffusion.h): the loops diffusion.c and diffusion_sched.c ran on the model's buffers,
// moved here with their arithmetic unchanged so that CPU results stay bit for bit.

static void time_embed(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *t, int B,
                       int C) {
    const int half = C / 2;
    for (int b = 0; b < B; b++)
        for (int k = 0; k < half; k++) {
            double arg = (double)t[b] * 1000.0 * exp(-log(10000.0) * k / half);
            out[(size_t)b * C + k] = (mm_real)cos(arg);
            out[(size_t)b * C + half + k] = (mm_real)sin(arg);
        }
}

static void text_tokens(const mm_backend *be MM_UNUSED, int32_t *tok, uint8_t *key_valid,
                        const int32_t *tokens, const uint8_t *has_text, int B, int T, int V) {
    for (int r = 0; r < B * T; r++) {
        int b = r / T, k = DATA_TOK_PAD;
        if (has_text[b]) {
            k = tokens[r];
            MM_CHECK(k >= 0 && k < V, "token %d of sample %d outside [0, %d)", k, b, V);
        }
        tok[r] = k;
        key_valid[r] = has_text[b] && k != DATA_TOK_PAD;
    }
}

CPU_ISA_CLONES
static void add_pos(const mm_backend *be MM_UNUSED, mm_real *x, const mm_real *pos, int B, int T,
                    int C) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < B * T; r++) {
        const mm_real *pe = pos + (size_t)(r % T) * C;
        mm_real *o = x + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] += pe[c];
    }
}

static void sample_keys(const mm_backend *be MM_UNUSED, uint8_t *key_valid, const uint8_t *has,
                        int B, int T) {
    for (int r = 0; r < B * T; r++) key_valid[r] = has[r / T] != 0;
}

static void cond_keys(const mm_backend *be MM_UNUSED, uint8_t *kv, const uint8_t *text,
                      const uint8_t *audio, int B, int Tt, int na) {
    const int Tc = Tt + na + 1;
    for (int b = 0; b < B; b++) {
        uint8_t *k = kv + (size_t)b * Tc;
        memcpy(k, text + (size_t)b * Tt, (size_t)Tt);
        memcpy(k + Tt, audio + (size_t)b * na, (size_t)na);
        k[Tt + na] = 1;
    }
}

// keys in order, so the mean is deterministic
CPU_ISA_CLONES
static void pool_fwd(const mm_backend *be MM_UNUSED, mm_real *pool, const mm_real *cond,
                     const uint8_t *kv, int B, int Tc, int C) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const uint8_t *k = kv + (size_t)b * Tc;
        mm_real *pb = pool + (size_t)b * C;
        int cnt = 0;
        for (int c = 0; c < C; c++) pb[c] = 0;
        for (int j = 0; j < Tc; j++) {
            if (!k[j]) continue;
            const mm_real *cj = cond + ((size_t)b * Tc + j) * C;
            for (int c = 0; c < C; c++) pb[c] += cj[c];
            cnt++;
        }
        for (int c = 0; c < C; c++) pb[c] /= (mm_real)cnt;
    }
}

CPU_ISA_CLONES
static void pool_bwd(const mm_backend *be MM_UNUSED, mm_real *dcond, const mm_real *dpool,
                     const uint8_t *kv, int B, int Tc, int C) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const uint8_t *k = kv + (size_t)b * Tc;
        int cnt = 0;
        for (int j = 0; j < Tc; j++) cnt += k[j] != 0;
        const mm_real *dp = dpool + (size_t)b * C;
        for (int j = 0; j < Tc; j++) {
            if (!k[j]) continue;
            mm_real *d = dcond + ((size_t)b * Tc + j) * C;
            for (int c = 0; c < C; c++) d[c] += dp[c] / (mm_real)cnt;
        }
    }
}

// each task owns a block of columns and adds the samples in order
CPU_ISA_CLONES
static void pos_bwd(const mm_backend *be MM_UNUSED, mm_real *g, const mm_real *dx, size_t stride,
                    int B, int T, int C) {
    enum { CB = 32 };
    const int ncb = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int cb = 0; cb < ncb; cb++) {
        int c0 = cb * CB, n = C - c0 < CB ? C - c0 : CB;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const mm_real *d = dx + (size_t)b * stride + (size_t)t * C + c0;
                mm_real *gp = g + (size_t)t * C + c0;
#pragma omp simd
                for (int c = 0; c < n; c++) gp[c] += d[c];
            }
    }
}

static void make_pair(const mm_backend *be MM_UNUSED, mm_real *x_t, mm_real *target,
                      const mm_real *x0, const mm_real *eps, const double *coef, int flow, int B,
                      size_t n) {
    for (int b = 0; b < B; b++) {
        const double a = coef[2 * b], s = coef[2 * b + 1];
        const mm_real *x0b = x0 + (size_t)b * n, *eb = eps + (size_t)b * n;
        mm_real *xb = x_t + (size_t)b * n, *tb = target + (size_t)b * n;
        for (size_t i = 0; i < n; i++) {
            xb[i] = (mm_real)(a * x0b[i] + s * eb[i]);
            tb[i] = flow ? eb[i] - x0b[i] : eb[i];
        }
    }
}

static void guide(const mm_backend *be MM_UNUSED, mm_real *pred, const mm_real *upred, mm_real g,
                  size_t n) {
    for (size_t i = 0; i < n; i++) pred[i] = upred[i] + g * (pred[i] - upred[i]);
}

static void euler(const mm_backend *be MM_UNUSED, mm_real *x, const mm_real *v, mm_real dt,
                  size_t n) {
    for (size_t j = 0; j < n; j++) x[j] += dt * v[j];
}

static mm_real clip1(mm_real v) {
    return v < (mm_real)-1 ? (mm_real)-1 : v > (mm_real)1 ? (mm_real)1 : v;
}

static void ddim(const mm_backend *be MM_UNUSED, mm_real *x, const mm_real *eps, double inv_sa,
                 double s1, double sp, double sp1, size_t n) {
    for (size_t j = 0; j < n; j++) {
        mm_real x0 = clip1((mm_real)(((double)x[j] - s1 * (double)eps[j]) * inv_sa));
        x[j] = (mm_real)(sp * (double)x0 + sp1 * (double)eps[j]);
    }
}

static void clip(const mm_backend *be MM_UNUSED, mm_real *x, size_t n) {
    for (size_t j = 0; j < n; j++) x[j] = clip1(x[j]);
}

CPU_ISA_CLONES
static void xpred(const mm_backend *be MM_UNUSED, mm_real *y, const mm_real *x_t, const mm_real *t,
                  int bwd, int B, size_t n) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const mm_real inv = 1 / (t[b] > DIT_XPRED_TMIN ? t[b] : DIT_XPRED_TMIN);
        mm_real *yb = y + (size_t)b * n;
        const mm_real *xb = x_t + (size_t)b * n;
        if (bwd)
            for (size_t j = 0; j < n; j++) yb[j] = -yb[j] * inv;
        else
            for (size_t j = 0; j < n; j++) yb[j] = (xb[j] - yb[j]) * inv;
    }
}

// the transformer's token rows without a prefix (the same loops, so the same sums)
static void text_embed_fwd(const mm_backend *be, mm_real *x0, uint8_t *key_valid,
                           const mm_real *wte, const mm_real *tpos, const int32_t *tokens, int B,
                           int T, int C, int V) {
    model_cpu_embed_fwd(be, x0, key_valid, NULL, NULL, NULL, NULL, wte, tpos, tokens, T, NULL,
                        NULL, B, T, 0, 0, C, V);
}

static void text_embed_bwd(const mm_backend *be, mm_real *g_wte, mm_real *g_tpos,
                           const mm_real *dx0, const int32_t *tokens, int B, int T, int C,
                           int V) {
    model_cpu_embed_bwd(be, NULL, NULL, g_wte, g_tpos, dx0, tokens, B, T, 0, 0, C, V);
}

const dit_ops dit_ops_cpu = {
    .name = "cpu",
    .silu_fwd = silu_fwd,
    .silu_bwd = silu_bwd,
    .modulate_fwd = modulate_fwd,
    .ln_modulate_fwd = ln_modulate_fwd,
    .modulate_bwd = modulate_bwd,
    .modulate_ln_bwd = modulate_ln_bwd,
    .gated_add_fwd = gated_add_fwd,
    .gated_add_bwd = gated_add_bwd,
    .xattn_fwd = xattn_fwd,
    .xattn_bwd = xattn_bwd,
    .mse_fwd = mse_fwd,
    .mse_bwd = mse_bwd,
    .time_embed = time_embed,
    .text_tokens = text_tokens,
    .add_pos = add_pos,
    .sample_keys = sample_keys,
    .cond_keys = cond_keys,
    .pool_fwd = pool_fwd,
    .pool_bwd = pool_bwd,
    .pos_bwd = pos_bwd,
    .make_pair = make_pair,
    .guide = guide,
    .euler = euler,
    .ddim = ddim,
    .clip = clip,
    .xpred = xpred,
    .text_embed_fwd = text_embed_fwd,
    .text_embed_bwd = text_embed_bwd,
};
