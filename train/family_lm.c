// family_lm.c: the captioning transformer as a model family of the trainer: micro-steps
// are next-byte cross-entropy on the caption given the image/audio prefix; evaluation is
// validation loss and greedy captions, as given and by input mode, scored against the
// references (eval.h), with the EMA of the weights when optim.ema_decay keeps one (ema.h).
//
// The family computes on the trainer's backend (t->be): on a GPU the model's buffers are
// device memory, t->net.params is a host mirror for checkpoints (gradsync.h), and every
// batch goes through the backend's staging so its copy overlaps the previous micro-step's
// backward; on the CPU the same calls read the host batch where it is.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/model.h"
#include "ema.h"
#include "eval.h"
#include "trainer_internal.h"

// The family's state (t->impl), owned.
typedef struct {
    model *m;
    void *stage;                     // the input batches' way to the backend's memory
    uint8_t *has_image, *has_audio;  // (max_B) a training batch's flags after modality dropout
    train_ema ema;                   // optim.ema_decay > 0: the EMA (t->ema its host view)
    int noted_rule;  // the note that eval.scorer synth's rule does not apply, printed once
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
                          .stem = strcmp(c->model.stem, "conv") == 0 ? MODEL_STEM_CONV
                                                                      : MODEL_STEM_PATCH,
                          .stem_width = c->model.stem_width,
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
    *ema = t->cfg->optim.ema_decay > 0;
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
    if (c->optim.ema_decay > 0) {
        train_ema_init(&im->ema, t->be, t->net.dparams, t->net.n_params);
        t->ema = im->ema.host;
    }
    return 0;
}

static void lm_destroy(trainer *t) {
    lm_impl *im = t->impl;
    if (!im) return;
    if (im->stage) t->be->iface->stage_free(t->be, im->stage);
    train_ema_free(&im->ema);
    t->ema = NULL;
    if (im->m) model_free(im->m);
    free(im->has_image);
    free(im->has_audio);
    train_net_free(&t->net);
    free(im);
    t->impl = NULL;
}

static double lm_micro_step(trainer *t, const data_batch *b) {
    model_input in = batch_input(t, b, 1);
    in.loss_scale = (mm_real)(1.0 / t->cfg->data.global_batch);  // the classifier in one pass
    double loss = model_forward(lm(t), &in, NULL);
    t->be->iface->sync(t->be);  // a corrupt token ends the job here, named
    trace_dev_next(t->timeline, "backward");
    model_backward(lm(t), &in, in.loss_scale);
    lm_input_done(t);
    return loss;
}

static int lm_seq_len(const trainer *t) { return model_seq_len(lm(t)); }

// optim.ema_decay > 0: the average follows every update; evaluation swaps it in.
static void lm_after_update(trainer *t) {
    lm_impl *im = t->impl;
    if (t->ema) train_ema_update(&im->ema, t->net.dparams, (float)t->cfg->optim.ema_decay);
}

static void lm_swap_ema(trainer *t) {
    if (t->ema) train_ema_swap(&((lm_impl *)t->impl)->ema, t->net.dparams);
}

static void lm_sync_host(trainer *t) {
    if (t->ema) train_ema_to_host(&((lm_impl *)t->impl)->ema);
}

static void lm_sync_device(trainer *t) {
    if (t->ema) train_ema_from_host(&((lm_impl *)t->impl)->ema);
}

// --------------------------------------------------------------------------------------
// evaluation: validation loss and greedy captions, as given and by input mode (eval.h's
// eval_captions), scored against the references; the synthetic set's rule on top when
// eval.scorer is synth and the data is that set.

// The length of a generated caption in its record of w bytes (see the fill in lm_evaluate):
// the offset of the record's last NUL.
static size_t gen_len(const char *g, size_t w) {
    const char *z = memrchr(g, '\0', w);
    return z ? (size_t)(z - g) : strnlen(g, w);
}

// Whether a sample with these modalities takes part in mode m (eval.h: EVAL_IMAGE needs an
// image, EVAL_AUDIO audio, EVAL_BOTH both; EVAL_GIVEN every sample).
static int in_mode(int m, int hi, int ha) {
    return m == EVAL_IMAGE ? hi : m == EVAL_AUDIO ? ha : m == EVAL_BOTH ? hi && ha : 1;
}

// The batch b as mode m sees it, in mb (arrays in the caller's hi, ha, tg of b->B samples):
// EVAL_IMAGE leaves the audio out, EVAL_AUDIO the image; a sample not in the mode has no
// targets, so it adds 0 to the loss (model_forward). Returns whether any sample is in the
// mode; *same: every sample is, unchanged (the loss is the batch's as given); *gen_same: no
// sample of the mode changed (its captions are those generated as given).
static int mode_batch(int m, const data_batch *b, data_batch *mb, uint8_t *hi, uint8_t *ha,
                      int32_t *tg, int *same, int *gen_same) {
    *mb = *b;
    mb->has_image = hi;
    mb->has_audio = ha;
    mb->targets = tg;
    int any = 0;
    *same = *gen_same = 1;
    const size_t T = (size_t)b->text_T;
    for (int i = 0; i < b->B; i++) {
        const int take = in_mode(m, b->has_image[i], b->has_audio[i]);
        hi[i] = m == EVAL_AUDIO ? 0 : b->has_image[i];
        ha[i] = m == EVAL_IMAGE ? 0 : b->has_audio[i];
        const int changed = hi[i] != b->has_image[i] || ha[i] != b->has_audio[i];
        any |= take;
        *same &= take && !changed;
        *gen_same &= !(take && changed);
        if (take)
            memcpy(tg + i * T, b->targets + i * T, T * sizeof(int32_t));
        else
            for (size_t k = 0; k < T; k++) tg[i * T + k] = -1;
    }
    return any;
}

// Each dp rank evaluates its batches and packs every sample into a record; world rank 0
// reads them back in batch order (eval_gather), scores and writes them, so the output is the
// same for any layout. Per batch: the loss as given and in each mode (the gather's sums);
// captions as given and with the audio left out (EVAL_IMAGE; the one extra greedy decoding
// where a batch has a sample with image and audio). Audio-only captions (EVAL_AUDIO, the
// image left out) only under eval.audio_captions: a third decoding costs as much again, and
// without it val_loss_audio measures that path.
// Record: sample id | flags (1: image, 2: audio) | reference (text_max + 1 bytes,
// NUL-terminated) | generated as given, image only, audio only (text_max + 2 bytes each: room
// for model_generate's text_T - 1 bytes and the NUL).
static void lm_evaluate(trainer *t) {
    lm_impl *im = t->impl;
    const mm_config *c = t->cfg;
    const data_schema *vs = data_dataset_schema(t->val);
    int64_t n = (int64_t)vs->n_samples;
    if (c->eval.samples > 0 && c->eval.samples < n) n = c->eval.samples;
    const int eb = c->eval.batch, refw = vs->text_max + 1, genw = vs->text_max + 2;
    const size_t flag_at = sizeof(uint64_t), ref_at = flag_at + 1, gen_at = ref_at + (size_t)refw,
                 img_at = gen_at + (size_t)genw, aud_at = img_at + (size_t)genw;
    const int aud_caps = c->eval.audio_captions;
    eval_gather g;
    eval_gather_init(&g, t->lay.dp, t->lay.dp_rank, t->lay.dp_size, n, eb, aud_at + genw);
    uint64_t *idx = mm_malloc((size_t)eb * sizeof(uint64_t));
    char *gens = mm_malloc((size_t)eb * genw), *imgs = mm_malloc((size_t)eb * genw),
         *auds = mm_malloc((size_t)eb * genw);
    uint8_t *hi = mm_malloc((size_t)eb), *ha = mm_malloc((size_t)eb);
    int32_t *tg = mm_malloc((size_t)eb * (vs->text_max + 1) * sizeof(int32_t));
    // eval.scorer text names no rule; synth's applies only to the synthetic set (eval.h)
    eval_captions ec;
    eval_captions_init(&ec, eval_scorer_find(c->eval.scorer, EVAL_CAPTIONS));
    lm_swap_ema(t);  // evaluate the average, when one is kept
    FILE *ev = NULL;
    char path[MM_STR + 64];
    if (t->rank == 0) ev = train_open_output(t, "eval", "jsonl", path, sizeof(path));
    for (int64_t round = 0; round < eval_gather_rounds(&g); round++) {
        int64_t first;
        const int nb = eval_gather_batch(&g, round, &first);
        double sums[EVAL_GATHER_SUMS] = {0};
        if (nb > 0) {
            const data_batch *vb = &t->val_batch;
            for (int i = 0; i < nb; i++) idx[i] = (uint64_t)(first + i);
            mm_err e;
            if (data_dataset_read(t->val, idx, nb, t->val_feat, &t->val_batch, &e) != 0)
                train_die(t, e.msg);
            model_input in = batch_input(t, vb, 0);
            sums[EVAL_GIVEN] = model_forward(lm(t), &in, NULL);
            // A generated NUL is a byte like any other: model_generate writes the bytes and a
            // NUL after the last, touching nothing beyond, so over a nonzero fill the last
            // NUL of a record ends the caption (gen_len) and earlier ones are the model's.
            memset(gens, 0x01, (size_t)eb * genw);
            model_generate(lm(t), &in, gens, genw);
            lm_input_done(t);
            memcpy(imgs, gens, (size_t)eb * genw);
            memcpy(auds, gens, (size_t)eb * genw);
            for (int m = EVAL_GIVEN + 1; m < EVAL_N_MODES; m++) {
                data_batch mb;
                int same, gen_same;
                if (!mode_batch(m, vb, &mb, hi, ha, tg, &same, &gen_same)) continue;
                if (same) {
                    sums[m] = sums[EVAL_GIVEN];
                    continue;
                }
                in = batch_input(t, &mb, 0);
                sums[m] = model_forward(lm(t), &in, NULL);
                char *mg = m == EVAL_IMAGE ? imgs : m == EVAL_AUDIO && aud_caps ? auds : NULL;
                if (mg && !gen_same) {
                    memset(mg, 0x01, (size_t)eb * genw);
                    model_generate(lm(t), &in, mg, genw);
                }
                lm_input_done(t);
            }
            for (int i = 0; i < nb; i++) {
                uint8_t *r = eval_gather_mine(&g, i);
                memcpy(r, &vb->sample_id[i], sizeof(uint64_t));
                r[flag_at] = (uint8_t)((vb->has_image[i] ? 1 : 0) | (vb->has_audio[i] ? 2 : 0));
                memcpy(r + ref_at, vb->text + (size_t)i * refw, (size_t)refw);
                memcpy(r + gen_at, gens + (size_t)i * genw, (size_t)genw);
                memcpy(r + img_at, imgs + (size_t)i * genw, (size_t)genw);
                memcpy(r + aud_at, auds + (size_t)i * genw, (size_t)genw);
            }
        }
        eval_gather_exchange(&g, nb, sums);
        if (t->rank != 0) continue;
        for (int d = 0; d < g.dp_size; d++) {
            double bs[EVAL_GATHER_SUMS];
            const int cnt = eval_gather_count(&g, d, bs);
            for (int m = 0; m < EVAL_N_MODES; m++) ec.loss_sum[m] += bs[m];
            for (int i = 0; i < cnt; i++) {
                const uint8_t *r = eval_gather_record(&g, d, i);
                uint64_t id;
                memcpy(&id, r, sizeof(id));
                const int has_i = r[flag_at] & 1, has_a = (r[flag_at] & 2) != 0;
                const char *ref = (const char *)r + ref_at;
                eval_caption_gen given = {.gen = (const char *)r + gen_at},
                                 image = {.gen = (const char *)r + img_at},
                                 audio = {.gen = (const char *)r + aud_at};
                given.gen_n = gen_len(given.gen, (size_t)genw);
                image.gen_n = gen_len(image.gen, (size_t)genw);
                audio.gen_n = gen_len(audio.gen, (size_t)genw);
                for (int m = 0; m < EVAL_N_MODES; m++) ec.n[m] += in_mode(m, has_i, has_a);
                eval_captions_add(&ec, EVAL_GIVEN, ref, given.gen, given.gen_n, &given.s);
                if (has_i)
                    eval_captions_add(&ec, EVAL_IMAGE, ref, image.gen, image.gen_n, &image.s);
                if (has_a && aud_caps)
                    eval_captions_add(&ec, EVAL_AUDIO, ref, audio.gen, audio.gen_n, &audio.s);
                if (has_i && has_a)
                    eval_captions_add(&ec, EVAL_BOTH, ref, given.gen, given.gen_n, NULL);
                eval_write_caption(ev, id, ref, &given, has_i ? &image : NULL,
                                   has_a && aud_caps ? &audio : NULL);
                train_check_write(t, ev, path, 0);
            }
        }
    }
    if (t->rank == 0) {
        MM_CHECK(ec.n[EVAL_GIVEN] == n, "evaluation gathered %lld of %lld samples",
                 (long long)ec.n[EVAL_GIVEN], (long long)n);
        train_close_output(t, ev, path);
        if (ec.rule && !eval_captions_rule_applies(&ec) && !im->noted_rule) {
            printf(
                "note: %s: %lld of %lld validation captions name no attributes as the "
                "synthetic set's do: its rule (caption_acc, acc_*) is not reported on this "
                "set (eval.scorer: text says so without this note)\n",
                c->data.val, (long long)ec.not_rule, (long long)n);
            im->noted_rule = 1;
        }
        eval_report_captions(stdout, t->metrics, t->step, &ec);
        char md[EVAL_EXAMPLES_MD];
        eval_examples_markdown(&ec.ex, md, sizeof(md));
        train_tb_text(t, "captions", md);
    }
    lm_swap_ema(t);
    eval_gather_free(&g);
    free(idx);
    free(gens);
    free(imgs);
    free(auds);
    free(hi);
    free(ha);
    free(tg);
}

const train_family train_family_lm = {.kind = "transformer",
                                      .create = lm_create,
                                      .mem_plan = lm_mem_plan,
                                      .destroy = lm_destroy,
                                      .micro_step = lm_micro_step,
                                      .after_update = lm_after_update,
                                      .evaluate = lm_evaluate,
                                      .seq_len = lm_seq_len,
                                      .sync_host = lm_sync_host,
                                      .sync_device = lm_sync_device};
