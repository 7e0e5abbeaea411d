// model_internal.h: what transformer.c (the prefix LM) and diffusion.c (the DiT) share and
// nobody outside model/ may use: the parameter-table builder and per-tensor init (layout.c),
// activation carving, tp and buffer helpers, and the pre-norm self-attention block (block.c)
// that is both the LM's trunk block and the DiT's text/audio encoder block. Not part of the
// public API (model.h, diffusion.h); names carry the module prefix all the same.
//
// It exists so that the layout rules of model.h (global shapes, tp slices drawn from the
// full tensor, decay by shape) and the block's arithmetic live in one place: a fix to either
// reaches both models, and both stay bitwise what they were.
#ifndef MM_MODEL_INTERNAL_H
#define MM_MODEL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "model.h"

#define MODEL_SHAPE(...) ((const int64_t[]){__VA_ARGS__})

// ---------------------------------------------------------------------------------------
// Parameter table (layout.c)

int model_ends_with(const char *s, const char *suffix);
int model_starts_with(const char *s, const char *prefix);

// Appends tensors with consecutive offsets. t is owned by the builder until the model takes
// it; cap is the exact count the model expects (model_table_done checks it).
typedef struct {
    model_tensor *t;  // (cap)
    int n, cap;
    size_t off;       // local elements so far = the next tensor's offset
    int tp, rank;
} model_table;

void model_table_init(model_table *tb, int cap, int tp, int rank);
// Records GLOBAL shape, this rank's slice along split_dim (-1: replicated; aborts when tp
// does not divide it), offset, size; decay = ndim >= 2 and not a ".b" (qkv.b is 2-D).
void model_table_add(model_table *tb, const char *name, int ndim, const int64_t *shape,
                     int split_dim, int group);
// Aborts unless exactly cap tensors were added.
void model_table_done(const model_table *tb);
// Elements of the largest of the n tensors (this rank's slice).
size_t model_table_max(const model_tensor *t, int n);

// Fills this rank's slice (p, t->size) of tensor t with draws over its GLOBAL shape in
// row-major order from mm_rng(seed, stream): scale * N(0, 1), or with uniform set
// scale * U(-1, 1). Values therefore do not depend on tp.
void model_init_draw(mm_real *p, const model_tensor *t, uint64_t seed, uint64_t stream,
                     double scale, int uniform);

// ---------------------------------------------------------------------------------------
// Activations: one buffer carved in a fixed order. With base NULL only the size is counted
// (the first planning pass); every slice is rounded to 64 bytes so all start 64-byte aligned
// for the vector loops. model_carve takes activations (be->act_bytes each: model.h
// "Activations"), model_carve_real mm_real values (statistics, losses, saved state).
typedef struct {
    char *base;        // NULL when counting
    size_t off;        // bytes carved so far
    size_t act_bytes;  // of an activation element (the backend's)
} model_carver;

void model_carver_init(model_carver *cv, const mm_backend *be, void *base);
mm_real *model_carve(model_carver *cv, size_t n);
mm_real *model_carve_real(model_carver *cv, size_t n);
// p advanced by n activation elements of be's storage
static inline mm_real *model_act_at(const mm_backend *be, mm_real *p, size_t n) {
    return (mm_real *)((char *)p + n * be->act_bytes);
}
static inline const mm_real *model_act_at_c(const mm_backend *be, const mm_real *p, size_t n) {
    return (const mm_real *)((const char *)p + n * be->act_bytes);
}

// ---------------------------------------------------------------------------------------
// Helpers

// In-place sum of x (n) over the tp ranks; nothing at tp = 1 (g may then be NULL).
void model_tp_allreduce(const mm_backend *be, const mm_coll *tp, mm_real *x, size_t n);

// Zeroes n buffers in one parallel region, each thread a contiguous share of each: a
// single-threaded memset runs at a fraction of the machine's store bandwidth, and the
// backward passes zero several activation gradients per block.
void model_zero_bufs(int n, mm_real *const *p, const size_t *len);
// The same in ops' memory: model_zero_bufs on the CPU, ops->mem_zero per buffer elsewhere;
// model_zero_acts for n buffers of activations (be->act_bytes each).
void model_zero_ops(const mm_backend *be, int n, mm_real *const *p, const size_t *len);
void model_zero_acts(const mm_backend *be, int n, mm_real *const *p, const size_t *len);

// The gradient-ready hook (model.h model_set_grad_hook) as the models hold it.
typedef struct {
    model_grad_hook fn;  // NULL when none
    void *ctx;           // not owned
} model_hook;

static inline void model_hook_fire(const model_hook *h, size_t lo) {
    if (h->fn) h->fn(h->ctx, lo);
}

// patchify (B, H, W, c) -> (B, (H/p)*(W/p), p*p*c): patches row-major in (py, px), inner
// order (dy, dx, c); unpatchify is the inverse. One memcpy per patch row.
void model_patchify(const mm_backend *be MM_UNUSED, mm_real *patches, const mm_real *img, int B,
                    int H, int W, int c, int p);
void model_unpatchify(const mm_backend *be MM_UNUSED, mm_real *img, const mm_real *patches, int B,
                      int H, int W, int c, int p);
// The CPU kernels of the convolutional stem (model.h; model/cpu/ops_conv_cpu.c).
void model_cpu_im2col3(const mm_backend *be, mm_real *cols, const mm_real *img, int B, int H,
                       int W, int c);
void model_cpu_col2im3(const mm_backend *be, mm_real *dimg, const mm_real *dcols, int B, int H,
                       int W, int c);
void model_cpu_maxpool2_fwd(const mm_backend *be, mm_real *out, const mm_real *x, int B, int H,
                            int W, int c);
void model_cpu_maxpool2_bwd(const mm_backend *be, mm_real *dx, const mm_real *dout,
                            const mm_real *x, int B, int H, int W, int c);

// Audio (B, F, n_mels) as (B, F / group, group * n_mels) tokens: a reshape when group
// divides F (returns audio itself), else copies all but the trailing F % group frames of
// each sample into scratch (B, F / group, group * n_mels) and returns scratch.
const mm_real *model_group_audio(mm_real *scratch, const mm_real *audio, int B, int F, int n_mels,
                                 int group);

// The CPU glue ops of the ops table (ops_glue_cpu.c; model.h documents them), shared by the
// CPU tables and usable by the CUDA build's tests as the reference.
void *model_cpu_mem_alloc(const mm_backend *be MM_UNUSED, size_t bytes);
void model_cpu_mem_free(const mm_backend *be MM_UNUSED, void *p);
void model_cpu_mem_copy(const mm_backend *be MM_UNUSED, void *dst, const void *src, size_t bytes);
void model_cpu_mem_zero(const mm_backend *be MM_UNUSED, void *p, size_t bytes);
void model_cpu_copy_rows(const mm_backend *be MM_UNUSED, mm_real *dst, size_t dst_stride,
                         const mm_real *src, size_t src_stride, size_t width, int rows);
void model_cpu_act_copy(const mm_backend *be MM_UNUSED, mm_real *dst, const mm_real *src,
                        size_t n);
void model_cpu_embed_fwd(const mm_backend *be MM_UNUSED, mm_real *x0, uint8_t *key_valid,
                         const mm_real *emb_img, const mm_real *emb_aud, const mm_real *img_pos,
                         const mm_real *aud_pos, const mm_real *wte, const mm_real *tpos,
                         const int32_t *tokens, int tok_stride, const uint8_t *has_image,
                         const uint8_t *has_audio, int B, int T, int n_img, int n_aud, int C,
                         int V);
void model_cpu_embed_bwd(const mm_backend *be MM_UNUSED, mm_real *g_img_pos, mm_real *g_aud_pos,
                         mm_real *g_wte, mm_real *g_tpos, const mm_real *dx0, const int32_t *tokens,
                         int B, int T, int n_img, int n_aud, int C, int V);
void model_cpu_seq_loss(const mm_backend *be MM_UNUSED, double *out, const mm_real *losses,
                        const int32_t *targets, int B, int Tt);
void model_cpu_seq_dloss(const mm_backend *be MM_UNUSED, mm_real *dloss, const int32_t *targets,
                         mm_real scale, int B, int Tt);

// mm_fail with the tp part of a config check: tp_rank in [0, tp), tp divides n_heads and
// d_ff, and tp_group (when given) has size tp and rank tp_rank. who prefixes the message.
int model_check_tp(const char *who, int n_heads, int d_ff, int tp, int tp_rank,
                   comm_group *tp_group, mm_err *err);

// ---------------------------------------------------------------------------------------
// Pre-norm self-attention block (block.c):
//   res2 = x + attn.proj(attention(attn.qkv(LN1(x))))
//   res3 = res2 + mlp.proj(GELU(mlp.fc(LN2(res2))))
// tp-aware as in transformer.c's file top (heads and MLP columns split, two allreduces per
// pass each way); a replicated block (the DiT encoders) is the same code with tp = 1,
// bias_rank = 1 and full widths.

// Tensor suffixes under "<prefix>.<l>." in table order (12 tensors).
enum { MODEL_BLOCK_TENSORS = 12 };

// Views into params or grads (same offsets in both). Cl = NHl*HD, Fl: this rank's widths.
typedef struct {
    mm_real *ln1_g, *ln1_b;  // (C)
    mm_real *qkv_w;          // (3, Cl, C) = (3Cl, C) packed q|k|v of the local heads
    mm_real *qkv_b;          // (3, Cl)
    mm_real *attproj_w;      // (C, Cl) columns of the local heads
    mm_real *attproj_b;      // (C) replicated
    mm_real *ln2_g, *ln2_b;  // (C)
    mm_real *fc_w;           // (Fl, C)
    mm_real *fc_b;           // (Fl)
    mm_real *mlpproj_w;      // (C, Fl)
    mm_real *mlpproj_b;      // (C) replicated
} model_block_w;

// Saved activations of one block. Carved for (max_B, T); a call with B samples and T' <= T
// positions uses them as (B, T', ...). NHl = local heads.
typedef struct {
    mm_real *ln1;                  // (B, T, C)
    mm_real *ln1_mean, *ln1_rstd;  // (B, T)
    mm_real *qkv;                  // (B, T, 3, NHl, HD)
    mm_real *att;                  // ops->attention_saved(be, B, NHl, T): what attention keeps
    mm_real *atty;                 // (B, T, NHl, HD) attention output before attn.proj
    mm_real *res2;                 // (B, T, C) residual after attention
    mm_real *ln2;                  // (B, T, C)
    mm_real *ln2_mean, *ln2_rstd;  // (B, T)
    mm_real *fch;                  // (B, T, Fl) mlp.fc output (pre-GELU)
    mm_real *fcg;                  // (B, T, Fl) after GELU
    mm_real *res3;                 // (B, T, C) residual after the MLP = next block's input
} model_block_acts;

// Backward scratch shared by all blocks of a stack (not kept between calls).
typedef struct {
    mm_real *dres;   // (B, T, C) gradient of the residual stream: in d(res3), out d(x)
    mm_real *dln1;   // (B, T, C) gradient of ln1's output (allreduced under tp)
    mm_real *dln2;   // (B, T, C) gradient of ln2's output (allreduced under tp)
    mm_real *datty;  // (B, T, Cl)
    mm_real *dqkv;   // (B, T, 3, NHl, HD)
    mm_real *dfch;   // (B, T, Fl)
    mm_real *dfcg;   // (B, T, Fl)
    // (B, T, C) a dropped branch's output gradient; carved by a model that drops residual
    // branches (model_block_carve_scratch leaves it NULL)
    mm_real *ddrop;
} model_block_scratch;

// How a stack of blocks runs: shapes of this call and the tp placement.
typedef struct {
    const mm_backend *be;
    const model_ops *ops;  // be->ops
    int B, T, P;       // samples, positions, bidirectional prefix (P = T: no causal part)
    int C, NHl, HD, Fl;  // model width; local heads, head dim; local MLP width
    int bias_rank;     // 1 on the one rank that adds the row-parallel biases (tp rank 0)
    const mm_coll *tp;  // the tp group on be; NULL: tp 1, no collective
    // Dropout (model.h model_config; what model_drop.h draws): none when drop_keys is NULL
    // (the zeroes a caller that never drops leaves here). The residual branches (after
    // attn.proj and mlp.proj, before the add) drop with resid_*, the attention probabilities
    // with attn_*; a thr of 0 is none.
    const uint64_t *drop_keys;  // (B) ops memory: each sample's model_drop_sample_key
    uint32_t resid_thr, attn_thr;
    mm_real resid_scale, attn_scale;
    int layer;  // this block's index in its stack: the draws' site (set per block)
    int head0;  // the global index of this rank's first head
} model_block_run;

// Which of a block's activations a layer carves for itself (bits); under recomputation the
// others are views into one set shared by every layer of the stack, which backward refills
// (model_block_recompute, dit_block_recompute) before it reads them.
enum {
    MODEL_PART_ATT = 1,   // the attention's internals: att and atty (the DiT: also xatt, xatty)
    MODEL_PART_OUT = 2,   // res3: the block's output, the next block's input (or ln_f's)
    MODEL_PART_REST = 4,  // everything else
    MODEL_PART_ALL = 7
};
// The parts a layer keeps under mode r: all (none), all but the attention's (attention), the
// output only (block). The shared set holds MODEL_PART_ALL & ~ that (nothing for none).
int model_recompute_kept(model_recompute r);

// Adds the block's 12 tensors named "<prefix>.<l>.<suffix>" (e.g. "blocks.3.attn.qkv.w");
// split = 1 splits them Megatron-style (heads / MLP columns), 0 replicates them all.
void model_block_add_tensors(model_table *tb, const char *prefix, int l, int64_t C, int64_t F,
                             int split, int group);
// Points w's views at buf + t[*k..*k+12).offset and advances *k (table order).
void model_block_bind(model_block_w *w, mm_real *buf, const model_tensor *t, int *k);
// Carves the parts (MODEL_PART_*) of the block's activations for BT = max_B * T rows (ops:
// the attention's saved size); every other view is shared's (NULL shared: left NULL).
void model_block_carve(model_carver *cv, const mm_backend *be, model_block_acts *a, int parts,
                       const model_block_acts *shared, size_t BT, size_t T, size_t C, size_t NHl,
                       size_t Cl, size_t Fl);
void model_block_carve_scratch(model_carver *cv, model_block_scratch *s, size_t BT, size_t C,
                               size_t Cl, size_t Fl);

// Forward of one block on x (B, T, C); key_valid (B, T) as ops->attention_fwd. Result in
// a->res3. Collective over r->tp when it is set.
void model_block_forward(const model_block_run *r, const model_block_w *w, model_block_acts *a,
                         const mm_real *x, const uint8_t *key_valid);
// Under recompute mode `mode`, refills what a (carved with model_recompute_kept(mode))
// shares with the other layers, from what it keeps and its forward input x, by running
// that part of the forward again: nothing for none, the attention for attention, the whole
// block (its collectives included, so every tp rank must call it in the same order) for
// block. Call right before model_block_backward of the same layer.
void model_block_recompute(const model_block_run *r, model_recompute mode, const model_block_w *w,
                           model_block_acts *a, const mm_real *x, const uint8_t *key_valid);
// Backward of one block whose forward input was x: from s->dres = d(res3) ACCUMULATES the
// weight gradients into g and leaves d(x) in s->dres. Uses (and zeroes) the rest of s.
void model_block_backward(const model_block_run *r, const model_block_w *w,
                          const model_block_w *g, const model_block_acts *a, const mm_real *x,
                          const model_block_scratch *s);

#endif  // MM_MODEL_INTERNAL_H
