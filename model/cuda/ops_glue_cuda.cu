// ops_glue_cuda.cu: the CUDA twins of ops_glue_cpu.c: the ops table's memory ops and the
// models' glue between the big ops (row copies, patchify, the LM's embedding rows and their
// backward, per-sample loss reductions), so that transformer.c runs with every buffer on
// the device. Same arithmetic as the CPU versions, in the same order, so the results are
// the CPU's bit for bit (they are additions and copies; the one division is IEEE). With bf16
// activations (act16) rows, patches and embedding rows are bf16, sums made in fp32 and
// rounded once; the per-sample losses stay fp32.
//
// The embedding-table gradient is deterministic without float atomics: one block per text
// position; the block of the FIRST position holding a token sums, for its columns, every
// position with that token in (sample, position) order onto the table row, exactly as the
// CPU loop adds them; blocks of later positions with the same token do nothing. A block finds
// out whether it leads by scanning the tokens before it (O(N^2 / threads) integer reads over
// a batch of N positions: ~33M for 8 x 1024, microseconds).
#include "cuda_internal.h"

// ---------------------------------------------------------------------------------------
// memory: the bound context's stream (cuda.h)

void *cu_mem_alloc(const mm_backend *be, size_t bytes) {
    return cuda_alloc(cu_ctx(be), bytes);
}
void cu_mem_free(const mm_backend *be MM_UNUSED, void *p) {
    cuda_free(p);
}
void cu_mem_upload(const mm_backend *be, void *dst, const void *host, size_t bytes) {
    cuda_upload(cu_ctx(be), dst, host, bytes);
}
void cu_mem_download(const mm_backend *be, void *host, const void *src, size_t bytes) {
    cuda_download(cu_ctx(be), host, src, bytes);
}
void cu_mem_zero(const mm_backend *be, void *p, size_t bytes) {
    cuda_zero(cu_ctx(be), p, bytes);
}
void cu_mem_copy(const mm_backend *be, void *dst, const void *src, size_t bytes) {
    cuda_copy(cu_ctx(be), dst, src, bytes);
}

// ---------------------------------------------------------------------------------------
// copies

template <typename A>
__global__ void k_copy_rows(A *dst, size_t ds, const A *src, size_t ss, size_t width, int rows) {
    for (int r = blockIdx.x; r < rows; r += gridDim.x)
        for (size_t i = threadIdx.x; i < width; i += blockDim.x)
            dst[(size_t)r * ds + i] = src[(size_t)r * ss + i];
}

void cu_copy_rows(const mm_backend *be, float *dst, size_t dst_stride, const float *src,
                  size_t src_stride, size_t width, int rows) {
    if (rows <= 0 || width == 0) return;
    cuda_ctx *c = cu_ctx(be);
    cuda_params16_touch(c, dst, cu_act_bytes(c, (size_t)(rows - 1) * dst_stride + width));
    CU_ACT(c, CU_LAUNCH(k_copy_rows<A>, cu_row_blocks(rows), CU_THREADS, c->stream, (A *)dst,
                        dst_stride, (const A *)src, src_stride, width, rows));
    CU_CHECK_LAUNCH("copy_rows");
}

void cu_act_from_real(const mm_backend *be, float *dst, const float *src, size_t n) {
    cuda_ctx *c = cu_ctx(be);
    if (c->act16)
        cu_to_bf16(c, (cu_bf16 *)dst, src, n);
    else if (dst != src)
        cuda_copy(c, dst, src, n * sizeof(float));
}

void cu_act_to_real(const mm_backend *be, float *dst, const float *src, size_t n) {
    cuda_ctx *c = cu_ctx(be);
    if (c->act16)
        cu_from_bf16(c, dst, (const cu_bf16 *)src, n);
    else if (dst != src)
        cuda_copy(c, dst, src, n * sizeof(float));
}

// one patch row (p * c contiguous values) per (patch, dy); dir 0: image -> patches, 1: back
template <typename A>
__global__ void k_patch(A *patches, A *img, int B, int H, int W, int c, int p, int dir) {
    const int gw = W / p, n = (H / p) * gw, pdim = p * p * c, pc = p * c;
    const int rows = B * n * p;
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const int bp = r / p, dy = r % p;
        const int b = bp / n, py = (bp % n) / gw, px = bp % gw;
        A *pr = patches + (size_t)bp * pdim + (size_t)dy * pc;
        A *ir = img + (size_t)b * H * W * c + ((size_t)(py * p + dy) * W + (size_t)px * p) * c;
        for (int i = threadIdx.x; i < pc; i += blockDim.x) {
            if (dir == 0) pr[i] = ir[i];
            else ir[i] = pr[i];
        }
    }
}

void cu_patchify(const mm_backend *be, float *patches, const float *img, int B, int H,
                 int W, int c, int p) {
    cuda_ctx *cx = cu_ctx(be);
    const int rows = B * (H / p) * (W / p) * p;
    if (rows <= 0) return;
    CU_ACT(cx, CU_LAUNCH(k_patch<A>, cu_row_blocks(rows), CU_WARP * 2, cx->stream, (A *)patches,
                         (A *)img, B, H, W, c, p, 0));
    CU_CHECK_LAUNCH("patchify");
}

void cu_unpatchify(const mm_backend *be, float *img, const float *patches, int B, int H,
                   int W, int c, int p) {
    cuda_ctx *cx = cu_ctx(be);
    const int rows = B * (H / p) * (W / p) * p;
    if (rows <= 0) return;
    CU_ACT(cx, CU_LAUNCH(k_patch<A>, cu_row_blocks(rows), CU_WARP * 2, cx->stream, (A *)patches,
                         (A *)img, B, H, W, c, p, 1));
    CU_CHECK_LAUNCH("unpatchify");
}

// ---------------------------------------------------------------------------------------
// the LM's embeddings

template <typename A>
__global__ void k_embed_fwd(A *x0, uint8_t *key_valid, const A *emb_img, const A *emb_aud,
                            const float *img_pos, const float *aud_pos,
                            const float *wte, const float *tpos, const int32_t *tokens,
                            int tok_stride, const uint8_t *has_image, const uint8_t *has_audio,
                            int B, int T, int n_img, int n_aud, int C, int V, int *flag) {
    const int P = n_img + n_aud, BT = B * T;
    for (int r = blockIdx.x; r < BT; r += gridDim.x) {
        const int b = r / T, t = r % T;
        const A *e = NULL;  // the projected input row, or
        const float *et = NULL, *pe;  // the token's embedding
        uint8_t kv = 1;
        if (t < n_img) {
            e = emb_img + ((size_t)b * n_img + t) * C;
            pe = img_pos + (size_t)t * C;
            kv = has_image[b] != 0;
        } else if (t < P) {
            e = emb_aud + ((size_t)b * n_aud + (t - n_img)) * C;
            pe = aud_pos + (size_t)(t - n_img) * C;
            kv = has_audio[b] != 0;
        } else {
            const int tok = tokens[(size_t)b * tok_stride + (t - P)];
            if (tok < 0 || tok >= V) {  // recorded for cuda_ctx_sync; never read out of bounds
                if (threadIdx.x == 0) cu_flag(flag, CU_FLAG_TOKEN, tok, b);
                continue;
            }
            et = wte + (size_t)tok * C;
            pe = tpos + (size_t)(t - P) * C;
        }
        if (threadIdx.x == 0) key_valid[r] = kv;
        A *o = x0 + (size_t)r * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x)
            o[c] = cu_a<A>((e ? cu_f(e[c]) : et[c]) + pe[c]);
    }
}

void cu_embed_fwd(const mm_backend *be, float *x0, uint8_t *key_valid,
                  const float *emb_img, const float *emb_aud, const float *img_pos,
                  const float *aud_pos, const float *wte, const float *tpos, const int32_t *tokens,
                  int tok_stride, const uint8_t *has_image, const uint8_t *has_audio, int B, int T,
                  int n_img, int n_aud, int C, int V) {
    if (B * T <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_embed_fwd<A>, cu_row_blocks(B * T), CU_THREADS, c->stream, (A *)x0,
                        key_valid, (const A *)emb_img, (const A *)emb_aud, img_pos, aud_pos, wte,
                        tpos, tokens, tok_stride, has_image, has_audio, B, T, n_img, n_aud, C, V,
                        c->flag));
    CU_CHECK_LAUNCH("embed_fwd");
}

// positions: one thread per (position, column), samples in order onto the gradient
template <typename A>
__global__ void k_embed_bwd_pos(float *g_img_pos, float *g_aud_pos, float *g_tpos, const A *dx0,
                                int B, int T, int n_img, int n_aud, int C) {
    const int P = n_img + n_aud;
    const size_t n = (size_t)T * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const int t = (int)(i / C), c = (int)(i % C);
        float *gp = t < n_img ? g_img_pos + (size_t)t * C
                    : t < P   ? g_aud_pos + (size_t)(t - n_img) * C
                              : g_tpos + (size_t)(t - P) * C;
        float acc = gp[c];
        for (int b = 0; b < B; b++) acc += cu_f(dx0[((size_t)b * T + t) * C + c]);
        gp[c] = acc;
    }
}

// the token table: see the file comment (one block per text position, the first holder of
// a token sums all of them in order)
template <typename A>
__global__ void k_embed_bwd_wte(float *g_wte, const A *dx0, const int32_t *tokens, int B, int T,
                                int P, int C, int V) {
    const int Tt = T - P, N = B * Tt;
    for (int i = blockIdx.x; i < N; i += gridDim.x) {
        const int tok = tokens[i];
        int seen = 0;
        for (int j = threadIdx.x; j < i; j += blockDim.x) seen |= tokens[j] == tok;
        seen = block_sum(seen);  // every thread calls it (uniform loop bounds above)
        if (seen || tok < 0 || tok >= V) continue;
        float *ge = g_wte + (size_t)tok * C;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float acc = ge[c];
            for (int j = i; j < N; j++)
                if (tokens[j] == tok)
                    acc += cu_f(dx0[((size_t)(j / Tt) * T + P + (j % Tt)) * C + c]);
            ge[c] = acc;
        }
    }
}

void cu_embed_bwd(const mm_backend *be, float *g_img_pos, float *g_aud_pos, float *g_wte,
                  float *g_tpos, const float *dx0, const int32_t *tokens, int B, int T, int n_img,
                  int n_aud, int C, int V) {
    if (B <= 0 || T <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_ACT(c, CU_LAUNCH(k_embed_bwd_pos<A>, cu_blocks((size_t)T * C, CU_THREADS), CU_THREADS,
                        c->stream, g_img_pos, g_aud_pos, g_tpos, (const A *)dx0, B, T, n_img,
                        n_aud, C));
    CU_CHECK_LAUNCH("embed_bwd positions");
    const int N = B * (T - n_img - n_aud);
    if (N <= 0) return;
    CU_ACT(c, CU_LAUNCH(k_embed_bwd_wte<A>, cu_row_blocks(N), CU_THREADS, c->stream, g_wte,
                        (const A *)dx0, tokens, B, T, n_img + n_aud, C, V));
    CU_CHECK_LAUNCH("embed_bwd wte");
}

// ---------------------------------------------------------------------------------------
// per-sample loss: one thread per sample, positions in order (as on the CPU)

__global__ void k_seq_loss(double *out, const float *losses, const int32_t *targets, int B,
                           int Tt) {
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < B; b += gridDim.x * blockDim.x) {
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

void cu_seq_loss(const mm_backend *be, double *out, const float *losses,
                 const int32_t *targets, int B, int Tt) {
    if (B <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_seq_loss, cu_blocks((size_t)B, CU_WARP), CU_WARP, c->stream, out, losses, targets,
              B, Tt);
    CU_CHECK_LAUNCH("seq_loss");
}

__global__ void k_seq_dloss(float *dloss, const int32_t *targets, float scale, int B, int Tt) {
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < B; b += gridDim.x * blockDim.x) {
        int n = 0;
        for (int t = 0; t < Tt; t++) n += targets[(size_t)b * Tt + t] >= 0;
        for (int t = 0; t < Tt; t++) dloss[(size_t)b * Tt + t] = n ? scale / n : 0;
    }
}

void cu_seq_dloss(const mm_backend *be, float *dloss, const int32_t *targets, float scale,
                  int B, int Tt) {
    if (B <= 0) return;
    cuda_ctx *c = cu_ctx(be);
    CU_LAUNCH(k_seq_dloss, cu_blocks((size_t)B, CU_WARP), CU_WARP, c->stream, dloss, targets,
              scale, B, Tt);
    CU_CHECK_LAUNCH("seq_dloss");
}

const lm_ops lm_ops_cuda = {
    .name = "cuda",
    .embed_fwd = cu_embed_fwd,
    .embed_bwd = cu_embed_bwd,
    .seq_loss = cu_seq_loss,
    .seq_dloss = cu_seq_dloss,
};
