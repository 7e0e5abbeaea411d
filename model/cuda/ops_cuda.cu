// ops_cuda.cu: the CUDA backend of the ops table (model.h), the device twin of ops_cpu.c, so
// that the transformer runs unchanged on a GPU. Matmuls go to cuBLAS (fp32, or bf16 inputs
// with fp32 accumulation when the context says so); self-attention is a fused flash-attention
// forward and backward of our own (fp32, tiled in shared memory, saving the log-sum-exp of
// each row instead of the probabilities; in bf16 the tensor-core kernels of
// ops_flash_tc_cuda.cu), or the cuBLAS core below, which the cross-attention of the diffusion
// model shares where the tensor-core kernels do not take it. The rest are memory-bound kernels: one warp
// per row for layernorm, one block per row for the fused cross-entropy over a vocabulary,
// grid-stride loops for elementwise ops. Same semantics as the CPU ops, including the
// accumulating (+=) backward ops and the attention mask (prefix bidirectional, causal text,
// key_valid, zero rows for queries with no allowed key).
//
// Determinism: no float atomics. The bias, gain and layernorm-bias gradients are column sums
// over rows, done in two passes (cuda_internal.h cu_colsum: fixed chunks of rows summed in
// order, then the chunks in order), so they are the same bits run after run.
//
// Arithmetic follows ops_cpu.c expression for expression where it matters (layernorm's two-
// pass variance, GELU as x * sigmoid(2u), xent's max-shifted log-sum-exp) with CUDA's IEEE
// expf/logf/sqrtf and division (no fast-math), so results agree with the CPU to rounding.
#include "../model_drop.h"
#include "cuda_internal.h"

// ---------------------------------------------------------------------------------------
// matmul

// out (N, OC) rows = bias (OC): one block per row (grid-stride), threads along the row
__global__ void k_fill_rows(float *out, const float *bias, int N, int OC) {
    for (int r = blockIdx.x; r < N; r += gridDim.x)
        for (int c = threadIdx.x; c < OC; c += blockDim.x) out[(size_t)r * OC + c] = bias[c];
}

// The model's parameters in bf16 (cuda.h p16): one conversion per forward; the copy stays
// valid until the backend writes into them (cuda_params16_touch).
static void params_ready(const mm_backend *be, const float *params, size_t n) {
    cuda_ctx *c = cu_ctx(be);
    if (c->precision != CUDA_BF16 || n == 0) return;
    if (n > c->p16_cap) {
        cuda_free(c->p16);  // cudaFree waits for the work that may still read it
        c->p16 = cuda_alloc(c, n * sizeof(__nv_bfloat16));
        c->p16_cap = n;
    }
    cu_to_bf16(c, (__nv_bfloat16 *)c->p16, params, n);
    c->p16_src = params;
    c->p16_n = n;
    c->p16_valid = 1;
}

// w (n) in the context's valid bf16 parameter copy, or NULL
static const __nv_bfloat16 *params16(const cuda_ctx *c, const float *w, size_t n) {
    const uintptr_t a = (uintptr_t)w, lo = (uintptr_t)c->p16_src;
    if (!c->p16_valid || a < lo || a + n * sizeof(float) > lo + c->p16_n * sizeof(float))
        return NULL;
    return (const __nv_bfloat16 *)c->p16 + (w - c->p16_src);
}

// bf16 copies of a matmul's operands: inp in scratch; w from the parameter copy, or in
// scratch when it is not there
static void bf16_operands(cuda_ctx *c, const float *inp, const float *w, int N, int IC, int OC,
                          __nv_bfloat16 **inp16, const __nv_bfloat16 **w16) {
    const __nv_bfloat16 *pw = params16(c, w, (size_t)OC * IC);
    __nv_bfloat16 *cw = NULL;
    cu_carver cv = {NULL, 0};
    for (int pass = 0; pass < 2; pass++) {  // count, then carve
        *inp16 = (__nv_bfloat16 *)cu_carve(&cv, (size_t)N * IC * sizeof(__nv_bfloat16));
        if (!pw) cw = (__nv_bfloat16 *)cu_carve(&cv, (size_t)OC * IC * sizeof(__nv_bfloat16));
        if (pass == 0) cv = {(char *)cuda_scratch(c, cv.off), 0};
    }
    cu_to_bf16(c, *inp16, inp, (size_t)N * IC);
    if (!pw) cu_to_bf16(c, cw, w, (size_t)OC * IC);
    *w16 = pw ? pw : cw;
}

// act16: the bf16 weight (OC, IC) and bias (OC, may be NULL) of a matmul whose activations
// are bf16 already: from the parameter copy, or converted into scratch. A bias is converted
// also when its place in the copy is not 16-byte aligned, as cuBLASLt wants its epilogue
// vectors. The scratch stays valid until the next cuda_scratch call.
static void bf16_params(cuda_ctx *c, const float *w, const float *bias, int IC, int OC,
                        const cu_bf16 **w16, const cu_bf16 **b16) {
    const cu_bf16 *pw = params16(c, w, (size_t)OC * IC);
    const cu_bf16 *pb = bias ? params16(c, bias, (size_t)OC) : NULL;
    if (pb && (uintptr_t)pb % 16 != 0) pb = NULL;
    cu_bf16 *cw = NULL, *cb = NULL;
    cu_carver cv = {NULL, 0};
    for (int pass = 0; pass < 2; pass++) {  // count, then carve
        if (!pw) cw = (cu_bf16 *)cu_carve(&cv, (size_t)OC * IC * sizeof(cu_bf16));
        if (bias && !pb) cb = (cu_bf16 *)cu_carve(&cv, (size_t)OC * sizeof(cu_bf16));
        if (pass == 0 && cv.off) cv = {(char *)cuda_scratch(c, cv.off), 0};
    }
    if (cw) cu_to_bf16(c, cw, w, (size_t)OC * IC);
    if (cb) cu_to_bf16(c, cb, bias, (size_t)OC);
    *w16 = pw ? pw : cw;
    *b16 = pb ? pb : cb;
}

__global__ void k_fill_rows16(cu_bf16 *out, const cu_bf16 *bias, int N, int OC) {
    for (int r = blockIdx.x; r < N; r += gridDim.x)
        for (int c = threadIdx.x; c < OC; c += blockDim.x) out[(size_t)r * OC + c] = bias[c];
}

// act16: out (N, OC) = inp @ w^T + bias, inp and out bf16, the bias (bf16) in cuBLASLt's
// epilogue; with gelu_pre, gelu_pre = that and out = its GELU (returns -1 with nothing done
// when cuBLASLt has no algorithm for the fused GELU). Without an epilogue, the bias rows are
// written first and the GEMM adds on them (one rounding of the bias, as in the epilogue).
static int matmul_fwd16(cuda_ctx *c, cu_bf16 *out, cu_bf16 *gelu_pre, const cu_bf16 *inp,
                        const float *w, const float *bias, int N, int IC, int OC) {
    const cu_bf16 *w16, *b16;
    bf16_params(c, w, bias, IC, OC, &w16, &b16);
    if ((b16 || gelu_pre) && IC > 0 && cu_gemm_lt(c, N, OC, IC, inp, w16, b16, gelu_pre, out) == 0)
        return 0;
    if (gelu_pre) return -1;
    if (b16) {
        CU_LAUNCH(k_fill_rows16, cu_row_blocks(N), CU_THREADS, c->stream, out, b16, N, OC);
        CU_CHECK_LAUNCH("matmul bias");
    }
    cu_gemm(c, 0, 1, N, OC, IC, 1, inp, IC, 0, w16, IC, 0, b16 ? 1.0f : 0.0f, out, OC, 0, 1);
    return 0;
}

// out (N, OC) = inp (N, IC) @ w^T (OC, IC) + bias. In bf16 the bias rides in cuBLASLt's
// epilogue; otherwise (fp32, or no algorithm from cuBLASLt) it is written first and the GEMM
// accumulates on it (beta = 1), as on the CPU.
static void matmul_fwd(const mm_backend *be, float *out, const float *inp, const float *w,
                       const float *bias, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    if (c->act16) {
        matmul_fwd16(c, (cu_bf16 *)out, NULL, (const cu_bf16 *)inp, w, bias, N, IC, OC);
        return;
    }
    __nv_bfloat16 *inp16 = NULL;
    const __nv_bfloat16 *w16 = NULL;
    if (c->precision == CUDA_BF16) {
        bf16_operands(c, inp, w, N, IC, OC, &inp16, &w16);
        if (bias && IC > 0 && cu_gemm_lt(c, N, OC, IC, inp16, w16, bias, NULL, out) == 0) return;
    }
    float beta = 0;
    if (bias) {
        CU_LAUNCH(k_fill_rows, cu_row_blocks(N), CU_THREADS, c->stream, out, bias, N, OC);
        CU_CHECK_LAUNCH("matmul bias");
        beta = 1;
    }
    if (c->precision == CUDA_FP32)
        cu_gemm(c, 0, 1, N, OC, IC, 1, inp, IC, 0, w, IC, 0, beta, out, OC, 0, 1);
    else
        cu_gemm(c, 0, 1, N, OC, IC, 1, inp16, IC, 0, w16, IC, 0, beta, out, OC, 0, 1);
}

// one column of rows: dbias
template <typename A>
struct colsum_rows {
    enum { K = 1 };
    const A *x;
    int C;
    __device__ void operator()(int, int r, int c, float *v) const {
        v[0] = cu_f(x[(size_t)r * C + c]);
    }
};

// matmul_bwd's GEMMs in bf16 from one set of bf16 copies: dinp (may be NULL) += dout @ w,
// or with pre, dinp = (dout @ w) * GELU'(pre) through cuBLASLt's DGELU epilogue; then dw +=
// dout^T @ inp. Returns -1 having done no GEMM when pre is given and cuBLASLt has no
// algorithm for it (the caller takes the unfused path).
//
// The rows go in passes of at most ctx->matmul_chunk_bytes of bf16 copies of dout and inp,
// so that the scratch stays bounded: at GPT-2 size the classifier's dout (the logits'
// gradient) would take 0.8 GB in one piece, at the moment the activations peak. A shape that
// fits runs as one pass, the same GEMMs as unsplit. The DGELU path is never split (its dout
// is C wide, and its epilogue may refuse a shape: that has to happen before any GEMM).
static int matmul_bwd_bf16(cuda_ctx *c, float *dinp, const float *pre, float *dw,
                           const float *dout, const float *inp, const float *w, int N, int IC,
                           int OC) {
    typedef __nv_bfloat16 bf16;
    const size_t row_bytes = ((size_t)OC + IC) * sizeof(bf16);
    int R = N;
    if (!pre && (size_t)N * row_bytes > c->matmul_chunk_bytes)
        R = c->matmul_chunk_bytes / row_bytes > 0 ? (int)(c->matmul_chunk_bytes / row_bytes) : 1;
    const bf16 *pw = dinp ? params16(c, w, (size_t)OC * IC) : NULL;
    bf16 *dout16, *inp16, *cw = NULL;
    cu_carver cv = {NULL, 0};
    for (int pass = 0; pass < 2; pass++) {  // count, then carve
        dout16 = (bf16 *)cu_carve(&cv, (size_t)R * OC * sizeof(bf16));
        inp16 = (bf16 *)cu_carve(&cv, (size_t)R * IC * sizeof(bf16));
        if (dinp && !pw) cw = (bf16 *)cu_carve(&cv, (size_t)OC * IC * sizeof(bf16));
        if (pass == 0) cv = {(char *)cuda_scratch(c, cv.off), 0};
    }
    if (cw) cu_to_bf16(c, cw, w, (size_t)OC * IC);
    const bf16 *w16 = pw ? pw : cw;
    for (int r0 = 0; r0 < N; r0 += R) {
        const int n = R < N - r0 ? R : N - r0;
        const size_t ro = (size_t)r0 * OC, ri = (size_t)r0 * IC;
        cu_to_bf16(c, dout16, dout + ro, (size_t)n * OC);
        if (pre) {  // n == N
            if (cu_gemm_dgelu_lt(c, N, IC, OC, dout16, w16, pre, dinp) != 0) return -1;
        } else if (dinp) {
            cu_gemm(c, 0, 0, n, IC, OC, 1, dout16, OC, 0, w16, IC, 0, 1, dinp + ri, IC, 0, 1);
        }
        cu_to_bf16(c, inp16, inp + ri, (size_t)n * IC);
        cu_gemm(c, 1, 0, OC, IC, n, 1, dout16, OC, 0, inp16, IC, 0, 1, dw, IC, 0, 1);
    }
    return 0;
}

// act16: matmul_bwd on bf16 activations, no copies: dinp (bf16, may be NULL) += dout @ w, or
// with pre (bf16), dinp = (dout @ w) * GELU'(pre) through cuBLASLt's DGELU epilogue; dw (fp32)
// += dout^T @ inp; dbias (may be NULL) += column sums of dout. Returns -1 having done nothing
// when pre is given and cuBLASLt has no algorithm for it.
static int matmul_bwd16(cuda_ctx *c, cu_bf16 *dinp, const cu_bf16 *pre, float *dw, float *dbias,
                        const cu_bf16 *dout, const cu_bf16 *inp, const float *w, int N, int IC,
                        int OC) {
    const cu_bf16 *w16 = NULL, *unused;
    if (dinp) bf16_params(c, w, NULL, IC, OC, &w16, &unused);
    if (pre) {
        if (cu_gemm_dgelu_lt(c, N, IC, OC, dout, w16, pre, dinp) != 0) return -1;
    } else if (dinp) {
        cu_gemm(c, 0, 0, N, IC, OC, 1, dout, OC, 0, w16, IC, 0, 1, dinp, IC, 0, 1);
    }
    cu_gemm(c, 1, 0, OC, IC, N, 1, dout, OC, 0, inp, IC, 0, 1, dw, IC, 0, 1);
    // after the GEMMs: cu_colsum takes the scratch the weight's copy may be in
    if (dbias) cu_colsum(c, colsum_rows<cu_bf16>{dout, OC}, 1, N, OC, dbias, NULL, 0);
    return 0;
}

// dinp (N, IC) += dout (N, OC) @ w (OC, IC); dw (OC, IC) += dout^T @ inp; dbias += column
// sums of dout. dinp and dbias may be NULL.
static void matmul_bwd(const mm_backend *be, float *dinp, float *dw, float *dbias,
                       const float *dout, const float *inp, const float *w, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    if (c->act16) {
        matmul_bwd16(c, (cu_bf16 *)dinp, NULL, dw, dbias, (const cu_bf16 *)dout,
                     (const cu_bf16 *)inp, w, N, IC, OC);
        return;
    }
    if (c->precision == CUDA_FP32) {
        if (dinp) cu_gemm(c, 0, 0, N, IC, OC, 1, dout, OC, 0, w, IC, 0, 1, dinp, IC, 0, 1);
        cu_gemm(c, 1, 0, OC, IC, N, 1, dout, OC, 0, inp, IC, 0, 1, dw, IC, 0, 1);
    } else {
        matmul_bwd_bf16(c, dinp, NULL, dw, dout, inp, w, N, IC, OC);
    }
    // after the GEMMs: cu_colsum takes the scratch the bf16 copies were in
    if (dbias) cu_colsum(c, colsum_rows<float>{dout, OC}, 1, N, OC, dbias, NULL, 0);
}

// ---------------------------------------------------------------------------------------
// layernorm (eps 1e-5, biased variance, two passes as on the CPU): one warp per row

enum { ROWS_PER_BLOCK = CU_THREADS / CU_WARP };

static unsigned row_blocks(int rows) {
    return (unsigned)((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK);
}

template <typename A>
__global__ void k_layernorm_fwd(A *out, float *mean, float *rstd, const A *x, const float *g,
                                const float *b, int N, int C) {
    const int r = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (r >= N) return;  // the whole warp: the shuffles below see every lane
    const A *xr = x + (size_t)r * C;
    A *o = out + (size_t)r * C;
    float s = 0, m;
    for (int c = lane; c < C; c += CU_WARP) s += cu_f(xr[c]);
    const float rs = cu_layernorm_rstd(xr, s, C, lane, &m);
    for (int c = lane; c < C; c += CU_WARP) o[c] = cu_a<A>((cu_f(xr[c]) - m) * rs * g[c] + b[c]);
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

static void layernorm_fwd(const mm_backend *be, float *out, float *mean, float *rstd,
                          const float *x, const float *g, const float *b, int N, int C) {
    if (N <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_layernorm_fwd<A>, row_blocks(N), CU_THREADS, c->stream, (A *)out, mean,
                        rstd, (const A *)x, g, b, N, C));
    CU_CHECK_LAUNCH("layernorm_fwd");
}

// The residual add fused in front: each lane writes its elements of the row's sum and reads
// the same ones back in the passes after (no other thread touches them, so no barrier), in
// k_layernorm_fwd's order: the same bits as add + layernorm_fwd, one launch and one pass over
// a and b fewer. In bf16 (act16) the statistics are those of the rounded sum, the res that
// the backward reads, as with the two ops.
template <typename A>
__global__ void k_add_layernorm_fwd(A *res, A *out, float *mean, float *rstd, const A *a,
                                    const A *b, const float *g, const float *beta, int N, int C) {
    const int r = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (r >= N) return;  // the whole warp: the shuffles below see every lane
    const size_t o = (size_t)r * C;
    A *xr = res + o;
    float s = 0;
    for (int c = lane; c < C; c += CU_WARP) {
        const A v = cu_a<A>(cu_f(a[o + c]) + cu_f(b[o + c]));
        xr[c] = v;
        s += cu_f(v);
    }
    float m;
    const float rs = cu_layernorm_rstd(xr, s, C, lane, &m);
    for (int c = lane; c < C; c += CU_WARP)
        out[o + c] = cu_a<A>((cu_f(xr[c]) - m) * rs * g[c] + beta[c]);
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

static void add_layernorm_fwd(const mm_backend *be, float *res, float *out, float *mean,
                              float *rstd, const float *a, const float *b, const float *g,
                              const float *beta, int N, int C) {
    if (N <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_add_layernorm_fwd<A>, row_blocks(N), CU_THREADS, c->stream, (A *)res,
                        (A *)out, mean, rstd, (const A *)a, (const A *)b, g, beta, N, C));
    CU_CHECK_LAUNCH("add_layernorm_fwd");
}

// dx += (dout g - mean(dout g) - xhat mean(dout g xhat)) rstd, one warp per row
template <typename A>
__global__ void k_layernorm_bwd_dx(A *dx, const A *dout, const A *x, const float *g,
                                   const float *mean, const float *rstd, int N, int C) {
    const int r = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (r >= N) return;
    const A *dr = dout + (size_t)r * C;
    cu_layernorm_bwd_row(dx + (size_t)r * C, x + (size_t)r * C, g, mean[r], rstd[r], C, lane,
                         [dr](int c) { return cu_f(dr[c]); });
}

// dg += dout * xhat, db += dout
template <typename A>
struct colsum_ln {
    enum { K = 2 };
    const A *dout, *x;
    const float *mean, *rstd;
    int C;
    __device__ void operator()(int, int r, int c, float *v) const {
        const size_t i = (size_t)r * C + c;
        const float xh = (cu_f(x[i]) - mean[r]) * rstd[r];
        v[0] = cu_f(dout[i]) * xh;
        v[1] = cu_f(dout[i]);
    }
};

static void layernorm_bwd(const mm_backend *be, float *dx, float *dg, float *db,
                          const float *dout, const float *x, const float *g, const float *mean,
                          const float *rstd, int N, int C) {
    if (N <= 0) return;
    MM_CHECK(!dg == !db, "layernorm_bwd: dg and db are NULL together or not at all");
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, {
        if (dg) cu_colsum(c, colsum_ln<A>{(const A *)dout, (const A *)x, mean, rstd, C}, 1, N, C,
                          dg, db, 0);
        CU_LAUNCH(k_layernorm_bwd_dx<A>, row_blocks(N), CU_THREADS, c->stream, (A *)dx,
                  (const A *)dout, (const A *)x, g, mean, rstd, N, C);
    });
    CU_CHECK_LAUNCH("layernorm_bwd");
}

// ---------------------------------------------------------------------------------------
// GELU (tanh approximation as x * sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)), add

#define GELU_K 0.7978845608028654f
#define GELU_A 0.044715f

template <typename A>
__global__ void k_gelu_fwd(A *out, const A *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = cu_f(x[i]);
        const float u = GELU_K * (v + GELU_A * v * v * v);
        out[i] = cu_a<A>(v / (1 + expf(-2 * u)));
    }
}

template <typename A>
__global__ void k_gelu_bwd(A *dx, const A *x, const A *dout, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = cu_f(x[i]);
        const float u = GELU_K * (v + GELU_A * v * v * v);
        const float s = 1 / (1 + expf(-2 * u));
        const float du = GELU_K * (1 + 3 * GELU_A * v * v);
        dx[i] = cu_a<A>(cu_f(dx[i]) + (s + 2 * v * s * (1 - s) * du) * cu_f(dout[i]));
    }
}

template <typename A>
__global__ void k_add(A *out, const A *a, const A *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = cu_a<A>(cu_f(a[i]) + cu_f(b[i]));
}

static void gelu_fwd(const mm_backend *be, float *out, const float *x, size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_gelu_fwd<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, (A *)out,
                        (const A *)x, n));
    CU_CHECK_LAUNCH("gelu_fwd");
}

static void gelu_bwd(const mm_backend *be, float *dx, const float *x, const float *dout,
                     size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_gelu_bwd<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, (A *)dx,
                        (const A *)x, (const A *)dout, n));
    CU_CHECK_LAUNCH("gelu_bwd");
}

// In bf16 cuBLASLt's GELU epilogue, when it has an algorithm for the shapes; else the two ops.
static void matmul_gelu_fwd(const mm_backend *be, float *pre, float *out, const float *inp,
                            const float *w, const float *bias, int N, int IC, int OC) {
    if (N <= 0 || OC <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    if (c->act16 && matmul_fwd16(c, (cu_bf16 *)out, (cu_bf16 *)pre, (const cu_bf16 *)inp, w, bias,
                                 N, IC, OC) == 0)
        return;
    if (!c->act16 && c->precision == CUDA_BF16 && IC > 0) {
        __nv_bfloat16 *inp16;
        const __nv_bfloat16 *w16;
        bf16_operands(c, inp, w, N, IC, OC, &inp16, &w16);
        if (cu_gemm_lt(c, N, OC, IC, inp16, w16, bias, pre, out) == 0) return;
    }
    matmul_fwd(be, pre, inp, w, bias, N, IC, OC);
    gelu_fwd(be, out, pre, (size_t)N * OC);
}

// In bf16 the GELU's derivative is the dinp GEMM's epilogue (cuBLASLt DGELU), dw from the
// same bf16 copy of dout; otherwise (fp32, or no algorithm) the two ops.
static void matmul_gelu_bwd(const mm_backend *be, float *dpre, float *dact, float *dw,
                            float *dbias, const float *dout, const float *act, const float *pre,
                            const float *w, int N, int IC, int OC) {
    if (N <= 0 || IC <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    const size_t n = (size_t)N * IC;
    if (c->act16 && OC > 0 &&
        matmul_bwd16(c, (cu_bf16 *)dpre, (const cu_bf16 *)pre, dw, dbias, (const cu_bf16 *)dout,
                     (const cu_bf16 *)act, w, N, IC, OC) == 0)
        return;
    if (!c->act16 && c->precision == CUDA_BF16 && OC > 0 &&
        matmul_bwd_bf16(c, dpre, pre, dw, dout, act, w, N, IC, OC) == 0) {
        if (dbias) cu_colsum(c, colsum_rows<float>{dout, OC}, 1, N, OC, dbias, NULL, 0);
        return;
    }
    CU_CHECK(cudaMemsetAsync(dact, 0, cu_act_bytes(c, n), c->stream));
    matmul_bwd(be, dact, dw, dbias, dout, act, w, N, IC, OC);
    CU_CHECK(cudaMemsetAsync(dpre, 0, cu_act_bytes(c, n), c->stream));
    gelu_bwd(be, dpre, pre, dact, n);
}

static void add(const mm_backend *be, float *out, const float *a, const float *b,
                size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_add<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, (A *)out,
                        (const A *)a, (const A *)b, n));
    CU_CHECK_LAUNCH("add");
}

// ---------------------------------------------------------------------------------------
// dropout: the draws of model_drop.h, the same expression as ops_cpu.c's, so both backends
// drop the same elements and scale the kept ones by the same float

// d by value for a kernel (thr 0: nothing dropped)
static model_drop drop_arg(const model_drop *d) {
    return d && d->thr ? *d : model_drop{};
}

// out[b * n + e] = x * mask * scale
template <typename A>
__global__ void k_dropout(A *out, const A *x, model_drop d, int B, size_t n) {
    const size_t total = (size_t)B * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / n, e = i % n;
        const uint64_t k = model_drop_site_key(d.keys[b], d.layer, d.place);
        out[i] = cu_a<A>(model_drop_keep(k, e, d.thr) ? cu_f(x[i]) * d.scale : 0.0f);
    }
}

static void dropout(const mm_backend *be, float *out, const float *x, const model_drop *d, int B,
                    size_t n) {
    if (B <= 0 || n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    if (!d || !d->thr) {
        if (out != x) cu_mem_copy(be, out, x, cu_act_bytes(c, (size_t)B * n));
        return;
    }
    CU_ACT(c, CU_LAUNCH(k_dropout<A>, cu_blocks((size_t)B * n, CU_THREADS), CU_THREADS, c->stream,
                        (A *)out, (const A *)x, *d, B, n));
    CU_CHECK_LAUNCH("dropout");
}

// dst (B, NH, T, T) = src * mask * scale, the mask of the self-attention probabilities (the
// element of local head h at index ((head0 + h) * T + i) * T + j, as on the CPU); in place ok
__global__ void k_attn_drop(float *dst, const float *src, model_drop d, int B, int NH, int T) {
    const size_t TT = (size_t)T * T, total = (size_t)B * NH * TT;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t bh = i / TT, b = bh / NH, h = bh % NH;
        const uint64_t k = model_drop_site_key(d.keys[b], d.layer, d.place);
        const uint64_t e = (uint64_t)(d.head0 + h) * TT + i % TT;
        dst[i] = model_drop_keep(k, e, d.thr) ? src[i] * d.scale : 0.0f;
    }
}

// ---------------------------------------------------------------------------------------
// attention core (cuda_internal.h), shared with the cross-attention of ops_dit_cuda.cu:
// q k^T and att v as strided-batched SGEMMs over (b, h), the masked softmax in between.

// In place over the scores (rows = B * NH * Tq rows of Tk): masked softmax, one warp per row.
// Query i of sample b may see key j iff key_valid[b*Tk + j] and j < lim(i); lim = Tk when
// P < 0, else P for a prefix query (i < P) and i + 1 for a causal one. att16 (NULL: none)
// gets the probabilities rounded to bf16 as well, for the product with v on tensor cores;
// with keep32 0 only att16 does (a forward whose backward recomputes them: one pass fewer).
__global__ void k_attn_softmax(float *att, __nv_bfloat16 *att16, int keep32,
                               const uint8_t *key_valid, int rows, int NH, int Tq, int Tk, int P) {
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
    __nv_bfloat16 *a16 = att16 ? att16 + (size_t)row * Tk : NULL;
    if (mx == -INFINITY) {  // no allowed key: a zero row
        for (int j = lane; j < Tk; j += CU_WARP) {
            a[j] = 0;
            if (a16) a16[j] = __float2bfloat16(0.0f);
        }
        return;
    }
    float s = 0;
    for (int j = lane; j < Tk; j += CU_WARP) {
        const float e = j < lim && valid[j] ? expf(a[j] - mx) : 0.0f;
        a[j] = e;
        s += e;
    }
    const float inv = 1 / warp_sum(s);
    for (int j = lane; j < Tk; j += CU_WARP) {
        const float p = a[j] * inv;
        if (keep32) a[j] = p;
        if (a16) a16[j] = __float2bfloat16(p);
    }
}

// ds (rows, Tk) = scale * p * (dp - sum_j p dp), in place over dp; 0 wherever p is. With
// ds16 (not NULL) the result goes there, rounded to bf16, and dp is left as it was: the
// products after it run on tensor cores and read only the bf16 copy.
__global__ void k_attn_softmax_bwd(float *ds, __nv_bfloat16 *ds16, const float *att, int rows,
                                   int Tk, float scale) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (row >= rows) return;
    const float *p = att + (size_t)row * Tk;
    float *d = ds + (size_t)row * Tk;
    float dot = 0;
    for (int j = lane; j < Tk; j += CU_WARP) dot += p[j] * d[j];
    dot = warp_sum(dot);
    if (ds16) {
        __nv_bfloat16 *d16 = ds16 + (size_t)row * Tk;
        for (int j = lane; j < Tk; j += CU_WARP)
            d16[j] = __float2bfloat16(scale * p[j] * (d[j] - dot));
    } else {
        for (int j = lane; j < Tk; j += CU_WARP) d[j] = scale * p[j] * (d[j] - dot);
    }
}

// The core over operands H: float (fp32 SGEMMs) or __nv_bfloat16 (tensor cores). A bf16 core
// keeps bf16 copies of the probabilities (att_h) and dscores (ds_h) for the products after
// the softmax; an fp32 one reads att and ds themselves (att_h == att, ds_h == ds).
static __nv_bfloat16 *bf16_or_null(float *) { return nullptr; }
static __nv_bfloat16 *bf16_or_null(__nv_bfloat16 *p) { return p; }

template <typename H>
static void attn_fwd(cuda_ctx *c, float *att, int keep32, H *att_h, float *o, const H *q,
                     const H *k, const H *v, const uint8_t *key_valid, int B, int Tq, int Tk,
                     int P, int NH, int HD) {
    const int BNH = B * NH;
    const long long sq = (long long)Tq * HD, sk = (long long)Tk * HD, sa = (long long)Tq * Tk;
    const float scale = 1 / sqrtf((float)HD);
    cu_gemm(c, 0, 1, Tq, Tk, HD, scale, q, HD, sq, k, HD, sk, 0, att, Tk, sa, BNH);
    const int rows = BNH * Tq;
    CU_LAUNCH(k_attn_softmax, row_blocks(rows), CU_THREADS, c->stream, att, bf16_or_null(att_h),
              keep32, key_valid, rows, NH, Tq, Tk, P);
    CU_CHECK_LAUNCH("attention softmax");
    if (o) cu_gemm(c, 0, 0, Tq, HD, Tk, 1, att_h, Tk, sa, v, HD, sk, 0, o, HD, sq, BNH);
}

template <typename H>
static void attn_bwd(cuda_ctx *c, float *dq, float *dk, float *dv, float *ds, H *ds_h,
                     const H *dout, const H *q, const H *k, const H *v, const float *att,
                     const H *att_h, int B, int Tq, int Tk, int NH, int HD) {
    const int BNH = B * NH;
    const long long sq = (long long)Tq * HD, sk = (long long)Tk * HD, sa = (long long)Tq * Tk;
    const float scale = 1 / sqrtf((float)HD);
    // dprobs = dout v^T ; dv = att^T dout
    cu_gemm(c, 0, 1, Tq, Tk, HD, 1, dout, HD, sq, v, HD, sk, 0, ds, Tk, sa, BNH);
    cu_gemm(c, 1, 0, Tk, HD, Tq, 1, att_h, Tk, sa, dout, HD, sq, 0, dv, HD, sk, BNH);
    const int rows = BNH * Tq;
    CU_LAUNCH(k_attn_softmax_bwd, row_blocks(rows), CU_THREADS, c->stream, ds, bf16_or_null(ds_h),
              att, rows, Tk, scale);
    CU_CHECK_LAUNCH("attention softmax backward");
    // scores = scale q k^T (scale folded into ds): dq = ds k ; dk = ds^T q
    cu_gemm(c, 0, 0, Tq, HD, Tk, 1, ds_h, Tk, sa, k, HD, sk, 0, dq, HD, sq, BNH);
    cu_gemm(c, 1, 0, Tk, HD, Tq, 1, ds_h, Tk, sa, q, HD, sq, 0, dk, HD, sk, BNH);
}

void cu_attn_fwd(cuda_ctx *c, float *att, float *o, const float *q, const float *k,
                 const float *v, const uint8_t *key_valid, int B, int Tq, int Tk, int P, int NH,
                 int HD) {
    attn_fwd(c, att, 1, att, o, q, k, v, key_valid, B, Tq, Tk, P, NH, HD);
}

void cu_attn_bwd(cuda_ctx *c, float *dq, float *dk, float *dv, float *ds, const float *dout,
                 const float *q, const float *k, const float *v, const float *att, int B,
                 int Tq, int Tk, int NH, int HD) {
    attn_bwd(c, dq, dk, dv, ds, ds, dout, q, k, v, att, att, B, Tq, Tk, NH, HD);
}

void cu_attn_fwd16(cuda_ctx *c, float *att, int keep32, __nv_bfloat16 *att16, float *o,
                   const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                   const uint8_t *key_valid, int B, int Tq, int Tk, int P, int NH, int HD) {
    attn_fwd(c, att, keep32, att16, o, q, k, v, key_valid, B, Tq, Tk, P, NH, HD);
}

void cu_attn_bwd16(cuda_ctx *c, float *dq, float *dk, float *dv, float *ds,
                   __nv_bfloat16 *ds16, const __nv_bfloat16 *dout, const __nv_bfloat16 *q,
                   const __nv_bfloat16 *k, const __nv_bfloat16 *v, const float *att,
                   const __nv_bfloat16 *att16, int B, int Tq, int Tk, int NH, int HD) {
    attn_bwd(c, dq, dk, dv, ds, ds16, dout, q, k, v, att, att16, B, Tq, Tk, NH, HD);
}

// ---------------------------------------------------------------------------------------
// self-attention on packed qkv (B, T, 3, NH, HD): flash attention (FlashAttention-2's
// schedule, fp32 SIMT). The forward streams key tiles past a tile of queries with an online
// softmax and keeps only each row's log-sum-exp (B, NH, T) instead of the (T, T)
// probabilities; the backward recomputes the probabilities tile by tile from it. Two backward
// kernels keep it deterministic without float atomics: one block per KEY tile loops over the
// query tiles that can see it and owns dK, dV; one block per QUERY tile loops over key tiles
// and owns dQ. Each gradient element is written by exactly one thread, in a fixed order.
// Tiles the mask empties entirely (keys past a causal tile's last row) are skipped.
//
// Where the (B, NH, T, T) probabilities fit in ctx->attn_core_bytes of scratch, and for heads
// wider than FA_HD, the cuBLAS core above runs instead, materialising the probabilities in
// scratch (the backward recomputes them there), so the saved buffer stays (B, NH, T) either
// way. On an H200 at GPT-2-small size (T 1024, bf16) the core took 1.06 ms forward and
// 1.96 ms backward per layer from saved probabilities (about 3.0 ms with the recomputation),
// this SIMT kernel 1.26 and 4.87 ms: in fp32 it is the path for long sequences, whose
// probabilities would not fit. In precision bf16 without attention dropout, the flash
// kernels on tensor cores (ops_flash_tc_cuda.cu) take heads of 16..64 (step 16) ahead of
// both; for other widths the core's four products run on tensor cores (attention_core16:
// bf16 operands, fp32 scores, softmax and accumulation).
//
// Numbers: the same mask and the same zero rows as the CPU op; the results differ from the
// CPU's only in summation order (running max and rescaled sums instead of one max and one
// sum), a few float ulps; tests/gpu/test_ops_cuda.c checks 1e-5 relative.

// Shared-memory tiles are rows of FA_LD floats (16-byte aligned, 4 floats of padding so
// that the 8 rows a warp reads at once start in different banks) read as fa_f4 vectors: one
// 16-byte load feeds 4 (forward) to 8 (backward) FMAs, so the kernels are bound by the FMA
// units rather than by shared-memory bandwidth.
enum { FA_HD = 64, FA_LD = FA_HD + 4, FA_BQ = 64, FA_BK = 32, FA_TB = 32, FA_PLD = 32 + 4,
       FA_THREADS = 256 };
// Thread layout in every flash kernel: ty = threadIdx.x / 8 picks a row (query or key) of a
// 32-row tile; tx = threadIdx.x % 8 picks the keys tx + 8u of a score tile and the output
// columns 4 tx .. 4 tx + 3 and 32 + 4 tx .. 32 + 4 tx + 3. The 8 threads of a row are
// consecutive lanes of one warp, so a row's max and sum are 3 shuffles.

#ifdef MM_CUDA_EMU
struct alignas(16) fa_f4 {
    float x, y, z, w;
};
#define FA_UNROLL
#else
typedef float4 fa_f4;
#define FA_UNROLL _Pragma("unroll")
#endif

__device__ __forceinline__ float fa_dot4(fa_f4 a, fa_f4 b, float acc) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}
__device__ __forceinline__ void fa_axpy4(fa_f4 &acc, float a, fa_f4 b) {
    acc.x = fmaf(a, b.x, acc.x);
    acc.y = fmaf(a, b.y, acc.y);
    acc.z = fmaf(a, b.z, acc.z);
    acc.w = fmaf(a, b.w, acc.w);
}
__device__ __forceinline__ float fa_get(fa_f4 v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ __forceinline__ float fa_row_max(float v) {
    for (int o = 1; o < 8; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float fa_row_sum(float v) {
    for (int o = 1; o < 8; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// n rows (HD wide) of a (T, rs) row-major matrix from row r0 into the tile s (n, FA_LD);
// zeros past T and in the columns HD .. FA_HD - 1
template <int n>
__device__ __forceinline__ void fa_load(fa_f4 (*s)[FA_LD / 4], const float *src, size_t rs,
                                        int r0, int T, int HD) {
    float *f = &s[0][0].x;
    for (int e = threadIdx.x; e < n * FA_HD; e += blockDim.x) {
        const int r = e / FA_HD, d = e % FA_HD, i = r0 + r;
        f[r * FA_LD + d] = i < T && d < HD ? src[(size_t)i * rs + d] : 0.0f;
    }
}

// the tile's key_valid bytes (0 past T)
__device__ __forceinline__ void fa_load_valid(uint8_t *kval, const uint8_t *key_valid, int k0,
                                              int T) {
    if (threadIdx.x < FA_BK)
        kval[threadIdx.x] = k0 + (int)threadIdx.x < T ? key_valid[k0 + threadIdx.x] : 0;
}

// out (B, T, NH, HD), lse (B, NH, T); grid (query tiles of FA_BQ, B * NH). Each thread owns
// query rows ty and ty + 32 of the tile: their scores for keys tx + 8u of a key tile, their
// running max m and sum l, and their output columns (see the layout above).
// Under dropout d (thr 0: none) the sum l takes every p, the product with v the dropped ones.
__global__ void k_flash_fwd(float *out, float *lse, const float *qkv, const uint8_t *key_valid,
                            int T, int P, int NH, int HD, float scale, model_drop d) {
    __shared__ fa_f4 Qs[FA_BQ][FA_LD / 4], Ks[FA_BK][FA_LD / 4], Vs[FA_BK][FA_LD / 4];
    __shared__ fa_f4 Ps4[FA_BQ][FA_PLD / 4];
    __shared__ uint8_t kval[FA_BK];
    float(*Ps)[FA_PLD] = reinterpret_cast<float(*)[FA_PLD]>(&Ps4[0][0].x);
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH, C = NH * HD, HD4 = (HD + 3) / 4;
    const int q0 = blockIdx.x * FA_BQ, ty = threadIdx.x / 8, tx = threadIdx.x % 8;
    const size_t rs = 3 * (size_t)C;
    const float *qb = qkv + (size_t)b * T * rs + (size_t)h * HD;
    const uint64_t sk = d.thr ? model_drop_site_key(d.keys[b], d.layer, d.place) : 0;
    fa_load<FA_BQ>(Qs, qb, rs, q0, T, HD);
    int lim[2];
    float m[2], l[2];
    fa_f4 o[2][2];
    for (int r = 0; r < 2; r++) {
        const int i = q0 + ty + 32 * r;
        lim[r] = i < T ? cu_attn_lim(i, P) : 0;
        m[r] = -INFINITY;
        l[r] = 0;
        o[r][0] = o[r][1] = fa_f4{0, 0, 0, 0};
    }
    const int last = (q0 + FA_BQ < T ? q0 + FA_BQ : T) - 1;
    const int kend = cu_attn_lim(last, P) < T ? cu_attn_lim(last, P) : T;
    for (int k0 = 0; k0 < kend; k0 += FA_BK) {
        __syncthreads();  // the previous tile's readers are done
        fa_load<FA_BK>(Ks, qb + C, rs, k0, T, HD);
        fa_load<FA_BK>(Vs, qb + 2 * C, rs, k0, T, HD);
        fa_load_valid(kval, key_valid + (size_t)b * T, k0, T);
        __syncthreads();
        float s[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
        for (int d4 = 0; d4 < HD4; d4++) {
            const fa_f4 a0 = Qs[ty][d4], a1 = Qs[ty + 32][d4];
            FA_UNROLL
            for (int u = 0; u < 4; u++) {
                const fa_f4 kv = Ks[tx + 8 * u][d4];
                s[0][u] = fa_dot4(a0, kv, s[0][u]);
                s[1][u] = fa_dot4(a1, kv, s[1][u]);
            }
        }
        FA_UNROLL
        for (int r = 0; r < 2; r++) {
            float mx = -INFINITY;
            FA_UNROLL
            for (int u = 0; u < 4; u++) {
                const int j = tx + 8 * u;
                s[r][u] = k0 + j < lim[r] && kval[j] ? s[r][u] * scale : -INFINITY;
                mx = fmaxf(mx, s[r][u]);
            }
            const float mn = fmaxf(m[r], fa_row_max(mx));
            float ps = 0;
            FA_UNROLL
            for (int u = 0; u < 4; u++) {
                const float p = s[r][u] == -INFINITY ? 0.0f : expf(s[r][u] - mn);
                float pd = p;
                if (d.thr) {
                    const uint64_t e =
                        ((uint64_t)(d.head0 + h) * T + (uint64_t)(q0 + ty + 32 * r)) * T + k0 + tx + 8 * u;
                    pd = model_drop_keep(sk, e, d.thr) ? p * d.scale : 0.0f;
                }
                Ps[ty + 32 * r][tx + 8 * u] = pd;
                ps += p;
            }
            ps = fa_row_sum(ps);
            if (mn != -INFINITY) {  // else nothing allowed yet: o, l stay 0
                const float alpha = expf(m[r] - mn);  // 0 when m was -inf
                l[r] = l[r] * alpha + ps;
                for (int g = 0; g < 2; g++) {
                    o[r][g].x *= alpha;
                    o[r][g].y *= alpha;
                    o[r][g].z *= alpha;
                    o[r][g].w *= alpha;
                }
                m[r] = mn;
            }
        }
        __syncthreads();
        for (int j4 = 0; j4 < FA_BK / 4; j4++) {
            const fa_f4 p0 = Ps4[ty][j4], p1 = Ps4[ty + 32][j4];
            FA_UNROLL
            for (int jj = 0; jj < 4; jj++) {
                const float a0 = fa_get(p0, jj), a1 = fa_get(p1, jj);
                FA_UNROLL
                for (int g = 0; g < 2; g++) {
                    const fa_f4 v = Vs[4 * j4 + jj][8 * g + tx];
                    fa_axpy4(o[0][g], a0, v);
                    fa_axpy4(o[1][g], a1, v);
                }
            }
        }
    }
    for (int r = 0; r < 2; r++) {
        const int i = q0 + ty + 32 * r;
        if (i >= T) continue;
        const float inv = l[r] > 0 ? 1 / l[r] : 0.0f;  // no allowed key: a zero output
        float *orow = out + (size_t)(b * T + i) * C + (size_t)h * HD;
        for (int g = 0; g < 2; g++)
            for (int e = 0; e < 4; e++) {
                const int d = 32 * g + 4 * tx + e;
                if (d < HD) orow[d] = fa_get(o[r][g], e) * inv;
            }
        if (tx == 0) lse[(size_t)bh * T + i] = l[r] > 0 ? m[r] + logf(l[r]) : -INFINITY;
    }
}

// D (B, NH, T) = dout_i . out_i = sum_j p_ij dp_ij, the softmax backward's row term; one warp
// per row
template <typename A>
__global__ void k_flash_rowdot(float *D, const A *dout, const A *out, int B, int T, int NH,
                               int HD) {
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (row >= B * NH * T) return;
    const int i = row % T, h = row / T % NH, b = row / (T * NH);
    const size_t off = (size_t)(b * T + i) * NH * HD + (size_t)h * HD;
    float s = 0;
    for (int d = lane; d < HD; d += CU_WARP) s = fmaf(cu_f(dout[off + d]), cu_f(out[off + d]), s);
    s = warp_sum(s);
    if (lane == 0) D[row] = s;
}

// p and ds = scale * p * (dp - D) of query row ty against keys tx + 8u of the key tile at k0.
// Under dropout (thr > 0: the row's draws start at index erow, site key sk), with f = mask *
// dscale: p comes out dropped (p f, what the forward multiplied v by) and ds = scale * p *
// (dp f - D), dp being the gradient of the dropped probability; D = dout . out is then
// sum_j p f dp as before. Without it f = 1 exactly, so the results are the undropped ones.
__device__ __forceinline__ void fa_probs(float p[4], float ds[4], const fa_f4 (*Qs)[FA_LD / 4],
                                         const fa_f4 (*dOs)[FA_LD / 4],
                                         const fa_f4 (*Ks)[FA_LD / 4], const fa_f4 (*Vs)[FA_LD / 4],
                                         const uint8_t *kval, int ty, int tx, int k0, int lim,
                                         float lse, float D, int HD4, float scale, uint64_t sk,
                                         uint64_t erow, uint32_t thr, float dscale) {
    float s[4] = {0, 0, 0, 0}, dp[4] = {0, 0, 0, 0};
    for (int d4 = 0; d4 < HD4; d4++) {
        const fa_f4 a = Qs[ty][d4], g = dOs[ty][d4];
        FA_UNROLL
        for (int u = 0; u < 4; u++) {
            s[u] = fa_dot4(a, Ks[tx + 8 * u][d4], s[u]);
            dp[u] = fa_dot4(g, Vs[tx + 8 * u][d4], dp[u]);
        }
    }
    FA_UNROLL
    for (int u = 0; u < 4; u++) {
        const int j = tx + 8 * u;
        const float pu = k0 + j < lim && kval[j] ? expf(s[u] * scale - lse) : 0.0f;
        const float f =
            thr ? (model_drop_keep(sk, erow + (uint64_t)(k0 + j), thr) ? dscale : 0.0f) : 1.0f;
        ds[u] = scale * pu * (dp[u] * f - D);
        p[u] = pu * f;
    }
}

// dq part of dqkv +=; grid (query tiles of FA_TB, B * NH). Thread: query row ty; keys
// tx + 8u of each key tile; its dq columns.
__global__ void k_flash_bwd_dq(float *dqkv, const float *dout, const float *qkv, const float *lse,
                               const float *D, const uint8_t *key_valid, int T, int P, int NH,
                               int HD, float scale, model_drop dr) {
    __shared__ fa_f4 Qs[FA_TB][FA_LD / 4], dOs[FA_TB][FA_LD / 4], Ks[FA_TB][FA_LD / 4],
        Vs[FA_TB][FA_LD / 4], dS4[FA_TB][FA_PLD / 4];
    __shared__ uint8_t kval[FA_TB];
    float(*dSs)[FA_PLD] = reinterpret_cast<float(*)[FA_PLD]>(&dS4[0][0].x);
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH, C = NH * HD, HD4 = (HD + 3) / 4;
    const int q0 = blockIdx.x * FA_TB, ty = threadIdx.x / 8, tx = threadIdx.x % 8;
    const size_t rs = 3 * (size_t)C;
    const float *qb = qkv + (size_t)b * T * rs + (size_t)h * HD;
    fa_load<FA_TB>(Qs, qb, rs, q0, T, HD);
    fa_load<FA_TB>(dOs, dout + (size_t)b * T * C + (size_t)h * HD, C, q0, T, HD);
    const int i = q0 + ty;
    const int lim = i < T ? cu_attn_lim(i, P) : 0;
    const uint64_t sk = dr.thr ? model_drop_site_key(dr.keys[b], dr.layer, dr.place) : 0;
    const uint64_t erow = ((uint64_t)(dr.head0 + h) * T + (uint64_t)i) * T;
    const float l_i = i < T ? lse[(size_t)bh * T + i] : 0.0f;
    const float D_i = i < T ? D[(size_t)bh * T + i] : 0.0f;
    fa_f4 dq[2] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    const int last = (q0 + FA_TB < T ? q0 + FA_TB : T) - 1;
    const int kend = cu_attn_lim(last, P) < T ? cu_attn_lim(last, P) : T;
    for (int k0 = 0; k0 < kend; k0 += FA_TB) {
        __syncthreads();
        fa_load<FA_TB>(Ks, qb + C, rs, k0, T, HD);
        fa_load<FA_TB>(Vs, qb + 2 * C, rs, k0, T, HD);
        fa_load_valid(kval, key_valid + (size_t)b * T, k0, T);
        __syncthreads();
        float p[4], ds[4];
        fa_probs(p, ds, Qs, dOs, Ks, Vs, kval, ty, tx, k0, lim, l_i, D_i, HD4, scale, sk, erow,
                 dr.thr, dr.scale);
        for (int u = 0; u < 4; u++) dSs[ty][tx + 8 * u] = ds[u];
        __syncthreads();
        for (int j4 = 0; j4 < FA_TB / 4; j4++) {
            const fa_f4 g4 = dS4[ty][j4];
            FA_UNROLL
            for (int jj = 0; jj < 4; jj++) {
                const float g = fa_get(g4, jj);
                FA_UNROLL
                for (int c = 0; c < 2; c++) fa_axpy4(dq[c], g, Ks[4 * j4 + jj][8 * c + tx]);
            }
        }
    }
    if (i < T) {
        float *dr = dqkv + (size_t)(b * T + i) * rs + (size_t)h * HD;
        for (int c = 0; c < 2; c++)
            for (int e = 0; e < 4; e++) {
                const int d = 32 * c + 4 * tx + e;
                if (d < HD) dr[d] += fa_get(dq[c], e);
            }
    }
}

// dk, dv parts of dqkv +=; grid (key tiles of FA_TB, B * NH). Scores as in k_flash_bwd_dq
// (thread: query row ty, keys tx + 8u), stored transposed (key, query); then each thread owns
// key row ty's dk, dv columns. Only the query tiles that can see a key of the tile are
// visited: all of them for a prefix key, queries >= k0 for causal keys.
__global__ void k_flash_bwd_dkv(float *dqkv, const float *dout, const float *qkv, const float *lse,
                                const float *D, const uint8_t *key_valid, int T, int P, int NH,
                                int HD, float scale, model_drop dr) {
    __shared__ fa_f4 Qs[FA_TB][FA_LD / 4], dOs[FA_TB][FA_LD / 4], Ks[FA_TB][FA_LD / 4],
        Vs[FA_TB][FA_LD / 4], PT4[FA_TB][FA_PLD / 4], dST4[FA_TB][FA_PLD / 4];
    __shared__ uint8_t kval[FA_TB];
    __shared__ float lse_s[FA_TB], D_s[FA_TB];
    float(*PT)[FA_PLD] = reinterpret_cast<float(*)[FA_PLD]>(&PT4[0][0].x);
    float(*dST)[FA_PLD] = reinterpret_cast<float(*)[FA_PLD]>(&dST4[0][0].x);
    const int bh = blockIdx.y, b = bh / NH, h = bh % NH, C = NH * HD, HD4 = (HD + 3) / 4;
    const int k0 = blockIdx.x * FA_TB, ty = threadIdx.x / 8, tx = threadIdx.x % 8;
    const size_t rs = 3 * (size_t)C;
    const float *qb = qkv + (size_t)b * T * rs + (size_t)h * HD;
    const float *ob = dout + (size_t)b * T * C + (size_t)h * HD;
    const uint64_t sk = dr.thr ? model_drop_site_key(dr.keys[b], dr.layer, dr.place) : 0;
    fa_load<FA_TB>(Ks, qb + C, rs, k0, T, HD);
    fa_load<FA_TB>(Vs, qb + 2 * C, rs, k0, T, HD);
    fa_load_valid(kval, key_valid + (size_t)b * T, k0, T);
    fa_f4 dk[2] = {{0, 0, 0, 0}, {0, 0, 0, 0}}, dv[2] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    for (int q0 = k0 < P ? 0 : k0; q0 < T; q0 += FA_TB) {
        __syncthreads();
        fa_load<FA_TB>(Qs, qb, rs, q0, T, HD);
        fa_load<FA_TB>(dOs, ob, C, q0, T, HD);
        if (threadIdx.x < FA_TB) {
            const int i = q0 + threadIdx.x;
            lse_s[threadIdx.x] = i < T ? lse[(size_t)bh * T + i] : 0.0f;
            D_s[threadIdx.x] = i < T ? D[(size_t)bh * T + i] : 0.0f;
        }
        __syncthreads();
        const int i = q0 + ty;
        float p[4], ds[4];
        fa_probs(p, ds, Qs, dOs, Ks, Vs, kval, ty, tx, k0, i < T ? cu_attn_lim(i, P) : 0, lse_s[ty],
                 D_s[ty], HD4, scale, sk, ((uint64_t)(dr.head0 + h) * T + (uint64_t)i) * T, dr.thr,
                 dr.scale);
        for (int u = 0; u < 4; u++) {
            PT[tx + 8 * u][ty] = p[u];
            dST[tx + 8 * u][ty] = ds[u];
        }
        __syncthreads();
        for (int r4 = 0; r4 < FA_TB / 4; r4++) {
            const fa_f4 p4 = PT4[ty][r4], g4 = dST4[ty][r4];
            FA_UNROLL
            for (int rr = 0; rr < 4; rr++) {
                const int r = 4 * r4 + rr;
                const float pr = fa_get(p4, rr), gr = fa_get(g4, rr);
                FA_UNROLL
                for (int c = 0; c < 2; c++) {
                    fa_axpy4(dv[c], pr, dOs[r][8 * c + tx]);
                    fa_axpy4(dk[c], gr, Qs[r][8 * c + tx]);
                }
            }
        }
    }
    const int j = k0 + ty;
    if (j < T) {
        float *dr = dqkv + (size_t)(b * T + j) * rs + (size_t)h * HD;
        for (int c = 0; c < 2; c++)
            for (int e = 0; e < 4; e++) {
                const int d = 32 * c + 4 * tx + e;
                if (d < HD) {
                    dr[C + d] += fa_get(dk[c], e);
                    dr[2 * C + d] += fa_get(dv[c], e);
                }
            }
    }
}

// The cuBLAS path (attention_core): split, the core with the probabilities in scratch
// (att: B * NH * T * T after 4 (B, T, C) buffers; under dropout d, the dropped probabilities
// after them, which the product with v takes), merge.
static float *attention_core_fwd(cuda_ctx *c, float *out, const float *qkv,
                                 const uint8_t *key_valid, int B, int T, int P, int NH, int HD,
                                 const model_drop &d, size_t extra) {
    const int C = NH * HD;
    const size_t n = cu_round_up((size_t)B * T * C * sizeof(float), 256);
    const size_t na = cu_round_up((size_t)B * NH * T * T * sizeof(float), 256);
    float *ws = (float *)cuda_scratch(c, 4 * n + (d.thr ? 2 : 1) * na + extra);
    const size_t step = n / sizeof(float);
    float *q = ws, *k = ws + step, *v = ws + 2 * step, *o = ws + 3 * step, *att = ws + 4 * step;
    cu_heads_split(c, q, qkv, B, T, NH, HD, 3 * C, 0);
    cu_heads_split(c, k, qkv, B, T, NH, HD, 3 * C, C);
    cu_heads_split(c, v, qkv, B, T, NH, HD, 3 * C, 2 * C);
    cu_attn_fwd(c, att, o, q, k, v, key_valid, B, T, T, P, NH, HD);
    if (d.thr) {  // o again, from the dropped probabilities
        float *attd = att + na / sizeof(float);
        const size_t tot = (size_t)B * NH * T * T;
        CU_LAUNCH(k_attn_drop, cu_blocks(tot, CU_THREADS), CU_THREADS, c->stream, attd, att, d, B,
                  NH, T);
        CU_CHECK_LAUNCH("attention dropout");
        const long long sq = (long long)T * HD, sa = (long long)T * T;
        cu_gemm(c, 0, 0, T, HD, T, 1, attd, T, sa, v, HD, sq, 0, o, HD, sq, B * NH);
    }
    if (out) cu_heads_merge(c, out, o, B, T, NH, HD, C, 0, 0);
    return ws;
}

// cu_attn_bwd for self-attention under dropout: dv from the dropped probabilities attd, and
// the gradient of the probabilities through the mask before the softmax's backward.
static void attention_core_bwd_drop(cuda_ctx *c, float *dq, float *dk, float *dv, float *ds,
                                    const float *dout, const float *q, const float *k,
                                    const float *v, const float *att, const float *attd,
                                    const model_drop &d, int B, int T, int NH, int HD) {
    const int BNH = B * NH, rows = BNH * T;
    const long long sq = (long long)T * HD, sa = (long long)T * T;
    const float scale = 1 / sqrtf((float)HD);
    cu_gemm(c, 0, 1, T, T, HD, 1, dout, HD, sq, v, HD, sq, 0, ds, T, sa, BNH);
    cu_gemm(c, 1, 0, T, HD, T, 1, attd, T, sa, dout, HD, sq, 0, dv, HD, sq, BNH);
    CU_LAUNCH(k_attn_drop, cu_blocks((size_t)rows * T, CU_THREADS), CU_THREADS, c->stream, ds, ds,
              d, B, NH, T);
    CU_CHECK_LAUNCH("attention dropout backward");
    CU_LAUNCH(k_attn_softmax_bwd, row_blocks(rows), CU_THREADS, c->stream, ds, nullptr, att, rows,
              T, scale);
    CU_CHECK_LAUNCH("attention softmax backward");
    cu_gemm(c, 0, 0, T, HD, T, 1, ds, T, sa, k, HD, sq, 0, dq, HD, sq, BNH);
    cu_gemm(c, 1, 0, T, HD, T, 1, ds, T, sa, q, HD, sq, 0, dk, HD, sq, BNH);
}

// The cuBLAS path on tensor cores (precision bf16, no dropout; cu_attn_fwd16): q, k, v split
// straight into bf16 heads. Scratch, carved in this order: q16 k16 v16, o and att (fp32),
// att16; with bwd also dout16, dq dk dv (fp32), ds (fp32), ds16. The backward calls it again
// without out (the probabilities only: no product with v).
struct attn16_ws {
    __nv_bfloat16 *q, *k, *v, *att16, *dout, *ds16;
    float *o, *att, *dq, *dk, *dv, *ds;
};
static attn16_ws attention_core16(cuda_ctx *c, float *out, const float *qkv,
                                  const uint8_t *key_valid, int B, int T, int P, int NH, int HD,
                                  int bwd) {
    typedef __nv_bfloat16 bf16;
    const int C = NH * HD;
    const size_t e = (size_t)B * T * C, ea = (size_t)B * NH * T * T, h = sizeof(bf16);
    attn16_ws w = {};
    cu_carver cv = {NULL, 0};
    for (int pass = 0; pass < 2; pass++) {  // count, then carve
        w.q = (bf16 *)cu_carve(&cv, e * h);
        w.k = (bf16 *)cu_carve(&cv, e * h);
        w.v = (bf16 *)cu_carve(&cv, e * h);
        w.o = (float *)cu_carve(&cv, out ? e * 4 : 0);
        w.att = (float *)cu_carve(&cv, ea * 4);
        w.att16 = (bf16 *)cu_carve(&cv, ea * h);
        if (bwd) {
            w.dout = (bf16 *)cu_carve(&cv, e * h);
            w.dq = (float *)cu_carve(&cv, e * 4);
            w.dk = (float *)cu_carve(&cv, e * 4);
            w.dv = (float *)cu_carve(&cv, e * 4);
            w.ds = (float *)cu_carve(&cv, ea * 4);
            w.ds16 = (bf16 *)cu_carve(&cv, ea * h);
        }
        if (pass == 0) cv = {(char *)cuda_scratch(c, cv.off), 0};
    }
    cu_heads_split(c, w.q, qkv, B, T, NH, HD, 3 * C, 0);
    cu_heads_split(c, w.k, qkv, B, T, NH, HD, 3 * C, C);
    cu_heads_split(c, w.v, qkv, B, T, NH, HD, 3 * C, 2 * C);
    // the fp32 probabilities only for the backward (no out), which reads them
    cu_attn_fwd16(c, w.att, !out, w.att16, out ? w.o : NULL, w.q, w.k, w.v, key_valid, B, T, T,
                  P, NH, HD);
    if (out) cu_heads_merge(c, out, w.o, B, T, NH, HD, C, 0, 0);
    return w;
}

// The saved buffer (attention_saved): lse (B, NH, T) floats, then a copy of the forward's
// key_valid (B, T) bytes, which the backward needs to rebuild the mask (the ops interface
// gives the backward no key_valid: the CPU's saved probabilities carry the mask).
static size_t attention_saved(const mm_backend *be MM_UNUSED, int B, int NH, int T) {
    return (size_t)B * NH * T + ((size_t)B * T + sizeof(float) - 1) / sizeof(float);
}
static uint8_t *saved_mask(float *att, int B, int NH, int T) {
    return (uint8_t *)(att + (size_t)B * NH * T);
}

// 1 when self-attention takes the cuBLAS core (above), 0 for flash attention.
static int attention_core(const cuda_ctx *c, int B, int NH, int T, int HD) {
    return HD > FA_HD || (size_t)B * NH * T * T * sizeof(float) <= c->attn_core_bytes;
}
// 1 when that core runs on tensor cores (attention_core16)
static int attention_core16_on(const cuda_ctx *c, const model_drop &d) {
    return c->precision == CUDA_BF16 && !d.thr;
}
// packed qkv (B, T, 3, NH, HD) as the tensor-core flash kernels read it (bf16 when act16)
static cu_flash self_flash(const cuda_ctx *c, const float *qkv, const uint8_t *key_valid, int T,
                           int P, int NH, int HD) {
    const int C = NH * HD, h = c->act16;
    return cu_flash{qkv, cu_act_at(qkv, C, h), cu_act_at(qkv, 2 * C, h), 3 * C, 3 * C, key_valid,
                    T, T, P, NH, 1 / sqrtf((float)HD), h};
}
// 1 when self-attention runs on the tensor-core flash kernels (ops_flash_tc_cuda.cu), ahead
// of both paths above
static int attention_flash_tc(const cuda_ctx *c, int HD, const model_drop &d) {
    return c->flash_tc && attention_core16_on(c, d) && cu_flash_tc_ok(HD);
}

const float *cu_flash_row_terms(cuda_ctx *c, const float *dout, const float *out, int B, int T,
                                int NH, int HD, int bf16) {
    const int rows = B * NH * T;
    float *D = (float *)cuda_scratch(c, (size_t)rows * sizeof(float));
    CU_AS(bf16, CU_LAUNCH(k_flash_rowdot<A>, row_blocks(rows), CU_THREADS, c->stream, D,
                          (const A *)dout, (const A *)out, B, T, NH, HD));
    CU_CHECK_LAUNCH("attention_bwd (row terms)");
    return D;
}

// The paths of fp32 activations other than the tensor-core flash kernels.
static void attention_fwd32(cuda_ctx *c, float *out, float *att, const float *qkv,
                            const uint8_t *key_valid, int B, int T, int P, int NH, int HD,
                            const model_drop &d) {
    if (attention_core(c, B, NH, T, HD)) {
        if (attention_core16_on(c, d))
            attention_core16(c, out, qkv, key_valid, B, T, P, NH, HD, 0);
        else
            attention_core_fwd(c, out, qkv, key_valid, B, T, P, NH, HD, d, 0);
        return;
    }
    MM_CHECK(B * NH <= 65535, "attention: B * NH = %d above the grid's 65535", B * NH);
    const dim3 grid((unsigned)((T + FA_BQ - 1) / FA_BQ), (unsigned)(B * NH));
    CU_LAUNCH(k_flash_fwd, grid, FA_THREADS, c->stream, out, att, qkv, key_valid, T, P, NH, HD,
              1 / sqrtf((float)HD), d);
    CU_CHECK_LAUNCH("attention_fwd (flash)");
}

static void attention_fwd(const mm_backend *be, float *out, float *att, const float *qkv,
                          const uint8_t *key_valid, int B, int T, int P, int NH, int HD,
                          const model_drop *drop) {
    MM_CHECK(P >= 0 && P <= T, "attention: prefix %d outside [0, T=%d]", P, T);
    if (B <= 0 || T <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    const model_drop d = drop_arg(drop);
    CU_CHECK(cudaMemcpyAsync(saved_mask(att, B, NH, T), key_valid, (size_t)B * T,
                             cudaMemcpyDeviceToDevice, c->stream));
    if (attention_flash_tc(c, HD, d)) {
        const cu_flash a = self_flash(c, qkv, key_valid, T, P, NH, HD);
        cu_flash_tc_fwd(c, &a, B, HD, out, att);
        return;
    }
    if (!c->act16) {
        attention_fwd32(c, out, att, qkv, key_valid, B, T, P, NH, HD, d);
        return;
    }
    // bf16 activations on a path without bf16 kernels: through fp32 copies
    const size_t n = (size_t)B * T * NH * HD;
    float *q32 = (float *)cuda_act_scratch(c, 4 * n * sizeof(float)), *o32 = q32 + 3 * n;
    cu_from_bf16(c, q32, (const cu_bf16 *)qkv, 3 * n);
    attention_fwd32(c, o32, att, q32, key_valid, B, T, P, NH, HD, d);
    cu_to_bf16(c, (cu_bf16 *)out, o32, n);
}

// The paths of fp32 activations other than the tensor-core flash kernels.
static void attention_bwd32(cuda_ctx *c, float *dqkv, const float *dout, const float *qkv,
                            const float *out, const float *att, int B, int T, int P, int NH,
                            int HD, const model_drop &d) {
    const uint8_t *key_valid = saved_mask((float *)att, B, NH, T);
    const int C = NH * HD;
    if (attention_core(c, B, NH, T, HD) && attention_core16_on(c, d)) {
        const attn16_ws w = attention_core16(c, NULL, qkv, key_valid, B, T, P, NH, HD, 1);
        cu_heads_split(c, w.dout, dout, B, T, NH, HD, C, 0);
        cu_attn_bwd16(c, w.dq, w.dk, w.dv, w.ds, w.ds16, w.dout, w.q, w.k, w.v, w.att, w.att16, B,
                      T, T, NH, HD);
        cu_heads_merge(c, dqkv, w.dq, B, T, NH, HD, 3 * C, 0, 1);
        cu_heads_merge(c, dqkv, w.dk, B, T, NH, HD, 3 * C, C, 1);
        cu_heads_merge(c, dqkv, w.dv, B, T, NH, HD, 3 * C, 2 * C, 1);
        return;
    }
    if (attention_core(c, B, NH, T, HD)) {  // recompute the probabilities, then the backward
        const size_t n = cu_round_up((size_t)B * T * C * sizeof(float), 256);
        const size_t na = cu_round_up((size_t)B * NH * T * T * sizeof(float), 256);
        float *ws = attention_core_fwd(c, NULL, qkv, key_valid, B, T, P, NH, HD, d, 5 * n + na);
        const size_t step = n / sizeof(float), nd = d.thr ? na / sizeof(float) : 0;
        float *q = ws, *k = ws + step, *v = ws + 2 * step, *pr = ws + 4 * step;
        float *dout_h = pr + na / sizeof(float) + nd, *dq = dout_h + step, *dk = dq + step,
              *dv = dk + step, *ds = dv + step;
        cu_heads_split(c, dout_h, dout, B, T, NH, HD, C, 0);
        if (d.thr)
            attention_core_bwd_drop(c, dq, dk, dv, ds, dout_h, q, k, v, pr, pr + nd, d, B, T, NH,
                                    HD);
        else
            cu_attn_bwd(c, dq, dk, dv, ds, dout_h, q, k, v, pr, B, T, T, NH, HD);
        cu_heads_merge(c, dqkv, dq, B, T, NH, HD, 3 * C, 0, 1);
        cu_heads_merge(c, dqkv, dk, B, T, NH, HD, 3 * C, C, 1);
        cu_heads_merge(c, dqkv, dv, B, T, NH, HD, 3 * C, 2 * C, 1);
        return;
    }
    const float *D = cu_flash_row_terms(c, dout, out, B, T, NH, HD, 0);
    const float scale = 1 / sqrtf((float)HD);
    const dim3 grid((unsigned)((T + FA_TB - 1) / FA_TB), (unsigned)(B * NH));
    CU_LAUNCH(k_flash_bwd_dq, grid, FA_THREADS, c->stream, dqkv, dout, qkv, att, D, key_valid, T, P,
              NH, HD, scale, d);
    CU_CHECK_LAUNCH("attention_bwd (flash dq)");
    CU_LAUNCH(k_flash_bwd_dkv, grid, FA_THREADS, c->stream, dqkv, dout, qkv, att, D, key_valid, T,
              P, NH, HD, scale, d);
    CU_CHECK_LAUNCH("attention_bwd (flash dk, dv)");
}

static void attention_bwd(const mm_backend *be, float *dqkv, const float *dout, const float *qkv,
                          const float *out, const float *att, int B, int T, int P, int NH, int HD,
                          const model_drop *drop) {
    MM_CHECK(P >= 0 && P <= T, "attention: prefix %d outside [0, T=%d]", P, T);
    if (B <= 0 || T <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    const model_drop d = drop_arg(drop);
    const int C = NH * HD, h = c->act16;
    if (attention_flash_tc(c, HD, d)) {
        const cu_flash a = self_flash(c, qkv, saved_mask((float *)att, B, NH, T), T, P, NH, HD);
        const float *D = cu_flash_row_terms(c, dout, out, B, T, NH, HD, h);
        cu_flash_tc_bwd(c, &a, B, HD, dqkv, 3 * C, cu_act_at(dqkv, C, h), cu_act_at(dqkv, 2 * C, h),
                        3 * C, dout, att, D);
        return;
    }
    if (!h) {
        attention_bwd32(c, dqkv, dout, qkv, out, att, B, T, P, NH, HD, d);
        return;
    }
    // bf16 activations on a path without bf16 kernels: through fp32 copies (dqkv's too, as
    // the backward adds into it)
    const size_t n = (size_t)B * T * C;
    float *q32 = (float *)cuda_act_scratch(c, 8 * n * sizeof(float)), *dq32 = q32 + 3 * n,
          *do32 = dq32 + 3 * n, *o32 = do32 + n;
    cu_from_bf16(c, q32, (const cu_bf16 *)qkv, 3 * n);
    cu_from_bf16(c, dq32, (const cu_bf16 *)dqkv, 3 * n);
    cu_from_bf16(c, do32, (const cu_bf16 *)dout, n);
    cu_from_bf16(c, o32, (const cu_bf16 *)out, n);
    attention_bwd32(c, dq32, do32, q32, o32, att, B, T, P, NH, HD, d);
    cu_to_bf16(c, (cu_bf16 *)dqkv, dq32, 3 * n);
}

// ---------------------------------------------------------------------------------------
// softmax cross-entropy, fused for bandwidth (at GPT-2 size the (N, V) logits are
// 1.6 GB). The forward reads each row once with an online max and sum per thread and saves
// only the row's log-sum-exp (N); the backward reads the logits once more and writes
// dlogits = (exp(logit - lse) - onehot) * dloss, in place when dlogits is the logits; in
// training both run as one kernel (xent_fwd_bwd). One block per row; the block's (max, sum)
// pairs combine in a fixed tree (deterministic).

// One row's log-sum-exp, and its loss = lse - logit[t] (0 when ignored), by one block. With
// label smoothing eps: lse - (1 - eps) logit[t] - eps/V sum_j logit[j], shifted by the max.
// Every thread returns the lse; thread 0 writes the loss.
template <typename A>
__device__ float xent_row(float *loss, const A *l, int t, int V, float eps) {
    float m = -INFINITY, s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        const float x = cu_f(l[j]);
        if (x > m) {
            s = s * expf(m - x) + 1;  // expf(-inf) = 0 for the first element
            m = x;
        } else {
            s += expf(x - m);
        }
    }
    const float mx = block_max(m);
    s = block_sum(m == -INFINITY ? 0.0f : s * expf(m - mx));
    float sl = 0;  // sum_j (logit_j - max), for smoothing only
    if (eps > 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) sl += cu_f(l[j]) - mx;
        sl = block_sum(sl);
    }
    if (threadIdx.x == 0) {
        if (t < 0)
            *loss = 0.0f;
        else if (eps > 0)
            *loss = logf(s) - (1 - eps) * (cu_f(l[t]) - mx) - eps / V * sl;
        else
            *loss = logf(s) - (cu_f(l[t]) - mx);
    }
    return mx + logf(s);
}

// One row's d = (exp(l - lse) - q) * s, q = (1 - eps) onehot + eps / V (0 when t < 0), by
// one block; d may be l (each element is read, then written, by one thread).
template <typename A>
__device__ void xent_row_grad(A *d, const A *l, float ls, int t, int V, float s, float eps) {
    if (t < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = cu_a<A>(0.0f);
        return;
    }
    if (eps > 0) {
        const float u = eps / V;
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float v = (expf(cu_f(l[j]) - ls) - u) * s;
            if (j == t) v -= (1 - eps) * s;
            d[j] = cu_a<A>(v);
        }
        return;
    }
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float v = expf(cu_f(l[j]) - ls) * s;
        if (j == t) v -= s;
        d[j] = cu_a<A>(v);
    }
}

// the row's target, -1 (ignored, and recorded for cuda_ctx_sync) when outside [-1, V)
__device__ __forceinline__ int xent_target(const int32_t *targets, int row, int V, int *flag) {
    const int t = targets[row];
    if (t >= -1 && t < V) return t;
    if (threadIdx.x == 0) cu_flag(flag, CU_FLAG_XENT_TARGET, t, row);
    return -1;
}

// loss (N), lse (N) from logits (N, V); one block per row
template <typename A>
__global__ void k_xent_fwd(float *loss, float *lse, const A *logits, const int32_t *targets,
                           int V, int *flag, float eps) {
    const int row = blockIdx.x, t = xent_target(targets, row, V, flag);
    const float ls = xent_row(loss + row, logits + (size_t)row * V, t, V, eps);
    if (threadIdx.x == 0) lse[row] = ls;
}

static void xent_fwd(const mm_backend *be, float *loss, float *lse, const float *logits,
                     const int32_t *targets, int N, int V, float eps) {
    if (N <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_xent_fwd<A>, (unsigned)N, CU_THREADS, c->stream, loss, lse,
                        (const A *)logits, targets, V, c->flag, eps));
    CU_CHECK_LAUNCH("xent_fwd");
}

// dlogits (N, V) from the forward's lse, rows scaled by dloss (overwrites; dlogits may be
// logits). One block per row (grid-stride over rows), threads along the row.
template <typename A>
__global__ void k_xent_bwd(A *dlogits, const A *logits, const float *lse, const int32_t *targets,
                           const float *dloss, int N, int V, int *flag, float eps) {
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const int t = xent_target(targets, row, V, flag);
        xent_row_grad(dlogits + (size_t)row * V, logits + (size_t)row * V, t < 0 ? 0 : lse[row],
                      t, V, t < 0 ? 0 : dloss[row], eps);
    }
}

static void xent_bwd(const mm_backend *be, float *dlogits, const float *logits, const float *lse,
                     const int32_t *targets, const float *dloss, int N, int V, float eps) {
    if (N <= 0 || V <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_xent_bwd<A>, cu_row_blocks(N), CU_THREADS, c->stream, (A *)dlogits,
                        (const A *)logits, lse, targets, dloss, N, V, c->flag, eps));
    CU_CHECK_LAUNCH("xent_bwd");
}

// Both in one kernel, in place: a block's second read of its row (for the gradient) follows
// the first at once, from cache rather than from memory a whole backward pass later (llm.c's
// fused classifier). The same bits as k_xent_fwd then k_xent_bwd: the same row functions.
template <typename A>
__global__ void k_xent_fwd_bwd(float *loss, A *logits, const int32_t *targets, const float *dloss,
                               int V, int *flag, float eps) {
    const int row = blockIdx.x, t = xent_target(targets, row, V, flag);
    A *l = logits + (size_t)row * V;
    const float ls = xent_row(loss + row, l, t, V, eps);
    __syncthreads();  // thread 0 has read l[t] for the loss before the row is overwritten
    xent_row_grad(l, l, ls, t, V, t < 0 ? 0 : dloss[row], eps);
}

static void xent_fwd_bwd(const mm_backend *be, float *loss, float *logits,
                         const int32_t *targets, const float *dloss, int N, int V, float eps) {
    if (N <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_xent_fwd_bwd<A>, (unsigned)N, CU_THREADS, c->stream, loss, (A *)logits,
                        targets, dloss, V, c->flag, eps));
    CU_CHECK_LAUNCH("xent_fwd_bwd");
}

// the rows' log-sum-exp (N)
static size_t xent_saved(const mm_backend *be MM_UNUSED, int N, int V) {
    (void)V;
    return (size_t)N;
}

const model_ops model_ops_cuda = {
    .name = "cuda",
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
    .mem_alloc = cu_mem_alloc,
    .mem_free = cu_mem_free,
    .mem_upload = cu_mem_upload,
    .mem_download = cu_mem_download,
    .mem_zero = cu_mem_zero,
    .mem_copy = cu_mem_copy,
    .copy_rows = cu_copy_rows,
    .act_from_real = cu_act_from_real,
    .act_to_real = cu_act_to_real,
    .patchify = cu_patchify,
    .unpatchify = cu_unpatchify,
    .im2col3 = cu_im2col3,
    .col2im3 = cu_col2im3,
    .maxpool2_fwd = cu_maxpool2_fwd,
    .maxpool2_bwd = cu_maxpool2_bwd,
};
