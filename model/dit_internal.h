// dit_internal.h: the DiT's generator block (dit_block.c) as diffusion.c uses it, kept out of
// model_internal.h because that header is shared with the LM (transformer.c), which has no
// use for adaLN, cross-attention or the dit_ops table. Not part of the public API
// (diffusion.h); names carry the module prefix all the same.
//
// The block (adaLN-Zero with cross-attention; mod = ada(SiLU(c)) (B, 6C) in DiT's order
// shift1 scale1 gate1 shift2 scale2 gate2):
//   res1 = x + gate1 * attn.proj(selfattn(attn.qkv(modulate(LN(x), shift1, scale1))))
//   res2 = res1 + xattn.proj(crossattn(xattn.q(xattn.ln(res1)), xattn.kv(cond)))
//   res3 = res2 + gate2 * mlp.proj(GELU(mlp.fc(modulate(LN(res2), shift2, scale2))))
// The two modulated LayerNorms have no affine parameters (DiT's elementwise_affine=False).
// tp-aware as dit_block.c's file top describes: heads and MLP columns split, three allreduces
// per pass each way, plus the one for d(cond) that the caller makes after the last block.
//
// Every mm_real pointer below is a view: weights into the model's params / grads, activations
// and scratch into its one activation buffer (model_carve). The caller owns all of it.
#ifndef MM_DIT_INTERNAL_H
#define MM_DIT_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "diffusion.h"
#include "model_internal.h"

// Tensors under "<prefix>.<l>." in table order.
enum { DIT_BLOCK_TENSORS = 18 };

// Views into params or grads (same offsets in both). Cl = NHl*HD, Fl: this rank's widths.
typedef struct {
    mm_real *ada_w;          // (6C, C) replicated
    mm_real *ada_b;          // (6C)
    mm_real *qkv_w;          // (3, Cl, C) packed q|k|v of the local heads
    mm_real *qkv_b;          // (3, Cl)
    mm_real *attproj_w;      // (C, Cl) columns of the local heads
    mm_real *attproj_b;      // (C) replicated
    mm_real *xln_g, *xln_b;  // (C)
    mm_real *q_w;            // (Cl, C)
    mm_real *q_b;            // (Cl)
    mm_real *kv_w;           // (2, Cl, C) packed k|v of the local heads
    mm_real *kv_b;           // (2, Cl)
    mm_real *xproj_w;        // (C, Cl)
    mm_real *xproj_b;        // (C) replicated
    mm_real *fc_w;           // (Fl, C)
    mm_real *fc_b;           // (Fl)
    mm_real *mproj_w;        // (C, Fl)
    mm_real *mproj_b;        // (C) replicated
} dit_block_w;

// Saved activations of one block. Carved for max_B samples; a call with B samples uses them
// as (B, ...).
typedef struct {
    mm_real *mod;                 // (B, 6C) ada output: shift1 scale1 gate1 shift2 scale2 gate2
    mm_real *h1, *mean1, *rstd1;  // (B, N, C) LN(x) (no affine); (B, N), (B, N)
    mm_real *m1;                  // (B, N, C) modulated
    mm_real *qkv;                 // (B, N, 3, NHl, HD)
    mm_real *att;                 // ops->attention_saved(be, B, NHl, N)
    mm_real *atty;                // (B, N, Cl) self-attention output before attn.proj
    mm_real *y1;                  // (B, N, C) attn.proj output, whole after the allreduce
    mm_real *res1;                // (B, N, C) x + gate1 * y1
    mm_real *h2, *mean2, *rstd2;  // (B, N, C) xattn.ln output; (B, N), (B, N)
    mm_real *q;                   // (B, N, Cl)
    mm_real *kv;                  // (B, Tc, 2, NHl, HD)
    mm_real *xatt;                // (B, NHl, N, Tc) cross-attention weights
    mm_real *xatty;               // (B, N, Cl) cross-attention output before xattn.proj
    mm_real *res2;                // (B, N, C) res1 + xattn.proj output
    mm_real *h3, *mean3, *rstd3;  // (B, N, C) LN(res2) (no affine); (B, N), (B, N)
    mm_real *m3;                  // (B, N, C) modulated
    mm_real *fch, *fcg;           // (B, N, Fl) mlp.fc output, before / after GELU
    mm_real *y3;                  // (B, N, C) mlp.proj output, whole after the allreduce
    mm_real *res3;                // (B, N, C) res2 + gate2 * y3 = next block's input
} dit_block_acts;

// Backward scratch shared by all blocks of the stack (not kept between calls). Each branch
// has its own activation gradients, so that the block zeroes all it accumulates into once, at
// its start.
typedef struct {
    mm_real *dres;  // (B, N, C) gradient of the residual stream: in d(res3), out d(x)
    mm_real *dmod;  // (B, 6C) d(mod)
    // MLP branch
    mm_real *dy3;          // (B, N, C)
    mm_real *dfcg, *dfch;  // (B, N, Fl)
    mm_real *dm3;          // (B, N, C) allreduced under tp
    mm_real *dh3;          // (B, N, C)
    // cross-attention branch
    mm_real *dxatty;  // (B, N, Cl)
    mm_real *dq;      // (B, N, Cl)
    mm_real *dkv;     // (B, Tc, 2, NHl, HD)
    mm_real *dh2;     // (B, N, C) d(xattn.ln output), allreduced under tp
    // self-attention branch
    mm_real *dy1;    // (B, N, C)
    mm_real *datty;  // (B, N, Cl)
    mm_real *dqkv;   // (B, N, 3, NHl, HD)
    mm_real *dm1;    // (B, N, C) allreduced under tp
    mm_real *dh1;    // (B, N, C)
    // accumulated over every block (the caller zeroes them before the first)
    mm_real *dsc;    // (B, C) d(SiLU(c))
    mm_real *dcond;  // (B, Tc, C) this rank's heads' share of d(cond); the caller sums it
} dit_block_scratch;

// How the stack runs in this call: ops, shapes, tp placement, and what every block reads.
// The pointers are not owned.
typedef struct {
    const mm_backend *be;   // not owned
    const model_ops *ops;  // be->ops
    const dit_ops *dops;
    int B, N, Tc;        // samples, image tokens, cond tokens
    int C, NHl, HD, Fl;  // model width; local heads, head dim; local MLP width
    int bias_rank;       // 1 on the one rank that adds the row-parallel biases (tp rank 0)
    const mm_coll *tp;   // the tp group on be; NULL: tp 1, no collective
    const mm_real *sc;            // (B, C) SiLU(c), the input of every ada linear
    const mm_real *cond;          // (B, Tc, C) conditioning tokens
    const uint8_t *self_valid;    // (B, N) all 1: every image token is a key
    const uint8_t *cond_valid;    // (B, Tc) the cross-attention's keys
    const mm_real *ones, *zeros;  // (C) gain and bias of the non-affine LayerNorms
} dit_block_run;

// Adds the block's 18 tensors named "<prefix>.<l>.<suffix>" (e.g. "blocks.3.xattn.q.w"),
// split Megatron-style over tp (heads, MLP columns; the adaLN linear replicated).
void dit_block_add_tensors(model_table *tb, const char *prefix, int l, int64_t C, int64_t F,
                           int group);
// Points w's views at buf + t[*k..*k+18).offset and advances *k (table order).
void dit_block_bind(dit_block_w *w, mm_real *buf, const model_tensor *t, int *k);
// Carves the parts (model_internal.h MODEL_PART_*; the attention's are both attentions'
// weights and outputs) of one block's activations for B = max_B samples (ops: the attention's
// saved size); every other view is shared's (NULL shared: left NULL).
void dit_block_carve(model_carver *cv, const mm_backend *be, dit_block_acts *a, int parts,
                     const dit_block_acts *shared, size_t B, size_t N, size_t Tc, size_t C,
                     size_t NHl, size_t Cl, size_t Fl);
void dit_block_carve_scratch(model_carver *cv, dit_block_scratch *s, size_t B, size_t N, size_t Tc,
                             size_t C, size_t Cl, size_t Fl);

// Forward of one block on x (B, N, C); result in a->res3. Collective over r->tp when it is
// set.
void dit_block_forward(const dit_block_run *r, const dit_block_w *w, dit_block_acts *a,
                       const mm_real *x);
// Under recompute mode `mode`, refills what a (carved with model_recompute_kept(mode))
// shares with the other layers by running that part of the forward again from what it keeps,
// x and r's conditioning: nothing for none, the self- and the cross-attention for attention,
// the whole block (its collectives included: every tp rank calls it in the same order) for
// block. Call right before dit_block_backward of the same layer.
void dit_block_recompute(const dit_block_run *r, model_recompute mode, const dit_block_w *w,
                         dit_block_acts *a, const mm_real *x);
// Backward of one block whose forward input was x: from s->dres = d(res3) ACCUMULATES the
// weight gradients into g, and d(r->sc), d(r->cond) into s->dsc, s->dcond; leaves d(x) in
// s->dres. Uses (and zeroes) the rest of s.
void dit_block_backward(const dit_block_run *r, const dit_block_w *w, const dit_block_w *g,
                        const dit_block_acts *a, const mm_real *x, const dit_block_scratch *s);

#endif  // MM_DIT_INTERNAL_H
