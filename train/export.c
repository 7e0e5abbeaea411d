// export.c: `train export --ckpt DIR --out FILE [--format hdf5|safetensors]`: one
// consolidated file of named float32 tensors in their full (global) shapes, for use outside
// mmtrain (Python, another framework), whatever tp x dp the checkpoint was saved with. The
// tensors are assembled by the checkpoint's own resharding reader (ckpt_load_state) into a
// table of whole tensors, so export needs neither the model code nor the training data.
// Format: train/EXPORT.md.
//
//   hdf5 (the default)            safetensors
//   /params/<name>                <name>        float32, global shape: the trained weights
//   /ema/<name>                   ema/<name>    the EMA (diffusion), when the checkpoint has it
//   root attributes               __metadata__  one table (export_attrs) for both: format,
//                                               version, model_kind, step, config (YAML), ...,
//                                               the tokenizer and the sample layout
//
// HDF5 stays the default: it is what existing scripts and tests call, and its attributes
// keep their types; safetensors is the Hugging Face / PyTorch convention, chosen by name.
// Written to FILE.tmp, fsync'd and renamed, like every file this project writes: a killed
// export never leaves a truncated FILE.
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/h5err.h"
#include "ckpt.h"
#include "config.h"
#include "h5attr.h"
#include "safetensors.h"
#include "train.h"

#define EXPORT_FORMAT "mmtrain-weights"
#define EXPORT_VERSION 1

// The usage `train export --help` prints (main.c); parse_args below must take what it lists.
static const mm_cli_opt export_opts[] = {
    {"--ckpt", "DIR",
     "a checkpoint, a ckpt/ directory or a run directory (its latest\n"
     "checkpoint), saved at any tp x dp layout; required"},
    {"--out", "FILE", "the file to write (written whole or not at all); required"},
    {"--format", "hdf5|safetensors", "the file format (default hdf5; train/EXPORT.md)"},
    {NULL, NULL, NULL}};

const mm_cli_cmd train_export_cli = {
    .prog = "train",
    .name = "export",
    .synopsis = "--ckpt DIR --out FILE [--format hdf5|safetensors]",
    .summary = "write a checkpoint's weights as full-shape float32 tensors in one file",
    .about =
        "  Writes the weights (and the EMA, if kept) of a checkpoint as full-shape float32\n"
        "  tensors into one HDF5 (default) or safetensors file, whatever layout it was saved\n"
        "  at (train/EXPORT.md).\n",
    .opts = export_opts};

typedef struct {
    const char *ckpt, *out;
    int safetensors;  // --format safetensors (else hdf5)
} export_args;

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int parse_args(int argc, char **argv, export_args *a, mm_err *err) {
    memset(a, 0, sizeof(*a));
    const char *format = NULL;
    for (int i = 0; i < argc; i++) {
        const char *k = argv[i];
        if (strcmp(k, "--ckpt") != 0 && strcmp(k, "--out") != 0 && strcmp(k, "--format") != 0)
            return mm_fail(err, "train export: unknown option '%s' (see train export --help)", k);
        if (i + 1 >= argc) return mm_fail(err, "export: %s needs a value", k);
        const char *v = argv[++i];
        if (!*v) return mm_fail(err, "export: %s needs a non-empty value", k);
        if (k[2] == 'c') a->ckpt = v;
        else if (k[2] == 'o')
            a->out = v;
        else
            format = v;
    }
    if (format && strcmp(format, "hdf5") != 0 && strcmp(format, "safetensors") != 0)
        return mm_fail(err, "export: --format '%s': expected hdf5 or safetensors", format);
    a->safetensors = format && strcmp(format, "safetensors") == 0;
    if (!a->ckpt) return mm_fail(err, "export: --ckpt DIR is required");
    if (!a->out) return mm_fail(err, "export: --out FILE is required");
    // a name that says the other format is a mistake a reader would find later
    if (!a->safetensors && ends_with(a->out, ".safetensors"))
        return mm_fail(err,
                       "export: --out %s names a safetensors file but --format is hdf5 "
                       "(add --format safetensors)",
                       a->out);
    if (a->safetensors && (ends_with(a->out, ".h5") || ends_with(a->out, ".hdf5")))
        return mm_fail(err, "export: --out %s names an HDF5 file but --format is safetensors",
                       a->out);
    return 0;
}

// One piece of metadata: an HDF5 root attribute (string, int32 or int64) and a safetensors
// __metadata__ entry (always a string there: numbers in decimal).
typedef enum { ATTR_STR, ATTR_I32, ATTR_I64 } attr_type;
typedef struct {
    const char *key;
    attr_type type;
    const char *s;  // ATTR_STR; not owned
    int64_t v;      // the numbers
} export_attr;

#define EXPORT_MAX_ATTRS 24
typedef struct {
    export_attr a[EXPORT_MAX_ATTRS];
    int n;
} export_attrs;

static void attr_add(export_attrs *l, const char *key, attr_type type, const char *s, int64_t v) {
    MM_CHECK(l->n < EXPORT_MAX_ATTRS, "export: more than %d attributes", EXPORT_MAX_ATTRS);
    l->a[l->n++] = (export_attr){key, type, s, v};
}
static void attr_str(export_attrs *l, const char *key, const char *s) {
    attr_add(l, key, ATTR_STR, s, 0);
}
static void attr_i32(export_attrs *l, const char *key, int32_t v) {
    attr_add(l, key, ATTR_I32, NULL, v);
}

// What both formats record besides the tensors (train/EXPORT.md "Attributes"). The sample
// layout comes from the saved config's data shapes, which the trainer resolves from the data
// before it saves; a config without them (none since export exists) leaves it out.
static void export_attrs_fill(export_attrs *l, const ckpt_meta *meta, const mm_config *c,
                              const char *yaml, const char *dir, int has_ema) {
    l->n = 0;
    attr_str(l, "format", EXPORT_FORMAT);
    attr_i32(l, "version", EXPORT_VERSION);
    attr_str(l, "model_kind", c->model.kind);
    attr_add(l, "step", ATTR_I64, NULL, meta->step);
    attr_str(l, "config", yaml);
    attr_str(l, "source", dir);
    attr_i32(l, "saved_tp", meta->tp);
    attr_i32(l, "saved_dp", meta->dp);
    attr_str(l, "weights", has_ema ? "params ema" : "params");
    // the tokenizer: token b < 256 is the byte b of the UTF-8 caption (data/data.h)
    attr_str(l, "tokenizer", DATA_TOKENIZER_NAME);
    attr_i32(l, "vocab_size", DATA_VOCAB);
    attr_i32(l, "bos_token_id", DATA_TOK_BOS);
    attr_i32(l, "eos_token_id", DATA_TOK_EOS);
    attr_i32(l, "pad_token_id", DATA_TOK_PAD);
    const data_schema sc = {.img_h = c->data.img_h,
                            .img_w = c->data.img_w,
                            .audio_len = c->data.audio_len,
                            .text_max = c->data.text_max};
    const data_audio_cfg ac = {c->data.n_fft, c->data.hop, c->data.n_mels};
    if (!sc.img_h || !sc.img_w || !sc.audio_len || !sc.text_max) return;
    const int diffusion = strcmp(c->model.kind, "diffusion") == 0;
    attr_str(l, "layout", diffusion ? "image" : "image audio text");
    if (diffusion) attr_str(l, "cond_layout", "text audio null");
    attr_i32(l, "n_img", (sc.img_h / c->model.patch) * (sc.img_w / c->model.patch));
    attr_i32(l, "n_aud", data_audio_frames(&sc, &ac) / c->model.audio_group);
    attr_i32(l, "text_T", sc.text_max + 1);
}

// Writes one group of whole tensors. -1 with err naming the file and tensor.
static int put_group(hid_t file, const char *path, const char *group, const model_tensor *tab,
                     int n, const float *buf, mm_err *err) {
    hid_t g = H5Gcreate2(file, group, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return mm_fail(err, "%s: cannot create group /%s", path, group);
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        hsize_t dims[4];
        for (int d = 0; d < tab[i].ndim; d++) dims[d] = (hsize_t)tab[i].shape[d];
        hid_t space = H5Screate_simple(tab[i].ndim, dims, NULL);
        hid_t ds = space < 0 ? -1
                             : H5Dcreate2(g, tab[i].name, H5T_IEEE_F32LE, space, H5P_DEFAULT,
                                          H5P_DEFAULT, H5P_DEFAULT);
        if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                               buf + tab[i].offset) < 0) {
            char why[MM_H5_WHY_LEN];
            rc = mm_fail(err, "%s: cannot write tensor /%s/%s: %s", path, group, tab[i].name,
                         mm_h5_why(why));
        }
        if (ds >= 0) H5Dclose(ds);
        if (space >= 0) H5Sclose(space);
    }
    H5Gclose(g);
    return rc;
}

static int write_h5(const char *out, const export_attrs *attrs, const model_tensor *tab, int n,
                    const float *params, const float *ema, mm_err *err) {
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", out) >= sizeof(tmp))
        return mm_fail(err, "export: --out path too long");
    mm_h5_quiet q;  // failures become one line, not HDF5's stack
    mm_h5_quiet_begin(&q);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t f = -1;
    if (fapl >= 0 && H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST) >= 0)
        f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (fapl >= 0) H5Pclose(fapl);
    int rc = -1;
    if (f < 0) {
        mm_fail(err, "%s: cannot create file (directory missing or not writable?)", out);
        goto done;
    }
    for (int i = 0; i < attrs->n; i++) {
        const export_attr *a = &attrs->a[i];
        int32_t v32 = (int32_t)a->v;
        int bad = a->type == ATTR_STR ? h5attr_write_str(f, a->key, a->s)
                  : a->type == ATTR_I32
                      ? h5attr_write(f, a->key, H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &v32)
                      : h5attr_write(f, a->key, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &a->v);
        if (bad) {
            char why[MM_H5_WHY_LEN];
            mm_fail(err, "%s: cannot write attribute '%s': %s", tmp, a->key, mm_h5_why(why));
            goto done;
        }
    }
    if (put_group(f, tmp, "params", tab, n, params, err) ||
        (ema && put_group(f, tmp, "ema", tab, n, ema, err)))
        goto done;
    if (mm_h5_fclose(&f) < 0) {
        char why[MM_H5_WHY_LEN];
        mm_fail(err, "%s: closing (flushing) the file failed: %s", tmp, mm_h5_why(why));
        goto done;
    }
    int fd = open(tmp, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        mm_fail(err, "%s: fsync failed: %s", tmp, strerror(errno));
        if (fd >= 0) close(fd);
        goto done;
    }
    close(fd);
    if (rename(tmp, out) != 0) {
        mm_fail(err, "%s: cannot rename to %s: %s", tmp, out, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    mm_h5_fclose(&f);  // a failed close keeps HDF5 from crashing or looping at exit
    if (rc != 0) remove(tmp);
    mm_h5_quiet_end(&q);
    return rc;
}

// The same tensors and attributes as safetensors: the weights under their own names (what a
// PyTorch state_dict calls them), the EMA as ema/<name>.
static int write_safetensors(const char *out, const export_attrs *attrs, const model_tensor *tab,
                             int n, const float *params, const float *ema, mm_err *err) {
    const int nt = ema ? 2 * n : n;
    sft_out *t = mm_calloc((size_t)nt, sizeof(sft_out));
    char(*ema_names)[SFT_NAME_LEN] = ema ? mm_calloc((size_t)n, SFT_NAME_LEN) : NULL;
    const char *keys[EXPORT_MAX_ATTRS], *vals[EXPORT_MAX_ATTRS];
    char nums[EXPORT_MAX_ATTRS][24];
    for (int i = 0; i < attrs->n; i++) {
        const export_attr *a = &attrs->a[i];
        keys[i] = a->key;
        vals[i] = a->s;
        if (a->type != ATTR_STR) {
            snprintf(nums[i], sizeof(nums[i]), "%lld", (long long)a->v);
            vals[i] = nums[i];
        }
    }
    for (int i = 0; i < n; i++) {
        t[i] = (sft_out){tab[i].name, tab[i].ndim, tab[i].shape, params + tab[i].offset};
        if (!ema) continue;
        snprintf(ema_names[i], SFT_NAME_LEN, "ema/%s", tab[i].name);
        t[n + i] = (sft_out){ema_names[i], tab[i].ndim, tab[i].shape, ema + tab[i].offset};
    }
    int rc = sft_write(out, t, nt, keys, vals, attrs->n, err);
    free(t);
    free(ema_names);
    return rc;
}

int train_export_main(int argc, char **argv, comm_group *world, mm_err *err) {
    if (comm_size(world) != 1) return mm_fail(err, "export: run it as a single process");
    export_args a;
    if (parse_args(argc, argv, &a, err) != 0) return -1;
    char dir[4200];
    ckpt_meta meta;
    mm_config c;
    char *yaml = NULL;
    if (ckpt_open_config(a.ckpt, "export: --ckpt", dir, sizeof(dir), &meta, &c, &yaml, err))
        return -1;
    ckpt_tensor_info *inv = NULL, *ema_inv = NULL;
    int n = 0, n_ema = 0, rc = -1;
    model_tensor *tab = NULL;
    float *params = NULL, *ema = NULL;
    if (ckpt_list_tensors(dir, "params", &inv, &n, err) != 0 ||
        ckpt_list_tensors(dir, "ema", &ema_inv, &n_ema, err) != 0)
        goto done;
    if (n == 0) {
        mm_fail(err, "%s: the checkpoint holds no tensors", dir);
        goto done;
    }
    if (n_ema && n_ema != n) {
        mm_fail(err, "%s: /ema holds %d tensors, /params %d", dir, n_ema, n);
        goto done;
    }
    // whole tensors, one after another: the reader copies every saved slice into place
    tab = mm_calloc((size_t)n, sizeof(model_tensor));
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        model_tensor *t = &tab[i];
        snprintf(t->name, sizeof(t->name), "%s", inv[i].name);
        t->ndim = inv[i].ndim;
        t->split_dim = -1;
        t->size = 1;
        for (int d = 0; d < t->ndim; d++) {
            t->shape[d] = t->local[d] = inv[i].shape[d];
            t->size *= (size_t)inv[i].shape[d];
        }
        t->offset = total;
        total += t->size;
        t->group = MODEL_GROUP_TRUNK;
    }
    params = mm_alloc_aligned(total * sizeof(float));
    if (n_ema) ema = mm_alloc_aligned(total * sizeof(float));
    ckpt_state st = {.tensors = tab, .n_tensors = n, .n_params = total, .params = params,
                     .ema = ema};
    if (ckpt_load_state(dir, &st, err) != 0) goto done;
    export_attrs attrs;
    export_attrs_fill(&attrs, &meta, &c, yaml, dir, ema != NULL);
    int wrc = a.safetensors ? write_safetensors(a.out, &attrs, tab, n, params, ema, err)
                            : write_h5(a.out, &attrs, tab, n, params, ema, err);
    if (wrc != 0) goto done;
    const char *names = a.safetensors
                            ? (ema ? "safetensors: <name>, ema/<name>" : "safetensors: <name>")
                            : (ema ? "/params, /ema" : "/params");
    printf(
        "export: %s model, step %lld, saved at tp %d x dp %d: %d tensors, %zu parameters "
        "-> %s (%s)\n",
        c.model.kind, (long long)meta.step, meta.tp, meta.dp, n, total, a.out, names);
    rc = 0;
done:
    free(yaml);
    free(inv);
    free(ema_inv);
    free(tab);
    free(params);
    free(ema);
    return rc;
}
