// block.c: the pre-norm self-attention + GELU-MLP transformer block, its tensors, views,
// activations, forward and backward. The prefix LM's trunk (transformer.c) and the DiT's
// text and audio encoders (diffusion.c) are stacks of this block; it exists so the two run
// the same arithmetic from one source. Tensor parallelism (Megatron) is as described at the
// top of transformer.c: qkv and mlp.fc column-parallel, attn.proj and mlp.proj row-parallel
// with an allreduce after each forward, and one after qkv's and fc's input gradient in the
// backward; the replicated row-parallel biases are added by bias_rank only. A replicated
// stack (DiT encoders) runs with tp = 1, bias_rank = 1 and full widths: no collective.
#include <stdio.h>
#include <string.h>

#include "model_drop.h"
#include "model_internal.h"

void model_block_add_tensors(model_table *tb, const char *prefix, int l, int64_t C, int64_t F,
                             int split, int group) {
    // split dims when tp-aware: heads (dim 1 of (3, d, d)), MLP columns (dim 0), and the
    // contraction dim of the row-parallel projections (dim 1)
    const int col = split ? 0 : -1, heads = split ? 1 : -1, row = split ? 1 : -1;
    char nm[64];
#define ADD(suffix, ...)                                              \
    (snprintf(nm, sizeof(nm), "%s.%d.%s", prefix, l, suffix), \
     model_table_add(tb, nm, __VA_ARGS__, group))
    ADD("ln1.g", 1, MODEL_SHAPE(C), -1);
    ADD("ln1.b", 1, MODEL_SHAPE(C), -1);
    ADD("attn.qkv.w", 3, MODEL_SHAPE(3, C, C), heads);
    ADD("attn.qkv.b", 2, MODEL_SHAPE(3, C), heads);
    ADD("attn.proj.w", 2, MODEL_SHAPE(C, C), row);
    ADD("attn.proj.b", 1, MODEL_SHAPE(C), -1);
    ADD("ln2.g", 1, MODEL_SHAPE(C), -1);
    ADD("ln2.b", 1, MODEL_SHAPE(C), -1);
    ADD("mlp.fc.w", 2, MODEL_SHAPE(F, C), col);
    ADD("mlp.fc.b", 1, MODEL_SHAPE(F), col);
    ADD("mlp.proj.w", 2, MODEL_SHAPE(C, F), row);
    ADD("mlp.proj.b", 1, MODEL_SHAPE(C), -1);
#undef ADD
}

void model_block_bind(model_block_w *w, mm_real *buf, const model_tensor *t, int *k) {
#define NEXT() (buf + t[(*k)++].offset)
    w->ln1_g = NEXT();
    w->ln1_b = NEXT();
    w->qkv_w = NEXT();
    w->qkv_b = NEXT();
    w->attproj_w = NEXT();
    w->attproj_b = NEXT();
    w->ln2_g = NEXT();
    w->ln2_b = NEXT();
    w->fc_w = NEXT();
    w->fc_b = NEXT();
    w->mlpproj_w = NEXT();
    w->mlpproj_b = NEXT();
#undef NEXT
}

int model_recompute_kept(model_recompute r) {
    switch (r) {
        case MODEL_RECOMPUTE_NONE:
            return MODEL_PART_ALL;
        case MODEL_RECOMPUTE_ATTENTION:
            return MODEL_PART_ALL & ~MODEL_PART_ATT;
        case MODEL_RECOMPUTE_BLOCK:
            return MODEL_PART_OUT;
    }
    MM_CHECK(0, "recompute mode %d is none of model_recompute's", (int)r);
    return MODEL_PART_ALL;
}

void model_block_carve(model_carver *cv, const mm_backend *be, model_block_acts *a, int parts,
                       const model_block_acts *shared, size_t BT, size_t T, size_t C, size_t NHl,
                       size_t Cl, size_t Fl) {
    // the parts this layer does not carve are the shared set's views (all NULL without one)
    *a = shared ? *shared : (model_block_acts){0};
    const int att = parts & MODEL_PART_ATT, rest = parts & MODEL_PART_REST;
    if (rest) {
        a->ln1 = model_carve(cv, BT * C);
        a->ln1_mean = model_carve_real(cv, BT);
        a->ln1_rstd = model_carve_real(cv, BT);
        a->qkv = model_carve(cv, BT * 3 * Cl);
    }
    if (att) {
        a->att = model_carve_real(cv, be->ops->attention_saved(be, (int)(BT / T), (int)NHl, (int)T));
        a->atty = model_carve(cv, BT * Cl);
    }
    if (rest) {
        a->res2 = model_carve(cv, BT * C);
        a->ln2 = model_carve(cv, BT * C);
        a->ln2_mean = model_carve_real(cv, BT);
        a->ln2_rstd = model_carve_real(cv, BT);
        a->fch = model_carve(cv, BT * Fl);
        a->fcg = model_carve(cv, BT * Fl);
    }
    if (parts & MODEL_PART_OUT) a->res3 = model_carve(cv, BT * C);
}

void model_block_carve_scratch(model_carver *cv, model_block_scratch *s, size_t BT, size_t C,
                               size_t Cl, size_t Fl) {
    s->dres = model_carve(cv, BT * C);
    s->dln1 = model_carve(cv, BT * C);
    s->dln2 = model_carve(cv, BT * C);
    s->datty = model_carve(cv, BT * Cl);
    s->dqkv = model_carve(cv, BT * 3 * Cl);
    s->dfch = model_carve(cv, BT * Fl);
    s->dfcg = model_carve(cv, BT * Fl);
    s->ddrop = NULL;
}

// The dropout of this block at place (model_drop.h MODEL_DROP_*); thr 0 when none.
static model_drop block_drop(const model_block_run *r, int place) {
    const int probs = place == MODEL_DROP_ATTN_P;
    if (!r->drop_keys) return (model_drop){0};
    return (model_drop){.keys = r->drop_keys,
                        .layer = r->layer,
                        .place = place,
                        .thr = probs ? r->attn_thr : r->resid_thr,
                        .scale = probs ? r->attn_scale : r->resid_scale,
                        .head0 = r->head0};
}

void model_block_forward(const model_block_run *r, const model_block_w *w, model_block_acts *a,
                         const mm_real *x, const uint8_t *key_valid) {
    const mm_backend *be = r->be;
    const model_ops *ops = be->ops;
    const int BT = r->B * r->T, C = r->C, Cl = r->NHl * r->HD, Fl = r->Fl;
    const size_t nC = (size_t)BT * C, n1 = (size_t)r->T * C;
    const model_drop dp = block_drop(r, MODEL_DROP_ATTN_P);
    const model_drop da = block_drop(r, MODEL_DROP_ATTN_OUT),
                     dm = block_drop(r, MODEL_DROP_MLP_OUT);
    ops->layernorm_fwd(be, a->ln1, a->ln1_mean, a->ln1_rstd, x, w->ln1_g, w->ln1_b, BT, C);
    ops->matmul_fwd(be, a->qkv, a->ln1, w->qkv_w, w->qkv_b, BT, C, 3 * Cl);
    ops->attention_fwd(be, a->atty, a->att, a->qkv, key_valid, r->B, r->T, r->P, r->NHl, r->HD,
                       &dp);
    // row-parallel: this rank's heads' share of attn.proj, summed over tp
    ops->matmul_fwd(be, a->res2, a->atty, w->attproj_w, r->bias_rank ? w->attproj_b : NULL, BT, Cl,
                    C);
    model_tp_allreduce(r->be, r->tp, a->res2, nC);
    // the branch is whole (replicated) after the sum: every tp rank drops the same elements
    if (da.thr) ops->dropout(be, a->res2, a->res2, &da, r->B, n1);
    ops->add_layernorm_fwd(be, a->res2, a->ln2, a->ln2_mean, a->ln2_rstd, a->res2, x, w->ln2_g,
                           w->ln2_b, BT, C);
    ops->matmul_gelu_fwd(be, a->fch, a->fcg, a->ln2, w->fc_w, w->fc_b, BT, C, Fl);
    ops->matmul_fwd(be, a->res3, a->fcg, w->mlpproj_w, r->bias_rank ? w->mlpproj_b : NULL, BT, Fl,
                    C);
    model_tp_allreduce(r->be, r->tp, a->res3, nC);
    if (dm.thr) ops->dropout(be, a->res3, a->res3, &dm, r->B, n1);
    ops->add(be, a->res3, a->res3, a->res2, nC);
}

void model_block_recompute(const model_block_run *r, model_recompute mode, const model_block_w *w,
                           model_block_acts *a, const mm_real *x, const uint8_t *key_valid) {
    if (mode == MODEL_RECOMPUTE_ATTENTION) {  // from the kept qkv, as the forward ran it
        const model_drop dp = block_drop(r, MODEL_DROP_ATTN_P);  // the same draws again
        r->ops->attention_fwd(r->be, a->atty, a->att, a->qkv, key_valid, r->B, r->T, r->P, r->NHl,
                              r->HD, &dp);
    } else if (mode == MODEL_RECOMPUTE_BLOCK)  // also rewrites the kept res3 with the same values
        model_block_forward(r, w, a, x, key_valid);
}

void model_block_backward(const model_block_run *r, const model_block_w *w,
                          const model_block_w *g, const model_block_acts *a, const mm_real *x,
                          const model_block_scratch *s) {
    const mm_backend *be = r->be;
    const model_ops *ops = be->ops;
    const int BT = r->B * r->T, C = r->C, Cl = r->NHl * r->HD, Fl = r->Fl;
    const size_t nC = (size_t)BT * C, n1 = (size_t)r->T * C;
    const model_drop dp = block_drop(r, MODEL_DROP_ATTN_P);
    const model_drop da = block_drop(r, MODEL_DROP_ATTN_OUT),
                     dm = block_drop(r, MODEL_DROP_MLP_OUT);
    MM_CHECK(!(da.thr || dm.thr) || s->ddrop, "block backward with residual dropout needs ddrop");
    // every activation gradient below is accumulated into: zero them all at once (dfch and
    // its scratch dfcg are matmul_gelu_bwd's to write)
    mm_real *const zb[] = {s->dln2, s->datty, s->dqkv, s->dln1};
    const size_t zn[] = {nC, (size_t)BT * Cl, (size_t)BT * 3 * Cl, nC};
    model_zero_acts(be, 4, zb, zn);
    // dres holds d(res3) (replicated); the residual passes it to res2 unchanged. Every rank
    // computes the replicated mlp.proj.b / attn.proj.b gradients from it in full. Under
    // dropout the branch sees d(res3) through its mask (ddrop); the residual path does not.
    const mm_real *dmlp = s->dres;
    if (dm.thr) {
        ops->dropout(be, s->ddrop, s->dres, &dm, r->B, n1);
        dmlp = s->ddrop;
    }
    ops->matmul_gelu_bwd(be, s->dfch, s->dfcg, g->mlpproj_w, g->mlpproj_b, dmlp, a->fcg, a->fch,
                         w->mlpproj_w, BT, Fl, C);
    ops->matmul_bwd(be, s->dln2, g->fc_w, g->fc_b, s->dfch, a->ln2, w->fc_w, BT, C, Fl);
    model_tp_allreduce(r->be, r->tp, s->dln2, nC);  // fc saw ln2 whole: sum the shares
    ops->layernorm_bwd(be, s->dres, g->ln2_g, g->ln2_b, s->dln2, a->res2, w->ln2_g, a->ln2_mean,
                       a->ln2_rstd, BT, C);
    // dres now holds d(res2)
    const mm_real *datt = s->dres;
    if (da.thr) {
        ops->dropout(be, s->ddrop, s->dres, &da, r->B, n1);
        datt = s->ddrop;
    }
    ops->matmul_bwd(be, s->datty, g->attproj_w, g->attproj_b, datt, a->atty, w->attproj_w, BT, Cl,
                    C);
    ops->attention_bwd(be, s->dqkv, s->datty, a->qkv, a->atty, a->att, r->B, r->T, r->P, r->NHl,
                       r->HD, &dp);
    ops->matmul_bwd(be, s->dln1, g->qkv_w, g->qkv_b, s->dqkv, a->ln1, w->qkv_w, BT, C, 3 * Cl);
    model_tp_allreduce(r->be, r->tp, s->dln1, nC);  // the same for the heads' shares
    ops->layernorm_bwd(be, s->dres, g->ln1_g, g->ln1_b, s->dln1, x, w->ln1_g, a->ln1_mean,
                       a->ln1_rstd, BT, C);
    // dres now holds d(block input)
}
