// transformer.c: the multimodal prefix-LM transformer of model.h: parameter table and
// initialization, forward with loss, backward, greedy generation and the FLOP count. It
// exists to keep the model's structure in one place, above the backend ops table, so the
// CPU and (later) CUDA backends share it.
//
// Sequence per sample: [image patches (n_img) | audio tokens (n_aud) | text (text_T)].
//   image  (H, W, C) -> patches (n_img, patch*patch*C), inner order (dy, dx, c), patches in
//          row-major (py, px) order -> img.proj (linear) + img.pos
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
//   - init (GPT-2): matrices and embeddings N(0, 0.02); attn.proj.w and mlp.proj.w
//     N(0, 0.02/sqrt(2*n_layers)); biases 0; LN gains 1. Tensor k draws from mm_rng(seed, k)
//     over its full global shape in row-major order; a rank keeps its slice, so initial
//     values do not depend on tp.
//
// Host glue: patchify, the embedding gather/scatter and the per-sample loss reduction are
// plain OpenMP loops here (CPU memory). A CUDA backend will need those as ops.
//
// Tensor parallelism (Megatron, DESIGN.md "Parallel layout"). With NH/tp heads and d_ff/tp
// MLP columns per rank (Cl = C/tp, Fl = F/tp), a block is
//   ln1 -> qkv (column-parallel, local heads) -> attention (local heads) -> attn.proj (row-
//   parallel: partial sums over the local heads) -> ALLREDUCE -> + residual
//   ln2 -> fc (column-parallel) -> GELU -> mlp.proj (row-parallel) -> ALLREDUCE -> + residual
// so there are exactly four collectives per block and pass, all comm_allreduce_sum over
// cfg.tp_group on (B, T, C):
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
// bitwise identical on every tp rank. It holds because comm_allreduce_sum returns the same
// bits on every rank (ring and reduce+broadcast sum each element once and distribute it;
// recursive doubling adds the same two operands on both partners, and fp addition commutes)
// and the replicated ops are deterministic (ops_cpu.c); tests/test_tp.c checks it. A tp > 1
// result equals tp = 1 up to the fp32 summation order of those four contractions; tp = 1
// makes no comm call at all.
//
// Gradient-ready hook (model_set_grad_hook): backward finishes the head, then blocks L-1 .. 0,
// then the embeddings; the table is laid out in the reverse order, so after each of those
// stages every gradient from some offset lo to the end is final, and the data-parallel
// buckets above lo can start their allreduce while the earlier layers still run.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "model.h"

// Views into params or grads (same offsets in both).
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
} layer_w;

typedef struct {
    mm_real *img_w;          // (C, pdim)
    mm_real *img_b;          // (C)
    mm_real *img_pos;        // (n_img, C)
    mm_real *aud_w;          // (C, adim)
    mm_real *aud_b;          // (C)
    mm_real *aud_pos;        // (n_aud, C)
    mm_real *wte;            // (V, C)
    mm_real *tpos;           // (Tt, C)
    layer_w *layer;          // (L) owned
    mm_real *lnf_g, *lnf_b;  // (C)
    mm_real *lm_head;        // (V, C)
} weights;

// Saved activations of one block. Buffers are sized for (max_B, T); a call with B samples
// and T' <= T positions uses them as (B, T', ...). Cl = C/tp, Fl = F/tp, NHl = NH/tp.
typedef struct {
    mm_real *ln1;                  // (B, T, C)
    mm_real *ln1_mean, *ln1_rstd;  // (B, T)
    mm_real *qkv;                  // (B, T, 3, NHl, HD)
    mm_real *att;                  // (B, NHl, T, T) softmax probabilities
    mm_real *atty;                 // (B, T, NHl, HD) attention output before attn.proj
    mm_real *res2;                 // (B, T, C) residual after attention
    mm_real *ln2;                  // (B, T, C)
    mm_real *ln2_mean, *ln2_rstd;  // (B, T)
    mm_real *fch;                  // (B, T, Fl) mlp.fc output (pre-GELU)
    mm_real *fcg;                  // (B, T, Fl) after GELU
    mm_real *res3;                 // (B, T, C) residual after the MLP = next block's input
} layer_acts;

typedef struct {
    mm_real *patches;   // (B, n_img, pdim)
    mm_real *aud;       // (B, n_aud, adim) grouped frames (used when audio_F % group != 0)
    mm_real *emb_img;   // (B, n_img, C) img.proj output; reused for its gradient
    mm_real *emb_aud;   // (B, n_aud, C) audio.proj output; reused for its gradient
    mm_real *x0;        // (B, T, C) embeddings = block 0 input
    layer_acts *layer;  // (L) owned
    mm_real *txt;       // (B, Tt, C) final residual at the text positions
    mm_real *lnf;       // (B, Tt, C)
    mm_real *lnf_mean, *lnf_rstd;  // (B, Tt)
    mm_real *logits;               // (B, Tt, V)
    mm_real *probs;                // (B, Tt, V)
    mm_real *losses;               // (B, Tt)
    // backward scratch (not kept between calls)
    mm_real *dres;     // (B, T, C) gradient of the residual stream
    mm_real *dln1;     // (B, T, C) gradient of ln1's output (allreduced under tp)
    mm_real *dln2;     // (B, T, C) gradient of ln2's output (allreduced under tp)
    mm_real *datty;    // (B, T, Cl)
    mm_real *dqkv;     // (B, T, 3, NHl, HD)
    mm_real *dfch;     // (B, T, Fl)
    mm_real *dfcg;     // (B, T, Fl)
    mm_real *dlogits;  // (B, Tt, V)
    mm_real *dlnf;     // (B, Tt, C)
    mm_real *dtxt;     // (B, Tt, C)
    mm_real *dloss;    // (B, Tt)
} acts;

struct model {
    model_config cfg;
    const model_ops *ops;
    int max_B;
    int C, L, NH, HD, F, V, Tt;  // d_model, layers, heads, head dim, d_ff, vocab, text_T
    int NHl, Cl, Fl;             // this tp rank's heads, attention width (NHl*HD), MLP width
    int n_img, n_aud, P, T;      // image/audio tokens, prefix, full sequence length
    int pdim, adim;              // patch and audio-token input widths
    int n_tensors;
    model_tensor *tensors;  // (n_tensors) owned
    size_t n_params;
    mm_real *params, *grads;  // (n_params) each, owned
    size_t head_lo;           // first offset of ln_f / lm_head
    size_t *block_lo;         // (L) first offset of each block's tensors, owned
    model_grad_hook hook;     // NULL when none
    void *hook_ctx;           // not owned
    weights w, g;             // views into params / grads
    mm_real *act_mem;         // the one activation buffer, owned
    acts a;                   // views into act_mem
    uint8_t *key_valid;       // (max_B, T)
    int32_t *gen_tokens;      // (max_B, Tt) generation's token buffer
    uint8_t *gen_done;        // (max_B)
    int saved_B;              // samples whose activations model_backward may use; 0 after generate
};

// ---------------------------------------------------------------------------------------
// parameter table

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

typedef struct {
    model_tensor *t;
    int n, cap;
    size_t off;
    int tp, rank;
} table_builder;

static void add_tensor(table_builder *tb, const char *name, int ndim, const int64_t *shape,
                       int split_dim, int group) {
    MM_CHECK(tb->n < tb->cap, "tensor table overflow at %s (count tensors in model_create)", name);
    model_tensor *t = &tb->t[tb->n++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ndim = ndim;
    t->split_dim = split_dim;
    t->size = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->local[i] = shape[i];
        if (i == split_dim) {
            MM_CHECK(shape[i] % tb->tp == 0, "%s: dim %d (%lld) not divisible by tp %d", name, i,
                     (long long)shape[i], tb->tp);
            t->local[i] = shape[i] / tb->tp;
            t->start = t->local[i] * tb->rank;
        }
        t->size *= (size_t)t->local[i];
    }
    t->offset = tb->off;
    tb->off += t->size;
    t->decay = ndim >= 2 && !ends_with(name, ".b");  // qkv.b is 2-D (3, d) but a bias
    t->group = group;
}

#define SHAPE(...) ((const int64_t[]){__VA_ARGS__})

static void build_table(model *m) {
    const model_config *c = &m->cfg;
    int64_t C = m->C, F = m->F, V = m->V;
    int cap = 8 + 12 * m->L + 3;
    table_builder tb = {mm_calloc((size_t)cap, sizeof(model_tensor)), 0, cap, 0, c->tp, c->tp_rank};
    add_tensor(&tb, "img.proj.w", 2, SHAPE(C, m->pdim), -1, MODEL_GROUP_IMAGE);
    add_tensor(&tb, "img.proj.b", 1, SHAPE(C), -1, MODEL_GROUP_IMAGE);
    add_tensor(&tb, "img.pos", 2, SHAPE(m->n_img, C), -1, MODEL_GROUP_IMAGE);
    add_tensor(&tb, "audio.proj.w", 2, SHAPE(C, m->adim), -1, MODEL_GROUP_AUDIO);
    add_tensor(&tb, "audio.proj.b", 1, SHAPE(C), -1, MODEL_GROUP_AUDIO);
    add_tensor(&tb, "audio.pos", 2, SHAPE(m->n_aud, C), -1, MODEL_GROUP_AUDIO);
    add_tensor(&tb, "text.wte", 2, SHAPE(V, C), -1, MODEL_GROUP_TEXT);
    add_tensor(&tb, "text.pos", 2, SHAPE(m->Tt, C), -1, MODEL_GROUP_TEXT);
    char nm[64];
#define BLK(suffix, ...)                                  \
    (snprintf(nm, sizeof(nm), "blocks.%d.%s", l, suffix), \
     add_tensor(&tb, nm, __VA_ARGS__, MODEL_GROUP_TRUNK))
    // backward completes these stages from the last to the first (see model_set_grad_hook)
    m->block_lo = mm_calloc((size_t)m->L, sizeof(size_t));
    for (int l = 0; l < m->L; l++) {
        m->block_lo[l] = tb.off;
        BLK("ln1.g", 1, SHAPE(C), -1);
        BLK("ln1.b", 1, SHAPE(C), -1);
        BLK("attn.qkv.w", 3, SHAPE(3, C, C), 1);
        BLK("attn.qkv.b", 2, SHAPE(3, C), 1);
        BLK("attn.proj.w", 2, SHAPE(C, C), 1);
        BLK("attn.proj.b", 1, SHAPE(C), -1);
        BLK("ln2.g", 1, SHAPE(C), -1);
        BLK("ln2.b", 1, SHAPE(C), -1);
        BLK("mlp.fc.w", 2, SHAPE(F, C), 0);
        BLK("mlp.fc.b", 1, SHAPE(F), 0);
        BLK("mlp.proj.w", 2, SHAPE(C, F), 1);
        BLK("mlp.proj.b", 1, SHAPE(C), -1);
    }
#undef BLK
    m->head_lo = tb.off;
    add_tensor(&tb, "ln_f.g", 1, SHAPE(C), -1, MODEL_GROUP_TRUNK);
    add_tensor(&tb, "ln_f.b", 1, SHAPE(C), -1, MODEL_GROUP_TRUNK);
    add_tensor(&tb, "lm_head.w", 2, SHAPE(V, C), -1, MODEL_GROUP_TEXT);
    MM_CHECK(tb.n == cap, "tensor count %d != %d (update build_table)", tb.n, cap);
    m->tensors = tb.t;
    m->n_tensors = tb.n;
    m->n_params = tb.off;
}

// Points the views of wt at buf, in build_table's order.
static void bind_weights(const model *m, weights *wt, mm_real *buf) {
    const model_tensor *t = m->tensors;
    int k = 0;
#define NEXT() (buf + t[k++].offset)
    wt->img_w = NEXT();
    wt->img_b = NEXT();
    wt->img_pos = NEXT();
    wt->aud_w = NEXT();
    wt->aud_b = NEXT();
    wt->aud_pos = NEXT();
    wt->wte = NEXT();
    wt->tpos = NEXT();
    wt->layer = mm_calloc((size_t)m->L, sizeof(layer_w));
    for (int l = 0; l < m->L; l++) {
        layer_w *lw = &wt->layer[l];
        lw->ln1_g = NEXT();
        lw->ln1_b = NEXT();
        lw->qkv_w = NEXT();
        lw->qkv_b = NEXT();
        lw->attproj_w = NEXT();
        lw->attproj_b = NEXT();
        lw->ln2_g = NEXT();
        lw->ln2_b = NEXT();
        lw->fc_w = NEXT();
        lw->fc_b = NEXT();
        lw->mlpproj_w = NEXT();
        lw->mlpproj_b = NEXT();
    }
    wt->lnf_g = NEXT();
    wt->lnf_b = NEXT();
    wt->lm_head = NEXT();
#undef NEXT
    MM_CHECK(k == m->n_tensors, "bind_weights out of step with build_table");
}

// Draws tensor k over its global shape from mm_rng(seed, k) and keeps this rank's slice.
static void init_tensor(model *m, int k, uint64_t seed) {
    const model_tensor *t = &m->tensors[k];
    mm_real *p = m->params + t->offset;
    const char *n = t->name;
    if (ends_with(n, ".g")) {  // layernorm gains
        for (size_t i = 0; i < t->size; i++) p[i] = 1;
        return;
    }
    if (t->ndim == 1 || ends_with(n, ".b")) return;  // biases: 0 (buffer is zeroed)
    double std = 0.02;
    if (ends_with(n, "attn.proj.w") || ends_with(n, "mlp.proj.w")) std = 0.02 / sqrt(2.0 * m->L);
    mm_rng r;
    mm_rng_init(&r, seed, (uint64_t)k);
    size_t total = 1, inner = 1;
    for (int i = 0; i < t->ndim; i++) total *= (size_t)t->shape[i];
    int sd = t->split_dim;
    if (sd >= 0)
        for (int i = sd + 1; i < t->ndim; i++) inner *= (size_t)t->shape[i];
    for (size_t gi = 0; gi < total; gi++) {
        mm_real v = (mm_real)(std * mm_rng_normal(&r));
        if (sd < 0) {
            p[gi] = v;
            continue;
        }
        size_t coord = (gi / inner) % (size_t)t->shape[sd];
        size_t outer = gi / (inner * (size_t)t->shape[sd]);
        if (coord < (size_t)t->start || coord >= (size_t)(t->start + t->local[sd])) continue;
        p[outer * (size_t)t->local[sd] * inner + (coord - (size_t)t->start) * inner + gi % inner] =
            v;
    }
}

// ---------------------------------------------------------------------------------------
// activations: one buffer, carved in a fixed order

static mm_real *carve(mm_real **cur, size_t n) {
    mm_real *p = *cur;
    *cur += (n + 15) / 16 * 16;  // 64-byte aligned slices for the vector loops
    return p;
}

static size_t plan_acts(model *m, mm_real *base) {
    size_t B = (size_t)m->max_B, T = (size_t)m->T, C = (size_t)m->C;
    size_t Cl = (size_t)m->Cl, Fl = (size_t)m->Fl;
    size_t Tt = (size_t)m->Tt, V = (size_t)m->V, BT = B * T, BTt = B * Tt;
    mm_real *cur = base;
    acts *a = &m->a;
    a->patches = carve(&cur, B * m->n_img * m->pdim);
    a->aud = carve(&cur, B * m->n_aud * m->adim);
    a->emb_img = carve(&cur, B * m->n_img * C);
    a->emb_aud = carve(&cur, B * m->n_aud * C);
    a->x0 = carve(&cur, BT * C);
    for (int l = 0; l < m->L; l++) {
        layer_acts *la = &a->layer[l];
        la->ln1 = carve(&cur, BT * C);
        la->ln1_mean = carve(&cur, BT);
        la->ln1_rstd = carve(&cur, BT);
        la->qkv = carve(&cur, BT * 3 * Cl);
        la->att = carve(&cur, B * m->NHl * T * T);
        la->atty = carve(&cur, BT * Cl);
        la->res2 = carve(&cur, BT * C);
        la->ln2 = carve(&cur, BT * C);
        la->ln2_mean = carve(&cur, BT);
        la->ln2_rstd = carve(&cur, BT);
        la->fch = carve(&cur, BT * Fl);
        la->fcg = carve(&cur, BT * Fl);
        la->res3 = carve(&cur, BT * C);
    }
    a->txt = carve(&cur, BTt * C);
    a->lnf = carve(&cur, BTt * C);
    a->lnf_mean = carve(&cur, BTt);
    a->lnf_rstd = carve(&cur, BTt);
    a->logits = carve(&cur, BTt * V);
    a->probs = carve(&cur, BTt * V);
    a->losses = carve(&cur, BTt);
    a->dres = carve(&cur, BT * C);
    a->dln1 = carve(&cur, BT * C);
    a->dln2 = carve(&cur, BT * C);
    a->datty = carve(&cur, BT * Cl);
    a->dqkv = carve(&cur, BT * 3 * Cl);
    a->dfch = carve(&cur, BT * Fl);
    a->dfcg = carve(&cur, BT * Fl);
    a->dlogits = carve(&cur, BTt * V);
    a->dlnf = carve(&cur, BTt * C);
    a->dtxt = carve(&cur, BTt * C);
    a->dloss = carve(&cur, BTt);
    return (size_t)(cur - base);
}

// ---------------------------------------------------------------------------------------
// create / free / accessors

static int check_config(const model_config *c, int max_B, mm_err *err) {
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
    if (c->audio_F < c->audio_group)
        return mm_fail(err,
                       "model: audio_F %d frames is fewer than audio_group %d (no audio "
                       "token)",
                       c->audio_F, c->audio_group);
    if (c->vocab <= DATA_TOK_EOS)
        return mm_fail(err, "model: vocab %d must include the BOS/EOS tokens (%d, %d)", c->vocab,
                       DATA_TOK_BOS, DATA_TOK_EOS);
    if (c->tp_rank < 0 || c->tp_rank >= c->tp)
        return mm_fail(err, "model: tp_rank %d outside [0, tp=%d)", c->tp_rank, c->tp);
    if (c->n_heads % c->tp || c->d_ff % c->tp)
        return mm_fail(err, "model: tp %d must divide n_heads %d and d_ff %d", c->tp, c->n_heads,
                       c->d_ff);
    if (c->tp_group && (comm_size(c->tp_group) != c->tp || comm_rank(c->tp_group) != c->tp_rank))
        return mm_fail(err,
                       "model: tp_group is rank %d of %d but the config says tp_rank %d of tp %d",
                       comm_rank(c->tp_group), comm_size(c->tp_group), c->tp_rank, c->tp);
    return 0;
}

int model_create(model **out, const model_config *cfg, const model_ops *ops, int max_B,
                 uint64_t seed, mm_err *err) {
    *out = NULL;
    if (check_config(cfg, max_B, err)) return -1;
    model *m = mm_calloc(1, sizeof(model));
    m->cfg = *cfg;
    m->ops = ops;
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
    m->adim = cfg->audio_group * cfg->n_mels;

    build_table(m);
    m->params = mm_alloc_aligned(m->n_params * sizeof(mm_real));
    m->grads = mm_alloc_aligned(m->n_params * sizeof(mm_real));
    bind_weights(m, &m->w, m->params);
    bind_weights(m, &m->g, m->grads);
    // each tensor has its own stream, so the split across threads cannot change values
#pragma omp parallel for schedule(dynamic)
    for (int k = 0; k < m->n_tensors; k++) init_tensor(m, k, seed);

    m->a.layer = mm_calloc((size_t)m->L, sizeof(layer_acts));
    size_t n_acts = plan_acts(m, NULL);
    m->act_mem = mm_alloc_aligned(n_acts * sizeof(mm_real));
    plan_acts(m, m->act_mem);
    m->key_valid = mm_calloc((size_t)max_B * m->T, 1);
    m->gen_tokens = mm_calloc((size_t)max_B * m->Tt, sizeof(int32_t));
    m->gen_done = mm_calloc((size_t)max_B, 1);
    *out = m;
    return 0;
}

void model_free(model *m) {
    if (!m) return;
    free(m->tensors);
    free(m->block_lo);
    free(m->params);
    free(m->grads);
    free(m->w.layer);
    free(m->g.layer);
    free(m->act_mem);
    free(m->a.layer);
    free(m->key_valid);
    free(m->gen_tokens);
    free(m->gen_done);
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
    m->hook = fn;
    m->hook_ctx = ctx;
}

#ifdef MM_F64
#define MM_REAL_COMM COMM_F64
#else
#define MM_REAL_COMM COMM_F32
#endif

// In-place sum of a (n) over the tp ranks; nothing at tp = 1 (no group needed).
static void tp_allreduce(const model *m, mm_real *x, size_t n) {
    if (m->cfg.tp > 1) comm_allreduce_sum(m->cfg.tp_group, x, n, MM_REAL_COMM);
}

static void grad_ready(const model *m, size_t lo) {
    if (m->hook) m->hook(m->hook_ctx, lo);
}

// Zeroes n buffers in one parallel region, each thread a contiguous share of each: a
// single-threaded memset runs at a fraction of the machine's store bandwidth, and the
// backward pass zeroes several activation gradients per block.
static void zero_bufs(int n, mm_real *const *p, const size_t *len) {
#pragma omp parallel
    {
        size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
        for (int k = 0; k < n; k++) {
            size_t chunk = (len[k] + nt - 1) / nt, s = id * chunk;
            if (s < len[k])
                memset(p[k] + s, 0, (len[k] - s < chunk ? len[k] - s : chunk) * sizeof(mm_real));
        }
    }
}

void model_zero_grad(model *m) {
    zero_bufs(1, &m->grads, &m->n_params);
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

// Embeddings and all blocks for B samples using the first Tu text positions of tokens
// (row stride tok_stride): the sequence is T' = P + Tu long. The final residual is left in
// the last block's res3 as (B, T', C).
static void forward_trunk(model *m, const model_input *in, const int32_t *tokens, int tok_stride,
                          int Tu) {
    const model_ops *ops = m->ops;
    const int B = in->B, C = m->C, Cl = m->Cl, Fl = m->Fl, P = m->P, T = P + Tu, n_img = m->n_img,
              n_aud = m->n_aud;
    const int BT = B * T;
    const int bias_rank = m->cfg.tp_rank == 0;  // adds the row-parallel biases (file top)
    acts *a = &m->a;
    const weights *w = &m->w;

    // patchify (B, H, W, c) -> (B, n_img, pdim), one memcpy per patch row
    const int p = m->cfg.patch, ic = m->cfg.img_c, gw = m->cfg.img_w / p, W = m->cfg.img_w;
    const int H = m->cfg.img_h;
#pragma omp parallel for schedule(static)
    for (int bp = 0; bp < B * n_img; bp++) {
        int b = bp / n_img, py = (bp % n_img) / gw, px = bp % gw;
        const mm_real *src = in->image + (size_t)b * H * W * ic;
        for (int dy = 0; dy < p; dy++)
            memcpy(a->patches + (size_t)bp * m->pdim + (size_t)dy * p * ic,
                   src + ((size_t)(py * p + dy) * W + (size_t)px * p) * ic,
                   (size_t)p * ic * sizeof(mm_real));
    }
    ops->matmul_fwd(a->emb_img, a->patches, w->img_w, w->img_b, B * n_img, m->pdim, C);

    // grouping frames is a reshape when audio_F divides evenly; otherwise drop the tail
    const mm_real *aud = in->audio;
    const int AF = m->cfg.audio_F, nm = m->cfg.n_mels;
    if (AF != n_aud * m->cfg.audio_group) {
        for (int b = 0; b < B; b++)
            memcpy(a->aud + (size_t)b * n_aud * m->adim, in->audio + (size_t)b * AF * nm,
                   (size_t)n_aud * m->adim * sizeof(mm_real));
        aud = a->aud;
    }
    ops->matmul_fwd(a->emb_aud, aud, w->aud_w, w->aud_b, B * n_aud, m->adim, C);

    // x0 rows: projected patches / audio tokens / token embeddings, plus positions
#pragma omp parallel for schedule(static)
    for (int r = 0; r < BT; r++) {
        int b = r / T, t = r % T;
        const mm_real *e, *pe;
        if (t < n_img) {
            e = a->emb_img + ((size_t)b * n_img + t) * C;
            pe = w->img_pos + (size_t)t * C;
            m->key_valid[r] = in->has_image[b] != 0;
        } else if (t < P) {
            e = a->emb_aud + ((size_t)b * n_aud + (t - n_img)) * C;
            pe = w->aud_pos + (size_t)(t - n_img) * C;
            m->key_valid[r] = in->has_audio[b] != 0;
        } else {
            int tok = tokens[(size_t)b * tok_stride + (t - P)];
            MM_CHECK(tok >= 0 && tok < m->V, "token %d of sample %d outside [0, %d)", tok, b, m->V);
            e = w->wte + (size_t)tok * C;
            pe = w->tpos + (size_t)(t - P) * C;
            m->key_valid[r] = 1;
        }
        mm_real *o = a->x0 + (size_t)r * C;
#pragma omp simd
        for (int c = 0; c < C; c++) o[c] = e[c] + pe[c];
    }

    const mm_real *x = a->x0;
    for (int l = 0; l < m->L; l++) {
        const layer_w *lw = &w->layer[l];
        layer_acts *la = &a->layer[l];
        ops->layernorm_fwd(la->ln1, la->ln1_mean, la->ln1_rstd, x, lw->ln1_g, lw->ln1_b, BT, C);
        ops->matmul_fwd(la->qkv, la->ln1, lw->qkv_w, lw->qkv_b, BT, C, 3 * Cl);
        ops->attention_fwd(la->atty, la->att, la->qkv, m->key_valid, B, T, P, m->NHl, m->HD);
        // row-parallel: this rank's heads' share of attn.proj, summed over tp
        ops->matmul_fwd(la->res2, la->atty, lw->attproj_w, bias_rank ? lw->attproj_b : NULL, BT, Cl,
                        C);
        tp_allreduce(m, la->res2, (size_t)BT * C);
        ops->add(la->res2, la->res2, x, (size_t)BT * C);
        ops->layernorm_fwd(la->ln2, la->ln2_mean, la->ln2_rstd, la->res2, lw->ln2_g, lw->ln2_b, BT,
                           C);
        ops->matmul_fwd(la->fch, la->ln2, lw->fc_w, lw->fc_b, BT, C, Fl);
        ops->gelu_fwd(la->fcg, la->fch, (size_t)BT * Fl);
        ops->matmul_fwd(la->res3, la->fcg, lw->mlpproj_w, bias_rank ? lw->mlpproj_b : NULL, BT, Fl,
                        C);
        tp_allreduce(m, la->res3, (size_t)BT * C);
        ops->add(la->res3, la->res3, la->res2, (size_t)BT * C);
        x = la->res3;
    }
}

double model_forward(model *m, const model_input *in, int *n_scored) {
    check_input(m, in);
    MM_CHECK(in->tokens && in->targets, "model_forward needs tokens and targets");
    const int B = in->B, C = m->C, T = m->T, P = m->P, Tt = m->Tt, V = m->V;
    acts *a = &m->a;
    forward_trunk(m, in, in->tokens, Tt, Tt);

    // ln_f and lm_head only on the text rows
    const mm_real *fin = a->layer[m->L - 1].res3;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++)
        memcpy(a->txt + (size_t)b * Tt * C, fin + ((size_t)b * T + P) * C,
               (size_t)Tt * C * sizeof(mm_real));
    m->ops->layernorm_fwd(a->lnf, a->lnf_mean, a->lnf_rstd, a->txt, m->w.lnf_g, m->w.lnf_b, B * Tt,
                          C);
    m->ops->matmul_fwd(a->logits, a->lnf, m->w.lm_head, NULL, B * Tt, C, V);
    m->ops->xent_fwd(a->losses, a->probs, a->logits, in->targets, B * Tt, V);

    double total = 0;
    int scored = 0;
    for (int b = 0; b < B; b++) {
        double s = 0;
        int n = 0;
        for (int t = 0; t < Tt; t++)
            if (in->targets[(size_t)b * Tt + t] >= 0) {
                s += a->losses[(size_t)b * Tt + t];
                n++;
            }
        if (n) {
            total += s / n;
            scored++;
        }
    }
    if (n_scored) *n_scored = scored;
    m->saved_B = B;
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
    const model_ops *ops = m->ops;
    const int B = in->B, C = m->C, Cl = m->Cl, Fl = m->Fl, T = m->T, P = m->P, Tt = m->Tt, V = m->V;
    const int BT = B * T, n_img = m->n_img, n_aud = m->n_aud;
    acts *a = &m->a;
    const weights *w = &m->w;
    const weights *g = &m->g;

    // d(loss_scale * sum_b mean_t loss) / d loss[b, t] = loss_scale / n_targets(b)
    for (int b = 0; b < B; b++) {
        int n = 0;
        for (int t = 0; t < Tt; t++) n += in->targets[(size_t)b * Tt + t] >= 0;
        for (int t = 0; t < Tt; t++) a->dloss[(size_t)b * Tt + t] = n ? loss_scale / n : 0;
    }
    ops->xent_bwd(a->dlogits, a->probs, in->targets, a->dloss, B * Tt, V);
    mm_real *const zb[] = {a->dlnf, a->dtxt};
    const size_t zn[] = {(size_t)B * Tt * C, (size_t)B * Tt * C};
    zero_bufs(2, zb, zn);
    ops->matmul_bwd(a->dlnf, g->lm_head, NULL, a->dlogits, a->lnf, w->lm_head, B * Tt, C, V);
    ops->layernorm_bwd(a->dtxt, g->lnf_g, g->lnf_b, a->dlnf, a->txt, w->lnf_g, a->lnf_mean,
                       a->lnf_rstd, B * Tt, C);
    // the prefix gets no gradient from the head
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        memset(a->dres + (size_t)b * T * C, 0, (size_t)P * C * sizeof(mm_real));
        memcpy(a->dres + ((size_t)b * T + P) * C, a->dtxt + (size_t)b * Tt * C,
               (size_t)Tt * C * sizeof(mm_real));
    }
    grad_ready(m, m->head_lo);

    for (int l = m->L - 1; l >= 0; l--) {
        const layer_w *lw = &w->layer[l];
        const layer_w *lg = &g->layer[l];
        layer_acts *la = &a->layer[l];
        const mm_real *x = l ? a->layer[l - 1].res3 : a->x0;
        // every activation gradient below is accumulated into: zero them all at once
        mm_real *const zb[] = {a->dfcg, a->dfch, a->dln2, a->datty, a->dqkv, a->dln1};
        const size_t zn[] = {(size_t)BT * Fl, (size_t)BT * Fl,     (size_t)BT * C,
                             (size_t)BT * Cl, (size_t)BT * 3 * Cl, (size_t)BT * C};
        zero_bufs(6, zb, zn);
        // dres holds d(res3) (replicated); the residual passes it to res2 unchanged. Every
        // rank computes the replicated mlp.proj.b / attn.proj.b gradients from it in full.
        ops->matmul_bwd(a->dfcg, lg->mlpproj_w, lg->mlpproj_b, a->dres, la->fcg, lw->mlpproj_w, BT,
                        Fl, C);
        ops->gelu_bwd(a->dfch, la->fch, a->dfcg, (size_t)BT * Fl);
        ops->matmul_bwd(a->dln2, lg->fc_w, lg->fc_b, a->dfch, la->ln2, lw->fc_w, BT, C, Fl);
        tp_allreduce(m, a->dln2, (size_t)BT * C);  // fc saw ln2 whole: sum its column shares
        ops->layernorm_bwd(a->dres, lg->ln2_g, lg->ln2_b, a->dln2, la->res2, lw->ln2_g,
                           la->ln2_mean, la->ln2_rstd, BT, C);
        // dres now holds d(res2)
        ops->matmul_bwd(a->datty, lg->attproj_w, lg->attproj_b, a->dres, la->atty, lw->attproj_w,
                        BT, Cl, C);
        ops->attention_bwd(a->dqkv, a->datty, la->qkv, la->att, B, T, P, m->NHl, m->HD);
        ops->matmul_bwd(a->dln1, lg->qkv_w, lg->qkv_b, a->dqkv, la->ln1, lw->qkv_w, BT, C, 3 * Cl);
        tp_allreduce(m, a->dln1, (size_t)BT * C);  // the same for the heads' shares of qkv
        ops->layernorm_bwd(a->dres, lg->ln1_g, lg->ln1_b, a->dln1, x, lw->ln1_g, la->ln1_mean,
                           la->ln1_rstd, BT, C);
        // dres now holds d(block input)
        grad_ready(m, m->block_lo[l]);
    }

    // input projections: gather their rows of d(x0); no gradient flows into the inputs
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        memcpy(a->emb_img + (size_t)b * n_img * C, a->dres + (size_t)b * T * C,
               (size_t)n_img * C * sizeof(mm_real));
        memcpy(a->emb_aud + (size_t)b * n_aud * C, a->dres + ((size_t)b * T + n_img) * C,
               (size_t)n_aud * C * sizeof(mm_real));
    }
    ops->matmul_bwd(NULL, g->img_w, g->img_b, a->emb_img, a->patches, w->img_w, B * n_img, m->pdim,
                    C);
    const mm_real *aud = m->cfg.audio_F != n_aud * m->cfg.audio_group ? a->aud : in->audio;
    ops->matmul_bwd(NULL, g->aud_w, g->aud_b, a->emb_aud, aud, w->aud_w, B * n_aud, m->adim, C);

    // positions and token embeddings: each thread owns a block of columns and adds the rows
    // in (sample, position) order, so repeated tokens sum deterministically without atomics
    enum { CB = 32 };
    const int ncb = (C + CB - 1) / CB;
#pragma omp parallel for schedule(static)
    for (int cb = 0; cb < ncb; cb++) {
        int c0 = cb * CB, n = C - c0 < CB ? C - c0 : CB;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) {
                const mm_real *d = a->dres + ((size_t)b * T + t) * C + c0;
                mm_real *gp, *ge = NULL;
                if (t < n_img) {
                    gp = g->img_pos + (size_t)t * C + c0;
                } else if (t < P) {
                    gp = g->aud_pos + (size_t)(t - n_img) * C + c0;
                } else {
                    gp = g->tpos + (size_t)(t - P) * C + c0;
                    ge = g->wte + (size_t)in->tokens[(size_t)b * Tt + (t - P)] * C + c0;
                }
#pragma omp simd
                for (int c = 0; c < n; c++) gp[c] += d[c];
                if (ge) {
#pragma omp simd
                    for (int c = 0; c < n; c++) ge[c] += d[c];
                }
            }
    }
    grad_ready(m, 0);
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
    int32_t *tok = m->gen_tokens;
    int n_live = B;
    for (int b = 0; b < B; b++) {
        tok[(size_t)b * Tt] = DATA_TOK_BOS;
        for (int t = 1; t < Tt; t++) tok[(size_t)b * Tt + t] = DATA_TOK_PAD;
        m->gen_done[b] = 0;
        out[(size_t)b * out_stride] = '\0';
    }
    // Position s predicts token s+1. Causality makes later positions irrelevant, so each step
    // runs the trunk on T' = P + s + 1 positions and the head on one row per sample.
    for (int s = 0; s < Tt - 1 && n_live > 0; s++) {
        forward_trunk(m, in, tok, Tt, s + 1);
        const int Ts = P + s + 1;
        const mm_real *fin = a->layer[m->L - 1].res3;
        for (int b = 0; b < B; b++)
            memcpy(a->txt + (size_t)b * C, fin + ((size_t)b * Ts + P + s) * C,
                   (size_t)C * sizeof(mm_real));
        m->ops->layernorm_fwd(a->lnf, a->lnf_mean, a->lnf_rstd, a->txt, m->w.lnf_g, m->w.lnf_b, B,
                              C);
        m->ops->matmul_fwd(a->logits, a->lnf, m->w.lm_head, NULL, B, C, V);
        for (int b = 0; b < B; b++) {
            if (m->gen_done[b]) continue;
            const mm_real *lg = a->logits + (size_t)b * V;
            int best = 0;  // first maximum: ties resolve to the lowest id
            for (int v = 1; v < V; v++)
                if (lg[v] > lg[best]) best = v;
            // EOS ends the text; any other special token has no byte form and ends it too
            if (best >= 256) {
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
//            4 * MACs for img.proj / audio.proj (no input gradient is computed);
//   attention: per block 4 * T^2 * d forward (QK^T and PV over the full T x T, as the
//            masked gemms are counted whole), twice that backward: 12 * T^2 * d.
// Elementwise ops are not counted.
double model_flops_per_sample(const model *m) {
    double C = m->C, F = m->F, T = m->T, L = m->L;
    double block = 3 * C * C + C * C + 2 * C * F;  // MACs per token per block
    double f = 6.0 * T * L * block;
    f += 6.0 * m->Tt * (double)m->V * C;
    f += 4.0 * ((double)m->n_img * m->pdim + (double)m->n_aud * m->adim) * C;
    f += 12.0 * L * T * T * C;
    return f;
}
