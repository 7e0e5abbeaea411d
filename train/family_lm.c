// family_lm.c: the captioning transformer as a model family of the trainer: micro-steps
// are next-byte cross-entropy on the caption given the image/audio prefix; evaluation is
// validation loss plus greedy captions scored attribute by attribute (caption_acc).
//
// The family computes on the trainer's backend (t->be): on a GPU the model's buffers are
// device memory, t->net.params is a host mirror for checkpoints (gradsync.h), and every
// batch goes through the backend's staging so its copy overlaps the previous micro-step's
// backward; on the CPU the same calls read the host batch where it is.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/model.h"
#include "trainer_internal.h"

// The family's state (t->impl), owned.
typedef struct {
    model *m;
    void *stage;  // the input batches' way to the backend's memory
} lm_impl;

static model *lm(const trainer *t) { return ((lm_impl *)t->impl)->m; }

// The model's view of a batch, staged into the backend's memory (call lm_input_done after
// queueing the work that reads it).
static model_input batch_input(const trainer *t, const data_batch *b) {
    lm_impl *im = t->impl;
    const size_t B = (size_t)b->B, T = (size_t)b->text_T;
    const void *src[6] = {b->image, b->audio, b->tokens, b->targets, b->has_image, b->has_audio};
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
                         .targets = dst[3]};
}

static void lm_input_done(const trainer *t) {
    lm_impl *im = t->impl;
    t->be->iface->stage_done(t->be, im->stage);
}

static void lm_set_hook(void *impl, model_grad_hook fn, void *ctx) {
    model_set_grad_hook((model *)impl, fn, ctx);
}

static int lm_create(trainer *t, int max_B, mm_err *err) {
    const mm_config *c = t->cfg;
    model_config mc = {.d_model = c->model.d_model,
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
                       .tp_group = t->lay.tp_size > 1 ? t->lay.tp : NULL};
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
    return 0;
}

static void lm_destroy(trainer *t) {
    lm_impl *im = t->impl;
    if (!im) return;
    if (im->stage) t->be->iface->stage_free(t->be, im->stage);
    if (im->m) model_free(im->m);
    train_net_free(&t->net);
    free(im);
    t->impl = NULL;
}

static double lm_micro_step(trainer *t, const data_batch *b) {
    model_input in = batch_input(t, b);
    double loss = model_forward(lm(t), &in, NULL);
    t->be->iface->sync(t->be);  // a corrupt token ends the job here, named
    model_backward(lm(t), &in, (mm_real)(1.0 / t->cfg->data.global_batch));
    lm_input_done(t);
    return loss;
}

static int lm_seq_len(const trainer *t) { return model_seq_len(lm(t)); }

// --------------------------------------------------------------------------------------
// evaluation: validation loss, greedy captions, caption accuracy

// Evaluation is split over dp ranks: in round r, dp rank d takes eval batch r * dp + d.
// Each rank packs its batch's results into a fixed-size record and world rank 0 gathers
// them in batch order, scores and writes them, so the output is the same for any layout.
typedef struct {
    int64_t n;     // samples in this record (0 when the rank had no batch this round)
    double loss;   // sum of per-sample mean losses
} eval_head;

static void lm_evaluate(trainer *t) {
    const mm_config *c = t->cfg;
    const data_schema *vs = data_dataset_schema(t->val);
    int64_t n = (int64_t)vs->n_samples;
    if (c->eval.samples > 0 && c->eval.samples < n) n = c->eval.samples;
    const int eb = c->eval.batch, dp = t->lay.dp_size, refw = vs->text_max + 1;
    const int genw = vs->text_max + 2;  // generated bytes + NUL, >= text_T as generate needs
    // record: head | ids (eb) | references (eb x refw) | generated (eb x genw)
    const size_t rec =  // rounded to 8 bytes so every record's ids stay aligned
        (sizeof(eval_head) + (size_t)eb * (sizeof(uint64_t) + refw + genw) + 7) / 8 * 8;
    uint8_t *mine = mm_calloc(rec, 1), *all = mm_malloc(rec * (size_t)dp);
    uint64_t *idx = mm_malloc((size_t)eb * sizeof(uint64_t));
    double loss_sum = 0.0;
    int64_t all_right = 0, attr_right[DATA_N_ATTR] = {0}, seen = 0;
    FILE *ev = NULL;
    char last_ref[3][64], last_gen[3][64];
    int n_last = 0;
    if (t->rank == 0) {
        char path[MM_STR + 64];
        ev = train_open_output(t, "eval", "jsonl", path, sizeof(path));
    }
    const int64_t n_batches = (n + eb - 1) / eb;
    for (int64_t round = 0; round * dp < n_batches; round++) {
        int64_t bi = round * dp + t->lay.dp_rank;
        eval_head h = {0, 0.0};
        if (bi < n_batches) {
            h.n = n - bi * eb < eb ? n - bi * eb : eb;
            for (int i = 0; i < h.n; i++) idx[i] = (uint64_t)(bi * eb + i);
            mm_err e;
            if (data_dataset_read(t->val, idx, (int)h.n, t->val_feat, &t->val_batch, &e) != 0)
                train_die(t, e.msg);
            model_input in = batch_input(t, &t->val_batch);
            h.loss = model_forward(lm(t), &in, NULL);
            uint64_t *ids = (uint64_t *)(mine + sizeof(eval_head));
            char *refs = (char *)(ids + eb), *gens = refs + (size_t)eb * refw;
            memcpy(ids, t->val_batch.sample_id, (size_t)h.n * sizeof(uint64_t));
            memcpy(refs, t->val_batch.text, (size_t)h.n * refw);
            model_generate(lm(t), &in, gens, genw);
            lm_input_done(t);
        }
        memcpy(mine, &h, sizeof(h));
        comm_all_gather(t->lay.dp, mine, all, rec, COMM_U8);
        if (t->rank != 0) continue;
        for (int d = 0; d < dp; d++) {
            const uint8_t *r = all + rec * (size_t)d;
            eval_head rh;
            memcpy(&rh, r, sizeof(rh));
            const uint64_t *ids = (const uint64_t *)(r + sizeof(eval_head));
            const char *refs = (const char *)(ids + eb), *gens = refs + (size_t)eb * refw;
            loss_sum += rh.loss;
            for (int i = 0; i < rh.n; i++) {
                const char *ref = refs + (size_t)i * refw, *g = gens + (size_t)i * genw;
                int correct[DATA_N_ATTR];
                all_right += data_synth_score(ref, g, correct);
                for (int a = 0; a < DATA_N_ATTR; a++) attr_right[a] += correct[a];
                fprintf(ev, "{\"sample_id\":%llu,\"reference\":", (unsigned long long)ids[i]);
                train_json_string(ev, ref);
                fputs(",\"generated\":", ev);
                train_json_string(ev, g);
                fputs("}\n", ev);
                if (n_last < 3) {
                    snprintf(last_ref[n_last], sizeof(last_ref[0]), "%s", ref);
                    snprintf(last_gen[n_last], sizeof(last_gen[0]), "%s", g);
                    n_last++;
                }
                seen++;
            }
        }
    }
    if (t->rank == 0) {
        MM_CHECK(seen == n, "evaluation gathered %lld of %lld samples", (long long)seen,
                 (long long)n);
        fclose(ev);
        double val_loss = loss_sum / (double)n, acc = (double)all_right / (double)n;
        printf("eval step %lld | val_loss %.4f | caption_acc %.1f%% (", (long long)t->step,
               val_loss, 100.0 * acc);
        fprintf(t->metrics, "{\"step\":%lld,\"val_loss\":%.9g,\"caption_acc\":%.9g",
                (long long)t->step, val_loss, acc);
        for (int a = 0; a < DATA_N_ATTR; a++) {
            double aa = (double)attr_right[a] / (double)n;
            printf("%s%s %.1f%%", a ? ", " : "", data_synth_attr_names[a], 100.0 * aa);
            fprintf(t->metrics, ",\"acc_%s\":%.9g", data_synth_attr_names[a], aa);
        }
        printf(") over %lld samples\n", (long long)n);
        fputs("}\n", t->metrics);
        fflush(t->metrics);
        for (int i = 0; i < n_last; i++)  // a few examples so a person sees what it says
            printf("  ref: %-44s gen: %s\n", last_ref[i], last_gen[i]);
        fflush(stdout);
    }
    free(mine);
    free(all);
    free(idx);
}

const train_family train_family_lm = {.kind = "transformer",
                                      .create = lm_create,
                                      .destroy = lm_destroy,
                                      .micro_step = lm_micro_step,
                                      .after_update = NULL,
                                      .evaluate = lm_evaluate,
                                      .seq_len = lm_seq_len};
