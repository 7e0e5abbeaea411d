// ops_conv_cuda.cu: the CUDA twins of ops_conv_cpu.c, the gather, its adjoint and the max
// pooling of the convolutional image stem (model.h "the convolutional image stem"), so that
// a conv-stem transformer keeps every buffer on the device. One thread per output element,
// no atomics: col2im3 gathers the 9 entries each pixel was copied to and adds them in the
// CPU's (dy, dx) order onto the running value; maxpool2_bwd writes from each window to its
// argmax, and windows do not overlap, so no two threads touch one element. Results are the
// CPU's bit for bit (copies, compares and the same additions in the same order). With bf16
// activations (act16) the same in bf16, col2im3's sum in fp32, rounded once.
#include "cuda_internal.h"

// cols element i = ((b, y, x), (dy, dx), k)
template <typename A>
__global__ void k_im2col3(A *cols, const A *img, int H, int W, int c, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int k = (int)(i % c), s = (int)(i / c % 9);
        const size_t bp = i / ((size_t)9 * c);
        const int x = (int)(bp % W), y = (int)(bp / W % H);
        const size_t b = bp / ((size_t)H * W);
        const int sy = y + s / 3 - 1, sx = x + s % 3 - 1;
        cols[i] = sy < 0 || sy >= H || sx < 0 || sx >= W ? cu_a<A>(0.0f)
                                                         : img[((b * H + sy) * W + sx) * c + k];
    }
}

// dimg element i = ((b, y, x), k): pixel (y, x) sits at slot (dy, dx) of row (y - dy + 1,
// x - dx + 1)
template <typename A>
__global__ void k_col2im3(A *dimg, const A *dcols, int H, int W, int c, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int k = (int)(i % c);
        const size_t bp = i / c;
        const int x = (int)(bp % W), y = (int)(bp / W % H);
        const size_t b = bp / ((size_t)H * W);
        float v = cu_f(dimg[i]);
        for (int dy = 0; dy < 3; dy++)
            for (int dx = 0; dx < 3; dx++) {
                const int ry = y - dy + 1, rx = x - dx + 1;
                if (ry < 0 || ry >= H || rx < 0 || rx >= W) continue;
                v += cu_f(dcols[((b * H + ry) * W + rx) * 9 * c + (size_t)(dy * 3 + dx) * c + k]);
            }
        dimg[i] = cu_a<A>(v);
    }
}

// The four input offsets of output element i = ((b, yo, xo), k) in window order (0,0),
// (0,1), (1,0), (1,1).
__device__ __forceinline__ void pool_window(size_t at[4], size_t i, int H, int W, int c) {
    const int Ho = H / 2, Wo = W / 2;
    const int k = (int)(i % c);
    const size_t bp = i / c;
    const int xo = (int)(bp % Wo), yo = (int)(bp / Wo % Ho);
    const size_t b = bp / ((size_t)Ho * Wo);
    const size_t p = ((b * H + 2 * yo) * W + 2 * xo) * c + k, row = (size_t)W * c;
    at[0] = p;
    at[1] = p + c;
    at[2] = p + row;
    at[3] = p + row + c;
}

template <typename A>
__global__ void k_maxpool2_fwd(A *out, const A *x, int H, int W, int c, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t at[4];
        pool_window(at, i, H, W, c);
        A m = x[at[0]];
        for (int j = 1; j < 4; j++)
            if (cu_f(x[at[j]]) > cu_f(m)) m = x[at[j]];
        out[i] = m;
    }
}

// strict > keeps the first maximum, as the CPU
template <typename A>
__global__ void k_maxpool2_bwd(A *dx, const A *dout, const A *x, int H, int W, int c, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t at[4];
        pool_window(at, i, H, W, c);
        int best = 0;
        for (int j = 1; j < 4; j++)
            if (cu_f(x[at[j]]) > cu_f(x[at[best]])) best = j;
        dx[at[best]] = cu_a<A>(cu_f(dx[at[best]]) + cu_f(dout[i]));
    }
}

void cu_im2col3(const mm_backend *be, float *cols, const float *img, int B, int H, int W, int c) {
    const size_t n = (size_t)B * H * W * 9 * c;
    if (n == 0) return;
    CU_ACT(cu_ctx(be), CU_LAUNCH(k_im2col3<A>, cu_blocks(n, CU_THREADS), CU_THREADS,
                                 cu_ctx(be)->stream, (A *)cols, (const A *)img, H, W, c, n));
    CU_CHECK_LAUNCH("im2col3");
}

void cu_col2im3(const mm_backend *be, float *dimg, const float *dcols, int B, int H, int W, int c) {
    const size_t n = (size_t)B * H * W * c;
    if (n == 0) return;
    CU_ACT(cu_ctx(be), CU_LAUNCH(k_col2im3<A>, cu_blocks(n, CU_THREADS), CU_THREADS,
                                 cu_ctx(be)->stream, (A *)dimg, (const A *)dcols, H, W, c, n));
    CU_CHECK_LAUNCH("col2im3");
}

void cu_maxpool2_fwd(const mm_backend *be, float *out, const float *x, int B, int H, int W, int c) {
    const size_t n = (size_t)B * (H / 2) * (W / 2) * c;
    if (n == 0) return;
    CU_ACT(cu_ctx(be), CU_LAUNCH(k_maxpool2_fwd<A>, cu_blocks(n, CU_THREADS), CU_THREADS,
                                 cu_ctx(be)->stream, (A *)out, (const A *)x, H, W, c, n));
    CU_CHECK_LAUNCH("maxpool2_fwd");
}

void cu_maxpool2_bwd(const mm_backend *be, float *dx, const float *dout, const float *x, int B,
                     int H, int W, int c) {
    const size_t n = (size_t)B * (H / 2) * (W / 2) * c;
    if (n == 0) return;
    CU_ACT(cu_ctx(be), CU_LAUNCH(k_maxpool2_bwd<A>, cu_blocks(n, CU_THREADS), CU_THREADS,
                                 cu_ctx(be)->stream, (A *)dx, (const A *)dout, (const A *)x, H, W,
                                 c, n));
    CU_CHECK_LAUNCH("maxpool2_bwd");
}
