// shard_read.c: reads the shards of format v1 (data/FORMAT.md) back, so that a bad file is a
// one-line error naming file, dataset and sample rather than a crash or, worse, a silently
// different training run; and decodes samples into the model-ready batches the loader hands
// to training.
//
// Opening validates every shard completely (everything except the pixel and PCM payload,
// which has no invariant to check) and keeps the small columns in memory; a micro-batch then
// costs one hyperslab read per sample for image, audio and text.
//
// HDF5 prints its own error stack to stderr; every entry point here runs its HDF5 calls in a
// quiet scope (core/h5err.h) and turns failures into mm_err lines quoting HDF5's reason.
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../core/h5err.h"
#include "data.h"
#include "data_internal.h"

typedef struct {
    char path[DATA_PATH_CAP];
    uint64_t n, first;
    hid_t file, d_image, d_audio, d_text;
    uint64_t *sample_id;  // (n)
    uint8_t *has_image;   // (n)
    uint8_t *has_audio;   // (n)
    uint32_t *audio_n;    // (n)
    uint64_t *offsets;    // (n + 1)
} shard;

struct data_dataset {
    char *dir;
    int schema_only;  // opened with DATA_OPEN_SCHEMA: no shard is open
    data_schema schema;
    int n_shards;
    shard *shards;  // (n_shards)
};

static int attr_open(hid_t file, const char *path, const char *name, hid_t *a, hid_t *t,
                     mm_err *err) {
    char why[MM_H5_WHY_LEN];
    *a = *t = H5I_INVALID_HID;
    htri_t ex = H5Aexists(file, name);
    if (ex < 0) return mm_fail(err, "%s: attribute '%s': %s", path, name, mm_h5_why(why));
    if (ex == 0) return mm_fail(err, "%s: attribute '%s' is missing", path, name);
    *a = H5Aopen(file, name, H5P_DEFAULT);
    if (*a >= 0) *t = H5Aget_type(*a);
    if (*a < 0 || *t < 0) {
        mm_h5_close(a, H5Aclose);
        return mm_fail(err, "%s: attribute '%s': cannot open: %s", path, name, mm_h5_why(why));
    }
    hid_t sp = H5Aget_space(*a);
    hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    if (sp >= 0) H5Sclose(sp);
    if (np != 1) {
        mm_h5_close(t, H5Tclose);
        mm_h5_close(a, H5Aclose);
        return mm_fail(err, "%s: attribute '%s' must hold exactly one value", path, name);
    }
    return 0;
}

// An integer attribute (any integer type) whose value must lie in [lo, hi].
static int attr_int(hid_t file, const char *path, const char *name, int64_t lo, int64_t hi,
                    int64_t *out, mm_err *err) {
    char why[MM_H5_WHY_LEN];
    hid_t a, t;
    if (attr_open(file, path, name, &a, &t, err)) return -1;
    int rc = -1;
    if (H5Tget_class(t) != H5T_INTEGER) {
        mm_fail(err, "%s: attribute '%s' must be an integer", path, name);
    } else if (H5Aread(a, H5T_NATIVE_INT64, out) < 0) {
        mm_fail(err, "%s: attribute '%s': cannot read: %s", path, name, mm_h5_why(why));
    } else if (*out < lo || *out > hi) {
        mm_fail(err, "%s: attribute '%s' is %lld, out of range %lld..%lld", path, name,
                (long long)*out, (long long)lo, (long long)hi);
    } else {
        rc = 0;
    }
    H5Tclose(t);
    H5Aclose(a);
    return rc;
}

// A fixed-length string attribute, copied NUL-terminated into out (cap bytes).
static int attr_str(hid_t file, const char *path, const char *name, char *out, size_t cap,
                    mm_err *err) {
    char why[MM_H5_WHY_LEN];
    hid_t a, t;
    if (attr_open(file, path, name, &a, &t, err)) return -1;
    int rc = -1;
    size_t sz = H5Tget_size(t);
    if (H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) != 0) {
        mm_fail(err, "%s: attribute '%s' must be a fixed-length string", path, name);
    } else if (sz == 0 || sz >= cap) {
        mm_fail(err, "%s: attribute '%s' is a string of %zu bytes (at most %zu)", path, name, sz,
                cap - 1);
    } else {
        char *buf = mm_calloc(sz + 1, 1);
        if (H5Aread(a, t, buf) < 0) {
            mm_fail(err, "%s: attribute '%s': cannot read: %s", path, name, mm_h5_why(why));
        } else {
            memcpy(out, buf, sz + 1);
            rc = 0;
        }
        free(buf);
    }
    H5Tclose(t);
    H5Aclose(a);
    return rc;
}

#define ANY_DIM ((hsize_t)-1)

// What HDF5 says about a dataset's storage, checked before any read trusts it (a damaged
// file read with verify off): a layout the writer uses, no filters (the writer sets none),
// chunks of sane size and storage that lies inside the file.
static int check_storage(hid_t file, hid_t d, const char *path, const char *name, int rank,
                         size_t elem, mm_err *err) {
    hid_t dcpl = H5Dget_create_plist(d);
    if (dcpl < 0)
        return mm_fail(err, "%s: dataset '%s': cannot read its storage properties", path, name);
    int rc = 0;
    H5D_layout_t lay = H5Pget_layout(dcpl);
    int nf = H5Pget_nfilters(dcpl);
    if (lay != H5D_COMPACT && lay != H5D_CONTIGUOUS && lay != H5D_CHUNKED) {
        rc = mm_fail(err, "%s: dataset '%s' has an unknown storage layout (%d)", path, name,
                     (int)lay);
    } else if (nf != 0) {
        rc = mm_fail(err, "%s: dataset '%s' has %d filter(s); format v1 writes none", path, name,
                     nf);
    } else if (lay == H5D_CHUNKED) {
        hsize_t ch[8] = {0};
        int cr = H5Pget_chunk(dcpl, 8, ch);
        double bytes = (double)elem;
        for (int i = 0; i < cr && i < 8; i++) bytes *= (double)ch[i];
        int bad = cr != rank;
        for (int i = 0; i < cr && i < 8; i++) bad |= ch[i] < 1;
        if (bad || bytes > (double)(1u << 30))
            rc = mm_fail(err, "%s: dataset '%s' has a bad chunk shape (rank %d, %.0f bytes)", path,
                         name, cr, bytes);
    }
    H5Pclose(dcpl);
    if (rc) return rc;
    hsize_t fsize = 0;
    if (H5Fget_filesize(file, &fsize) < 0)
        return mm_fail(err, "%s: cannot read the file's size", path);
    hsize_t st = H5Dget_storage_size(d);
    if (st > fsize)
        return mm_fail(err, "%s: dataset '%s' claims %llu bytes of storage in a file of %llu", path,
                       name, (unsigned long long)st, (unsigned long long)fsize);
    if (lay == H5D_CONTIGUOUS) {
        haddr_t off = H5Dget_offset(d);
        if (off != HADDR_UNDEF && (off > fsize || st > fsize - off))
            return mm_fail(err, "%s: dataset '%s' lies beyond the end of the file (offset %llu)",
                           path, name, (unsigned long long)off);
    }
    return 0;
}

// Opens dataset `name` and checks that it is an integer dataset of `size` bytes and the
// given signedness, with rank `rank` and shape `dims` (ANY_DIM matches anything; the actual
// shape goes to got when not NULL). dims_doc says what the dimensions mean, for errors.
static hid_t open_ds(hid_t file, const char *path, const char *name, size_t size, int is_signed,
                     int rank, const hsize_t *dims, const char *dims_doc, hsize_t *got,
                     mm_err *err) {
    char why[MM_H5_WHY_LEN];
    htri_t ex = H5Lexists(file, name, H5P_DEFAULT);
    if (ex <= 0) {
        mm_fail(err, "%s: dataset '%s' is missing", path, name);
        return H5I_INVALID_HID;
    }
    hid_t d = H5Dopen2(file, name, H5P_DEFAULT);
    if (d < 0) {
        mm_fail(err, "%s: dataset '%s': cannot open: %s", path, name, mm_h5_why(why));
        return H5I_INVALID_HID;
    }
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    int ok = 0;
    if (t < 0 || sp < 0) {
        mm_fail(err, "%s: dataset '%s': cannot read its type or shape: %s", path, name,
                mm_h5_why(why));
    } else if (H5Tget_class(t) != H5T_INTEGER || H5Tget_size(t) != size ||
               (H5Tget_sign(t) == H5T_SGN_2) != (is_signed != 0)) {
        mm_fail(err, "%s: dataset '%s' must hold %s%zu integers", path, name,
                is_signed ? "int" : "uint", 8 * size);
    } else if (H5Sget_simple_extent_type(sp) != H5S_SIMPLE ||
               H5Sget_simple_extent_ndims(sp) != rank) {
        mm_fail(err, "%s: dataset '%s' must have %d dimension%s %s", path, name, rank,
                rank > 1 ? "s" : "", dims_doc);
    } else {
        hsize_t cur[4];
        H5Sget_simple_extent_dims(sp, cur, NULL);
        ok = 1;
        for (int i = 0; i < rank; i++)
            if (dims[i] != ANY_DIM && dims[i] != cur[i]) ok = 0;
        if (!ok) {
            char have[128] = "", want[128] = "";
            for (int i = 0; i < rank; i++) {
                size_t lh = strlen(have), lw = strlen(want);
                snprintf(have + lh, sizeof(have) - lh, "%s%llu", i ? ", " : "",
                         (unsigned long long)cur[i]);
                if (dims[i] == ANY_DIM)
                    snprintf(want + lw, sizeof(want) - lw, "%s*", i ? ", " : "");
                else
                    snprintf(want + lw, sizeof(want) - lw, "%s%llu", i ? ", " : "",
                             (unsigned long long)dims[i]);
            }
            mm_fail(err, "%s: dataset '%s' has shape [%s], expected [%s] %s", path, name, have,
                    want, dims_doc);
        } else if (check_storage(file, d, path, name, rank, size, err) != 0) {
            ok = 0;
        } else if (got) {
            memcpy(got, cur, sizeof(hsize_t) * (size_t)rank);
        }
    }
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    if (!ok) {
        H5Dclose(d);
        return H5I_INVALID_HID;
    }
    return d;
}

// Opens a small 1-D column, checks it and reads all of it into buf (n elements).
static int read_column(hid_t file, const char *path, const char *name, size_t size, hid_t memtype,
                       hsize_t n, void *buf, mm_err *err) {
    char why[MM_H5_WHY_LEN];
    hid_t d = open_ds(file, path, name, size, 0, 1, &n, "(n_samples)", NULL, err);
    if (d < 0) return -1;
    herr_t rc = H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    H5Dclose(d);
    if (rc < 0)
        return mm_fail(err, "%s: dataset '%s': read failed: %s", path, name, mm_h5_why(why));
    return 0;
}

static int check_flags(const shard *sh, const char *name, const uint8_t *v, mm_err *err) {
    for (uint64_t i = 0; i < sh->n; i++)
        if (v[i] > 1)
            return mm_fail(err, "%s: dataset '%s': sample %llu: value %u is not 0 or 1", sh->path,
                           name, (unsigned long long)i, v[i]);
    return 0;
}

// Before any byte is read: the shard exists, is a regular file (a FIFO would block) and
// this process may read it, so these are said as such rather than as HDF5 trouble.
static int shard_access(const char *path, mm_err *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == EACCES || errno == EPERM)
            return mm_fail(err, "%s: permission denied: this user may not read the shard", path);
        return mm_fail(err, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat st;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    close(fd);
    if (!ok) return mm_fail(err, "%s: not a regular file", path);
    return 0;
}

// The whole file's crc32 against index.json's. 1 = it differs (err says so), 0 = it
// matches, -1 = it could not be computed (err says why).
static int shard_crc_differs(const char *path, const data_shard_info *info, mm_err *err) {
    uint32_t crc;
    if (data_file_crc32(path, &crc, err)) return -1;
    if (crc == info->crc32) return 0;
    mm_fail(err,
            "%s: checksum mismatch: the file's crc32 is %lu, index.json says %lu (file "
            "corrupted or replaced)",
            path, (unsigned long)crc, (unsigned long)info->crc32);
    return 1;
}

static int shard_parse(shard *sh, const data_shard_info *info, const data_schema *s, mm_err *err);

// Everything about one shard that can be wrong, checked before a single batch is read.
// With verify, the checksum comes before HDF5 parses anything; without, a shard HDF5 (or
// a check here) refuses is checksummed then, and a mismatch is what the error says.
static int shard_open(shard *sh, const data_shard_info *info, const data_schema *s, int verify,
                      mm_err *err) {
    if (shard_access(sh->path, err)) return -1;
    if (verify) {
        if (shard_crc_differs(sh->path, info, err) != 0) return -1;
        return shard_parse(sh, info, s, err);
    }
    if (shard_parse(sh, info, s, err) == 0) return 0;
    mm_err sum;
    if (shard_crc_differs(sh->path, info, &sum) == 1) {  // the cause first, then the symptom
        size_t lp = strlen(sh->path);
        const char *what = err->msg;
        if (strncmp(what, sh->path, lp) == 0 && strncmp(what + lp, ": ", 2) == 0) what += lp + 2;
        char symptom[MM_ERR_LEN];
        snprintf(symptom, sizeof(symptom), "%s", what);
        mm_fail(err, "%s; reading it anyway gave: %.400s", sum.msg, symptom);
    }
    return -1;
}

static int shard_parse(shard *sh, const data_shard_info *info, const data_schema *s, mm_err *err) {
    char why[MM_H5_WHY_LEN];
    sh->file = H5Fopen(sh->path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (sh->file < 0)
        return mm_fail(err, "%s: not a readable HDF5 file (truncated or corrupt?): %s", sh->path,
                       mm_h5_why(why));
    hid_t f = sh->file;
    const char *p = sh->path;
    char fmt[64], tok[32];
    int64_t version, n, h, w, c, rate, alen, tmax;
    if (attr_str(f, p, "format", fmt, sizeof(fmt), err)) return -1;
    if (strcmp(fmt, DATA_SHARD_FORMAT) != 0)
        return mm_fail(err, "%s: attribute 'format' is '%s', expected '%s'", p, fmt,
                       DATA_SHARD_FORMAT);
    if (attr_int(f, p, "version", INT32_MIN, INT32_MAX, &version, err)) return -1;
    if (version != DATA_SHARD_VERSION)
        return mm_fail(err, "%s: attribute 'version' is %lld, this reader knows version %d", p,
                       (long long)version, DATA_SHARD_VERSION);
    if (attr_int(f, p, "n_samples", 0, INT64_MAX, &n, err) ||
        attr_int(f, p, "img_h", 0, INT32_MAX, &h, err) ||
        attr_int(f, p, "img_w", 0, INT32_MAX, &w, err) ||
        attr_int(f, p, "img_c", 0, INT32_MAX, &c, err) ||
        attr_int(f, p, "audio_rate", 0, INT32_MAX, &rate, err) ||
        attr_int(f, p, "audio_len", 0, INT32_MAX, &alen, err) ||
        attr_int(f, p, "text_max", 0, INT32_MAX, &tmax, err) ||
        attr_str(f, p, "tokenizer", tok, sizeof(tok), err))
        return -1;
    if ((uint64_t)n != info->n)
        return mm_fail(err, "%s: attribute 'n_samples' is %lld, index.json says %llu", p,
                       (long long)n, (unsigned long long)info->n);
    if (h != s->img_h || w != s->img_w || c != s->img_c)
        return mm_fail(
            err, "%s: image shape attributes %lldx%lldx%lld differ from index.json's %dx%dx%d", p,
            (long long)h, (long long)w, (long long)c, s->img_h, s->img_w, s->img_c);
    if (rate != s->audio_rate || alen != s->audio_len)
        return mm_fail(err,
                       "%s: audio attributes (rate %lld, len %lld) differ from index.json's "
                       "(rate %d, len %d)",
                       p, (long long)rate, (long long)alen, s->audio_rate, s->audio_len);
    if (tmax != s->text_max)
        return mm_fail(err, "%s: attribute 'text_max' is %lld, index.json says %d", p,
                       (long long)tmax, s->text_max);
    if (strcmp(tok, s->tokenizer) != 0)
        return mm_fail(err, "%s: attribute 'tokenizer' is '%s', index.json says '%s'", p, tok,
                       s->tokenizer);

    sh->n = info->n;
    sh->first = info->first;
    hsize_t N = sh->n;
    sh->sample_id = mm_malloc(sizeof(uint64_t) * N);
    sh->has_image = mm_malloc(N);
    sh->has_audio = mm_malloc(N);
    sh->audio_n = mm_malloc(sizeof(uint32_t) * N);
    sh->offsets = mm_malloc(sizeof(uint64_t) * (N + 1));
    if (read_column(f, p, "sample_id", 8, H5T_NATIVE_UINT64, N, sh->sample_id, err) ||
        read_column(f, p, "has_image", 1, H5T_NATIVE_UINT8, N, sh->has_image, err) ||
        read_column(f, p, "has_audio", 1, H5T_NATIVE_UINT8, N, sh->has_audio, err) ||
        read_column(f, p, "audio_n", 4, H5T_NATIVE_UINT32, N, sh->audio_n, err) ||
        check_flags(sh, "has_image", sh->has_image, err) ||
        check_flags(sh, "has_audio", sh->has_audio, err))
        return -1;
    for (uint64_t i = 0; i < N; i++) {
        if (sh->audio_n[i] > (uint32_t)s->audio_len)
            return mm_fail(err, "%s: dataset 'audio_n': sample %llu: %u exceeds audio_len %d", p,
                           (unsigned long long)i, sh->audio_n[i], s->audio_len);
        if (!sh->has_audio[i] && sh->audio_n[i] != 0)
            return mm_fail(err, "%s: dataset 'audio_n': sample %llu: %u but has_audio is 0", p,
                           (unsigned long long)i, sh->audio_n[i]);
    }

    hsize_t img_dims[4] = {N, (hsize_t)s->img_h, (hsize_t)s->img_w, (hsize_t)s->img_c};
    sh->d_image =
        open_ds(f, p, "image", 1, 0, 4, img_dims, "(n_samples, img_h, img_w, img_c)", NULL, err);
    if (sh->d_image < 0) return -1;
    hsize_t aud_dims[2] = {N, (hsize_t)s->audio_len};
    sh->d_audio = open_ds(f, p, "audio", 2, 1, 2, aud_dims, "(n_samples, audio_len)", NULL, err);
    if (sh->d_audio < 0) return -1;

    // Offsets first, so that a bad one is reported as such rather than as a short read.
    hsize_t n1 = N + 1, any = ANY_DIM, text_n = 0;
    hid_t d_off = open_ds(f, p, "text_offsets", 8, 0, 1, &n1, "(n_samples + 1)", NULL, err);
    if (d_off < 0) return -1;
    herr_t rrc = H5Dread(d_off, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, sh->offsets);
    H5Dclose(d_off);
    if (rrc < 0)
        return mm_fail(err, "%s: dataset 'text_offsets': read failed: %s", p, mm_h5_why(why));
    sh->d_text = open_ds(f, p, "text", 1, 0, 1, &any, "(total caption bytes)", &text_n, err);
    if (sh->d_text < 0) return -1;
    const uint64_t *off = sh->offsets;
    if (off[0] != 0)
        return mm_fail(err,
                       "%s: dataset 'text_offsets': sample 0: first offset is %llu, expected 0", p,
                       (unsigned long long)off[0]);
    for (uint64_t i = 0; i < N; i++) {
        if (off[i + 1] > text_n)
            return mm_fail(err,
                           "%s: dataset 'text_offsets': sample %llu: offset %llu is beyond the "
                           "text size %llu",
                           p, (unsigned long long)i, (unsigned long long)off[i + 1],
                           (unsigned long long)text_n);
        if (off[i + 1] < off[i])
            return mm_fail(err,
                           "%s: dataset 'text_offsets': sample %llu: offsets decrease "
                           "(%llu after %llu)",
                           p, (unsigned long long)i, (unsigned long long)off[i + 1],
                           (unsigned long long)off[i]);
        if (off[i + 1] - off[i] > (uint64_t)s->text_max)
            return mm_fail(err,
                           "%s: dataset 'text_offsets': sample %llu: caption of %llu bytes "
                           "exceeds text_max %d",
                           p, (unsigned long long)i, (unsigned long long)(off[i + 1] - off[i]),
                           s->text_max);
    }
    if (off[N] != text_n)
        return mm_fail(err,
                       "%s: dataset 'text_offsets': the last offset %llu is not the text size %llu",
                       p, (unsigned long long)off[N], (unsigned long long)text_n);
    // The captions are at most n * text_max bytes (checked above): read and check them all.
    if (text_n > 0) {
        uint8_t *text = mm_malloc(text_n);
        if (H5Dread(sh->d_text, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, text) < 0) {
            free(text);
            return mm_fail(err, "%s: dataset 'text': read failed: %s", p, mm_h5_why(why));
        }
        for (uint64_t i = 0; i < N; i++) {
            long bad = data_utf8_bad_at(text + off[i], off[i + 1] - off[i]);
            if (bad >= 0) {
                free(text);
                return mm_fail(err,
                               "%s: dataset 'text': sample %llu: caption is not valid UTF-8 "
                               "(byte %ld)",
                               p, (unsigned long long)i, bad);
            }
        }
        free(text);
    }
    return 0;
}

static void shard_close(shard *sh) {
    mm_h5_close(&sh->d_image, H5Dclose);
    mm_h5_close(&sh->d_audio, H5Dclose);
    mm_h5_close(&sh->d_text, H5Dclose);
    mm_h5_close(&sh->file, H5Fclose);
    free(sh->sample_id);
    free(sh->has_image);
    free(sh->has_audio);
    free(sh->audio_n);
    free(sh->offsets);
}

typedef struct {
    uint64_t id, index;
} id_at;

static int cmp_id_at(const void *a, const void *b) {
    const id_at *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static const shard *find_shard(const data_dataset *ds, uint64_t index) {
    int lo = 0, hi = ds->n_shards - 1;
    while (lo < hi) {  // last shard with first <= index
        int mid = (lo + hi + 1) / 2;
        if (ds->shards[mid].first <= index)
            lo = mid;
        else
            hi = mid - 1;
    }
    return &ds->shards[lo];
}

// Sample ids name samples in logs, evals and tests, so two samples may not share one.
static int check_unique_ids(const data_dataset *ds, mm_err *err) {
    uint64_t n = ds->schema.n_samples;
    id_at *v = mm_malloc(sizeof(id_at) * n);
    for (int s = 0; s < ds->n_shards; s++)
        for (uint64_t i = 0; i < ds->shards[s].n; i++)
            v[ds->shards[s].first + i] =
                (id_at){ds->shards[s].sample_id[i], ds->shards[s].first + i};
    qsort(v, n, sizeof(id_at), cmp_id_at);
    int rc = 0;
    for (uint64_t i = 1; i < n && rc == 0; i++) {
        if (v[i].id != v[i - 1].id) continue;
        const shard *a = find_shard(ds, v[i - 1].index), *b = find_shard(ds, v[i].index);
        rc = mm_fail(err, "%s: dataset 'sample_id': sample %llu: id %llu repeats sample %llu of %s",
                     b->path, (unsigned long long)(v[i].index - b->first),
                     (unsigned long long)v[i].id, (unsigned long long)(v[i - 1].index - a->first),
                     a->path);
    }
    free(v);
    return rc;
}

// Reads index.json, opens and validates every shard (and their checksums when verify), and
// keeps them open. The caller owns *out (data_dataset_close). On -1 nothing is left open.
int data_dataset_open(data_dataset **out, const char *dir, int mode, mm_err *err) {
    *out = NULL;
    MM_CHECK(mode == DATA_OPEN_NO_VERIFY || mode == DATA_OPEN_VERIFY || mode == DATA_OPEN_SCHEMA,
             "data_dataset_open: unknown mode %d", mode);
    data_index ix;
    if (data_index_read(dir, &ix, err)) return -1;
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    data_dataset *ds = mm_calloc(1, sizeof(*ds));
    ds->dir = strdup(dir);
    MM_CHECK(ds->dir, "out of memory");
    ds->schema = ix.schema;
    ds->shards = mm_calloc((size_t)ix.n_shards, sizeof(shard));
    for (int i = 0; i < ix.n_shards; i++)
        ds->shards[i].file = ds->shards[i].d_image = ds->shards[i].d_audio = ds->shards[i].d_text =
            H5I_INVALID_HID;
    ds->n_shards = ix.n_shards;
    int rc = -1;
    ds->schema_only = mode == DATA_OPEN_SCHEMA;
    for (int i = 0; i < ix.n_shards; i++) {
        if (data_path_join(ds->shards[i].path, dir, ix.shards[i].file, err)) goto done;
        if (ds->schema_only) continue;
        if (shard_open(&ds->shards[i], &ix.shards[i], &ds->schema, mode == DATA_OPEN_VERIFY, err))
            goto done;
    }
    rc = ds->schema_only ? 0 : check_unique_ids(ds, err);
done:
    mm_h5_quiet_end(&q);
    data_index_free(&ix);
    if (rc) {
        data_dataset_close(ds);
        return -1;
    }
    *out = ds;
    return 0;
}

void data_dataset_close(data_dataset *ds) {
    if (!ds) return;
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    for (int i = 0; i < ds->n_shards; i++) shard_close(&ds->shards[i]);
    mm_h5_quiet_end(&q);
    free(ds->shards);
    free(ds->dir);
    free(ds);
}

const data_schema *data_dataset_schema(const data_dataset *ds) {
    return &ds->schema;
}

// Reads rows [start, start + count) of a chunked dataset (rank 1, 2 or 4) into buf.
static herr_t read_rows(hid_t d, hid_t memtype, int rank, const hsize_t *row, hsize_t start,
                        hsize_t count, void *buf) {
    hsize_t st[4] = {start}, cnt[4] = {count};
    for (int i = 1; i < rank; i++) st[i] = 0, cnt[i] = row[i - 1];
    hid_t fs = H5Dget_space(d);
    if (fs < 0) return -1;
    hid_t ms = H5Screate_simple(rank, cnt, NULL);
    herr_t rc = -1;
    if (ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, st, NULL, cnt, NULL) >= 0)
        rc = H5Dread(d, memtype, ms, fs, H5P_DEFAULT, buf);
    if (ms >= 0) H5Sclose(ms);
    H5Sclose(fs);
    return rc;
}

// Decodes samples idx[0..n) into b (b->B = n). A position out of range or a failed read is
// -1 with err naming the shard, dataset and sample; b's contents are then unspecified.
// Safe to call from any thread (HDF5's thread-safe build serializes the reads), but f
// belongs to the calling thread.
int data_dataset_read(data_dataset *ds, const uint64_t *idx, int n, data_featurizer *f,
                      data_batch *b, mm_err *err) {
    const data_schema *s = &ds->schema;
    MM_CHECK(n >= 0 && n <= b->cap, "data_dataset_read: %d samples into a batch of %d", n, b->cap);
    MM_CHECK(b->img_h == s->img_h && b->img_w == s->img_w && b->img_c == s->img_c &&
                 b->text_T == s->text_max + 1,
             "data_dataset_read: batch was allocated for another schema");
    MM_CHECK(f, "data_dataset_read: a featurizer is required");
    int fF, fM;
    data_featurizer_dims(f, &fF, &fM);
    MM_CHECK(fF == b->audio_F && fM == b->n_mels,
             "data_dataset_read: featurizer gives (%d, %d) features, batch holds (%d, %d)", fF, fM,
             b->audio_F, b->n_mels);
    if (ds->schema_only)
        return mm_fail(err, "%s: dataset opened for its schema only; cannot read samples", ds->dir);
    char why[MM_H5_WHY_LEN];
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    size_t npix = data_img_bytes(s), nfeat = (size_t)b->audio_F * b->n_mels;
    uint8_t *pix = mm_malloc(npix);
    int16_t *pcm = mm_malloc(sizeof(int16_t) * (size_t)s->audio_len);
    uint8_t *cap = mm_malloc((size_t)s->text_max + 1);
    hsize_t img_row[3] = {(hsize_t)s->img_h, (hsize_t)s->img_w, (hsize_t)s->img_c};
    hsize_t aud_row[1] = {(hsize_t)s->audio_len};
    int rc = -1;
    b->B = n;
    for (int i = 0; i < n; i++) {
        if (idx[i] >= s->n_samples) {
            mm_fail(err, "%s: sample position %llu is out of range (%llu samples)", ds->dir,
                    (unsigned long long)idx[i], (unsigned long long)s->n_samples);
            goto done;
        }
        const shard *sh = find_shard(ds, idx[i]);
        uint64_t j = idx[i] - sh->first;
        unsigned long long jj = (unsigned long long)j;
        b->sample_id[i] = sh->sample_id[j];
        b->index[i] = idx[i];
        b->has_image[i] = sh->has_image[j];
        b->has_audio[i] = sh->has_audio[j];

        float *img = b->image + (size_t)i * npix;  // (H, W, C)
        if (sh->has_image[j]) {
            if (read_rows(sh->d_image, H5T_NATIVE_UINT8, 4, img_row, j, 1, pix) < 0) {
                mm_fail(err, "%s: dataset 'image': sample %llu: read failed: %s", sh->path, jj,
                        mm_h5_why(why));
                goto done;
            }
            for (size_t k = 0; k < npix; k++) img[k] = (float)pix[k] / 127.5f - 1.0f;
        } else {
            memset(img, 0, sizeof(float) * npix);
        }

        float *feat = b->audio + (size_t)i * nfeat;  // (F, n_mels)
        if (sh->has_audio[j]) {
            if (read_rows(sh->d_audio, H5T_NATIVE_INT16, 2, aud_row, j, 1, pcm) < 0) {
                mm_fail(err, "%s: dataset 'audio': sample %llu: read failed: %s", sh->path, jj,
                        mm_h5_why(why));
                goto done;
            }
            data_featurize_audio(f, pcm, (int)sh->audio_n[j], feat);
        } else {
            memset(feat, 0, sizeof(float) * nfeat);
        }

        uint64_t t0 = sh->offsets[j], len = sh->offsets[j + 1] - t0;
        if (len > 0 && read_rows(sh->d_text, H5T_NATIVE_UINT8, 1, NULL, t0, len, cap) < 0) {
            mm_fail(err, "%s: dataset 'text': sample %llu: read failed: %s", sh->path, jj,
                    mm_h5_why(why));
            goto done;
        }
        // Checked at open; checked again because the file may have changed since.
        long bad = data_utf8_bad_at(cap, len);
        if (bad >= 0) {
            mm_fail(err, "%s: dataset 'text': sample %llu: caption is not valid UTF-8 (byte %ld)",
                    sh->path, jj, bad);
            goto done;
        }
        int T = b->text_T;
        char *txt = b->text + (size_t)i * T;  // text_max + 1 == T bytes per sample
        data_tokens_encode((const char *)cap, (int)len, T, b->tokens + (size_t)i * T,
                           b->targets + (size_t)i * T);
        memcpy(txt, cap, len);
        txt[len] = '\0';
    }
    rc = 0;
done:
    mm_h5_quiet_end(&q);
    free(pix);
    free(pcm);
    free(cap);
    return rc;
}

// ---------------------------------------------------------------------------------------
// Batches.
void data_batch_alloc(data_batch *b, int cap, const data_schema *s, const data_audio_cfg *a) {
    MM_CHECK(cap >= 1, "data_batch_alloc: capacity %d", cap);
    memset(b, 0, sizeof(*b));
    b->cap = cap;
    b->text_T = s->text_max + 1;
    b->audio_F = data_audio_frames(s, a);
    b->n_mels = a->n_mels;
    b->img_h = s->img_h;
    b->img_w = s->img_w;
    b->img_c = s->img_c;
    size_t B = (size_t)cap, T = (size_t)b->text_T;
    b->sample_id = mm_alloc_aligned(sizeof(uint64_t) * B);
    b->index = mm_alloc_aligned(sizeof(uint64_t) * B);
    b->has_image = mm_alloc_aligned(B);
    b->has_audio = mm_alloc_aligned(B);
    b->image = mm_alloc_aligned(sizeof(float) * B * data_img_bytes(s));
    b->audio = mm_alloc_aligned(sizeof(float) * B * (size_t)b->audio_F * (size_t)b->n_mels);
    b->tokens = mm_alloc_aligned(sizeof(int32_t) * B * T);
    b->targets = mm_alloc_aligned(sizeof(int32_t) * B * T);
    b->text = mm_alloc_aligned(B * T);
}

void data_batch_free(data_batch *b) {
    free(b->sample_id);
    free(b->index);
    free(b->has_image);
    free(b->has_audio);
    free(b->image);
    free(b->audio);
    free(b->tokens);
    free(b->targets);
    free(b->text);
    memset(b, 0, sizeof(*b));
}

// ---------------------------------------------------------------------------------------
// Raw samples (mmdata inspect): the stored bytes, not model-ready features. Same checks and
// one-line errors as data_dataset_read.
int data_dataset_read_raw(data_dataset *ds, uint64_t index, uint8_t *image, int16_t *audio,
                          char *text, data_raw_info *info, mm_err *err) {
    const data_schema *s = &ds->schema;
    if (ds->schema_only)
        return mm_fail(err, "%s: dataset opened for its schema only; cannot read samples", ds->dir);
    if (index >= s->n_samples)
        return mm_fail(err, "%s: sample position %llu is out of range (%llu samples)", ds->dir,
                       (unsigned long long)index, (unsigned long long)s->n_samples);
    const shard *sh = find_shard(ds, index);
    uint64_t j = index - sh->first;
    unsigned long long jj = (unsigned long long)j;
    memset(info, 0, sizeof(*info));
    info->shard = (int)(sh - ds->shards);
    info->sample_id = sh->sample_id[j];
    info->has_image = sh->has_image[j];
    info->has_audio = sh->has_audio[j];
    info->audio_n = (int)sh->audio_n[j];
    uint64_t t0 = sh->offsets[j], len = sh->offsets[j + 1] - t0;
    info->text_n = (int)len;
    char why[MM_H5_WHY_LEN];
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    hsize_t img_row[3] = {(hsize_t)s->img_h, (hsize_t)s->img_w, (hsize_t)s->img_c};
    hsize_t aud_row[1] = {(hsize_t)s->audio_len};
    int rc = -1;
    if (image && read_rows(sh->d_image, H5T_NATIVE_UINT8, 4, img_row, j, 1, image) < 0) {
        mm_fail(err, "%s: dataset 'image': sample %llu: read failed: %s", sh->path, jj,
                mm_h5_why(why));
    } else if (audio && read_rows(sh->d_audio, H5T_NATIVE_INT16, 2, aud_row, j, 1, audio) < 0) {
        mm_fail(err, "%s: dataset 'audio': sample %llu: read failed: %s", sh->path, jj,
                mm_h5_why(why));
    } else if (text && len > 0 &&
               read_rows(sh->d_text, H5T_NATIVE_UINT8, 1, NULL, t0, len, text) < 0) {
        mm_fail(err, "%s: dataset 'text': sample %llu: read failed: %s", sh->path, jj,
                mm_h5_why(why));
    } else if (text && data_utf8_bad_at((const uint8_t *)text, len) >= 0) {
        mm_fail(err, "%s: dataset 'text': sample %llu: caption is not valid UTF-8 (byte %ld)",
                sh->path, jj, data_utf8_bad_at((const uint8_t *)text, len));
    } else {
        if (text) text[len] = '\0';
        rc = 0;
    }
    mm_h5_quiet_end(&q);
    return rc;
}
