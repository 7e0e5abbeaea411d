// test_recompute.c: activation recomputation (model.h model_recompute) for both model kinds on
// the CPU: the planned activation buffer shrinks (attention < none, block < attention, in
// total and per layer, parameters unchanged), and a model that recomputes gives BITWISE the
// losses, gradients and grad-hook stages of one that does not, over several steps (the CPU's
// ops are deterministic, and the recomputation runs the same ops on the same saved inputs).
// The transformer is checked again with dropout, attention dropout and label smoothing on (a
// training batch, a new step each time): recomputation redraws the same masks from their
// counters, so the equality stays bitwise. A bad mode is refused by create and by the plan. tp 2 and the CUDA backend are checked
// through the trainer by tests/recompute.sh.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "../model/backend.h"
#include "../model/diffusion.h"
#include "../model/model.h"
#include "test.h"

enum { SB = 3, STEPS = 3, N_MODES = 3, MAX_HOOK = 64 };

static const char *const mode_name[N_MODES] = {"none", "attention", "block"};

// The grad-hook offsets of one backward, in firing order.
typedef struct {
    size_t lo[MAX_HOOK];
    int n;
} hook_rec;

static void record(void *ctx, size_t lo) {
    hook_rec *h = ctx;
    if (h->n < MAX_HOOK) h->lo[h->n] = lo;
    h->n++;
}

// What one mode's run left, step by step, and its plan: what both kinds' checks compare.
typedef struct {
    double loss[STEPS];
    mm_real *grads[STEPS];  // (n_params) each, owned
    hook_rec hooks[STEPS];
    model_mem mem;
} run_rec;

static void free_rec(run_rec *r) {
    for (int s = 0; s < STEPS; s++) free(r->grads[s]);
}

// The plans shrink from none to attention to block; the runs equal none's bitwise.
static void compare(test_counts *tc, const char *kind, const run_rec *r, size_t n_params) {
    for (int k = 0; k < N_MODES; k++)
        printf("  %-11s recompute %-9s act_bytes %9zu  per layer %8zu  (%d layers)\n", kind,
               mode_name[k], r[k].mem.act_bytes, r[k].mem.act_per_layer, r[k].mem.n_layers);
    for (int k = 1; k < N_MODES; k++) {
        TEST_CHECK(tc, r[k].mem.act_bytes < r[k - 1].mem.act_bytes,
                   "%s: act_bytes %s %zu is not below %s %zu", kind, mode_name[k],
                   r[k].mem.act_bytes, mode_name[k - 1], r[k - 1].mem.act_bytes);
        TEST_CHECK(tc, r[k].mem.act_per_layer < r[k - 1].mem.act_per_layer,
                   "%s: act_per_layer %s %zu is not below %s %zu", kind, mode_name[k],
                   r[k].mem.act_per_layer, mode_name[k - 1], r[k - 1].mem.act_per_layer);
        TEST_CHECK(tc,
                   r[k].mem.n_params == r[0].mem.n_params &&
                       r[k].mem.n_layers == r[0].mem.n_layers && r[k].mem.n_params == n_params,
                   "%s %s: parameters or layers differ from none's", kind, mode_name[k]);
        for (int s = 0; s < STEPS; s++) {
            TEST_CHECK(tc, memcmp(&r[k].loss[s], &r[0].loss[s], sizeof(double)) == 0,
                       "%s %s step %d: loss %.17g, none %.17g", kind, mode_name[k], s, r[k].loss[s],
                       r[0].loss[s]);
            TEST_CHECK(tc, memcmp(r[k].grads[s], r[0].grads[s], n_params * sizeof(mm_real)) == 0,
                       "%s %s step %d: gradients differ from none's", kind, mode_name[k], s);
            const hook_rec *h = &r[k].hooks[s], *h0 = &r[0].hooks[s];
            TEST_CHECK(tc,
                       h->n == h0->n && h->n <= MAX_HOOK &&
                           memcmp(h->lo, h0->lo, (size_t)h->n * sizeof(size_t)) == 0,
                       "%s %s step %d: grad hook stages differ from none's", kind, mode_name[k], s);
        }
    }
}

// A plain SGD step on the host (CPU params are host memory), so the next step's forward runs
// on other weights, the same in every mode.
static void sgd(mm_real *p, const mm_real *g, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] -= (mm_real)0.5 * g[i];
}

// ---------------------------------------------------------------------------------------
// the prefix LM

static model_config lm_config(void) {
    return (model_config){.d_model = 32,
                          .n_layers = 3,
                          .n_heads = 4,
                          .d_ff = 64,
                          .vocab = DATA_VOCAB,
                          .text_T = 9,
                          .img_h = 8,
                          .img_w = 8,
                          .img_c = 3,
                          .patch = 4,
                          .audio_F = 7,
                          .n_mels = 5,
                          .audio_group = 2,
                          .tp = 1};
}

// reg: under the regularisation of model_config, as training batches
static void test_lm(test_counts *tc, int reg) {
    model_config base = lm_config();
    if (reg) base.dropout = 0.2, base.attn_dropout = 0.3, base.label_smoothing = 0.1;
    mm_rng r;
    mm_rng_init(&r, 7, 0);
    const size_t ni = (size_t)SB * base.img_h * base.img_w * base.img_c,
                 na = (size_t)SB * base.audio_F * base.n_mels, nt = (size_t)SB * base.text_T;
    mm_real *image = malloc(ni * sizeof(mm_real)), *audio = malloc(na * sizeof(mm_real));
    int32_t *tok = malloc(nt * sizeof(int32_t)), *tg = malloc(nt * sizeof(int32_t));
    for (size_t i = 0; i < ni; i++) image[i] = 2 * mm_rng_uniform(&r) - 1;
    for (size_t i = 0; i < na; i++) audio[i] = mm_rng_normal(&r);
    for (size_t i = 0; i < nt; i++) {
        tok[i] = i % (size_t)base.text_T == 0 ? DATA_TOK_BOS : 'a' + (int)mm_rng_below(&r, 26);
        tg[i] = i % 4 == 3 ? -1 : 'a' + (int)mm_rng_below(&r, 26);
    }
    const uint8_t has_image[SB] = {1, 0, 1}, has_audio[SB] = {1, 1, 0};
    const uint64_t ids[SB] = {3, 17, 4};
    // the classifier's gradient in the forward, as training computes it
    model_input in = {SB, image, has_image, audio, has_audio, tok, tg, reg, 0, reg ? ids : NULL,
                      (mm_real)(1.0 / SB)};

    run_rec rec[N_MODES] = {0};
    size_t n_params = 0;
    for (int k = 0; k < N_MODES; k++) {
        model_config c = base;
        c.recompute = (model_recompute)k;
        mm_err err = {{0}};
        model *m = NULL;
        int ok = model_mem_plan(&c, &mm_backend_cpu, SB, &rec[k].mem, &err) == 0 &&
                 model_create(&m, &c, &mm_backend_cpu, SB, 5, &err) == 0;
        TEST_CHECK(tc, ok, "transformer %s: %s", mode_name[k], err.msg);
        if (!ok) return;
        n_params = model_n_params(m);
        for (int s = 0; s < STEPS; s++) {
            model_set_grad_hook(m, record, &rec[k].hooks[s]);
            model_zero_grad(m);
            in.step = s;
            rec[k].loss[s] = model_forward(m, &in, NULL);
            model_backward(m, &in, in.loss_scale);
            rec[k].grads[s] = malloc(n_params * sizeof(mm_real));
            memcpy(rec[k].grads[s], model_grads(m), n_params * sizeof(mm_real));
            sgd(model_params(m), model_grads(m), n_params);
        }
        model_free(m);
    }
    compare(tc, reg ? "regularised" : "transformer", rec, n_params);
    for (int k = 0; k < N_MODES; k++) free_rec(&rec[k]);
    if (reg) {
        free(image), free(audio), free(tok), free(tg);
        return;
    }

    // a mode that is none of the three: refused with a message, by the plan and by create
    model_config bad = base;
    bad.recompute = (model_recompute)7;
    mm_err err = {{0}};
    model_mem mem;
    model *m = NULL;
    TEST_CHECK(
        tc,
        model_mem_plan(&bad, &mm_backend_cpu, SB, &mem, &err) == -1 && strstr(err.msg, "recompute"),
        "transformer plan with recompute 7: %s", err.msg);
    err.msg[0] = '\0';
    TEST_CHECK(tc,
               model_create(&m, &bad, &mm_backend_cpu, SB, 5, &err) == -1 && !m &&
                   strstr(err.msg, "recompute"),
               "transformer create with recompute 7: %s", err.msg);
    free(image), free(audio), free(tok), free(tg);
}

// ---------------------------------------------------------------------------------------
// the DiT (pool_cond on, so c feeds every block through the pooled condition too)

static dit_config dit_small(void) {
    return (dit_config){.d_model = 32,
                        .n_layers = 3,
                        .n_heads = 4,
                        .d_ff = 64,
                        .img_h = 8,
                        .img_w = 12,
                        .img_c = 3,
                        .patch = 4,
                        .vocab = DATA_VOCAB,
                        .text_T = 7,
                        .audio_F = 7,
                        .n_mels = 5,
                        .audio_group = 2,
                        .enc_layers = 1,
                        .pool_cond = 1,
                        .tp = 1};
}

static void test_dit(test_counts *tc) {
    const dit_config base = dit_small();
    mm_rng r;
    mm_rng_init(&r, 9, 0);
    const size_t pix = (size_t)SB * base.img_h * base.img_w * base.img_c;
    const size_t na = (size_t)SB * base.audio_F * base.n_mels, nt = (size_t)SB * base.text_T;
    mm_real *x_t = malloc(pix * sizeof(mm_real)), *target = malloc(pix * sizeof(mm_real));
    mm_real *audio = malloc(na * sizeof(mm_real)), t[SB];
    int32_t *tok = malloc(nt * sizeof(int32_t));
    for (size_t i = 0; i < pix; i++) x_t[i] = mm_rng_normal(&r), target[i] = mm_rng_normal(&r);
    for (size_t i = 0; i < na; i++) audio[i] = mm_rng_normal(&r);
    for (size_t i = 0; i < nt; i++)
        tok[i] = i % (size_t)base.text_T == 0 ? DATA_TOK_BOS
                 : i % 5 == 4                 ? DATA_TOK_PAD
                                              : 'a' + (int)mm_rng_below(&r, 26);
    for (int s = 0; s < SB; s++) t[s] = (mm_real)mm_rng_uniform(&r);
    const uint8_t has_text[SB] = {1, 0, 1}, has_audio[SB] = {1, 1, 0};
    const dit_input in = {SB, x_t, t, tok, has_text, audio, has_audio, target};

    run_rec rec[N_MODES] = {0};
    size_t n_params = 0;
    for (int k = 0; k < N_MODES; k++) {
        dit_config c = base;
        c.recompute = (model_recompute)k;
        mm_err err = {{0}};
        dit *m = NULL;
        int ok = dit_mem_plan(&c, &mm_backend_cpu, SB, &rec[k].mem, &err) == 0 &&
                 dit_create(&m, &c, &mm_backend_cpu, SB, 5, &err) == 0;
        TEST_CHECK(tc, ok, "diffusion %s: %s", mode_name[k], err.msg);
        if (!ok) return;
        n_params = dit_n_params(m);
        for (int s = 0; s < STEPS; s++) {
            dit_set_grad_hook(m, record, &rec[k].hooks[s]);
            dit_zero_grad(m);
            rec[k].loss[s] = dit_forward(m, &in);
            dit_backward(m, &in, (mm_real)(1.0 / SB));
            rec[k].grads[s] = malloc(n_params * sizeof(mm_real));
            memcpy(rec[k].grads[s], dit_grads(m), n_params * sizeof(mm_real));
            // after step 0 adaLN-Zero's zero tensors have moved: the blocks are no identity
            sgd(dit_params(m), dit_grads(m), n_params);
        }
        dit_free(m);
    }
    compare(tc, "diffusion", rec, n_params);
    for (int k = 0; k < N_MODES; k++) free_rec(&rec[k]);

    dit_config bad = base;
    bad.recompute = (model_recompute)-1;
    mm_err err = {{0}};
    model_mem mem;
    dit *m = NULL;
    TEST_CHECK(
        tc,
        dit_mem_plan(&bad, &mm_backend_cpu, SB, &mem, &err) == -1 && strstr(err.msg, "recompute"),
        "diffusion plan with recompute -1: %s", err.msg);
    err.msg[0] = '\0';
    TEST_CHECK(tc,
               dit_create(&m, &bad, &mm_backend_cpu, SB, 5, &err) == -1 && !m &&
                   strstr(err.msg, "recompute"),
               "diffusion create with recompute -1: %s", err.msg);
    free(x_t), free(target), free(audio), free(tok);
}

int main(void) {
    test_counts tc = {0, 0};
    printf("activation recomputation: planned buffer, and bitwise equality with none\n");
    test_lm(&tc, 0);
    test_lm(&tc, 1);
    test_dit(&tc);
    return test_finish(&tc);
}
