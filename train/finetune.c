// finetune.c: what turns a training run into a fine-tune of another run's weights
// (checkpoint.init_from, checkpoint.reinit, optim.freeze, optim.lr_mult_*). Kept apart from
// the loop so that the loop stays one page: the trainer calls train_init_from when it starts
// fresh and train_apply_groups once its optimizer exists.
//
// Decisions (documented in train/CHECKPOINT.md "Fine-tuning"):
//   - init_from loads WEIGHTS only: no AdamW moments, step, RNG or loader position; the run
//     starts at step 0 with its own schedule, seed and data.
//   - Tensors are matched by name and global shape. Every tensor of the model that is missing
//     from the checkpoint or shaped differently, and every checkpoint tensor the model does
//     not have, is listed (rank 0, stderr) and is an error unless a checkpoint.reinit glob
//     names it. A tensor a glob names keeps its fresh initialisation even when the checkpoint
//     has it in the right shape (that is what re-initialising a head means); checkpoint
//     tensors a glob names are dropped. A glob that names nothing is an error (a typo).
//   - Diffusion EMA: from the checkpoint's /ema when it has one (the weights it samples
//     with), else a copy of the loaded weights; re-initialised tensors start their EMA at
//     their fresh values.
//   - resume wins: the trainer only calls this when the run has no checkpoint of its own, so
//     a preempted fine-tune continues from its own state, not from the base weights again.
//   - the weights may also come from a .safetensors file (train/EXPORT.md): ours, or one
//     written by PyTorch with the same names and shapes, which then carries no config, step or
//     model kind; what the file does say (our export's metadata) is checked like a
//     checkpoint's. Its EMA is the ema/<name> tensors.
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "safetensors.h"
#include "trainer_internal.h"

_Static_assert(MM_N_GROUPS == MODEL_N_GROUPS && MODEL_GROUP_TEXT == 0 &&
                   MODEL_GROUP_IMAGE == 1 && MODEL_GROUP_AUDIO == 2 && MODEL_GROUP_TRUNK == 3,
               "config.c's group names follow model.h's MODEL_GROUP_* order");

static void fmt_shape(char *out, size_t cap, int ndim, const int64_t *s) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && k < cap; d++)
        k += (size_t)snprintf(out + k, cap - k, "%s%lld", d ? ", " : "", (long long)s[d]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

// Index of the first glob of l that matches name, or -1.
static int glob_match(const mm_list *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (fnmatch(l->item[i], name, 0) == 0) return i;
    return -1;
}

static const ckpt_tensor_info *find_info(const ckpt_tensor_info *inv, int n, const char *name) {
    ckpt_tensor_info key;
    snprintf(key.name, sizeof(key.name), "%s", name);
    int lo = 0, hi = n;  // inv is sorted by name
    while (lo < hi) {
        int mid = (lo + hi) / 2, c = strcmp(inv[mid].name, key.name);
        if (c == 0) return &inv[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

// Appends "; text" to the error summary while it fits (the full list goes to stderr).
static void note_problem(char *sum, size_t cap, int *shown, int *n, const char *text) {
    (*n)++;
    size_t len = strlen(sum);
    if (*shown < 4 && len + strlen(text) + 3 < cap) {
        snprintf(sum + len, cap - len, "%s%s", *shown ? "; " : "", text);
        (*shown)++;
    }
}

// Where init_from takes the weights from: a checkpoint (any form ckpt_resolve accepts) or a
// .safetensors file. Owns inv and the open file; src_free releases them.
typedef struct {
    char where[MM_STR + 128];  // the checkpoint's step directory or the file, for messages
    int is_sft;
    sft_file sft;
    ckpt_tensor_info *inv;  // (n_inv) the weights' names and global shapes, sorted by name
    int n_inv;
    int n_ema;     // EMA tensors the source holds (0: none)
    int64_t step;  // steps the weights were trained for, -1 when the source does not say
} init_src;

static void src_free(init_src *s) {
    if (s->is_sft) sft_close(&s->sft);
    free(s->inv);
    s->inv = NULL;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

// The model kind the source was trained as and the checks its saved config allows (the kind
// must match; another audio rate is worth a warning). saved == NULL: the source has none.
static int check_saved(const trainer *t, const char *where, const char *kind,
                       const mm_config *saved, mm_err *err) {
    const mm_config *c = t->cfg;
    if (kind && strcmp(kind, c->model.kind) != 0)
        return mm_fail(err, "checkpoint.init_from %s: a %s model, the config asks for %s", where,
                       kind, c->model.kind);
    if (t->rank == 0 && saved && saved->data.audio_rate &&
        saved->data.audio_rate != c->data.audio_rate)
        fprintf(stderr,
                "warning: init_from %s was trained on %d Hz audio, %s has %d Hz: the "
                "audio features mean other frequencies now\n",
                where, saved->data.audio_rate, c->data.train, c->data.audio_rate);
    return 0;
}

static int open_sft(const trainer *t, const char *path, init_src *s, mm_err *err) {
    mm_err e;
    if (sft_open(&s->sft, path, &e) != 0) return mm_fail(err, "checkpoint.init_from: %s", e.msg);
    s->is_sft = 1;
    snprintf(s->where, sizeof(s->where), "%s", path);
    const char *yaml = sft_meta(&s->sft, "config"), *kind = sft_meta(&s->sft, "model_kind"),
               *step = sft_meta(&s->sft, "step");
    mm_config saved;
    if (yaml && mm_config_load_string(&saved, yaml, path, &e) != 0)
        return mm_fail(err,
                       "checkpoint.init_from: %s: saved config (__metadata__ 'config') does "
                       "not parse: %s",
                       path, e.msg);
    if (!kind && yaml) kind = saved.model.kind;
    if (check_saved(t, path, kind, yaml ? &saved : NULL, err) != 0) return -1;
    char *endp = NULL;
    s->step = step ? strtoll(step, &endp, 10) : -1;
    if (step && (endp == step || *endp || s->step < 0))
        return mm_fail(err,
                       "checkpoint.init_from: %s: __metadata__ 'step' is '%.32s', not a "
                       "step count",
                       path, step);
    s->inv = mm_calloc((size_t)(s->sft.n ? s->sft.n : 1), sizeof(ckpt_tensor_info));
    for (int i = 0; i < s->sft.n; i++) {  // the file's order is by name: so is inv
        const sft_tensor *x = &s->sft.t[i];
        if (strncmp(x->name, "ema/", 4) == 0) {
            s->n_ema++;
            continue;
        }
        if (strlen(x->name) >= sizeof(s->inv[0].name))
            return mm_fail(err,
                           "checkpoint.init_from: %s: tensor '%s': name longer than %zu "
                           "bytes (no tensor of mmtrain's is)",
                           path, x->name, sizeof(s->inv[0].name) - 1);
        ckpt_tensor_info *in = &s->inv[s->n_inv++];
        memcpy(in->name, x->name, strlen(x->name) + 1);  // fits: checked above
        in->ndim = x->ndim;
        memcpy(in->shape, x->shape, sizeof(in->shape));
    }
    return 0;
}

static int open_src(const trainer *t, init_src *s, mm_err *err) {
    const char *path = t->cfg->checkpoint.init_from;
    memset(s, 0, sizeof(*s));
    if (ends_with(path, ".safetensors")) return open_sft(t, path, s, err);
    ckpt_meta meta;
    mm_config saved;
    if (ckpt_open_config(path, "checkpoint.init_from:", s->where, sizeof(s->where), &meta, &saved,
                         NULL, err) != 0 ||
        check_saved(t, s->where, saved.model.kind, &saved, err) != 0)
        return -1;
    s->step = meta.step;
    ckpt_tensor_info *ema_inv = NULL;
    if (ckpt_list_tensors(s->where, "params", &s->inv, &s->n_inv, err) != 0 ||
        (t->ema && ckpt_list_tensors(s->where, "ema", &ema_inv, &s->n_ema, err) != 0))
        return -1;
    free(ema_inv);
    return 0;
}

// Reads the n tensors of tab (all matched by name and shape) into params and, when ema is not
// NULL, into ema from the source's EMA. -1 with err naming the source and tensor.
static int load_src(const init_src *s, const model_tensor *tab, int n, size_t n_params,
                    float *params, float *ema, mm_err *err) {
    if (!s->is_sft) {
        ckpt_state st = {
            .tensors = tab, .n_tensors = n, .n_params = n_params, .params = params, .ema = ema};
        return ckpt_load_state(s->where, &st, err);
    }
    mm_err e;
    for (int i = 0; i < n; i++) {
        const model_tensor *T = &tab[i];
        if (sft_read(&s->sft, sft_find(&s->sft, T->name), T, params + T->offset, &e) != 0)
            return mm_fail(err, "checkpoint.init_from: %s", e.msg);
        if (!ema) continue;
        char name[SFT_NAME_LEN], a[96], b[96];
        snprintf(name, sizeof(name), "ema/%s", T->name);
        const sft_tensor *x = sft_find(&s->sft, name);
        if (!x)
            return mm_fail(err,
                           "checkpoint.init_from: %s: tensor '%s' missing (the file has "
                           "%d ema/ tensors, so every loaded tensor needs one)",
                           s->where, name, s->n_ema);
        int same = x->ndim == T->ndim;
        for (int d = 0; same && d < T->ndim; d++) same = x->shape[d] == T->shape[d];
        if (!same) {
            fmt_shape(a, sizeof(a), x->ndim, x->shape);
            fmt_shape(b, sizeof(b), T->ndim, T->shape);
            return mm_fail(err,
                           "checkpoint.init_from: %s: tensor '%s': shape %s, the model's "
                           "%s is %s",
                           s->where, name, a, T->name, b);
        }
        if (sft_read(&s->sft, x, T, ema + T->offset, &e) != 0)
            return mm_fail(err, "checkpoint.init_from: %s", e.msg);
    }
    return 0;
}

int train_init_from(trainer *t, mm_err *err) {
    const mm_config *c = t->cfg;
    init_src src;
    int rc = -1;
    if (open_src(t, &src, err) != 0) {
        src_free(&src);
        return -1;
    }
    const char *dir = src.where;
    const ckpt_tensor_info *inv = src.inv;
    const int n_inv = src.n_inv, n_ema = src.n_ema;
    const int nt = t->net.n_tensors;
    const model_tensor *tensors = t->net.tensors;
    model_tensor *load = mm_malloc(sizeof(model_tensor) * (size_t)(nt ? nt : 1));
    uint8_t *used = mm_calloc((size_t)(n_inv ? n_inv : 1), 1);
    int *glob_hits = mm_calloc(MM_LIST_MAX, sizeof(int));
    int n_load = 0, n_reinit = 0, n_dropped = 0, n_bad = 0, shown = 0;
    char summary[640] = "", line[400], a[96], b[96];
    for (int i = 0; i < nt; i++) {
        const model_tensor *T = &tensors[i];
        const ckpt_tensor_info *in = find_info(inv, n_inv, T->name);
        if (in) used[in - inv] = 1;
        int g = glob_match(&c->checkpoint.reinit, T->name);
        if (g >= 0) {
            glob_hits[g]++;
            n_reinit++;
            continue;
        }
        fmt_shape(b, sizeof(b), T->ndim, T->shape);
        int same = in && in->ndim == T->ndim;
        for (int d = 0; same && d < T->ndim; d++) same = in->shape[d] == T->shape[d];
        if (same) {
            load[n_load++] = *T;
            continue;
        }
        if (!in) {
            snprintf(line, sizeof(line), "%s: missing from the checkpoint (model %s)", T->name, b);
        } else {
            fmt_shape(a, sizeof(a), in->ndim, in->shape);
            snprintf(line, sizeof(line), "%s: checkpoint %s, model %s", T->name, a, b);
        }
        if (t->rank == 0) fprintf(stderr, "init_from: tensor %s\n", line);
        note_problem(summary, sizeof(summary), &shown, &n_bad, line);
    }
    for (int i = 0; i < n_inv; i++) {
        if (used[i]) continue;
        int g = glob_match(&c->checkpoint.reinit, inv[i].name);
        if (g >= 0) {
            glob_hits[g]++;
            n_dropped++;
            continue;
        }
        fmt_shape(a, sizeof(a), inv[i].ndim, inv[i].shape);
        snprintf(line, sizeof(line), "%s: unexpected (checkpoint %s, not in the model)",
                 inv[i].name, a);
        if (t->rank == 0) fprintf(stderr, "init_from: tensor %s\n", line);
        note_problem(summary, sizeof(summary), &shown, &n_bad, line);
    }
    rc = 0;
    for (int g = 0; g < c->checkpoint.reinit.n && rc == 0; g++)
        if (!glob_hits[g])
            rc = mm_fail(err, "checkpoint.reinit: '%s' names no tensor of the model or of %s",
                         c->checkpoint.reinit.item[g], dir);
    if (rc == 0 && n_bad > 0)
        rc = mm_fail(err,
                     "checkpoint.init_from %s: %d tensor(s) do not fit the model: %s%s; name "
                     "them in checkpoint.reinit to re-initialise them",
                     dir, n_bad, summary, n_bad > shown ? "; ... (all listed above)" : "");
    if (rc == 0)  // weights only; the EMA from the source's when it keeps one
        rc = load_src(&src, load, n_load, t->net.n_params, t->net.params,
                      t->ema && n_ema > 0 ? t->ema : NULL, err);
    if (rc == 0 && t->ema) {
        if (n_ema == 0) {
            memcpy(t->ema, t->net.params, t->net.n_params * sizeof(float));
        } else {  // re-initialised tensors: their EMA starts at their fresh values
            for (int i = 0; i < nt; i++)
                if (glob_match(&c->checkpoint.reinit, tensors[i].name) >= 0)
                    memcpy(t->ema + tensors[i].offset, t->net.params + tensors[i].offset,
                           tensors[i].size * sizeof(float));
        }
    }
    if (rc == 0 && t->rank == 0) {
        printf("initialized weights from %s", dir);
        if (src.step >= 0) printf(" (step %lld)", (long long)src.step);
        printf(": %d of %d tensors loaded", n_load, nt);
        if (n_reinit) printf(", %d re-initialised", n_reinit);
        if (n_dropped) printf(", %d checkpoint tensor(s) not used", n_dropped);
        if (t->ema)
            printf("; EMA from %s", n_ema == 0   ? "the loaded weights"
                                    : src.is_sft ? "its ema/ tensors"
                                                 : "its /ema");
        printf("\n");
        fflush(stdout);
    }
    src_free(&src);
    free(load);
    free(used);
    free(glob_hits);
    return rc;
}

int train_apply_groups(trainer *t, mm_err *err) {
    const mm_config *c = t->cfg;
    int frozen[MODEL_N_GROUPS] = {0};
    for (int i = 0; i < c->optim.freeze.n; i++)
        for (int g = 0; g < MODEL_N_GROUPS; g++)
            if (strcmp(c->optim.freeze.item[i], mm_group_names[g]) == 0) frozen[g] = 1;
    size_t count[MODEL_N_GROUPS] = {0}, trained = 0, total = 0;
    for (int i = 0; i < t->net.n_tensors; i++) {
        const model_tensor *T = &t->net.tensors[i];
        count[T->group] += T->size;
        total += T->size;
        if (!frozen[T->group]) trained += T->size;
    }
    for (int g = 0; g < MODEL_N_GROUPS; g++)
        if (frozen[g] && count[g] == 0)
            return mm_fail(err, "optim.freeze: the %s model has no tensor in group '%s'",
                           c->model.kind, mm_group_names[g]);
    optim_set_groups(&t->sync.opt, c->optim.lr_mult, frozen);
    int any_mult = 0;
    for (int g = 0; g < MODEL_N_GROUPS; g++) any_mult |= c->optim.lr_mult[g] != 1.0;
    if (t->rank == 0 && (c->optim.freeze.n > 0 || any_mult)) {
        printf("parameter groups (per rank):");
        const char *sep = " ";
        for (int g = 0; g < MODEL_N_GROUPS; g++) {
            if (!count[g]) continue;
            printf("%s%s %zu %s", sep, mm_group_names[g], count[g],
                   frozen[g] ? "frozen" : "trained");
            if (!frozen[g] && c->optim.lr_mult[g] != 1.0) printf(" (lr x %g)", c->optim.lr_mult[g]);
            sep = ", ";
        }
        printf("; %zu of %zu parameters trained\n", trained, total);
        fflush(stdout);
    }
    return 0;
}
