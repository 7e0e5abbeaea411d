// dit_block.c: the DiT's generator block (dit_internal.h): adaLN-Zero modulated
// self-attention, cross-attention to the conditioning tokens and a GELU MLP with gated
// residuals, as tensors, views, activations, forward and backward. It sits beside block.c
// (the plain pre-norm block of the LM and of the DiT's encoders) so that diffusion.c keeps
// only the model around the blocks: embeddings, encoders, the final layer and the order in
// which gradients become ready.
//
// Tensor parallelism (Megatron): attn.qkv, xattn.q, xattn.kv and mlp.fc column-parallel
// (whole heads, MLP columns), attn.proj, xattn.proj and mlp.proj row-parallel with an
// allreduce after each forward, and one after the input gradient of attn.qkv, xattn.q and
// mlp.fc in the backward; the replicated row-parallel biases are added by bias_rank only.
// xattn.kv's input gradient is this rank's heads' share of d(cond): the caller sums it over tp
// once after the last block. The adaLN linear is replicated, so d(mod) and d(sc) are computed
// in full on every rank from replicated values.
#include <stdio.h>

#include "dit_internal.h"

void dit_block_add_tensors(model_table *tb, const char *prefix, int l, int64_t C, int64_t F,
                           int group) {
    char nm[64];
#define ADD(suffix, ...)                                      \
    (snprintf(nm, sizeof(nm), "%s.%d.%s", prefix, l, suffix), \
     model_table_add(tb, nm, __VA_ARGS__, group))
    ADD("ada.w", 2, MODEL_SHAPE(6 * C, C), -1);
    ADD("ada.b", 1, MODEL_SHAPE(6 * C), -1);
    ADD("attn.qkv.w", 3, MODEL_SHAPE(3, C, C), 1);
    ADD("attn.qkv.b", 2, MODEL_SHAPE(3, C), 1);
    ADD("attn.proj.w", 2, MODEL_SHAPE(C, C), 1);
    ADD("attn.proj.b", 1, MODEL_SHAPE(C), -1);
    ADD("xattn.ln.g", 1, MODEL_SHAPE(C), -1);
    ADD("xattn.ln.b", 1, MODEL_SHAPE(C), -1);
    ADD("xattn.q.w", 2, MODEL_SHAPE(C, C), 0);
    ADD("xattn.q.b", 1, MODEL_SHAPE(C), 0);
    ADD("xattn.kv.w", 3, MODEL_SHAPE(2, C, C), 1);
    ADD("xattn.kv.b", 2, MODEL_SHAPE(2, C), 1);
    ADD("xattn.proj.w", 2, MODEL_SHAPE(C, C), 1);
    ADD("xattn.proj.b", 1, MODEL_SHAPE(C), -1);
    ADD("mlp.fc.w", 2, MODEL_SHAPE(F, C), 0);
    ADD("mlp.fc.b", 1, MODEL_SHAPE(F), 0);
    ADD("mlp.proj.w", 2, MODEL_SHAPE(C, F), 1);
    ADD("mlp.proj.b", 1, MODEL_SHAPE(C), -1);
#undef ADD
}

void dit_block_bind(dit_block_w *w, mm_real *buf, const model_tensor *t, int *k) {
#define NEXT() (buf + t[(*k)++].offset)
    w->ada_w = NEXT();
    w->ada_b = NEXT();
    w->qkv_w = NEXT();
    w->qkv_b = NEXT();
    w->attproj_w = NEXT();
    w->attproj_b = NEXT();
    w->xln_g = NEXT();
    w->xln_b = NEXT();
    w->q_w = NEXT();
    w->q_b = NEXT();
    w->kv_w = NEXT();
    w->kv_b = NEXT();
    w->xproj_w = NEXT();
    w->xproj_b = NEXT();
    w->fc_w = NEXT();
    w->fc_b = NEXT();
    w->mproj_w = NEXT();
    w->mproj_b = NEXT();
#undef NEXT
}

void dit_block_carve(model_carver *cv, const mm_backend *be, dit_block_acts *a, int parts,
                     const dit_block_acts *shared, size_t B, size_t N, size_t Tc, size_t C,
                     size_t NHl, size_t Cl, size_t Fl) {
    const size_t BN = B * N;
    // the parts this layer does not carve are the shared set's views (all NULL without one)
    *a = shared ? *shared : (dit_block_acts){0};
    const int att = parts & MODEL_PART_ATT, rest = parts & MODEL_PART_REST;
    if (rest) {
        a->mod = model_carve(cv, B * 6 * C);
        a->h1 = model_carve(cv, BN * C);
        a->mean1 = model_carve_real(cv, BN);
        a->rstd1 = model_carve_real(cv, BN);
        a->m1 = model_carve(cv, BN * C);
        a->qkv = model_carve(cv, BN * 3 * Cl);
    }
    if (att) {
        a->att = model_carve_real(cv, be->ops->attention_saved(be, (int)B, (int)NHl, (int)N));
        a->atty = model_carve(cv, BN * Cl);
    }
    if (rest) {
        a->y1 = model_carve(cv, BN * C);
        a->res1 = model_carve(cv, BN * C);
        a->h2 = model_carve(cv, BN * C);
        a->mean2 = model_carve_real(cv, BN);
        a->rstd2 = model_carve_real(cv, BN);
        a->q = model_carve(cv, BN * Cl);
        a->kv = model_carve(cv, B * Tc * 2 * Cl);
    }
    if (att) {
        a->xatt = model_carve_real(cv, BN * NHl * Tc);
        a->xatty = model_carve(cv, BN * Cl);
    }
    if (rest) {
        a->res2 = model_carve(cv, BN * C);
        a->h3 = model_carve(cv, BN * C);
        a->mean3 = model_carve_real(cv, BN);
        a->rstd3 = model_carve_real(cv, BN);
        a->m3 = model_carve(cv, BN * C);
        a->fch = model_carve(cv, BN * Fl);
        a->fcg = model_carve(cv, BN * Fl);
        a->y3 = model_carve(cv, BN * C);
    }
    if (parts & MODEL_PART_OUT) a->res3 = model_carve(cv, BN * C);
}

void dit_block_carve_scratch(model_carver *cv, dit_block_scratch *s, size_t B, size_t N, size_t Tc,
                             size_t C, size_t Cl, size_t Fl) {
    const size_t BN = B * N;
    s->dres = model_carve(cv, BN * C);
    s->dmod = model_carve(cv, B * 6 * C);
    s->dy3 = model_carve(cv, BN * C);
    s->dfcg = model_carve(cv, BN * Fl);
    s->dfch = model_carve(cv, BN * Fl);
    s->dm3 = model_carve(cv, BN * C);
    s->dh3 = model_carve(cv, BN * C);
    s->dxatty = model_carve(cv, BN * Cl);
    s->dq = model_carve(cv, BN * Cl);
    s->dkv = model_carve(cv, B * Tc * 2 * Cl);
    s->dh2 = model_carve(cv, BN * C);
    s->dy1 = model_carve(cv, BN * C);
    s->datty = model_carve(cv, BN * Cl);
    s->dqkv = model_carve(cv, BN * 3 * Cl);
    s->dm1 = model_carve(cv, BN * C);
    s->dh1 = model_carve(cv, BN * C);
    s->dsc = model_carve(cv, B * C);
    s->dcond = model_carve(cv, B * Tc * C);
}

// Piece k (shift1 scale1 gate1 shift2 scale2 gate2) of mod or dmod (B, 6C): activations, so
// at be->act_bytes per element, with be, mod, dmod and C the calling function's.
#define MOD(k) model_act_at_c(be, mod, (size_t)(k) * C)
#define DMOD(k) model_act_at(be, dmod, (size_t)(k) * C)

void dit_block_forward(const dit_block_run *r, const dit_block_w *w, dit_block_acts *a,
                       const mm_real *x) {
    const mm_backend *be = r->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = r->dops;
    const int B = r->B, N = r->N, BN = B * N, Tc = r->Tc, C = r->C, C6 = 6 * C;
    const int Cl = r->NHl * r->HD, Fl = r->Fl;
    const size_t nC = (size_t)BN * C;
    const mm_real *mod = a->mod;  // (B, 6C)
    ops->matmul_fwd(be, a->mod, r->sc, w->ada_w, w->ada_b, B, C, C6);
    // self-attention branch
    dops->ln_modulate_fwd(be, NULL, a->h1, a->m1, a->mean1, a->rstd1, x, NULL, NULL, r->ones,
                          r->zeros, mod, MOD(1), C6, B, N, C);
    ops->matmul_fwd(be, a->qkv, a->m1, w->qkv_w, w->qkv_b, BN, C, 3 * Cl);
    ops->attention_fwd(be, a->atty, a->att, a->qkv, r->self_valid, B, N, N, r->NHl, r->HD, NULL);
    ops->matmul_fwd(be, a->y1, a->atty, w->attproj_w, r->bias_rank ? w->attproj_b : NULL, BN, Cl, C);
    model_tp_allreduce(r->be, r->tp, a->y1, nC);
    // res1 = x + gate1 * y1, then the cross-attention branch's pre-norm (affine; no
    // modulation, no gate of its own)
    dops->ln_modulate_fwd(be, a->res1, a->h2, NULL, a->mean2, a->rstd2, x, a->y1, MOD(2),
                          w->xln_g, w->xln_b, NULL, NULL, C6, B, N, C);
    ops->matmul_fwd(be, a->q, a->h2, w->q_w, w->q_b, BN, C, Cl);
    ops->matmul_fwd(be, a->kv, r->cond, w->kv_w, w->kv_b, B * Tc, C, 2 * Cl);
    dops->xattn_fwd(be, a->xatty, a->xatt, a->q, a->kv, r->cond_valid, B, N, Tc, r->NHl, r->HD);
    ops->matmul_fwd(be, a->res2, a->xatty, w->xproj_w, r->bias_rank ? w->xproj_b : NULL, BN, Cl, C);
    model_tp_allreduce(r->be, r->tp, a->res2, nC);
    // MLP branch
    dops->ln_modulate_fwd(be, a->res2, a->h3, a->m3, a->mean3, a->rstd3, a->res2, a->res1, NULL,
                          r->ones, r->zeros, MOD(3), MOD(4), C6, B, N, C);
    ops->matmul_gelu_fwd(be, a->fch, a->fcg, a->m3, w->fc_w, w->fc_b, BN, C, Fl);
    ops->matmul_fwd(be, a->y3, a->fcg, w->mproj_w, r->bias_rank ? w->mproj_b : NULL, BN, Fl, C);
    model_tp_allreduce(r->be, r->tp, a->y3, nC);
    dops->gated_add_fwd(be, a->res3, a->res2, a->y3, MOD(5), C6, B, N, C);
}

void dit_block_recompute(const dit_block_run *r, model_recompute mode, const dit_block_w *w,
                         dit_block_acts *a, const mm_real *x) {
    if (mode == MODEL_RECOMPUTE_ATTENTION) {  // from the kept qkv, q and kv, as forward ran them
        const int B = r->B, N = r->N;
        r->ops->attention_fwd(r->be, a->atty, a->att, a->qkv, r->self_valid, B, N, N, r->NHl, r->HD,
                              NULL);
        r->dops->xattn_fwd(r->be, a->xatty, a->xatt, a->q, a->kv, r->cond_valid, B, N, r->Tc,
                           r->NHl, r->HD);
    } else if (mode == MODEL_RECOMPUTE_BLOCK) {  // also rewrites the kept res3, same values
        dit_block_forward(r, w, a, x);
    }
}

void dit_block_backward(const dit_block_run *r, const dit_block_w *w, const dit_block_w *g,
                        const dit_block_acts *a, const mm_real *x, const dit_block_scratch *s) {
    const mm_backend *be = r->be;
    const model_ops *ops = be->ops;
    const dit_ops *dops = r->dops;
    const int B = r->B, N = r->N, BN = B * N, Tc = r->Tc, C = r->C, C6 = 6 * C;
    const int Cl = r->NHl * r->HD, Fl = r->Fl;
    const size_t nC = (size_t)BN * C, nCl = (size_t)BN * Cl;
    const size_t nmod = (size_t)B * C6, nkv = (size_t)B * Tc * 2 * Cl;
    const mm_real *mod = a->mod;
    mm_real *dmod = s->dmod;
    // every activation gradient below is accumulated into: zero them all at once (dfch and
    // its scratch dfcg are matmul_gelu_bwd's to write, dh1 and dh3 modulate_ln_bwd's scratch)
    mm_real *const zb[] = {s->dmod,                                //
                           s->dy3,    s->dm3,                      // MLP
                           s->dxatty, s->dq,    s->dkv,  s->dh2,   // cross-attention
                           s->dy1,    s->datty, s->dqkv, s->dm1};  // self-attention
    const size_t zn[] = {nmod,                                     //
                         nC,   nC,                                 //
                         nCl,  nCl, nkv,     nC,                   //
                         nC,   nCl, 3 * nCl, nC};
    model_zero_acts(be, 11, zb, zn);
    // MLP branch. dres = d(res3); res3 = res2 + gate2 * y3 passes it to res2 unchanged
    dops->gated_add_bwd(be, s->dy3, DMOD(5), s->dres, a->y3, MOD(5), C6, B, N, C);
    ops->matmul_gelu_bwd(be, s->dfch, s->dfcg, g->mproj_w, g->mproj_b, s->dy3, a->fcg, a->fch,
                         w->mproj_w, BN, Fl, C);
    ops->matmul_bwd(be, s->dm3, g->fc_w, g->fc_b, s->dfch, a->m3, w->fc_w, BN, C, Fl);
    // fc saw m3 whole: sum its column shares
    model_tp_allreduce(r->be, r->tp, s->dm3, nC);
    dops->modulate_ln_bwd(be, s->dres, DMOD(3), DMOD(4), s->dh3, s->dm3, a->h3,
                          MOD(4), C6, a->res2, r->ones, a->mean3, a->rstd3, B, N, C);
    // cross-attention branch. dres = d(res2); res2 = res1 + xattn.proj(...)
    ops->matmul_bwd(be, s->dxatty, g->xproj_w, g->xproj_b, s->dres, a->xatty, w->xproj_w, BN, Cl, C);
    dops->xattn_bwd(be, s->dq, s->dkv, s->dxatty, a->q, a->kv, a->xatty, a->xatt, B, N, Tc,
                    r->NHl, r->HD);
    ops->matmul_bwd(be, s->dh2, g->q_w, g->q_b, s->dq, a->h2, w->q_w, BN, C, Cl);
    model_tp_allreduce(r->be, r->tp, s->dh2, nC);
    // this rank's heads' share of d(cond), summed over tp by the caller after the last block
    ops->matmul_bwd(be, s->dcond, g->kv_w, g->kv_b, s->dkv, r->cond, w->kv_w, B * Tc, C, 2 * Cl);
    ops->layernorm_bwd(be, s->dres, g->xln_g, g->xln_b, s->dh2, a->res1, w->xln_g, a->mean2, a->rstd2,
                       BN, C);
    // self-attention branch. dres = d(res1); res1 = x + gate1 * y1
    dops->gated_add_bwd(be, s->dy1, DMOD(2), s->dres, a->y1, MOD(2), C6, B, N, C);
    ops->matmul_bwd(be, s->datty, g->attproj_w, g->attproj_b, s->dy1, a->atty, w->attproj_w, BN, Cl, C);
    ops->attention_bwd(be, s->dqkv, s->datty, a->qkv, a->atty, a->att, B, N, N, r->NHl, r->HD,
                       NULL);
    ops->matmul_bwd(be, s->dm1, g->qkv_w, g->qkv_b, s->dqkv, a->m1, w->qkv_w, BN, C, 3 * Cl);
    model_tp_allreduce(r->be, r->tp, s->dm1, nC);
    dops->modulate_ln_bwd(be, s->dres, dmod, DMOD(1), s->dh1, s->dm1, a->h1, MOD(1), C6, x,
                          r->ones, a->mean1, a->rstd1, B, N, C);
    // dres = d(x); the block's modulation
    ops->matmul_bwd(be, s->dsc, g->ada_w, g->ada_b, dmod, r->sc, w->ada_w, B, C, C6);
#undef DMOD
#undef MOD
}
