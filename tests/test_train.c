// test_train.c: end-to-end properties of the training loop on a tiny model and a small
// synthetic set: (1) a run of 2N steps equals a run stopped after N steps and resumed for N
// more, bit for bit (losses, gradient norms, parameters and AdamW state); (2) the model
// learns: validation loss ends far below the uniform-prediction loss ln(vocab); (3) bad
// inputs the loop itself detects are clean errors.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../model/backend.h"
#include "../model/diffusion.h"
#include "../train/ckpt.h"
#include "../train/config.h"
#include "../train/train.h"
#include "test.h"

static void config_for(mm_config *c, const char *data, const char *out, const char *extra[]) {
    char buf[1024];
    const char *base[] = {"model.d_model=32", "model.n_layers=2", "model.n_heads=2",
                          "model.patch=8", "data.global_batch=8", "data.micro_batch=4",
                          "run.steps=12", "checkpoint.every=6", "eval.samples=16",
                          "eval.batch=16", "run.log_every=100", "optim.warmup=2",
                          "run.threads=2", NULL};
    mm_err err;
    mm_config_default(c);
    for (int i = 0; base[i]; i++) MM_CHECK(mm_config_set(c, base[i], &err) == 0, "%s", err.msg);
    snprintf(buf, sizeof(buf), "data.train=%s/train", data);
    MM_CHECK(mm_config_set(c, buf, &err) == 0, "%s", err.msg);
    snprintf(buf, sizeof(buf), "data.val=%s/val", data);
    MM_CHECK(mm_config_set(c, buf, &err) == 0, "%s", err.msg);
    snprintf(buf, sizeof(buf), "run.out_dir=%s", out);
    MM_CHECK(mm_config_set(c, buf, &err) == 0, "%s", err.msg);
    for (int i = 0; extra && extra[i]; i++)
        MM_CHECK(mm_config_set(c, extra[i], &err) == 0, "%s", err.msg);
    MM_CHECK(mm_config_validate(c, &err) == 0, "%s", err.msg);
}

// The metric lines of training steps with the timing fields cut off (those legitimately
// differ between runs). Caller frees.
static char *step_metrics(const char *out) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/metrics.jsonl", out);
    char *text = NULL;
    mm_err err;
    if (mm_read_file(path, &text, NULL, &err) != 0) return NULL;
    char *res = mm_calloc(strlen(text) + 1, 1);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *cut = strstr(line, ",\"tokens_per_s\"");
        if (!cut) continue;  // evaluation lines
        strncat(res, line, (size_t)(cut - line));
        strcat(res, "\n");
    }
    free(text);
    return res;
}

// The last val_loss written to metrics.jsonl, or NAN.
static double last_val_loss(const char *out) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/metrics.jsonl", out);
    char *text = NULL;
    mm_err err;
    if (mm_read_file(path, &text, NULL, &err) != 0) return NAN;
    double v = NAN;
    for (char *p = strstr(text, "\"val_loss\":"); p; p = strstr(p + 1, "\"val_loss\":"))
        v = strtod(p + 11, NULL);
    free(text);
    return v;
}

typedef struct {
    float *params, *m, *v, *ema;
    size_t n;
} state_copy;

// Loads the state of checkpoint dir (and the EMA for diffusion) using the tensor table of a
// fresh network built from cfg the way the trainer builds it.
static int load_state(const mm_config *c, const char *dir, state_copy *s) {
    data_dataset *ds = NULL;
    mm_err err;
    if (data_dataset_open(&ds, c->data.train, 0, &err) != 0) return -1;
    data_audio_cfg a = {c->data.n_fft, c->data.hop, c->data.n_mels};
    const data_schema sc = *data_dataset_schema(ds);
    data_dataset_close(ds);
    const int diffusion = strcmp(c->model.kind, "diffusion") == 0;
    model *m = NULL;
    dit *d = NULL;
    const model_tensor *tensors;
    int n_tensors;
    if (diffusion) {
        dit_config dc = {.d_model = c->model.d_model, .n_layers = c->model.n_layers,
                         .n_heads = c->model.n_heads, .d_ff = 4 * c->model.d_model,
                         .img_h = sc.img_h, .img_w = sc.img_w, .img_c = sc.img_c,
                         .patch = c->model.patch, .vocab = DATA_VOCAB, .text_T = sc.text_max + 1,
                         .audio_F = data_audio_frames(&sc, &a), .n_mels = c->data.n_mels,
                         .audio_group = c->model.audio_group,
                         .enc_layers = c->diffusion.enc_layers, .tp = 1, .tp_rank = 0};
        if (dit_create(&d, &dc, &mm_backend_cpu, 1, 1, &err) != 0) return -1;
        s->n = dit_n_params(d);
        tensors = dit_tensors(d);
        n_tensors = dit_n_tensors(d);
    } else {
        model_config mc = {.d_model = c->model.d_model, .n_layers = c->model.n_layers,
                           .n_heads = c->model.n_heads, .d_ff = 4 * c->model.d_model,
                           .vocab = DATA_VOCAB, .text_T = sc.text_max + 1, .img_h = sc.img_h,
                           .img_w = sc.img_w, .img_c = sc.img_c, .patch = c->model.patch,
                           .audio_F = data_audio_frames(&sc, &a), .n_mels = c->data.n_mels,
                           .audio_group = c->model.audio_group, .tp = 1, .tp_rank = 0};
        if (model_create(&m, &mc, &mm_backend_cpu, 1, 1, &err) != 0) return -1;
        s->n = model_n_params(m);
        tensors = model_tensors(m);
        n_tensors = model_n_tensors(m);
    }
    s->params = mm_calloc(s->n, sizeof(float));
    s->m = mm_calloc(s->n, sizeof(float));
    s->v = mm_calloc(s->n, sizeof(float));
    s->ema = diffusion ? mm_calloc(s->n, sizeof(float)) : NULL;
    ckpt_state st = {tensors, n_tensors, s->n, s->params, s->m, s->v, s->ema};
    int rc = ckpt_load_state(dir, &st, &err);
    if (rc != 0) fprintf(stderr, "load_state: %s\n", err.msg);
    if (m) model_free(m);
    if (d) dit_free(d);
    return rc;
}

static void state_free(state_copy *s) {
    free(s->params);
    free(s->m);
    free(s->v);
    free(s->ema);
}

// A run of 12 steps equals one stopped after 6 and resumed, bit for bit: per-step metrics,
// parameters, AdamW moments (and the EMA when the model keeps one).
static void check_resume(test_counts *tc, comm_group *world, const char *data, const char *A,
                         const char *B, const char *extra[]) {
    mm_config ca, cb;
    mm_err err;
    const char *more[16];
    int n = 0;
    for (; extra && extra[n]; n++) more[n] = extra[n];
    config_for(&ca, data, A, extra);
    TEST_CHECK(tc, train_run(&ca, world, &err) == 0, "run %s: %s", A, err.msg);
    more[n] = "run.stop_after=6";
    more[n + 1] = NULL;
    config_for(&cb, data, B, more);
    TEST_CHECK(tc, train_run(&cb, world, &err) == 0, "run %s part 1: %s", B, err.msg);
    char path[512];
    int found = ckpt_find_latest(B, path, sizeof(path), &err);
    TEST_CHECK(tc, found == 1 && strstr(path, "step_00000006"), "%s stopped at step 6: %s", B,
               found == 1 ? path : err.msg);
    config_for(&cb, data, B, extra);
    TEST_CHECK(tc, train_run(&cb, world, &err) == 0, "run %s part 2: %s", B, err.msg);
    char *ma = step_metrics(A), *mb = step_metrics(B);
    TEST_CHECK(tc, ma && mb && strcmp(ma, mb) == 0,
               "per-step loss/lr/grad_norm differ after resume:\nA:\n%s\nB:\n%s", ma, mb);
    TEST_CHECK(tc, ma && strstr(ma, "\"step\":12,"), "%s logged 12 steps", A);
    free(ma);
    free(mb);
    char da[512], db[512];
    snprintf(da, sizeof(da), "%s/ckpt/step_00000012", A);
    snprintf(db, sizeof(db), "%s/ckpt/step_00000012", B);
    state_copy sa = {0}, sb = {0};
    int la = load_state(&ca, da, &sa), lb = load_state(&cb, db, &sb);
    TEST_CHECK(tc, la == 0 && lb == 0, "final checkpoints load");
    if (la == 0 && lb == 0) {
        TEST_CHECK(tc, memcmp(sa.params, sb.params, sa.n * sizeof(float)) == 0,
                   "%s: parameters bit-identical after resume", ca.model.kind);
        TEST_CHECK(tc, memcmp(sa.m, sb.m, sa.n * sizeof(float)) == 0, "AdamW m identical");
        TEST_CHECK(tc, memcmp(sa.v, sb.v, sa.n * sizeof(float)) == 0, "AdamW v identical");
        if (sa.ema)
            TEST_CHECK(tc, memcmp(sa.ema, sb.ema, sa.n * sizeof(float)) == 0,
                       "EMA bit-identical after resume");
    }
    state_free(&sa);
    state_free(&sb);
    // Resuming a finished run does no step and succeeds.
    TEST_CHECK(tc, train_run(&cb, world, &err) == 0, "resume of a finished run: %s", err.msg);
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    test_counts tc = {0, 0};
    omp_set_num_threads(2);
    char tmpl[] = "/tmp/mm_test_train_XXXXXX";
    char *root = mkdtemp(tmpl);
    MM_CHECK(root, "mkdtemp failed");
    char data[256], A[256], B[256], L[256], cmd[512];
    snprintf(data, sizeof(data), "%s/data", root);
    snprintf(A, sizeof(A), "%s/A", root);
    snprintf(B, sizeof(B), "%s/B", root);
    snprintf(L, sizeof(L), "%s/L", root);
    mm_err err;
    data_synth_cfg sc;
    data_synth_default(&sc);
    MM_CHECK(data_synth_write(data, 640, 7, &sc, &err) == 0, "%s", err.msg);

    // (1) bit-exact resume, for both model kinds
    check_resume(&tc, world, data, A, B, NULL);
    char DA[256], DB[256];
    snprintf(DA, sizeof(DA), "%s/DA", root);
    snprintf(DB, sizeof(DB), "%s/DB", root);
    const char *dit_keys[] = {"model.kind=diffusion", "model.patch=4", "diffusion.enc_layers=1",
                              "diffusion.eval_samples=4", "diffusion.sample_steps=2", NULL};
    check_resume(&tc, world, data, DA, DB, dit_keys);

    // (2) learning: validation loss falls far below ln(vocab) (uniform prediction).
    mm_config cl;
    const char *learn[] = {"run.steps=300", "checkpoint.every=0", "optim.lr=3e-3",
                           "optim.warmup=5", "eval.every=0", NULL};
    config_for(&cl, data, L, learn);
    TEST_CHECK(&tc, train_run(&cl, world, &err) == 0, "learning run: %s", err.msg);
    double vl = last_val_loss(L), uniform = log((double)DATA_VOCAB);
    printf("learning: val_loss %.4f after 300 steps (uniform %.4f)\n", vl, uniform);
    TEST_CHECK(&tc, vl < 0.35 * uniform, "val_loss %.4f not well below ln(V) = %.4f", vl,
               uniform);

    // (3) bad inputs seen by the loop: a resume path that is no checkpoint, missing data,
    // a checkpoint of another architecture.
    mm_config cx;
    const char *badresume[] = {"checkpoint.resume=/nonexistent/ckpt", NULL};
    config_for(&cx, data, L, badresume);
    TEST_CHECK(&tc, train_run(&cx, world, &err) != 0 && strstr(err.msg, "/nonexistent/ckpt"),
               "bad resume path is an error naming it: %s", err.msg);
    const char *otherarch[] = {"model.d_model=64", "run.steps=13", NULL};
    config_for(&cx, data, A, otherarch);
    TEST_CHECK(&tc, train_run(&cx, world, &err) != 0 && strstr(err.msg, "d_model"),
               "resuming another architecture is an error naming the key: %s", err.msg);
    config_for(&cx, "/nonexistent/data", L, NULL);
    TEST_CHECK(&tc, train_run(&cx, world, &err) != 0 && strstr(err.msg, "/nonexistent/data"),
               "missing dataset is an error naming it: %s", err.msg);

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", root);
    int rc = test_finish(&tc);
    comm_finalize(world);
    return rc;
}
