// ops_cuda.cu: the CUDA backend of the ops table (model.h), the device twin of ops_cpu.c, so
// that the transformer runs unchanged on a GPU. Matmuls and the products inside attention go
// to cuBLAS (fp32, or bf16 inputs with fp32 accumulation when the context says so); the rest
// are memory-bound kernels: one warp per row for layernorm and the attention softmax, one
// block per row for the cross-entropy over a vocabulary, grid-stride loops for elementwise
// ops. Same semantics as the CPU ops, including the accumulating (+=) backward ops and the
// attention mask (prefix bidirectional, causal text, key_valid, zero rows for queries with
// no allowed key).
//
// Determinism: no float atomics. The bias, gain and layernorm-bias gradients are column sums
// over rows, done in two passes (cuda_internal.h cu_colsum: fixed chunks of rows summed in
// order, then the chunks in order), so they are the same bits run after run.
//
// Arithmetic follows ops_cpu.c expression for expression where it matters (layernorm's two-
// pass variance, GELU as x * sigmoid(2u), xent's max-shifted log-sum-exp) with CUDA's IEEE
// expf/logf/sqrtf and division (no fast-math), so results agree with the CPU to rounding.
#include "cuda_internal.h"

// ---------------------------------------------------------------------------------------
// matmul

// out (N, OC) rows = bias (OC): one block per row (grid-stride), threads along the row
__global__ void k_fill_rows(float *out, const float *bias, int N, int OC) {
    for (int r = blockIdx.x; r < N; r += gridDim.x)
        for (int c = threadIdx.x; c < OC; c += blockDim.x) out[(size_t)r * OC + c] = bias[c];
}

// out (N, OC) = inp (N, IC) @ w^T (OC, IC) + bias: the bias is written first and the GEMM
// accumulates on it (beta = 1), as on the CPU.
static void matmul_fwd(float *out, const float *inp, const float *w, const float *bias, int N,
                       int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    cuda_ctx *c = cuda_ctx_current();
    float beta = 0;
    if (bias) {
        CU_LAUNCH(k_fill_rows, cu_row_blocks(N), CU_THREADS, c->stream, out, bias, N, OC);
        CU_CHECK_LAUNCH("matmul bias");
        beta = 1;
    }
    if (c->precision == CUDA_FP32) {
        cu_gemm(c, 0, 1, N, OC, IC, 1, inp, IC, 0, w, IC, 0, beta, out, OC, 0, 1);
        return;
    }
    cu_carver cv = {NULL, 0};
    cu_carve(&cv, (size_t)N * IC * sizeof(__nv_bfloat16));
    cu_carve(&cv, (size_t)OC * IC * sizeof(__nv_bfloat16));
    cv.base = (char *)cuda_scratch(c, cv.off);
    cv.off = 0;
    __nv_bfloat16 *inp16 = (__nv_bfloat16 *)cu_carve(&cv, (size_t)N * IC * sizeof(__nv_bfloat16));
    __nv_bfloat16 *w16 = (__nv_bfloat16 *)cu_carve(&cv, (size_t)OC * IC * sizeof(__nv_bfloat16));
    cu_to_bf16(c, inp16, inp, (size_t)N * IC);
    cu_to_bf16(c, w16, w, (size_t)OC * IC);
    cu_gemm_bf16(c, 0, 1, N, OC, IC, 1, inp16, IC, w16, IC, beta, out, OC);
}

// one column of rows: dbias
struct colsum_rows {
    enum { K = 1 };
    const float *x;
    int C;
    __device__ void operator()(int, int r, int c, float *v) const { v[0] = x[(size_t)r * C + c]; }
};

// dinp (N, IC) += dout (N, OC) @ w (OC, IC); dw (OC, IC) += dout^T @ inp; dbias += column
// sums of dout. dinp and dbias may be NULL.
static void matmul_bwd(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                       const float *w, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    cuda_ctx *c = cuda_ctx_current();
    if (c->precision == CUDA_FP32) {
        if (dinp) cu_gemm(c, 0, 0, N, IC, OC, 1, dout, OC, 0, w, IC, 0, 1, dinp, IC, 0, 1);
        cu_gemm(c, 1, 0, OC, IC, N, 1, dout, OC, 0, inp, IC, 0, 1, dw, IC, 0, 1);
    } else {
        const size_t sz = sizeof(__nv_bfloat16);
        cu_carver cv = {NULL, 0};
        cu_carve(&cv, (size_t)N * OC * sz);
        cu_carve(&cv, (size_t)N * IC * sz);
        if (dinp) cu_carve(&cv, (size_t)OC * IC * sz);
        cv.base = (char *)cuda_scratch(c, cv.off);
        cv.off = 0;
        __nv_bfloat16 *dout16 = (__nv_bfloat16 *)cu_carve(&cv, (size_t)N * OC * sz);
        __nv_bfloat16 *inp16 = (__nv_bfloat16 *)cu_carve(&cv, (size_t)N * IC * sz);
        cu_to_bf16(c, dout16, dout, (size_t)N * OC);
        cu_to_bf16(c, inp16, inp, (size_t)N * IC);
        if (dinp) {
            __nv_bfloat16 *w16 = (__nv_bfloat16 *)cu_carve(&cv, (size_t)OC * IC * sz);
            cu_to_bf16(c, w16, w, (size_t)OC * IC);
            cu_gemm_bf16(c, 0, 0, N, IC, OC, 1, dout16, OC, w16, IC, 1, dinp, IC);
        }
        cu_gemm_bf16(c, 1, 0, OC, IC, N, 1, dout16, OC, inp16, IC, 1, dw, IC);
    }
    // after the GEMMs: cu_colsum takes the scratch the bf16 copies were in
    if (dbias) cu_colsum(c, colsum_rows{dout, OC}, 1, N, OC, dbias, NULL, 0);
}

// ---------------------------------------------------------------------------------------
// layernorm (eps 1e-5, biased variance, two passes as on the CPU): one warp per row

enum { ROWS_PER_BLOCK = CU_THREADS / CU_WARP };

static unsigned row_blocks(int rows) {
    return (unsigned)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
}

__global__ void k_layernorm_fwd(float *out, float *mean, float *rstd, const float *x,
                                const float *g, const float *b, int N, int C) {
    const int r = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (r >= N) return;  // the whole warp: the shuffles below see every lane
    const float *xr = x + (size_t)r * C;
    float *o = out + (size_t)r * C;
    float s = 0;
    for (int c = lane; c < C; c += CU_WARP) s += xr[c];
    const float m = warp_sum(s) / C;
    float v = 0;
    for (int c = lane; c < C; c += CU_WARP) v += (xr[c] - m) * (xr[c] - m);
    const float rs = 1 / sqrtf(warp_sum(v) / C + 1e-5f);
    for (int c = lane; c < C; c += CU_WARP) o[c] = (xr[c] - m) * rs * g[c] + b[c];
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

static void layernorm_fwd(float *out, float *mean, float *rstd, const float *x, const float *g,
                          const float *b, int N, int C) {
    if (N <= 0) return;
    cuda_ctx *c = cuda_ctx_current();
    CU_LAUNCH(k_layernorm_fwd, row_blocks(N), CU_THREADS, c->stream, out, mean, rstd, x, g, b, N,
              C);
    CU_CHECK_LAUNCH("layernorm_fwd");
}

// dx += (dout g - mean(dout g) - xhat mean(dout g xhat)) rstd, one warp per row
__global__ void k_layernorm_bwd_dx(float *dx, const float *dout, const float *x, const float *g,
                                   const float *mean, const float *rstd, int N, int C) {
    const int r = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (r >= N) return;
    const float *xr = x + (size_t)r * C, *dr = dout + (size_t)r * C;
    float *dxr = dx + (size_t)r * C;
    const float m = mean[r], rs = rstd[r];
    float s1 = 0, s2 = 0;
    for (int c = lane; c < C; c += CU_WARP) {
        const float dn = dr[c] * g[c];
        s1 += dn;
        s2 += dn * (xr[c] - m) * rs;
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    for (int c = lane; c < C; c += CU_WARP) {
        const float xh = (xr[c] - m) * rs;
        dxr[c] += (dr[c] * g[c] - s1 - xh * s2) * rs;
    }
}

// dg += dout * xhat, db += dout
struct colsum_ln {
    enum { K = 2 };
    const float *dout, *x, *mean, *rstd;
    int C;
    __device__ void operator()(int, int r, int c, float *v) const {
        const size_t i = (size_t)r * C + c;
        const float xh = (x[i] - mean[r]) * rstd[r];
        v[0] = dout[i] * xh;
        v[1] = dout[i];
    }
};

static void layernorm_bwd(float *dx, float *dg, float *db, const float *dout, const float *x,
                          const float *g, const float *mean, const float *rstd, int N, int C) {
    if (N <= 0) return;
    cuda_ctx *c = cuda_ctx_current();
    cu_colsum(c, colsum_ln{dout, x, mean, rstd, C}, 1, N, C, dg, db, 0);
    CU_LAUNCH(k_layernorm_bwd_dx, row_blocks(N), CU_THREADS, c->stream, dx, dout, x, g, mean,
              rstd, N, C);
    CU_CHECK_LAUNCH("layernorm_bwd");
}

// ---------------------------------------------------------------------------------------
// GELU (tanh approximation as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)), add

#define GELU_K 0.7978845608028654f
#define GELU_A 0.044715f

__global__ void k_gelu_fwd(float *out, const float *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        const float u = GELU_K * (v + GELU_A * v * v * v);
        out[i] = v / (1 + expf(-2 * u));
    }
}

__global__ void k_gelu_bwd(float *dx, const float *x, const float *dout, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        const float u = GELU_K * (v + GELU_A * v * v * v);
        const float s = 1 / (1 + expf(-2 * u));
        const float du = GELU_K * (1 + 3 * GELU_A * v * v);
        dx[i] += (s + 2 * v * s * (1 - s) * du) * dout[i];
    }
}

__global__ void k_add(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

static void gelu_fwd(float *out, const float *x, size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cuda_ctx_current();
    CU_LAUNCH(k_gelu_fwd, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, out, x, n);
    CU_CHECK_LAUNCH("gelu_fwd");
}

static void gelu_bwd(float *dx, const float *x, const float *dout, size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cuda_ctx_current();
    CU_LAUNCH(k_gelu_bwd, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, dx, x, dout, n);
    CU_CHECK_LAUNCH("gelu_bwd");
}

static void add(float *out, const float *a, const float *b, size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cuda_ctx_current();
    CU_LAUNCH(k_add, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, out, a, b, n);
    CU_CHECK_LAUNCH("add");
}

// ---------------------------------------------------------------------------------------
// attention core (cuda_internal.h), shared with the cross-attention of ops_dit_cuda.cu:
// q k^T and att v as strided-batched SGEMMs over (b, h), the masked softmax in between.

// In place over the scores (rows = B * NH * Tq rows of Tk): masked softmax, one warp per row.
// Query i of sample b may see key j iff key_valid[b*Tk + j] and j < lim(i); lim = Tk when
// P < 0, else P for a prefix query (i < P) and i + 1 for a causal one.
__global__ void k_attn_softmax(float *att, const uint8_t *key_valid, int rows, int NH, int Tq,
                               int Tk, int P) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (row >= rows) return;
    const int i = row % Tq, b = row / (NH * Tq);
    int lim = P < 0 ? Tk : i < P ? P : i + 1;
    if (lim > Tk) lim = Tk;
    const uint8_t *valid = key_valid + (size_t)b * Tk;
    float *a = att + (size_t)row * Tk;
    float mx = -INFINITY;
    for (int j = lane; j < lim; j += CU_WARP)
        if (valid[j]) mx = fmaxf(mx, a[j]);
    mx = warp_max(mx);
    if (mx == -INFINITY) {  // no allowed key: a zero row
        for (int j = lane; j < Tk; j += CU_WARP) a[j] = 0;
        return;
    }
    float s = 0;
    for (int j = lane; j < Tk; j += CU_WARP) {
        const float e = j < lim && valid[j] ? expf(a[j] - mx) : 0.0f;
        a[j] = e;
        s += e;
    }
    const float inv = 1 / warp_sum(s);
    for (int j = lane; j < Tk; j += CU_WARP) a[j] *= inv;
}

// ds (rows, Tk) = scale * p * (dp - sum_j p dp), in place over dp; 0 wherever p is.
__global__ void k_attn_softmax_bwd(float *ds, const float *att, int rows, int Tk, float scale) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (row >= rows) return;
    const float *p = att + (size_t)row * Tk;
    float *d = ds + (size_t)row * Tk;
    float dot = 0;
    for (int j = lane; j < Tk; j += CU_WARP) dot += p[j] * d[j];
    dot = warp_sum(dot);
    for (int j = lane; j < Tk; j += CU_WARP) d[j] = scale * p[j] * (d[j] - dot);
}

void cu_attn_fwd(cuda_ctx *c, float *att, float *o, const float *q, const float *k,
                 const float *v, const uint8_t *key_valid, int B, int Tq, int Tk, int P, int NH,
                 int HD) {
    const int BNH = B * NH;
    const long long sq = (long long)Tq * HD, sk = (long long)Tk * HD, sa = (long long)Tq * Tk;
    const float scale = 1 / sqrtf((float)HD);
    cu_gemm(c, 0, 1, Tq, Tk, HD, scale, q, HD, sq, k, HD, sk, 0, att, Tk, sa, BNH);
    const int rows = BNH * Tq;
    CU_LAUNCH(k_attn_softmax, row_blocks(rows), CU_THREADS, c->stream, att, key_valid, rows, NH,
              Tq, Tk, P);
    CU_CHECK_LAUNCH("attention softmax");
    cu_gemm(c, 0, 0, Tq, HD, Tk, 1, att, Tk, sa, v, HD, sk, 0, o, HD, sq, BNH);
}

void cu_attn_bwd(cuda_ctx *c, float *dq, float *dk, float *dv, float *ds, const float *dout,
                 const float *q, const float *k, const float *v, const float *att, int B,
                 int Tq, int Tk, int NH, int HD) {
    const int BNH = B * NH;
    const long long sq = (long long)Tq * HD, sk = (long long)Tk * HD, sa = (long long)Tq * Tk;
    const float scale = 1 / sqrtf((float)HD);
    // dprobs = dout v^T ; dv = att^T dout
    cu_gemm(c, 0, 1, Tq, Tk, HD, 1, dout, HD, sq, v, HD, sk, 0, ds, Tk, sa, BNH);
    cu_gemm(c, 1, 0, Tk, HD, Tq, 1, att, Tk, sa, dout, HD, sq, 0, dv, HD, sk, BNH);
    const int rows = BNH * Tq;
    CU_LAUNCH(k_attn_softmax_bwd, row_blocks(rows), CU_THREADS, c->stream, ds, att, rows, Tk,
              scale);
    CU_CHECK_LAUNCH("attention softmax backward");
    // scores = scale q k^T (scale folded into ds): dq = ds k ; dk = ds^T q
    cu_gemm(c, 0, 0, Tq, HD, Tk, 1, ds, Tk, sa, k, HD, sk, 0, dq, HD, sq, BNH);
    cu_gemm(c, 1, 0, Tk, HD, Tq, 1, ds, Tk, sa, q, HD, sq, 0, dk, HD, sk, BNH);
}

// ---------------------------------------------------------------------------------------
// self-attention on packed qkv (B, T, 3, NH, HD): split into head-major q, k, v in scratch,
// run the core, merge back.

static void attention_fwd(float *out, float *att, const float *qkv, const uint8_t *key_valid,
                          int B, int T, int P, int NH, int HD) {
    MM_CHECK(P >= 0 && P <= T, "attention: prefix %d outside [0, T=%d]", P, T);
    if (B <= 0 || T <= 0) return;
    cuda_ctx *c = cuda_ctx_current();
    const int C = NH * HD;
    const size_t n = (size_t)B * T * C * sizeof(float);
    float *ws = (float *)cuda_scratch(c, 4 * cu_round_up(n, 256));
    const size_t step = cu_round_up(n, 256) / sizeof(float);
    float *q = ws, *k = ws + step, *v = ws + 2 * step, *o = ws + 3 * step;
    cu_heads_split(c, q, qkv, B, T, NH, HD, 3 * C, 0);
    cu_heads_split(c, k, qkv, B, T, NH, HD, 3 * C, C);
    cu_heads_split(c, v, qkv, B, T, NH, HD, 3 * C, 2 * C);
    cu_attn_fwd(c, att, o, q, k, v, key_valid, B, T, T, P, NH, HD);
    cu_heads_merge(c, out, o, B, T, NH, HD, C, 0, 0);
}

static void attention_bwd(float *dqkv, const float *dout, const float *qkv, const float *att,
                          int B, int T, int P, int NH, int HD) {
    MM_CHECK(P >= 0 && P <= T, "attention: prefix %d outside [0, T=%d]", P, T);
    if (B <= 0 || T <= 0) return;
    cuda_ctx *c = cuda_ctx_current();
    const int C = NH * HD;
    const size_t n = cu_round_up((size_t)B * T * C * sizeof(float), 256);
    const size_t nds = cu_round_up((size_t)B * NH * T * T * sizeof(float), 256);
    float *ws = (float *)cuda_scratch(c, 7 * n + nds);
    const size_t step = n / sizeof(float);
    float *q = ws, *k = q + step, *v = k + step, *dout_h = v + step, *dq = dout_h + step,
          *dk = dq + step, *dv = dk + step, *ds = dv + step;
    cu_heads_split(c, q, qkv, B, T, NH, HD, 3 * C, 0);
    cu_heads_split(c, k, qkv, B, T, NH, HD, 3 * C, C);
    cu_heads_split(c, v, qkv, B, T, NH, HD, 3 * C, 2 * C);
    cu_heads_split(c, dout_h, dout, B, T, NH, HD, C, 0);
    cu_attn_bwd(c, dq, dk, dv, ds, dout_h, q, k, v, att, B, T, T, NH, HD);
    cu_heads_merge(c, dqkv, dq, B, T, NH, HD, 3 * C, 0, 1);
    cu_heads_merge(c, dqkv, dk, B, T, NH, HD, 3 * C, C, 1);
    cu_heads_merge(c, dqkv, dv, B, T, NH, HD, 3 * C, 2 * C, 1);
}

// ---------------------------------------------------------------------------------------
// softmax cross-entropy: one block per row

__global__ void k_xent_fwd(float *loss, float *probs, const float *logits, const int32_t *targets,
                           int V, int *flag) {
    const int row = blockIdx.x;
    const float *l = logits + (size_t)row * V;
    float *p = probs + (size_t)row * V;
    int t = targets[row];
    if (t < -1 || t >= V) {  // corrupt data: recorded for cuda_ctx_sync, the row ignored
        if (threadIdx.x == 0) cu_flag(flag, CU_FLAG_XENT_TARGET, t, row);
        t = -1;
    }
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, l[j]);
    mx = block_max(mx);
    float s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float e = expf(l[j] - mx);
        p[j] = e;
        s += e;
    }
    s = block_sum(s);
    const float inv = 1 / s;
    for (int j = threadIdx.x; j < V; j += blockDim.x) p[j] *= inv;  // each thread its own j
    if (threadIdx.x == 0) loss[row] = t < 0 ? 0.0f : logf(s) - (l[t] - mx);
}

static void xent_fwd(float *loss, float *probs, const float *logits, const int32_t *targets, int N,
                     int V) {
    if (N <= 0) return;
    cuda_ctx *c = cuda_ctx_current();
    CU_LAUNCH(k_xent_fwd, (unsigned)N, CU_THREADS, c->stream, loss, probs, logits, targets, V,
              c->flag);
    CU_CHECK_LAUNCH("xent_fwd");
}

// dlogits (N, V) = (probs - onehot) * dloss[row]; 0 rows when ignored (overwrites). One
// block per row (grid-stride over rows), threads along the row.
__global__ void k_xent_bwd(float *dlogits, const float *probs, const int32_t *targets,
                           const float *dloss, int N, int V, int *flag) {
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const int t = targets[row];
        const float *p = probs + (size_t)row * V;
        float *d = dlogits + (size_t)row * V;
        if (t < 0 || t >= V) {
            if (t != -1 && threadIdx.x == 0) cu_flag(flag, CU_FLAG_XENT_TARGET, t, row);
            for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = 0;
            continue;
        }
        const float s = dloss[row];
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float v = p[j] * s;
            if (j == t) v -= s;
            d[j] = v;
        }
    }
}

static void xent_bwd(float *dlogits, const float *probs, const int32_t *targets,
                     const float *dloss, int N, int V) {
    if (N <= 0 || V <= 0) return;
    cuda_ctx *c = cuda_ctx_current();
    CU_LAUNCH(k_xent_bwd, cu_row_blocks(N), CU_THREADS, c->stream, dlogits, probs, targets, dloss,
              N, V, c->flag);
    CU_CHECK_LAUNCH("xent_bwd");
}

const model_ops model_ops_cuda = {
    .name = "cuda",
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
