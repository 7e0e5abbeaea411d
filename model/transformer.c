// transformer.c: the multimodal prefix-LM transformer of model.h: parameter table and
// initialization, forward with loss, backward, greedy generation and the FLOP count. It
// exists to keep the model's structure in one place, above the backend ops table, so the
// CPU and (later) CUDA backends share it.
//
// Sequence per sample: [image patches (n_img) | audio tokens (n_aud) | text (text_T)].
//   image  (H, W, C) -> patches (n_img, patch*patch*C), inner order (dy, dx, c), patches in
//          row-major (py, px) order -> img.proj (linear) + img.pos. With the conv stem
//          (model.stem: conv) the patches are cut from a feature map instead: see "stem".
//   audio  (audio_F, n_mels) -> (n_aud, audio_group*n_mels) by grouping consecutive frames
//          (trailing audio_F % audio_group frames dropped) -> audio.proj + audio.pos
//   text   text.wte[token] + text.pos
// then n_layers pre-norm blocks (LN -> attention -> residual, LN -> MLP(GELU) -> residual),
// ln_f and lm_head on the text positions only. Prefix P = n_img + n_aud is bidirectional,
// text is causal; a missing modality's tokens are never keys.
//
// Loss: per sample, the mean cross-entropy over its targets != -1; model_forward returns the
// sum of those means over the batch (double, summed in sample order).
//
// Parameter layout decisions (names are checkpoint/export names):
//   - blocks.i.attn.qkv.w has GLOBAL shape (3, d, d) and qkv.b (3, d): row-major identical
//     to a packed (3d, d) matrix whose output is (B, T, 3, NH, HD), but written 3-D so that
//     tp splits it along dim 1 (whole heads): rank r holds (3, d/tp, d) = its heads of q, k
//     and v, and its local qkv output is again (B, T, 3, NH/tp, HD).
//   - column-parallel (split_dim 0): mlp.fc.w (d_ff, d), mlp.fc.b; row-parallel (split_dim
//     1): attn.proj.w (d, d), mlp.proj.w (d, d_ff); everything else replicated (-1),
//     including the row-parallel biases (added once, by tp rank 0; see below).
//   - weight decay on every tensor with ndim >= 2: all matrices, the token embedding and the
//     learned positions (as nanoGPT does); never on biases or LN gains/biases.
//   - init (GPT-2; N(0, s) has standard deviation s): matrices and embeddings N(0, 0.02);
//     attn.proj.w and mlp.proj.w N(0, 0.02/sqrt(2*n_layers)); the stem's convolutions
//     N(0, 1/sqrt(fan_in)) (LeCun: at 0.02 their outputs would start near zero and the stem
//     would learn nothing for long); biases 0; LN gains 1. Tensor k draws from
//     mm_rng(seed, k) over its full global shape in row-major order; a rank keeps its slice,
//     so initial values do not depend on tp.
//
// The block (tensors, forward, backward, its four collectives) lives in block.c and the
// table / init / carving mechanics in layout.c, shared with the DiT (model_internal.h); this
// file keeps the LM's structure and policies (which tensors, the init law, the head).
//
// Memory: params, grads, activations and the inputs live in the ops table's memory (host
// memory for the CPU, device memory for CUDA), allocated and copied through the table; the
// glue between the big ops (patchify, the embedding gather and its scatter-add backward, the
// row copies, the per-sample loss reduction) are ops too (model.h), so this file never
// touches a buffer's elements itself. Exceptions, all host-side by design: initial weights
// are drawn on the host and uploaded; forward copies back B pairs of doubles (per-sample
// losses); generate copies back B rows of logits per step for the argmax.
//
// Tensor parallelism (Megatron-LM's splits). With NH/tp heads and d_ff/tp
// MLP columns per rank (Cl = C/tp, Fl = F/tp), a block is
//   ln1 -> qkv (column-parallel, local heads) -> attention (local heads) -> attn.proj (row-
//   parallel: partial sums over the local heads) -> ALLREDUCE -> + residual
//   ln2 -> fc (column-parallel) -> GELU -> mlp.proj (row-parallel) -> ALLREDUCE -> + residual
// so there are exactly four collectives per block and pass, all sums over the tp group on
// (B, T, C), through the backend (m->tp: MPI on host buffers, NCCL on device buffers):
//   forward:  after attn.proj and after mlp.proj: each rank holds the product of its slice
//             of the contraction dimension only; the sum makes the residual stream whole.
//   backward: d(ln1) after qkv's backward and d(ln2) after fc's backward: each rank's input
//             gradient covers only its heads / MLP columns (identity forward, allreduce
//             backward), and the replicated layernorm below needs the full gradient.
// The row-parallel biases (replicated) are added once, by tp rank 0 inside its matmul
// before the allreduce (fused into the gemm, no extra pass); their gradient is sum_rows of
// the replicated output gradient, which every rank computes identically.
// Everything else - embeddings, layernorms, ln_f, lm_head, the loss - is replicated: every
// rank computes it on identical inputs in the same order. INVARIANT (the trainer relies on
// it and never reduces replicated gradients over tp): replicated tensors' gradients come out
// bitwise identical on every tp rank. It holds because the allreduce returns the same bits on
// every rank (ring and reduce+broadcast, MPI's and NCCL's, sum each element once and
// distribute it; recursive doubling adds the same two operands on both partners, and fp
// addition commutes)
// and the replicated ops are deterministic (ops_cpu.c); tests/test_tp.c checks it. A tp > 1
// result equals tp = 1 up to the fp32 summation order of those four contractions; tp = 1
// makes no comm call at all.
//
// Activation recomputation (cfg.recompute, model.h): the blocks keep less (block: only their
// output, the next block's input; attention: all but the attention's internals) and share
// one set for the rest, which backward refills right before each block's backward
// (model_block_recompute), tp collectives included, so the hook below fires as without it.
// ln_f reads the kept output of the last block.
//
// Regularisation (model_config dropout, attn_dropout, label_smoothing; only for a model_input
// with train set): inverted dropout on x0 (layer 0, MODEL_DROP_EMBD) and in each block
// (block.c: the attention probabilities, and each branch after its tp allreduce, where it is
// whole, so every tp rank drops the same elements); the smoothed cross-entropy in the ops.
// The masks are model_drop.h's counters of (seed, step, sample id, layer, place, element):
// nothing is stored, backward and recomputation redraw them. x0's dropout is undone on d(x0)
// before the embeddings' backward.
//
// Gradient-ready hook (model_set_grad_hook): backward finishes the head, then blocks L-1 .. 0,
// then the embeddings; the table is laid out in the reverse order, so after each of those
// stages every gradient from some offset lo to the end is final, and the data-parallel
// buckets above lo can start their allreduce while the earlier layers still run.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "model.h"
#include "model_drop.h"
#include "model_internal.h"

// Views into params or grads (same offsets in both).
typedef struct {
    mm_real *conv1_w, *conv1_b;  // stem conv: (S, 3, 3, c), (S); NULL with the patch stem
    mm_real *conv2_w, *conv2_b;  // stem conv: (2S, 3, 3, S), (2S)
    mm_real *img_w;          // (C, pdim)
    mm_real *img_b;          // (C)
    mm_real *img_pos;        // (n_img, C)
    mm_real *aud_w;          // (C, adim)
    mm_real *aud_b;          // (C)
    mm_real *aud_pos;        // (n_aud, C)
    mm_real *wte;            // (V, C)
    mm_real *tpos;           // (Tt, C)
    model_block_w *layer;    // (L) owned
    mm_real *lnf_g, *lnf_b;  // (C)
    mm_real *lm_head;        // (V, C)
} weights;

typedef struct {
    // the conv stem (NULL with the patch stem), feature maps channels last; H, W the image's
    mm_real *cols1;     // (B, H, W, 9c) im2col of the image
    mm_real *h1, *g1;   // (B, H, W, S) conv1 output, its GELU; g1 is reused for d(h1)
    mm_real *p1;        // (B, H/2, W/2, S) pooled; reused for its gradient
    mm_real *cols2;     // (B, H/2, W/2, 9S) im2col of p1
    mm_real *h2, *g2;   // (B, H/2, W/2, 2S) conv2 output, its GELU; g2 is reused for d(h2)
    mm_real *p2;        // (B, H/4, W/4, 2S) pooled: what the patches are cut from; reused for
                        // its gradient
    mm_real *dpatches;  // (B, n_img, pdim) backward scratch
    mm_real *dg;        // (B, H, W, S) backward scratch: d(g1), and d(g2) before it
    mm_real *dcols2;    // (B, H/2, W/2, 9S) backward scratch
    mm_real *img;       // (B, H, W, c) the input image as activations; NULL (the input is
                        // read) where activations are mm_real
    mm_real *aud_in;    // (B, audio_F, n_mels) the input audio likewise
    mm_real *patches;   // (B, n_img, pdim)
    mm_real *aud;       // (B, n_aud, adim) grouped frames (used when audio_F % group != 0)
    mm_real *emb_img;   // (B, n_img, C) img.proj output; reused for its gradient
    mm_real *emb_aud;   // (B, n_aud, C) audio.proj output; reused for its gradient
    mm_real *x0;        // (B, T, C) embeddings = block 0 input
    model_block_acts *layer;  // (L) owned
    mm_real *txt;       // (B, Tt, C) final residual at the text positions
    mm_real *lnf;       // (B, Tt, C)
    mm_real *lnf_mean, *lnf_rstd;  // (B, Tt)
    mm_real *logits;               // (B, Tt, V)
    mm_real *probs;                // ops->xent_saved(be, B * Tt, V): what xent keeps
    mm_real *losses;               // (B, Tt)
    mm_real *gen_logits;           // (B, V) mm_real logits for generation; NULL where the
                                   // activations are mm_real (it reads logits)
    // backward scratch (not kept between calls)
    model_block_scratch bs;  // the blocks' gradients; bs.dres: of the residual stream
    mm_real *dlogits;  // (B, Tt, V) = logits: the backward overwrites them in place
    mm_real *dlnf;     // (B, Tt, C)
    mm_real *dtxt;     // (B, Tt, C)
    mm_real *dloss;    // (B, Tt)
} acts;

struct model {
    model_config cfg;
    const mm_backend *be;  // not owned
    const model_ops *ops;  // be->ops
    const lm_ops *lops;    // lm_ops_for(be)
    int max_B;
    int C, L, NH, HD, F, V, Tt;  // d_model, layers, heads, head dim, d_ff, vocab, text_T
    int NHl, Cl, Fl;             // this tp rank's heads, attention width (NHl*HD), MLP width
    int n_img, n_aud, P, T;      // image/audio tokens, prefix, full sequence length
    int pdim, adim;              // patch and audio-token input widths
    int S;                       // stem conv: stem_width (0 with the patch stem)
    int n_tensors;
    model_tensor *tensors;  // (n_tensors) owned
    size_t n_params;
    mm_real *params, *grads;  // (n_params) each, owned
    size_t head_lo;           // first offset of ln_f / lm_head
    size_t *block_lo;         // (L) first offset of each block's tensors, owned
    model_hook hook;          // the grad hook (fn NULL when none)
    mm_coll *tp;              // cfg.tp_group on be (NULL: tp 1 or layout only), owned
    weights w, g;             // views into params / grads
    mm_real *act_mem;         // the one activation buffer, owned
    acts a;                   // views into act_mem
    uint8_t *key_valid;       // (max_B, T) ops memory
    double *seq_out;          // (max_B, 2) ops memory: per-sample loss mean and count
    double *seq_host;         // (max_B, 2) host copy
    mm_real *gen_logits;      // (max_B, V) host copy of generation's logits
    int32_t *gen_dtokens;     // (max_B, Tt) ops memory: generation's tokens for the trunk
    int32_t *gen_tokens;      // (max_B, Tt) generation's token buffer (host)
    uint8_t *gen_done;        // (max_B)
    int saved_B;              // samples whose activations model_backward may use; 0 after generate
    // Regularisation (model_config): the draws' seed (model_create's), the thresholds and
    // scales of model_drop, and each sample's key for the current training batch.
    uint64_t seed;
    uint32_t resid_thr, attn_thr;  // 0: that dropout is off
    mm_real resid_scale, attn_scale;
    uint64_t *drop_keys;  // (max_B) ops memory
    uint64_t *drop_host;  // (max_B) host copy
    int saved_train;      // in->train of the forward whose activations are kept
    mm_real saved_scale;  // its in->loss_scale: nonzero when dlogits are already computed
};

// ---------------------------------------------------------------------------------------
// parameter table

static void build_table(model *m) {
    const model_config *c = &m->cfg;
    int64_t C = m->C, F = m->F, V = m->V;
    const int cap = (m->S ? 4 : 0) + 8 + MODEL_BLOCK_TENSORS * m->L + 3;
    model_table tb;
    model_table_init(&tb, cap, c->tp, c->tp_rank);
#define ADD(name, ndim, shape, group) model_table_add(&tb, name, ndim, shape, -1, group)
    if (m->S) {
        int64_t S = m->S;
        ADD("img.conv1.w", 4, MODEL_SHAPE(S, 3, 3, c->img_c), MODEL_GROUP_IMAGE);
        ADD("img.conv1.b", 1, MODEL_SHAPE(S), MODEL_GROUP_IMAGE);
        ADD("img.conv2.w", 4, MODEL_SHAPE(2 * S, 3, 3, S), MODEL_GROUP_IMAGE);
        ADD("img.conv2.b", 1, MODEL_SHAPE(2 * S), MODEL_GROUP_IMAGE);
    }
    ADD("img.proj.w", 2, MODEL_SHAPE(C, m->pdim), MODEL_GROUP_IMAGE);
    ADD("img.proj.b", 1, MODEL_SHAPE(C), MODEL_GROUP_IMAGE);
    ADD("img.pos", 2, MODEL_SHAPE(m->n_img, C), MODEL_GROUP_IMAGE);
    ADD("audio.proj.w", 2, MODEL_SHAPE(C, m->adim), MODEL_GROUP_AUDIO);
    ADD("audio.proj.b", 1, MODEL_SHAPE(C), MODEL_GROUP_AUDIO);
    ADD("audio.pos", 2, MODEL_SHAPE(m->n_aud, C), MODEL_GROUP_AUDIO);
    ADD("text.wte", 2, MODEL_SHAPE(V, C), MODEL_GROUP_TEXT);
    ADD("text.pos", 2, MODEL_SHAPE(m->Tt, C), MODEL_GROUP_TEXT);
    // backward completes these stages from the last to the first (see model_set_grad_hook)
    m->block_lo = mm_calloc((size_t)m->L, sizeof(size_t));
    for (int l = 0; l < m->L; l++) {
        m->block_lo[l] = tb.off;
        model_block_add_tensors(&tb, "blocks", l, C, F, 1, MODEL_GROUP_TRUNK);
    }
    m->head_lo = tb.off;
    ADD("ln_f.g", 1, MODEL_SHAPE(C), MODEL_GROUP_TRUNK);
    ADD("ln_f.b", 1, MODEL_SHAPE(C), MODEL_GROUP_TRUNK);
    ADD("lm_head.w", 2, MODEL_SHAPE(V, C), MODEL_GROUP_TEXT);
#undef ADD
    model_table_done(&tb);
    m->tensors = tb.t;
    m->n_tensors = tb.n;
    m->n_params = tb.off;
}

// Points the views of wt at buf, in build_table's order.
static void bind_weights(const model *m, weights *wt, mm_real *buf) {
    const model_tensor *t = m->tensors;
    int k = 0;
#define NEXT() (buf + t[k++].offset)
    if (m->S) {
        wt->conv1_w = NEXT();
        wt->conv1_b = NEXT();
        wt->conv2_w = NEXT();
        wt->conv2_b = NEXT();
    }
    wt->img_w = NEXT();
    wt->img_b = NEXT();
    wt->img_pos = NEXT();
    wt->aud_w = NEXT();
    wt->aud_b = NEXT();
    wt->aud_pos = NEXT();
    wt->wte = NEXT();
    wt->tpos = NEXT();
    wt->layer = mm_calloc((size_t)m->L, sizeof(model_block_w));
    for (int l = 0; l < m->L; l++) model_block_bind(&wt->layer[l], buf, t, &k);
    wt->lnf_g = NEXT();
    wt->lnf_b = NEXT();
    wt->lm_head = NEXT();
#undef NEXT
    MM_CHECK(k == m->n_tensors, "bind_weights out of step with build_table");
}

// Initializes tensor k (GPT-2 law, file top); the draw is layout.c's, so tp-independent.
static void init_tensor(model *m, mm_real *params, int k, uint64_t seed) {
    const model_tensor *t = &m->tensors[k];
    mm_real *p = params + t->offset;
    const char *n = t->name;
    if (model_ends_with(n, ".g")) {  // layernorm gains
        for (size_t i = 0; i < t->size; i++) p[i] = 1;
        return;
    }
    if (t->ndim == 1 || model_ends_with(n, ".b")) return;  // biases: 0 (buffer is zeroed)
    double std = 0.02;
    if (model_ends_with(n, "attn.proj.w") || model_ends_with(n, "mlp.proj.w"))
        std = 0.02 / sqrt(2.0 * m->L);
    if (model_ends_with(n, ".conv1.w") || model_ends_with(n, ".conv2.w"))
        std = 1.0 / sqrt(9.0 * (double)t->shape[3]);  // fan_in = 3 * 3 * input channels
    model_init_draw(p, t, seed, (uint64_t)k, std, 0);
}

// ---------------------------------------------------------------------------------------
// activations: one buffer, carved in a fixed order

// Carves the activation buffer at base (NULL: only counts); returns its bytes, and in
// *per_layer those of one block.
static size_t plan_acts(model *m, mm_real *base, size_t *per_layer) {
    size_t B = (size_t)m->max_B, T = (size_t)m->T, C = (size_t)m->C;
    size_t Cl = (size_t)m->Cl, Fl = (size_t)m->Fl;
    size_t Tt = (size_t)m->Tt, V = (size_t)m->V, BT = B * T, BTt = B * Tt;
    model_carver cv;
    model_carver_init(&cv, m->be, base);
    acts *a = &m->a;
    const int conv = m->be->act_bytes != sizeof(mm_real);  // inputs and logits converted
    a->img = conv ? model_carve(&cv, B * m->cfg.img_h * m->cfg.img_w * m->cfg.img_c) : NULL;
    a->aud_in = conv ? model_carve(&cv, B * m->cfg.audio_F * m->cfg.n_mels) : NULL;
    a->gen_logits = conv ? model_carve_real(&cv, B * V) : NULL;
    if (m->S) {
        const size_t HW = (size_t)m->cfg.img_h * m->cfg.img_w, S = (size_t)m->S;
        a->cols1 = model_carve(&cv, B * HW * 9 * (size_t)m->cfg.img_c);
        a->h1 = model_carve(&cv, B * HW * S);
        a->g1 = model_carve(&cv, B * HW * S);
        a->p1 = model_carve(&cv, B * HW / 4 * S);
        a->cols2 = model_carve(&cv, B * HW / 4 * 9 * S);
        a->h2 = model_carve(&cv, B * HW / 4 * 2 * S);
        a->g2 = model_carve(&cv, B * HW / 4 * 2 * S);
        a->p2 = model_carve(&cv, B * HW / 16 * 2 * S);
        a->dpatches = model_carve(&cv, B * m->n_img * m->pdim);
        a->dg = model_carve(&cv, B * HW * S);
        a->dcols2 = model_carve(&cv, B * HW / 4 * 9 * S);
    }
    a->patches = model_carve(&cv, B * m->n_img * m->pdim);
    a->aud = model_carve(&cv, B * m->n_aud * m->adim);
    a->emb_img = model_carve(&cv, B * m->n_img * C);
    a->emb_aud = model_carve(&cv, B * m->n_aud * C);
    a->x0 = model_carve(&cv, BT * C);
    // under recomputation, one set of what the layers do not keep, shared by all of them
    const int keep = model_recompute_kept(m->cfg.recompute);
    model_block_acts shared = {0};
    if (keep != MODEL_PART_ALL)
        model_block_carve(&cv, m->be, &shared, MODEL_PART_ALL & ~keep, NULL, BT, T, C,
                          (size_t)m->NHl, Cl, Fl);
    const size_t before = cv.off;
    for (int l = 0; l < m->L; l++)
        model_block_carve(&cv, m->be, &a->layer[l], keep, &shared, BT, T, C, (size_t)m->NHl, Cl,
                          Fl);
    *per_layer = (cv.off - before) / (size_t)m->L;
    a->txt = model_carve(&cv, BTt * C);
    a->lnf = model_carve(&cv, BTt * C);
    a->lnf_mean = model_carve_real(&cv, BTt);
    a->lnf_rstd = model_carve_real(&cv, BTt);
    a->logits = model_carve(&cv, BTt * V);
    a->probs = model_carve_real(&cv, m->ops->xent_saved(m->be, (int)BTt, (int)V));
    a->losses = model_carve_real(&cv, BTt);
    model_block_carve_scratch(&cv, &a->bs, BT, C, Cl, Fl);
    if (m->cfg.dropout > 0) a->bs.ddrop = model_carve(&cv, BT * C);
    a->dlogits = a->logits;
    a->dlnf = model_carve(&cv, BTt * C);
    a->dtxt = model_carve(&cv, BTt * C);
    a->dloss = model_carve_real(&cv, BTt);
    return cv.off;
}

// ---------------------------------------------------------------------------------------
// create / free / accessors

static int check_config(const model_config *c, int max_B, mm_err *err) {
    if (c->recompute != MODEL_RECOMPUTE_NONE && c->recompute != MODEL_RECOMPUTE_ATTENTION &&
        c->recompute != MODEL_RECOMPUTE_BLOCK)
        return mm_fail(err, "model: recompute %d is not none, attention or block",
                       (int)c->recompute);
    struct {
        const char *name;
        int v;
    } pos[] = {{"d_model", c->d_model},
               {"n_layers", c->n_layers},
               {"n_heads", c->n_heads},
               {"d_ff", c->d_ff},
               {"vocab", c->vocab},
               {"text_T", c->text_T},
               {"img_h", c->img_h},
               {"img_w", c->img_w},
               {"img_c", c->img_c},
               {"patch", c->patch},
               {"audio_F", c->audio_F},
               {"n_mels", c->n_mels},
               {"audio_group", c->audio_group},
               {"tp", c->tp},
               {"max_B", max_B}};
    for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++)
        if (pos[i].v <= 0)
            return mm_fail(err, "model: %s must be > 0 (got %d)", pos[i].name, pos[i].v);
    if (c->d_model % c->n_heads)
        return mm_fail(err, "model: d_model %d is not divisible by n_heads %d", c->d_model,
                       c->n_heads);
    if (c->img_h % c->patch || c->img_w % c->patch)
        return mm_fail(err, "model: image %dx%d is not divisible into %dx%d patches", c->img_h,
                       c->img_w, c->patch, c->patch);
    if (c->stem != MODEL_STEM_PATCH && c->stem != MODEL_STEM_CONV)
        return mm_fail(err, "model: stem %d is not patch or conv", c->stem);
    if (c->stem == MODEL_STEM_CONV && (c->patch % 4 || c->stem_width <= 0))
        return mm_fail(err,
                       "model: the conv stem needs a patch that is a multiple of 4 (got %d) and "
                       "stem_width > 0 (got %d)",
                       c->patch, c->stem_width);
    if (c->audio_F < c->audio_group)
        return mm_fail(err,
                       "model: audio_F %d frames is fewer than audio_group %d (no audio "
                       "token)",
                       c->audio_F, c->audio_group);
    const struct {
        const char *name;
        double v;
    } prob[] = {{"dropout", c->dropout},
                {"attn_dropout", c->attn_dropout},
                {"label_smoothing", c->label_smoothing}};
    for (size_t i = 0; i < sizeof(prob) / sizeof(prob[0]); i++)
        if (!(prob[i].v >= 0 && prob[i].v < 1))
            return mm_fail(err, "model: %s must be in [0, 1) (got %g)", prob[i].name, prob[i].v);
    if (c->vocab <= DATA_TOK_EOS)
        return mm_fail(err, "model: vocab %d must include the BOS/EOS tokens (%d, %d)", c->vocab,
                       DATA_TOK_BOS, DATA_TOK_EOS);
    return model_check_tp("model", c->n_heads, c->d_ff, c->tp, c->tp_rank, c->tp_group, err);
}

// The transformer's kernels on each backend: the one place a backend registers them.
const lm_ops *lm_ops_for(const mm_backend *be) {
    switch (be->kind) {
    case MM_BACKEND_CPU:
        return &lm_ops_cpu;
    case MM_BACKEND_CUDA:
#ifdef MM_HAVE_CUDA
        return &lm_ops_cuda;
#endif
        break;
    }
    return NULL;
}

// A dropout probability as model_drop's threshold (p in 2^-24 steps) and the scale that keeps
// the expectation exact for the probability the threshold really draws.
static void drop_rate(double p, uint32_t *thr, mm_real *scale) {
    *thr = (uint32_t)llround(p * (double)(1u << MODEL_DROP_BITS));
    *scale = (mm_real)(1.0 / (1.0 - (double)*thr / (double)(1u << MODEL_DROP_BITS)));
}

// The checks, shapes and tensor table of a model of cfg in m (no buffers yet): what
// model_create and model_mem_plan share, so that the plan is what create allocates.
static int setup(model *m, const model_config *cfg, const mm_backend *be, int max_B, mm_err *err) {
    if (check_config(cfg, max_B, err)) return -1;
    const lm_ops *lops = lm_ops_for(be);
    if (!lops) return mm_fail(err, "model: backend %s has no transformer kernels", be->name);
    if (mm_table_complete(lops, sizeof(*lops), sizeof(const char *), "lm_ops", err) != 0)
        return -1;
    m->cfg = *cfg;
    m->be = be;
    m->ops = be->ops;
    m->lops = lops;
    m->max_B = max_B;
    m->C = cfg->d_model;
    m->L = cfg->n_layers;
    m->NH = cfg->n_heads;
    m->HD = cfg->d_model / cfg->n_heads;
    m->F = cfg->d_ff;
    m->NHl = m->NH / cfg->tp;
    m->Cl = m->NHl * m->HD;
    m->Fl = m->F / cfg->tp;
    m->V = cfg->vocab;
    m->Tt = cfg->text_T;
    m->n_img = (cfg->img_h / cfg->patch) * (cfg->img_w / cfg->patch);
    m->n_aud = cfg->audio_F / cfg->audio_group;
    m->P = m->n_img + m->n_aud;
    m->T = m->P + m->Tt;
    m->pdim = cfg->patch * cfg->patch * cfg->img_c;
    if (cfg->stem == MODEL_STEM_CONV) {
        m->S = cfg->stem_width;
        m->pdim = (cfg->patch / 4) * (cfg->patch / 4) * 2 * m->S;
    }
    m->adim = cfg->audio_group * cfg->n_mels;
    drop_rate(cfg->dropout, &m->resid_thr, &m->resid_scale);
    drop_rate(cfg->attn_dropout, &m->attn_thr, &m->attn_scale);
    build_table(m);
    m->a.layer = mm_calloc((size_t)m->L, sizeof(model_block_acts));
    return 0;
}

int model_mem_plan(const model_config *cfg, const mm_backend *be, int max_B, model_mem *out,
                   mm_err *err) {
    model m = {0};
    int rc = setup(&m, cfg, be, max_B, err);
    if (rc == 0) {
        size_t per = 0, n = plan_acts(&m, NULL, &per);
        *out = (model_mem){.n_params = m.n_params,
                           .act_bytes = n,
                           .act_per_layer = per,
                           .attn_probs = (size_t)max_B * m.NHl * m.T * m.T * sizeof(float),
                           .attn_hd = m.HD,
                           .attn_rows = (size_t)max_B * m.T * m.Cl,
                           .attn_dropout = m.attn_thr != 0,
                           .max_tensor = model_table_max(m.tensors, m.n_tensors),
                           .n_layers = m.L};
    }
    free(m.tensors);
    free(m.block_lo);
    free(m.a.layer);
    return rc;
}

int model_create(model **out, const model_config *cfg, const mm_backend *be, int max_B,
                 uint64_t seed, mm_err *err) {
    *out = NULL;
    model *m = mm_calloc(1, sizeof(model));
    if (setup(m, cfg, be, max_B, err) != 0) {
        free(m->tensors);
        free(m->block_lo);
        free(m->a.layer);
        free(m);
        return -1;
    }
    m->seed = seed;
    const model_ops *ops = be->ops;
    const size_t pbytes = m->n_params * sizeof(mm_real);
    m->params = ops->mem_alloc(be, pbytes);
    m->grads = ops->mem_alloc(be, pbytes);
    bind_weights(m, &m->w, m->params);
    bind_weights(m, &m->g, m->grads);
    // drawn on the host, then copied to the ops' memory (a plain copy on the CPU)
    mm_real *init = mm_alloc_aligned(pbytes);
    // each tensor has its own stream, so the split across threads cannot change values
#pragma omp parallel for schedule(dynamic)
    for (int k = 0; k < m->n_tensors; k++) init_tensor(m, init, k, seed);
    ops->mem_upload(be, m->params, init, pbytes);
    free(init);

    size_t per_layer, n_acts = plan_acts(m, NULL, &per_layer);
    m->act_mem = ops->mem_alloc(be, n_acts);
    plan_acts(m, m->act_mem, &per_layer);
    m->key_valid = ops->mem_alloc(be, (size_t)max_B * m->T);
    m->seq_out = ops->mem_alloc(be, (size_t)max_B * 2 * sizeof(double));
    m->seq_host = mm_calloc((size_t)max_B * 2, sizeof(double));
    m->gen_logits = mm_alloc_aligned((size_t)max_B * m->V * sizeof(mm_real));
    m->gen_dtokens = ops->mem_alloc(be, (size_t)max_B * m->Tt * sizeof(int32_t));
    m->gen_tokens = mm_calloc((size_t)max_B * m->Tt, sizeof(int32_t));
    m->gen_done = mm_calloc((size_t)max_B, 1);
    m->drop_keys = ops->mem_alloc(be, (size_t)max_B * sizeof(uint64_t));
    m->drop_host = mm_calloc((size_t)max_B, sizeof(uint64_t));
    m->tp = cfg->tp > 1 ? mm_coll_new(be, cfg->tp_group) : NULL;  // collective over the group
    *out = m;
    return 0;
}

void model_free(model *m) {
    if (!m) return;
    mm_coll_free(m->be, m->tp);
    free(m->tensors);
    free(m->block_lo);
    m->ops->mem_free(m->be, m->params);
    m->ops->mem_free(m->be, m->grads);
    free(m->w.layer);
    free(m->g.layer);
    m->ops->mem_free(m->be, m->act_mem);
    free(m->a.layer);
    m->ops->mem_free(m->be, m->key_valid);
    m->ops->mem_free(m->be, m->seq_out);
    free(m->seq_host);
    free(m->gen_logits);
    m->ops->mem_free(m->be, m->gen_dtokens);
    free(m->gen_tokens);
    free(m->gen_done);
    m->ops->mem_free(m->be, m->drop_keys);
    free(m->drop_host);
    free(m);
}

const model_config *model_cfg(const model *m) {
    return &m->cfg;
}
int model_n_tensors(const model *m) {
    return m->n_tensors;
}
const model_tensor *model_tensors(const model *m) {
    return m->tensors;
}
size_t model_n_params(const model *m) {
    return m->n_params;
}
mm_real *model_params(model *m) {
    return m->params;
}
mm_real *model_grads(model *m) {
    return m->grads;
}
int model_seq_len(const model *m) {
    return m->T;
}
void model_set_grad_hook(model *m, model_grad_hook fn, void *ctx) {
    m->hook = (model_hook){fn, ctx};
}

void model_zero_grad(model *m) {
    model_zero_ops(m->be, 1, &m->grads, &m->n_params);
}

// ---------------------------------------------------------------------------------------
// forward

static void check_input(const model *m, const model_input *in) {
    MM_CHECK(m->cfg.tp == 1 || m->cfg.tp_group,
             "model forward/backward/generate with tp %d needs cfg.tp_group (the model was "
             "created for layout only)",
             m->cfg.tp);
    MM_CHECK(in->B > 0 && in->B <= m->max_B,
             "batch %d outside [1, max_B=%d] given to "
             "model_create",
             in->B, m->max_B);
    MM_CHECK(in->image && in->audio && in->has_image && in->has_audio,
             "model_input needs image, audio and the has_* flags (zeros when absent)");
}

// 1 when a forward on in drops anything (a training batch under a dropout of the config)
static int dropping(const model *m, const model_input *in) {
    return in->train && (m->resid_thr || m->attn_thr);
}

// How this rank runs its blocks on B samples of T positions (Megatron split, file top);
// with drop, under the config's dropout with the keys of the batch (drop_prepare).
static model_block_run block_run(const model *m, int B, int T, int drop) {
    return (model_block_run){.be = m->be,
                             .ops = m->ops,
                             .B = B,
                             .T = T,
                             .P = m->P,
                             .C = m->C,
                             .NHl = m->NHl,
                             .HD = m->HD,
                             .Fl = m->Fl,
                             .bias_rank = m->cfg.tp_rank == 0,  // adds the row-parallel biases
                             .tp = m->tp,
                             .drop_keys = drop ? m->drop_keys : NULL,
                             .resid_thr = m->resid_thr,
                             .attn_thr = m->attn_thr,
                             .resid_scale = m->resid_scale,
                             .attn_scale = m->attn_scale,
                             .head0 = m->cfg.tp_rank * m->NHl};
}

// The dropout of the block-0 input (the embeddings): layer 0, over each sample's (T, C).
static model_drop embd_drop(const model *m) {
    return (model_drop){.keys = m->drop_keys,
                        .place = MODEL_DROP_EMBD,
                        .thr = m->resid_thr,
                        .scale = m->resid_scale};
}

// Each sample's key for this training batch (model_drop.h), into the ops' memory.
static void drop_prepare(model *m, const model_input *in) {
    MM_CHECK(in->sample_id && in->step >= 0,
             "a training model_input under dropout needs sample_id and a step >= 0");
    for (int b = 0; b < in->B; b++)
        m->drop_host[b] = model_drop_sample_key(m->seed, (uint64_t)in->step, in->sample_id[b]);
    m->ops->mem_upload(m->be, m->drop_keys, m->drop_host, (size_t)in->B * sizeof(uint64_t));
}

void model_modality_drop(uint64_t seed, int64_t step, uint64_t sample_id, double modality_drop,
                         double audio_drop, uint8_t *has_image, uint8_t *has_audio) {
    if (!*has_image || !*has_audio) return;
    const uint64_t k = model_drop_site_key(model_drop_sample_key(seed, (uint64_t)step, sample_id),
                                           0, MODEL_DROP_MODALITY);
    const double scale = 1.0 / (double)(1u << MODEL_DROP_BITS);
    const double u = model_drop_draw(k, 0) * scale, v = model_drop_draw(k, 1) * scale;
    if (u < modality_drop)
        *has_audio = 0;
    else if (u >= 1.0 - modality_drop)
        *has_image = 0;
    else if (v < audio_drop)
        *has_audio = 0;
}

// ---------------------------------------------------------------------------------------
// stem: the conv image stem (model.stem: conv). Two stages of 3x3 convolution (im2col3 and
// one matmul), GELU and 2x2 max pooling turn the (H, W, c) image into an (H/4, W/4, 2S) map,
// from which patchify cuts patches of patch/4: as many image tokens as the patch stem makes,
// but each one built from local features, the inductive bias a transformer lacks on a few
// thousand images (data/real/README.md has the measurements).

// The backward ops accumulate: their outputs start at zero.
static void stem_zero(const mm_backend *be, mm_real *p, size_t n) {
    model_zero_acts(be, 1, &p, &n);
}

static void stem_forward(model *m, const mm_real *image, int B) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const weights *w = &m->w;
    acts *a = &m->a;
    const int H = m->cfg.img_h, W = m->cfg.img_w, c = m->cfg.img_c, S = m->S;
    const size_t n1 = (size_t)B * H * W * S, n2 = (size_t)B * (H / 2) * (W / 2) * 2 * S;
    ops->im2col3(be, a->cols1, image, B, H, W, c);
    ops->matmul_fwd(be, a->h1, a->cols1, w->conv1_w, w->conv1_b, B * H * W, 9 * c, S);
    ops->gelu_fwd(be, a->g1, a->h1, n1);
    ops->maxpool2_fwd(be, a->p1, a->g1, B, H, W, S);
    ops->im2col3(be, a->cols2, a->p1, B, H / 2, W / 2, S);
    ops->matmul_fwd(be, a->h2, a->cols2, w->conv2_w, w->conv2_b, B * (H / 2) * (W / 2), 9 * S,
                    2 * S);
    ops->gelu_fwd(be, a->g2, a->h2, n2);
    ops->maxpool2_fwd(be, a->p2, a->g2, B, H / 2, W / 2, 2 * S);
    ops->patchify(be, a->patches, a->p2, B, H / 4, W / 4, 2 * S, m->cfg.patch / 4);
}

// From d(patches) in a->dpatches: accumulates the stem's weight gradients. Buffers the
// forward no longer needs hold the gradients (acts: g1, p1, g2, p2); no gradient goes
// into the image.
static void stem_backward(model *m, int B) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const weights *w = &m->w, *g = &m->g;
    acts *a = &m->a;
    const int H = m->cfg.img_h, W = m->cfg.img_w, c = m->cfg.img_c, S = m->S;
    const int H2 = H / 2, W2 = W / 2;
    const size_t n1 = (size_t)B * H * W * S, n2 = (size_t)B * H2 * W2 * 2 * S;
    mm_real *dp2 = a->p2, *dg2 = a->dg, *dh2 = a->g2, *dp1 = a->p1, *dg1 = a->dg, *dh1 = a->g1;
    ops->unpatchify(be, dp2, a->dpatches, B, H / 4, W / 4, 2 * S, m->cfg.patch / 4);
    stem_zero(be, dg2, n2);
    ops->maxpool2_bwd(be, dg2, dp2, a->g2, B, H2, W2, 2 * S);
    stem_zero(be, dh2, n2);
    stem_zero(be, a->dcols2, n2 / 2 * 9);
    stem_zero(be, dp1, n2 / 2);
    ops->gelu_bwd(be, dh2, a->h2, dg2, n2);
    ops->matmul_bwd(be, a->dcols2, g->conv2_w, g->conv2_b, dh2, a->cols2, w->conv2_w, B * H2 * W2,
                    9 * S, 2 * S);
    ops->col2im3(be, dp1, a->dcols2, B, H2, W2, S);
    stem_zero(be, dg1, n1);
    ops->maxpool2_bwd(be, dg1, dp1, a->g1, B, H, W, S);
    stem_zero(be, dh1, n1);
    ops->gelu_bwd(be, dh1, a->h1, dg1, n1);
    ops->matmul_bwd(be, NULL, g->conv1_w, g->conv1_b, dh1, a->cols1, w->conv1_w, B * H * W, 9 * c,
                    S);
}

// Embeddings and all blocks for B samples using the first Tu text positions of tokens
// (row stride tok_stride): the sequence is T' = P + Tu long. The final residual is left in
// the last block's res3 as (B, T', C).
static void forward_trunk(model *m, const model_input *in, const int32_t *tokens, int tok_stride,
                          int Tu, int drop) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const int B = in->B, C = m->C, P = m->P, T = P + Tu, n_img = m->n_img, n_aud = m->n_aud;
    acts *a = &m->a;
    const weights *w = &m->w;

    // the inputs as activations (a->img, a->aud_in: converted where activations are not
    // mm_real, else the inputs themselves)
    const size_t n_pix = (size_t)m->cfg.img_h * m->cfg.img_w * m->cfg.img_c;
    const size_t n_mel = (size_t)m->cfg.audio_F * m->cfg.n_mels;
    const mm_real *image = in->image, *audio = in->audio;
    if (a->img) {
        ops->act_from_real(be, a->img, in->image, (size_t)B * n_pix);
        ops->act_from_real(be, a->aud_in, in->audio, (size_t)B * n_mel);
        image = a->img;
        audio = a->aud_in;
    }
    if (m->S)
        stem_forward(m, image, B);
    else
        ops->patchify(be, a->patches, image, B, m->cfg.img_h, m->cfg.img_w, m->cfg.img_c,
                      m->cfg.patch);
    ops->matmul_fwd(be, a->emb_img, a->patches, w->img_w, w->img_b, B * n_img, m->pdim, C);

    // audio (B, F, n_mels) as (B, n_aud, adim) tokens: a reshape when audio_group divides F,
    // else without each sample's trailing F % audio_group frames (model_group_audio)
    const mm_real *aud = audio;
    if (m->cfg.audio_F != n_aud * m->cfg.audio_group) {
        ops->copy_rows(be, a->aud, (size_t)n_aud * m->adim, audio, n_mel, (size_t)n_aud * m->adim,
                       B);
        aud = a->aud;
    }
    ops->matmul_fwd(be, a->emb_aud, aud, w->aud_w, w->aud_b, B * n_aud, m->adim, C);

    // x0 rows: projected patches / audio tokens / token embeddings, plus positions
    m->lops->embed_fwd(be, a->x0, m->key_valid, a->emb_img, a->emb_aud, w->img_pos, w->aud_pos, w->wte,
                   w->tpos, tokens, tok_stride, in->has_image, in->has_audio, B, T, n_img, n_aud, C,
                   m->V);
    const model_drop de = embd_drop(m);
    if (drop && de.thr) ops->dropout(be, a->x0, a->x0, &de, B, (size_t)T * C);

    model_block_run run = block_run(m, B, T, drop);
    const mm_real *x = a->x0;
    for (int l = 0; l < m->L; l++) {
        run.layer = l;
        model_block_forward(&run, &w->layer[l], &a->layer[l], x, m->key_valid);
        x = a->layer[l].res3;
    }
}

double model_forward(model *m, const model_input *in, int *n_scored) {
    check_input(m, in);
    MM_CHECK(in->tokens && in->targets, "model_forward needs tokens and targets");
    const int B = in->B, C = m->C, T = m->T, P = m->P, Tt = m->Tt, V = m->V;
    acts *a = &m->a;
    const int drop = dropping(m, in);
    if (drop) drop_prepare(m, in);
    m->ops->params_ready(m->be, m->params, m->n_params);
    forward_trunk(m, in, in->tokens, Tt, Tt, drop);

    // ln_f and lm_head only on the text rows
    const mm_real *fin = a->layer[m->L - 1].res3;
    m->ops->copy_rows(m->be, a->txt, (size_t)Tt * C, model_act_at_c(m->be, fin, (size_t)P * C),
                      (size_t)T * C, (size_t)Tt * C, B);
    m->ops->layernorm_fwd(m->be, a->lnf, a->lnf_mean, a->lnf_rstd, a->txt, m->w.lnf_g, m->w.lnf_b,
                          B * Tt, C);
    m->ops->matmul_fwd(m->be, a->logits, a->lnf, m->w.lm_head, NULL, B * Tt, C, V);
    const mm_real eps = in->train ? (mm_real)m->cfg.label_smoothing : 0;
    if (in->loss_scale != 0) {  // the classifier's gradient now, over the logits in place
        m->lops->seq_dloss(m->be, a->dloss, in->targets, in->loss_scale, B, Tt);
        m->ops->xent_fwd_bwd(m->be, a->losses, a->logits, in->targets, a->dloss, B * Tt, V, eps);
    } else {
        m->ops->xent_fwd(m->be, a->losses, a->probs, a->logits, in->targets, B * Tt, V, eps);
    }

    m->lops->seq_loss(m->be, m->seq_out, a->losses, in->targets, B, Tt);
    m->ops->mem_download(m->be, m->seq_host, m->seq_out, (size_t)B * 2 * sizeof(double));
    double total = 0;
    int scored = 0;
    for (int b = 0; b < B; b++)
        if (m->seq_host[2 * b + 1] > 0) {
            total += m->seq_host[2 * b];
            scored++;
        }
    if (n_scored) *n_scored = scored;
    m->saved_B = B;
    m->saved_train = in->train;
    m->saved_scale = in->loss_scale;
    return total;
}

// ---------------------------------------------------------------------------------------
// backward

// in must be the batch of the preceding model_forward (its targets and tokens are read again).
void model_backward(model *m, const model_input *in, mm_real loss_scale) {
    check_input(m, in);
    MM_CHECK(in->tokens && in->targets, "model_backward needs tokens and targets");
    MM_CHECK(m->saved_B == in->B,
             "model_backward needs the activations of a model_forward on "
             "the same batch (saved %d samples, got %d; model_generate discards them)",
             m->saved_B, in->B);
    MM_CHECK(m->saved_train == in->train, "model_backward's train %d is not its forward's %d",
             in->train, m->saved_train);
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const int B = in->B, C = m->C, T = m->T, P = m->P, Tt = m->Tt, V = m->V;
    const int n_img = m->n_img, n_aud = m->n_aud;
    acts *a = &m->a;
    const weights *w = &m->w;
    const weights *g = &m->g;

    // d(loss_scale * sum_b mean_t loss) / d loss[b, t] = loss_scale / n_targets(b)
    if (m->saved_scale != 0) {  // the forward left dlogits in place of the logits
        MM_CHECK(loss_scale == m->saved_scale,
                 "model_backward's loss_scale %g is not the %g its forward computed dlogits with",
                 (double)loss_scale, (double)m->saved_scale);
    } else {
        m->lops->seq_dloss(be, a->dloss, in->targets, loss_scale, B, Tt);
        ops->xent_bwd(be, a->dlogits, a->logits, a->probs, in->targets, a->dloss, B * Tt, V,
                      in->train ? (mm_real)m->cfg.label_smoothing : 0);
    }
    mm_real *const zb[] = {a->dlnf, a->dtxt};
    const size_t zn[] = {(size_t)B * Tt * C, (size_t)B * Tt * C};
    model_zero_acts(be, 2, zb, zn);
    ops->matmul_bwd(be, a->dlnf, g->lm_head, NULL, a->dlogits, a->lnf, w->lm_head, B * Tt, C, V);
    ops->layernorm_bwd(be, a->dtxt, g->lnf_g, g->lnf_b, a->dlnf, a->txt, w->lnf_g, a->lnf_mean,
                       a->lnf_rstd, B * Tt, C);
    // the prefix gets no gradient from the head
    mm_real *const zr[] = {a->bs.dres};
    const size_t zrn[] = {(size_t)B * T * C};
    model_zero_acts(be, 1, zr, zrn);
    ops->copy_rows(be, model_act_at(be, a->bs.dres, (size_t)P * C), (size_t)T * C, a->dtxt,
                   (size_t)Tt * C, (size_t)Tt * C, B);
    model_hook_fire(&m->hook, m->head_lo);

    const int drop = dropping(m, in);  // the keys of the forward are still in drop_keys
    model_block_run run = block_run(m, B, T, drop);
    for (int l = m->L - 1; l >= 0; l--) {
        run.layer = l;
        const mm_real *x = l ? a->layer[l - 1].res3 : a->x0;
        model_block_recompute(&run, m->cfg.recompute, &w->layer[l], &a->layer[l], x, m->key_valid);
        model_block_backward(&run, &w->layer[l], &g->layer[l], &a->layer[l], x, &a->bs);
        model_hook_fire(&m->hook, m->block_lo[l]);
    }

    // d(x0) before the embeddings' dropout
    const model_drop de = embd_drop(m);
    if (drop && de.thr) ops->dropout(be, a->bs.dres, a->bs.dres, &de, B, (size_t)T * C);

    // input projections: gather their rows of d(x0); no gradient flows into the inputs
    ops->copy_rows(be, a->emb_img, (size_t)n_img * C, a->bs.dres, (size_t)T * C, (size_t)n_img * C,
                   B);
    ops->copy_rows(be, a->emb_aud, (size_t)n_aud * C,
                   model_act_at(be, a->bs.dres, (size_t)n_img * C), (size_t)T * C,
                   (size_t)n_aud * C, B);
    if (m->S) stem_zero(be, a->dpatches, (size_t)B * n_img * m->pdim);
    ops->matmul_bwd(be, m->S ? a->dpatches : NULL, g->img_w, g->img_b, a->emb_img, a->patches,
                    w->img_w, B * n_img, m->pdim, C);
    if (m->S) stem_backward(m, B);
    const mm_real *aud = m->cfg.audio_F != n_aud * m->cfg.audio_group ? a->aud
                         : a->aud_in                                   ? a->aud_in
                                                                       : in->audio;
    ops->matmul_bwd(be, NULL, g->aud_w, g->aud_b, a->emb_aud, aud, w->aud_w, B * n_aud, m->adim, C);

    // positions and token embeddings (deterministic: model.h lm_ops.embed_bwd)
    m->lops->embed_bwd(be, g->img_pos, g->aud_pos, g->wte, g->tpos, a->bs.dres, in->tokens, B, T, n_img,
                   n_aud, C, V);
    model_hook_fire(&m->hook, 0);
}

// ---------------------------------------------------------------------------------------
// generation

void model_generate(model *m, const model_input *in, char *out, int out_stride) {
    check_input(m, in);
    const int B = in->B, C = m->C, P = m->P, Tt = m->Tt, V = m->V;
    MM_CHECK(out_stride >= Tt,
             "model_generate: out_stride %d < text_T %d (room for text_T-1 "
             "bytes and the NUL)",
             out_stride, Tt);
    acts *a = &m->a;
    m->saved_B = 0;  // the activation buffers are reused below
    m->ops->params_ready(m->be, m->params, m->n_params);
    int32_t *tok = m->gen_tokens;
    int n_live = B;
    for (int b = 0; b < B; b++) {
        data_tokens_encode("", 0, Tt, tok + (size_t)b * Tt, NULL);  // BOS, then PAD
        m->gen_done[b] = 0;
        out[(size_t)b * out_stride] = '\0';
    }
    // Position s predicts token s+1. Causality makes later positions irrelevant, so each step
    // runs the trunk on T' = P + s + 1 positions and the head on one row per sample.
    for (int s = 0; s < Tt - 1 && n_live > 0; s++) {
        m->ops->mem_upload(m->be, m->gen_dtokens, tok, (size_t)B * Tt * sizeof(int32_t));
        forward_trunk(m, in, m->gen_dtokens, Tt, s + 1, 0);
        const int Ts = P + s + 1;
        const mm_real *fin = a->layer[m->L - 1].res3;
        m->ops->copy_rows(m->be, a->txt, (size_t)C, model_act_at_c(m->be, fin, (size_t)(P + s) * C),
                          (size_t)Ts * C, (size_t)C, B);
        m->ops->layernorm_fwd(m->be, a->lnf, a->lnf_mean, a->lnf_rstd, a->txt, m->w.lnf_g,
                              m->w.lnf_b, B, C);
        m->ops->matmul_fwd(m->be, a->logits, a->lnf, m->w.lm_head, NULL, B, C, V);
        const mm_real *logits = a->logits;
        if (a->gen_logits) {  // activations that are not mm_real: converted first
            m->ops->act_to_real(m->be, a->gen_logits, a->logits, (size_t)B * V);
            logits = a->gen_logits;
        }
        m->ops->mem_download(m->be, m->gen_logits, logits, (size_t)B * V * sizeof(mm_real));
        for (int b = 0; b < B; b++) {
            if (m->gen_done[b]) continue;
            const mm_real *lg = m->gen_logits + (size_t)b * V;
            int best = 0;  // first maximum: ties resolve to the lowest id
            for (int v = 1; v < V; v++)
                if (lg[v] > lg[best]) best = v;
            // EOS ends the text; any other special token has no byte form and ends it too
            if (data_tok_is_special(best)) {
                m->gen_done[b] = 1;
                n_live--;
                continue;
            }
            tok[(size_t)b * Tt + s + 1] = best;
            out[(size_t)b * out_stride + s] = (char)best;
            out[(size_t)b * out_stride + s + 1] = '\0';
        }
    }
}

// ---------------------------------------------------------------------------------------
// FLOPs per sample of one forward + backward (llm.c / PaLM convention):
//   matmuls: 6 * MACs per token for every weight applied (2 forward, 2 for dinp, 2 for dw),
//            over the T positions for the blocks, the text positions for lm_head, and
//            4 * MACs for img.proj / audio.proj (no input gradient is computed) and the
//            conv stem's first convolution, 6 * MACs for img.proj and the second convolution
//            under the conv stem (their inputs get gradients);
//   attention: per block 4 * T^2 * d forward (QK^T and PV over the full T x T, as the
//            masked gemms are counted whole), twice that backward: 12 * T^2 * d.
// Elementwise ops are not counted.
double model_flops_per_sample(const model *m) {
    double C = m->C, F = m->F, T = m->T, L = m->L;
    double block = 3 * C * C + C * C + 2 * C * F;  // MACs per token per block
    double f = 6.0 * T * L * block;
    f += 6.0 * m->Tt * (double)m->V * C;
    f += (m->S ? 6.0 : 4.0) * (double)m->n_img * m->pdim * C;
    f += 4.0 * (double)m->n_aud * m->adim * C;
    if (m->S) {
        const double HW = (double)m->cfg.img_h * m->cfg.img_w, S = m->S;
        f += 4.0 * HW * 9 * m->cfg.img_c * S + 6.0 * (HW / 4) * 9 * S * 2 * S;
    }
    f += 12.0 * L * T * T * C;
    return f;
}
