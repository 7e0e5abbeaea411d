// ops_conv_cpu.c: the CPU kernels of the convolutional image stem (model.h "the
// convolutional image stem"). They exist because a transformer fed only linear patches learns
// images badly from a few thousand samples (data/real/README.md): two 3x3 convolutions with
// max pooling give it the locality a small CNN has. The convolutions themselves are
// im2col3 + the BLAS matmul; what is here is the gather, its adjoint and the pooling, each
// one OpenMP loop over output pixels with no atomics, so results are bit-identical run after
// run and independent of the thread count.
#include <string.h>

#include "../model.h"
#include "../model_internal.h"
#include "cpu_isa.h"

CPU_ISA_CLONES
void model_cpu_im2col3(const mm_backend *be MM_UNUSED, mm_real *cols, const mm_real *img,
                       int B, int H, int W, int c) {
    const size_t row = (size_t)9 * c;
#pragma omp parallel for schedule(static)
    for (long bp = 0; bp < (long)B * H * W; bp++) {
        const int b = (int)(bp / ((long)H * W)), y = (int)(bp / W % H), x = (int)(bp % W);
        mm_real *dst = cols + (size_t)bp * row;
        for (int dy = 0; dy < 3; dy++)
            for (int dx = 0; dx < 3; dx++, dst += c) {
                const int sy = y + dy - 1, sx = x + dx - 1;
                if (sy < 0 || sy >= H || sx < 0 || sx >= W)
                    memset(dst, 0, (size_t)c * sizeof(mm_real));
                else
                    memcpy(dst, img + (((size_t)b * H + sy) * W + sx) * c,
                           (size_t)c * sizeof(mm_real));
            }
    }
}

// Pixel (y, x) was copied into the rows of its 3x3 neighbours (y - dy + 1, x - dx + 1) at
// slot (dy, dx): gather those.
CPU_ISA_CLONES
void model_cpu_col2im3(const mm_backend *be MM_UNUSED, mm_real *dimg, const mm_real *dcols, int B,
                    int H, int W, int c) {
    const size_t row = (size_t)9 * c;
#pragma omp parallel for schedule(static)
    for (long bp = 0; bp < (long)B * H * W; bp++) {
        const int b = (int)(bp / ((long)H * W)), y = (int)(bp / W % H), x = (int)(bp % W);
        mm_real *d = dimg + (size_t)bp * c;
        for (int dy = 0; dy < 3; dy++)
            for (int dx = 0; dx < 3; dx++) {
                const int ry = y - dy + 1, rx = x - dx + 1;
                if (ry < 0 || ry >= H || rx < 0 || rx >= W) continue;
                const mm_real *s = dcols + (((size_t)b * H + ry) * W + rx) * row +
                                   (size_t)(dy * 3 + dx) * c;
                for (int k = 0; k < c; k++) d[k] += s[k];
            }
    }
}

CPU_ISA_CLONES
void model_cpu_maxpool2_fwd(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *x, int B,
                         int H, int W, int c) {
    const int Ho = H / 2, Wo = W / 2;
#pragma omp parallel for schedule(static)
    for (long bp = 0; bp < (long)B * Ho * Wo; bp++) {
        const int b = (int)(bp / ((long)Ho * Wo)), y = (int)(bp / Wo % Ho), xo = (int)(bp % Wo);
        const mm_real *p = x + (((size_t)b * H + 2 * y) * W + 2 * xo) * c, *q = p + (size_t)W * c;
        mm_real *o = out + (size_t)bp * c;
        for (int k = 0; k < c; k++) {
            mm_real m = p[k];
            if (p[c + k] > m) m = p[c + k];
            if (q[k] > m) m = q[k];
            if (q[c + k] > m) m = q[c + k];
            o[k] = m;
        }
    }
}

// Each input element gets the gradient when it is the window's argmax, found as the forward's
// running maximum with strict >: the first of equal values wins and a NaN never does (with a
// NaN first, the first). Written without branches so that the channel loop vectorizes: every
// element of the window is added to, the others with -0, which leaves any float unchanged
// (-0 included), so the result is the one-element update's bit for bit. Branching on the
// argmax of random activations, the scalar loop cost ~9 ns an output (fashion_tiny's stem:
// 1.8 ms of a 26 ms step), this one 0.4.
CPU_ISA_CLONES
void model_cpu_maxpool2_bwd(const mm_backend *be MM_UNUSED, mm_real *dx, const mm_real *dout,
                         const mm_real *x, int B, int H, int W, int c) {
    const int Ho = H / 2, Wo = W / 2;
    const mm_real z = (mm_real)-0.0;
#pragma omp parallel for schedule(static)
    for (long bp = 0; bp < (long)B * Ho * Wo; bp++) {
        const int b = (int)(bp / ((long)Ho * Wo)), y = (int)(bp / Wo % Ho), xo = (int)(bp % Wo);
        const size_t p = (((size_t)b * H + 2 * y) * W + 2 * xo) * c, q = p + (size_t)W * c;
        const mm_real *x0 = x + p, *x1 = x0 + c, *x2 = x + q, *x3 = x2 + c;
        mm_real *d0 = dx + p, *d1 = d0 + c, *d2 = dx + q, *d3 = d2 + c;
        const mm_real *d = dout + (size_t)bp * c;
#pragma omp simd
        for (int k = 0; k < c; k++) {
            const mm_real v0 = x0[k], v1 = x1[k], v2 = x2[k], v3 = x3[k];
            const mm_real m1 = v1 > v0 ? v1 : v0, m2 = v2 > m1 ? v2 : m1;
            // g goes to the last position that raised the running maximum
            mm_real left = d[k];
            const mm_real g3 = v3 > m2 ? left : z;
            left = v3 > m2 ? z : left;
            const mm_real g2 = v2 > m1 ? left : z;
            left = v2 > m1 ? z : left;
            const mm_real g1 = v1 > v0 ? left : z, g0 = v1 > v0 ? z : left;
            d0[k] += g0;
            d1[k] += g1;
            d2[k] += g2;
            d3[k] += g3;
        }
    }
}
