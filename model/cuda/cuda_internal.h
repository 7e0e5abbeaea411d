// cuda_internal.h: what the CUDA backend's .cu files share and nothing else may use: the
// check macros, the launch macro, launch-size helpers, deterministic warp/block reductions,
// row-major cuBLAS wrappers, the deterministic column-sum machinery behind every bias/gain
// gradient, and the attention core that self- and cross-attention both run on. C++ (nvcc,
// or the host compiler for the CPU emulation build, MM_CUDA_EMU).
//
// The kernels are written so that the CPU emulation of tests/gpu/cuda_emu.h can run them:
// launches go through CU_LAUNCH (not <<<>>> directly), shared memory is static (no dynamic
// shared memory), every warp shuffle is executed by all 32 lanes of a warp, and block sizes
// are multiples of 32.
#ifndef MM_CUDA_INTERNAL_H
#define MM_CUDA_INTERNAL_H

#include "cuda.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef MM_CUDA_EMU
#define CU_LAUNCH(kern, grid, block, stream, ...)                    \
    do {                                                             \
        (void)(stream);                                              \
        cuemu_launch((grid), (block), [=]() { kern(__VA_ARGS__); }); \
    } while (0)
#else
#define CU_LAUNCH(kern, grid, block, stream, ...) \
    kern<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)
#endif

// ---------------------------------------------------------------------------------------
// checks: abort with file:line, the call, the error string and a hint

const char *cuda_hint(cudaError_t e);
const char *cublas_hint(cublasStatus_t s);

#define CU_CHECK(call)                                                                \
    do {                                                                              \
        cudaError_t e_ = (call);                                                      \
        if (e_ != cudaSuccess)                                                        \
            mm_fatal(__FILE__, __LINE__, "CUDA: %s failed: %s (%s)", #call,           \
                     cudaGetErrorString(e_), cuda_hint(e_));                          \
    } while (0)

#define CUBLAS_CHECK(call)                                                            \
    do {                                                                              \
        cublasStatus_t s_ = (call);                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                              \
            mm_fatal(__FILE__, __LINE__, "cuBLAS: %s failed: %s (%s)", #call,         \
                     cublasGetStatusString(s_), cublas_hint(s_));                     \
    } while (0)

// After every launch: a bad launch configuration shows here, at the launch that made it.
#define CU_CHECK_LAUNCH(what) CU_CHECK(cudaPeekAtLastError())

// ---------------------------------------------------------------------------------------
// launch sizes

enum { CU_THREADS = 256, CU_WARP = 32 };
// Enough blocks for n elements with grid-stride loops, capped (the loops cover the rest).
static inline unsigned cu_blocks(size_t n, unsigned threads) {
    size_t b = (n + threads - 1) / threads;
    const size_t cap = (size_t)1 << 16;
    return (unsigned)(b < 1 ? 1 : b > cap ? cap : b);
}
// Blocks for kernels that give each block whole rows (grid-stride over rows).
static inline unsigned cu_row_blocks(int rows) {
    const int cap = 1 << 20;
    return (unsigned)(rows < 1 ? 1 : rows > cap ? cap : rows);
}
static inline size_t cu_round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

// Scratch of the bound context: at least `bytes`, valid until the next cuda_scratch call
// (a call that grows it waits for the stream first, so earlier work is done with the old).
void *cuda_scratch(cuda_ctx *c, size_t bytes);

// The context of the backend an op was called with (backend_cuda.cu puts it there).
static inline cuda_ctx *cu_ctx(const mm_backend *be) {
    return (cuda_ctx *)be->ctx;
}

// Carves aligned pieces out of one scratch request: first count with base NULL, then carve.
typedef struct {
    char *base;
    size_t off;
} cu_carver;
static inline void *cu_carve(cu_carver *cv, size_t bytes) {
    void *p = cv->base ? cv->base + cv->off : NULL;
    cv->off += cu_round_up(bytes, 256);
    return p;
}

// ---------------------------------------------------------------------------------------
// activation storage (cuda.h act16): an op's activation pointers hold floats, or bf16 when
// the context says so. Kernels are templates over that storage type A, load through cu_f and
// store through cu_a<A>, and compute in fp32 in between; CU_ACT instantiates the host side.

typedef __nv_bfloat16 cu_bf16;
__device__ __forceinline__ float cu_f(float v) { return v; }
__device__ __forceinline__ float cu_f(cu_bf16 v) { return __bfloat162float(v); }
template <typename A>
__device__ __forceinline__ A cu_a(float v);
template <>
__device__ __forceinline__ float cu_a<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ cu_bf16 cu_a<cu_bf16>(float v) {
    return __float2bfloat16(v);  // round to nearest even
}
// Runs the statement(s) with A = cu_bf16 when bf16 is true, else float; CU_ACT: with A the
// activation storage type of context c.
#define CU_AS(bf16, ...)              \
    do {                              \
        if (bf16) {                   \
            typedef cu_bf16 A;        \
            __VA_ARGS__;              \
        } else {                      \
            typedef float A;          \
            __VA_ARGS__;              \
        }                             \
    } while (0)
#define CU_ACT(c, ...) CU_AS((c)->act16, __VA_ARGS__)
// Bytes of n activation elements.
static inline size_t cu_act_bytes(const cuda_ctx *c, size_t n) {
    return n * (c->act16 ? sizeof(cu_bf16) : sizeof(float));
}
// The paths without bf16 kernels (attention under dropout or at head widths the tensor-core
// kernels do not take) run act16 through fp32 copies of their activations: in the
// context's second scratch (cuda.h act_scratch), which the fp32 path's own cuda_scratch
// calls leave alone. At least `bytes`, valid until the next cuda_act_scratch call.
void *cuda_act_scratch(cuda_ctx *c, size_t bytes);
// p advanced by n activation elements of the given type (bf16: cu_bf16, else float)
static inline const float *cu_act_at(const float *p, size_t n, int bf16) {
    return bf16 ? (const float *)((const cu_bf16 *)p + n) : p + n;
}
static inline float *cu_act_at(float *p, size_t n, int bf16) {
    return bf16 ? (float *)((cu_bf16 *)p + n) : p + n;
}
// dst (n, fp32) = src (n, bf16), exactly
void cu_from_bf16(cuda_ctx *c, float *dst, const cu_bf16 *src, size_t n);

// ---------------------------------------------------------------------------------------
// deterministic reductions: fixed butterflies, fixed trees. After warp_sum every lane holds
// the same bits (each stage adds the same two values on both lanes, a + b == b + a).

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
// the result. Every thread of the block must call it (it synchronizes).
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T sh[32];
    const int lane = threadIdx.x % CU_WARP, warp = threadIdx.x / CU_WARP;
    v = warp_sum(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    const int nw = blockDim.x / CU_WARP;
    T r = lane < nw ? sh[lane] : (T)0;
    r = warp_sum(r);
    __syncthreads();  // sh may be reused by the next call
    return r;
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float sh[32];
    const int lane = threadIdx.x % CU_WARP, warp = threadIdx.x / CU_WARP;
    v = warp_max(v);
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    const int nw = blockDim.x / CU_WARP;
    float r = lane < nw ? sh[lane] : -INFINITY;
    r = warp_max(r);
    __syncthreads();
    return r;
}

// Records the first bad input a kernel finds (flag (4): code, op, a, b); cuda_ctx_sync reports.
enum { CU_FLAG_XENT_TARGET = 1, CU_FLAG_TOKEN = 2 };
__device__ __forceinline__ void cu_flag(int *flag, int code, int a, int b) {
    if (atomicCAS(flag, 0, code) == 0) {
        flag[1] = a;
        flag[2] = b;
    }
}

// ---------------------------------------------------------------------------------------
// row-major GEMM through column-major cuBLAS:
//   C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C,
// A stored row-major as (M, K) (ta = 0) or (K, M) (ta = 1) with row stride lda; B likewise
// as (K, N) or (N, K) with ldb; C (M, N) with ldc. Batched over `batch` matrices at element
// strides sA, sB, sC. Row-major C is column-major C^T = op(B)^T op(A)^T, hence the swap.
// With bf16 A and B: tensor cores, fp32 accumulation; C fp32, or bf16 (the sum of the fp32
// product and beta * C, rounded once).
void cu_gemm(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha, const float *A,
             int lda, long long sA, const float *B, int ldb, long long sB, float beta, float *C,
             int ldc, long long sC, int batch);
void cu_gemm(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha,
                  const __nv_bfloat16 *A, int lda, long long sA, const __nv_bfloat16 *B, int ldb,
                  long long sB, float beta, float *C, int ldc, long long sC, int batch);
void cu_gemm(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha, const cu_bf16 *A,
             int lda, long long sA, const cu_bf16 *B, int ldb, long long sB, float beta,
             cu_bf16 *C, int ldc, long long sC, int batch);
// out (N, OC) = inp (N, IC) @ w^T (OC, IC) + bias (OC), bf16 operands, through cuBLASLt's
// bias epilogue: one kernel where a broadcast of the bias and a GEMM reading it back were
// two passes over out. With gelu_pre (N, OC): gelu_pre = that sum and out = its GELU
// (CUBLASLT_EPILOGUE_GELU_AUX_BIAS, the tanh form), the GELU kernel's pass saved too.
// Returns 0, or -1 (nothing launched) when cuBLASLt has no algorithm for these shapes (its
// GELU input needs OC % 8 == 0); the caller then takes the unfused path.
// The bf16 overload: bias, gelu_pre and out bf16 (act16), the epilogue in fp32 on the
// unrounded product, each output rounded once.
int cu_gemm_lt(cuda_ctx *c, int N, int OC, int IC, const cu_bf16 *inp, const cu_bf16 *w,
               const float *bias, float *gelu_pre, float *out);
int cu_gemm_lt(cuda_ctx *c, int N, int OC, int IC, const cu_bf16 *inp, const cu_bf16 *w,
               const cu_bf16 *bias, cu_bf16 *gelu_pre, cu_bf16 *out);
// dpre (N, IC) = (dout (N, OC) @ w (OC, IC)) * GELU'(pre (N, IC)), bf16 operands, in one
// kernel (cuBLASLt's DGELU epilogue; overwrites dpre). 0, or -1 as cu_gemm_lt (IC % 8 != 0).
// pre and dpre fp32, or both bf16 (act16).
int cu_gemm_dgelu_lt(cuda_ctx *c, int N, int IC, int OC, const cu_bf16 *dout, const cu_bf16 *w,
                     const float *pre, float *dpre);
int cu_gemm_dgelu_lt(cuda_ctx *c, int N, int IC, int OC, const cu_bf16 *dout, const cu_bf16 *w,
                     const cu_bf16 *pre, cu_bf16 *dpre);
// dst (n) = bf16(src) (round to nearest even)
void cu_to_bf16(cuda_ctx *c, __nv_bfloat16 *dst, const float *src, size_t n);

// ---------------------------------------------------------------------------------------
// deterministic column sums: for S segments of R rows each (row r of segment s is row
// s * R + r of the data) and C columns, dst_k[s * sc + c] += sum over the segment's rows of
// f(s, r, c)[k], k < K (K = F::K, 1 or 2). Pass 1: each (segment, chunk of rows, column)
// sums its rows in order into a partial; pass 2: each (segment, column) adds its chunks'
// partials in order. The chunk size depends only on R, so results depend only on shapes.
// F: a copyable struct with `enum { K = .. }` and
//   __device__ void operator()(int s, int r, int c, float *v) const.
enum { CU_COLSUM_TX = 128 };

static inline int cu_colsum_rows_per_chunk(int R) {
    int ch = (R + 1023) / 1024;
    return ch < 32 ? 32 : ch;
}

template <typename F>
__global__ void k_colsum_partial(F f, int R, int C, int ch, int nch, float *part) {
    const int c = blockIdx.x * CU_COLSUM_TX + threadIdx.x;
    const int chunk = blockIdx.y, s = blockIdx.z;
    if (c >= C) return;  // no barriers below
    const int r0 = chunk * ch, r1 = r0 + ch < R ? r0 + ch : R;
    float acc[F::K];
    for (int k = 0; k < F::K; k++) acc[k] = 0;
    for (int r = r0; r < r1; r++) {
        float v[F::K];
        f(s, r, c, v);
        for (int k = 0; k < F::K; k++) acc[k] += v[k];
    }
    for (int k = 0; k < F::K; k++)
        part[(((size_t)s * nch + chunk) * F::K + k) * C + c] = acc[k];
}

// dst0/dst1 (S, sc) += chunk partials (S, nch, K, C), chunks in order. dst1 unused if K = 1.
// dst16: the destinations are bf16 (activation gradients under act16; the sum in fp32,
// rounded once), else fp32. (A host function: a kernel is launched only from the file that
// defines it.)
void cu_colsum_final(cuda_ctx *c, const float *part, int S, int nch, int K, int C, float *dst0,
                     float *dst1, int sc, int dst16);

template <typename F>
void cu_colsum(cuda_ctx *c, F f, int S, int R, int C, float *dst0, float *dst1, int sc,
               int dst16 = 0) {
    if (S <= 0 || R <= 0 || C <= 0) return;
    const int ch = cu_colsum_rows_per_chunk(R), nch = (R + ch - 1) / ch;
    MM_CHECK(S <= 65535, "colsum: %d segments exceed the grid limit", S);
    float *part = (float *)cuda_scratch(c, (size_t)S * nch * F::K * C * sizeof(float));
    dim3 g1((C + CU_COLSUM_TX - 1) / CU_COLSUM_TX, nch, S);
    CU_LAUNCH(k_colsum_partial<F>, g1, CU_COLSUM_TX, c->stream, f, R, C, ch, nch, part);
    CU_CHECK_LAUNCH("colsum partial");
    cu_colsum_final(c, part, S, nch, (int)F::K, C, dst0, dst1, sc, dst16);
}

// ---------------------------------------------------------------------------------------
// heads: (B, T, NH, HD) rows at row stride rs and column offset off  <->  (B, NH, T, HD)

// dst (B, NH, T, HD) = src[(b*T + t) * rs + off + h*HD + d] (bf16 dst: rounded to nearest)
void cu_heads_split(cuda_ctx *c, float *dst, const float *src, int B, int T, int NH, int HD,
                    int rs, int off);
void cu_heads_split(cuda_ctx *c, __nv_bfloat16 *dst, const float *src, int B, int T, int NH,
                    int HD, int rs, int off);
// dst[(b*T + t) * rs + off + h*HD + d] (+)= src (B, NH, T, HD): acc = 1 adds, 0 overwrites
void cu_heads_merge(cuda_ctx *c, float *dst, const float *src, int B, int T, int NH, int HD,
                    int rs, int off, int acc);

// Attention core on head-major q (B, NH, Tq, HD), k, v (B, NH, Tk, HD):
// att (B, NH, Tq, Tk) = masked softmax(scale q k^T), o (B, NH, Tq, HD) = att v. Query i may
// attend key j iff key_valid[b*Tk + j] && (P < 0 || j < P || j <= i) (P < 0: every key);
// a query with no allowed key gets a zero row.
void cu_attn_fwd(cuda_ctx *c, float *att, float *o, const float *q, const float *k,
                 const float *v, const uint8_t *key_valid, int B, int Tq, int Tk, int P, int NH,
                 int HD);
// Its backward: dq, dk, dv (head-major, overwritten) from dout (head-major) and att. ds is
// scratch of att's shape.
void cu_attn_bwd(cuda_ctx *c, float *dq, float *dk, float *dv, float *ds, const float *dout,
                 const float *q, const float *k, const float *v, const float *att, int B,
                 int Tq, int Tk, int NH, int HD);
// The same pair on tensor cores: q, k, v and dout in bf16; scores, softmax and its backward
// in fp32 (att, ds); the probabilities and dscores rounded to bf16 (att16, ds16, of att's
// shape) for the products after them, as FlashAttention-2 rounds P and dS; every product
// accumulates in fp32. o NULL: the probabilities only (no product with v). keep32 0: att
// holds unnormalized scores afterwards, only att16 the probabilities (one pass fewer when
// nothing reads att after the forward).
void cu_attn_fwd16(cuda_ctx *c, float *att, int keep32, __nv_bfloat16 *att16, float *o,
                   const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                   const uint8_t *key_valid, int B, int Tq, int Tk, int P, int NH, int HD);
void cu_attn_bwd16(cuda_ctx *c, float *dq, float *dk, float *dv, float *ds,
                   __nv_bfloat16 *ds16, const __nv_bfloat16 *dout, const __nv_bfloat16 *q,
                   const __nv_bfloat16 *k, const __nv_bfloat16 *v, const float *att,
                   const __nv_bfloat16 *att16, int B, int Tq, int Tk, int NH, int HD);

// One LayerNorm row's statistics, for the warp that owns the row (each lane its columns lane,
// lane + 32, ...): from each lane's partial sum s of x, the mean (*m) and the returned rstd,
// the variance in a second pass as on the CPU (no cancellation when |mean| >> std), eps 1e-5.
template <typename X>
__device__ __forceinline__ float cu_layernorm_rstd(const X *x, float s, int C, int lane,
                                                   float *m) {
    const float mean = warp_sum(s) / C;
    float v = 0;
    for (int c = lane; c < C; c += CU_WARP) v += (cu_f(x[c]) - mean) * (cu_f(x[c]) - mean);
    *m = mean;
    return 1 / sqrtf(warp_sum(v) / C + 1e-5f);
}

// One LayerNorm row's input gradient, for the warp that owns the row (each lane its columns
// lane, lane + 32, ...): dx (C) += (d g - mean(d g) - xhat mean(d g xhat)) rstd, where d(c) is
// the gradient arriving at column c: the output's, or (the DiT) one formed on the fly.
// x and dx of the activation storage type A.
template <typename A, typename D>
__device__ __forceinline__ void cu_layernorm_bwd_row(A *dx, const A *x, const float *g, float m,
                                                     float rs, int C, int lane, D d) {
    float s1 = 0, s2 = 0;
    for (int c = lane; c < C; c += CU_WARP) {
        const float dn = d(c) * g[c];
        s1 += dn;
        s2 += dn * (cu_f(x[c]) - m) * rs;
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    for (int c = lane; c < C; c += CU_WARP) {
        const float xh = (cu_f(x[c]) - m) * rs;
        dx[c] = cu_a<A>(cu_f(dx[c]) + (d(c) * g[c] - s1 - xh * s2) * rs);
    }
}

// Self-attention's mask on packed qkv: query i may see the keys below cu_attn_lim(i, P)
// (then filtered by key_valid): the whole prefix for a prefix query (i < P), itself and
// everything before for a causal one. Nondecreasing in i.
__device__ __forceinline__ int cu_attn_lim(int i, int P) { return i < P ? P : i + 1; }

// Attention on tensor cores (ops_flash_tc_cuda.cu), for precision bf16 without dropout:
// cu_flash_tc_ok says whether the kernels take heads of width HD. The operands are read in
// place: row i of sample b, head h of q is q + (b * Tq + i) * sq + h * HD (k, v likewise with
// Tk and skv); query i sees the keys j < min(cu_attn_lim(i, P), Tk) with key_valid[b * Tk + j]
// (P >= Tq and Tk: every key, as cross-attention does). Not owned.
typedef struct {
    const float *q, *k, *v;    // bf16 when bf16 is set
    int sq, skv;
    const uint8_t *key_valid;  // (B, Tk)
    int Tq, Tk, P, NH;
    float scale;               // of the scores: 1 / sqrt(HD)
    int bf16;                  // 1: q, k, v, out, dout, dq, dk, dv are bf16 (act16)
} cu_flash;
int cu_flash_tc_ok(int HD);
// out (B, Tq, NH, HD), and lse (B, NH, Tq) (-inf for a query with no allowed key, whose
// output is zero)
void cu_flash_tc_fwd(cuda_ctx *c, const cu_flash *a, int B, int HD, float *out, float *lse);
// dq (row stride sdq), dk and dv (row stride sdkv) += the gradients from dout (B, Tq, NH, HD),
// the forward's lse and D (cu_flash_row_terms)
void cu_flash_tc_bwd(cuda_ctx *c, const cu_flash *a, int B, int HD, float *dq, int sdq, float *dk,
                     float *dv, int sdkv, const float *dout, const float *lse, const float *D);
// D (B, NH, T) = dout . out row by row (the softmax backward's row term), in scratch; dout
// and out bf16 when bf16 is set
const float *cu_flash_row_terms(cuda_ctx *c, const float *dout, const float *out, int B, int T,
                                int NH, int HD, int bf16);

// ---------------------------------------------------------------------------------------
// the ops table's memory and glue ops (ops_glue_cuda.cu; model.h documents them)

void *cu_mem_alloc(const mm_backend *be MM_UNUSED, size_t bytes);
void cu_mem_free(const mm_backend *be MM_UNUSED, void *p);
void cu_mem_upload(const mm_backend *be MM_UNUSED, void *dst, const void *host, size_t bytes);
void cu_mem_download(const mm_backend *be MM_UNUSED, void *host, const void *src, size_t bytes);
void cu_mem_zero(const mm_backend *be MM_UNUSED, void *p, size_t bytes);
void cu_mem_copy(const mm_backend *be, void *dst, const void *src, size_t bytes);
void cu_act_from_real(const mm_backend *be, float *dst, const float *src, size_t n);
void cu_act_to_real(const mm_backend *be, float *dst, const float *src, size_t n);
void cu_copy_rows(const mm_backend *be MM_UNUSED, float *dst, size_t dst_stride, const float *src,
                  size_t src_stride, size_t width, int rows);
void cu_patchify(const mm_backend *be MM_UNUSED, float *patches, const float *img, int B, int H,
                 int W, int c, int p);
void cu_unpatchify(const mm_backend *be MM_UNUSED, float *img, const float *patches, int B, int H,
                   int W, int c, int p);
// the convolutional stem's gather, its adjoint and the 2x2 max pooling (ops_conv_cuda.cu)
void cu_im2col3(const mm_backend *be, float *cols, const float *img, int B, int H, int W, int c);
void cu_col2im3(const mm_backend *be, float *dimg, const float *dcols, int B, int H, int W, int c);
void cu_maxpool2_fwd(const mm_backend *be, float *out, const float *x, int B, int H, int W, int c);
void cu_maxpool2_bwd(const mm_backend *be, float *dx, const float *dout, const float *x, int B,
                     int H, int W, int c);
void cu_embed_fwd(const mm_backend *be MM_UNUSED, float *x0, uint8_t *key_valid,
                  const float *emb_img, const float *emb_aud, const float *img_pos,
                  const float *aud_pos, const float *wte, const float *tpos, const int32_t *tokens,
                  int tok_stride, const uint8_t *has_image, const uint8_t *has_audio, int B, int T,
                  int n_img, int n_aud, int C, int V);
void cu_embed_bwd(const mm_backend *be MM_UNUSED, float *g_img_pos, float *g_aud_pos, float *g_wte,
                  float *g_tpos, const float *dx0, const int32_t *tokens, int B, int T, int n_img,
                  int n_aud, int C, int V);
void cu_seq_loss(const mm_backend *be MM_UNUSED, double *out, const float *losses,
                 const int32_t *targets, int B, int Tt);
void cu_seq_dloss(const mm_backend *be MM_UNUSED, float *dloss, const int32_t *targets, float scale,
                  int B, int Tt);

#endif  // MM_CUDA_INTERNAL_H
