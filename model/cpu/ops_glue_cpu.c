// ops_glue_cpu.c: the CPU versions of the ops table's memory and glue ops (model.h): the
// loops the models would otherwise run on their own buffers, which may live on a GPU, kept
// here as ops with their arithmetic and order fixed, so the CUDA twins in ops_glue_cuda.cu
// have one reference to be checked against.
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../model.h"
#include "../model_internal.h"
#include "cpu_isa.h"

// Zeroed. Buffers of HUGE_MIN bytes and more (the activation arena, parameters, gradients)
// are 2 MiB aligned and asked to be backed by transparent huge pages: the ops walk them with
// long strides (one head's slice per row, a column block per row), which on 4 KiB pages
// costs a TLB miss every few rows. Only a request: where THP is off, nothing changes.
enum { HUGE_PAGE = 2 << 20, HUGE_MIN = 4 << 20 };
void *model_cpu_mem_alloc(const mm_backend *be MM_UNUSED, size_t bytes) {
    if (bytes < HUGE_MIN) return mm_alloc_aligned(bytes);
    const size_t sz = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    void *p = aligned_alloc(HUGE_PAGE, sz);
    MM_CHECK(p, "out of memory allocating %zu bytes", bytes);
    (void)madvise(p, sz, MADV_HUGEPAGE);  // advisory: a failure leaves 4 KiB pages
    memset(p, 0, sz);
    return p;
}
void model_cpu_mem_free(const mm_backend *be MM_UNUSED, void *p) {
    free(p);
}
void model_cpu_mem_copy(const mm_backend *be MM_UNUSED, void *dst, const void *src, size_t bytes) {
    if (bytes) memcpy(dst, src, bytes);
}
// a parallel memset: one thread's memset runs at a fraction of the store bandwidth
void model_cpu_mem_zero(const mm_backend *be MM_UNUSED, void *p, size_t bytes) {
    if (bytes % sizeof(mm_real) == 0) {
        mm_real *r = p;
        size_t n = bytes / sizeof(mm_real);
        model_zero_bufs(1, &r, &n);
    } else {
        memset(p, 0, bytes);
    }
}

void model_cpu_copy_rows(const mm_backend *be MM_UNUSED, mm_real *dst, size_t dst_stride,
                         const mm_real *src, size_t src_stride, size_t width, int rows) {
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++)
        memcpy(dst + (size_t)r * dst_stride, src + (size_t)r * src_stride,
               width * sizeof(mm_real));
}

// activations are mm_real here: a copy
void model_cpu_act_copy(const mm_backend *be MM_UNUSED, mm_real *dst, const mm_real *src,
                        size_t n) {
    if (dst != src) memcpy(dst, src, n * sizeof(mm_real));
}

CPU_ISA_CLONES
void model_cpu_embed_fwd(const mm_backend *be MM_UNUSED, mm_real *x0, uint8_t *key_valid,
                         const mm_real *emb_img, const mm_real *emb_aud, const mm_real *img_pos,
                         const mm_real *aud_pos, const mm_real *wte, const mm_real *tpos,
                         const int32_t *tokens, int tok_stride, const uint8_t *has_image,
                         const uint8_t *has_audio, int B, int T, int n_img, int n_aud, int C,
                         int V) {
    const int P = n_img + n_aud, BT = B * T;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < BT; r++) {
        int b = r / T, t = r % T;
        const mm_real *e, *pe;
        if (t < n_img) {
            e = emb_img + ((size_t)b * n_img + t) * C;
            pe = img_pos + (size_t)t * C;
            key_valid[r] = has_image[b] != 0;
        } else if (t < P) {
            e = emb_aud + ((size_t)b * n_aud + (t - n_img)) * C;
            pe = aud_pos + (size_t)(t - n_img) * C;
            key_valid[r] = has_audio[b] != 0;
        } else {
            int tok = tokens[(size_t)b * tok_stride + (t - P)];
            MM_CHECK(tok >= 0 && tok < V, "token %d of sample %d outside [0, %d)", tok, b, V);
            e = wte + (size_t)tok * C;
            pe = tpos + (size_t)(t - P) * C;
            key_valid[r] = 1;
        }
        mm_real *o = x0 + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = e[c] + pe[c];
    }
}

// each thread owns a block of columns and adds the rows in (sample, position) order, so
// repeated tokens sum deterministically without atomics
CPU_ISA_CLONES
void model_cpu_embed_bwd(const mm_backend *be MM_UNUSED, mm_real *g_img_pos, mm_real *g_aud_pos,
                         mm_real *g_wte, mm_real *g_tpos, const mm_real *dx0, const int32_t *tokens,
                         int B, int T, int n_img, int n_aud, int C, int V) {
    const int P = n_img + n_aud, Tt = T - P;
    for (int i = 0; i < B * Tt; i++)
        MM_CHECK(tokens[i] >= 0 && tokens[i] < V, "token %d at %d outside [0, %d)", tokens[i], i, V);
    enum { CB = 32 };
    const int ncb = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int cb = 0; cb < ncb; cb++) {
        int c0 = cb * CB, n = C - c0 < CB ? C - c0 : CB;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const mm_real *d = dx0 + ((size_t)b * T + t) * C + c0;
                mm_real *gp, *ge = NULL;
                if (t < n_img) {
                    gp = g_img_pos + (size_t)t * C + c0;
                } else if (t < P) {
                    gp = g_aud_pos + (size_t)(t - n_img) * C + c0;
                } else {
                    gp = g_tpos + (size_t)(t - P) * C + c0;
                    ge = g_wte + (size_t)tokens[(size_t)b * Tt + (t - P)] * C + c0;
                }
#pragma omp simd
                for (int c = 0; c < n; c++) gp[c] += d[c];
                if (ge) {
#pragma omp simd
                    for (int c = 0; c < n; c++) ge[c] += d[c];
                }
            }
    }
}

void model_cpu_seq_loss(const mm_backend *be MM_UNUSED, double *out, const mm_real *losses,
                        const int32_t *targets, int B, int Tt) {
    for (int b = 0; b < B; b++) {
        double s = 0;
        int n = 0;
        for (int t = 0; t < Tt; t++)
            if (targets[(size_t)b * Tt + t] >= 0) {
                s += losses[(size_t)b * Tt + t];
                n++;
            }
        out[2 * b] = n ? s / n : 0;
        out[2 * b + 1] = n;
    }
}

void model_cpu_seq_dloss(const mm_backend *be MM_UNUSED, mm_real *dloss, const int32_t *targets,
                         mm_real scale, int B, int Tt) {
    for (int b = 0; b < B; b++) {
        int n = 0;
        for (int t = 0; t < Tt; t++) n += targets[(size_t)b * Tt + t] >= 0;
        for (int t = 0; t < Tt; t++) dloss[(size_t)b * Tt + t] = n ? scale / n : 0;
    }
}

const lm_ops lm_ops_cpu = {
    .name = "cpu",
    .embed_fwd = model_cpu_embed_fwd,
    .embed_bwd = model_cpu_embed_bwd,
    .seq_loss = model_cpu_seq_loss,
    .seq_dloss = model_cpu_seq_dloss,
};
