// test64_dit_gradcheck.c: checks every backward pass of the diffusion model (model/diffusion.c
// and the dit_ops of model/ops_dit_cpu.c) against central finite differences, in float64
// (linked against core/, comm/ and model/ compiled with -DMM_F64).
//
// Part 1, the new ops on small random inputs; the scalar checked is f = sum(out * R) for a
// fixed random R (mse: sum(w_b * loss_b)), so the analytic input gradient is the op's
// backward fed dout = R. Accumulating backwards are called on buffers pre-filled with random
// values (and the result minus that), so an op that overwrites instead of adding fails too.
// Part 2, the whole DiT at tiny dimensions, every parameter tensor, with samples lacking the
// caption, the audio, or both. adaLN-Zero makes most gradients exactly zero at init (zero
// gates: every block is the identity; zero final.proj: nothing flows back at all), which
// would check nothing, so every parameter is first moved by N(0, 0.3^2).
//
// Numeric derivative and error measure as tests/test64_gradcheck.c: the fourth-order central
// difference n = (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h, h = 1e-3; per entry
// |a - n| / max(|a|, |n|, 1e-3 * s), s the largest |n| of that tensor. Tolerance 1e-6, far
// above float64's resolution of this difference (~1e-9) and far below a real mistake in a
// backward (errors of order 1e-2 .. 1).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "../model/backend.h"
#include "../model/diffusion.h"
#include "gradcheck.h"
#include "test.h"

#ifndef MM_F64
#error "test64_dit_gradcheck must be built with -DMM_F64 (see the Makefile's obj64 rule)"
#endif

static const double TOL = 1e-6;
static const double EPS = 1e-3;

static const mm_backend *const be = &mm_backend_cpu;
static const dit_ops *const dops = &dit_ops_cpu;

static void report(test_counts *tc, const char *what, const char *input, fd_result r) {
    fd_report(tc, 30, what, 8, input, r, TOL);
}

// A gradient buffer pre-filled with random values: pre keeps them for unfill.
typedef struct {
    mm_real *d, *pre;
    size_t n;
} acc_buf;

static acc_buf acc_new(size_t n, mm_rng *r) {
    acc_buf b = {malloc(n * sizeof(mm_real)), alloc_normal(n, 1, r), n};
    memcpy(b.d, b.pre, n * sizeof(mm_real));
    return b;
}

// Leaves only what the backward added.
static void acc_done(acc_buf *b) {
    for (size_t i = 0; i < b->n; i++) b->d[i] -= b->pre[i];
}

static void acc_free(acc_buf *b) {
    free(b->d), free(b->pre);
}

// ---------------------------------------------------------------------------------------
// silu
typedef struct {
    size_t n;
    mm_real *x, *out, *R;
} silu_ctx;

static double silu_f(void *p) {
    silu_ctx *c = p;
    dops->silu_fwd(be, c->out, c->x, c->n);
    return dot(c->out, c->R, c->n);
}

static void check_silu(test_counts *tc, mm_rng *r) {
    silu_ctx c = {41, 0, 0, 0};
    c.x = malloc(c.n * sizeof(mm_real));
    for (size_t i = 0; i < c.n; i++) c.x[i] = -8 + 16.0 * i / (c.n - 1) + 0.01 * mm_rng_normal(r);
    c.out = malloc(c.n * sizeof(mm_real));
    c.R = alloc_normal(c.n, 1, r);
    acc_buf dx = acc_new(c.n, r);
    dops->silu_bwd(be, dx.d, c.x, c.R, c.n);
    acc_done(&dx);
    report(tc, "silu", "x", fd_check(silu_f, &c, c.x, dx.d, c.n, NULL, 0, EPS));
    free(c.x), free(c.out), free(c.R), acc_free(&dx);
}

// ---------------------------------------------------------------------------------------
// modulate / gated_add: (B, N, C) with per-sample vectors packed at stride sc = 3C
enum { MB_ = 3, MN = 5, MC = 7, MSC = 3 * MC };

typedef struct {
    mm_real *x, *y, *mods, *out, *R;  // mods (B, 3C): shift | scale | gate
} mod_ctx;

static double modulate_f(void *p) {
    mod_ctx *c = p;
    dops->modulate_fwd(be, c->out, c->x, c->mods, c->mods + MC, MSC, MB_, MN, MC);
    return dot(c->out, c->R, (size_t)MB_ * MN * MC);
}

static double gated_f(void *p) {
    mod_ctx *c = p;
    size_t n = (size_t)MB_ * MN * MC;
    dops->gated_add_fwd(be, c->out, c->x, c->y, c->mods + 2 * MC, MSC, MB_, MN, MC);
    return dot(c->out, c->R, n);
}

static void check_modulate_gated(test_counts *tc, mm_rng *r) {
    size_t n = (size_t)MB_ * MN * MC, nm = (size_t)MB_ * MSC;
    mod_ctx c = {alloc_normal(n, 1, r), alloc_normal(n, 1, r), alloc_normal(nm, 1, r),
                 malloc(n * sizeof(mm_real)), alloc_normal(n, 1, r)};
    acc_buf dx = acc_new(n, r), dmods = acc_new(nm, r), dy = acc_new(n, r);
    dops->modulate_bwd(be, dx.d, dmods.d, dmods.d + MC, c.R, c.x, c.mods + MC, MSC, MB_, MN, MC);
    acc_done(&dx);
    acc_done(&dmods);
    report(tc, "modulate (stride 3C)", "x", fd_check(modulate_f, &c, c.x, dx.d, n, NULL, 0, EPS));
    // shift and scale; the gate third of mods is not an input of modulate (gradient 0)
    report(tc, "modulate (stride 3C)", "shift|scale",
           fd_check(modulate_f, &c, c.mods, dmods.d, nm, NULL, 0, EPS));

    memcpy(dmods.d, dmods.pre, nm * sizeof(mm_real));
    dops->gated_add_bwd(be, dy.d, dmods.d + 2 * MC, c.R, c.y, c.mods + 2 * MC, MSC, MB_, MN, MC);
    acc_done(&dy);
    acc_done(&dmods);
    // dx passes through: d f / d x = R
    report(tc, "gated_add (stride 3C)", "x", fd_check(gated_f, &c, c.x, c.R, n, NULL, 0, EPS));
    report(tc, "gated_add (stride 3C)", "y", fd_check(gated_f, &c, c.y, dy.d, n, NULL, 0, EPS));
    report(tc, "gated_add (stride 3C)", "gate",
           fd_check(gated_f, &c, c.mods, dmods.d, nm, NULL, 0, EPS));
    free(c.x), free(c.y), free(c.mods), free(c.out), free(c.R);
    acc_free(&dx), acc_free(&dmods), acc_free(&dy);
}

// ---------------------------------------------------------------------------------------
// cross-attention
typedef struct {
    int B, Tq, Tk, NH, HD;
    mm_real *q, *kv, *out, *att, *R;
    const uint8_t *valid;
} xa_ctx;

static double xa_f(void *p) {
    xa_ctx *c = p;
    dops->xattn_fwd(be, c->out, c->att, c->q, c->kv, c->valid, c->B, c->Tq, c->Tk, c->NH, c->HD);
    return dot(c->out, c->R, (size_t)c->B * c->Tq * c->NH * c->HD);
}

static void check_xattn(test_counts *tc, mm_rng *r) {
    // sample 0: every key; sample 1: keys 1 and 3 masked; sample 2: only its last key
    static const uint8_t valid[3 * 5] = {1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1};
    xa_ctx c = {3, 4, 5, 2, 3, 0, 0, 0, 0, 0, valid};
    int C = c.NH * c.HD;
    size_t nq = (size_t)c.B * c.Tq * C, nkv = (size_t)c.B * c.Tk * 2 * C;
    c.q = alloc_normal(nq, 1, r);
    c.kv = alloc_normal(nkv, 1, r);
    c.out = malloc(nq * sizeof(mm_real));
    c.att = malloc((size_t)c.B * c.NH * c.Tq * c.Tk * sizeof(mm_real));
    c.R = alloc_normal(nq, 1, r);
    acc_buf dq = acc_new(nq, r), dkv = acc_new(nkv, r);
    xa_f(&c);
    dops->xattn_bwd(be, dq.d, dkv.d, c.R, c.q, c.kv, c.out, c.att, c.B, c.Tq, c.Tk, c.NH, c.HD);
    acc_done(&dq);
    acc_done(&dkv);
    report(tc, "xattn (masked, 1-key sample)", "q", fd_check(xa_f, &c, c.q, dq.d, nq, NULL, 0, EPS));
    report(tc, "xattn (masked, 1-key sample)", "kv", fd_check(xa_f, &c, c.kv, dkv.d, nkv, NULL, 0, EPS));
    // a masked key gets exactly no gradient and no weight
    int masked_zero = 1;
    for (int h = 0; h < c.NH; h++)
        for (int i = 0; i < c.Tq; i++)
            masked_zero &= c.att[((size_t)(1 * c.NH + h) * c.Tq + i) * c.Tk + 1] == 0;
    for (int j = 0; j < 2 * C; j++) masked_zero &= dkv.d[(size_t)(1 * c.Tk + 3) * 2 * C + j] == 0;
    TEST_CHECK(tc, masked_zero, "xattn: masked keys must get probability 0 and gradient 0");
    free(c.q), free(c.kv), free(c.out), free(c.att), free(c.R), acc_free(&dq), acc_free(&dkv);
}

// ---------------------------------------------------------------------------------------
// mse
typedef struct {
    int B;
    size_t n;
    mm_real *pred, *target, *loss, *w;
} mse_ctx;

static double mse_f(void *p) {
    mse_ctx *c = p;
    dops->mse_fwd(be, c->loss, c->pred, c->target, c->B, c->n);
    return dot(c->loss, c->w, (size_t)c->B);
}

static void check_mse(test_counts *tc, mm_rng *r) {
    mse_ctx c = {3, 10, 0, 0, 0, 0};
    size_t n = (size_t)c.B * c.n;
    c.pred = alloc_normal(n, 1, r);
    c.target = alloc_normal(n, 1, r);
    c.loss = malloc((size_t)c.B * sizeof(mm_real));
    c.w = alloc_normal((size_t)c.B, 1, r);
    mm_real *d = alloc_normal(n, 1, r);  // overwritten, not accumulated
    dops->mse_bwd(be, d, c.pred, c.target, c.w, c.B, c.n);
    report(tc, "mse (per-sample mean)", "pred", fd_check(mse_f, &c, c.pred, d, n, NULL, 0, EPS));
    free(c.pred), free(c.target), free(c.loss), free(c.w), free(d);
}

// ---------------------------------------------------------------------------------------
// xpred: the estimate y -> (x_t - y) / max(t, TMIN) per sample, in place, so f copies y
typedef struct {
    int B;
    size_t n;
    mm_real *y, *x_t, *t, *out, *R;
} xp_ctx;

static double xp_f(void *p) {
    xp_ctx *c = p;
    memcpy(c->out, c->y, (size_t)c->B * c->n * sizeof(mm_real));
    dops->xpred(be, c->out, c->x_t, c->t, 0, c->B, c->n);
    return dot(c->out, c->R, (size_t)c->B * c->n);
}

static void check_xpred(test_counts *tc, mm_rng *r) {
    mm_real t[3] = {0.7, 0.05, 0.01};  // the last below DIT_XPRED_TMIN: divided by TMIN
    xp_ctx c = {3, 7, 0, 0, t, 0, 0};
    size_t n = (size_t)c.B * c.n;
    c.y = alloc_normal(n, 1, r);
    c.x_t = alloc_normal(n, 1, r);
    c.R = alloc_normal(n, 1, r);
    c.out = malloc(n * sizeof(mm_real));
    mm_real *d = malloc(n * sizeof(mm_real));
    memcpy(d, c.R, n * sizeof(mm_real));
    dops->xpred(be, d, c.x_t, c.t, 1, c.B, c.n);
    report(tc, "xpred (t 0.7, 0.05, 0.01)", "y", fd_check(xp_f, &c, c.y, d, n, NULL, 0, EPS));
    // the velocity it gives: x_t - t v recovers the estimate where t >= TMIN
    xp_f(&c);
    double worst = 0;
    for (size_t i = 0; i < 2 * c.n; i++)
        worst = fmax(worst, fabs(c.x_t[i] - t[i / c.n] * c.out[i] - c.y[i]));
    TEST_CHECK(tc, worst < 1e-12, "xpred: x_t - t v differs from the estimate by %.2e", worst);
    free(c.y), free(c.x_t), free(c.R), free(c.out), free(d);
}

// ---------------------------------------------------------------------------------------
// whole model

enum { GB = 4 };

typedef struct {
    dit *m;
    dit_config cfg;
    mm_real *x_t, *t, *audio, *target;
    int32_t *tokens;
    uint8_t has_text[GB], has_audio[GB];
    dit_input in;
} dit_ctx;

static double dit_f(void *p) {
    dit_ctx *c = p;
    return dit_forward(c->m, &c->in);
}

static void tiny_config(dit_config *c) {
    memset(c, 0, sizeof(*c));
    c->d_model = 16;
    c->n_layers = 2;
    c->n_heads = 2;
    c->d_ff = 32;
    c->img_h = 8;
    c->img_w = 8;
    c->img_c = 3;
    c->patch = 4;
    c->vocab = DATA_VOCAB;
    c->text_T = 6;
    c->audio_F = 5;  // groups of 2: 2 audio tokens, the last frame dropped
    c->n_mels = 4;
    c->audio_group = 2;
    c->enc_layers = 1;
    c->tp = 1;
}

// pool: cfg.pool_cond (the pooled condition also feeds adaLN); x_pred: cfg.x_pred
static void make_dit(dit_ctx *c, mm_rng *r, test_counts *tc, int pool, int x_pred) {
    tiny_config(&c->cfg);
    c->cfg.pool_cond = pool;
    c->cfg.x_pred = x_pred;
    const dit_config *k = &c->cfg;
    mm_err err = {{0}};
    int rc = dit_create(&c->m, k, &mm_backend_cpu, GB, 77, &err);
    TEST_CHECK(tc, rc == 0, "dit_create: %s", err.msg);
    if (rc) exit(test_finish(tc));
    mm_real *p = dit_params(c->m);
    for (size_t i = 0; i < dit_n_params(c->m); i++) p[i] += 0.3 * mm_rng_normal(r);
    size_t pix = (size_t)GB * k->img_h * k->img_w * k->img_c;
    c->x_t = alloc_normal(pix, 1, r);
    c->target = alloc_normal(pix, 1, r);
    c->audio = alloc_normal((size_t)GB * k->audio_F * k->n_mels, 1, r);
    c->t = malloc(GB * sizeof(mm_real));
    c->tokens = malloc((size_t)GB * k->text_T * sizeof(int32_t));
    // sample 0 full; 1 without caption; 2 without audio; 3 without both. Captions of 4, 2, 3,
    // 5 bytes then PAD.
    const int len[GB] = {4, 2, 3, 5};
    for (int b = 0; b < GB; b++) {
        c->t[b] = mm_rng_uniform(r);
        c->has_text[b] = b == 0 || b == 2;
        c->has_audio[b] = b <= 1;
        for (int t = 0; t < k->text_T; t++)
            c->tokens[b * k->text_T + t] = t == 0        ? DATA_TOK_BOS
                                           : t <= len[b] ? 'a' + (int)mm_rng_below(r, 26)
                                                         : DATA_TOK_PAD;
    }
    c->in =
        (dit_input){GB, c->x_t, c->t, c->tokens, c->has_text, c->audio, c->has_audio, c->target};
}

static void free_dit_ctx(dit_ctx *c) {
    dit_free(c->m);
    free(c->x_t), free(c->t), free(c->audio), free(c->target), free(c->tokens);
}

static void check_dit(test_counts *tc, dit_ctx *c, mm_rng *r) {
    dit *m = c->m;
    double loss = dit_forward(m, &c->in);
    TEST_CHECK(tc, isfinite(loss) && loss > 0, "loss %g", loss);
    dit_zero_grad(m);
    dit_backward(m, &c->in, 1);
    size_t np = dit_n_params(m);
    mm_real *ga = malloc(np * sizeof(mm_real));
    memcpy(ga, dit_grads(m), np * sizeof(mm_real));

    // backward accumulates and scales: a second call with loss_scale 0.5 adds half
    dit_forward(m, &c->in);
    dit_backward(m, &c->in, 0.5);
    double worst = accumulate_err(dit_grads(m), ga, np, 1.5);
    TEST_CHECK(tc, worst < 1e-12, "backward must accumulate loss_scale * grad (err %.2e)", worst);

    // token rows the gradient reaches: non-PAD tokens of samples with a caption
    int used[DATA_VOCAB] = {0};
    for (int b = 0; b < GB; b++)
        for (int t = 0; t < c->cfg.text_T && c->has_text[b]; t++)
            if (c->tokens[b * c->cfg.text_T + t] != DATA_TOK_PAD)
                used[c->tokens[b * c->cfg.text_T + t]] = 1;
    const model_tensor *ts = dit_tensors(m);
    printf("\n  %-28s checked  max rel err\n", "DiT tensor");
    double model_worst = fd_check_tensors(tc, "dit", 28, ts, dit_n_tensors(m), dit_params(m), ga,
                                          dit_f, c, used, r, EPS, TOL);
    printf("  worst over all DiT tensors: %.2e\n", model_worst);
    free(ga);
}

int main(void) {
    test_counts tc = {0, 0};
    mm_rng r;
    mm_rng_init(&r, 4242, 0);
    printf("DiT op gradient checks (float64, central differences, tolerance %.0e)\n", TOL);
    printf("  %-30s %-8s %6s  %s\n", "op", "input", "n", "max rel err");
    check_silu(&tc, &r);
    check_modulate_gated(&tc, &r);
    check_xattn(&tc, &r);
    check_mse(&tc, &r);
    check_xpred(&tc, &r);
    for (int v = 0; v < 3; v++) {  // plain, pool_cond, x_pred
        dit_ctx c;
        make_dit(&c, &r, &tc, v == 1, v == 2);
        if (v == 1) printf("\n  with pool_cond (mean cond token -> MLP -> c):");
        if (v == 2) printf("\n  with x_pred (the network estimates x0; the loss is on v):");
        check_dit(&tc, &c, &r);
        free_dit_ctx(&c);
    }
    return test_finish(&tc);
}
