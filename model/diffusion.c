// diffusion.c: the DiT of diffusion.h (everything but the objectives and samplers, which live
// in diffusion_sched.c): parameter table and initialization, forward with the MSE loss,
// backward, prediction and the FLOP count. Like transformer.c it keeps the model's structure
// in one place above the ops tables (model_ops for the common ops, dit_ops for SiLU,
// modulation, gated adds, cross-attention and MSE), so CPU and CUDA backends share it.
//
// Inputs per sample, and the decisions diffusion.h leaves open:
//   image  x_t (H, W, c) -> patches (N, p*p*c), inner order (dy, dx, c), patches row-major in
//          (py, px) as transformer.c -> x_embed (linear) + a FIXED 2D sin-cos position
//          embedding (DiT/MAE; not a parameter): channels [0, d/2) encode the patch row,
//          [d/2, d) the column, each half as [sin(pos w_k) | cos(pos w_k)], w_k =
//          10000^(-k / (d/4)), k < d/4 (so d % 4 == 0). The output is unpatchified likewise.
//   time   t in [0, 1] -> sinusoidal features of t*1000 (dim d, max period 10000, DiT order
//          [cos | sin]) -> t_embed.fc1 (d->d) -> SiLU -> t_embed.fc2 (d->d) = c (B, d). SiLU(c)
//          feeds every adaLN linear.
//   pool   (cfg.pool_cond only) c += cond.pool.fc2(SiLU(cond.pool.fc1(mean of the sample's
//          valid cond keys, the null token included))): DiT's class path, where adaLN sees the
//          condition in every block; cross-attention alone carried colour but barely shape.
//   text   tokens -> text.wte + text.pos -> enc_layers bidirectional pre-norm blocks (LN ->
//          self-attention -> residual, LN -> GELU MLP -> residual; attention_fwd with P = T,
//          PAD tokens and captions with has_text = 0 are no keys) -> text.ln_f. A sample with
//          has_text = 0 embeds PAD at every position, so an absent caption's bytes are never
//          read (its rows are not keys of anything anyway).
//   audio  (audio_F, n_mels) -> (n_aud, audio_group * n_mels) grouped frames (trailing
//          audio_F % audio_group frames dropped, as transformer.c) -> audio.proj + audio.pos
//          -> enc_layers blocks -> audio.ln_f.
//   cond   (B, Tc, d), Tc = text_T + n_aud + 1 = [text tokens | audio tokens | cond.null];
//          key j of sample b is valid iff it is a non-PAD token of a sample with has_text,
//          an audio token of a sample with has_audio, or the null token (always).
// Generator block (dit_block.c; shift, scale, gate per branch = blocks.i.ada(SiLU(c)), (B, 6d)
// in DiT's order shift1 scale1 gate1 shift2 scale2 gate2):
//   x += gate1 * attn.proj(selfattn(attn.qkv(modulate(LN(x), shift1, scale1))))
//   x += xattn.proj(crossattn(xattn.q(xattn.ln(x)), xattn.kv(cond)))
//   x += gate2 * mlp.proj(GELU(mlp.fc(modulate(LN(x), shift2, scale2))))
// final: modulate(LN(x), final.ada(SiLU(c))) -> final.proj -> unpatchify.
// The modulated LayerNorms have no affine parameters (elementwise_affine=False as DiT): they
// call ops->layernorm_fwd with constant ones/zeros owned here, and their dg/db go to a
// scratch vector that is discarded. Self-attention: attention_fwd with P = N, every key valid.
//
// Output: with cfg.x_pred the unpatchified output is an estimate of the clean image x0, and
// the model returns the velocity it implies, (x_t - x0) / max(t, DIT_XPRED_TMIN) (dit_ops.xpred;
// JiT, Li & He 2025): a clean image is far simpler than a velocity, which carries the noise, so
// a token of d values can give a patch of more than d pixels (patch 8: 192 values from 128)
// where a velocity needs every one of them. Loss, sampler and checkpoints see velocities
// either way.
//
// Loss: per sample the mean over the H*W*c pixels of (pred - target)^2; dit_forward returns
// the sum over samples (double, in sample order), dit_backward differentiates loss_scale *
// that sum.
//
// Parameter layout (names are checkpoint names; groups: text.* TEXT, audio.* AUDIO, the rest
// TRUNK). Table order = the reverse of the order in which backward finishes tensors:
//   [text.*, audio.*, cond.null, (cond.pool.*), t_embed.*, x_embed.*, blocks.*, final.*]
// Backward runs final, blocks L-1 .. 0, then x_embed (its input gradient is d(block 0 input)),
// t_embed and cond.pool (c feeds every block and the final layer, so its gradient is
// complete only after all of them; one stage), then the conditioning: cond.null, the audio
// encoder, the text encoder (the cond tokens feed every block's kv). The grad hook fires after
// each of those stages with lo = the stage's first offset, last with lo = 0.
//   - weight decay on every tensor with ndim >= 2 that is not a bias (the transformer's rule:
//     matrices, wte, text.pos/audio.pos and cond.null); never on biases or LN gains/biases.
//   - init: per-tensor RNG stream mm_rng(seed, k) over the GLOBAL shape, row-major, sliced
//     (so independent of tp). Embeddings (text.wte, text.pos, audio.pos, cond.null) and
//     t_embed.fc*.w N(0, 0.02) as DiT's timestep MLP; every other linear weight xavier-uniform
//     over (fan_out = prod(shape[:-1]), fan_in = shape[-1]) as DiT's initialize_weights;
//     biases 0, LN gains 1; blocks.*.ada.*, final.ada.* and final.proj.* ZERO (adaLN-Zero: at
//     init every block is the identity and the output is exactly 0).
//
// Tensor parallelism (Megatron, as transformer.c; NHl = NH/tp heads, Cl = NHl*HD, Fl = F/tp):
//   column-parallel, split along the output dim: attn.qkv.w (3, d, d) / qkv.b (3, d) along
//   dim 1 (whole heads of q, k and v), xattn.q.w (d, d) / q.b along dim 0, xattn.kv.w (2, d, d)
//   / kv.b (2, d) along dim 1, mlp.fc.w (F, d) / fc.b along dim 0; row-parallel along dim 1:
//   attn.proj.w, xattn.proj.w, mlp.proj.w (their biases replicated, added by tp rank 0 in the
//   gemm before the allreduce). Everything else is replicated, INCLUDING the conditioning
//   encoders (they run on short sequences - text_T and n_aud tokens against N image tokens -
//   so splitting them would buy little and cost four collectives per encoder block), the
//   adaLN linears, t_embed, x_embed and the final layer.
//   Collectives, all sums over the tp group on the backend (m->tp): forward, after each of the
//   three row-parallel projections of a block (B*N*d); backward, d(modulated LN1) after attn.qkv,
//   d(xattn.ln) after xattn.q, d(modulated LN2) after mlp.fc (B*N*d each), and ONE for d(cond)
//   (B*Tc*d) after the last block: each block's xattn.kv adds this rank's heads' share of
//   d(cond) locally, and the encoders below need the sum.
//   INVARIANT (model.h): replicated gradients are bitwise identical on every tp rank. They
//   are computed only from replicated values (allreduced sums, which comm returns with the
//   same bits everywhere) by deterministic ops in the same order. tp = 1 makes no comm call.
//
// Activations live in one buffer carved in a fixed order (plan_acts); forward keeps every
// activation the backward needs, backward scratch comes after them. They are the backend's
// (be->act_bytes: bf16 on CUDA in precision bf16, model.h "Activations"): the model's
// inputs (x_t, audio) and cond.null enter them through act_from_real, and its prediction
// leaves through act_to_real, so the loss, the x-prediction and the sampler see mm_real.
// Under cfg.recompute (model.h) the generator blocks keep less and share one set for the
// rest, which backward refills per block right before that block's backward
// (dit_block_recompute): SiLU(c), cond and the key masks the blocks read are kept whole, and
// the final layer reads the kept output of the last block. The encoders always keep
// everything (a few tokens each).
//
// Shared with transformer.c through model_internal.h: the table builder, the tp-independent
// init draw and activation carving (layout.c), and the encoder block itself (block.c's
// model_block, the LM's trunk block run replicated: tp = 1, full widths, every bias added).
// The generator block is dit_block.c's (dit_internal.h): this file holds the model around it.
#include "diffusion.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "dit_internal.h"
#include "model_internal.h"

typedef struct {
    model_block_w *layer;    // (E) owned; replicated (tp = 1 shapes)
    mm_real *lnf_g, *lnf_b;  // (C)
} enc_w;

// Views into params or grads (same offsets in both).
typedef struct {
    mm_real *wte;   // (V, C)
    mm_real *tpos;  // (Tt, C)
    enc_w text;
    mm_real *aud_w;  // (C, adim)
    mm_real *aud_b;  // (C)
    mm_real *apos;   // (n_aud, C)
    enc_w audio;
    mm_real *null;         // (1, C)
    mm_real *p1_w, *p1_b;  // (C, C), (C) cond.pool.fc1; NULL without pool_cond
    mm_real *p2_w, *p2_b;  // (C, C), (C) cond.pool.fc2
    mm_real *t1_w, *t1_b;  // (C, C), (C)
    mm_real *t2_w, *t2_b;  // (C, C), (C)
    mm_real *x_w;          // (C, pdim)
    mm_real *x_b;          // (C)
    dit_block_w *layer;    // (L) owned
    mm_real *fada_w;       // (2C, C)
    mm_real *fada_b;       // (2C)
    mm_real *fproj_w;      // (pdim, C)
    mm_real *fproj_b;      // (pdim)
} weights;

typedef struct {
    int T;                       // tokens per sample
    mm_real *x0;                 // (B, T, C) embeddings = block 0 input
    model_block_acts *layer;     // (E) owned
    mm_real *out, *mean, *rstd;  // (B, T, C) ln_f output; (B, T)
    uint8_t *key_valid;          // (max_B, T) owned
    // backward scratch
    mm_real *dout;           // (B, T, C) gradient of out, gathered from d(cond)
    model_block_scratch bs;  // the blocks'; bs.dres ends as d(x0)
} enc_acts;

typedef struct {
    mm_real *pix;                 // (B, H, W, c) where activations are not mm_real (else
                                  // NULL): x_t, then the output, then its gradient, as
                                  // activations (the model's inputs and outputs are mm_real)
    mm_real *aud_in;              // (B, audio_F, n_mels) the audio as activations (or NULL)
    mm_real *null;                // (C) cond.null as an activation (or NULL)
    mm_real *patches;             // (BN, pdim)
    mm_real *x0;                  // (BN, C) block 0 input
    mm_real *tfreq;               // (B, C) sinusoidal features of t
    mm_real *th, *ths;            // (B, C) fc1 output, after SiLU
    mm_real *c, *sc;              // (B, C) timestep (+ pooled condition) embedding c, SiLU(c)
    mm_real *pool, *ph, *phs;     // (B, C) mean valid cond token; cond.pool.fc1 out, SiLU
    mm_real *pc;                  // (B, C) cond.pool.fc2 output (added to c)
    mm_real *aud;                 // (B, n_aud, adim) grouped frames (when a tail is dropped)
    mm_real *cond;                // (B, Tc, C)
    dit_block_acts *layer;        // (L) owned
    mm_real *fmod;                // (B, 2C) final shift, scale
    mm_real *fh, *fmean, *frstd;  // (BN, C) final LN; (BN), (BN)
    mm_real *fm;                  // (BN, C) modulated
    mm_real *outp;                // (BN, pdim) final.proj output (patch layout)
    mm_real *pred;                // (B, H, W, c) mm_real, as the loss and sampler see it
    mm_real *losses;              // (B) mm_real
    mm_real *ones, *zeros;        // (C) mm_real constants for the non-affine LayerNorms
    // backward scratch (not kept between calls)
    mm_real *dloss;            // (B) mm_real
    mm_real *dpred;            // (B, H, W, c) mm_real
    mm_real *doutp;            // (BN, pdim)
    mm_real *dfm, *dfh;           // (BN, C) d(fm), d(fh)
    mm_real *dfmod;               // (B, 2C) d(fmod)
    dit_block_scratch bs;         // the blocks'; bs.dres ends as d(x0), bs.dsc and bs.dcond
                                  // sum over every block and the final layer
    mm_real *dc, *dths, *dth;     // (B, C)
    mm_real *dphs, *dph, *dpool;  // (B, C) cond.pool backward
} acts;

struct dit {
    dit_config cfg;
    const mm_backend *be;   // not owned
    const model_ops *ops;  // be->ops
    const dit_ops *dops;
    int max_B;
    int C, L, NH, HD, F, V, Tt, E;  // d_model, layers, heads, head dim, d_ff, vocab, text_T, enc
    int NHl, Cl, Fl;                // this tp rank's heads, attention width, MLP width
    int N, gh, gw, pdim;            // image tokens, patch grid, patch width
    int n_aud, adim, Tc;            // audio tokens, audio-token width, cond tokens
    int n_tensors;
    model_tensor *tensors;  // (n_tensors) owned
    size_t n_params;
    mm_real *params, *grads;  // (n_params) each, owned
    // first offsets of the backward stages (grad hook): see the file top
    size_t audio_lo, null_lo, temb_lo, xemb_lo, final_lo;
    size_t pool_lo;        // = temb_lo without pool_cond
    size_t *block_lo;      // (L) owned
    model_hook hook;       // the grad hook (fn NULL when none)
    mm_coll *tp;           // cfg.tp_group on be (NULL: tp 1 or layout only), owned
    weights w, g;          // views into params / grads
    mm_real *pos;          // (N, C) fixed 2D sin-cos position embedding, owned
    mm_real *act_mem;      // the one activation buffer, owned
    acts a;                // views into act_mem
    enc_acts te, ae;       // text / audio encoder activations (views, key_valid owned)
    uint8_t *key_valid;    // (max_B, Tc) cross-attention keys, owned
    uint8_t *all_valid;    // (max_B, N) ones: self-attention keys, owned
    int32_t *tok;          // (max_B, Tt) the tokens the text encoder embeds (PAD when none)
    uint8_t *tok_kv;       // (max_B, Tt) scratch: text_embed_fwd's key output, not used
    mm_real *host_b;       // (max_B) host: per-sample losses / loss scales, owned
    int saved_B;           // samples whose activations dit_backward may use
};

// ---------------------------------------------------------------------------------------
// parameter table

// Parameter group by name (file top): text.* TEXT, audio.* AUDIO, the rest TRUNK.
static int group_of(const char *name) {
    return model_starts_with(name, "text.")    ? MODEL_GROUP_TEXT
           : model_starts_with(name, "audio.") ? MODEL_GROUP_AUDIO
                                               : MODEL_GROUP_TRUNK;
}

static void add_tensor(model_table *tb, const char *name, int ndim, const int64_t *shape,
                       int split_dim) {
    model_table_add(tb, name, ndim, shape, split_dim, group_of(name));
}

// An encoder's blocks ("<pre>.blocks.<l>.*", replicated) and its ln_f.
static void add_encoder(model_table *tb, const char *pre, int E, int64_t C, int64_t F) {
    char nm[64];
    snprintf(nm, sizeof(nm), "%s.blocks", pre);
    for (int l = 0; l < E; l++) model_block_add_tensors(tb, nm, l, C, F, 0, group_of(nm));
    snprintf(nm, sizeof(nm), "%s.ln_f.g", pre);
    add_tensor(tb, nm, 1, MODEL_SHAPE(C), -1);
    snprintf(nm, sizeof(nm), "%s.ln_f.b", pre);
    add_tensor(tb, nm, 1, MODEL_SHAPE(C), -1);
}

static void build_table(dit *m) {
    const dit_config *c = &m->cfg;
    const int64_t C = m->C, F = m->F, V = m->V, P = m->pdim;
    const int E = m->E;
    int cap = 2 + (MODEL_BLOCK_TENSORS * E + 2) + 3 + (MODEL_BLOCK_TENSORS * E + 2) + 1 + 4 + 2 +
              DIT_BLOCK_TENSORS * m->L + 4 + (c->pool_cond ? 4 : 0);
    model_table tb;
    model_table_init(&tb, cap, c->tp, c->tp_rank);
    add_tensor(&tb, "text.wte", 2, MODEL_SHAPE(V, C), -1);
    add_tensor(&tb, "text.pos", 2, MODEL_SHAPE(m->Tt, C), -1);
    add_encoder(&tb, "text", E, C, F);
    m->audio_lo = tb.off;
    add_tensor(&tb, "audio.proj.w", 2, MODEL_SHAPE(C, m->adim), -1);
    add_tensor(&tb, "audio.proj.b", 1, MODEL_SHAPE(C), -1);
    add_tensor(&tb, "audio.pos", 2, MODEL_SHAPE(m->n_aud, C), -1);
    add_encoder(&tb, "audio", E, C, F);
    m->null_lo = tb.off;
    add_tensor(&tb, "cond.null", 2, MODEL_SHAPE(1, C), -1);
    m->pool_lo = tb.off;
    if (c->pool_cond) {
        add_tensor(&tb, "cond.pool.fc1.w", 2, MODEL_SHAPE(C, C), -1);
        add_tensor(&tb, "cond.pool.fc1.b", 1, MODEL_SHAPE(C), -1);
        add_tensor(&tb, "cond.pool.fc2.w", 2, MODEL_SHAPE(C, C), -1);
        add_tensor(&tb, "cond.pool.fc2.b", 1, MODEL_SHAPE(C), -1);
    }
    m->temb_lo = tb.off;
    add_tensor(&tb, "t_embed.fc1.w", 2, MODEL_SHAPE(C, C), -1);
    add_tensor(&tb, "t_embed.fc1.b", 1, MODEL_SHAPE(C), -1);
    add_tensor(&tb, "t_embed.fc2.w", 2, MODEL_SHAPE(C, C), -1);
    add_tensor(&tb, "t_embed.fc2.b", 1, MODEL_SHAPE(C), -1);
    m->xemb_lo = tb.off;
    add_tensor(&tb, "x_embed.w", 2, MODEL_SHAPE(C, P), -1);
    add_tensor(&tb, "x_embed.b", 1, MODEL_SHAPE(C), -1);
    m->block_lo = mm_calloc((size_t)m->L, sizeof(size_t));
    for (int l = 0; l < m->L; l++) {
        m->block_lo[l] = tb.off;
        dit_block_add_tensors(&tb, "blocks", l, C, F, MODEL_GROUP_TRUNK);
    }
    m->final_lo = tb.off;
    add_tensor(&tb, "final.ada.w", 2, MODEL_SHAPE(2 * C, C), -1);
    add_tensor(&tb, "final.ada.b", 1, MODEL_SHAPE(2 * C), -1);
    add_tensor(&tb, "final.proj.w", 2, MODEL_SHAPE(P, C), -1);
    add_tensor(&tb, "final.proj.b", 1, MODEL_SHAPE(P), -1);
    model_table_done(&tb);
    m->tensors = tb.t;
    m->n_tensors = tb.n;
    m->n_params = tb.off;
}

// Points the views of wt at buf, in build_table's order.
static void bind_weights(const dit *m, weights *wt, mm_real *buf) {
    const model_tensor *t = m->tensors;
    int k = 0;
#define NEXT() (buf + t[k++].offset)
    enc_w *encs[2] = {&wt->text, &wt->audio};
    for (int e = 0; e < 2; e++) {
        if (e == 0) {
            wt->wte = NEXT();
            wt->tpos = NEXT();
        } else {
            wt->aud_w = NEXT();
            wt->aud_b = NEXT();
            wt->apos = NEXT();
        }
        enc_w *ew = encs[e];
        ew->layer = mm_calloc((size_t)(m->E ? m->E : 1), sizeof(model_block_w));
        for (int l = 0; l < m->E; l++) model_block_bind(&ew->layer[l], buf, t, &k);
        ew->lnf_g = NEXT();
        ew->lnf_b = NEXT();
    }
    wt->null = NEXT();
    if (m->cfg.pool_cond) {
        wt->p1_w = NEXT();
        wt->p1_b = NEXT();
        wt->p2_w = NEXT();
        wt->p2_b = NEXT();
    }
    wt->t1_w = NEXT();
    wt->t1_b = NEXT();
    wt->t2_w = NEXT();
    wt->t2_b = NEXT();
    wt->x_w = NEXT();
    wt->x_b = NEXT();
    wt->layer = mm_calloc((size_t)m->L, sizeof(dit_block_w));
    for (int l = 0; l < m->L; l++) dit_block_bind(&wt->layer[l], buf, t, &k);
    wt->fada_w = NEXT();
    wt->fada_b = NEXT();
    wt->fproj_w = NEXT();
    wt->fproj_b = NEXT();
#undef NEXT
    MM_CHECK(k == m->n_tensors, "bind_weights out of step with build_table");
}

// Initializes tensor k (DiT's law, file top); the draw is layout.c's, so tp-independent.
static void init_tensor(dit *m, mm_real *params, int k, uint64_t seed) {
    const model_tensor *t = &m->tensors[k];
    mm_real *p = params + t->offset;
    const char *n = t->name;
    if (model_ends_with(n, ".g")) {  // layernorm gains
        for (size_t i = 0; i < t->size; i++) p[i] = 1;
        return;
    }
    // biases and the adaLN-Zero / zero-output tensors stay 0 (the buffer is zeroed)
    if (t->ndim == 1 || model_ends_with(n, ".b") || strstr(n, ".ada.") ||
        model_starts_with(n, "final."))
        return;
    int normal = model_ends_with(n, ".wte") || model_ends_with(n, ".pos") ||
                 strcmp(n, "cond.null") == 0 || model_starts_with(n, "t_embed.") ||
                 model_starts_with(n, "cond.pool.");
    double fan_in = (double)t->shape[t->ndim - 1], fan_out = 1;
    for (int i = 0; i < t->ndim - 1; i++) fan_out *= (double)t->shape[i];
    double a = sqrt(6.0 / (fan_in + fan_out));  // xavier-uniform bound
    if (normal)
        model_init_draw(p, t, seed, (uint64_t)k, 0.02, 0);
    else
        model_init_draw(p, t, seed, (uint64_t)k, a, 1);
}

// The fixed 2D sin-cos position embedding (file top): pos (gh*gw, C).
static void fill_pos_embed(mm_real *pos, int gh, int gw, int C) {
    const int Q = C / 4;
    for (int py = 0; py < gh; py++)
        for (int px = 0; px < gw; px++) {
            mm_real *o = pos + ((size_t)py * gw + px) * C;
            for (int k = 0; k < Q; k++) {
                double w = pow(10000.0, -(double)k / Q);
                o[k] = (mm_real)sin(py * w);
                o[Q + k] = (mm_real)cos(py * w);
                o[2 * Q + k] = (mm_real)sin(px * w);
                o[3 * Q + k] = (mm_real)cos(px * w);
            }
        }
}

// ---------------------------------------------------------------------------------------
// activations: one buffer, carved in a fixed order. With base NULL only the size is counted.

static void plan_enc(dit *m, model_carver *cv, enc_acts *e) {
    size_t BT = (size_t)m->max_B * e->T, C = (size_t)m->C, F = (size_t)m->F;
    e->x0 = model_carve(cv, BT * C);
    // the encoders are never recomputed (diffusion.h): every layer keeps all of its own
    for (int l = 0; l < m->E; l++)
        model_block_carve(cv, m->be, &e->layer[l], MODEL_PART_ALL, NULL, BT, (size_t)e->T, C,
                          (size_t)m->NH, C, F);
    e->out = model_carve(cv, BT * C);
    e->mean = model_carve_real(cv, BT);
    e->rstd = model_carve_real(cv, BT);
    e->dout = model_carve(cv, BT * C);
    model_block_carve_scratch(cv, &e->bs, BT, C, C, F);
}

// Carves the activation buffer at base (NULL: only counts); returns its bytes, and in
// *per_layer those of one DiT block. Activations at be->act_bytes (model_carve); statistics,
// saved attention, losses and the model's mm_real outputs through model_carve_real.
static size_t plan_acts(dit *m, mm_real *base, size_t *per_layer) {
    model_carver cv;
    model_carver_init(&cv, m->be, base);
    const size_t B = (size_t)m->max_B, N = (size_t)m->N, C = (size_t)m->C, BN = B * N;
    const size_t Cl = (size_t)m->Cl, Fl = (size_t)m->Fl, BTc = B * m->Tc, pix = BN * m->pdim;
    acts *a = &m->a;
    const int conv = m->be->act_bytes != sizeof(mm_real);  // inputs and outputs converted
    a->pix = conv ? model_carve(&cv, pix) : NULL;
    a->aud_in = conv ? model_carve(&cv, B * m->cfg.audio_F * m->cfg.n_mels) : NULL;
    a->null = conv ? model_carve(&cv, C) : NULL;
    a->patches = model_carve(&cv, pix);
    a->x0 = model_carve(&cv, BN * C);
    a->tfreq = model_carve(&cv, B * C);
    a->th = model_carve(&cv, B * C);
    a->ths = model_carve(&cv, B * C);
    a->c = model_carve(&cv, B * C);
    a->sc = model_carve(&cv, B * C);
    a->pool = model_carve(&cv, B * C);
    a->ph = model_carve(&cv, B * C);
    a->phs = model_carve(&cv, B * C);
    a->pc = model_carve(&cv, B * C);
    a->aud = model_carve(&cv, B * m->n_aud * m->adim);
    a->cond = model_carve(&cv, BTc * C);
    // under recomputation, one set of what the layers do not keep, shared by all of them
    const int keep = model_recompute_kept(m->cfg.recompute);
    dit_block_acts shared = {0};
    if (keep != MODEL_PART_ALL)
        dit_block_carve(&cv, m->be, &shared, MODEL_PART_ALL & ~keep, NULL, B, N, (size_t)m->Tc, C,
                        (size_t)m->NHl, Cl, Fl);
    const size_t before = cv.off;
    for (int l = 0; l < m->L; l++)
        dit_block_carve(&cv, m->be, &a->layer[l], keep, &shared, B, N, (size_t)m->Tc, C,
                        (size_t)m->NHl, Cl, Fl);
    *per_layer = (cv.off - before) / (size_t)m->L;
    a->fmod = model_carve(&cv, B * 2 * C);
    a->fh = model_carve(&cv, BN * C);
    a->fmean = model_carve_real(&cv, BN);
    a->frstd = model_carve_real(&cv, BN);
    a->fm = model_carve(&cv, BN * C);
    a->outp = model_carve(&cv, pix);
    a->pred = model_carve_real(&cv, pix);
    a->losses = model_carve_real(&cv, B);
    a->ones = model_carve_real(&cv, C);
    a->zeros = model_carve_real(&cv, C);
    a->dloss = model_carve_real(&cv, B);
    a->dpred = model_carve_real(&cv, pix);
    a->doutp = model_carve(&cv, pix);
    a->dfm = model_carve(&cv, BN * C);
    a->dfh = model_carve(&cv, BN * C);
    a->dfmod = model_carve(&cv, B * 2 * C);
    dit_block_carve_scratch(&cv, &a->bs, B, N, (size_t)m->Tc, C, Cl, Fl);
    a->dc = model_carve(&cv, B * C);
    a->dths = model_carve(&cv, B * C);
    a->dth = model_carve(&cv, B * C);
    a->dphs = model_carve(&cv, B * C);
    a->dph = model_carve(&cv, B * C);
    a->dpool = model_carve(&cv, B * C);
    plan_enc(m, &cv, &m->te);
    plan_enc(m, &cv, &m->ae);
    return cv.off;
}

// ---------------------------------------------------------------------------------------
// create / free / accessors

static int check_config(const dit_config *c, int max_B, mm_err *err) {
    if (c->recompute != MODEL_RECOMPUTE_NONE && c->recompute != MODEL_RECOMPUTE_ATTENTION &&
        c->recompute != MODEL_RECOMPUTE_BLOCK)
        return mm_fail(err, "dit: recompute %d is not none, attention or block", (int)c->recompute);
    struct {
        const char *name;
        int v;
    } pos[] = {{"d_model", c->d_model},
               {"n_layers", c->n_layers},
               {"n_heads", c->n_heads},
               {"d_ff", c->d_ff},
               {"img_h", c->img_h},
               {"img_w", c->img_w},
               {"img_c", c->img_c},
               {"patch", c->patch},
               {"vocab", c->vocab},
               {"text_T", c->text_T},
               {"audio_F", c->audio_F},
               {"n_mels", c->n_mels},
               {"audio_group", c->audio_group},
               {"tp", c->tp},
               {"max_B", max_B}};
    for (size_t i = 0; i < sizeof(pos) / sizeof(pos[0]); i++)
        if (pos[i].v <= 0)
            return mm_fail(err, "dit: %s must be > 0 (got %d)", pos[i].name, pos[i].v);
    if (c->enc_layers < 0)
        return mm_fail(err, "dit: enc_layers must be >= 0 (got %d)", c->enc_layers);
    if (c->d_model % c->n_heads)
        return mm_fail(err, "dit: d_model %d is not divisible by n_heads %d", c->d_model,
                       c->n_heads);
    if (c->d_model % 4)
        return mm_fail(err,
                       "dit: d_model %d must be a multiple of 4 (2D sin-cos position "
                       "embedding: sin and cos of row and column)",
                       c->d_model);
    if (c->img_h % c->patch || c->img_w % c->patch)
        return mm_fail(err, "dit: image %dx%d is not divisible into %dx%d patches", c->img_h,
                       c->img_w, c->patch, c->patch);
    if (c->audio_F < c->audio_group)
        return mm_fail(err, "dit: audio_F %d frames is fewer than audio_group %d (no audio token)",
                       c->audio_F, c->audio_group);
    if (c->vocab <= DATA_TOK_PAD)
        return mm_fail(err, "dit: vocab %d must include the PAD token (%d)", c->vocab,
                       DATA_TOK_PAD);
    return model_check_tp("dit", c->n_heads, c->d_ff, c->tp, c->tp_rank, c->tp_group, err);
}

// The DiT's kernels on each backend: the one place a backend registers them.
const dit_ops *dit_ops_for(const mm_backend *be) {
    switch (be->kind) {
    case MM_BACKEND_CPU:
        return &dit_ops_cpu;
    case MM_BACKEND_CUDA:
#ifdef MM_HAVE_CUDA
        return &dit_ops_cuda;
#endif
        break;
    }
    return NULL;
}

// The checks, shapes, tensor table and activation views of a model of cfg in m (no
// buffers yet): what dit_create and dit_mem_plan share, so that the plan is what create
// allocates. free_setup undoes it.
static int setup(dit *m, const dit_config *cfg, const mm_backend *be, int max_B, mm_err *err) {
    if (check_config(cfg, max_B, err)) return -1;
    const dit_ops *dops = dit_ops_for(be);
    if (!dops) return mm_fail(err, "dit: backend %s has no DiT kernels", be->name);
    if (mm_table_complete(dops, sizeof(*dops), sizeof(const char *), "dit_ops", err) != 0)
        return -1;
    m->cfg = *cfg;
    m->be = be;
    m->ops = be->ops;
    m->dops = dops;
    m->max_B = max_B;
    m->C = cfg->d_model;
    m->L = cfg->n_layers;
    m->NH = cfg->n_heads;
    m->HD = cfg->d_model / cfg->n_heads;
    m->F = cfg->d_ff;
    m->V = cfg->vocab;
    m->Tt = cfg->text_T;
    m->E = cfg->enc_layers;
    m->NHl = m->NH / cfg->tp;
    m->Cl = m->NHl * m->HD;
    m->Fl = m->F / cfg->tp;
    m->gh = cfg->img_h / cfg->patch;
    m->gw = cfg->img_w / cfg->patch;
    m->N = m->gh * m->gw;
    m->pdim = cfg->patch * cfg->patch * cfg->img_c;
    m->n_aud = cfg->audio_F / cfg->audio_group;
    m->adim = cfg->audio_group * cfg->n_mels;
    m->Tc = m->Tt + m->n_aud + 1;
    build_table(m);
    m->a.layer = mm_calloc((size_t)m->L, sizeof(dit_block_acts));
    m->te.T = m->Tt;
    m->ae.T = m->n_aud;
    size_t nl = (size_t)(m->E ? m->E : 1);
    m->te.layer = mm_calloc(nl, sizeof(model_block_acts));
    m->ae.layer = mm_calloc(nl, sizeof(model_block_acts));
    return 0;
}

static void free_setup(dit *m) {
    free(m->tensors);
    free(m->block_lo);
    free(m->a.layer);
    free(m->te.layer);
    free(m->ae.layer);
}

// model_mem.attn_rows: the widest attention's rows times its heads' width, over the
// generator's self- and cross-attention (this rank's heads; N queries, Tc keys of twice the
// width) and the encoders' (every head; text_T or n_aud tokens)
static size_t dit_attn_rows(const dit *m, int max_B) {
    size_t gen = (size_t)(m->N > m->Tc ? m->N : m->Tc) * m->Cl;
    size_t enc = (size_t)(m->Tt > m->n_aud ? m->Tt : m->n_aud) * m->C;
    return (size_t)max_B * (gen > enc ? gen : enc);
}

int dit_mem_plan(const dit_config *cfg, const mm_backend *be, int max_B, model_mem *out,
                 mm_err *err) {
    dit m = {0};
    int rc = setup(&m, cfg, be, max_B, err);
    if (rc == 0) {
        size_t per = 0, n = plan_acts(&m, NULL, &per);
        *out = (model_mem){.n_params = m.n_params,
                           .act_bytes = n,
                           .act_per_layer = per,
                           .attn_probs = (size_t)max_B * m.NHl * m.N * m.N * sizeof(float),
                           .attn_hd = m.HD,
                           .attn_rows = dit_attn_rows(&m, max_B),
                           .max_tensor = model_table_max(m.tensors, m.n_tensors),
                           .n_layers = m.L};
    }
    free_setup(&m);
    return rc;
}

int dit_create(dit **out, const dit_config *cfg, const mm_backend *be, int max_B, uint64_t seed,
               mm_err *err) {
    *out = NULL;
    dit *m = mm_calloc(1, sizeof(dit));
    if (setup(m, cfg, be, max_B, err) != 0) {
        free_setup(m);
        free(m);
        return -1;
    }
    const model_ops *ops = be->ops;
    const size_t pbytes = m->n_params * sizeof(mm_real);
    m->params = ops->mem_alloc(be, pbytes);
    m->grads = ops->mem_alloc(be, pbytes);
    bind_weights(m, &m->w, m->params);
    bind_weights(m, &m->g, m->grads);
    // drawn on the host, then copied to the ops' memory (a plain copy on the CPU); each
    // tensor has its own stream, so the split across threads cannot change values
    mm_real *init = mm_alloc_aligned(pbytes);
#pragma omp parallel for schedule(dynamic)
    for (int k = 0; k < m->n_tensors; k++) init_tensor(m, init, k, seed);
    ops->mem_upload(be, m->params, init, pbytes);
    free(init);
    const size_t posb = (size_t)m->N * m->C * sizeof(mm_real);
    mm_real *pos = mm_malloc(posb);
    fill_pos_embed(pos, m->gh, m->gw, m->C);
    m->pos = ops->mem_alloc(be, posb);
    ops->mem_upload(be, m->pos, pos, posb);
    free(pos);

    size_t per_layer, n_acts = plan_acts(m, NULL, &per_layer);
    m->act_mem = ops->mem_alloc(be, n_acts);
    plan_acts(m, m->act_mem, &per_layer);
    mm_real *ones = mm_malloc((size_t)m->C * sizeof(mm_real));
    for (int c = 0; c < m->C; c++) ones[c] = 1;  // zeros: the buffer is zeroed
    ops->mem_upload(be, m->a.ones, ones, (size_t)m->C * sizeof(mm_real));
    free(ones);
    m->te.key_valid = ops->mem_alloc(be, (size_t)max_B * m->Tt);
    m->ae.key_valid = ops->mem_alloc(be, (size_t)max_B * m->n_aud);
    m->key_valid = ops->mem_alloc(be, (size_t)max_B * m->Tc);
    m->all_valid = ops->mem_alloc(be, (size_t)max_B * m->N);
    uint8_t *all = mm_malloc((size_t)max_B * m->N);
    memset(all, 1, (size_t)max_B * m->N);
    ops->mem_upload(be, m->all_valid, all, (size_t)max_B * m->N);
    free(all);
    m->tok = ops->mem_alloc(be, (size_t)max_B * m->Tt * sizeof(int32_t));
    m->tok_kv = ops->mem_alloc(be, (size_t)max_B * m->Tt);
    m->host_b = mm_calloc((size_t)max_B, sizeof(mm_real));
    m->tp = cfg->tp > 1 ? mm_coll_new(be, cfg->tp_group) : NULL;  // collective over the group
    *out = m;
    return 0;
}

void dit_free(dit *m) {
    if (!m) return;
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    mm_coll_free(be, m->tp);
    free(m->tensors);
    free(m->block_lo);
    ops->mem_free(be, m->params);
    ops->mem_free(be, m->grads);
    weights *ws[2] = {&m->w, &m->g};
    for (int i = 0; i < 2; i++) {
        free(ws[i]->text.layer);
        free(ws[i]->audio.layer);
        free(ws[i]->layer);
    }
    ops->mem_free(be, m->pos);
    ops->mem_free(be, m->act_mem);
    free(m->a.layer);
    free(m->te.layer);
    free(m->ae.layer);
    ops->mem_free(be, m->te.key_valid);
    ops->mem_free(be, m->ae.key_valid);
    ops->mem_free(be, m->key_valid);
    ops->mem_free(be, m->all_valid);
    ops->mem_free(be, m->tok);
    ops->mem_free(be, m->tok_kv);
    free(m->host_b);
    free(m);
}

int dit_n_tensors(const dit *m) {
    return m->n_tensors;
}
const model_tensor *dit_tensors(const dit *m) {
    return m->tensors;
}
size_t dit_n_params(const dit *m) {
    return m->n_params;
}
mm_real *dit_params(dit *m) {
    return m->params;
}
const dit_config *dit_cfg(const dit *m) { return &m->cfg; }
const mm_backend *dit_backend(const dit *m) { return m->be; }
const dit_ops *dit_dit_ops(const dit *m) { return m->dops; }

mm_real *dit_grads(dit *m) {
    return m->grads;
}
void dit_set_grad_hook(dit *m, model_grad_hook fn, void *ctx) {
    m->hook = (model_hook){fn, ctx};
}

void dit_zero_grad(dit *m) {
    model_zero_ops(m->be, 1, &m->grads, &m->n_params);
}

// ---------------------------------------------------------------------------------------
// forward

static void check_input(const dit *m, const dit_input *in) {
    MM_CHECK(m->cfg.tp == 1 || m->cfg.tp_group,
             "dit forward/backward/predict with tp %d needs cfg.tp_group (the model was created "
             "for layout only)",
             m->cfg.tp);
    MM_CHECK(in->B > 0 && in->B <= m->max_B, "batch %d outside [1, max_B=%d] given to dit_create",
             in->B, m->max_B);
    MM_CHECK(in->x_t && in->t && in->tokens && in->has_text && in->audio && in->has_audio,
             "dit_input needs x_t, t, tokens, audio and the has_* flags (PAD / zeros when absent)");
}


// The encoders are replicated: full widths, every rank adds every bias, no collective.
static model_block_run enc_run(const dit *m, int B, int T) {
    return (model_block_run){.be = m->be,  // replicated, no dropout
                             .ops = m->ops,
                             .B = B,
                             .T = T,
                             .P = T,
                             .C = m->C,
                             .NHl = m->NH,
                             .HD = m->HD,
                             .Fl = m->F,
                             .bias_rank = 1};
}

// Encoder blocks and ln_f on e->x0 (B, T, C) with e->key_valid; result in e->out.
static void enc_forward(const dit *m, const enc_w *w, enc_acts *e, int B) {
    const model_block_run run = enc_run(m, B, e->T);
    const mm_real *x = e->x0;
    for (int l = 0; l < m->E; l++) {
        model_block_forward(&run, &w->layer[l], &e->layer[l], x, e->key_valid);
        x = e->layer[l].res3;
    }
    m->ops->layernorm_fwd(m->be, e->out, e->mean, e->rstd, x, w->lnf_g, w->lnf_b, B * e->T, m->C);
}

// How the generator blocks run a call with B samples: this rank's heads and MLP columns, and
// the conditioning, SiLU(c) and key masks that forward_all leaves in the activations.
static dit_block_run block_run(const dit *m, int B) {
    const acts *a = &m->a;
    return (dit_block_run){.be = m->be,
                           .ops = m->ops,
                           .dops = m->dops,
                           .B = B,
                           .N = m->N,
                           .Tc = m->Tc,
                           .C = m->C,
                           .NHl = m->NHl,
                           .HD = m->HD,
                           .Fl = m->Fl,
                           .bias_rank = m->cfg.tp_rank == 0,
                           .tp = m->tp,
                           .sc = a->sc,
                           .cond = a->cond,
                           .self_valid = m->all_valid,
                           .cond_valid = m->key_valid,
                           .ones = a->ones,
                           .zeros = a->zeros};
}

// Timestep embedding: features of t*1000, [cos | sin], then the MLP -> c and SiLU(c).
static void time_forward(dit *m, const dit_input *in) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = m->dops;
    const int B = in->B, C = m->C;
    acts *a = &m->a;
    const weights *w = &m->w;
    dops->time_embed(be, a->tfreq, in->t, B, C);
    ops->matmul_fwd(be, a->th, a->tfreq, w->t1_w, w->t1_b, B, C, C);
    dops->silu_fwd(be, a->ths, a->th, (size_t)B * C);
    ops->matmul_fwd(be, a->c, a->ths, w->t2_w, w->t2_b, B, C, C);
    dops->silu_fwd(be, a->sc, a->c, (size_t)B * C);
}

// The conditioning: both encoders, then cond (B, Tc, C) = [text | audio | null] and its key
// mask; with pool_cond also the pooled condition added into c (and SiLU(c) again).
static void cond_forward(dit *m, const dit_input *in) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = m->dops;
    const int B = in->B, C = m->C, Tt = m->Tt, na = m->n_aud, Tc = m->Tc;
    acts *a = &m->a;
    const weights *w = &m->w;

    // text encoder input: token + position embeddings; keys: non-PAD tokens of a caption (a
    // sample without one embeds PAD everywhere, so its bytes are never read)
    enc_acts *te = &m->te, *ae = &m->ae;
    dops->text_tokens(be, m->tok, te->key_valid, in->tokens, in->has_text, B, Tt, m->V);
    dops->text_embed_fwd(be, te->x0, m->tok_kv, w->wte, w->tpos, m->tok, B, Tt, C, m->V);
    enc_forward(m, &w->text, te, B);

    // audio encoder input (as activations: a->aud_in where they are not mm_real): grouped
    // frames (a reshape unless a tail is dropped: then without each sample's trailing
    // F % audio_group frames, as model_group_audio) -> proj + pos
    const size_t n_mel = (size_t)m->cfg.audio_F * m->cfg.n_mels;
    const mm_real *aud = in->audio;
    if (a->aud_in) {
        ops->act_from_real(be, a->aud_in, in->audio, (size_t)B * n_mel);
        aud = a->aud_in;
    }
    if (m->cfg.audio_F != na * m->cfg.audio_group) {
        ops->copy_rows(be, a->aud, (size_t)na * m->adim, aud, n_mel, (size_t)na * m->adim, B);
        aud = a->aud;
    }
    ops->matmul_fwd(be, ae->x0, aud, w->aud_w, w->aud_b, B * na, m->adim, C);
    dops->add_pos(be, ae->x0, w->apos, B, na, C);
    dops->sample_keys(be, ae->key_valid, in->has_audio, B, na);
    enc_forward(m, &w->audio, ae, B);

    const mm_real *null = w->null;
    if (a->null) {
        ops->act_from_real(be, a->null, w->null, (size_t)C);
        null = a->null;
    }
    ops->copy_rows(be, a->cond, (size_t)Tc * C, te->out, (size_t)Tt * C, (size_t)Tt * C, B);
    ops->copy_rows(be, model_act_at(be, a->cond, (size_t)Tt * C), (size_t)Tc * C, ae->out,
                   (size_t)na * C, (size_t)na * C, B);
    ops->copy_rows(be, model_act_at(be, a->cond, (size_t)(Tt + na) * C), (size_t)Tc * C, null, 0,
                   (size_t)C, B);
    dops->cond_keys(be, m->key_valid, te->key_valid, ae->key_valid, B, Tt, na);

    // pooled condition into c (file top), keys in order so the mean is deterministic
    if (m->cfg.pool_cond) {
        dops->pool_fwd(be, a->pool, a->cond, m->key_valid, B, Tc, C);
        ops->matmul_fwd(be, a->ph, a->pool, w->p1_w, w->p1_b, B, C, C);
        dops->silu_fwd(be, a->phs, a->ph, (size_t)B * C);
        ops->matmul_fwd(be, a->pc, a->phs, w->p2_w, w->p2_b, B, C, C);
        ops->add(be, a->c, a->c, a->pc, (size_t)B * C);
        dops->silu_fwd(be, a->sc, a->c, (size_t)B * C);
    }
}

// Everything up to the model output: leaves pred (B, H, W, c) in out.
static void forward_all(dit *m, const dit_input *in, mm_real *out) {
    m->ops->params_ready(m->be, m->params, m->n_params);
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = m->dops;
    const int B = in->B, C = m->C, N = m->N, BN = B * N;
    const int H = m->cfg.img_h, W = m->cfg.img_w, ic = m->cfg.img_c, p = m->cfg.patch;
    acts *a = &m->a;
    const weights *w = &m->w;

    time_forward(m, in);
    cond_forward(m, in);  // after time_forward: pool_cond adds into c

    // patchify (B, H, W, c) -> (BN, pdim), x_embed, + fixed positions
    const mm_real *x_t = in->x_t;
    if (a->pix) {
        ops->act_from_real(be, a->pix, in->x_t, (size_t)B * H * W * ic);
        x_t = a->pix;
    }
    ops->patchify(be, a->patches, x_t, B, H, W, ic, p);
    ops->matmul_fwd(be, a->x0, a->patches, w->x_w, w->x_b, BN, m->pdim, C);
    dops->add_pos(be, a->x0, m->pos, B, N, C);

    const dit_block_run run = block_run(m, B);
    const mm_real *x = a->x0;
    for (int l = 0; l < m->L; l++) {
        dit_block_forward(&run, &w->layer[l], &a->layer[l], x);
        x = a->layer[l].res3;
    }

    // final layer, then unpatchify (BN, pdim) -> (B, H, W, c), into out as mm_real
    ops->matmul_fwd(be, a->fmod, a->sc, w->fada_w, w->fada_b, B, C, 2 * C);
    dops->ln_modulate_fwd(be, NULL, a->fh, a->fm, a->fmean, a->frstd, x, NULL, NULL, a->ones,
                          a->zeros, a->fmod, model_act_at(be, a->fmod, (size_t)C), 2 * C, B, N, C);
    ops->matmul_fwd(be, a->outp, a->fm, w->fproj_w, w->fproj_b, BN, C, m->pdim);
    ops->unpatchify(be, a->pix ? a->pix : out, a->outp, B, H, W, ic, p);
    if (a->pix) ops->act_to_real(be, out, a->pix, (size_t)B * H * W * ic);
    if (m->cfg.x_pred) dops->xpred(be, out, in->x_t, in->t, 0, B, (size_t)H * W * ic);
}

double dit_forward(dit *m, const dit_input *in) {
    check_input(m, in);
    MM_CHECK(in->target, "dit_forward needs a target (dit_predict computes the output only)");
    const int B = in->B;
    const size_t pix = (size_t)m->cfg.img_h * m->cfg.img_w * m->cfg.img_c;
    forward_all(m, in, m->a.pred);
    m->dops->mse_fwd(m->be, m->a.losses, m->a.pred, in->target, B, pix);
    m->ops->mem_download(m->be, m->host_b, m->a.losses, (size_t)B * sizeof(mm_real));
    double total = 0;
    for (int b = 0; b < B; b++) total += m->host_b[b];
    m->saved_B = B;
    return total;
}

void dit_predict(dit *m, const dit_input *in, mm_real *out) {
    check_input(m, in);
    m->saved_B = 0;  // the activation buffers now hold this input's pass
    forward_all(m, in, out);
}

// ---------------------------------------------------------------------------------------
// backward

// From e->dout (B, T, C): accumulates the encoder's gradients and leaves d(e->x0) in e->dres.
static void enc_backward(const dit *m, const enc_w *w, const enc_w *g, enc_acts *e, int B) {
    const int C = m->C, BT = B * e->T;
    mm_real *const z0[] = {e->bs.dres};
    const size_t n0[] = {(size_t)BT * C};
    model_zero_acts(m->be, 1, z0, n0);
    const mm_real *xl = m->E ? e->layer[m->E - 1].res3 : e->x0;
    m->ops->layernorm_bwd(m->be, e->bs.dres, g->lnf_g, g->lnf_b, e->dout, xl, w->lnf_g, e->mean, e->rstd,
                          BT, C);
    const model_block_run run = enc_run(m, B, e->T);
    for (int l = m->E - 1; l >= 0; l--) {
        const mm_real *x = l ? e->layer[l - 1].res3 : e->x0;
        model_block_backward(&run, &w->layer[l], &g->layer[l], &e->layer[l], x, &e->bs);
    }
}

// loss_scale * the loss -> d(pred) -> d(outp) in patch layout (a->doutp).
static void output_backward(dit *m, const dit_input *in, mm_real loss_scale) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = m->dops;
    const int B = in->B;
    const size_t pix = (size_t)m->cfg.img_h * m->cfg.img_w * m->cfg.img_c;
    acts *a = &m->a;
    for (int b = 0; b < B; b++) m->host_b[b] = loss_scale;
    ops->mem_upload(be, a->dloss, m->host_b, (size_t)B * sizeof(mm_real));
    dops->mse_bwd(be, a->dpred, a->pred, in->target, a->dloss, B, pix);
    if (m->cfg.x_pred) dops->xpred(be, a->dpred, in->x_t, in->t, 1, B, pix);
    const mm_real *dpred = a->dpred;
    if (a->pix) {
        ops->act_from_real(be, a->pix, a->dpred, (size_t)B * pix);
        dpred = a->pix;
    }
    ops->patchify(be, a->doutp, dpred, B, m->cfg.img_h, m->cfg.img_w, m->cfg.img_c, m->cfg.patch);
}

// The final layer from a->doutp: leaves d(last block's output) in a->bs.dres and starts the
// sums over the blocks, d(SiLU(c)) in a->bs.dsc and d(cond) (zeroed here) in a->bs.dcond.
static void final_backward(dit *m, int B) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = m->dops;
    const int C = m->C, N = m->N, BN = B * N;
    const size_t nBNC = (size_t)BN * C;
    acts *a = &m->a;
    const weights *w = &m->w;
    const weights *g = &m->g;
    // dfh is modulate_ln_bwd's scratch
    mm_real *const zb[] = {a->dfm, a->dfmod, a->bs.dres, a->bs.dsc, a->bs.dcond};
    const size_t zn[] = {nBNC, (size_t)B * 2 * C, nBNC, (size_t)B * C, (size_t)B * m->Tc * C};
    model_zero_acts(be, 5, zb, zn);
    const mm_real *xL = a->layer[m->L - 1].res3;
    ops->matmul_bwd(be, a->dfm, g->fproj_w, g->fproj_b, a->doutp, a->fm, w->fproj_w, BN, C, m->pdim);
    dops->modulate_ln_bwd(be, a->bs.dres, a->dfmod, model_act_at(be, a->dfmod, (size_t)C), a->dfh,
                          a->dfm, a->fh, model_act_at(be, a->fmod, (size_t)C), 2 * C, xL, a->ones,
                          a->fmean, a->frstd, B, N, C);
    ops->matmul_bwd(be, a->bs.dsc, g->fada_w, g->fada_b, a->dfmod, a->sc, w->fada_w, B, C, 2 * C);
}

// The timestep MLP (and cond.pool) from d(SiLU(c)), summed over every block and the final
// layer; leaves d(pool) in a->dpool with pool_cond.
static void time_backward(dit *m, int B) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = m->dops;
    const int C = m->C;
    acts *a = &m->a;
    const weights *w = &m->w;
    const weights *g = &m->g;
    {
        mm_real *const zb[] = {a->dc, a->dths, a->dth};
        const size_t zn[] = {(size_t)B * C, (size_t)B * C, (size_t)B * C};
        model_zero_acts(be, 3, zb, zn);
    }
    dops->silu_bwd(be, a->dc, a->c, a->bs.dsc, (size_t)B * C);
    ops->matmul_bwd(be, a->dths, g->t2_w, g->t2_b, a->dc, a->ths, w->t2_w, B, C, C);
    dops->silu_bwd(be, a->dth, a->th, a->dths, (size_t)B * C);
    ops->matmul_bwd(be, NULL, g->t1_w, g->t1_b, a->dth, a->tfreq, w->t1_w, B, C, C);
    if (m->cfg.pool_cond) {  // c = ... + fc2(SiLU(fc1(pool))): d(pool) from the same dc
        mm_real *const zb[] = {a->dphs, a->dph, a->dpool};
        const size_t zn[] = {(size_t)B * C, (size_t)B * C, (size_t)B * C};
        model_zero_acts(be, 3, zb, zn);
        ops->matmul_bwd(be, a->dphs, g->p2_w, g->p2_b, a->dc, a->phs, w->p2_w, B, C, C);
        dops->silu_bwd(be, a->dph, a->ph, a->dphs, (size_t)B * C);
        ops->matmul_bwd(be, a->dpool, g->p1_w, g->p1_b, a->dph, a->pool, w->p1_w, B, C, C);
    }
}

// The conditioning from this rank's share of d(cond) in a->bs.dcond: d(cond) whole, then the
// null token, the audio encoder and the text encoder, firing the grad hook after each.
static void cond_backward(dit *m, const dit_input *in) {
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = m->dops;
    const int B = in->B, C = m->C, Tt = m->Tt, na = m->n_aud, Tc = m->Tc;
    acts *a = &m->a;
    const weights *w = &m->w;
    const weights *g = &m->g;

    model_tp_allreduce(m->be, m->tp, a->bs.dcond, (size_t)B * Tc * C);
    // the mean's share to each valid key, after the sum: d(pool) is replicated, so adding it
    // before the allreduce would count it tp times
    if (m->cfg.pool_cond) dops->pool_bwd(be, a->bs.dcond, a->dpool, m->key_valid, B, Tc, C);
    // the null token: row Tt + na of every sample, samples in order
    dops->pos_bwd(be, g->null, model_act_at(be, a->bs.dcond, (size_t)(Tt + na) * C),
                  (size_t)Tc * C, B, 1, C);
    model_hook_fire(&m->hook, m->null_lo);

    enc_acts *te = &m->te, *ae = &m->ae;
    ops->copy_rows(be, te->dout, (size_t)Tt * C, a->bs.dcond, (size_t)Tc * C, (size_t)Tt * C, B);
    ops->copy_rows(be, ae->dout, (size_t)na * C, model_act_at(be, a->bs.dcond, (size_t)Tt * C),
                   (size_t)Tc * C, (size_t)na * C, B);
    enc_backward(m, &w->audio, &g->audio, ae, B);
    const mm_real *aud = m->cfg.audio_F != na * m->cfg.audio_group ? a->aud
                         : a->aud_in                                ? a->aud_in
                                                                    : in->audio;
    ops->matmul_bwd(be, NULL, g->aud_w, g->aud_b, ae->bs.dres, aud, w->aud_w, B * na, m->adim, C);
    // positions: each column adds the samples in order
    dops->pos_bwd(be, g->apos, ae->bs.dres, (size_t)na * C, B, na, C);
    model_hook_fire(&m->hook, m->audio_lo);

    enc_backward(m, &w->text, &g->text, te, B);
    // token embeddings (the tokens forward embedded, PAD for a sample without a caption) and
    // positions, deterministic without atomics (as transformer.c)
    dops->text_embed_bwd(be, g->wte, g->tpos, te->bs.dres, m->tok, B, Tt, C, m->V);
    model_hook_fire(&m->hook, 0);
}

// in must be the batch of the preceding dit_forward (its target and inputs are read again).
// The stages run, and fire the grad hook, in the order of the file top.
void dit_backward(dit *m, const dit_input *in, mm_real loss_scale) {
    check_input(m, in);
    MM_CHECK(in->target, "dit_backward needs the target of the preceding dit_forward");
    MM_CHECK(m->saved_B == in->B,
             "dit_backward needs the activations of a dit_forward on the same batch (saved %d "
             "samples, got %d; dit_predict discards them)",
             m->saved_B, in->B);
    const mm_backend *be = m->be;
    const model_ops *ops = be->ops;
    const int B = in->B, C = m->C, BN = B * m->N;
    acts *a = &m->a;
    const weights *w = &m->w;
    const weights *g = &m->g;

    output_backward(m, in, loss_scale);
    final_backward(m, B);
    model_hook_fire(&m->hook, m->final_lo);

    const dit_block_run run = block_run(m, B);
    for (int l = m->L - 1; l >= 0; l--) {
        const mm_real *x = l ? a->layer[l - 1].res3 : a->x0;
        dit_block_recompute(&run, m->cfg.recompute, &w->layer[l], &a->layer[l], x);
        dit_block_backward(&run, &w->layer[l], &g->layer[l], &a->layer[l], x, &a->bs);
        model_hook_fire(&m->hook, m->block_lo[l]);
    }

    // x_embed (the positions are fixed): no gradient flows into the image
    ops->matmul_bwd(be, NULL, g->x_w, g->x_b, a->bs.dres, a->patches, w->x_w, BN, m->pdim, C);
    model_hook_fire(&m->hook, m->xemb_lo);

    time_backward(m, B);
    model_hook_fire(&m->hook, m->pool_lo);

    cond_backward(m, in);
}

// ---------------------------------------------------------------------------------------
// FLOPs per sample of one forward + backward of the WHOLE model (not this rank's share),
// llm.c / PaLM convention, elementwise ops not counted:
//   trained matmuls: 6 * MACs (2 forward, 2 input gradient, 2 weight gradient), per token
//     generator blocks over N tokens: qkv 3d^2 + attn.proj d^2 + xattn.q d^2 + xattn.proj d^2
//       + MLP 2 d F; xattn.kv over Tc cond tokens: 2 d^2; ada: 6 d^2 once per sample
//     encoder blocks (text_T and n_aud tokens): 4 d^2 + 2 d F
//     final: ada 2 d^2 once, proj d * pdim over N tokens; t_embed.fc2 d^2 once
//   matmuls without an input gradient, 4 * MACs: x_embed (N d pdim), audio.proj (n_aud d
//     adim), t_embed.fc1 (d^2)
//   attention: 4 T_q T_k d forward (QK^T and AV), twice that backward: 12 T_q T_k d per
//     block, with (T_q, T_k) = (N, N) and (N, Tc) per generator block, (T, T) per encoder block.
double dit_flops_per_sample(const dit *m) {
    double C = m->C, F = m->F, L = m->L, E = m->E, N = m->N, Tc = m->Tc, Tt = m->Tt, na = m->n_aud,
           P = m->pdim;
    double f = 0;
    f += 6.0 * L * (N * (6 * C * C + 2 * C * F) + Tc * 2 * C * C + 6 * C * C);
    f += 12.0 * L * (N * N * C + N * Tc * C);
    f += 6.0 * E * (Tt + na) * (4 * C * C + 2 * C * F);
    f += 12.0 * E * (Tt * Tt + na * na) * C;
    f += 6.0 * (2 * C * C + N * C * P + C * C);
    f += 4.0 * (N * C * P + na * C * m->adim + C * C);
    if (m->cfg.pool_cond) f += 6.0 * 2 * C * C;  // cond.pool.fc1, fc2 once per sample
    return f;
}
