// family_lm.c: the captioning transformer as a model family of the trainer: micro-steps
// are next-byte cross-entropy on the caption given the image/audio prefix; evaluation is
// validation loss plus greedy captions, scored as eval.scorer says (eval.h).
//
// The family computes on the trainer's backend (t->be): on a GPU the model's buffers are
// device memory, t->net.params is a host mirror for checkpoints (gradsync.h), and every
// batch goes through the backend's staging so its copy overlaps the previous micro-step's
// backward; on the CPU the same calls read the host batch where it is.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/model.h"
#include "eval.h"
#include "trainer_internal.h"

// The family's state (t->impl), owned.
typedef struct {
    model *m;
    void *stage;  // the input batches' way to the backend's memory
    uint8_t *has_image, *has_audio;  // (max_B) a training batch's flags after modality dropout
} lm_impl;

static model *lm(const trainer *t) { return ((lm_impl *)t->impl)->m; }

// The model's view of a batch, staged into the backend's memory (call lm_input_done after
// queueing the work that reads it); train: a training batch, under the model.* regularisation.
static model_input batch_input(const trainer *t, const data_batch *b, int train) {
    lm_impl *im = t->impl;
    const mm_config *c = t->cfg;
    const size_t B = (size_t)b->B, T = (size_t)b->text_T;
    const uint8_t *has_image = b->has_image, *has_audio = b->has_audio;
    if (train && (c->model.modality_drop > 0 || c->model.audio_drop > 0)) {
        memcpy(im->has_image, b->has_image, B);
        memcpy(im->has_audio, b->has_audio, B);
        for (size_t i = 0; i < B; i++)
            model_modality_drop(c->run.seed, t->step, b->sample_id[i], c->model.modality_drop,
                                c->model.audio_drop, &im->has_image[i], &im->has_audio[i]);
        has_image = im->has_image;
        has_audio = im->has_audio;
    }
    const void *src[6] = {b->image, b->audio, b->tokens, b->targets, has_image, has_audio};
    const size_t len[6] = {B * b->img_h * b->img_w * b->img_c * sizeof(float),
                           B * b->audio_F * b->n_mels * sizeof(float),
                           B * T * sizeof(int32_t),
                           B * T * sizeof(int32_t),
                           B,
                           B};
    void *dst[6];
    t->be->iface->stage_put(t->be, im->stage, 6, src, len, dst);
    return (model_input){.B = b->B,
                         .image = dst[0],
                         .has_image = dst[4],
                         .audio = dst[1],
                         .has_audio = dst[5],
                         .tokens = dst[2],
                         .targets = dst[3],
                         .train = train,
                         .step = t->step,
                         .sample_id = b->sample_id};
}

static void lm_input_done(const trainer *t) {
    lm_impl *im = t->impl;
    t->be->iface->stage_done(t->be, im->stage);
}

static void lm_set_hook(void *impl, model_grad_hook fn, void *ctx) {
    model_set_grad_hook((model *)impl, fn, ctx);
}

// The model this rank builds from the config and the training set's schema.
static model_config lm_config(const trainer *t) {
    const mm_config *c = t->cfg;
    return (model_config){.d_model = c->model.d_model,
                          .n_layers = c->model.n_layers,
                          .n_heads = c->model.n_heads,
                          .d_ff = c->model.d_ff ? c->model.d_ff : 4 * c->model.d_model,
                          .vocab = DATA_VOCAB,
                          .text_T = t->schema.text_max + 1,
                          .img_h = t->schema.img_h,
                          .img_w = t->schema.img_w,
                          .img_c = t->schema.img_c,
                          .patch = c->model.patch,
                          .audio_F = data_audio_frames(&t->schema, &t->audio),
                          .n_mels = c->data.n_mels,
                          .audio_group = c->model.audio_group,
                          .tp = t->lay.tp_size,
                          .tp_rank = t->lay.tp_rank,
                          .tp_group = t->lay.tp_size > 1 ? t->lay.tp : NULL,
                          .recompute = model_recompute_named(c->model.recompute),
                          .dropout = c->model.dropout,
                          .attn_dropout = c->model.attn_dropout,
                          .label_smoothing = c->optim.label_smoothing};
}

static int lm_mem_plan(const trainer *t, int max_B, model_recompute rc, model_mem *out, int *ema,
                       mm_err *err) {
    model_config mc = lm_config(t);
    mc.recompute = rc;
    mm_err me;
    *ema = 0;
    if (model_mem_plan(&mc, t->be, max_B, out, &me) != 0) return mm_fail(err, "model: %s", me.msg);
    return 0;
}

static int lm_create(trainer *t, int max_B, mm_err *err) {
    const mm_config *c = t->cfg;
    model_config mc = lm_config(t);
    lm_impl *im = mm_calloc(1, sizeof(lm_impl));
    t->impl = im;
    model *m = NULL;
    mm_err me;
    if (model_create(&m, &mc, t->be, max_B, c->run.seed, &me) != 0)
        return mm_fail(err, "model: %s", me.msg);
    im->m = m;
    train_net_bind(&t->net, t->be, m, model_params(m), model_grads(m), model_n_params(m),
                   model_tensors(m), model_n_tensors(m), lm_set_hook);
    const int TT = mc.text_T;
    size_t bytes = 0;  // one batch of max_B samples, each region 256-byte aligned
    const size_t per[6] = {(size_t)mc.img_h * mc.img_w * mc.img_c * sizeof(float),
                           (size_t)mc.audio_F * mc.n_mels * sizeof(float),
                           TT * sizeof(int32_t),
                           TT * sizeof(int32_t),
                           1,
                           1};
    for (int i = 0; i < 6; i++) bytes += (per[i] * max_B + 255) / 256 * 256;
    im->stage = t->be->iface->stage_new(t->be, bytes);
    im->has_image = mm_malloc((size_t)max_B);
    im->has_audio = mm_malloc((size_t)max_B);
    return 0;
}

static void lm_destroy(trainer *t) {
    lm_impl *im = t->impl;
    if (!im) return;
    if (im->stage) t->be->iface->stage_free(t->be, im->stage);
    if (im->m) model_free(im->m);
    free(im->has_image);
    free(im->has_audio);
    train_net_free(&t->net);
    free(im);
    t->impl = NULL;
}

static double lm_micro_step(trainer *t, const data_batch *b) {
    model_input in = batch_input(t, b, 1);
    double loss = model_forward(lm(t), &in, NULL);
    t->be->iface->sync(t->be);  // a corrupt token ends the job here, named
    model_backward(lm(t), &in, (mm_real)(1.0 / t->cfg->data.global_batch));
    lm_input_done(t);
    return loss;
}

static int lm_seq_len(const trainer *t) { return model_seq_len(lm(t)); }

// --------------------------------------------------------------------------------------
// evaluation: validation loss and greedy captions, scored by eval.scorer (eval.h)

// The length of a generated caption in its record of w bytes (see the fill in lm_evaluate):
// the offset of the record's last NUL.
static size_t gen_len(const char *g, size_t w) {
    const char *z = memrchr(g, '\0', w);
    return z ? (size_t)(z - g) : strnlen(g, w);
}

// Each dp rank evaluates its batches and packs every sample into a record; world rank 0
// reads them back in batch order (eval_gather), scores and writes them, so the output is the
// same for any layout. Record: sample id | reference (text_max + 1 bytes, NUL-terminated) |
// generated (text_max + 2 bytes: room for model_generate's text_T - 1 bytes and the NUL).
static void lm_evaluate(trainer *t) {
    const mm_config *c = t->cfg;
    const data_schema *vs = data_dataset_schema(t->val);
    int64_t n = (int64_t)vs->n_samples;
    if (c->eval.samples > 0 && c->eval.samples < n) n = c->eval.samples;
    const int eb = c->eval.batch, refw = vs->text_max + 1, genw = vs->text_max + 2;
    const size_t ref_at = sizeof(uint64_t), gen_at = ref_at + (size_t)refw;
    const eval_scorer *sc = eval_scorer_find(c->eval.scorer, EVAL_CAPTIONS);
    MM_CHECK(sc, "eval.scorer %s scores no captions (mm_config_validate lets it through)",
             c->eval.scorer);
    eval_gather g;
    eval_gather_init(&g, t->lay.dp, t->lay.dp_rank, t->lay.dp_size, n, eb, gen_at + genw);
    uint64_t *idx = mm_malloc((size_t)eb * sizeof(uint64_t));
    char *gens = mm_malloc((size_t)eb * genw);
    double loss_sum = 0.0;
    eval_tally tally;
    eval_tally_init(&tally, sc);
    eval_examples ex = {0};
    FILE *ev = NULL;
    if (t->rank == 0) {
        char path[MM_STR + 64];
        ev = train_open_output(t, "eval", "jsonl", path, sizeof(path));
    }
    for (int64_t round = 0; round < eval_gather_rounds(&g); round++) {
        int64_t first;
        const int nb = eval_gather_batch(&g, round, &first);
        double loss = 0.0;
        if (nb > 0) {
            for (int i = 0; i < nb; i++) idx[i] = (uint64_t)(first + i);
            mm_err e;
            if (data_dataset_read(t->val, idx, nb, t->val_feat, &t->val_batch, &e) != 0)
                train_die(t, e.msg);
            model_input in = batch_input(t, &t->val_batch, 0);
            loss = model_forward(lm(t), &in, NULL);
            // A generated NUL is a byte like any other: model_generate writes the bytes and a
            // NUL after the last, touching nothing beyond, so over a nonzero fill the last
            // NUL of a record ends the caption (gen_len) and earlier ones are the model's.
            memset(gens, 0x01, (size_t)eb * genw);
            model_generate(lm(t), &in, gens, genw);
            lm_input_done(t);
            for (int i = 0; i < nb; i++) {
                uint8_t *r = eval_gather_mine(&g, i);
                memcpy(r, &t->val_batch.sample_id[i], sizeof(uint64_t));
                memcpy(r + ref_at, t->val_batch.text + (size_t)i * refw, (size_t)refw);
                memcpy(r + gen_at, gens + (size_t)i * genw, (size_t)genw);
            }
        }
        eval_gather_exchange(&g, nb, loss);
        if (t->rank != 0) continue;
        for (int d = 0; d < g.dp_size; d++) {
            double batch_loss;
            const int cnt = eval_gather_count(&g, d, &batch_loss);
            loss_sum += batch_loss;
            for (int i = 0; i < cnt; i++) {
                const uint8_t *r = eval_gather_record(&g, d, i);
                uint64_t id;
                memcpy(&id, r, sizeof(id));
                const char *ref = (const char *)r + ref_at, *gen = (const char *)r + gen_at;
                const size_t gen_n = gen_len(gen, (size_t)genw);
                // scorers see the caption up to its first NUL; the eval line shows it all
                eval_tally_score(&tally, &(eval_pair){.ref_text = ref, .gen_text = gen}, NULL);
                eval_write_caption(ev, id, ref, gen, gen_n);
                eval_examples_add(&ex, ref, gen, gen_n);
            }
        }
    }
    if (t->rank == 0) {
        MM_CHECK(tally.n == n, "evaluation gathered %lld of %lld samples", (long long)tally.n,
                 (long long)n);
        fclose(ev);
        eval_report_captions(stdout, t->metrics, t->step, loss_sum / (double)n, &tally, &ex);
    }
    eval_gather_free(&g);
    free(idx);
    free(gens);
}

const train_family train_family_lm = {.kind = "transformer",
                                      .create = lm_create,
                                      .mem_plan = lm_mem_plan,
                                      .destroy = lm_destroy,
                                      .micro_step = lm_micro_step,
                                      .after_update = NULL,
                                      .evaluate = lm_evaluate,
                                      .seq_len = lm_seq_len};
