// test64_gradcheck.c: checks every backward pass against central finite differences, in
// float64 (this file is linked against core/ and model/ compiled with -DMM_F64).
//
// Part 1, ops: each op of model_ops_cpu on small random inputs; the scalar checked is
// f = sum(out * R) for a fixed random R (xent: sum(w_i * loss_i)), so the analytic input
// gradient is the op's backward fed dout = R. Accumulating backwards are called on buffers
// pre-filled with random values, so an op that overwrites instead of adding fails too.
// Part 2, the whole model at tiny dimensions, every parameter tensor, with a sample lacking
// its image and one lacking its audio; then again with dropout, attention dropout and label
// smoothing on (a training input: the masks depend only on the seed, step, sample ids and
// element indices, so f stays a deterministic function of the parameters). Part 3, greedy
// generation is deterministic, batch-independent and emits the argmax of the forward's logits.
//
// Numeric derivative: the fourth-order central difference
//   n = (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h,  h = 1e-3.
// Its truncation error is O(h^4) ~ 1e-12 and its rounding error ~ 1e-16 |f| / h ~ 1e-12, so
// float64 resolves the derivative to ~1e-9 (measured: ops <= ~1e-9, model <= ~6e-9). The
// plain two-point difference cannot: at h = 1e-6 rounding gives ~1e-7, at h = 1e-4 the
// truncation of this very nonlinear tiny model already gives ~5e-6.
// Error per checked entry: |a - n| / max(|a|, |n|, 1e-3 * s), a analytic, n numeric, s the
// largest |n| of that tensor (entries ~0 analytically are held to an absolute 1e-9 * s instead
// of a meaningless relative error). Tolerance 1e-6: ~200x above the measured noise, while a
// real mistake in a backward shows as an error of order 1e-2 .. 1.
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "../model/backend.h"
#include "../model/model.h"
#include "../model/model_drop.h"
#include "gradcheck.h"
#include "test.h"

#ifndef MM_F64
#error "test64_gradcheck must be built with -DMM_F64 (see the Makefile's obj64 rule)"
#endif

static const double TOL = 1e-6;
static const double EPS = 1e-3;  // step h of the finite differences (see above)

static void report(test_counts *tc, const char *what, const char *input, fd_result r) {
    fd_report(tc, 26, what, 14, input, r, TOL);
}

// Runs an accumulating backward on buffers pre-filled with `pre`, returns after - pre.
static void subtract(mm_real *g, const mm_real *pre, size_t n) {
    for (size_t i = 0; i < n; i++) g[i] -= pre[i];
}

static const mm_backend *const be = &mm_backend_cpu;
static const model_ops *const ops = &model_ops_cpu;

// ---------------------------------------------------------------------------------------
// matmul
typedef struct {
    int N, IC, OC;
    mm_real *inp, *w, *b, *out, *R;
} mm_ctx;

static double mm_f(void *p) {
    mm_ctx *c = p;
    ops->matmul_fwd(be, c->out, c->inp, c->w, c->b, c->N, c->IC, c->OC);
    return dot(c->out, c->R, (size_t)c->N * c->OC);
}

static void check_matmul(test_counts *tc, mm_rng *r) {
    mm_ctx c = {5, 4, 3, 0, 0, 0, 0, 0};
    size_t ni = (size_t)c.N * c.IC, nw = (size_t)c.OC * c.IC, no = (size_t)c.N * c.OC;
    c.inp = malloc(ni * sizeof(mm_real));
    c.w = malloc(nw * sizeof(mm_real));
    c.b = malloc(c.OC * sizeof(mm_real));
    c.out = malloc(no * sizeof(mm_real));
    c.R = malloc(no * sizeof(mm_real));
    fill_normal(c.inp, ni, 1, r);
    fill_normal(c.w, nw, 1, r);
    fill_normal(c.b, c.OC, 1, r);
    fill_normal(c.R, no, 1, r);
    mm_real *di = malloc(ni * sizeof(mm_real)), *dw = malloc(nw * sizeof(mm_real)),
            *db = malloc(c.OC * sizeof(mm_real));
    mm_real *pi = malloc(ni * sizeof(mm_real)), *pw = malloc(nw * sizeof(mm_real)),
            *pb = malloc(c.OC * sizeof(mm_real));
    fill_normal(pi, ni, 1, r);
    fill_normal(pw, nw, 1, r);
    fill_normal(pb, c.OC, 1, r);
    memcpy(di, pi, ni * sizeof(mm_real));
    memcpy(dw, pw, nw * sizeof(mm_real));
    memcpy(db, pb, c.OC * sizeof(mm_real));
    mm_f(&c);
    ops->matmul_bwd(be, di, dw, db, c.R, c.inp, c.w, c.N, c.IC, c.OC);
    subtract(di, pi, ni);
    subtract(dw, pw, nw);
    subtract(db, pb, c.OC);
    report(tc, "matmul", "inp", fd_check(mm_f, &c, c.inp, di, ni, NULL, 0, EPS));
    report(tc, "matmul", "w", fd_check(mm_f, &c, c.w, dw, nw, NULL, 0, EPS));
    report(tc, "matmul", "bias", fd_check(mm_f, &c, c.b, db, c.OC, NULL, 0, EPS));
    // without bias: forward must not read one, backward must leave NULL alone
    mm_real *bias = c.b;
    c.b = NULL;
    memset(dw, 0, nw * sizeof(mm_real));
    mm_f(&c);
    ops->matmul_bwd(be, NULL, dw, NULL, c.R, c.inp, c.w, c.N, c.IC, c.OC);
    report(tc, "matmul (no bias, no dinp)", "w", fd_check(mm_f, &c, c.w, dw, nw, NULL, 0, EPS));
    free(c.inp), free(c.w), free(bias), free(pb), free(c.out), free(c.R);
    free(di), free(dw), free(db), free(pi), free(pw);
}

// ---------------------------------------------------------------------------------------
// layernorm
typedef struct {
    int N, C;
    mm_real *x, *g, *b, *out, *mean, *rstd, *R;
} ln_ctx;

static double ln_f(void *p) {
    ln_ctx *c = p;
    ops->layernorm_fwd(be, c->out, c->mean, c->rstd, c->x, c->g, c->b, c->N, c->C);
    return dot(c->out, c->R, (size_t)c->N * c->C);
}

static void check_layernorm(test_counts *tc, mm_rng *r) {
    ln_ctx c = {37, 7, 0, 0, 0, 0, 0, 0, 0};  // 37 rows: more than one ROW_BLOCK
    size_t n = (size_t)c.N * c.C;
    c.x = malloc(n * sizeof(mm_real));
    c.g = malloc(c.C * sizeof(mm_real));
    c.b = malloc(c.C * sizeof(mm_real));
    c.out = malloc(n * sizeof(mm_real));
    c.R = malloc(n * sizeof(mm_real));
    c.mean = malloc(c.N * sizeof(mm_real));
    c.rstd = malloc(c.N * sizeof(mm_real));
    fill_normal(c.x, n, 2, r);
    for (size_t i = 0; i < n; i++) c.x[i] += 0.5;  // non-zero mean
    fill_normal(c.g, c.C, 1, r);
    fill_normal(c.b, c.C, 1, r);
    fill_normal(c.R, n, 1, r);
    mm_real *dx = malloc(n * sizeof(mm_real)), *px = malloc(n * sizeof(mm_real));
    mm_real *dg = malloc(c.C * sizeof(mm_real)), *pg = malloc(c.C * sizeof(mm_real));
    mm_real *db = malloc(c.C * sizeof(mm_real)), *pb = malloc(c.C * sizeof(mm_real));
    fill_normal(px, n, 1, r);
    fill_normal(pg, c.C, 1, r);
    fill_normal(pb, c.C, 1, r);
    memcpy(dx, px, n * sizeof(mm_real));
    memcpy(dg, pg, c.C * sizeof(mm_real));
    memcpy(db, pb, c.C * sizeof(mm_real));
    ln_f(&c);
    ops->layernorm_bwd(be, dx, dg, db, c.R, c.x, c.g, c.mean, c.rstd, c.N, c.C);
    subtract(dx, px, n);
    subtract(dg, pg, c.C);
    subtract(db, pb, c.C);
    report(tc, "layernorm", "x", fd_check(ln_f, &c, c.x, dx, n, NULL, 0, EPS));
    report(tc, "layernorm", "g", fd_check(ln_f, &c, c.g, dg, c.C, NULL, 0, EPS));
    report(tc, "layernorm", "b", fd_check(ln_f, &c, c.b, db, c.C, NULL, 0, EPS));
    free(c.x), free(c.g), free(c.b), free(c.out), free(c.R), free(c.mean), free(c.rstd);
    free(dx), free(px), free(dg), free(pg), free(db), free(pb);
}

// ---------------------------------------------------------------------------------------
// gelu
typedef struct {
    size_t n;
    mm_real *x, *out, *R;
} gelu_ctx;

static double gelu_f(void *p) {
    gelu_ctx *c = p;
    ops->gelu_fwd(be, c->out, c->x, c->n);
    return dot(c->out, c->R, c->n);
}

static void check_gelu(test_counts *tc, mm_rng *r) {
    gelu_ctx c = {61, 0, 0, 0};
    c.x = malloc(c.n * sizeof(mm_real));
    c.out = malloc(c.n * sizeof(mm_real));
    c.R = malloc(c.n * sizeof(mm_real));
    for (size_t i = 0; i < c.n; i++) c.x[i] = -6 + 12.0 * i / (c.n - 1) + 0.01 * mm_rng_normal(r);
    fill_normal(c.R, c.n, 1, r);
    mm_real *dx = malloc(c.n * sizeof(mm_real)), *px = malloc(c.n * sizeof(mm_real));
    fill_normal(px, c.n, 1, r);
    memcpy(dx, px, c.n * sizeof(mm_real));
    ops->gelu_bwd(be, dx, c.x, c.R, c.n);
    subtract(dx, px, c.n);
    report(tc, "gelu", "x", fd_check(gelu_f, &c, c.x, dx, c.n, NULL, 0, EPS));
    free(c.x), free(c.out), free(c.R), free(dx), free(px);
}

// ---------------------------------------------------------------------------------------
// attention
typedef struct {
    int B, T, P, NH, HD;
    mm_real *qkv, *out, *att, *R;
    uint8_t *kv;
    const model_drop *drop;  // NULL: none
} att_ctx;

static double att_f(void *p) {
    att_ctx *c = p;
    ops->attention_fwd(be, c->out, c->att, c->qkv, c->kv, c->B, c->T, c->P, c->NH, c->HD, c->drop);
    return dot(c->out, c->R, (size_t)c->B * c->T * c->NH * c->HD);
}

static void check_attention(test_counts *tc, mm_rng *r) {
    att_ctx c = {3, 7, 3, 2, 3, 0, 0, 0, 0, 0, NULL};
    int C = c.NH * c.HD;
    size_t nq = (size_t)c.B * c.T * 3 * C, no = (size_t)c.B * c.T * C;
    c.qkv = malloc(nq * sizeof(mm_real));
    c.out = malloc(no * sizeof(mm_real));
    c.R = malloc(no * sizeof(mm_real));
    c.att = malloc((size_t)c.B * c.NH * c.T * c.T * sizeof(mm_real));
    // sample 0: all keys valid; sample 1: prefix key 1 missing; sample 2: whole prefix missing
    // (its prefix queries have no key at all)
    uint8_t kv[3 * 7] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1};
    c.kv = kv;
    fill_normal(c.qkv, nq, 1, r);
    fill_normal(c.R, no, 1, r);
    mm_real *d = malloc(nq * sizeof(mm_real)), *pre = malloc(nq * sizeof(mm_real));
    fill_normal(pre, nq, 1, r);
    memcpy(d, pre, nq * sizeof(mm_real));
    att_f(&c);
    ops->attention_bwd(be, d, c.R, c.qkv, c.out, c.att, c.B, c.T, c.P, c.NH, c.HD, NULL);
    subtract(d, pre, nq);
    report(tc, "attention (P=3, masked)", "qkv", fd_check(att_f, &c, c.qkv, d, nq, NULL, 0, EPS));
    // P = 0 (plain causal) and P = T (all bidirectional) take the single-gemm paths
    for (int P = 0; P <= c.T; P += c.T) {
        c.P = P;
        memset(d, 0, nq * sizeof(mm_real));
        att_f(&c);
        ops->attention_bwd(be, d, c.R, c.qkv, c.out, c.att, c.B, c.T, c.P, c.NH, c.HD, NULL);
        report(tc, P ? "attention (P=T)" : "attention (P=0)", "qkv",
               fd_check(att_f, &c, c.qkv, d, nq, NULL, 0, EPS));
    }
    // dropout on the probabilities (p = 0.3, heads as the second and third of a wider layout)
    const uint64_t keys[3] = {11, 22, 33};
    const model_drop dr = {keys, 1, MODEL_DROP_ATTN_P, (uint32_t)(0.3 * (1 << 24)), 1 / 0.7, 1};
    c.drop = &dr;
    c.P = 3;
    memset(d, 0, nq * sizeof(mm_real));
    att_f(&c);
    ops->attention_bwd(be, d, c.R, c.qkv, c.out, c.att, c.B, c.T, c.P, c.NH, c.HD, &dr);
    report(tc, "attention (dropout 0.3)", "qkv", fd_check(att_f, &c, c.qkv, d, nq, NULL, 0, EPS));
    free(c.qkv), free(c.out), free(c.R), free(c.att), free(d), free(pre);
}

// ---------------------------------------------------------------------------------------
// cross-entropy
typedef struct {
    int N, V;
    mm_real *logits, *probs, *loss, *wt;
    int32_t *tg;
    mm_real eps;  // label smoothing
} xe_ctx;

static double xe_f(void *p) {
    xe_ctx *c = p;
    ops->xent_fwd(be, c->loss, c->probs, c->logits, c->tg, c->N, c->V, c->eps);
    return dot(c->loss, c->wt, c->N);
}

static void check_xent(test_counts *tc, mm_rng *r) {
    int32_t tg[6] = {2, -1, 0, 5, -1, 3};
    xe_ctx c = {6, 7, 0, 0, 0, 0, tg, 0};
    size_t n = (size_t)c.N * c.V;
    c.logits = malloc(n * sizeof(mm_real));
    c.probs = malloc(n * sizeof(mm_real));
    c.loss = malloc(c.N * sizeof(mm_real));
    c.wt = malloc(c.N * sizeof(mm_real));
    fill_normal(c.logits, n, 3, r);
    fill_normal(c.wt, c.N, 1, r);
    mm_real *d = malloc(n * sizeof(mm_real));
    xe_f(&c);
    ops->xent_bwd(be, d, c.logits, c.probs, c.tg, c.wt, c.N, c.V, 0);
    report(tc, "xent (2 rows ignored)", "logits", fd_check(xe_f, &c, c.logits, d, n, NULL, 0, EPS));
    int zero = 1;
    for (int j = 0; j < c.V; j++) zero &= d[c.V + j] == 0 && c.loss[1] == 0;
    TEST_CHECK(tc, zero, "xent: ignored row must have loss 0 and gradient 0");
    // label smoothing: the gradient, and the loss against -sum_j q_j log p_j written out with
    // q = (1 - eps) onehot + eps / V and log p_j = l_j - logsumexp(l)
    c.eps = 0.1;
    xe_f(&c);
    ops->xent_bwd(be, d, c.logits, c.probs, c.tg, c.wt, c.N, c.V, c.eps);
    report(tc, "xent (smoothing 0.1)", "logits", fd_check(xe_f, &c, c.logits, d, n, NULL, 0, EPS));
    xe_f(&c);
    double worst = 0;
    for (int i = 0; i < c.N; i++) {
        const mm_real *l = c.logits + (size_t)i * c.V;
        double lse = 0, want = 0;
        for (int j = 0; j < c.V; j++) lse += exp(l[j]);
        lse = log(lse);
        for (int j = 0; j < c.V; j++)
            want -= ((j == tg[i]) * (1 - c.eps) + c.eps / c.V) * (l[j] - lse);
        if (tg[i] < 0) want = 0;
        worst = fmax(worst, fabs(c.loss[i] - want));
    }
    TEST_CHECK(tc, worst < 1e-12, "xent smoothing loss off its definition by %.2e", worst);
    free(c.logits), free(c.probs), free(c.loss), free(c.wt), free(d);
}

// ---------------------------------------------------------------------------------------
// dropout: linear with the mask fixed, so its own backward
typedef struct {
    int B;
    size_t n;
    mm_real *x, *out, *R;
    const model_drop *d;
} drop_ctx;

static double drop_f(void *p) {
    drop_ctx *c = p;
    ops->dropout(be, c->out, c->x, c->d, c->B, c->n);
    return dot(c->out, c->R, (size_t)c->B * c->n);
}

static void check_dropout(test_counts *tc, mm_rng *r) {
    const uint64_t keys[2] = {5, 6};
    const model_drop dr = {keys, 2, MODEL_DROP_MLP_OUT, (uint32_t)(0.4 * (1 << 24)), 1 / 0.6, 0};
    drop_ctx c = {2, 13, 0, 0, 0, &dr};
    const size_t n = (size_t)c.B * c.n;
    c.x = alloc_normal(n, 1, r);
    c.R = alloc_normal(n, 1, r);
    c.out = malloc(n * sizeof(mm_real));
    mm_real *d = malloc(n * sizeof(mm_real));
    ops->dropout(be, d, c.R, &dr, c.B, c.n);
    report(tc, "dropout (0.4)", "x", fd_check(drop_f, &c, c.x, d, n, NULL, 0, EPS));
    free(c.x), free(c.R), free(c.out), free(d);
}

// ---------------------------------------------------------------------------------------
// whole model

enum { MB = 3 };

typedef struct {
    model *m;
    model_config cfg;
    mm_real *image, *audio;
    uint8_t has_image[MB], has_audio[MB];
    int32_t *tokens, *targets;
    uint64_t ids[MB];
    model_input in;
} model_ctx;

static double model_f(void *p) {
    model_ctx *c = p;
    return model_forward(c->m, &c->in, NULL);
}

static void tiny_config(model_config *c) {
    memset(c, 0, sizeof(*c));
    c->d_model = 16;
    c->n_layers = 2;
    c->n_heads = 2;
    c->d_ff = 32;
    c->vocab = DATA_VOCAB;
    c->text_T = 6;
    c->img_h = 8;
    c->img_w = 8;
    c->img_c = 3;
    c->patch = 4;
    c->audio_F = 5;  // 5 frames in groups of 2: 2 audio tokens, the last frame dropped
    c->n_mels = 4;
    c->audio_group = 2;
    c->tp = 1;
    c->tp_rank = 0;
}

// reg: with dropout, attention dropout and label smoothing, fed as a training batch; stem:
// with the conv image stem (8x8 -> 2x2 maps of 6 channels, patches of 1)
static void make_model(model_ctx *c, mm_rng *r, test_counts *tc, int reg, int stem) {
    tiny_config(&c->cfg);
    if (stem) {
        c->cfg.stem = MODEL_STEM_CONV;
        c->cfg.stem_width = 3;
    }
    if (reg) {
        c->cfg.dropout = 0.2;
        c->cfg.attn_dropout = 0.3;
        c->cfg.label_smoothing = 0.1;
    }
    mm_err err = {{0}};
    int rc = model_create(&c->m, &c->cfg, &mm_backend_cpu, MB, 1234, &err);
    TEST_CHECK(tc, rc == 0, "model_create: %s", err.msg);
    if (rc) exit(test_finish(tc));
    // Larger-than-init weights so that attention, GELU and layernorm work far from their
    // linear regimes and every path carries a sizeable gradient.
    mm_real *p = model_params(c->m);
    for (size_t i = 0; i < model_n_params(c->m); i++) p[i] += 0.3 * mm_rng_normal(r);
    const model_config *k = &c->cfg;
    size_t ni = (size_t)MB * k->img_h * k->img_w * k->img_c;
    size_t na = (size_t)MB * k->audio_F * k->n_mels;
    c->image = malloc(ni * sizeof(mm_real));
    c->audio = malloc(na * sizeof(mm_real));
    for (size_t i = 0; i < ni; i++) c->image[i] = 2 * mm_rng_uniform(r) - 1;
    fill_normal(c->audio, na, 1, r);
    c->tokens = malloc((size_t)MB * k->text_T * sizeof(int32_t));
    c->targets = malloc((size_t)MB * k->text_T * sizeof(int32_t));
    // sample 0 full; sample 1 without image; sample 2 without audio. Texts of 5, 3, 4 bytes.
    const int len[MB] = {5, 3, 4};
    for (int b = 0; b < MB; b++) {
        c->has_image[b] = b != 1;
        c->has_audio[b] = b != 2;
        int32_t *tk = c->tokens + b * k->text_T, *tg = c->targets + b * k->text_T;
        tk[0] = DATA_TOK_BOS;
        for (int t = 0; t < k->text_T; t++) {
            if (t < len[b])
                tg[t] = 'a' + (int)mm_rng_below(r, 26);
            else if (t == len[b])
                tg[t] = DATA_TOK_EOS;
            else
                tg[t] = -1;
            if (t + 1 < k->text_T) tk[t + 1] = t < len[b] ? tg[t] : DATA_TOK_PAD;
        }
    }
    for (int b = 0; b < MB; b++) c->ids[b] = 1000 + 7 * (uint64_t)b;
    c->in = (model_input){MB,        c->image,   c->has_image, c->audio,    c->has_audio,
                          c->tokens, c->targets, reg,          reg ? 3 : 0, reg ? c->ids : NULL,
                          0};
}

static void free_model_ctx(model_ctx *c) {
    model_free(c->m);
    free(c->image), free(c->audio), free(c->tokens), free(c->targets);
}

static void check_model(test_counts *tc, model_ctx *c, mm_rng *r, const char *what) {
    model *m = c->m;
    int scored = 0;
    double loss = model_forward(m, &c->in, &scored);
    TEST_CHECK(tc, scored == MB, "n_scored %d, want %d", scored, MB);
    TEST_CHECK(tc, isfinite(loss) && loss > 0, "loss %g", loss);
    model_zero_grad(m);
    model_backward(m, &c->in, 1);
    size_t np = model_n_params(m);
    mm_real *ga = malloc(np * sizeof(mm_real));
    memcpy(ga, model_grads(m), np * sizeof(mm_real));

    // backward accumulates and scales: a second call with loss_scale 0.5 adds half (its
    // classifier gradient computed in the forward, as training does)
    c->in.loss_scale = 0.5;
    model_forward(m, &c->in, NULL);
    model_backward(m, &c->in, 0.5);
    c->in.loss_scale = 0;
    double worst = accumulate_err(model_grads(m), ga, np, 1.5);
    TEST_CHECK(tc, worst < 1e-12, "backward must accumulate loss_scale * grad (err %.2e)", worst);

    const model_tensor *ts = model_tensors(m);
    int used[DATA_VOCAB] = {0};
    for (int i = 0; i < MB * c->cfg.text_T; i++) used[c->tokens[i]] = 1;
    printf("\n  model tensor               checked  max rel err\n");
    double model_worst = fd_check_tensors(tc, what, 26, ts, model_n_tensors(m), model_params(m), ga,
                                          model_f, c, used, r, EPS, TOL);
    printf("  worst over all model tensors: %.2e\n", model_worst);
    free(ga);
}

// Returns the argmax of the logits at text position pos of sample b, using only the loss:
// -log softmax(l)[v] is smallest for the largest logit.
static int argmax_via_loss(model_ctx *c, int b, const int32_t *tokens, int pos) {
    const model_config *k = &c->cfg;
    int32_t tg[16];
    for (int t = 0; t < k->text_T; t++) tg[t] = -1;
    model_input one = {1,
                       c->image + (size_t)b * k->img_h * k->img_w * k->img_c,
                       c->has_image + b,
                       c->audio + (size_t)b * k->audio_F * k->n_mels,
                       c->has_audio + b,
                       tokens,
                       tg,
                       0,
                       0,
                       NULL,
                       0};
    int best = -1;
    double best_loss = INFINITY;
    for (int v = 0; v < k->vocab; v++) {
        tg[pos] = v;
        double l = model_forward(c->m, &one, NULL);
        if (l < best_loss) best_loss = l, best = v;
    }
    return best;
}

static void check_generate(test_counts *tc, model_ctx *c) {
    const int Tt = c->cfg.text_T;
    char a[MB][16], b2[MB][16], one[16];
    model_generate(c->m, &c->in, &a[0][0], 16);
    model_generate(c->m, &c->in, &b2[0][0], 16);
    for (int b = 0; b < MB; b++) {
        TEST_CHECK(tc, strcmp(a[b], b2[b]) == 0, "model_generate is not deterministic");
        printf("  generated[%d] = \"", b);
        for (const char *s = a[b]; *s; s++)
            printf(isprint((unsigned char)*s) ? "%c" : "\\x%02x", (unsigned char)*s);
        printf("\"\n");
        int n = (int)strlen(a[b]);
        TEST_CHECK(tc, n <= Tt - 1, "generated %d bytes > text_T - 1", n);
        // the same sample alone gives the same text
        model_input in1 = c->in;
        in1.B = 1;
        in1.image += (size_t)b * c->cfg.img_h * c->cfg.img_w * c->cfg.img_c;
        in1.audio += (size_t)b * c->cfg.audio_F * c->cfg.n_mels;
        in1.has_image += b;
        in1.has_audio += b;
        model_generate(c->m, &in1, one, 16);
        TEST_CHECK(tc, strcmp(one, a[b]) == 0, "sample %d alone generates \"%s\", batched \"%s\"",
                   b, one, a[b]);
        // greedy: every emitted token is the forward's argmax at its position; a text shorter
        // than text_T - 1 stopped because the argmax was a special token
        int32_t tk[16];
        tk[0] = DATA_TOK_BOS;
        for (int t = 1; t < Tt; t++) tk[t] = t - 1 < n ? (unsigned char)a[b][t - 1] : DATA_TOK_PAD;
        for (int pos = 0; pos < Tt - 1 && pos <= n; pos++) {
            int am = argmax_via_loss(c, b, tk, pos);
            if (pos < n)
                TEST_CHECK(tc, am == (unsigned char)a[b][pos],
                           "sample %d pos %d: generated %d, forward argmax %d", b, pos,
                           (unsigned char)a[b][pos], am);
            else
                TEST_CHECK(tc, am >= 256, "sample %d stopped at %d but argmax is byte %d", b, pos,
                           am);
        }
    }
}

int main(void) {
    test_counts tc = {0, 0};
    mm_rng r;
    mm_rng_init(&r, 42, 0);
    printf("op gradient checks (float64, central differences, tolerance %.0e)\n", TOL);
    printf("  %-26s %-14s %6s  %-8s\n", "op", "input", "n", "max rel err");
    check_matmul(&tc, &r);
    check_layernorm(&tc, &r);
    check_gelu(&tc, &r);
    check_attention(&tc, &r);
    check_xent(&tc, &r);
    check_dropout(&tc, &r);

    model_ctx c;
    make_model(&c, &r, &tc, 0, 0);
    check_model(&tc, &c, &r, "model");
    printf("\ngeneration\n");
    check_generate(&tc, &c);
    free_model_ctx(&c);

    printf("\nwith dropout 0.2, attn_dropout 0.3, label smoothing 0.1 (training input)\n");
    model_ctx cr;
    make_model(&cr, &r, &tc, 1, 0);
    check_model(&tc, &cr, &r, "model (regularised)");
    free_model_ctx(&cr);

    printf("\nwith the conv image stem (model.stem: conv)\n");
    model_ctx cs;
    make_model(&cs, &r, &tc, 0, 1);
    check_model(&tc, &cs, &r, "model (conv stem)");
    free_model_ctx(&cs);
    return test_finish(&tc);
}
