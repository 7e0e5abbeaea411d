// export.c: `train export --ckpt DIR --out FILE.h5`: one consolidated HDF5 file of named
// float32 tensors in their full (global) shapes, for use outside mmtrain (Python, another
// framework), whatever tp x dp the checkpoint was saved with. The tensors are assembled by
// the checkpoint's own resharding reader (ckpt_load_state) into a table of whole tensors, so
// export needs neither the model code nor the training data. Format: train/EXPORT.md.
//
//   /params/<name>   float32, global shape    the trained weights
//   /ema/<name>      float32, global shape    the EMA (diffusion), when the checkpoint has it
//   root attributes  format "mmtrain-weights", version 1, model_kind, step, config (YAML),
//                    source (checkpoint dir), saved_tp, saved_dp, weights ("params" or
//                    "params ema")
//
// Written to FILE.h5.tmp, fsync'd and renamed, like every file this project writes: a
// killed export never leaves a truncated FILE.h5.
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/h5err.h"
#include "ckpt.h"
#include "h5attr.h"
#include "config.h"
#include "train.h"

#define EXPORT_FORMAT "mmtrain-weights"
#define EXPORT_VERSION 1

// The usage `train export --help` prints (main.c); parse_args below must take what it lists.
static const mm_cli_opt export_opts[] = {
    {"--ckpt", "DIR",
     "a checkpoint, a ckpt/ directory or a run directory (its latest\n"
     "checkpoint), saved at any tp x dp layout; required"},
    {"--out", "FILE.h5", "the file to write (written whole or not at all); required"},
    {NULL, NULL, NULL}};

const mm_cli_cmd train_export_cli = {
    .prog = "train",
    .name = "export",
    .synopsis = "--ckpt DIR --out FILE.h5",
    .summary = "write a checkpoint's weights as full-shape float32 tensors in one file",
    .about =
        "  Writes the weights (and the EMA, if kept) of a checkpoint as full-shape float32\n"
        "  tensors into one HDF5 file, whatever layout it was saved at (train/EXPORT.md).\n",
    .opts = export_opts};

typedef struct {
    const char *ckpt, *out;
} export_args;

static int parse_args(int argc, char **argv, export_args *a, mm_err *err) {
    memset(a, 0, sizeof(*a));
    for (int i = 0; i < argc; i++) {
        const char *k = argv[i];
        if (strcmp(k, "--ckpt") != 0 && strcmp(k, "--out") != 0)
            return mm_fail(err, "train export: unknown option '%s' (see train export --help)", k);
        if (i + 1 >= argc) return mm_fail(err, "export: %s needs a value", k);
        const char *v = argv[++i];
        if (!*v) return mm_fail(err, "export: %s needs a non-empty value", k);
        if (k[2] == 'c') a->ckpt = v;
        else a->out = v;
    }
    if (!a->ckpt) return mm_fail(err, "export: --ckpt DIR is required");
    if (!a->out) return mm_fail(err, "export: --out FILE.h5 is required");
    return 0;
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

static int write_export(const char *out, const char *dir, const ckpt_meta *meta,
                        const char *kind, const char *yaml, const model_tensor *tab, int n,
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
    int32_t version = EXPORT_VERSION, tp = meta->tp, dp = meta->dp;
    int64_t step = meta->step;
    if (h5attr_write_str(f, "format", EXPORT_FORMAT) ||
        h5attr_write(f, "version", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &version) ||
        h5attr_write_str(f, "model_kind", kind) ||
        h5attr_write(f, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &step) ||
        h5attr_write_str(f, "config", yaml) || h5attr_write_str(f, "source", dir) ||
        h5attr_write(f, "saved_tp", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &tp) ||
        h5attr_write(f, "saved_dp", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &dp) ||
        h5attr_write_str(f, "weights", ema ? "params ema" : "params")) {
        char why[MM_H5_WHY_LEN];
        mm_fail(err, "%s: cannot write attributes: %s", tmp, mm_h5_why(why));
        goto done;
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
    if (write_export(a.out, dir, &meta, c.model.kind, yaml, tab, n, params, ema, err) != 0)
        goto done;
    printf("export: %s model, step %lld, saved at tp %d x dp %d: %d tensors, %zu parameters "
           "-> %s (/params%s)\n",
           c.model.kind, (long long)meta.step, meta.tp, meta.dp, n, total, a.out,
           ema ? ", /ema" : "");
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
