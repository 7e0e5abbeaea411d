// test_finetune.c: fine-tuning and export, end to end on tiny models (one process):
//   - list-valued config keys (optim.freeze, checkpoint.reinit): YAML, overrides, round trip,
//     bad items;
//   - parameter groups in AdamW: per-group learning rates against Adam's closed-form first
//     step, frozen tensors bit-identical and outside the gradient norm;
//   - `mmdata synth --only`: a differently distributed split (captions read back);
//   - schema defaults: data.img_* / audio_* / text_max resolved from the data into the saved
//     config; a value that disagrees with the data, or a resume on data of another shape, is
//     an error naming key, dataset and shapes;
//   - a transformer trained on one split and fine-tuned on another improves on it (val loss
//     before vs after, and vs training from scratch for as long);
//   - freezing keeps every frozen tensor's bytes (and zero AdamW moments), both model kinds;
//   - init_from mismatches listed tensor by tensor; checkpoint.reinit lets them through;
//   - a fine-tune stopped and resumed (resume: auto) equals an uninterrupted one bit for bit,
//     and resumes from its own checkpoint even when the base weights are gone;
//   - diffusion: the EMA starts from the checkpoint's /ema;
//   - export: every tensor equals the checkpoint's, and a tp=2 save of the same weights
//     exports byte-equal tensors.
// `test_finetune --same-tensors A.h5 B.h5 params|ema [PREFIX...]` compares two exports'
// tensors (used by finetune_cli.sh) and prints "same: N tensors" or "differ: why".
#define _POSIX_C_SOURCE 200809L
#include <hdf5.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../model/backend.h"
#include "../model/model.h"
#include "../train/ckpt.h"
#include "../train/config.h"
#include "../train/optim.h"
#include "../train/train.h"
#include "test.h"

// ---------------------------------------------------------------------------------------
// helpers

static void set_all(mm_config *c, const char *const *kv) {
    mm_err err;
    for (int i = 0; kv && kv[i]; i++)
        MM_CHECK(mm_config_set(c, kv[i], &err) == 0, "%s: %s", kv[i], err.msg);
}

// A tiny run on data (a directory with train/ and val/) into out, plus extra overrides.
static void config_for(mm_config *c, const char *data, const char *out, const char *const *extra) {
    static const char *const base[] = {
        "model.d_model=32",  "model.n_layers=2",   "model.n_heads=2",  "model.patch=8",
        "data.global_batch=8", "data.micro_batch=8", "run.steps=12",     "checkpoint.every=0",
        "eval.samples=48",   "eval.batch=48",      "run.log_every=1000", "optim.warmup=2",
        "run.threads=2",     NULL};
    char buf[3][600];
    mm_config_default(c);
    set_all(c, base);
    snprintf(buf[0], sizeof(buf[0]), "data.train=%s/train", data);
    snprintf(buf[1], sizeof(buf[1]), "data.val=%s/val", data);
    snprintf(buf[2], sizeof(buf[2]), "run.out_dir=%s", out);
    const char *paths[] = {buf[0], buf[1], buf[2], NULL};
    set_all(c, paths);
    set_all(c, extra);
    mm_err err;
    MM_CHECK(mm_config_validate(c, &err) == 0, "%s", err.msg);
}

// Runs that only need their checkpoint skip validation (caption generation dominates a tiny
// run's time).
#define NOVAL "data.val="

static int run_cfg(comm_group *world, const char *data, const char *out,
                   const char *const *extra, mm_err *err) {
    mm_config c;
    config_for(&c, data, out, extra);
    return train_run(&c, world, err);
}

// The last val_loss in <out>/metrics.jsonl, or NAN.
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

// The step lines of metrics.jsonl without timing fields. Caller frees.
static char *step_metrics(const char *out) {
    char path[1024];
    snprintf(path, sizeof(path), "%s/metrics.jsonl", out);
    char *text = NULL;
    mm_err err;
    if (mm_read_file(path, &text, NULL, &err) != 0) return NULL;
    char *res = mm_calloc(strlen(text) + 1, 1);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *cut = strstr(line, ",\"tokens_per_s\"");
        if (!cut) continue;
        strncat(res, line, (size_t)(cut - line));
        strcat(res, "\n");
    }
    free(text);
    return res;
}

// Every tensor of a checkpoint as whole tensors, read by name without any model code (so
// the test does not share the trainer's view of which tensor is which).
typedef struct {
    int n;
    ckpt_tensor_info *info;  // (n)
    model_tensor *tab;       // (n) whole tensors, consecutive
    size_t total;
    float *p, *m, *v, *ema;  // (total) each; ema NULL without /ema
} ckpt_dump;

static int dump_load(const char *path, ckpt_dump *d, mm_err *err) {
    memset(d, 0, sizeof(*d));
    char dir[1024];
    if (ckpt_resolve(path, dir, sizeof(dir), err) != 0) return -1;
    ckpt_tensor_info *ema_info = NULL;
    int n_ema = 0;
    if (ckpt_list_tensors(dir, "params", &d->info, &d->n, err) != 0 ||
        ckpt_list_tensors(dir, "ema", &ema_info, &n_ema, err) != 0)
        return -1;
    free(ema_info);
    d->tab = mm_calloc((size_t)d->n, sizeof(model_tensor));
    for (int i = 0; i < d->n; i++) {
        model_tensor *t = &d->tab[i];
        snprintf(t->name, sizeof(t->name), "%s", d->info[i].name);
        t->ndim = d->info[i].ndim;
        t->split_dim = -1;
        t->size = 1;
        for (int k = 0; k < t->ndim; k++) {
            t->shape[k] = t->local[k] = d->info[i].shape[k];
            t->size *= (size_t)t->shape[k];
        }
        t->offset = d->total;
        d->total += t->size;
    }
    d->p = mm_calloc(d->total, sizeof(float));
    d->m = mm_calloc(d->total, sizeof(float));
    d->v = mm_calloc(d->total, sizeof(float));
    d->ema = n_ema ? mm_calloc(d->total, sizeof(float)) : NULL;
    ckpt_state st = {d->tab, d->n, d->total, d->p, d->m, d->v, d->ema};
    return ckpt_load_state(dir, &st, err);
}

static void dump_free(ckpt_dump *d) {
    free(d->info);
    free(d->tab);
    free(d->p);
    free(d->m);
    free(d->v);
    free(d->ema);
    memset(d, 0, sizeof(*d));
}

static const model_tensor *dump_find(const ckpt_dump *d, const char *name) {
    for (int i = 0; i < d->n; i++)
        if (strcmp(d->tab[i].name, name) == 0) return &d->tab[i];
    return NULL;
}

static int starts(const char *s, const char *p) { return strncmp(s, p, strlen(p)) == 0; }

// ---------------------------------------------------------------------------------------
// list-valued config keys

static void test_config_lists(test_counts *tc, const char *root) {
    char path[512];
    snprintf(path, sizeof(path), "%s/lists.yaml", root);
    FILE *f = fopen(path, "w");
    MM_CHECK(f, "cannot write %s", path);
    fputs("optim:\n  freeze: [audio, text]\n  lr_mult_trunk: 0.5\n"
          "checkpoint:\n  init_from: base\n  reinit:\n    - \"*.pos\"\n    - lm_head.w\n",
          f);
    fclose(f);
    mm_config c, d;
    mm_err err = {{0}};
    int rc = mm_config_load(&c, path, 0, NULL, &err);
    TEST_CHECK(tc, rc == 0, "list YAML loads: %s", err.msg);
    TEST_CHECK(tc, c.optim.freeze.n == 2 && strcmp(c.optim.freeze.item[0], "audio") == 0 &&
                       strcmp(c.optim.freeze.item[1], "text") == 0,
               "freeze parsed");
    TEST_CHECK(tc, c.checkpoint.reinit.n == 2 && strcmp(c.checkpoint.reinit.item[0], "*.pos") == 0,
               "reinit block list parsed");
    TEST_CHECK(tc, c.optim.lr_mult[MODEL_GROUP_TRUNK] == 0.5 && c.optim.lr_mult[0] == 1.0,
               "lr_mult");
    char *yaml = mm_config_to_yaml(&c);
    rc = mm_config_load_string(&d, yaml, "saved", &err);
    TEST_CHECK(tc, rc == 0 && memcmp(&c, &d, sizeof(c)) == 0, "lists round trip: %s\n%s",
               err.msg, yaml);
    TEST_CHECK(tc, strstr(yaml, "  reinit: [\"*.pos\", \"lm_head.w\"]\n") != NULL,
               "quoted flow list in YAML:\n%s", yaml);
    free(yaml);
    // overrides: comma list, bracket list, empty
    TEST_CHECK(tc, mm_config_set(&c, "optim.freeze=trunk, image", &err) == 0 &&
                       c.optim.freeze.n == 2 && strcmp(c.optim.freeze.item[1], "image") == 0,
               "override list: %s", err.msg);
    TEST_CHECK(tc, mm_config_set(&c, "optim.freeze=[text]", &err) == 0 && c.optim.freeze.n == 1,
               "bracket override: %s", err.msg);
    TEST_CHECK(tc, mm_config_set(&c, "optim.freeze=", &err) == 0 && c.optim.freeze.n == 0,
               "empty override: %s", err.msg);
    TEST_CHECK(tc, mm_config_set(&c, "optim.freeze=[sound]", &err) == -1 &&
                       strstr(err.msg, "'sound' is not one of text|image|audio|trunk"),
               "bad group: %s", err.msg);
    TEST_CHECK(tc, mm_config_set(&c, "optim.freeze=text,text", &err) == -1 &&
                       strstr(err.msg, "listed twice"),
               "duplicate group: %s", err.msg);
    TEST_CHECK(tc, mm_config_set(&c, "checkpoint.reinit=a,,b", &err) == -1 &&
                       strstr(err.msg, "item 2 is empty"),
               "empty item: %s", err.msg);
    TEST_CHECK(tc, mm_config_set(&c, "checkpoint.reinit=a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q",
                                 &err) == -1 && strstr(err.msg, "more than 16"),
               "too many items: %s", err.msg);
    f = fopen(path, "w");
    fputs("optim:\n  freeze: [[audio]]\n", f);
    fclose(f);
    rc = mm_config_load(&c, path, 0, NULL, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "lists.yaml:2:12: optim.freeze: expected a list"),
               "nested list: %s", err.msg);
    mm_config_default(&c);
    set_all(&c, (const char *const[]){"data.train=/d", "checkpoint.reinit=lm_head.*", NULL});
    TEST_CHECK(tc, mm_config_validate(&c, &err) == -1 && strstr(err.msg, "checkpoint.init_from"),
               "reinit without init_from: %s", err.msg);
}

// ---------------------------------------------------------------------------------------
// AdamW parameter groups against Adam's first step: m = (1-b1) g, v = (1-b2) g^2, so after
// bias correction the update is lr * g / (|g| + eps) (no decay here).

static void test_optim_groups(test_counts *tc) {
    enum { N = 4, PER = 300 };
    model_tensor tab[N];
    memset(tab, 0, sizeof(tab));
    for (int i = 0; i < N; i++) {
        snprintf(tab[i].name, sizeof(tab[i].name), "t%d", i);
        tab[i].ndim = 1;
        tab[i].shape[0] = tab[i].local[0] = PER;
        tab[i].split_dim = -1;
        tab[i].offset = (size_t)i * PER;
        tab[i].size = PER;
        tab[i].decay = 1;
        tab[i].group = i;  // text, image, audio, trunk
    }
    float *p = mm_malloc(N * PER * sizeof(float)), *g = mm_malloc(N * PER * sizeof(float));
    float *p0 = mm_malloc(N * PER * sizeof(float));
    mm_rng r;
    mm_rng_init(&r, 3, 4);
    for (int i = 0; i < N * PER; i++) p[i] = mm_rng_normal(&r), g[i] = mm_rng_normal(&r);
    memcpy(p0, p, N * PER * sizeof(float));
    optim_cfg oc = {.lr = 1e-2, .min_lr = 1e-2, .total = 1, .beta1 = 0.9, .beta2 = 0.95,
                    .eps = 1e-8, .weight_decay = 0.0};
    optim o;
    optim_init(&o, &oc, tab, N, 0, N * PER);
    const double mult[N] = {0.1, 1.0, 2.5, 7.0};
    const int frozen[N] = {0, 0, 0, 1};  // trunk frozen
    optim_set_groups(&o, mult, frozen);
    double sh, rep, want = 0.0;
    optim_sumsq(&o, g, &sh, &rep);
    for (int i = 0; i < 3 * PER; i++) want += (double)g[i] * g[i];
    TEST_CHECK(tc, fabs(sh + rep - want) <= 1e-9 * want,
               "norm counts the trained groups only: %.9g vs %.9g", sh + rep, want);
    optim_adamw(&o, p, g, 1, oc.lr, 1.0);
    double worst = 0.0;
    for (int t = 0; t < 3; t++)
        for (int i = t * PER; i < (t + 1) * PER; i++) {
            double step = oc.lr * mult[t] * g[i] / (fabs(g[i]) + oc.eps);
            double got = (double)p0[i] - p[i];
            double e = fabs(got - step) / fabs(step);
            if (e > worst) worst = e;
        }
    TEST_CHECK(tc, worst < 1e-3, "per-group lr: worst relative error %.3g", worst);
    TEST_CHECK(tc, memcmp(p + 3 * PER, p0 + 3 * PER, PER * sizeof(float)) == 0,
               "frozen tensor bit-identical");
    int zero = 1;
    for (int i = 3 * PER; i < N * PER; i++) zero &= o.m[i] == 0.0f && o.v[i] == 0.0f;
    TEST_CHECK(tc, zero, "frozen tensor's moments stay zero");
    optim_free(&o);
    free(p);
    free(g);
    free(p0);
}

// ---------------------------------------------------------------------------------------
// synthetic restriction

static void colour_counts(const char *dir, int counts[6]) {
    data_dataset *ds = NULL;
    mm_err err;
    for (int i = 0; i < 6; i++) counts[i] = 0;
    MM_CHECK(data_dataset_open(&ds, dir, 1, &err) == 0, "%s", err.msg);
    const data_schema *s = data_dataset_schema(ds);
    data_audio_cfg a = {256, 128, 32};
    data_featurizer *f = data_featurizer_new(s, &a);
    data_batch b;
    data_batch_alloc(&b, 1, s, &a);
    for (uint64_t i = 0; i < s->n_samples; i++) {
        MM_CHECK(data_dataset_read(ds, &i, 1, f, &b, &err) == 0, "%s", err.msg);
        int attr[DATA_N_ATTR];
        if (data_synth_attrs(b.text, attr) == 0) counts[attr[0]]++;
    }
    data_batch_free(&b);
    data_featurizer_free(f);
    data_dataset_close(ds);
}

static void test_synth_restrict(test_counts *tc, const char *root) {
    data_synth_cfg c;
    data_synth_default(&c);
    mm_err err;
    TEST_CHECK(tc, data_synth_restrict(&c, "colour=yellow,white", &err) == 0, "%s", err.msg);
    TEST_CHECK(tc, data_synth_restrict(&c, "colour=pink", &err) == -1 &&
                       strstr(err.msg, "'pink' is not a colour"),
               "bad word: %s", err.msg);
    TEST_CHECK(tc, data_synth_restrict(&c, "hue=red", &err) == -1 && strstr(err.msg, "hue=red"),
               "bad attribute: %s", err.msg);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/restricted", root);
    TEST_CHECK(tc, data_synth_write(dir, 200, 9, &c, &err) == 0, "%s", err.msg);
    int n[6];
    char sub[600];
    snprintf(sub, sizeof(sub), "%s/train", dir);
    colour_counts(sub, n);
    // colours: red green blue yellow purple white
    TEST_CHECK(tc, n[0] + n[1] + n[2] + n[4] == 0 && n[3] > 50 && n[5] > 50,
               "only yellow and white: %d %d %d %d %d %d", n[0], n[1], n[2], n[3], n[4], n[5]);
}

// ---------------------------------------------------------------------------------------
// schema defaults

static void test_schema(test_counts *tc, comm_group *world, const char *root, const char *A) {
    char out[512], path[600];
    snprintf(out, sizeof(out), "%s/schema", root);
    mm_err err;
    const char *short_run[] = {"run.steps=2", NOVAL, NULL};
    TEST_CHECK(tc, run_cfg(world, A, out, short_run, &err) == 0, "schema run: %s", err.msg);
    snprintf(path, sizeof(path), "%s/config.yaml", out);
    mm_config saved;
    TEST_CHECK(tc, mm_config_load(&saved, path, 0, NULL, &err) == 0, "%s", err.msg);
    // the synthetic set's schema (data.h defaults), read independently of the trainer
    TEST_CHECK(tc, saved.data.img_h == 32 && saved.data.img_w == 32 && saved.data.img_c == 3 &&
                       saved.data.audio_rate == 8000 && saved.data.audio_len == 4000 &&
                       saved.data.text_max == 48,
               "saved config holds the data's shapes: %dx%dx%d %d Hz %d samples text %d",
               saved.data.img_h, saved.data.img_w, saved.data.img_c, saved.data.audio_rate,
               saved.data.audio_len, saved.data.text_max);
    const char *agree[] = {"run.steps=2", "data.img_h=32", "data.text_max=48", NOVAL, NULL};
    snprintf(out, sizeof(out), "%s/schema2", root);
    TEST_CHECK(tc, run_cfg(world, A, out, agree, &err) == 0, "matching values: %s", err.msg);
    const char *bad_img[] = {"data.img_w=64", NULL};
    snprintf(out, sizeof(out), "%s/schema3", root);
    TEST_CHECK(tc, run_cfg(world, A, out, bad_img, &err) == -1 &&
                       strstr(err.msg, "data.img_w=64 but dataset") &&
                       strstr(err.msg, "/train has 32x32x3 images"),
               "image mismatch: %s", err.msg);
    const char *bad_rate[] = {"data.audio_rate=16000", NULL};
    TEST_CHECK(tc, run_cfg(world, A, out, bad_rate, &err) == -1 &&
                       strstr(err.msg, "data.audio_rate=16000") && strstr(err.msg, "8000 Hz"),
               "rate mismatch: %s", err.msg);
    const char *bad_text[] = {"data.text_max=64", NULL};
    TEST_CHECK(tc, run_cfg(world, A, out, bad_text, &err) == -1 &&
                       strstr(err.msg, "data.text_max=64") && strstr(err.msg, "48 bytes"),
               "text mismatch: %s", err.msg);
    // resuming on data of another shape: captions up to 60 bytes
    data_synth_cfg sc;
    data_synth_default(&sc);
    sc.text_max = 60;
    char other[512];
    snprintf(other, sizeof(other), "%s/longtext", root);
    MM_CHECK(data_synth_write(other, 64, 4, &sc, &err) == 0, "%s", err.msg);
    snprintf(out, sizeof(out), "%s/schema", root);
    const char *more[] = {"run.steps=3", NOVAL, NULL};
    TEST_CHECK(tc, run_cfg(world, other, out, more, &err) == -1 &&
                   strstr(err.msg, "data.text_max = 48, the data gives 60"),
               "resume on data of another shape: %s", err.msg);
}

// ---------------------------------------------------------------------------------------
// fine-tuning the transformer

typedef struct {
    const char *root, *A, *B;  // base split, fine-tune split
    char base[512];            // base run directory
} ft_ctx;

static void test_improves(test_counts *tc, comm_group *world, ft_ctx *x) {
    mm_err err;
    char out[512], init[600];
    const char *base_run[] = {"run.steps=150", "optim.lr=3e-3", "optim.warmup=5", NULL};
    snprintf(x->base, sizeof(x->base), "%s/base", x->root);
    double t0 = mm_now();
    TEST_CHECK(tc, run_cfg(world, x->A, x->base, base_run, &err) == 0, "base run: %s", err.msg);
    double base_on_a = last_val_loss(x->base);
    // the base weights on the new split: a one-step run with every group frozen (the
    // weights stay bit-identical, see test_freeze) evaluates them on B's validation set
    snprintf(init, sizeof(init), "checkpoint.init_from=%s", x->base);
    const char *before[] = {init, "run.steps=1", "optim.freeze=text,image,audio,trunk", NULL};
    snprintf(out, sizeof(out), "%s/before", x->root);
    TEST_CHECK(tc, run_cfg(world, x->B, out, before, &err) == 0, "eval run: %s", err.msg);
    double v_before = last_val_loss(out);
    const char *ft[] = {init, "run.steps=40", "optim.lr=3e-3", NULL};
    snprintf(out, sizeof(out), "%s/ft", x->root);
    TEST_CHECK(tc, run_cfg(world, x->B, out, ft, &err) == 0, "fine-tune: %s", err.msg);
    double v_after = last_val_loss(out);
    const char *scratch[] = {"run.steps=40", "optim.lr=3e-3", NULL};
    snprintf(out, sizeof(out), "%s/scratch", x->root);
    TEST_CHECK(tc, run_cfg(world, x->B, out, scratch, &err) == 0, "scratch: %s", err.msg);
    double v_scratch = last_val_loss(out);
    printf("fine-tune: base val_loss %.4f on its split A; on split B %.4f before, %.4f after 40 "
           "steps (from scratch: %.4f) [%.1fs]\n",
           base_on_a, v_before, v_after, v_scratch, mm_now() - t0);
    TEST_CHECK(tc, v_after < v_before - 0.3 && v_after < 0.8 * v_before,
               "fine-tune improves on B by a margin: %.4f -> %.4f", v_before, v_after);
    TEST_CHECK(tc, v_after < v_scratch - 0.2,
               "the base weights help: fine-tuned %.4f vs from scratch %.4f", v_after, v_scratch);
}

// Frozen groups keep their bytes (and zero moments); the other tensors move.
static void check_frozen(test_counts *tc, const char *init_dir, const char *run_dir,
                         const char *const *frozen_prefixes, const char *what) {
    ckpt_dump a, b;
    mm_err err;
    int la = dump_load(init_dir, &a, &err);
    TEST_CHECK(tc, la == 0, "%s: load %s: %s", what, init_dir, err.msg);
    int lb = dump_load(run_dir, &b, &err);
    TEST_CHECK(tc, lb == 0, "%s: load %s: %s", what, run_dir, err.msg);
    if (la == 0 && lb == 0) {
        int n_frozen = 0, n_moved = 0, n_other = 0, bad = 0;
        for (int i = 0; i < b.n; i++) {
            const model_tensor *tb = &b.tab[i], *ta = dump_find(&a, tb->name);
            int fz = 0;
            for (int k = 0; frozen_prefixes[k]; k++) fz |= starts(tb->name, frozen_prefixes[k]);
            if (!ta) continue;
            int same = memcmp(a.p + ta->offset, b.p + tb->offset, tb->size * sizeof(float)) == 0;
            if (fz) {
                n_frozen++;
                int zero = 1;
                for (size_t j = 0; j < tb->size; j++)
                    zero &= b.m[tb->offset + j] == 0.0f && b.v[tb->offset + j] == 0.0f;
                if (!same || !zero) {
                    bad++;
                    fprintf(stderr, "%s: frozen %s changed (bytes %s, moments %s)\n", what,
                            tb->name, same ? "same" : "differ", zero ? "zero" : "nonzero");
                }
            } else {
                n_other++;
                n_moved += !same;
            }
        }
        TEST_CHECK(tc, n_frozen >= 3 && bad == 0, "%s: %d frozen tensors bit-identical (%d not)",
                   what, n_frozen, bad);
        TEST_CHECK(tc, n_other > 0 && n_moved == n_other, "%s: %d of %d trained tensors moved",
                   what, n_moved, n_other);
    }
    dump_free(&a);
    dump_free(&b);
}

static void test_freeze(test_counts *tc, comm_group *world, ft_ctx *x) {
    mm_err err;
    char out[512], init[600], ck[600];
    snprintf(init, sizeof(init), "checkpoint.init_from=%s", x->base);
    const char *fz[] = {init, "run.steps=6", "optim.freeze=[audio, text]",
                        "optim.lr_mult_image=0.5", NOVAL, NULL};
    snprintf(out, sizeof(out), "%s/frozen", x->root);
    TEST_CHECK(tc, run_cfg(world, x->B, out, fz, &err) == 0, "frozen run: %s", err.msg);
    snprintf(ck, sizeof(ck), "%s/ckpt/step_00000006", out);
    check_frozen(tc, x->base, ck, (const char *const[]){"audio.", "text.", "lm_head.", NULL},
                 "transformer freeze [audio, text]");
}

static void test_mismatch(test_counts *tc, comm_group *world, ft_ctx *x) {
    mm_err err;
    char out[512], init[600];
    snprintf(out, sizeof(out), "%s/mismatch", x->root);
    snprintf(init, sizeof(init), "checkpoint.init_from=%s", x->base);
    // another width: every tensor is listed with both shapes
    const char *wide[] = {init, "run.steps=1", "model.d_model=64", NOVAL, NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, wide, &err) == -1 &&
                       strstr(err.msg, "tensor(s) do not fit the model") &&
                       strstr(err.msg, "checkpoint [32") && strstr(err.msg, "model [64") &&
                       strstr(err.msg, "checkpoint.reinit"),
               "d_model mismatch listed: %s", err.msg);
    // one block more: blocks.2.* missing; named in reinit it proceeds
    const char *deeper[] = {init, "run.steps=1", "model.n_layers=3", NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, deeper, &err) == -1 &&
                       strstr(err.msg, "blocks.2.") &&
                       strstr(err.msg, "missing from the checkpoint"),
               "missing block listed: %s", err.msg);
    const char *deeper_ok[] = {init, "run.steps=1", "model.n_layers=3",
                               "checkpoint.reinit=blocks.2.*", NOVAL, NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, deeper_ok, &err) == 0, "reinit blocks.2.*: %s",
               err.msg);
    // one block less: blocks.1.* unused in the checkpoint
    snprintf(out, sizeof(out), "%s/mismatch2", x->root);
    const char *shallow[] = {init, "run.steps=1", "model.n_layers=1", NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, shallow, &err) == -1 &&
                       strstr(err.msg, "blocks.1.") && strstr(err.msg, "not in the model"),
               "unused block listed: %s", err.msg);
    // other audio tokens: audio.* reshaped; re-initialised by glob
    snprintf(out, sizeof(out), "%s/mismatch3", x->root);
    const char *agroup[] = {init, "run.steps=1", "model.audio_group=3", NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, agroup, &err) == -1 && strstr(err.msg, "audio."),
               "audio reshaped: %s", err.msg);
    const char *agroup_ok[] = {init, "run.steps=1", "model.audio_group=3",
                               "checkpoint.reinit=[audio.*]", NOVAL, NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, agroup_ok, &err) == 0, "reinit audio.*: %s",
               err.msg);
    // a glob that names nothing is a typo
    snprintf(out, sizeof(out), "%s/mismatch4", x->root);
    const char *typo[] = {init, "run.steps=1", "checkpoint.reinit=lm_haed.*", NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, typo, &err) == -1 &&
                       strstr(err.msg, "'lm_haed.*' names no tensor"),
               "glob naming nothing: %s", err.msg);
    // a re-initialised tensor keeps its fresh values even when the shapes agree
    const char *head[] = {init, "run.steps=1", "optim.freeze=text,image,audio,trunk",
                          "checkpoint.reinit=lm_head.w", NOVAL, NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, head, &err) == 0, "reinit lm_head: %s", err.msg);
    ckpt_dump a, b;
    if (dump_load(x->base, &a, &err) == 0 && dump_load(out, &b, &err) == 0) {
        const model_tensor *ha = dump_find(&a, "lm_head.w"), *hb = dump_find(&b, "lm_head.w");
        const model_tensor *wa = dump_find(&a, "text.wte"), *wb = dump_find(&b, "text.wte");
        TEST_CHECK(tc, ha && hb && memcmp(a.p + ha->offset, b.p + hb->offset,
                                          ha->size * sizeof(float)) != 0,
                   "lm_head.w re-initialised");
        TEST_CHECK(tc, wa && wb && memcmp(a.p + wa->offset, b.p + wb->offset,
                                          wa->size * sizeof(float)) == 0,
                   "text.wte loaded");
    } else {
        TEST_CHECK(tc, 0, "load: %s", err.msg);
    }
    dump_free(&a);
    dump_free(&b);
    // other kinds and paths
    snprintf(out, sizeof(out), "%s/mismatch5", x->root);
    const char *kind[] = {init, "run.steps=1", "model.kind=diffusion", "model.patch=4", NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, kind, &err) == -1 &&
                       strstr(err.msg, "a transformer model, the config asks for diffusion"),
               "other model kind: %s", err.msg);
    char nope[600];
    snprintf(nope, sizeof(nope), "checkpoint.init_from=%s/nope", x->root);
    const char *missing[] = {nope, "run.steps=1", NULL};
    TEST_CHECK(tc, run_cfg(world, x->B, out, missing, &err) == -1 &&
                       strstr(err.msg, "checkpoint.init_from: ") && strstr(err.msg, "/nope"),
               "missing init_from: %s", err.msg);
    snprintf(nope, sizeof(nope), "checkpoint.init_from=%s", x->A);
    TEST_CHECK(tc, run_cfg(world, x->B, out, missing, &err) == -1 &&
                       strstr(err.msg, "not a checkpoint"),
               "a dataset as init_from: %s", err.msg);
    // run dir, ckpt/ dir and step dir name the same weights
    const char *forms[] = {"", "/ckpt", "/ckpt/step_00000150"};
    for (int i = 0; i < 3; i++) {
        snprintf(nope, sizeof(nope), "checkpoint.init_from=%s%s", x->base, forms[i]);
        snprintf(out, sizeof(out), "%s/form%d", x->root, i);
        const char *form[] = {nope, "run.steps=1", "optim.freeze=text,image,audio,trunk", NOVAL,
                              NULL};
        TEST_CHECK(tc, run_cfg(world, x->B, out, form, &err) == 0, "init_from %s: %s", nope,
                   err.msg);
        if (i == 0) continue;
        char prev[600];
        snprintf(prev, sizeof(prev), "%s/form0", x->root);
        ckpt_dump p0, p1;
        int ok = dump_load(prev, &p0, &err) == 0 && dump_load(out, &p1, &err) == 0;
        TEST_CHECK(tc, ok && p0.total == p1.total &&
                           memcmp(p0.p, p1.p, p0.total * sizeof(float)) == 0,
                   "init_from %s loads what the run dir does", nope);
        dump_free(&p0);
        dump_free(&p1);
    }
}

// Stop after 6 of 12 steps and resume: same as uninterrupted, bit for bit; the second part
// must not need the base weights (resume wins over init_from).
static void test_resume(test_counts *tc, comm_group *world, ft_ctx *x, const char *base,
                        const char *const *kind_keys, const char *what) {
    mm_err err;
    char init[600], FA[512], FB[512], moved[600];
    snprintf(init, sizeof(init), "checkpoint.init_from=%s", base);
    const char *keys[16] = {init, "optim.lr_mult_text=0.3", "optim.freeze=audio", NOVAL};
    int n = 4;
    for (int i = 0; kind_keys && kind_keys[i]; i++) keys[n++] = kind_keys[i];
    keys[n] = NULL;
    snprintf(FA, sizeof(FA), "%s/resumeA_%s", x->root, what);
    snprintf(FB, sizeof(FB), "%s/resumeB_%s", x->root, what);
    TEST_CHECK(tc, run_cfg(world, x->B, FA, keys, &err) == 0, "uninterrupted: %s", err.msg);
    keys[n] = "run.stop_after=6";
    keys[n + 1] = NULL;
    TEST_CHECK(tc, run_cfg(world, x->B, FB, keys, &err) == 0, "part 1: %s", err.msg);
    keys[n] = NULL;
    snprintf(moved, sizeof(moved), "%s.away", base);
    MM_CHECK(rename(base, moved) == 0, "cannot move %s", base);
    TEST_CHECK(tc, run_cfg(world, x->B, FB, keys, &err) == 0,
               "%s part 2 resumes its own checkpoint (base moved away): %s", what, err.msg);
    MM_CHECK(rename(moved, base) == 0, "cannot move %s back", moved);
    char *ma = step_metrics(FA), *mb = step_metrics(FB);
    TEST_CHECK(tc, ma && mb && strcmp(ma, mb) == 0 && strstr(ma, "\"step\":12,"),
               "%s: per-step metrics differ after resume:\n%s\nvs\n%s", what, ma, mb);
    free(ma);
    free(mb);
    ckpt_dump a, b;
    int ok = dump_load(FA, &a, &err) == 0 && dump_load(FB, &b, &err) == 0;
    TEST_CHECK(tc, ok, "load: %s", err.msg);
    if (ok) {
        TEST_CHECK(tc, a.total == b.total && memcmp(a.p, b.p, a.total * sizeof(float)) == 0 &&
                           memcmp(a.m, b.m, a.total * sizeof(float)) == 0 &&
                           memcmp(a.v, b.v, a.total * sizeof(float)) == 0,
                   "%s: params and AdamW state bit-identical after resume", what);
        if (a.ema)
            TEST_CHECK(tc, b.ema && memcmp(a.ema, b.ema, a.total * sizeof(float)) == 0,
                       "%s: EMA bit-identical after resume", what);
    }
    dump_free(&a);
    dump_free(&b);
}

// ---------------------------------------------------------------------------------------
// diffusion: EMA start, freeze, resume

static const char *const dit_keys[] = {"model.kind=diffusion", "model.patch=4",
                                       "diffusion.enc_layers=1", "diffusion.eval_samples=2",
                                       "diffusion.sample_steps=2", NOVAL, NULL};

static void test_dit(test_counts *tc, comm_group *world, ft_ctx *x) {
    mm_err err;
    char dbase[512], out[512], init[600], ck[600];
    snprintf(dbase, sizeof(dbase), "%s/dbase", x->root);
    const char *base_keys[16];
    int n = 0;
    for (; dit_keys[n]; n++) base_keys[n] = dit_keys[n];
    base_keys[n++] = "run.steps=8";
    base_keys[n++] = "optim.lr=1e-2";
    base_keys[n++] = "diffusion.ema_decay=0.5";  // an EMA far from the weights
    base_keys[n] = NULL;
    TEST_CHECK(tc, run_cfg(world, x->A, dbase, base_keys, &err) == 0, "dit base: %s", err.msg);
    // one step with everything frozen: ema_1 = d * ema_0 + (1 - d) * params, params unchanged
    snprintf(init, sizeof(init), "checkpoint.init_from=%s", dbase);
    const char *k1[16];
    n = 0;
    for (; dit_keys[n]; n++) k1[n] = dit_keys[n];
    k1[n++] = init;
    k1[n++] = "run.steps=1";
    k1[n++] = "diffusion.ema_decay=0.75";
    k1[n++] = "optim.freeze=text,audio,trunk";
    k1[n] = NULL;
    snprintf(out, sizeof(out), "%s/dema", x->root);
    TEST_CHECK(tc, run_cfg(world, x->B, out, k1, &err) == 0, "dit ema run: %s", err.msg);
    ckpt_dump a, b;
    int ok = dump_load(dbase, &a, &err) == 0 && dump_load(out, &b, &err) == 0;
    TEST_CHECK(tc, ok && a.ema && b.ema && a.total == b.total, "dit dumps: %s", err.msg);
    if (ok && a.ema && b.ema && a.total == b.total) {
        // against the same formula had the EMA started from the loaded weights instead
        double worst = 0.0, worst_if_params = 0.0;
        for (size_t i = 0; i < a.total; i++) {
            double want = 0.75 * a.ema[i] + 0.25 * a.p[i];
            double e = fabs(b.ema[i] - want) / (fabs(want) + 1e-3);
            if (e > worst) worst = e;
            double alt = fabs(b.ema[i] - (double)a.p[i]) / (fabs(want) + 1e-3);
            if (alt > worst_if_params) worst_if_params = alt;
        }
        TEST_CHECK(tc, worst < 1e-5 && worst_if_params > 1e-3,
                   "EMA starts from the checkpoint's /ema: worst %.3g (from the weights it "
                   "would be %.3g)",
                   worst, worst_if_params);
        TEST_CHECK(tc, memcmp(a.p, b.p, a.total * sizeof(float)) == 0,
                   "all groups frozen: diffusion weights unchanged");
    }
    dump_free(&a);
    dump_free(&b);
    // freeze the conditioning encoders
    const char *k2[16];
    n = 0;
    for (; dit_keys[n]; n++) k2[n] = dit_keys[n];
    k2[n++] = init;
    k2[n++] = "run.steps=4";
    k2[n++] = "optim.freeze=text,audio";
    k2[n] = NULL;
    snprintf(out, sizeof(out), "%s/dfrozen", x->root);
    TEST_CHECK(tc, run_cfg(world, x->B, out, k2, &err) == 0, "dit frozen run: %s", err.msg);
    snprintf(ck, sizeof(ck), "%s/ckpt/step_00000004", out);
    check_frozen(tc, dbase, ck, (const char *const[]){"text.", "audio.", NULL},
                 "diffusion freeze [text, audio]");
    // the image group has no tensor in the DiT: freezing it is an error, not a no-op
    k2[n - 1] = "optim.freeze=image";
    TEST_CHECK(tc, run_cfg(world, x->B, out, k2, &err) == -1 &&
                       strstr(err.msg, "no tensor in group 'image'"),
               "freeze image on a DiT: %s", err.msg);
    test_resume(tc, world, x, dbase, dit_keys, "diffusion");
}

// ---------------------------------------------------------------------------------------
// export

// Compares every dataset of two exports' groups (only `only` when not NULL; only tensors whose
// name starts with one of the n_pre prefixes when n_pre > 0): names, shapes, bytes. Returns
// the number of tensors compared, or -1 with why filled.
static int same_tensors(const char *fa, const char *fb, const char *only, int n_pre,
                        char *const *pre, char *why, size_t cap) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);  // a missing file is reported below, in one line
    hid_t a = H5Fopen(fa, H5F_ACC_RDONLY, H5P_DEFAULT), b = H5Fopen(fb, H5F_ACC_RDONLY, H5P_DEFAULT);
    int count = -1;
    if (a < 0 || b < 0) {
        snprintf(why, cap, "cannot open %s", a < 0 ? fa : fb);
        goto done;
    }
    count = 0;
    const char *groups[] = {"params", "ema"};
    for (int g = 0; g < 2 && count >= 0; g++) {
        if (only && strcmp(only, groups[g]) != 0) continue;
        int ha = H5Lexists(a, groups[g], H5P_DEFAULT) > 0, hb = H5Lexists(b, groups[g], H5P_DEFAULT) > 0;
        if (ha != hb) {
            snprintf(why, cap, "/%s in one file only", groups[g]);
            count = -1;
            break;
        }
        if (!ha) continue;
        hid_t ga = H5Gopen2(a, groups[g], H5P_DEFAULT), gb = H5Gopen2(b, groups[g], H5P_DEFAULT);
        H5G_info_t ia, ib;
        H5Gget_info(ga, &ia);
        H5Gget_info(gb, &ib);
        hsize_t na = ia.nlinks, nb = ib.nlinks;
        if (na != nb) {
            snprintf(why, cap, "/%s: %llu vs %llu tensors", groups[g], (unsigned long long)na,
                     (unsigned long long)nb);
            count = -1;
        }
        for (hsize_t i = 0; i < na && count >= 0; i++) {
            char name[128];
            H5Lget_name_by_idx(ga, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name),
                               H5P_DEFAULT);
            int wanted = n_pre == 0;
            for (int k = 0; k < n_pre; k++) wanted |= starts(name, pre[k]);
            if (!wanted) continue;
            hid_t da = H5Dopen2(ga, name, H5P_DEFAULT), db = H5Dopen2(gb, name, H5P_DEFAULT);
            if (db < 0) {
                snprintf(why, cap, "/%s/%s missing in %s", groups[g], name, fb);
                count = -1;
            } else {
                hid_t sa = H5Dget_space(da), sb = H5Dget_space(db);
                hssize_t ea = H5Sget_simple_extent_npoints(sa), eb = H5Sget_simple_extent_npoints(sb);
                hsize_t dims_a[8], dims_b[8];
                int ra = H5Sget_simple_extent_dims(sa, dims_a, NULL);
                int rb = H5Sget_simple_extent_dims(sb, dims_b, NULL);
                if (ra != rb || ea != eb || memcmp(dims_a, dims_b, sizeof(hsize_t) * (size_t)ra)) {
                    snprintf(why, cap, "/%s/%s: shapes differ", groups[g], name);
                    count = -1;
                } else {
                    float *xa = mm_malloc((size_t)ea * sizeof(float) + 1);
                    float *xb = mm_malloc((size_t)ea * sizeof(float) + 1);
                    H5Dread(da, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, xa);
                    H5Dread(db, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, xb);
                    if (memcmp(xa, xb, (size_t)ea * sizeof(float)) != 0) {
                        snprintf(why, cap, "/%s/%s: values differ", groups[g], name);
                        count = -1;
                    } else {
                        count++;
                    }
                    free(xa);
                    free(xb);
                }
                H5Sclose(sa);
                H5Sclose(sb);
            }
            if (da >= 0) H5Dclose(da);
            if (db >= 0) H5Dclose(db);
        }
        H5Gclose(ga);
        H5Gclose(gb);
    }
done:
    if (a >= 0) H5Fclose(a);
    if (b >= 0) H5Fclose(b);
    return count;
}

// A string attribute of an export's root, or "" (buf of cap bytes).
static void str_attr(const char *file, const char *name, char *buf, size_t cap) {
    buf[0] = '\0';
    hid_t f = H5Fopen(file, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return;
    hid_t at = H5Aopen(f, name, H5P_DEFAULT);
    if (at >= 0) {
        hid_t t = H5Aget_type(at);
        size_t n = H5Tget_size(t);
        char *tmp = mm_calloc(n + 1, 1);
        H5Aread(at, t, tmp);
        snprintf(buf, cap, "%s", tmp);
        free(tmp);
        H5Tclose(t);
        H5Aclose(at);
    }
    H5Fclose(f);
}

// Runs `train export` in-process through its entry point.
static int export_cli(comm_group *world, const char *ckpt, const char *out, mm_err *err) {
    char *argv[] = {"--ckpt", (char *)ckpt, "--out", (char *)out, NULL};
    return train_export_main(4, argv, world, err);
}

static void test_export(test_counts *tc, comm_group *world, ft_ctx *x) {
    mm_err err;
    char f1[600], f2[600], dir[700], tp2[600], buf[256];
    snprintf(f1, sizeof(f1), "%s/base.h5", x->root);
    TEST_CHECK(tc, export_cli(world, x->base, f1, &err) == 0, "export base: %s", err.msg);
    str_attr(f1, "model_kind", buf, sizeof(buf));
    TEST_CHECK(tc, strcmp(buf, "transformer") == 0, "model_kind '%s'", buf);
    str_attr(f1, "format", buf, sizeof(buf));
    TEST_CHECK(tc, strcmp(buf, "mmtrain-weights") == 0, "format '%s'", buf);
    // every exported tensor equals the checkpoint's, read back through HDF5 directly
    ckpt_dump d;
    int ok = dump_load(x->base, &d, &err) == 0;
    TEST_CHECK(tc, ok, "dump: %s", err.msg);
    hid_t f = H5Fopen(f1, H5F_ACC_RDONLY, H5P_DEFAULT);
    int equal = 0;
    for (int i = 0; ok && f >= 0 && i < d.n; i++) {
        char link[160];
        snprintf(link, sizeof(link), "params/%s", d.tab[i].name);
        hid_t ds = H5Dopen2(f, link, H5P_DEFAULT);
        if (ds < 0) continue;
        float *v = mm_malloc(d.tab[i].size * sizeof(float));
        hid_t sp = H5Dget_space(ds);
        int rank = H5Sget_simple_extent_ndims(sp);
        hsize_t dims[4] = {0};
        H5Sget_simple_extent_dims(sp, dims, NULL);
        int shape_ok = rank == d.tab[i].ndim;
        for (int k = 0; shape_ok && k < rank; k++) shape_ok = (int64_t)dims[k] == d.tab[i].shape[k];
        if (shape_ok && H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0 &&
            memcmp(v, d.p + d.tab[i].offset, d.tab[i].size * sizeof(float)) == 0)
            equal++;
        free(v);
        H5Sclose(sp);
        H5Dclose(ds);
    }
    if (f >= 0) H5Fclose(f);
    TEST_CHECK(tc, ok && d.n > 20 && equal == d.n, "export: %d of %d tensors equal the checkpoint",
               equal, d.n);
    // the same weights saved as 2 tp slices (one process writes both files): split each
    // whole tensor as the model does under tp=2 and save the halves
    if (ok) {
        snprintf(tp2, sizeof(tp2), "%s/tp2run", x->root);
        data_dataset *ds = NULL;
        char train[600];
        snprintf(train, sizeof(train), "%s/train", x->B);
        MM_CHECK(data_dataset_open(&ds, train, 0, &err) == 0, "%s", err.msg);
        data_schema sc = *data_dataset_schema(ds);
        data_dataset_close(ds);
        data_audio_cfg ac = {256, 128, 32};
        model *half[2];
        MM_CHECK(ckpt_resolve(x->base, dir, sizeof(dir), &err) == 0, "%s", err.msg);
        for (int r = 0; r < 2; r++) {
            model_config mc = {.d_model = 32, .n_layers = 2, .n_heads = 2, .d_ff = 128,
                               .vocab = DATA_VOCAB, .text_T = sc.text_max + 1,
                               .img_h = sc.img_h, .img_w = sc.img_w, .img_c = sc.img_c,
                               .patch = 8, .audio_F = data_audio_frames(&sc, &ac), .n_mels = 32,
                               .audio_group = 2, .tp = 2, .tp_rank = r, .tp_group = NULL};
            MM_CHECK(model_create(&half[r], &mc, &mm_backend_cpu, 1, 1, &err) == 0, "%s", err.msg);
            ckpt_state st = {model_tensors(half[r]), model_n_tensors(half[r]),
                             model_n_params(half[r]), model_params(half[r]), NULL, NULL, NULL};
            TEST_CHECK(tc, ckpt_load_state(dir, &st, &err) == 0, "reshard into tp slice %d: %s",
                       r, err.msg);
        }
        ckpt_meta meta = {.step = 150, .world = 2, .tp = 2, .dp = 1};
        mm_rng_init(&meta.rng, 1, 2);
        ckpt_state s0 = {model_tensors(half[0]), model_n_tensors(half[0]),
                         model_n_params(half[0]), model_params(half[0]), NULL, NULL, NULL};
        ckpt_state s1 = {model_tensors(half[1]), model_n_tensors(half[1]),
                         model_n_params(half[1]), model_params(half[1]), NULL, NULL, NULL};
        char *yaml = NULL;
        ckpt_meta bm;
        MM_CHECK(ckpt_load_meta(dir, &bm, &yaml, &err) == 0, "%s", err.msg);
        TEST_CHECK(tc, ckpt_save(world, tp2, &meta, yaml, &s0, 1, 3, &err) == 0, "save: %s",
                   err.msg);
        free(yaml);
        snprintf(dir, sizeof(dir), "%s/ckpt/step_00000150", tp2);
        TEST_CHECK(tc, ckpt_write_rank_file(dir, 1, &s1, &err) == 0, "write half 1: %s",
                   err.msg);
        // the two halves really differ from whole tensors (the test could fail)
        int split = 0;
        for (int i = 0; i < model_n_tensors(half[0]); i++)
            split += model_tensors(half[0])[i].split_dim >= 0;
        TEST_CHECK(tc, split > 4, "%d tensors are split at tp=2", split);
        model_free(half[0]);
        model_free(half[1]);
        snprintf(f2, sizeof(f2), "%s/tp2.h5", x->root);
        TEST_CHECK(tc, export_cli(world, tp2, f2, &err) == 0, "export tp2: %s", err.msg);
        char why[512] = "";
        int n = same_tensors(f1, f2, NULL, 0, NULL, why, sizeof(why));
        TEST_CHECK(tc, n == d.n, "tp=2 export equals the tp=1 export: %d tensors (%s)", n, why);
    }
    dump_free(&d);
    // bad input
    TEST_CHECK(tc, export_cli(world, "/nonexistent/run", f2, &err) == -1 &&
                       strstr(err.msg, "/nonexistent/run") && strstr(err.msg, "cannot open"),
               "missing --ckpt: %s", err.msg);
    TEST_CHECK(tc, export_cli(world, x->A, f2, &err) == -1 && strstr(err.msg, "not a checkpoint"),
               "a dataset as --ckpt: %s", err.msg);
    char *argv[] = {"--ckpt", x->base, "--colour", "red", NULL};
    TEST_CHECK(tc, train_export_main(4, argv, world, &err) == -1 &&
                       strstr(err.msg, "unknown option '--colour'"),
               "unknown option: %s", err.msg);
    TEST_CHECK(
        tc,
        train_export_main(2, argv, world, &err) == -1 && strstr(err.msg, "--out FILE is required"),
        "missing --out: %s", err.msg);
}

int main(int argc, char **argv) {
    if (argc >= 5 && strcmp(argv[1], "--same-tensors") == 0) {
        char why[512] = "";
        int n = same_tensors(argv[2], argv[3], argv[4], argc - 5, argv + 5, why, sizeof(why));
        if (n <= 0) {
            printf("differ: %s\n", n == 0 ? "no tensors" : why);
            return 1;
        }
        printf("same: %d tensors\n", n);
        return 0;
    }
    comm_group *world = comm_init(&argc, &argv);
    test_counts tc = {0, 0};
    omp_set_num_threads(2);
    char tmpl[] = "/tmp/mm_test_finetune_XXXXXX";
    char *root = mkdtemp(tmpl);
    MM_CHECK(root, "mkdtemp failed");
    char A[256], B[256], cmd[512];
    snprintf(A, sizeof(A), "%s/dataA", root);
    snprintf(B, sizeof(B), "%s/dataB", root);
    mm_err err;
    data_synth_cfg sc;
    data_synth_default(&sc);
    MM_CHECK(data_synth_restrict(&sc, "colour=red,green,blue", &err) == 0, "%s", err.msg);
    MM_CHECK(data_synth_write(A, 640, 11, &sc, &err) == 0, "%s", err.msg);
    data_synth_default(&sc);
    MM_CHECK(data_synth_restrict(&sc, "colour=yellow,purple,white", &err) == 0, "%s", err.msg);
    MM_CHECK(data_synth_write(B, 640, 12, &sc, &err) == 0, "%s", err.msg);

    double t0 = mm_now();
#define TIMED(call)                                                          \
    do {                                                                     \
        call;                                                                \
        fprintf(stderr, "[%5.1fs] %s\n", mm_now() - t0, #call);              \
    } while (0)
    TIMED(test_config_lists(&tc, root));
    TIMED(test_optim_groups(&tc));
    TIMED(test_synth_restrict(&tc, root));
    TIMED(test_schema(&tc, world, root, A));
    ft_ctx x = {.root = root, .A = A, .B = B};
    TIMED(test_improves(&tc, world, &x));
    TIMED(test_freeze(&tc, world, &x));
    TIMED(test_mismatch(&tc, world, &x));
    TIMED(test_resume(&tc, world, &x, x.base, NULL, "transformer"));
    TIMED(test_dit(&tc, world, &x));
    TIMED(test_export(&tc, world, &x));
#undef TIMED

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", root);
    int rc = test_finish(&tc);
    comm_finalize(world);
    return rc;
}
