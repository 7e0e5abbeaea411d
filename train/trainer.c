// trainer.c: the main loop (DESIGN.md "Data flow"): loader -> forward -> backward ->
// gradient reduction -> clip -> AdamW -> metrics -> evaluation -> checkpoint, plus resume.
//
// Loss definition, chosen so that it does not depend on how a global batch is split over
// ranks and micro-steps: the mean over the global batch of each sample's mean token loss.
// Each micro-step's backward is scaled by 1/global_batch, so summing gradients over
// micro-steps and dp ranks gives exactly the global gradient.
#include "train.h"

#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "../model/model.h"
#include "ckpt.h"
#include "optim.h"

typedef struct {
    const mm_config *cfg;
    comm_group *world;
    int rank, world_size;
    int dp_rank, dp_size;
    data_audio_cfg audio;
    data_schema schema;      // of the training set
    data_loader *loader;     // owned
    data_dataset *val;       // owned, NULL without data.val
    data_featurizer *val_feat;  // owned
    data_batch val_batch;    // owned
    model *model;            // owned
    optim opt;               // owned
    int64_t step;            // optimizer steps completed
    mm_rng rng;              // training RNG (checkpointed)
    char *config_yaml;       // resolved config text, owned
    FILE *metrics;           // rank 0 only, owned
} trainer;

// --------------------------------------------------------------------------------------
// small helpers

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void fmt_eta(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e7) s = 0;
    int h = (int)(s / 3600), m = (int)(fmod(s, 3600) / 60), sec = (int)fmod(s, 60);
    if (h) snprintf(buf, n, "%dh%02dm", h, m);
    else snprintf(buf, n, "%dm%02ds", m, sec);
}

// Keeps only the metric lines of steps <= step, so a resumed run's metrics.jsonl reads like
// one uninterrupted run (lines written after the checkpoint by the killed run are dropped).
static int metrics_truncate(const char *path, int64_t step, mm_err *err) {
    char *text = NULL;
    size_t n = 0;
    mm_err ignore;
    if (mm_read_file(path, &text, &n, &ignore) != 0) return 0;  // no file yet
    char *out = mm_malloc(n + 1);
    size_t o = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line + 1) : strlen(line);
        const char *sp = strstr(line, "\"step\":");
        int keep = nl != NULL && sp && sp < line + len && strtoll(sp + 7, NULL, 10) <= step;
        if (keep) {
            memcpy(out + o, line, len);
            o += len;
        }
        line += len;
    }
    int rc = mm_write_file_atomic(path, out, o, err);
    free(out);
    free(text);
    return rc;
}

static model_input batch_input(const data_batch *b) {
    return (model_input){.B = b->B,
                         .image = b->image,
                         .has_image = b->has_image,
                         .audio = b->audio,
                         .has_audio = b->has_audio,
                         .tokens = b->tokens,
                         .targets = b->targets};
}

// --------------------------------------------------------------------------------------
// evaluation: validation loss, greedy captions, caption accuracy

static void evaluate(trainer *t) {
    const mm_config *c = t->cfg;
    const data_schema *vs = data_dataset_schema(t->val);
    int64_t n = (int64_t)vs->n_samples;
    if (c->eval.samples > 0 && c->eval.samples < n) n = c->eval.samples;
    const int stride = vs->text_max + 2;
    char *gen = mm_malloc((size_t)c->eval.batch * stride);
    uint64_t *idx = mm_malloc((size_t)c->eval.batch * sizeof(uint64_t));
    double loss_sum = 0.0;
    int64_t all_right = 0, attr_right[DATA_N_ATTR] = {0};
    FILE *ev = NULL;
    if (t->rank == 0) {
        char path[MM_STR + 64];
        snprintf(path, sizeof(path), "%s/eval", c->run.out_dir);
        mm_err e;
        if (mm_mkdirs(path, &e) != 0) comm_abort(t->world, 1, e.msg);
        snprintf(path, sizeof(path), "%s/eval/step_%08lld.jsonl", c->run.out_dir,
                 (long long)t->step);
        ev = fopen(path, "w");
        if (!ev) {
            char msg[MM_ERR_LEN];
            snprintf(msg, sizeof(msg), "error: %s: cannot write: %s", path, strerror(errno));
            comm_abort(t->world, 1, msg);
        }
    }
    for (int64_t s0 = 0; s0 < n; s0 += c->eval.batch) {
        int nb = (int)(n - s0 < c->eval.batch ? n - s0 : c->eval.batch);
        for (int i = 0; i < nb; i++) idx[i] = (uint64_t)(s0 + i);
        mm_err e;
        if (data_dataset_read(t->val, idx, nb, t->val_feat, &t->val_batch, &e) != 0) {
            char msg[MM_ERR_LEN + 16];
            snprintf(msg, sizeof(msg), "error: %s", e.msg);
            comm_abort(t->world, 1, msg);
        }
        model_input in = batch_input(&t->val_batch);
        loss_sum += model_forward(t->model, &in, NULL);
        model_generate(t->model, &in, gen, stride);
        for (int i = 0; i < nb; i++) {
            const char *ref = t->val_batch.text + (size_t)i * (vs->text_max + 1);
            const char *g = gen + (size_t)i * stride;
            int correct[DATA_N_ATTR];
            all_right += data_synth_score(ref, g, correct);
            for (int a = 0; a < DATA_N_ATTR; a++) attr_right[a] += correct[a];
            if (ev) {
                fprintf(ev, "{\"sample_id\":%llu,\"reference\":",
                        (unsigned long long)t->val_batch.sample_id[i]);
                json_string(ev, ref);
                fputs(",\"generated\":", ev);
                json_string(ev, g);
                fputs("}\n", ev);
            }
        }
    }
    double val_loss = loss_sum / (double)n;
    double acc = (double)all_right / (double)n;
    if (t->rank == 0) {
        fclose(ev);
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
        // a few examples so a person can see what the model says
        int show = t->val_batch.B < 3 ? t->val_batch.B : 3;
        for (int i = 0; i < show; i++)
            printf("  ref: %-44s gen: %s\n", t->val_batch.text + (size_t)i * (vs->text_max + 1),
                   gen + (size_t)i * stride);
        fflush(stdout);
    }
    free(gen);
    free(idx);
}

// --------------------------------------------------------------------------------------
// checkpoints

static void save_checkpoint(trainer *t) {
    const mm_config *c = t->cfg;
    model *m = t->model;
    ckpt_meta meta = {.step = t->step,
                      .pos = data_loader_pos(t->loader),
                      .rng = t->rng,
                      .world = t->world_size,
                      .tp = c->parallel.tp,
                      .dp = t->dp_size};
    ckpt_state st = {.tensors = model_tensors(m),
                     .n_tensors = model_n_tensors(m),
                     .n_params = model_n_params(m),
                     .params = model_params(m),
                     .m = t->opt.m,
                     .v = t->opt.v};
    mm_err e;
    double t0 = mm_now();
    if (ckpt_save(t->world, c->run.out_dir, &meta, t->config_yaml, &st, t->dp_rank == 0,
                  c->checkpoint.keep_last, &e) != 0) {
        char msg[MM_ERR_LEN + 16];
        snprintf(msg, sizeof(msg), "error: %s", e.msg);
        comm_abort(t->world, 1, msg);
    }
    if (t->rank == 0) {
        printf("checkpoint step %lld saved to %s/ckpt/step_%08lld (%.2fs)\n", (long long)t->step,
               c->run.out_dir, (long long)t->step, mm_now() - t0);
        fflush(stdout);
    }
}

// Architecture keys must match between a checkpoint and the run that resumes it.
static int check_same_arch(const mm_config *now, const char *saved_yaml, const char *dir,
                           mm_err *err) {
    mm_config saved;
    mm_err e;
    if (mm_config_load_string(&saved, saved_yaml, dir, &e) != 0)
        return mm_fail(err, "%s: saved config does not parse: %s", dir, e.msg);
#define SAME(field)                                                                         \
    if (now->field != saved.field)                                                          \
        return mm_fail(err, "%s: checkpoint has " #field " = %lld, the config says %lld", dir, \
                       (long long)saved.field, (long long)now->field);
    SAME(model.d_model) SAME(model.n_layers) SAME(model.n_heads) SAME(model.d_ff)
    SAME(model.patch) SAME(model.audio_group) SAME(data.n_mels) SAME(data.n_fft) SAME(data.hop)
#undef SAME
    if (strcmp(now->model.kind, saved.model.kind) != 0)
        return mm_fail(err, "%s: checkpoint is a %s model, the config asks for %s", dir,
                       saved.model.kind, now->model.kind);
    return 0;
}

// Resolves checkpoint.resume: fills *found = 1 and dir when there is something to resume.
static int resume_target(const trainer *t, char *dir, size_t n, int *found, mm_err *err) {
    const char *r = t->cfg->checkpoint.resume;
    *found = 0;
    if (strcmp(r, "none") == 0) return 0;
    if (strcmp(r, "auto") == 0) {
        int rc = ckpt_find_latest(t->cfg->run.out_dir, dir, n, err);
        if (rc < 0) return -1;
        *found = rc;
        return 0;
    }
    snprintf(dir, n, "%s", r);
    *found = 1;
    return 0;
}

static int load_checkpoint(trainer *t, data_pos *pos, mm_err *err) {
    char dir[MM_STR + 64];
    int found = 0;
    if (resume_target(t, dir, sizeof(dir), &found, err) != 0) return -1;
    model *m = t->model;
    ckpt_state st = {.tensors = model_tensors(m),
                     .n_tensors = model_n_tensors(m),
                     .n_params = model_n_params(m),
                     .params = model_params(m),
                     .m = t->opt.m,
                     .v = t->opt.v};
    if (found) {
        ckpt_meta meta;
        char *saved = NULL;
        if (ckpt_load_meta(dir, &meta, &saved, err) != 0) return -1;
        int rc = check_same_arch(t->cfg, saved, dir, err);
        free(saved);
        if (rc != 0 || ckpt_load_state(dir, &st, err) != 0) return -1;
        t->step = meta.step;
        t->rng = meta.rng;
        *pos = meta.pos;
        if (t->rank == 0) {
            printf("resumed from %s at step %lld (epoch %lld, offset %llu)\n", dir,
                   (long long)meta.step, (long long)meta.pos.epoch,
                   (unsigned long long)meta.pos.offset);
        }
        return 0;
    }
    if (t->cfg->checkpoint.init_from[0]) {
        st.m = st.v = NULL;  // weights only: a fine-tune starts its own optimizer and data
        if (ckpt_load_state(t->cfg->checkpoint.init_from, &st, err) != 0) return -1;
        if (t->rank == 0) printf("initialized weights from %s\n", t->cfg->checkpoint.init_from);
    }
    return 0;
}

// --------------------------------------------------------------------------------------
// set-up and tear-down

static void trainer_free(trainer *t) {
    if (t->loader) data_loader_close(t->loader);
    if (t->val) data_dataset_close(t->val);
    if (t->val_feat) data_featurizer_free(t->val_feat);
    data_batch_free(&t->val_batch);
    if (t->model) model_free(t->model);
    if (t->opt.m) optim_free(&t->opt);
    free(t->config_yaml);
    if (t->metrics) fclose(t->metrics);
}

static int trainer_init(trainer *t, const mm_config *c, comm_group *world, mm_err *err) {
    memset(t, 0, sizeof(*t));
    t->cfg = c;
    t->world = world;
    t->rank = comm_rank(world);
    t->world_size = comm_size(world);
    if (c->parallel.tp != 1)
        return mm_fail(err, "parallel.tp = %d: tensor parallelism is not available yet (use 1)",
                       c->parallel.tp);
    t->dp_size = t->world_size / c->parallel.tp;
    t->dp_rank = t->rank / c->parallel.tp;
    if (c->data.global_batch % (c->data.micro_batch * t->dp_size) != 0)
        return mm_fail(err,
                       "data.global_batch = %d is not a multiple of data.micro_batch (%d) x "
                       "data-parallel ranks (%d)",
                       c->data.global_batch, c->data.micro_batch, t->dp_size);
    t->audio = (data_audio_cfg){.n_fft = c->data.n_fft, .hop = c->data.hop,
                                .n_mels = c->data.n_mels};
    t->config_yaml = mm_config_to_yaml(c);
    mm_rng_init(&t->rng, c->run.seed, 0x7472616eULL);  // "tran"

    // Model first (its shapes come from the training set's schema), then the checkpoint,
    // then the loader at the checkpoint's position.
    data_dataset *probe = NULL;
    if (data_dataset_open(&probe, c->data.train, 0, err) != 0) return -1;
    t->schema = *data_dataset_schema(probe);
    data_dataset_close(probe);
    if (data_audio_frames(&t->schema, &t->audio) < c->model.audio_group)
        return mm_fail(err, "%s: clips of %d samples give fewer than model.audio_group = %d "
                       "frames with data.n_fft = %d, data.hop = %d",
                       c->data.train, t->schema.audio_len, c->model.audio_group, c->data.n_fft,
                       c->data.hop);
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
                       .tp = 1,
                       .tp_rank = 0};
    int max_B = c->data.micro_batch > c->eval.batch ? c->data.micro_batch : c->eval.batch;
    mm_err me;
    if (model_create(&t->model, &mc, &model_ops_cpu, max_B, c->run.seed, &me) != 0)
        return mm_fail(err, "model: %s", me.msg);
    optim_cfg oc = {.lr = c->optim.lr,
                    .min_lr = c->optim.min_lr,
                    .warmup = c->optim.warmup,
                    .total = c->run.steps,
                    .beta1 = c->optim.beta1,
                    .beta2 = c->optim.beta2,
                    .eps = c->optim.eps,
                    .weight_decay = c->optim.weight_decay,
                    .grad_clip = c->optim.grad_clip};
    optim_init(&t->opt, &oc, model_tensors(t->model), model_n_tensors(t->model),
               model_n_params(t->model));

    if (t->rank == 0) {
        if (mm_mkdirs(c->run.out_dir, err) != 0) return -1;
        if (strcmp(c->checkpoint.resume, "auto") == 0) ckpt_clean_partial(c->run.out_dir);
    }
    comm_barrier(world);
    data_pos pos = {0, 0};
    if (load_checkpoint(t, &pos, err) != 0) return -1;

    data_loader_cfg lc = {.dir = c->data.train,
                          .seed = c->run.seed,
                          .global_batch = c->data.global_batch,
                          .micro_batch = c->data.micro_batch,
                          .dp_rank = t->dp_rank,
                          .dp_size = t->dp_size,
                          .depth = c->data.prefetch,
                          .verify = c->data.verify,
                          .start = pos,
                          .audio = t->audio};
    if (data_loader_open(&t->loader, &lc, err) != 0) return -1;
    if (c->data.val[0]) {
        if (data_dataset_open(&t->val, c->data.val, c->data.verify, err) != 0) return -1;
        const data_schema *vs = data_dataset_schema(t->val);
        if (vs->img_h != t->schema.img_h || vs->img_w != t->schema.img_w ||
            vs->img_c != t->schema.img_c || vs->audio_len != t->schema.audio_len ||
            vs->audio_rate != t->schema.audio_rate || vs->text_max != t->schema.text_max)
            return mm_fail(err, "%s: validation schema differs from the training set %s",
                           c->data.val, c->data.train);
        t->val_feat = data_featurizer_new(vs, &t->audio);
        data_batch_alloc(&t->val_batch, c->eval.batch, vs, &t->audio);
    }

    if (t->rank == 0) {
        char path[MM_STR + 32];
        snprintf(path, sizeof(path), "%s/config.yaml", c->run.out_dir);
        if (mm_write_file_atomic(path, t->config_yaml, strlen(t->config_yaml), err) != 0)
            return -1;
        snprintf(path, sizeof(path), "%s/metrics.jsonl", c->run.out_dir);
        if (metrics_truncate(path, t->step, err) != 0) return -1;
        t->metrics = fopen(path, "a");
        if (!t->metrics) return mm_fail(err, "%s: cannot write: %s", path, strerror(errno));
        printf("--- resolved config (saved to %s/config.yaml) ---\n%s---\n", c->run.out_dir,
               t->config_yaml);
        printf("model: %zu parameters, sequence %d tokens; %d rank(s), %d thread(s) each; "
               "train %llu samples\n",
               model_n_params(t->model), model_seq_len(t->model), t->world_size,
               omp_get_max_threads(), (unsigned long long)t->schema.n_samples);
        fflush(stdout);
    }
    return 0;
}

// --------------------------------------------------------------------------------------
// the loop

int train_run(const mm_config *c, comm_group *world, mm_err *err) {
    trainer t;
    if (trainer_init(&t, c, world, err) != 0) {
        trainer_free(&t);
        return -1;
    }
    model *m = t.model;
    const int G = c->data.global_batch;
    const int accum = G / (c->data.micro_batch * t.dp_size);
    const double tokens_per_step = (double)G * model_seq_len(m);
    const int64_t first = t.step;
    double t_start = mm_now();
    while (t.step < c->run.steps) {
        double t0 = mm_now();
        model_zero_grad(m);
        double loss_sum = 0.0;
        for (int k = 0; k < accum; k++) {
            mm_err e;
            const data_batch *b = data_loader_next(t.loader, &e);
            if (!b) {
                char msg[MM_ERR_LEN + 16];
                snprintf(msg, sizeof(msg), "error: %s", e.msg);
                comm_abort(world, 1, msg);
            }
            model_input in = batch_input(b);
            loss_sum += model_forward(m, &in, NULL);
            model_backward(m, &in, (mm_real)(1.0 / G));
        }
        // Data parallel: the scaled gradients of all ranks add up to the global gradient.
        comm_allreduce_sum(world, model_grads(m), model_n_params(m), COMM_F32);
        comm_allreduce_sum(world, &loss_sum, 1, COMM_F64);
        double loss = loss_sum / G;
        double gnorm = sqrt(optim_sumsq(model_grads(m), model_n_params(m)));
        double scale = 1.0;
        if (c->optim.grad_clip > 0 && gnorm > c->optim.grad_clip)
            scale = c->optim.grad_clip / (gnorm + 1e-6);
        double lr = optim_lr(&t.opt.cfg, t.step);
        optim_adamw(&t.opt, model_params(m), model_grads(m), t.step + 1, lr, scale);
        double dt = mm_now() - t0;
        double wait = data_loader_take_wait(t.loader);
        const int64_t done = ++t.step;

        if (t.rank == 0) {
            double tps = tokens_per_step / dt;
            fprintf(t.metrics,
                    "{\"step\":%lld,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,"
                    "\"tokens_per_s\":%.9g,\"data_wait\":%.9g,\"step_time\":%.9g}\n",
                    (long long)done, loss, lr, gnorm, tps, wait / dt, dt);
            if (done % c->run.log_every == 0 || done == c->run.steps || done == first + 1) {
                char eta[32];
                double per = (mm_now() - t_start) / (double)(done - first);
                fmt_eta(eta, sizeof(eta), per * (double)(c->run.steps - done));
                printf("step %6lld/%lld | loss %.6f | lr %.3e | grad_norm %.4f | %.0f tok/s | "
                       "data-wait %.1f%% | eta %s\n",
                       (long long)done, (long long)c->run.steps, loss, lr, gnorm, tps,
                       100.0 * wait / dt, eta);
                fflush(stdout);
                fflush(t.metrics);
            }
        }
        // stop_after ends the run early as a preemption would, keeping the schedule of
        // run.steps, so that a later resume continues the same run.
        int stop = c->run.stop_after > 0 && done == c->run.stop_after;
        int last = done == c->run.steps;
        if (t.val && ((c->eval.every > 0 && done % c->eval.every == 0) || last)) evaluate(&t);
        if ((c->checkpoint.every > 0 && done % c->checkpoint.every == 0) || last || stop)
            save_checkpoint(&t);
        if (stop && !last) {
            if (t.rank == 0) printf("stopping after step %lld (run.stop_after)\n", (long long)done);
            break;
        }
    }
    if (t.rank == 0 && t.step == first)
        printf("nothing to do: the checkpoint is already at run.steps = %lld\n",
               (long long)c->run.steps);
    trainer_free(&t);
    return 0;
}
