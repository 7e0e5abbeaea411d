// ckpt.c: checkpoints (format and protocol in train/CHECKPOINT.md). Two promises shape it:
//   - a checkpoint that is loaded is complete: every rank's file is written and fsync'd
//     before rank 0 writes the COMMITTED marker, and the directory only gets its final name
//     after that, so a kill at any moment leaves either the previous state or the new one;
//   - a checkpoint loads under any layout: each tensor slice is stored with its global
//     shape and offset, and loading copies whatever overlaps the slice a rank now wants.
// Every attribute and shape read from a file is checked, and every dataset carries a CRC-32
// of its values, so a damaged file is an error naming file and tensor, never wrong weights.
// The HDF5 calls run in quiet scopes (core/h5err.h): a failure is that one mm_err line, not
// HDF5's error stack on stderr.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE  // renameat2, nftw
#endif
#include "ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <hdf5.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "../core/h5err.h"
#include "h5attr.h"

#define PATH_LEN 4096
#define MAX_DIM 4

enum { KIND_PARAMS, KIND_M, KIND_V, KIND_EMA, N_KINDS };
static const char *const kind_group[N_KINDS] = {"params", "adam_m", "adam_v", "ema"};

// ---------------------------------------------------------------------------------------
// Files and directories.

static int fsync_path(const char *path, int is_dir, mm_err *err) {
    int fd = open(path, O_RDONLY | (is_dir ? O_DIRECTORY : 0));
    if (fd < 0) return mm_fail(err, "%s: cannot open for fsync: %s", path, strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0) return mm_fail(err, "%s: fsync failed: %s", path, strerror(e));
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

// rm -rf path; 0 also when it did not exist.
static int remove_tree(const char *path) {
    struct stat sb;
    if (lstat(path, &sb) != 0) return errno == ENOENT ? 0 : -1;
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

// 1 when name is "step_" followed by digits only (a committed name, never *.tmp), with the
// step number in *step.
static int parse_step_name(const char *name, int64_t *step) {
    if (strncmp(name, "step_", 5) != 0 || !name[5] || strlen(name) > 5 + 18) return 0;
    int64_t v = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9') return 0;
        v = v * 10 + (*p - '0');
    }
    if (step) *step = v;
    return 1;
}

// dir/name into out; -1 when it does not fit (callers treat that as an error or a skip).
static int path_join(char *out, size_t cap, const char *dir, const char *name) {
    int n = snprintf(out, cap, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= cap ? -1 : 0;
}

static int has_file(const char *dir, const char *name) {
    char p[PATH_LEN];
    struct stat sb;
    return path_join(p, sizeof(p), dir, name) == 0 && stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

// A checkpoint may be loaded only when it is a directory whose name is not *.tmp and that
// holds the COMMITTED marker.
static int check_committed(const char *dir, mm_err *err) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    if (n >= 4 && memcmp(dir + n - 4, ".tmp", 4) == 0)
        return mm_fail(err, "checkpoint %s: an unfinished save (*.tmp), never loaded", dir);
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return mm_fail(err, "checkpoint %s: cannot open: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return mm_fail(err, "checkpoint %s: not a directory", dir);
    if (!has_file(dir, "COMMITTED"))
        return mm_fail(err,
                       "checkpoint %s: not a committed checkpoint (no COMMITTED marker: "
                       "its save was interrupted or it is not a checkpoint directory)",
                       dir);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Tensor slices.

// A slice of a global tensor as a box in global coordinates, padded to MAX_DIM dims with
// leading 1s so that copies are always 4 nested loops.
typedef struct {
    int64_t lo[MAX_DIM], n[MAX_DIM];
} box;

static box make_box(int ndim, const int64_t *local, int split_dim, int64_t start) {
    box b;
    int pad = MAX_DIM - ndim;
    for (int d = 0; d < MAX_DIM; d++) b.lo[d] = 0, b.n[d] = 1;
    for (int d = 0; d < ndim; d++) {
        b.n[pad + d] = local[d];
        if (d == split_dim) b.lo[pad + d] = start;
    }
    return b;
}

// Fills why with a formatted reason and returns -1 (mm_fail for a bare char buffer).
static int why_fail(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int why_fail(char *why, size_t why_len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    return -1;
}

// Checks that (global, split_dim, start, local) describe a slice: along split_dim a range
// inside the global extent, every other dim whole. why gets the reason.
static int check_slice(int ndim, const int64_t *global, int split_dim, int64_t start,
                       const int64_t *local, char *why, size_t why_len) {
    if (ndim < 1 || ndim > MAX_DIM)
        return why_fail(why, why_len, "%d dims (1 to %d supported)", ndim, MAX_DIM);
    if (split_dim < -1 || split_dim >= ndim)
        return why_fail(why, why_len, "split_dim %d outside [-1, %d)", split_dim, ndim);
    for (int d = 0; d < ndim; d++) {
        if (global[d] < 1 || local[d] < 1)
            return why_fail(why, why_len, "empty extent in dim %d", d);
        if (d != split_dim && local[d] != global[d])
            return why_fail(why, why_len,
                            "local extent %" PRId64 " of dim %d differs from the global %" PRId64
                            " though it is not the split dim",
                            local[d], d, global[d]);
    }
    if (split_dim < 0 && start != 0)
        return why_fail(why, why_len, "replicated but start %" PRId64, start);
    if (split_dim >= 0 && (start < 0 || start + local[split_dim] > global[split_dim]))
        return why_fail(why, why_len,
                        "slice [%" PRId64 ", %" PRId64 ") of dim %d outside 0..%" PRId64, start,
                        start + local[split_dim], split_dim, global[split_dim]);
    return 0;
}

static void fmt_shape(char *out, size_t cap, int ndim, const int64_t *s) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int d = 0; d < ndim && k < cap; d++)
        k += (size_t)snprintf(out + k, cap - k, "%s%" PRId64, d ? ", " : "", s[d]);
    if (k < cap) snprintf(out + k, cap - k, "]");
}

// The tensor table is the caller's (the model's); checking it here turns a bug there into a
// clear message instead of a file that loads into the wrong places.
static int check_table(const ckpt_state *st, mm_err *err) {
    for (int i = 0; i < st->n_tensors; i++) {
        const model_tensor *t = &st->tensors[i];
        char why[256];
        size_t nl = strnlen(t->name, sizeof(t->name));
        if (nl == 0 || nl == sizeof(t->name) || memchr(t->name, '/', nl) ||
            strcmp(t->name, ".") == 0)
            return mm_fail(err,
                           "checkpoint: tensor %d has an invalid name '%.64s' "
                           "(empty or containing '/')",
                           i, t->name);
        if (check_slice(t->ndim, t->shape, t->split_dim, t->start, t->local, why, sizeof(why)))
            return mm_fail(err, "checkpoint: tensor '%s' in the table: %s", t->name, why);
        int64_t n = 1;
        for (int d = 0; d < t->ndim; d++) n *= t->local[d];
        if ((size_t)n != t->size || t->offset > st->n_params || t->size > st->n_params - t->offset)
            return mm_fail(err,
                           "checkpoint: tensor '%s' in the table: size %zu / offset %zu do "
                           "not fit its local shape and the %zu-element buffer",
                           t->name, t->size, t->offset, st->n_params);
    }
    return 0;
}

// CRC-32 (zlib) of the float32 values as bytes; chunked because zlib takes 32-bit lengths.
static uint32_t crc_floats(const float *x, size_t n) {
    uLong crc = crc32(0L, Z_NULL, 0);
    const unsigned char *p = (const unsigned char *)x;
    size_t left = n * sizeof(float);
    while (left > 0) {
        uInt chunk = left > (1u << 30) ? (1u << 30) : (uInt)left;
        crc = crc32(crc, p, chunk);
        p += chunk;
        left -= chunk;
    }
    return (uint32_t)crc;
}

// ---------------------------------------------------------------------------------------
// Attributes. Writers return <0 on HDF5 failure; readers fill err naming `where` and the
// attribute, and check presence, shape and type class before reading.

int h5attr_write(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, int n,
                 const void *buf) {
    hsize_t dims[1] = {(hsize_t)n};
    hid_t space = n ? H5Screate_simple(1, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t attr = space < 0 ? -1 : H5Acreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = attr < 0 ? -1 : H5Awrite(attr, mem_type, buf);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return rc < 0 ? -1 : 0;
}

// Fixed-length string (NUL-padded to its length; no variable-length types in our files).
int h5attr_write_str(hid_t loc, const char *name, const char *s) {
    size_t n = strlen(s);
    hid_t type = H5Tcopy(H5T_C_S1);
    int rc = -1;
    if (type >= 0 && H5Tset_size(type, n ? n : 1) >= 0 && H5Tset_strpad(type, H5T_STR_NULLPAD) >= 0)
        rc = h5attr_write(loc, name, type, type, 0, n ? s : "");
    if (type >= 0) H5Tclose(type);
    return rc;
}

// -1 with err when attribute `name` is absent, or when HDF5 cannot even tell (a header
// whose checksum fails: the file is damaged).
static int attr_missing(hid_t loc, const char *where, const char *name, mm_err *err) {
    htri_t e = H5Aexists(loc, name);
    if (e > 0) return 0;
    if (e < 0)
        return mm_fail(err, "%s: attribute '%s' unreadable: object header damaged (checksum "
                       "mismatch: file corrupt)", where, name);
    return mm_fail(err, "%s: attribute '%s' missing", where, name);
}

// Reads a numeric attribute of n elements (0 = scalar) of class cls into buf as mem_type.
static int read_attr(hid_t loc, const char *where, const char *name, H5T_class_t cls,
                     hid_t mem_type, int n, void *buf, mm_err *err) {
    if (attr_missing(loc, where, name, err)) return -1;
    hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t space = attr < 0 ? -1 : H5Aget_space(attr);
    hid_t type = attr < 0 ? -1 : H5Aget_type(attr);
    int rc = -1;
    if (space < 0 || type < 0) {
        mm_fail(err, "%s: attribute '%s' unreadable", where, name);
        goto done;
    }
    int nd = H5Sget_simple_extent_ndims(space);
    hssize_t np = H5Sget_simple_extent_npoints(space);
    if ((n == 0 && nd != 0) || (n > 0 && (nd != 1 || np != n))) {
        mm_fail(err, "%s: attribute '%s' has %lld values, expected %d", where, name, (long long)np,
                n ? n : 1);
        goto done;
    }
    if (H5Tget_class(type) != cls) {
        mm_fail(err, "%s: attribute '%s' has the wrong type (expected %s)", where, name,
                cls == H5T_INTEGER ? "an integer" : "a string");
        goto done;
    }
    if (H5Aread(attr, mem_type, buf) < 0) {
        mm_fail(err, "%s: attribute '%s' unreadable (value out of range?)", where, name);
        goto done;
    }
    rc = 0;
done:
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

// Reads a fixed-length string attribute into a malloc'd NUL-terminated buffer (caller frees).
static int read_str_attr(hid_t loc, const char *where, const char *name, char **out, mm_err *err) {
    if (attr_missing(loc, where, name, err)) return -1;
    hid_t attr = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t space = attr < 0 ? -1 : H5Aget_space(attr);
    hid_t type = attr < 0 ? -1 : H5Aget_type(attr);
    hid_t mem = -1;
    char *buf = NULL;
    int rc = -1;
    if (space < 0 || type < 0) {
        mm_fail(err, "%s: attribute '%s' unreadable", where, name);
        goto done;
    }
    if (H5Tget_class(type) != H5T_STRING || H5Tis_variable_str(type) != 0 ||
        H5Sget_simple_extent_ndims(space) != 0) {
        mm_fail(err, "%s: attribute '%s' is not a fixed-length string", where, name);
        goto done;
    }
    size_t n = H5Tget_size(type);
    mem = H5Tcopy(H5T_C_S1);
    buf = mm_calloc(n + 1, 1);
    if (mem < 0 || H5Tset_size(mem, n) < 0 || H5Tset_strpad(mem, H5T_STR_NULLPAD) < 0 ||
        H5Aread(attr, mem, buf) < 0) {
        mm_fail(err, "%s: attribute '%s' unreadable", where, name);
        goto done;
    }
    *out = buf;
    buf = NULL;
    rc = 0;
done:
    free(buf);
    if (mem >= 0) H5Tclose(mem);
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

// Checks the format and version attributes every file of ours carries.
static int check_format(hid_t loc, const char *where, mm_err *err) {
    char *format = NULL;
    int32_t version = 0;
    if (read_str_attr(loc, where, "format", &format, err)) return -1;
    int ok = strcmp(format, CKPT_FORMAT) == 0;
    if (!ok) mm_fail(err, "%s: format '%.100s', expected '%s'", where, format, CKPT_FORMAT);
    free(format);
    if (!ok) return -1;
    if (read_attr(loc, where, "version", H5T_INTEGER, H5T_NATIVE_INT32, 0, &version, err))
        return -1;
    if (version != CKPT_VERSION)
        return mm_fail(err, "%s: format version %d, this build reads version %d", where,
                       (int)version, CKPT_VERSION);
    return 0;
}

static int write_format(hid_t loc) {
    int32_t version = CKPT_VERSION;
    return h5attr_write_str(loc, "format", CKPT_FORMAT) < 0 ||
                   h5attr_write(loc, "version", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &version) < 0
               ? -1
               : 0;
}

// Files are written with the 1.8+ object format: its metadata carries checksums.
static hid_t create_file(const char *path) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return -1;
    hid_t f = -1;
    if (H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST) >= 0)
        f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    return f;
}

// ---------------------------------------------------------------------------------------
// Writing.

static int write_tensor(hid_t grp, const char *path, const char *group, const model_tensor *t,
                        const float *data, mm_err *err) {
    hsize_t dims[MAX_DIM];
    for (int d = 0; d < t->ndim; d++) dims[d] = (hsize_t)t->local[d];
    hid_t space = H5Screate_simple(t->ndim, dims, NULL);
    hid_t dset = space < 0 ? -1
                           : H5Dcreate2(grp, t->name, H5T_IEEE_F32LE, space, H5P_DEFAULT,
                                        H5P_DEFAULT, H5P_DEFAULT);
    int rc = -1;
    if (dset < 0) {
        mm_fail(err, "%s: cannot create dataset /%s/%s (duplicate tensor name?)", path, group,
                t->name);
        goto done;
    }
    int32_t split = t->split_dim;
    int64_t start = t->start;
    uint32_t crc = crc_floats(data, t->size);
    if (H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0 ||
        h5attr_write(dset, "global_shape", H5T_STD_I64LE, H5T_NATIVE_INT64, t->ndim, t->shape) ||
        h5attr_write(dset, "split_dim", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &split) ||
        h5attr_write(dset, "start", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &start) ||
        h5attr_write(dset, "crc32", H5T_STD_U32LE, H5T_NATIVE_UINT32, 0, &crc)) {
        char why[MM_H5_WHY_LEN];
        mm_fail(err, "%s: cannot write tensor '%s' (/%s): %s", path, t->name, group,
                mm_h5_why(why));
        goto done;
    }
    rc = 0;
done:
    if (dset >= 0) H5Dclose(dset);
    if (space >= 0) H5Sclose(space);
    return rc;
}

int ckpt_write_rank_file(const char *dir, int world_rank, const ckpt_state *st, mm_err *err) {
    char path[PATH_LEN];
    if ((size_t)snprintf(path, sizeof(path), "%s/rank_%05d.h5", dir, world_rank) >= sizeof(path))
        return mm_fail(err, "%s: path too long", dir);
    if (check_table(st, err)) return -1;
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    hid_t file = create_file(path), grp = -1;
    int rc = -1;
    if (file < 0) {
        char why[MM_H5_WHY_LEN];
        mm_fail(err, "%s: cannot create file: %s", path, mm_h5_why(why));
        goto done;
    }
    int32_t rank = world_rank;
    if (write_format(file) ||
        h5attr_write(file, "world_rank", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &rank)) {
        mm_fail(err, "%s: cannot write attributes", path);
        goto done;
    }
    const float *bufs[N_KINDS] = {st->params, st->m, st->v, st->ema};
    for (int k = 0; k < N_KINDS; k++) {
        if (!bufs[k]) continue;  // weights-only state: no optimizer groups
        grp = H5Gcreate2(file, kind_group[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (grp < 0) {
            mm_fail(err, "%s: cannot create group /%s", path, kind_group[k]);
            goto done;
        }
        for (int i = 0; i < st->n_tensors; i++) {
            const model_tensor *t = &st->tensors[i];
            if (write_tensor(grp, path, kind_group[k], t, bufs[k] + t->offset, err)) goto done;
        }
        H5Gclose(grp);
        grp = -1;
    }
    if (mm_h5_fclose(&file) < 0) {
        char why[MM_H5_WHY_LEN];
        mm_fail(err, "%s: closing (flushing) the file failed: %s", path, mm_h5_why(why));
        goto done;
    }
    rc = fsync_path(path, 0, err);
done:
    if (grp >= 0) H5Gclose(grp);
    mm_h5_fclose(&file);
    mm_h5_quiet_end(&q);
    return rc;
}

static int write_meta(const char *dir, const ckpt_meta *meta, const char *config_yaml,
                      int rank_files, mm_err *err) {
    char path[PATH_LEN];
    if (path_join(path, sizeof(path), dir, "meta.h5"))
        return mm_fail(err, "%s: path too long", dir);
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    hid_t f = create_file(path);
    int rc = -1;
    if (f < 0) {
        char why[MM_H5_WHY_LEN];
        mm_fail(err, "%s: cannot create file: %s", path, mm_h5_why(why));
        goto done;
    }
    int32_t world = meta->world, tp = meta->tp, dp = meta->dp, nfiles = rank_files;
    int64_t step = meta->step, epoch = meta->pos.epoch;
    uint64_t offset = meta->pos.offset;
    if (write_format(f) || h5attr_write(f, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &step) ||
        h5attr_write(f, "world", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &world) ||
        h5attr_write(f, "tp", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &tp) ||
        h5attr_write(f, "dp", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &dp) ||
        h5attr_write(f, "rank_files", H5T_STD_I32LE, H5T_NATIVE_INT32, 0, &nfiles) ||
        h5attr_write(f, "rng", H5T_STD_U64LE, H5T_NATIVE_UINT64, 4, meta->rng.s) ||
        h5attr_write(f, "loader_epoch", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &epoch) ||
        h5attr_write(f, "loader_offset", H5T_STD_U64LE, H5T_NATIVE_UINT64, 0, &offset) ||
        h5attr_write_str(f, "config", config_yaml ? config_yaml : "") ||
        (meta->data_id[0] && h5attr_write_str(f, "data_id", meta->data_id) < 0)) {
        char why[MM_H5_WHY_LEN];
        mm_fail(err, "%s: cannot write attributes: %s", path, mm_h5_why(why));
        goto done;
    }
    if (mm_h5_fclose(&f) < 0) {
        char why[MM_H5_WHY_LEN];
        mm_fail(err, "%s: closing (flushing) the file failed: %s", path, mm_h5_why(why));
        goto done;
    }
    rc = fsync_path(path, 0, err);
done:
    mm_h5_fclose(&f);
    mm_h5_quiet_end(&q);
    return rc;
}

// ---------------------------------------------------------------------------------------
// The commit protocol (rank 0 parts).

typedef struct {
    char ckdir[PATH_LEN];  // <out_dir>/ckpt
    char name[32];         // step_XXXXXXXX
    char final[PATH_LEN];  // <ckdir>/<name>
    char tmp[PATH_LEN];    // <ckdir>/<name>.tmp
} save_paths;

static int make_paths(save_paths *p, const char *out_dir, int64_t step, mm_err *err) {
    if (step < 0) return mm_fail(err, "checkpoint: negative step %" PRId64, step);
    snprintf(p->name, sizeof(p->name), "step_%08" PRId64, step);
    if ((size_t)snprintf(p->ckdir, sizeof(p->ckdir), "%s/ckpt", out_dir) >= sizeof(p->ckdir) ||
        (size_t)snprintf(p->final, sizeof(p->final), "%s/%s", p->ckdir, p->name) >=
            sizeof(p->final) ||
        (size_t)snprintf(p->tmp, sizeof(p->tmp), "%s/%s.tmp", p->ckdir, p->name) >= sizeof(p->tmp))
        return mm_fail(err, "checkpoint: path under %s too long", out_dir);
    return 0;
}

static int prepare_tmp(const save_paths *p, const char *out_dir, mm_err *err) {
    if (mm_mkdirs(p->ckdir, err)) return -1;
    ckpt_clean_partial(out_dir);
    if (mkdir(p->tmp, 0755) != 0)
        return mm_fail(err, "%s: cannot create directory: %s", p->tmp, strerror(errno));
    return 0;
}

// Committed checkpoints in ckdir by ascending step; *n gets the count. Caller frees.
static int64_t *list_committed(const char *ckdir, int *n) {
    *n = 0;
    DIR *d = opendir(ckdir);
    if (!d) return NULL;
    int cap = 16;
    int64_t *steps = mm_malloc(sizeof(int64_t) * (size_t)cap);
    struct dirent *e;
    while ((e = readdir(d))) {
        int64_t s;
        char dir[PATH_LEN];
        if (!parse_step_name(e->d_name, &s)) continue;
        if (path_join(dir, sizeof(dir), ckdir, e->d_name) || !has_file(dir, "COMMITTED")) continue;
        if (*n == cap) {
            cap *= 2;
            int64_t *grown = realloc(steps, sizeof(int64_t) * (size_t)cap);
            MM_CHECK(grown, "out of memory listing checkpoints");
            steps = grown;
        }
        steps[(*n)++] = s;
    }
    closedir(d);
    for (int i = 1; i < *n; i++)  // insertion sort: a handful of entries
        for (int j = i; j > 0 && steps[j - 1] > steps[j]; j--) {
            int64_t t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    return steps;
}

// Deletes the oldest committed checkpoints beyond keep_last, never the one just written.
static void prune(const char *ckdir, int keep_last, int64_t current) {
    if (keep_last <= 0) return;
    int n = 0;
    int64_t *steps = list_committed(ckdir, &n);
    for (int i = 0; i < n - keep_last; i++) {
        if (steps[i] == current) continue;
        char dir[PATH_LEN], name[32];
        snprintf(name, sizeof(name), "step_%08" PRId64, steps[i]);
        if (path_join(dir, sizeof(dir), ckdir, name)) continue;
        if (remove_tree(dir) != 0)
            fprintf(stderr, "warning: checkpoint %s: could not delete old checkpoint: %s\n", dir,
                    strerror(errno));
    }
    free(steps);
}

// Marker, rename into place (swapping out an existing checkpoint of the same step), latest.
static int commit(const save_paths *p, const ckpt_meta *meta, const char *config_yaml,
                  int rank_files, int keep_last, mm_err *err) {
    char path[PATH_LEN + 16];
    char marker[128];
    if (write_meta(p->tmp, meta, config_yaml, rank_files, err) || fsync_path(p->tmp, 1, err))
        return -1;
    int n = snprintf(marker, sizeof(marker), "%s %d step %" PRId64 "\n", CKPT_FORMAT, CKPT_VERSION,
                     meta->step);
    snprintf(path, sizeof(path), "%s/COMMITTED", p->tmp);
    if (mm_write_file_atomic(path, marker, (size_t)n, err)) return -1;
    struct stat sb;
    if (stat(p->final, &sb) == 0) {
        // Same step saved again: swap atomically so that a kill leaves one of the two whole
        // checkpoints under the final name; the old one ends up under .tmp and is deleted.
        if (renameat2(AT_FDCWD, p->tmp, AT_FDCWD, p->final, RENAME_EXCHANGE) != 0) {
            if (errno != EINVAL && errno != ENOSYS)
                return mm_fail(err, "%s: cannot swap in the new checkpoint: %s", p->final,
                               strerror(errno));
            // No RENAME_EXCHANGE on this filesystem: two renames; a kill between them leaves
            // the old checkpoint as <name>.old (see CHECKPOINT.md).
            snprintf(path, sizeof(path), "%s.old", p->final);
            remove_tree(path);
            if (rename(p->final, path) != 0 || rename(p->tmp, p->final) != 0)
                return mm_fail(err, "%s: cannot replace the existing checkpoint: %s", p->final,
                               strerror(errno));
            remove_tree(path);
        } else {
            remove_tree(p->tmp);
        }
    } else if (rename(p->tmp, p->final) != 0) {
        return mm_fail(err, "%s: cannot rename into place: %s", p->tmp, strerror(errno));
    }
    if (fsync_path(p->ckdir, 1, err)) return -1;
    n = snprintf(marker, sizeof(marker), "%s\n", p->name);
    snprintf(path, sizeof(path), "%s/latest", p->ckdir);
    if (mm_write_file_atomic(path, marker, (size_t)n, err)) return -1;
    prune(p->ckdir, keep_last, meta->step);
    return 0;
}

// After a collective check: when some rank failed (flag = its rank + 1), every rank gets that
// rank's message, so the entry point can print it from rank 0.
static int agree(comm_group *world, int64_t flag, const mm_err *local, mm_err *err) {
    comm_allreduce_max(world, &flag, 1, COMM_I64);
    if (flag == 0) return 0;
    mm_err msg = *local;
    comm_bcast(world, msg.msg, sizeof(msg.msg), COMM_U8, (int)(flag - 1));
    msg.msg[sizeof(msg.msg) - 1] = '\0';
    if (comm_size(world) > 1) return mm_fail(err, "rank %d: %s", (int)(flag - 1), msg.msg);
    return mm_fail(err, "%s", msg.msg);
}

int ckpt_save(comm_group *world, const char *out_dir, const ckpt_meta *meta,
              const char *config_yaml, const ckpt_state *st, int write_state, int keep_last,
              mm_err *err) {
    int rank = comm_rank(world);
    save_paths p;
    mm_err local = {{0}};
    // Phase 1: rank 0 clears leftovers and creates the .tmp directory.
    int64_t flag = make_paths(&p, out_dir, meta->step, &local) != 0 ? rank + 1 : 0;
    if (flag == 0 && rank == 0 && prepare_tmp(&p, out_dir, &local)) flag = 1;
    if (agree(world, flag, &local, err)) return -1;
    // Phase 2: every writing rank writes and fsyncs its own file.
    if (write_state && ckpt_write_rank_file(p.tmp, rank, st, &local)) flag = rank + 1;
    int64_t files = write_state ? 1 : 0;
    comm_allreduce_sum(world, &files, 1, COMM_I64);
    if (agree(world, flag, &local, err)) {
        if (rank == 0) remove_tree(p.tmp);
        return -1;
    }
    // Phase 3: rank 0 commits; the agreement is the barrier no rank returns before.
    if (rank == 0 && commit(&p, meta, config_yaml, (int)files, keep_last, &local)) {
        flag = 1;
        remove_tree(p.tmp);
    }
    return agree(world, flag, &local, err);
}

void ckpt_clean_partial(const char *out_dir) {
    char ckdir[PATH_LEN];
    snprintf(ckdir, sizeof(ckdir), "%s/ckpt", out_dir);
    DIR *d = opendir(ckdir);
    if (!d) return;
    // Collect first: renaming or deleting while readdir walks the directory may skip entries.
    enum { DROP_TMP, ASIDE, RESTORE_OLD, DROP_OLD };
    int n = 0, cap = 16;
    char **paths = mm_malloc(sizeof(char *) * (size_t)cap);
    int *what = mm_malloc(sizeof(int) * (size_t)cap);
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *s = e->d_name;
        size_t len = strlen(s);
        char path[PATH_LEN];
        if (path_join(path, sizeof(path), ckdir, s)) continue;
        int w = -1;
        if (len > 4 && strcmp(s + len - 4, ".tmp") == 0) {
            w = DROP_TMP;
        } else if (len > 4 && strcmp(s + len - 4, ".old") == 0 && strncmp(s, "step_", 5) == 0) {
            // a fallback swap cut short: the old checkpoint is the only one of its step when
            // the new one never got the final name
            char final[PATH_LEN];
            struct stat sb;
            snprintf(final, sizeof(final), "%.*s", (int)(strlen(path) - 4), path);
            w = has_file(path, "COMMITTED") && stat(final, &sb) != 0 ? RESTORE_OLD : DROP_OLD;
        } else if (parse_step_name(s, NULL) && !has_file(path, "COMMITTED")) {
            w = ASIDE;
        }
        if (w < 0) continue;
        if (n == cap) {
            cap *= 2;
            char **grown = realloc(paths, sizeof(char *) * (size_t)cap);
            int *grown_w = realloc(what, sizeof(int) * (size_t)cap);
            MM_CHECK(grown && grown_w, "out of memory listing checkpoints");
            paths = grown, what = grown_w;
        }
        paths[n] = strdup(path);
        MM_CHECK(paths[n], "out of memory");
        what[n++] = w;
    }
    closedir(d);
    for (int i = 0; i < n; i++) {
        const char *p = paths[i];
        char to[PATH_LEN + 64];
        if (what[i] == ASIDE) {
            snprintf(to, sizeof(to), "%s.uncommitted-%lld", p, (long long)time(NULL));
            if (rename(p, to) == 0)
                fprintf(stderr,
                        "warning: %s has no COMMITTED marker (an interrupted save or a "
                        "damaged checkpoint): moved aside to %s, not loaded, not deleted\n",
                        p, to);
            else
                fprintf(stderr,
                        "warning: %s has no COMMITTED marker and could not be moved "
                        "aside: %s\n",
                        p, strerror(errno));
        } else if (what[i] == RESTORE_OLD) {
            snprintf(to, sizeof(to), "%.*s", (int)(strlen(p) - 4), p);
            if (rename(p, to) == 0)
                fprintf(stderr,
                        "warning: %s: restored to %s (a checkpoint replacement was "
                        "interrupted)\n",
                        p, to);
            else
                fprintf(stderr, "warning: %s: could not be restored to %s: %s\n", p, to,
                        strerror(errno));
        } else if (remove_tree(p) != 0) {
            fprintf(stderr, "warning: %s: could not remove partial checkpoint: %s\n", p,
                    strerror(errno));
        }
        free(paths[i]);
    }
    free(paths);
    free(what);
}

int ckpt_data_id(const char *dir, char *out, size_t out_len, mm_err *err) {
    char path[PATH_LEN];
    if (path_join(path, sizeof(path), dir, "index.json"))
        return mm_fail(err, "%s: path too long", dir);
    char *text = NULL;
    size_t len = 0;
    if (mm_read_file(path, &text, &len, err)) return -1;
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, (const Bytef *)text, (uInt)len);
    free(text);
    snprintf(out, out_len, "index-crc32:%08lx", (unsigned long)crc);
    return 0;
}

// ckpt_find_latest for a ckpt/ directory ckdir (its `latest` file).
static int find_latest_in(const char *ckdir, char *path, size_t path_len, mm_err *err) {
    char latest[PATH_LEN];
    if (path_join(latest, sizeof(latest), ckdir, "latest"))
        return mm_fail(err, "%s: path too long", ckdir);
    struct stat sb;
    if (stat(latest, &sb) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) return 0;
        return mm_fail(err, "%s: cannot open: %s", latest, strerror(errno));
    }
    char *text = NULL;
    if (mm_read_file(latest, &text, NULL, err)) return -1;
    size_t n = strlen(text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ' || text[n - 1] == '\r')) n--;
    text[n] = '\0';
    int rc = -1;
    if (!parse_step_name(text, NULL)) {
        mm_fail(err, "%s: holds '%.64s', not a checkpoint name (step_XXXXXXXX)", latest, text);
        goto done;
    }
    if ((size_t)snprintf(path, path_len, "%s/%s", ckdir, text) >= path_len) {
        mm_fail(err, "%s: checkpoint path too long", latest);
        goto done;
    }
    mm_err why;
    if (check_committed(path, &why)) {
        mm_fail(err, "%s names %s, which is not usable: %s", latest, text, why.msg);
        goto done;
    }
    rc = 1;
done:
    free(text);
    return rc;
}

int ckpt_find_latest(const char *out_dir, char *path, size_t path_len, mm_err *err) {
    char ckdir[PATH_LEN];
    if (path_join(ckdir, sizeof(ckdir), out_dir, "ckpt"))
        return mm_fail(err, "%s: path too long", out_dir);
    return find_latest_in(ckdir, path, path_len, err);
}

int ckpt_find_previous(const char *out_dir, const char *than, char *path, size_t path_len) {
    char ckdir[PATH_LEN];
    if (path_join(ckdir, sizeof(ckdir), out_dir, "ckpt")) return 0;
    int64_t below = INT64_MAX;
    if (than) {
        const char *base = strrchr(than, '/');
        if (!parse_step_name(base ? base + 1 : than, &below)) return 0;
    }
    int n = 0, found = 0;
    int64_t *steps = list_committed(ckdir, &n);
    for (int i = n - 1; i >= 0 && !found; i--) {
        if (steps[i] >= below) continue;
        found = (size_t)snprintf(path, path_len, "%s/step_%08" PRId64, ckdir, steps[i]) <
                path_len;
    }
    free(steps);
    return found;
}

int ckpt_resolve(const char *path, char *out, size_t out_len, mm_err *err) {
    struct stat sb;
    if (!path[0]) return mm_fail(err, "checkpoint path is empty");
    if (stat(path, &sb) != 0) return mm_fail(err, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return mm_fail(err, "%s: not a directory (a checkpoint, a ckpt/ or a run directory)",
                       path);
    char sub[PATH_LEN];
    int rc = 0;
    if (has_file(path, "COMMITTED")) {
        rc = check_committed(path, err);  // also refuses a committed-but-*.tmp directory
        if (rc == 0 && (size_t)snprintf(out, out_len, "%s", path) >= out_len)
            rc = mm_fail(err, "%s: path too long", path);
        return rc;
    }
    if (has_file(path, "latest")) {  // a ckpt/ directory
        rc = find_latest_in(path, out, out_len, err);
        return rc == 1 ? 0 : -1;
    }
    if (path_join(sub, sizeof(sub), path, "ckpt")) return mm_fail(err, "%s: path too long", path);
    if (stat(sub, &sb) == 0 && S_ISDIR(sb.st_mode)) {  // a run directory
        rc = find_latest_in(sub, out, out_len, err);
        if (rc == 0)
            return mm_fail(err, "%s: a run directory without a committed checkpoint yet "
                           "(no ckpt/latest)", path);
        return rc == 1 ? 0 : -1;
    }
    int64_t step;
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    if (parse_step_name(base, &step) || strstr(base, ".tmp"))
        return check_committed(path, err);  // says why this step directory is not loadable
    return mm_fail(err, "%s: not a checkpoint (no COMMITTED), a ckpt/ directory (no latest) or "
                   "a run directory (no ckpt/)", path);
}

// ---------------------------------------------------------------------------------------
// Loading.

static int read_meta(const char *dir, ckpt_meta *meta, char **config_yaml, int *rank_files,
                     mm_err *err) {
    if (check_committed(dir, err)) return -1;
    char path[PATH_LEN];
    if (path_join(path, sizeof(path), dir, "meta.h5"))
        return mm_fail(err, "checkpoint %s: path too long", dir);
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    int rc = -1;
    char *config = NULL;
    if (f < 0) {
        mm_fail(err, "%s: cannot open as HDF5 (missing, truncated or corrupt)", path);
        goto done;
    }
    int32_t world, tp, dp, nfiles;
    int64_t step, epoch;
    uint64_t offset, rng[4];
    if (check_format(f, path, err) ||
        read_attr(f, path, "step", H5T_INTEGER, H5T_NATIVE_INT64, 0, &step, err) ||
        read_attr(f, path, "world", H5T_INTEGER, H5T_NATIVE_INT32, 0, &world, err) ||
        read_attr(f, path, "tp", H5T_INTEGER, H5T_NATIVE_INT32, 0, &tp, err) ||
        read_attr(f, path, "dp", H5T_INTEGER, H5T_NATIVE_INT32, 0, &dp, err) ||
        read_attr(f, path, "rank_files", H5T_INTEGER, H5T_NATIVE_INT32, 0, &nfiles, err) ||
        read_attr(f, path, "rng", H5T_INTEGER, H5T_NATIVE_UINT64, 4, rng, err) ||
        read_attr(f, path, "loader_epoch", H5T_INTEGER, H5T_NATIVE_INT64, 0, &epoch, err) ||
        read_attr(f, path, "loader_offset", H5T_INTEGER, H5T_NATIVE_UINT64, 0, &offset, err) ||
        read_str_attr(f, path, "config", &config, err))
        goto done;
    // optional (absent in checkpoints written before it existed): "" = unknown
    char *data_id = NULL;
    if (H5Aexists(f, "data_id") > 0 && read_str_attr(f, path, "data_id", &data_id, err)) goto done;
    if (step < 0 || world < 1 || tp < 1 || dp < 1 || (int64_t)tp * dp != world || nfiles < 1 ||
        epoch < 0) {
        mm_fail(err,
                "%s: inconsistent values (step %" PRId64
                ", world %d = tp %d x dp %d, "
                "%d rank files, epoch %" PRId64 ")",
                path, step, world, tp, dp, nfiles, epoch);
        goto done;
    }
    if (meta) {
        memset(meta, 0, sizeof(*meta));
        meta->step = step;
        meta->world = world, meta->tp = tp, meta->dp = dp;
        meta->pos.epoch = epoch;
        meta->pos.offset = offset;
        memcpy(meta->rng.s, rng, sizeof(rng));
        if (data_id) snprintf(meta->data_id, sizeof(meta->data_id), "%s", data_id);
    }
    free(data_id);
    if (rank_files) *rank_files = nfiles;
    if (config_yaml) *config_yaml = config, config = NULL;
    rc = 0;
done:
    free(config);
    mm_h5_fclose(&f);
    mm_h5_quiet_end(&q);
    return rc;
}

int ckpt_load_meta(const char *dir, ckpt_meta *meta, char **config_yaml, mm_err *err) {
    return read_meta(dir, meta, config_yaml, NULL, err);
}

// One reading of a checkpoint's saved config for every command that needs it (resume,
// init_from, export, sample), so they agree on what parses and on the error they give.
int ckpt_read_config(const char *dir, ckpt_meta *meta, mm_config *cfg, char **config_yaml,
                     mm_err *err) {
    ckpt_meta m;
    char *yaml = NULL;
    if (ckpt_load_meta(dir, &m, &yaml, err) != 0) return -1;
    mm_err e;
    if (mm_config_load_string(cfg, yaml, dir, &e) != 0) {
        free(yaml);
        mm_fail(err, "%s: saved config does not parse: %s", dir, e.msg);
        return -2;
    }
    if (meta) *meta = m;
    if (config_yaml) *config_yaml = yaml;
    else free(yaml);
    return 0;
}

int ckpt_open_config(const char *path, const char *what, char *dir, size_t dir_len,
                     ckpt_meta *meta, mm_config *cfg, char **config_yaml, mm_err *err) {
    mm_err e;
    if (ckpt_resolve(path, dir, dir_len, &e) != 0) return mm_fail(err, "%s %s", what, e.msg);
    return ckpt_read_config(dir, meta, cfg, config_yaml, err);
}

// The rank files of a checkpoint, opened on first use (a same-layout load touches only its
// own), closed by close_rank_files.
typedef struct {
    char path[PATH_LEN];
    hid_t file;  // -1 until opened
} rank_file;

static int cmp_rank_file(const void *a, const void *b) {
    return strcmp(((const rank_file *)a)->path, ((const rank_file *)b)->path);
}

// Lists <dir>/rank_NNNNN.h5 (sorted). Returns the count, or -1 with err. Caller frees *out.
static int list_rank_files(const char *dir, rank_file **out, mm_err *err) {
    DIR *d = opendir(dir);
    if (!d) return mm_fail(err, "checkpoint %s: cannot list: %s", dir, strerror(errno));
    int n = 0, cap = 8;
    rank_file *files = mm_malloc(sizeof(rank_file) * (size_t)cap);
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *s = e->d_name;
        if (strncmp(s, "rank_", 5) != 0) continue;
        size_t digits = strspn(s + 5, "0123456789");
        if (digits == 0 || strcmp(s + 5 + digits, ".h5") != 0) continue;
        if (n == cap) {
            cap *= 2;
            rank_file *grown = realloc(files, sizeof(rank_file) * (size_t)cap);
            MM_CHECK(grown, "out of memory listing rank files");
            files = grown;
        }
        if (path_join(files[n].path, sizeof(files[n].path), dir, s)) continue;
        files[n].file = -1;
        n++;
    }
    closedir(d);
    qsort(files, (size_t)n, sizeof(rank_file), cmp_rank_file);
    *out = files;
    return n;
}

static void close_rank_files(rank_file *files, int n) {
    for (int i = 0; i < n; i++) mm_h5_fclose(&files[i].file);
    free(files);
}

static int open_rank_file(rank_file *rf, const char *tensor, mm_err *err) {
    if (rf->file >= 0) return 0;
    hid_t f = H5Fopen(rf->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return mm_fail(err,
                       "%s: cannot open as HDF5 (truncated or corrupt?) while loading "
                       "tensor '%s'",
                       rf->path, tensor);
    mm_err why;
    if (check_format(f, rf->path, &why)) {
        mm_h5_fclose(&f);
        return mm_fail(err, "%s (while loading tensor '%s')", why.msg, tensor);
    }
    rf->file = f;
    return 0;
}

// One stored slice as read from a dataset's shape and attributes, all checked.
typedef struct {
    int ndim;
    int64_t global[MAX_DIM], local[MAX_DIM], start;
    int split_dim;
    uint32_t crc;
} stored_slice;

static int read_slice_info(hid_t dset, const char *where, stored_slice *s, mm_err *err) {
    hid_t type = H5Dget_type(dset), space = H5Dget_space(dset);
    int rc = -1;
    if (type < 0 || space < 0) {
        mm_fail(err, "%s: unreadable dataset header", where);
        goto done;
    }
    if (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 4) {
        mm_fail(err, "%s: stored as another type than float32", where);
        goto done;
    }
    s->ndim = H5Sget_simple_extent_ndims(space);
    if (s->ndim < 1 || s->ndim > MAX_DIM) {
        mm_fail(err, "%s: %d dims, expected 1 to %d", where, s->ndim, MAX_DIM);
        goto done;
    }
    hsize_t dims[MAX_DIM];
    H5Sget_simple_extent_dims(space, dims, NULL);
    for (int d = 0; d < s->ndim; d++) s->local[d] = (int64_t)dims[d];
    int32_t split;
    if (read_attr(dset, where, "global_shape", H5T_INTEGER, H5T_NATIVE_INT64, s->ndim, s->global,
                  err) ||
        read_attr(dset, where, "split_dim", H5T_INTEGER, H5T_NATIVE_INT32, 0, &split, err) ||
        read_attr(dset, where, "start", H5T_INTEGER, H5T_NATIVE_INT64, 0, &s->start, err) ||
        read_attr(dset, where, "crc32", H5T_INTEGER, H5T_NATIVE_UINT32, 0, &s->crc, err))
        goto done;
    s->split_dim = split;
    char why[256];
    if (check_slice(s->ndim, s->global, s->split_dim, s->start, s->local, why, sizeof(why))) {
        mm_fail(err, "%s: inconsistent slice: %s", where, why);
        goto done;
    }
    rc = 0;
done:
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return rc;
}

// Copies the overlap of src (stored box sb) into dst (wanted box wb) and marks it covered.
// With dry_run, only counts elements of the overlap not yet covered; with src NULL, only
// marks (the values are already in place). Returns the number of newly covered elements.
static size_t copy_overlap(float *dst, uint8_t *mask, const box *wb, const float *src,
                           const box *sb, int dry_run) {
    int64_t lo[MAX_DIM], hi[MAX_DIM];
    for (int d = 0; d < MAX_DIM; d++) {
        lo[d] = wb->lo[d] > sb->lo[d] ? wb->lo[d] : sb->lo[d];
        int64_t wh = wb->lo[d] + wb->n[d], sh = sb->lo[d] + sb->n[d];
        hi[d] = wh < sh ? wh : sh;
        if (hi[d] <= lo[d]) return 0;
    }
    size_t fresh = 0;
    int64_t run = hi[3] - lo[3];
    for (int64_t i0 = lo[0]; i0 < hi[0]; i0++)
        for (int64_t i1 = lo[1]; i1 < hi[1]; i1++)
            for (int64_t i2 = lo[2]; i2 < hi[2]; i2++) {
                size_t w = (size_t)((((i0 - wb->lo[0]) * wb->n[1] + (i1 - wb->lo[1])) * wb->n[2] +
                                     (i2 - wb->lo[2])) *
                                        wb->n[3] +
                                    (lo[3] - wb->lo[3]));
                size_t s = (size_t)((((i0 - sb->lo[0]) * sb->n[1] + (i1 - sb->lo[1])) * sb->n[2] +
                                     (i2 - sb->lo[2])) *
                                        sb->n[3] +
                                    (lo[3] - sb->lo[3]));
                for (int64_t j = 0; j < run; j++) {
                    size_t e = w + (size_t)j;
                    uint8_t bit = (uint8_t)(1u << (e & 7));
                    if (!(mask[e >> 3] & bit)) {
                        fresh++;
                        if (!dry_run) mask[e >> 3] |= bit;
                    }
                }
                if (!dry_run && src) memcpy(dst + w, src + s, sizeof(float) * (size_t)run);
            }
    return fresh;
}

// Fills dst (the wanted slice of tensor t) from every rank file holding part of it.
static int load_tensor(const char *dir, rank_file *files, int n_files, int kind,
                       const model_tensor *t, float *dst, mm_err *err) {
    const char *group = kind_group[kind];
    box wb = make_box(t->ndim, t->local, t->split_dim, t->start);
    uint8_t *mask = mm_calloc((t->size + 7) / 8, 1);
    float *tmp = NULL;
    size_t covered = 0;
    int found = 0, rc = -1;
    char link[256], where[PATH_LEN + 200];
    snprintf(link, sizeof(link), "%s/%s", group, t->name);
    for (int f = 0; f < n_files && covered < t->size; f++) {
        if (open_rank_file(&files[f], t->name, err)) goto done;
        hid_t file = files[f].file;
        htri_t has = H5Lexists(file, group, H5P_DEFAULT);
        if (has > 0) has = H5Lexists(file, link, H5P_DEFAULT);
        if (has < 0) {  // HDF5 could not read the group's index: a checksum failed
            mm_fail(err, "%s: tensor '%s' (/%s): cannot look it up: group damaged (checksum "
                    "mismatch: file corrupt)", files[f].path, t->name, group);
            goto done;
        }
        if (has == 0) continue;
        found = 1;
        snprintf(where, sizeof(where), "%s: tensor '%s' (/%s)", files[f].path, t->name, group);
        hid_t dset = H5Dopen2(file, link, H5P_DEFAULT);
        if (dset < 0) {
            mm_fail(err, "%s: cannot open dataset", where);
            goto done;
        }
        stored_slice s;
        box sb;
        int bad = read_slice_info(dset, where, &s, err);
        if (!bad) {
            int same = s.ndim == t->ndim;
            for (int d = 0; same && d < t->ndim; d++) same = s.global[d] == t->shape[d];
            if (!same) {
                char a[128], b[128];
                fmt_shape(a, sizeof(a), s.ndim, s.global);
                fmt_shape(b, sizeof(b), t->ndim, t->shape);
                bad = mm_fail(err,
                              "%s: global shape %s in the checkpoint differs from the "
                              "model's %s",
                              where, a, b);
            }
        }
        if (!bad) sb = make_box(s.ndim, s.local, s.split_dim, s.start);
        if (!bad && copy_overlap(NULL, mask, &wb, NULL, &sb, 1) > 0) {
            size_t n = 1;
            for (int d = 0; d < s.ndim; d++) n *= (size_t)s.local[d];
            // The same slice as wanted reads straight into place; others go through tmp.
            int direct = covered == 0 && memcmp(&sb, &wb, sizeof(box)) == 0;
            float *into = direct ? dst : (tmp = realloc(tmp, n * sizeof(float)));
            MM_CHECK(into, "out of memory reading tensor '%s' (%zu floats)", t->name, n);
            if (H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, into) < 0)
                bad =
                    mm_fail(err, "%s: cannot read the values (file truncated or corrupt?)", where);
            else if (crc_floats(into, n) != s.crc)
                bad = mm_fail(err, "%s: checksum mismatch (file corrupt)", where);
            else if (direct)
                covered += copy_overlap(NULL, mask, &wb, NULL, &sb, 0);
            else
                covered += copy_overlap(dst, mask, &wb, into, &sb, 0);
        }
        H5Dclose(dset);
        if (bad) goto done;
    }
    if (!found) {
        mm_fail(err, "checkpoint %s: tensor '%s' not found (no /%s/%s in any rank file)", dir,
                t->name, group, t->name);
        goto done;
    }
    if (covered < t->size) {
        mm_fail(err,
                "checkpoint %s: tensor '%s' (/%s): the rank files hold only %zu of the "
                "%zu values this rank needs (a rank file is missing?)",
                dir, t->name, group, covered, t->size);
        goto done;
    }
    rc = 0;
done:
    free(tmp);
    free(mask);
    return rc;
}

// Collects (name, global shape) of every dataset of one group of one rank file.
typedef struct {
    const char *path, *group;
    ckpt_tensor_info *items;
    int n, cap;
    mm_err *err;
    int failed;
} list_ctx;

static herr_t list_one(hid_t grp, const char *name, const H5L_info_t *info, void *data) {
    (void)info;
    list_ctx *x = data;
    char where[PATH_LEN + 200];
    snprintf(where, sizeof(where), "%s: tensor '%.100s' (/%s)", x->path, name, x->group);
    if (strlen(name) >= sizeof(x->items[0].name)) {
        mm_fail(x->err, "%s: name longer than %zu bytes", where, sizeof(x->items[0].name) - 1);
        x->failed = 1;
        return -1;
    }
    hid_t dset = H5Dopen2(grp, name, H5P_DEFAULT);
    if (dset < 0) {
        mm_fail(x->err, "%s: cannot open dataset", where);
        x->failed = 1;
        return -1;
    }
    stored_slice s;
    int bad = read_slice_info(dset, where, &s, x->err);
    H5Dclose(dset);
    if (bad) {
        x->failed = 1;
        return -1;
    }
    for (int i = 0; i < x->n; i++) {
        ckpt_tensor_info *t = &x->items[i];
        if (strcmp(t->name, name) != 0) continue;
        int same = t->ndim == s.ndim;
        for (int d = 0; same && d < s.ndim; d++) same = t->shape[d] == s.global[d];
        if (!same) {
            char a[128], b[128];
            fmt_shape(a, sizeof(a), t->ndim, t->shape);
            fmt_shape(b, sizeof(b), s.ndim, s.global);
            mm_fail(x->err, "%s: global shape %s, another rank file says %s", where, b, a);
            x->failed = 1;
            return -1;
        }
        return 0;
    }
    if (x->n == x->cap) {
        x->cap = x->cap ? 2 * x->cap : 64;
        ckpt_tensor_info *grown = realloc(x->items, sizeof(*grown) * (size_t)x->cap);
        MM_CHECK(grown, "out of memory listing tensors");
        x->items = grown;
    }
    ckpt_tensor_info *t = &x->items[x->n++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ndim = s.ndim;
    for (int d = 0; d < s.ndim; d++) t->shape[d] = s.global[d];
    return 0;
}

static int cmp_info(const void *a, const void *b) {
    return strcmp(((const ckpt_tensor_info *)a)->name, ((const ckpt_tensor_info *)b)->name);
}

int ckpt_list_tensors(const char *dir, const char *group, ckpt_tensor_info **out, int *n,
                      mm_err *err) {
    *out = NULL;
    *n = 0;
    int rank_files = 0;
    if (read_meta(dir, NULL, NULL, &rank_files, err)) return -1;
    rank_file *files = NULL;
    int nf = list_rank_files(dir, &files, err);
    if (nf < 0) return -1;
    list_ctx x = {.group = group, .err = err};
    int rc = -1;
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    if (nf < rank_files) {
        mm_fail(err, "checkpoint %s: %d rank files were written, %d are present", dir, rank_files,
                nf);
        goto done;
    }
    for (int f = 0; f < nf; f++) {
        if (open_rank_file(&files[f], "(listing)", err)) goto done;
        if (H5Lexists(files[f].file, group, H5P_DEFAULT) <= 0) continue;
        hid_t g = H5Gopen2(files[f].file, group, H5P_DEFAULT);
        if (g < 0) {
            mm_fail(err, "%s: cannot open group /%s", files[f].path, group);
            goto done;
        }
        x.path = files[f].path;
        herr_t it = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, NULL, list_one, &x);
        H5Gclose(g);
        if (x.failed) goto done;
        if (it < 0) {
            mm_fail(err, "%s: cannot list group /%s", files[f].path, group);
            goto done;
        }
    }
    if (x.n > 1) qsort(x.items, (size_t)x.n, sizeof(*x.items), cmp_info);
    *out = x.items;
    *n = x.n;
    x.items = NULL;
    rc = 0;
done:
    free(x.items);
    close_rank_files(files, nf);
    mm_h5_quiet_end(&q);
    return rc;
}

int ckpt_load_state(const char *dir, const ckpt_state *st, mm_err *err) {
    int rank_files = 0;
    if (read_meta(dir, NULL, NULL, &rank_files, err) || check_table(st, err)) return -1;
    rank_file *files = NULL;
    int n = list_rank_files(dir, &files, err);
    if (n < 0) return -1;
    int rc = -1;
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    if (n < rank_files) {
        mm_fail(err, "checkpoint %s: %d rank files were written, %d are present", dir, rank_files,
                n);
        goto done;
    }
    float *bufs[N_KINDS] = {st->params, st->m, st->v, st->ema};
    for (int k = 0; k < N_KINDS; k++) {
        if (!bufs[k]) continue;
        for (int i = 0; i < st->n_tensors; i++) {
            const model_tensor *t = &st->tensors[i];
            if (load_tensor(dir, files, n, k, t, bufs[k] + t->offset, err)) goto done;
        }
    }
    rc = 0;
done:
    close_rank_files(files, n);
    mm_h5_quiet_end(&q);
    return rc;
}
