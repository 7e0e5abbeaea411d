// shard_write.c: writes the shards of format v1 (data/FORMAT.md), for `mmdata synth` and
// `mmdata pack`; shard_read.c is its counterpart, and the two share data_internal.h's constants.
//
// Writing streams: images and audio go to chunked, extendible datasets a chunk of samples at
// a time, so packing never holds more than one chunk of pixels in memory; the small per-sample
// columns (ids, flags, lengths, offsets, captions) are kept for the current shard and written
// when it closes. No timestamps go into the files, so the same samples give the same bytes
// (and checksums) on every run.
//
// HDF5 prints its own error stack to stderr; every entry point here runs its HDF5 calls in a
// quiet scope (core/h5err.h) and turns failures into mm_err lines quoting HDF5's reason.
#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/h5err.h"
#include "data.h"
#include "data_internal.h"

struct data_writer {
    char *dir;
    data_schema schema;  // schema.n_samples counts the samples added so far
    int spp;             // samples per shard
    int chunk_n;         // samples per image/audio chunk (and per flush)
    int broken;          // an HDF5 failure left the current shard unusable
    data_index ix;       // finished shards
    int cap_shards;
    // the shard being written (file < 0 when none is open)
    char path[DATA_PATH_CAP];
    hid_t file, d_image, d_audio;
    uint64_t n;        // samples in this shard
    uint64_t flushed;  // of which already in the image/audio datasets
    uint8_t *img;      // (chunk_n, H, W, C) rows not yet flushed
    int16_t *aud;      // (chunk_n, audio_len)
    uint64_t *ids;     // (spp)
    uint8_t *has_img;  // (spp)
    uint8_t *has_aud;  // (spp)
    uint32_t *aud_n;   // (spp)
    uint64_t *offs;    // (spp + 1) caption offsets into text
    uint8_t *text;     // (offs[n]) caption bytes
    size_t text_cap;
};

// Dataset creation properties without modification times in the object headers: the same
// samples then give the same shard bytes (and checksums) on every run.
static hid_t dcpl_untimed(void) {
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (dcpl >= 0 && H5Pset_obj_track_times(dcpl, 0) < 0) {
        H5Pclose(dcpl);
        return H5I_INVALID_HID;
    }
    return dcpl;
}

// A chunked dataset with an unlimited first dimension, starting empty.
static hid_t create_rows(hid_t file, const char *name, hid_t type, int rank, const hsize_t *row,
                         int chunk_n) {
    hsize_t dims[4] = {0}, maxdims[4] = {H5S_UNLIMITED}, chunk[4] = {(hsize_t)chunk_n};
    for (int i = 1; i < rank; i++) dims[i] = maxdims[i] = chunk[i] = row[i - 1];
    hid_t space = H5Screate_simple(rank, dims, maxdims);
    hid_t dcpl = dcpl_untimed();
    hid_t d = H5I_INVALID_HID;
    if (space >= 0 && dcpl >= 0 && H5Pset_chunk(dcpl, rank, chunk) >= 0)
        d = H5Dcreate2(file, name, type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return d;
}

// Appends k rows from buf to a dataset created by create_rows, which holds `at` rows so far.
static herr_t append_rows(hid_t d, hid_t memtype, int rank, const hsize_t *row, hsize_t at,
                          hsize_t k, const void *buf) {
    hsize_t dims[4] = {at + k}, start[4] = {at}, count[4] = {k};
    for (int i = 1; i < rank; i++) dims[i] = count[i] = row[i - 1], start[i] = 0;
    if (H5Dset_extent(d, dims) < 0) return -1;
    hid_t fs = H5Dget_space(d);
    if (fs < 0) return -1;
    hid_t ms = H5Screate_simple(rank, count, NULL);
    herr_t rc = -1;
    if (ms >= 0 && H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) >= 0)
        rc = H5Dwrite(d, memtype, ms, fs, H5P_DEFAULT, buf);
    if (ms >= 0) H5Sclose(ms);
    H5Sclose(fs);
    return rc;
}

static herr_t write_1d(hid_t file, const char *name, hid_t ftype, hid_t mtype, hsize_t n,
                       const void *buf) {
    hid_t space = H5Screate_simple(1, &n, NULL);
    if (space < 0) return -1;
    hid_t dcpl = dcpl_untimed();
    hid_t d = H5I_INVALID_HID;
    if (dcpl >= 0) d = H5Dcreate2(file, name, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dcpl >= 0) H5Pclose(dcpl);
    herr_t rc = -1;
    if (d >= 0) rc = n ? H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) : 0;
    if (d >= 0 && H5Dclose(d) < 0) rc = -1;
    H5Sclose(space);
    return rc;
}

static herr_t write_attr_int(hid_t file, const char *name, hid_t ftype, int64_t v) {
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a >= 0 ? H5Awrite(a, H5T_NATIVE_INT64, &v) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    return rc;
}

static herr_t write_attr_str(hid_t file, const char *name, const char *v) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    H5Tset_strpad(t, H5T_STR_NULLTERM);
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(file, name, t, space, H5P_DEFAULT, H5P_DEFAULT);
    herr_t rc = a >= 0 ? H5Awrite(a, t, v) : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(space);
    H5Tclose(t);
    return rc;
}

// Marks the writer broken and closes the shard's handles; the error names the shard.
static int writer_h5_fail(data_writer *w, const char *what, mm_err *err) {
    char why[MM_H5_WHY_LEN];
    mm_fail(err, "%s: %s: %s", w->path, what, mm_h5_why(why));
    w->broken = 1;
    mm_h5_close(&w->d_image, H5Dclose);
    mm_h5_close(&w->d_audio, H5Dclose);
    mm_h5_close(&w->file, H5Fclose);
    return -1;
}

static int shard_begin(data_writer *w, mm_err *err) {
    char name[64];
    snprintf(name, sizeof(name), "shard_%05d.h5", w->ix.n_shards);
    if (data_path_join(w->path, w->dir, name, err)) return -1;
    w->file = H5Fcreate(w->path, H5F_ACC_EXCL, H5P_DEFAULT, H5P_DEFAULT);
    if (w->file < 0) return writer_h5_fail(w, "cannot create shard", err);
    const data_schema *s = &w->schema;
    hsize_t img_row[3] = {(hsize_t)s->img_h, (hsize_t)s->img_w, (hsize_t)s->img_c};
    hsize_t aud_row[1] = {(hsize_t)s->audio_len};
    w->d_image = create_rows(w->file, "image", H5T_STD_U8LE, 4, img_row, w->chunk_n);
    if (w->d_image < 0) return writer_h5_fail(w, "cannot create dataset 'image'", err);
    w->d_audio = create_rows(w->file, "audio", H5T_STD_I16LE, 2, aud_row, w->chunk_n);
    if (w->d_audio < 0) return writer_h5_fail(w, "cannot create dataset 'audio'", err);
    w->n = w->flushed = 0;
    w->offs[0] = 0;
    return 0;
}

static int shard_flush(data_writer *w, mm_err *err) {
    hsize_t k = w->n - w->flushed;
    if (k == 0) return 0;
    const data_schema *s = &w->schema;
    hsize_t img_row[3] = {(hsize_t)s->img_h, (hsize_t)s->img_w, (hsize_t)s->img_c};
    hsize_t aud_row[1] = {(hsize_t)s->audio_len};
    if (append_rows(w->d_image, H5T_NATIVE_UINT8, 4, img_row, w->flushed, k, w->img) < 0)
        return writer_h5_fail(w, "cannot write dataset 'image'", err);
    if (append_rows(w->d_audio, H5T_NATIVE_INT16, 2, aud_row, w->flushed, k, w->aud) < 0)
        return writer_h5_fail(w, "cannot write dataset 'audio'", err);
    w->flushed = w->n;
    return 0;
}

static int shard_end(data_writer *w, mm_err *err) {
    if (shard_flush(w, err)) return -1;
    const data_schema *s = &w->schema;
    hid_t f = w->file;
    hsize_t n = w->n;
    if (write_1d(f, "sample_id", H5T_STD_U64LE, H5T_NATIVE_UINT64, n, w->ids) < 0 ||
        write_1d(f, "has_image", H5T_STD_U8LE, H5T_NATIVE_UINT8, n, w->has_img) < 0 ||
        write_1d(f, "has_audio", H5T_STD_U8LE, H5T_NATIVE_UINT8, n, w->has_aud) < 0 ||
        write_1d(f, "audio_n", H5T_STD_U32LE, H5T_NATIVE_UINT32, n, w->aud_n) < 0 ||
        write_1d(f, "text_offsets", H5T_STD_U64LE, H5T_NATIVE_UINT64, n + 1, w->offs) < 0 ||
        write_1d(f, "text", H5T_STD_U8LE, H5T_NATIVE_UINT8, w->offs[n], w->text) < 0)
        return writer_h5_fail(w, "cannot write the per-sample datasets", err);
    if (write_attr_str(f, "format", DATA_SHARD_FORMAT) < 0 ||
        write_attr_int(f, "version", H5T_STD_I32LE, DATA_SHARD_VERSION) < 0 ||
        write_attr_int(f, "n_samples", H5T_STD_U64LE, (int64_t)n) < 0 ||
        write_attr_int(f, "img_h", H5T_STD_I32LE, s->img_h) < 0 ||
        write_attr_int(f, "img_w", H5T_STD_I32LE, s->img_w) < 0 ||
        write_attr_int(f, "img_c", H5T_STD_I32LE, s->img_c) < 0 ||
        write_attr_int(f, "audio_rate", H5T_STD_I32LE, s->audio_rate) < 0 ||
        write_attr_int(f, "audio_len", H5T_STD_I32LE, s->audio_len) < 0 ||
        write_attr_int(f, "text_max", H5T_STD_I32LE, s->text_max) < 0 ||
        write_attr_str(f, "tokenizer", s->tokenizer) < 0)
        return writer_h5_fail(w, "cannot write the shard attributes", err);
    mm_h5_close(&w->d_image, H5Dclose);
    mm_h5_close(&w->d_audio, H5Dclose);
    herr_t rc = mm_h5_fclose(&w->file);
    if (rc < 0) return writer_h5_fail(w, "cannot close shard", err);

    if (w->ix.n_shards == w->cap_shards) {
        w->cap_shards = w->cap_shards ? 2 * w->cap_shards : 16;
        data_shard_info *ns = realloc(w->ix.shards, sizeof(*ns) * (size_t)w->cap_shards);
        MM_CHECK(ns, "out of memory growing the shard list");
        w->ix.shards = ns;
    }
    data_shard_info *sh = &w->ix.shards[w->ix.n_shards];
    memset(sh, 0, sizeof(*sh));
    snprintf(sh->file, sizeof(sh->file), "shard_%05d.h5", w->ix.n_shards);
    sh->n = n;
    sh->first = w->schema.n_samples - n;
    if (data_file_crc32(w->path, &sh->crc32, err)) {
        w->broken = 1;
        return -1;
    }
    w->ix.n_shards++;
    return 0;
}

// Creates dir (and parents) and refuses one that already has entries, so that a dataset
// never mixes shards of two runs. The caller owns *out and must call data_writer_close.
int data_writer_open(data_writer **out, const char *dir, const data_schema *schema,
                     int samples_per_shard, mm_err *err) {
    *out = NULL;
    if (data_schema_check(schema, dir, err)) return -1;
    if (samples_per_shard < 1)
        return mm_fail(err, "%s: samples_per_shard %d must be >= 1", dir, samples_per_shard);
    if (mm_mkdirs(dir, err)) return -1;
    DIR *d = opendir(dir);
    if (!d) return mm_fail(err, "%s: cannot open directory: %s", dir, strerror(errno));
    struct dirent *e;
    int used = 0;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) used = 1;
    closedir(d);
    if (used) return mm_fail(err, "%s: directory is not empty (refusing to mix datasets)", dir);

    data_writer *w = mm_calloc(1, sizeof(*w));
    w->dir = strdup(dir);
    MM_CHECK(w->dir, "out of memory");
    w->schema = *schema;
    w->schema.n_samples = 0;
    w->ix.schema = w->schema;
    w->spp = samples_per_shard;
    // A few samples per chunk: one chunk read serves a sample without dragging in much
    // unrelated data; cap the chunk near 1 MiB (HDF5's default chunk cache size).
    size_t row = data_img_bytes(schema) > 2 * (size_t)schema->audio_len
                     ? data_img_bytes(schema)
                     : 2 * (size_t)schema->audio_len;
    w->chunk_n = (int)((1u << 20) / row);
    if (w->chunk_n > 4) w->chunk_n = 4;
    if (w->chunk_n < 1) w->chunk_n = 1;
    if (w->chunk_n > w->spp) w->chunk_n = w->spp;
    w->file = w->d_image = w->d_audio = H5I_INVALID_HID;
    w->img = mm_calloc((size_t)w->chunk_n, data_img_bytes(schema));
    w->aud = mm_calloc((size_t)w->chunk_n * (size_t)schema->audio_len, sizeof(int16_t));
    w->ids = mm_calloc((size_t)w->spp, sizeof(uint64_t));
    w->has_img = mm_calloc((size_t)w->spp, 1);
    w->has_aud = mm_calloc((size_t)w->spp, 1);
    w->aud_n = mm_calloc((size_t)w->spp, sizeof(uint32_t));
    w->offs = mm_calloc((size_t)w->spp + 1, sizeof(uint64_t));
    w->text_cap = 4096;
    w->text = mm_malloc(w->text_cap);
    snprintf(w->path, sizeof(w->path), "%s", dir);
    *out = w;
    return 0;
}

// A sample that breaks the schema is refused with -1 and the writer stays usable; an HDF5
// failure makes every later call fail too (data_writer_close still frees w).
int data_writer_add(data_writer *w, const data_sample *s, mm_err *err) {
    if (w->broken) return mm_fail(err, "%s: writer is unusable after an earlier error", w->dir);
    const data_schema *sc = &w->schema;
    unsigned long long id = (unsigned long long)s->sample_id;
    if (s->text_n < 0 || s->text_n > sc->text_max)
        return mm_fail(err, "%s: sample id %llu: caption of %d bytes exceeds text_max %d", w->dir,
                       id, s->text_n, sc->text_max);
    if (s->text_n > 0 && !s->text)
        return mm_fail(err, "%s: sample id %llu: caption pointer is NULL", w->dir, id);
    long bad = s->text_n ? data_utf8_bad_at((const uint8_t *)s->text, (size_t)s->text_n) : -1;
    if (bad >= 0)
        return mm_fail(err, "%s: sample id %llu: caption is not valid UTF-8 (byte %ld)", w->dir, id,
                       bad);
    if (s->audio && (s->audio_n < 0 || s->audio_n > sc->audio_len))
        return mm_fail(err, "%s: sample id %llu: %d PCM samples exceed audio_len %d", w->dir, id,
                       s->audio_n, sc->audio_len);
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    int rc = -1;
    if (w->file < 0 && shard_begin(w, err)) goto done;
    uint64_t i = w->n, k = w->n - w->flushed;
    uint8_t *img = w->img + k * data_img_bytes(sc);
    int16_t *aud = w->aud + k * (size_t)sc->audio_len;
    if (s->image)
        memcpy(img, s->image, data_img_bytes(sc));
    else
        memset(img, 0, data_img_bytes(sc));
    memset(aud, 0, sizeof(int16_t) * (size_t)sc->audio_len);
    if (s->audio) memcpy(aud, s->audio, sizeof(int16_t) * (size_t)s->audio_n);
    w->ids[i] = s->sample_id;
    w->has_img[i] = s->image != NULL;
    w->has_aud[i] = s->audio != NULL;
    w->aud_n[i] = s->audio ? (uint32_t)s->audio_n : 0;
    while (w->offs[i] + (size_t)s->text_n > w->text_cap) {
        w->text_cap *= 2;
        uint8_t *nt = realloc(w->text, w->text_cap);
        MM_CHECK(nt, "out of memory growing the caption buffer");
        w->text = nt;
    }
    if (s->text_n) memcpy(w->text + w->offs[i], s->text, (size_t)s->text_n);
    w->offs[i + 1] = w->offs[i] + (uint64_t)s->text_n;
    w->n++;
    w->schema.n_samples++;
    if (w->n - w->flushed == (uint64_t)w->chunk_n && shard_flush(w, err)) goto done;
    if (w->n == (uint64_t)w->spp && shard_end(w, err)) goto done;
    rc = 0;
done:
    mm_h5_quiet_end(&q);
    return rc;
}

int data_writer_close(data_writer *w, mm_err *err) {
    if (!w) return 0;
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    int rc = -1;
    if (w->broken) {
        mm_fail(err, "%s: dataset left incomplete after an earlier error", w->dir);
        goto done;
    }
    if (w->file >= 0 && shard_end(w, err)) goto done;
    if (w->schema.n_samples == 0) {
        mm_fail(err, "%s: no samples were added; a dataset needs at least one", w->dir);
        goto done;
    }
    w->ix.schema = w->schema;
    rc = data_index_write(w->dir, &w->ix, err);
done:
    mm_h5_close(&w->d_image, H5Dclose);
    mm_h5_close(&w->d_audio, H5Dclose);
    mm_h5_close(&w->file, H5Fclose);
    mm_h5_quiet_end(&q);
    data_index_free(&w->ix);
    free(w->dir);
    free(w->img);
    free(w->aud);
    free(w->ids);
    free(w->has_img);
    free(w->has_aud);
    free(w->aud_n);
    free(w->offs);
    free(w->text);
    free(w);
    return rc;
}
