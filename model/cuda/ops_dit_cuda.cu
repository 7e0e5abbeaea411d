// ops_dit_cuda.cu: the CUDA backend of the diffusion model's ops (dit_ops in diffusion.h),
// the device twin of ops_dit_cpu.c: SiLU, adaLN modulation, gated residual adds, cross-
// attention and the per-sample MSE, so that model/diffusion.c runs unchanged on a GPU.
//
// Conventions as ops_cuda.cu: every backward accumulates (+=) except mse_bwd (overwrites),
// no float atomics; the per-sample shift/scale/gate gradients are column sums over a sample's
// rows done by cu_colsum's two fixed passes, and the MSE sums fixed chunks in double, then the
// chunks in order, so every result is the same bits run after run. Cross-attention runs, with
// every valid key allowed, the tensor-core flash kernels (ops_flash_tc_cuda.cu) in bf16 where
// the heads allow, else the attention core of ops_cuda.cu (cuBLAS for the products).
// Every activation an op here reads or writes is bf16 under cuda.h act16 (SiLU, modulation,
// gated residuals and their shift, scale and gate vectors, cross-attention, the timestep
// features, positions, pooling and their gradients): loads widen to fp32, each output is
// rounded once. The MSE, training pairs, sampler steps and x-prediction work on the
// model's mm_real inputs and outputs (diffusion.c converts at the edges), never on
// activations, so they stay fp32.
#include "cuda_internal.h"

extern "C" {
#include "../../data/data.h"  // DATA_TOK_PAD
}

// ---------------------------------------------------------------------------------------
// SiLU: x * sigmoid(x)

template <typename A>
__global__ void k_silu_fwd(A *out, const A *x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = cu_f(x[i]);
        out[i] = cu_a<A>(v / (1 + expf(-v)));
    }
}

// d/dx x s(x) = s (1 + x (1 - s))
template <typename A>
__global__ void k_silu_bwd(A *dx, const A *x, const A *dout, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float v = cu_f(x[i]), s = 1 / (1 + expf(-v));
        dx[i] = cu_a<A>(cu_f(dx[i]) + cu_f(dout[i]) * s * (1 + v * (1 - s)));
    }
}

static void silu_fwd(const mm_backend *be, float *out, const float *x, size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_silu_fwd<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, (A *)out,
                        (const A *)x, n));
    CU_CHECK_LAUNCH("silu_fwd");
}

static void silu_bwd(const mm_backend *be, float *dx, const float *x, const float *dout,
                     size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_silu_bwd<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, (A *)dx,
                        (const A *)x, (const A *)dout, n));
    CU_CHECK_LAUNCH("silu_bwd");
}

// ---------------------------------------------------------------------------------------
// adaLN modulation and gated residual: per-sample vectors (stride sc) broadcast over N rows.
// Row kernels over the B * N rows of (B, N, C): one block per row (grid-stride), threads
// along it; the row's sample is r / N.

template <typename A>
__global__ void k_modulate_fwd(A *out, const A *x, const A *shift, const A *scale, int sc,
                               int rows, int N, int C) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t o = (size_t)r * C, p = (size_t)(r / N) * sc;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            out[o + c] = cu_a<A>(cu_f(x[o + c]) * (1 + cu_f(scale[p + c])) + cu_f(shift[p + c]));
    }
}

// LayerNorm (after the residual add, gated or not, when b is given) and modulation (when
// shift is given), one warp per row: the statistics as k_add_layernorm_fwd's
// (cu_layernorm_rstd), then h and out from registers. Each lane reads back only the elements of res
// it wrote, so no barrier.
enum { LNM_ROWS = CU_THREADS / CU_WARP };
// In bf16 (act16) the statistics are the rounded sum's, the res the backward reads; h and out
// are each rounded once from fp32.
template <typename A>
__global__ void k_ln_modulate_fwd(A *res, A *h, A *out, float *mean, float *rstd, const A *a,
                                  const A *b, const A *gate, const float *g, const float *beta,
                                  const A *shift, const A *scale, int sc, int rows, int N, int C) {
    const int r = blockIdx.x * LNM_ROWS + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (r >= rows) return;  // the whole warp: the shuffles below see every lane
    const size_t o = (size_t)r * C, p = (size_t)(r / N) * sc;
    const A *xr = a + o;
    float s = 0;
    if (b) {
        for (int c = lane; c < C; c += CU_WARP) {
            const float ac = cu_f(a[o + c]), bc = cu_f(b[o + c]);
            const A v = cu_a<A>(gate ? ac + cu_f(gate[p + c]) * bc : ac + bc);
            res[o + c] = v;
            s += cu_f(v);
        }
        xr = res + o;
    } else {
        for (int c = lane; c < C; c += CU_WARP) s += cu_f(xr[c]);
    }
    float m;
    const float rs = cu_layernorm_rstd(xr, s, C, lane, &m);
    for (int c = lane; c < C; c += CU_WARP) {
        const float hv = (cu_f(xr[c]) - m) * rs * g[c] + beta[c];
        h[o + c] = cu_a<A>(hv);
        if (shift) out[o + c] = cu_a<A>(hv * (1 + cu_f(scale[p + c])) + cu_f(shift[p + c]));
    }
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

// dx += the LayerNorm backward of dh = dout * (1 + scale[sample]), formed on the fly, one warp
// per row
template <typename A>
__global__ void k_modulate_ln_bwd_dx(A *dx, const A *dout, const A *scale, int sc, const A *x,
                                     const float *g, const float *mean, const float *rstd,
                                     int rows, int N, int C) {
    const int r = blockIdx.x * LNM_ROWS + threadIdx.x / CU_WARP;
    const int lane = threadIdx.x % CU_WARP;
    if (r >= rows) return;  // the whole warp: the shuffles below see every lane
    const size_t o = (size_t)r * C;
    const A *dr = dout + o, *sl = scale + (size_t)(r / N) * sc;
    cu_layernorm_bwd_row(dx + o, x + o, g, mean[r], rstd[r], C, lane,
                         [dr, sl](int c) { return cu_f(dr[c]) * (1 + cu_f(sl[c])); });
}

// dx += dout * (1 + scale)
template <typename A>
__global__ void k_modulate_bwd_dx(A *dx, const A *dout, const A *scale, int sc, int rows, int N,
                                  int C) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t o = (size_t)r * C, p = (size_t)(r / N) * sc;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            dx[o + c] = cu_a<A>(cu_f(dx[o + c]) + cu_f(dout[o + c]) * (1 + cu_f(scale[p + c])));
    }
}

// out = x + gate * y (out may be x)
template <typename A>
__global__ void k_gated_add_fwd(A *out, const A *x, const A *y, const A *gate, int sc, int rows,
                                int N, int C) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t o = (size_t)r * C, p = (size_t)(r / N) * sc;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            out[o + c] = cu_a<A>(cu_f(x[o + c]) + cu_f(gate[p + c]) * cu_f(y[o + c]));
    }
}

// dy += dx * gate
template <typename A>
__global__ void k_gated_add_bwd_dy(A *dy, const A *dx, const A *gate, int sc, int rows, int N,
                                   int C) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const size_t o = (size_t)r * C, p = (size_t)(r / N) * sc;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            dy[o + c] = cu_a<A>(cu_f(dy[o + c]) + cu_f(dx[o + c]) * cu_f(gate[p + c]));
    }
}

// per sample s, row r, column c of (B, N, C) data: dshift += dout, dscale += dout * x
template <typename A>
struct colsum_modulate {
    enum { K = 2 };
    const A *dout, *x;
    int N, C;
    __device__ void operator()(int s, int r, int c, float *v) const {
        const size_t i = ((size_t)s * N + r) * C + c;
        v[0] = cu_f(dout[i]);
        v[1] = cu_f(dout[i]) * cu_f(x[i]);
    }
};

// dgate += dx * y
template <typename A>
struct colsum_gate {
    enum { K = 1 };
    const A *dx, *y;
    int N, C;
    __device__ void operator()(int s, int r, int c, float *v) const {
        const size_t i = ((size_t)s * N + r) * C + c;
        v[0] = cu_f(dx[i]) * cu_f(y[i]);
    }
};

static void modulate_fwd(const mm_backend *be, float *out, const float *x,
                         const float *shift, const float *scale, int sc, int B, int N, int C) {
    const size_t n = (size_t)B * N * C;
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_modulate_fwd<A>, cu_row_blocks(B * N), CU_THREADS, c->stream, (A *)out,
                        (const A *)x, (const A *)shift, (const A *)scale, sc, B * N, N, C));
    CU_CHECK_LAUNCH("modulate_fwd");
}

static void ln_modulate_fwd(const mm_backend *be, float *res, float *h, float *out, float *mean,
                            float *rstd, const float *a, const float *b, const float *gate,
                            const float *g, const float *beta, const float *shift,
                            const float *scale, int sc, int B, int N, int C) {
    const int rows = B * N;
    if (rows <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_ln_modulate_fwd<A>, (unsigned)((rows + LNM_ROWS - 1) / LNM_ROWS),
                        CU_THREADS, c->stream, (A *)res, (A *)h, (A *)out, mean, rstd,
                        (const A *)a, (const A *)b, (const A *)gate, g, beta, (const A *)shift,
                        (const A *)scale, sc, rows, N, C));
    CU_CHECK_LAUNCH("ln_modulate_fwd");
}

static void modulate_bwd(const mm_backend *be, float *dx, float *dshift, float *dscale,
                         const float *dout, const float *x, const float *scale, int sc, int B,
                         int N, int C) {
    const size_t n = (size_t)B * N * C;
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, {
        cu_colsum(c, colsum_modulate<A>{(const A *)dout, (const A *)x, N, C}, B, N, C, dshift,
                  dscale, sc, c->act16);
        CU_LAUNCH(k_modulate_bwd_dx<A>, cu_row_blocks(B * N), CU_THREADS, c->stream, (A *)dx,
                  (const A *)dout, (const A *)scale, sc, B * N, N, C);
    });
    CU_CHECK_LAUNCH("modulate_bwd");
}

static void modulate_ln_bwd(const mm_backend *be, float *dx, float *dshift, float *dscale,
                            float *dh, const float *dout, const float *h, const float *scale,
                            int sc, const float *x, const float *g, const float *mean,
                            const float *rstd, int B, int N, int C) {
    (void)dh;
    const int rows = B * N;
    if (rows <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, {
        cu_colsum(c, colsum_modulate<A>{(const A *)dout, (const A *)h, N, C}, B, N, C, dshift,
                  dscale, sc, c->act16);
        CU_LAUNCH(k_modulate_ln_bwd_dx<A>, (unsigned)((rows + LNM_ROWS - 1) / LNM_ROWS),
                  CU_THREADS, c->stream, (A *)dx, (const A *)dout, (const A *)scale, sc,
                  (const A *)x, g, mean, rstd, rows, N, C);
    });
    CU_CHECK_LAUNCH("modulate_ln_bwd");
}

static void gated_add_fwd(const mm_backend *be, float *out, const float *x, const float *y,
                          const float *gate, int sc, int B, int N, int C) {
    const size_t n = (size_t)B * N * C;
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_gated_add_fwd<A>, cu_row_blocks(B * N), CU_THREADS, c->stream, (A *)out,
                        (const A *)x, (const A *)y, (const A *)gate, sc, B * N, N, C));
    CU_CHECK_LAUNCH("gated_add_fwd");
}

static void gated_add_bwd(const mm_backend *be, float *dy, float *dgate, const float *dx,
                          const float *y, const float *gate, int sc, int B, int N, int C) {
    const size_t n = (size_t)B * N * C;
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, {
        cu_colsum(c, colsum_gate<A>{(const A *)dx, (const A *)y, N, C}, B, N, C, dgate, NULL, sc,
                  c->act16);
        CU_LAUNCH(k_gated_add_bwd_dy<A>, cu_row_blocks(B * N), CU_THREADS, c->stream, (A *)dy,
                  (const A *)dx, (const A *)gate, sc, B * N, N, C);
    });
    CU_CHECK_LAUNCH("gated_add_bwd");
}

// ---------------------------------------------------------------------------------------
// cross-attention: q (B, Tq, NH, HD), kv (B, Tk, 2, NH, HD) -> out (B, Tq, NH, HD)

// In bf16 without dropout, and for heads the kernels take, the tensor-core flash kernels
// (ops_flash_tc_cuda.cu; bf16 activations read and written in place): att then holds lse
// (B, NH, Tq), then a copy of key_valid (B, Tk) bytes for the backward, which fits in att's
// (B, NH, Tq, Tk) floats once Tk >= 2.
static int xattn_flash_tc(const cuda_ctx *c, int Tk, int HD) {
    return c->precision == CUDA_BF16 && c->flash_tc && cu_flash_tc_ok(HD) && Tk >= 2;
}
static uint8_t *xattn_saved_mask(const float *att, int B, int Tq, int NH) {
    return (uint8_t *)(att + (size_t)B * NH * Tq);
}
static cu_flash xattn_flash(const cuda_ctx *c, const float *q, const float *kv,
                            const uint8_t *key_valid, int Tq, int Tk, int NH, int HD) {
    const int C = NH * HD;
    return cu_flash{q, kv, cu_act_at(kv, C, c->act16), C, 2 * C, key_valid, Tq, Tk,
                    Tq > Tk ? Tq : Tk, NH, 1 / sqrtf((float)HD), c->act16};
}

// The paths of fp32 activations other than the tensor-core flash kernels.
static void xattn_fwd32(cuda_ctx *c, float *out, float *att, const float *q, const float *kv,
                        const uint8_t *key_valid, int B, int Tq, int Tk, int NH, int HD) {
    const int C = NH * HD;
    if (c->precision == CUDA_BF16) {  // tensor cores; att (saved) stays fp32
        typedef __nv_bfloat16 bf16;
        const size_t eq = (size_t)B * Tq * C, ek = (size_t)B * Tk * C, h = sizeof(bf16);
        bf16 *q16, *k16, *v16, *att16;
        float *oh;
        cu_carver cv = {NULL, 0};
        for (int pass = 0; pass < 2; pass++) {  // count, then carve
            q16 = (bf16 *)cu_carve(&cv, eq * h);
            k16 = (bf16 *)cu_carve(&cv, ek * h);
            v16 = (bf16 *)cu_carve(&cv, ek * h);
            oh = (float *)cu_carve(&cv, eq * 4);
            att16 = (bf16 *)cu_carve(&cv, (size_t)B * NH * Tq * Tk * h);
            if (pass == 0) cv = {(char *)cuda_scratch(c, cv.off), 0};
        }
        cu_heads_split(c, q16, q, B, Tq, NH, HD, C, 0);
        cu_heads_split(c, k16, kv, B, Tk, NH, HD, 2 * C, 0);
        cu_heads_split(c, v16, kv, B, Tk, NH, HD, 2 * C, C);
        cu_attn_fwd16(c, att, 1, att16, oh, q16, k16, v16, key_valid, B, Tq, Tk, -1, NH, HD);
        cu_heads_merge(c, out, oh, B, Tq, NH, HD, C, 0, 0);
        return;
    }
    const size_t nq = cu_round_up((size_t)B * Tq * C * sizeof(float), 256);
    const size_t nk = cu_round_up((size_t)B * Tk * C * sizeof(float), 256);
    char *ws = (char *)cuda_scratch(c, 2 * nq + 2 * nk);
    float *qh = (float *)ws, *oh = (float *)(ws + nq), *kh = (float *)(ws + 2 * nq),
          *vh = (float *)(ws + 2 * nq + nk);
    cu_heads_split(c, qh, q, B, Tq, NH, HD, C, 0);
    cu_heads_split(c, kh, kv, B, Tk, NH, HD, 2 * C, 0);
    cu_heads_split(c, vh, kv, B, Tk, NH, HD, 2 * C, C);
    cu_attn_fwd(c, att, oh, qh, kh, vh, key_valid, B, Tq, Tk, -1, NH, HD);
    cu_heads_merge(c, out, oh, B, Tq, NH, HD, C, 0, 0);
}

static void xattn_fwd(const mm_backend *be, float *out, float *att, const float *q,
                      const float *kv, const uint8_t *key_valid, int B, int Tq, int Tk, int NH,
                      int HD) {
    if (B <= 0 || Tq <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    const int C = NH * HD;
    const size_t nq = (size_t)B * Tq * C, nkv = (size_t)B * Tk * 2 * C;
    if (Tk <= 0) {  // no key at all: zero rows, zero output (as the CPU's empty softmax)
        CU_CHECK(cudaMemsetAsync(out, 0, cu_act_bytes(c, nq), c->stream));
        return;
    }
    if (xattn_flash_tc(c, Tk, HD)) {
        uint8_t *mask = xattn_saved_mask(att, B, Tq, NH);
        CU_CHECK(cudaMemcpyAsync(mask, key_valid, (size_t)B * Tk, cudaMemcpyDeviceToDevice,
                                 c->stream));
        const cu_flash a = xattn_flash(c, q, kv, mask, Tq, Tk, NH, HD);
        cu_flash_tc_fwd(c, &a, B, HD, out, att);
        return;
    }
    if (!c->act16) {
        xattn_fwd32(c, out, att, q, kv, key_valid, B, Tq, Tk, NH, HD);
        return;
    }
    // bf16 activations on a path without bf16 kernels: through fp32 copies
    float *q32 = (float *)cuda_act_scratch(c, (2 * nq + nkv) * sizeof(float)), *o32 = q32 + nq,
          *kv32 = o32 + nq;
    cu_from_bf16(c, q32, (const cu_bf16 *)q, nq);
    cu_from_bf16(c, kv32, (const cu_bf16 *)kv, nkv);
    xattn_fwd32(c, o32, att, q32, kv32, key_valid, B, Tq, Tk, NH, HD);
    cu_to_bf16(c, (cu_bf16 *)out, o32, nq);
}

// The paths of fp32 activations other than the tensor-core flash kernels.
static void xattn_bwd32(cuda_ctx *c, float *dq, float *dkv, const float *dout, const float *q,
                        const float *kv, const float *att, int B, int Tq, int Tk, int NH,
                        int HD) {
    const int C = NH * HD;
    if (c->precision == CUDA_BF16) {  // tensor cores, from a bf16 copy of the saved att
        typedef __nv_bfloat16 bf16;
        const size_t eq = (size_t)B * Tq * C, ek = (size_t)B * Tk * C, h = sizeof(bf16);
        const size_t ea = (size_t)B * NH * Tq * Tk;
        bf16 *q16, *do16, *k16, *v16, *att16, *ds16;
        float *dqh, *dkh, *dvh, *ds;
        cu_carver cv = {NULL, 0};
        for (int pass = 0; pass < 2; pass++) {  // count, then carve
            q16 = (bf16 *)cu_carve(&cv, eq * h);
            do16 = (bf16 *)cu_carve(&cv, eq * h);
            k16 = (bf16 *)cu_carve(&cv, ek * h);
            v16 = (bf16 *)cu_carve(&cv, ek * h);
            att16 = (bf16 *)cu_carve(&cv, ea * h);
            ds16 = (bf16 *)cu_carve(&cv, ea * h);
            dqh = (float *)cu_carve(&cv, eq * 4);
            dkh = (float *)cu_carve(&cv, ek * 4);
            dvh = (float *)cu_carve(&cv, ek * 4);
            ds = (float *)cu_carve(&cv, ea * 4);
            if (pass == 0) cv = {(char *)cuda_scratch(c, cv.off), 0};
        }
        cu_heads_split(c, q16, q, B, Tq, NH, HD, C, 0);
        cu_heads_split(c, do16, dout, B, Tq, NH, HD, C, 0);
        cu_heads_split(c, k16, kv, B, Tk, NH, HD, 2 * C, 0);
        cu_heads_split(c, v16, kv, B, Tk, NH, HD, 2 * C, C);
        cu_to_bf16(c, att16, att, ea);
        cu_attn_bwd16(c, dqh, dkh, dvh, ds, ds16, do16, q16, k16, v16, att, att16, B, Tq, Tk, NH,
                      HD);
        cu_heads_merge(c, dq, dqh, B, Tq, NH, HD, C, 0, 1);
        cu_heads_merge(c, dkv, dkh, B, Tk, NH, HD, 2 * C, 0, 1);
        cu_heads_merge(c, dkv, dvh, B, Tk, NH, HD, 2 * C, C, 1);
        return;
    }
    const size_t nq = cu_round_up((size_t)B * Tq * C * sizeof(float), 256);
    const size_t nk = cu_round_up((size_t)B * Tk * C * sizeof(float), 256);
    const size_t na = cu_round_up((size_t)B * NH * Tq * Tk * sizeof(float), 256);
    char *ws = (char *)cuda_scratch(c, 3 * nq + 4 * nk + na);
    float *qh = (float *)ws, *doh = (float *)(ws + nq), *dqh = (float *)(ws + 2 * nq);
    char *wk = ws + 3 * nq;
    float *kh = (float *)wk, *vh = (float *)(wk + nk), *dkh = (float *)(wk + 2 * nk),
          *dvh = (float *)(wk + 3 * nk), *ds = (float *)(wk + 4 * nk);
    cu_heads_split(c, qh, q, B, Tq, NH, HD, C, 0);
    cu_heads_split(c, doh, dout, B, Tq, NH, HD, C, 0);
    cu_heads_split(c, kh, kv, B, Tk, NH, HD, 2 * C, 0);
    cu_heads_split(c, vh, kv, B, Tk, NH, HD, 2 * C, C);
    cu_attn_bwd(c, dqh, dkh, dvh, ds, doh, qh, kh, vh, att, B, Tq, Tk, NH, HD);
    cu_heads_merge(c, dq, dqh, B, Tq, NH, HD, C, 0, 1);
    cu_heads_merge(c, dkv, dkh, B, Tk, NH, HD, 2 * C, 0, 1);
    cu_heads_merge(c, dkv, dvh, B, Tk, NH, HD, 2 * C, C, 1);
}

static void xattn_bwd(const mm_backend *be, float *dq, float *dkv, const float *dout,
                      const float *q, const float *kv, const float *out, const float *att, int B,
                      int Tq, int Tk, int NH, int HD) {
    if (B <= 0 || Tq <= 0 || Tk <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    const int C = NH * HD, h = c->act16;
    if (xattn_flash_tc(c, Tk, HD)) {
        const cu_flash a = xattn_flash(c, q, kv, xattn_saved_mask(att, B, Tq, NH), Tq, Tk, NH, HD);
        const float *D = cu_flash_row_terms(c, dout, out, B, Tq, NH, HD, h);
        cu_flash_tc_bwd(c, &a, B, HD, dq, C, dkv, cu_act_at(dkv, C, h), 2 * C, dout, att, D);
        return;
    }
    if (!h) {
        xattn_bwd32(c, dq, dkv, dout, q, kv, att, B, Tq, Tk, NH, HD);
        return;
    }
    // bf16 activations on a path without bf16 kernels: through fp32 copies (dq's and dkv's
    // too, as the backward adds into them)
    const size_t nq = (size_t)B * Tq * C, nkv = (size_t)B * Tk * 2 * C;
    float *q32 = (float *)cuda_act_scratch(c, (3 * nq + 2 * nkv) * sizeof(float)),
          *dq32 = q32 + nq, *do32 = dq32 + nq, *kv32 = do32 + nq, *dkv32 = kv32 + nkv;
    cu_from_bf16(c, q32, (const cu_bf16 *)q, nq);
    cu_from_bf16(c, dq32, (const cu_bf16 *)dq, nq);
    cu_from_bf16(c, do32, (const cu_bf16 *)dout, nq);
    cu_from_bf16(c, kv32, (const cu_bf16 *)kv, nkv);
    cu_from_bf16(c, dkv32, (const cu_bf16 *)dkv, nkv);
    xattn_bwd32(c, dq32, dkv32, do32, q32, kv32, att, B, Tq, Tk, NH, HD);
    cu_to_bf16(c, (cu_bf16 *)dq, dq32, nq);
    cu_to_bf16(c, (cu_bf16 *)dkv, dkv32, nkv);
}

// ---------------------------------------------------------------------------------------
// per-sample mean squared error: chunks of MSE_CHUNK elements summed in double by one block
// each, then each sample's chunks in order.

enum { MSE_CHUNK = 8192 };

__global__ void k_mse_partial(double *part, const float *pred, const float *target, size_t n,
                              int nch) {
    const int ch = blockIdx.x, b = blockIdx.y;
    const size_t lo = (size_t)ch * MSE_CHUNK, hi = lo + MSE_CHUNK < n ? lo + MSE_CHUNK : n;
    const float *p = pred + (size_t)b * n, *t = target + (size_t)b * n;
    double s = 0;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const double d = (double)p[i] - (double)t[i];
        s += d * d;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) part[(size_t)b * nch + ch] = s;
}

__global__ void k_mse_final(float *loss, const double *part, int nch, size_t n) {
    const int b = blockIdx.x;
    double s = 0;
    for (int ch = threadIdx.x; ch < nch; ch += blockDim.x) s += part[(size_t)b * nch + ch];
    s = block_sum(s);
    if (threadIdx.x == 0) loss[b] = (float)(s / (double)n);
}

static void mse_fwd(const mm_backend *be, float *loss, const float *pred,
                    const float *target, int B, size_t n) {
    if (B <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    MM_CHECK(n > 0, "mse_fwd: empty samples (a mean over no pixels)");
    MM_CHECK(B <= 65535, "mse_fwd: %d samples exceed the grid limit", B);
    const size_t nch = (n + MSE_CHUNK - 1) / MSE_CHUNK;
    MM_CHECK(nch < (size_t)1 << 30, "mse_fwd: %zu elements per sample", n);
    double *part = (double *)cuda_scratch(c, (size_t)B * nch * sizeof(double));
    CU_LAUNCH(k_mse_partial, dim3((unsigned)nch, B), CU_THREADS, c->stream, part, pred, target, n,
              (int)nch);
    CU_CHECK_LAUNCH("mse partial");
    CU_LAUNCH(k_mse_final, (unsigned)B, CU_THREADS, c->stream, loss, part, (int)nch, n);
    CU_CHECK_LAUNCH("mse final");
}

// dpred (B, n) = 2 (pred - target) / n * dloss[b] (overwrites), as the CPU groups it
__global__ void k_mse_bwd(float *dpred, const float *pred, const float *target,
                          const float *dloss, size_t total, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        dpred[i] = 2 * (pred[i] - target[i]) * (dloss[i / n] / (float)n);
}

static void mse_bwd(const mm_backend *be, float *dpred, const float *pred,
                    const float *target, const float *dloss, int B, size_t n) {
    const size_t total = (size_t)B * n;
    if (B <= 0 || total == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_mse_bwd, cu_blocks(total, CU_THREADS), CU_THREADS, c->stream, dpred, pred, target,
              dloss, total, n);
    CU_CHECK_LAUNCH("mse_bwd");
}

// ---------------------------------------------------------------------------------------
// glue (diffusion.h): the CUDA twins of ops_dit_cpu.c's glue ops. One thread per output
// element; every sum runs in the CPU's order (the pooled mean over keys in key order, the
// position gradients over samples in sample order), and the double-precision formulas are the
// CPU's (no FMA contraction: --fmad=false), so the results are the CPU's bits except where
// device cos/sin/sqrt round differently in the last place.

template <typename A>
__global__ void k_time_embed(A *out, const float *t, int B, int C) {
    const int half = C / 2;
    const size_t n = (size_t)B * half;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int b = (int)(i / half), k = (int)(i % half);
        const double arg = (double)t[b] * 1000.0 * exp(-log(10000.0) * k / half);
        out[(size_t)b * C + k] = cu_a<A>((float)cos(arg));
        out[(size_t)b * C + half + k] = cu_a<A>((float)sin(arg));
    }
}

static void time_embed(const mm_backend *be, float *out, const float *t, int B, int C) {
    const size_t n = (size_t)B * (C / 2);
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_time_embed<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream,
                        (A *)out, t, B, C));
    CU_CHECK_LAUNCH("time_embed");
}

__global__ void k_text_tokens(int32_t *tok, uint8_t *key_valid, const int32_t *tokens,
                              const uint8_t *has_text, int B, int T, int V, int pad, int *flag) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < B * T; r += gridDim.x * blockDim.x) {
        const int b = r / T;
        int k = pad;
        if (has_text[b]) {
            k = tokens[r];
            if (k < 0 || k >= V) {  // recorded for cuda_ctx_sync; PAD keeps later reads in bounds
                cu_flag(flag, CU_FLAG_TOKEN, k, b);
                k = pad;
            }
        }
        tok[r] = k;
        key_valid[r] = has_text[b] && k != pad;
    }
}

static void text_tokens(const mm_backend *be, int32_t *tok, uint8_t *key_valid,
                        const int32_t *tokens, const uint8_t *has_text, int B, int T, int V) {
    if (B * T <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_text_tokens, cu_blocks((size_t)B * T, CU_THREADS), CU_THREADS, c->stream, tok,
              key_valid, tokens, has_text, B, T, V, (int)DATA_TOK_PAD, c->flag);
    CU_CHECK_LAUNCH("text_tokens");
}

template <typename A>
__global__ void k_add_pos(A *x, const float *pos, int B, int T, int C) {
    const size_t n = (size_t)B * T * C, tc = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] = cu_a<A>(cu_f(x[i]) + pos[i % tc]);
}

static void add_pos(const mm_backend *be, float *x, const float *pos, int B, int T,
                    int C) {
    const size_t n = (size_t)B * T * C;
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_add_pos<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, (A *)x,
                        pos, B, T, C));
    CU_CHECK_LAUNCH("add_pos");
}

__global__ void k_sample_keys(uint8_t *key_valid, const uint8_t *has, int B, int T) {
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < B * T; r += gridDim.x * blockDim.x)
        key_valid[r] = has[r / T] != 0;
}

static void sample_keys(const mm_backend *be, uint8_t *key_valid, const uint8_t *has,
                        int B, int T) {
    if (B * T <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_sample_keys, cu_blocks((size_t)B * T, CU_THREADS), CU_THREADS, c->stream,
              key_valid, has, B, T);
    CU_CHECK_LAUNCH("sample_keys");
}

__global__ void k_cond_keys(uint8_t *kv, const uint8_t *text, const uint8_t *audio, int B, int Tt,
                            int na) {
    const int Tc = Tt + na + 1;
    for (int r = blockIdx.x * blockDim.x + threadIdx.x; r < B * Tc; r += gridDim.x * blockDim.x) {
        const int b = r / Tc, j = r % Tc;
        kv[r] = j < Tt ? text[(size_t)b * Tt + j] : j < Tt + na ? audio[(size_t)b * na + j - Tt] : 1;
    }
}

static void cond_keys(const mm_backend *be, uint8_t *kv, const uint8_t *text,
                      const uint8_t *audio, int B, int Tt, int na) {
    if (B <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_cond_keys, cu_blocks((size_t)B * (Tt + na + 1), CU_THREADS), CU_THREADS,
              c->stream, kv, text, audio, B, Tt, na);
    CU_CHECK_LAUNCH("cond_keys");
}

// one thread per (sample, column): keys in order, as the CPU
template <typename A>
__global__ void k_pool_fwd(A *pool, const A *cond, const uint8_t *kv, int B, int Tc, int C) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < B * C; i += gridDim.x * blockDim.x) {
        const int b = i / C, c = i % C;
        float acc = 0;
        int cnt = 0;
        for (int j = 0; j < Tc; j++) {
            if (!kv[(size_t)b * Tc + j]) continue;
            acc += cu_f(cond[((size_t)b * Tc + j) * C + c]);
            cnt++;
        }
        pool[i] = cu_a<A>(acc / (float)cnt);
    }
}

static void pool_fwd(const mm_backend *be, float *pool, const float *cond,
                     const uint8_t *kv, int B, int Tc, int C) {
    if (B * C <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_pool_fwd<A>, cu_blocks((size_t)B * C, CU_THREADS), CU_THREADS,
                        c->stream, (A *)pool, (const A *)cond, kv, B, Tc, C));
    CU_CHECK_LAUNCH("pool_fwd");
}

template <typename A>
__global__ void k_pool_bwd(A *dcond, const A *dpool, const uint8_t *kv, int B, int Tc, int C) {
    const size_t n = (size_t)B * Tc * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(i % C);
        const size_t bj = i / C;
        const int b = (int)(bj / Tc);
        if (!kv[bj]) continue;
        int cnt = 0;
        for (int j = 0; j < Tc; j++) cnt += kv[(size_t)b * Tc + j] != 0;
        dcond[i] = cu_a<A>(cu_f(dcond[i]) + cu_f(dpool[(size_t)b * C + c]) / (float)cnt);
    }
}

static void pool_bwd(const mm_backend *be, float *dcond, const float *dpool,
                     const uint8_t *kv, int B, int Tc, int C) {
    const size_t n = (size_t)B * Tc * C;
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_pool_bwd<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream,
                        (A *)dcond, (const A *)dpool, kv, B, Tc, C));
    CU_CHECK_LAUNCH("pool_bwd");
}

// one thread per (position, column), samples in order onto the gradient
template <typename A>
__global__ void k_pos_bwd(float *g, const A *dx, size_t stride, int B, int T, int C) {
    const size_t n = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float acc = g[i];
        for (int b = 0; b < B; b++) acc += cu_f(dx[(size_t)b * stride + i]);
        g[i] = acc;
    }
}

static void pos_bwd(const mm_backend *be, float *g, const float *dx, size_t stride, int B,
                    int T, int C) {
    const size_t n = (size_t)T * C;
    if (n == 0 || B <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_pos_bwd<A>, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, g,
                        (const A *)dx, stride, B, T, C));
    CU_CHECK_LAUNCH("pos_bwd");
}

__global__ void k_make_pair(float *x_t, float *target, const float *x0, const float *eps,
                            const double *coef, int flow, size_t total, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t b = i / n;
        const double a = coef[2 * b], s = coef[2 * b + 1];
        x_t[i] = (float)(a * x0[i] + s * eps[i]);
        target[i] = flow ? eps[i] - x0[i] : eps[i];
    }
}

static void make_pair(const mm_backend *be, float *x_t, float *target, const float *x0,
                      const float *eps, const double *coef, int flow, int B, size_t n) {
    const size_t total = (size_t)B * n;
    if (total == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_make_pair, cu_blocks(total, CU_THREADS), CU_THREADS, c->stream, x_t, target, x0,
              eps, coef, flow, total, n);
    CU_CHECK_LAUNCH("make_pair");
}

__device__ __forceinline__ float clip1(float v) { return v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v; }

// the sampler's elementwise steps; op: 0 guide, 1 euler, 2 ddim, 3 clip
__global__ void k_sampler(float *x, const float *y, int op, float g, double d0, double d1,
                          double d2, double d3, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        if (op == 0) {
            x[i] = y[i] + g * (x[i] - y[i]);  // x = pred, y = upred
        } else if (op == 1) {
            x[i] += g * y[i];
        } else if (op == 2) {
            const float x0 = clip1((float)(((double)x[i] - d1 * (double)y[i]) * d0));
            x[i] = (float)(d2 * (double)x0 + d3 * (double)y[i]);
        } else {
            x[i] = clip1(x[i]);
        }
    }
}

static void sampler_launch(const mm_backend *be, float *x, const float *y, int op, float g,
                           double d0, double d1, double d2, double d3, size_t n) {
    if (n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_sampler, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, x, y, op, g, d0, d1, d2,
              d3, n);
    CU_CHECK_LAUNCH("sampler step");
}

static void guide(const mm_backend *be, float *pred, const float *upred, float g,
                  size_t n) {
    sampler_launch(be, pred, upred, 0, g, 0, 0, 0, 0, n);
}
static void euler(const mm_backend *be, float *x, const float *v, float dt, size_t n) {
    sampler_launch(be, x, v, 1, dt, 0, 0, 0, 0, n);
}
static void ddim(const mm_backend *be, float *x, const float *eps, double inv_sa,
                 double s1, double sp, double sp1, size_t n) {
    sampler_launch(be, x, eps, 2, 0, inv_sa, s1, sp, sp1, n);
}
static void clip(const mm_backend *be, float *x, size_t n) {
    sampler_launch(be, x, x, 3, 0, 0, 0, 0, 0, n);
}

// one thread per element; the same float arithmetic as the CPU
__global__ void k_xpred(float *y, const float *x_t, const float *t, int bwd, int B, size_t n) {
    const size_t tot = (size_t)B * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < tot;
         i += (size_t)gridDim.x * blockDim.x) {
        const float tb = t[i / n];
        const float inv = 1 / (tb > DIT_XPRED_TMIN ? tb : DIT_XPRED_TMIN);
        y[i] = bwd ? -y[i] * inv : (x_t[i] - y[i]) * inv;
    }
}

static void xpred(const mm_backend *be, float *y, const float *x_t, const float *t,
                  int bwd, int B, size_t n) {
    if ((size_t)B * n == 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_xpred, cu_blocks((size_t)B * n, CU_THREADS), CU_THREADS, c->stream, y, x_t, t,
              bwd, B, n);
    CU_CHECK_LAUNCH("xpred");
}

// the transformer's token rows without a prefix (ops_glue_cuda.cu: the same kernels)
static void text_embed_fwd(const mm_backend *be, float *x0, uint8_t *key_valid, const float *wte,
                           const float *tpos, const int32_t *tokens, int B, int T, int C, int V) {
    cu_embed_fwd(be, x0, key_valid, NULL, NULL, NULL, NULL, wte, tpos, tokens, T, NULL, NULL, B, T,
                 0, 0, C, V);
}

static void text_embed_bwd(const mm_backend *be, float *g_wte, float *g_tpos, const float *dx0,
                           const int32_t *tokens, int B, int T, int C, int V) {
    cu_embed_bwd(be, NULL, NULL, g_wte, g_tpos, dx0, tokens, B, T, 0, 0, C, V);
}

const dit_ops dit_ops_cuda = {
    .name = "cuda",
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
