// test_data.c: proves the data module's promises with small datasets written on the spot: a
// shard reads back exactly what was written; the log-mel features put a tone in the right
// band; every corruption we can think of is a clean -1 whose message names the file and the
// problem; the loader hands out every sample once per epoch in an order that does not depend
// on dp and survives a resume; the synthetic set is what its comment says; the scorer counts
// attribute words the way the demo's accuracy needs.
#include <dirent.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../data/data.h"
#include "../data/data_internal.h"
#include "test.h"

// ---------------------------------------------------------------------------------------
// A small deterministic dataset whose every byte the test can recompute.
enum { SM_H = 4, SM_W = 5, SM_C = 3, SM_ALEN = 512, SM_TMAX = 16 };

static data_schema small_schema(void) {
    data_schema s = {0};
    s.img_h = SM_H, s.img_w = SM_W, s.img_c = SM_C;
    s.audio_rate = 8000, s.audio_len = SM_ALEN, s.text_max = SM_TMAX;
    snprintf(s.tokenizer, sizeof(s.tokenizer), "%s", DATA_TOKENIZER_NAME);
    return s;
}

static const data_audio_cfg small_audio = {64, 32, 8};

static uint64_t sm_id(uint64_t i) {
    return 1000 + 7 * i;
}
static int sm_has_img(uint64_t i) {
    return i % 5 != 3;
}
static int sm_has_aud(uint64_t i) {
    return i % 4 != 1;
}
static int sm_audio_n(uint64_t i) {
    return (int)(100 + i * 37 % 412);
}
static void sm_image(uint64_t i, uint8_t *img) {
    for (int k = 0; k < SM_H * SM_W * SM_C; k++) img[k] = (uint8_t)(i * 31 + (uint64_t)k * 7);
}
static void sm_audio(uint64_t i, int16_t *pcm) {
    for (int k = 0; k < SM_ALEN; k++)
        pcm[k] = (int16_t)lrint(8000.0 * sin(0.05 * (double)(k + 1) * (double)(i + 1)));
}
// Captions of varied length: empty, at text_max, and with multi-byte UTF-8.
static int sm_text(uint64_t i, char *out) {
    static const char *const base[] = {"", "a", "caption ", "\xc3\xa9t\xc3\xa9 ",
                                       "0123456789abcdef"};
    int k = snprintf(out, SM_TMAX + 1, "%s%llu", base[i % 5], (unsigned long long)i);
    return k > SM_TMAX ? SM_TMAX : k;
}

// Writes n samples in shards of spp to dir. with_all: every sample has image and audio.
static int write_small(const char *dir, uint64_t n, int spp, int with_all, mm_err *err) {
    data_schema s = small_schema();
    data_writer *w;
    if (data_writer_open(&w, dir, &s, spp, err)) return -1;
    uint8_t img[SM_H * SM_W * SM_C];
    int16_t pcm[SM_ALEN];
    char text[SM_TMAX + 1];
    for (uint64_t i = 0; i < n; i++) {
        sm_image(i, img);
        sm_audio(i, pcm);
        data_sample smp = {0};
        smp.sample_id = sm_id(i);
        smp.image = with_all || sm_has_img(i) ? img : NULL;
        smp.audio = with_all || sm_has_aud(i) ? pcm : NULL;
        smp.audio_n = sm_audio_n(i);
        smp.text = text;
        smp.text_n = sm_text(i, text);
        if (data_writer_add(w, &smp, err)) {
            mm_err e2;
            data_writer_close(w, &e2);
            return -1;
        }
    }
    return data_writer_close(w, err);
}

// ---------------------------------------------------------------------------------------
// File helpers for making corrupt copies.
static void path_join(char *out, size_t cap, const char *a, const char *b) {
    int k = snprintf(out, cap, "%s/%s", a, b);
    MM_CHECK(k > 0 && (size_t)k < cap, "path too long");
}

static int copy_dir(const char *src, const char *dst) {
    mm_err err;
    if (mm_mkdirs(dst, &err)) return -1;
    DIR *d = opendir(src);
    if (!d) return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char a[4096], b[4096];
        path_join(a, sizeof(a), src, e->d_name);
        path_join(b, sizeof(b), dst, e->d_name);
        char *buf;
        size_t n;
        if (mm_read_file(a, &buf, &n, &err) || mm_write_file_atomic(b, buf, n, &err))
            rc = -1;
        else
            free(buf);
    }
    closedir(d);
    return rc;
}

static void rm_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[4096];
        path_join(p, sizeof(p), dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_dir(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int flip_byte(const char *path, long at) {
    int fd = open(path, O_RDWR);
    if (fd < 0) return -1;
    unsigned char c;
    int rc = -1;
    if (pread(fd, &c, 1, at) == 1) {
        c ^= 0x5a;
        if (pwrite(fd, &c, 1, at) == 1) rc = 0;
    }
    close(fd);
    return rc;
}

// Replaces every occurrence of `from` by `to` (same length) in a file; returns the count.
static int replace_bytes(const char *path, const char *from, const char *to, size_t n) {
    mm_err err;
    char *buf;
    size_t len;
    if (mm_read_file(path, &buf, &len, &err)) return -1;
    int hits = 0;
    for (size_t i = 0; i + n <= len; i++)
        if (memcmp(buf + i, from, n) == 0) {
            memcpy(buf + i, to, n);
            hits++;
        }
    int rc = mm_write_file_atomic(path, buf, len, &err);
    free(buf);
    return rc ? -1 : hits;
}

static int write_text(const char *path, const char *text) {
    mm_err err;
    return mm_write_file_atomic(path, text, strlen(text), &err);
}

static hid_t h5_open_rw(const char *dir, const char *shard) {
    char p[4096];
    path_join(p, sizeof(p), dir, shard);
    return H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
}

static void h5_set_int_attr(hid_t f, const char *name, int v) {
    H5Adelete(f, name);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, name, H5T_STD_I32LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_INT, &v);
    H5Aclose(a);
    H5Sclose(sp);
}

static void h5_write_offsets(hid_t f, const uint64_t *v) {
    hid_t d = H5Dopen2(f, "text_offsets", H5P_DEFAULT);
    H5Dwrite(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    H5Dclose(d);
}

static void h5_read_offsets(hid_t f, uint64_t *v) {
    hid_t d = H5Dopen2(f, "text_offsets", H5P_DEFAULT);
    H5Dread(d, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    H5Dclose(d);
}

// ---------------------------------------------------------------------------------------
static void test_roundtrip(test_counts *tc, const char *root) {
    char dir[4096];
    path_join(dir, sizeof(dir), root, "rt");
    mm_err err;
    enum { N = 23 };
    TEST_CHECK(tc, write_small(dir, N, 10, 0, &err) == 0, "write: %s", err.msg);
    data_dataset *ds;
    TEST_CHECK(tc, data_dataset_open(&ds, dir, 1, &err) == 0, "open: %s", err.msg);
    const data_schema *s = data_dataset_schema(ds);
    TEST_CHECK(tc, s->n_samples == N && s->img_w == SM_W && s->audio_len == SM_ALEN,
               "schema read back");
    data_featurizer *f = data_featurizer_new(s, &small_audio);
    data_batch b;
    data_batch_alloc(&b, N, s, &small_audio);
    TEST_CHECK(tc, b.audio_F == 1 + (SM_ALEN - 64) / 32 && b.text_T == SM_TMAX + 1, "batch dims");
    uint64_t idx[N];
    for (int i = 0; i < N; i++) idx[i] = (uint64_t)(N - 1 - i);  // across shards, reversed
    TEST_CHECK(tc, data_dataset_read(ds, idx, N, f, &b, &err) == 0, "read: %s", err.msg);
    int bad_meta = 0, bad_img = 0, bad_aud = 0, bad_txt = 0;
    size_t nfeat = (size_t)b.audio_F * b.n_mels;
    float *want = mm_malloc(sizeof(float) * nfeat);
    for (int i = 0; i < N; i++) {
        uint64_t g = idx[i];
        if (b.sample_id[i] != sm_id(g) || b.index[i] != g || b.has_image[i] != sm_has_img(g) ||
            b.has_audio[i] != sm_has_aud(g))
            bad_meta++;
        uint8_t img[SM_H * SM_W * SM_C];
        sm_image(g, img);
        for (int k = 0; k < SM_H * SM_W * SM_C; k++) {
            float v = sm_has_img(g) ? (float)img[k] / 127.5f - 1.0f : 0.0f;
            if (b.image[(size_t)i * SM_H * SM_W * SM_C + k] != v) bad_img++;
        }
        int16_t pcm[SM_ALEN];
        sm_audio(g, pcm);
        if (sm_has_aud(g))
            data_featurize_audio(f, pcm, sm_audio_n(g), want);
        else
            memset(want, 0, sizeof(float) * nfeat);
        if (memcmp(want, b.audio + i * nfeat, sizeof(float) * nfeat) != 0) bad_aud++;
        char text[SM_TMAX + 1];
        int len = sm_text(g, text);
        const int32_t *tok = b.tokens + (size_t)i * b.text_T,
                      *tgt = b.targets + (size_t)i * b.text_T;
        if (strcmp(b.text + (size_t)i * b.text_T, text) != 0 || tok[0] != DATA_TOK_BOS) bad_txt++;
        for (int t = 0; t < b.text_T; t++) {
            int32_t et = t == 0 ? DATA_TOK_BOS : t <= len ? (uint8_t)text[t - 1] : DATA_TOK_PAD;
            int32_t eg = t < len ? (uint8_t)text[t] : t == len ? DATA_TOK_EOS : -1;
            if (tok[t] != et || tgt[t] != eg) bad_txt++;
        }
    }
    TEST_CHECK(tc, bad_meta == 0, "%d samples with wrong id/index/flags", bad_meta);
    TEST_CHECK(tc, bad_img == 0, "%d wrong pixels", bad_img);
    TEST_CHECK(tc, bad_aud == 0, "%d clips whose features differ from featurizing the PCM",
               bad_aud);
    TEST_CHECK(tc, bad_txt == 0, "%d wrong text/token/target entries", bad_txt);
    // Audio present and absent must differ: zeros only where absent.
    int nonzero = 0;
    for (size_t k = 0; k < nfeat; k++) nonzero += b.audio[k] != 0.0f;  // idx[0] = 22: has audio
    TEST_CHECK(tc, sm_has_aud(idx[0]) && nonzero > 0, "present audio gives non-zero features");
    uint64_t bad_idx = N;
    TEST_CHECK(
        tc,
        data_dataset_read(ds, &bad_idx, 1, f, &b, &err) == -1 && strstr(err.msg, "out of range"),
        "position out of range: %s", err.msg);
    free(want);
    data_batch_free(&b);
    data_featurizer_free(f);
    data_dataset_close(ds);

    // The writer refuses a sample that breaks the schema, and a non-empty directory.
    data_schema sc = small_schema();
    data_writer *w;
    TEST_CHECK(tc, data_writer_open(&w, dir, &sc, 4, &err) == -1 && strstr(err.msg, "not empty"),
               "writer refuses non-empty dir: %s", err.msg);
    char dir2[4096];
    path_join(dir2, sizeof(dir2), root, "rt2");
    TEST_CHECK(tc, data_writer_open(&w, dir2, &sc, 4, &err) == 0, "writer open: %s", err.msg);
    char longtext[SM_TMAX + 2];
    memset(longtext, 'x', sizeof(longtext));
    data_sample smp = {.sample_id = 1, .text = longtext, .text_n = SM_TMAX + 1};
    TEST_CHECK(tc, data_writer_add(w, &smp, &err) == -1 && strstr(err.msg, "exceeds text_max"),
               "caption too long: %s", err.msg);
    smp.text = "\xff";
    smp.text_n = 1;
    TEST_CHECK(tc, data_writer_add(w, &smp, &err) == -1 && strstr(err.msg, "UTF-8"),
               "bad UTF-8: %s", err.msg);
    TEST_CHECK(tc, data_writer_close(w, &err) == -1 && strstr(err.msg, "no samples"),
               "empty dataset refused: %s", err.msg);
}

// ---------------------------------------------------------------------------------------
static double test_hz_to_mel(double f) {
    return 2595.0 * log10(1.0 + f / 700.0);
}

static void test_logmel(test_counts *tc) {
    data_schema s = small_schema();
    s.audio_len = 4000;
    data_audio_cfg a = {256, 128, 32};
    TEST_CHECK(tc, data_audio_frames(&s, &a) == 30, "frames %d", data_audio_frames(&s, &a));
    data_featurizer *f = data_featurizer_new(&s, &a);
    int F = data_audio_frames(&s, &a);
    float *out = mm_malloc(sizeof(float) * (size_t)F * 32);
    int16_t *pcm = mm_malloc(sizeof(int16_t) * 4000);
    // Tones at 300 Hz .. 3.5 kHz; the expected band is the one whose centre (HTK mel, bands
    // equally spaced in mel between 0 and Nyquist) is nearest in mel, computed here afresh.
    const double tones[] = {300, 440, 1000, 1500, 2500, 3500};
    double mel_max = test_hz_to_mel(4000.0);
    for (size_t t = 0; t < sizeof(tones) / sizeof(tones[0]); t++) {
        double m = test_hz_to_mel(tones[t]);
        int expect = 0;
        for (int k = 1; k < 32; k++)
            if (fabs(mel_max * (k + 1) / 33 - m) < fabs(mel_max * (expect + 1) / 33 - m))
                expect = k;
        for (int i = 0; i < 4000; i++)
            pcm[i] = (int16_t)lrint(16000 * sin(2 * M_PI * tones[t] * i / 8000));
        data_featurize_audio(f, pcm, 4000, out);
        int bad_frames = 0;
        for (int fr = 0; fr < F; fr++) {
            int best = 0;
            for (int k = 1; k < 32; k++)
                if (out[fr * 32 + k] > out[fr * 32 + best]) best = k;
            if (best != expect) bad_frames++;
        }
        TEST_CHECK(tc, bad_frames == 0, "%g Hz: %d frames peak outside band %d", tones[t],
                   bad_frames, expect);
    }
    // Silence is the same constant everywhere (the floor), below any tone.
    data_featurize_audio(f, pcm, 0, out);
    int flat = 1;
    for (int k = 1; k < F * 32; k++) flat &= out[k] == out[0];
    TEST_CHECK(tc, flat && out[0] < -2.0f, "silence is a flat floor (%g)", out[0]);
    mm_err err;
    data_audio_cfg bad = {4096, 128, 32};
    TEST_CHECK(tc, data_audio_check(&s, &bad, &err) == -1 && strstr(err.msg, "n_fft 4096"),
               "n_fft longer than the clip refused: %s", err.msg);
    free(out);
    free(pcm);
    data_featurizer_free(f);
}

// ---------------------------------------------------------------------------------------
// Each corruption: rc == -1 and the message names the file and the problem.
static void expect_fail(test_counts *tc, const char *what, int rc, const mm_err *err,
                        const char *file, const char *problem) {
    TEST_CHECK(tc, rc == -1, "%s: expected failure", what);
    TEST_CHECK(tc, rc != -1 || (strstr(err->msg, file) && strstr(err->msg, problem)),
               "%s: message should name '%s' and '%s': %s", what, file, problem, err->msg);
    TEST_CHECK(tc, rc != -1 || !strchr(err->msg, '\n'), "%s: message is one line", what);
}

static int open_try(const char *dir, int verify, mm_err *err) {
    data_dataset *ds = NULL;
    int rc = data_dataset_open(&ds, dir, verify, err);
    data_dataset_close(ds);
    return rc;
}

static void test_bad_files(test_counts *tc, const char *root) {
    char good[4096], d[4096], p[4096], ix[4096];
    mm_err err;
    path_join(good, sizeof(good), root, "good");
    TEST_CHECK(tc, write_small(good, 20, 10, 0, &err) == 0, "write: %s", err.msg);
    TEST_CHECK(tc, open_try(good, 1, &err) == 0, "good set opens: %s", err.msg);
    int k = 0;
#define FRESH()                                               \
    do {                                                      \
        snprintf(d, sizeof(d), "%s/bad%02d", root, k++);      \
        TEST_CHECK(tc, copy_dir(good, d) == 0, "copy %s", d); \
        path_join(p, sizeof(p), d, "shard_00001.h5");         \
        path_join(ix, sizeof(ix), d, "index.json");           \
    } while (0)

    FRESH();  // truncated shard: the checksum catches it, and so does HDF5 without one
    truncate(p, file_size(p) / 2);
    expect_fail(tc, "truncated (verify)", open_try(d, 1, &err), &err, "shard_00001.h5", "checksum");
    expect_fail(tc, "truncated", open_try(d, 0, &err), &err, "shard_00001.h5", "HDF5");

    FRESH();  // one flipped byte
    flip_byte(p, file_size(p) / 3);
    expect_fail(tc, "flipped byte", open_try(d, 1, &err), &err, "shard_00001.h5",
                "checksum mismatch");

    FRESH();  // not HDF5 at all
    write_text(p, "hello");
    expect_fail(tc, "not hdf5", open_try(d, 0, &err), &err, "shard_00001.h5",
                "not a readable HDF5");

    FRESH();  // missing shard file
    unlink(p);
    expect_fail(tc, "missing shard", open_try(d, 0, &err), &err, "shard_00001.h5", "cannot open");

    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);  // the edits below may probe absent objects
    FRESH();
    hid_t f = h5_open_rw(d, "shard_00001.h5");
    h5_set_int_attr(f, "version", 2);
    H5Fclose(f);
    expect_fail(tc, "wrong version", open_try(d, 0, &err), &err, "shard_00001.h5",
                "attribute 'version' is 2");

    FRESH();
    f = h5_open_rw(d, "shard_00001.h5");
    H5Adelete(f, "format");
    H5Fclose(f);
    expect_fail(tc, "missing format", open_try(d, 0, &err), &err, "shard_00001.h5",
                "attribute 'format' is missing");

    FRESH();
    f = h5_open_rw(d, "shard_00000.h5");
    h5_set_int_attr(f, "n_samples", 9);
    H5Fclose(f);
    expect_fail(tc, "count vs index", open_try(d, 0, &err), &err, "shard_00000.h5",
                "'n_samples' is 9, index.json says 10");

    uint64_t off[11];
    FRESH();  // an offset beyond the text
    f = h5_open_rw(d, "shard_00001.h5");
    h5_read_offsets(f, off);
    off[4] = off[10] + 5;
    h5_write_offsets(f, off);
    H5Fclose(f);
    char want[128];
    snprintf(want, sizeof(want),
             "dataset 'text_offsets': sample 3: offset %llu is beyond the text size %llu",
             (unsigned long long)off[4], (unsigned long long)off[10]);
    expect_fail(tc, "offset beyond text", open_try(d, 0, &err), &err, "shard_00001.h5", want);

    FRESH();  // decreasing offsets
    f = h5_open_rw(d, "shard_00001.h5");
    h5_read_offsets(f, off);
    off[6] = off[5] - 1;
    h5_write_offsets(f, off);
    H5Fclose(f);
    expect_fail(tc, "offsets decrease", open_try(d, 0, &err), &err, "shard_00001.h5",
                "sample 5: offsets decrease");

    FRESH();  // a caption longer than text_max (offsets stay in bounds)
    f = h5_open_rw(d, "shard_00001.h5");
    h5_read_offsets(f, off);
    for (int i = 1; i < 10; i++) off[i] = off[10];
    h5_write_offsets(f, off);
    H5Fclose(f);
    expect_fail(tc, "caption too long", open_try(d, 0, &err), &err, "shard_00001.h5",
                "sample 0: caption of");

    FRESH();
    f = h5_open_rw(d, "shard_00001.h5");
    H5Ldelete(f, "audio_n", H5P_DEFAULT);
    H5Fclose(f);
    expect_fail(tc, "missing dataset", open_try(d, 0, &err), &err, "shard_00001.h5",
                "dataset 'audio_n' is missing");

    FRESH();  // image with the wrong width
    f = h5_open_rw(d, "shard_00001.h5");
    H5Ldelete(f, "image", H5P_DEFAULT);
    hsize_t dims[4] = {10, SM_H, SM_W + 1, SM_C};
    hid_t sp = H5Screate_simple(4, dims, NULL);
    hid_t ds = H5Dcreate2(f, "image", H5T_STD_U8LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Dclose(ds);
    H5Sclose(sp);
    H5Fclose(f);
    expect_fail(tc, "wrong image shape", open_try(d, 0, &err), &err, "shard_00001.h5",
                "dataset 'image' has shape [10, 4, 6, 3], expected [10, 4, 5, 3]");

    FRESH();  // a flag that is not 0/1
    f = h5_open_rw(d, "shard_00000.h5");
    uint8_t flags[10];
    ds = H5Dopen2(f, "has_audio", H5P_DEFAULT);
    H5Dread(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, flags);
    flags[7] = 3;
    H5Dwrite(ds, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, flags);
    H5Dclose(ds);
    H5Fclose(f);
    expect_fail(tc, "bad flag", open_try(d, 0, &err), &err, "shard_00000.h5",
                "dataset 'has_audio': sample 7: value 3 is not 0 or 1");

    FRESH();  // a sample_id repeated across shards
    f = h5_open_rw(d, "shard_00001.h5");
    uint64_t ids[10];
    ds = H5Dopen2(f, "sample_id", H5P_DEFAULT);
    H5Dread(ds, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
    ids[2] = sm_id(4);
    H5Dwrite(ds, H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
    H5Dclose(ds);
    H5Fclose(f);
    expect_fail(tc, "duplicate id", open_try(d, 0, &err), &err, "shard_00001.h5",
                "sample 2: id 1028 repeats sample 4 of");

    // index.json problems
    FRESH();
    unlink(ix);
    expect_fail(tc, "index missing", open_try(d, 0, &err), &err, "index.json", "cannot open");
    FRESH();
    write_text(ix, "{\"format\": \"mmtrain-dataset\", \"version\": 1, \"schema\": {");
    expect_fail(tc, "index truncated", open_try(d, 0, &err), &err, "index.json", "not valid JSON");
    FRESH();
    replace_bytes(ix, "\"version\": 1", "\"version\": 7", 12);
    expect_fail(tc, "index version", open_try(d, 0, &err), &err, "index.json",
                "key 'version': is 7");
    FRESH();
    replace_bytes(ix, "\"img_w\"", "\"img_x\"", 7);
    expect_fail(tc, "index unknown key", open_try(d, 0, &err), &err, "index.json",
                "unknown key 'img_x'");
    FRESH();
    replace_bytes(ix, "\"first\": 10", "\"first\": 11", 11);
    expect_fail(tc, "index first", open_try(d, 0, &err), &err, "index.json",
                "key 'shards[1].first': is 11");
    FRESH();
    replace_bytes(ix, "\"n_samples\": 20", "\"n_samples\": 21", 15);
    expect_fail(tc, "index total", open_try(d, 0, &err), &err, "index.json",
                "key 'schema.n_samples': is 21, but the shards hold 20");
    FRESH();
    replace_bytes(ix, "\"text_max\": 16", "\"text_max\": -1", 14);
    expect_fail(tc, "index negative", open_try(d, 0, &err), &err, "index.json",
                "key 'schema.text_max': expected a non-negative integer");
    FRESH();
    replace_bytes(ix, "shard_00001.h5", "../shard_01.h5", 14);
    expect_fail(tc, "index path", open_try(d, 0, &err), &err, "index.json",
                "not a plain file name");
    FRESH();
    replace_bytes(ix, "\"img_c\": 3", "\"img_c\": 4", 10);
    expect_fail(tc, "schema vs shard", open_try(d, 0, &err), &err, "shard_00000.h5",
                "image shape attributes 4x5x3 differ from index.json's 4x5x4");
#undef FRESH
}

// A dataset whose shard 1 has its chunk indexes broken: open (without checksums) passes,
// reading an image or a clip of shard 1 fails. The loader must deliver the batches before
// the failure and then NULL with an error naming the shard.
static void test_loader_read_error(test_counts *tc, const char *root) {
    char dir[4096], p[4096];
    mm_err err;
    path_join(dir, sizeof(dir), root, "rderr");
    TEST_CHECK(tc, write_small(dir, 16, 8, 1, &err) == 0, "write: %s", err.msg);
    path_join(p, sizeof(p), dir, "shard_00001.h5");
    // v1 B-tree nodes of chunk indexes start with "TREE" and node type 1.
    int hits = replace_bytes(p, "TREE\x01", "XREE\x01", 5);
    TEST_CHECK(tc, hits == 2, "found %d chunk-index B-trees (expected image and audio)", hits);
    data_loader_cfg c = {.dir = dir,
                         .seed = 5,
                         .global_batch = 2,
                         .micro_batch = 2,
                         .dp_rank = 0,
                         .dp_size = 1,
                         .depth = 2,
                         .verify = 0,
                         .audio = small_audio};
    data_loader *l;
    TEST_CHECK(tc, data_loader_open(&l, &c, &err) == 0, "open: %s", err.msg);
    if (!l) return;
    uint64_t perm[16];
    data_permutation(16, 5, 0, perm);
    int expect_ok = 0;  // micro-batches before the first one touching shard 1
    while (expect_ok < 8 && perm[2 * expect_ok] < 8 && perm[2 * expect_ok + 1] < 8) expect_ok++;
    int got_ok = 0;
    const data_batch *b;
    while ((b = data_loader_next(l, &err)) != NULL && got_ok < 20) got_ok++;
    TEST_CHECK(tc, got_ok == expect_ok, "batches before the error: %d, expected %d", got_ok,
               expect_ok);
    TEST_CHECK(tc, !b && strstr(err.msg, "shard_00001.h5") && strstr(err.msg, "read failed"),
               "loader error names the shard: %s", err.msg);
    err.msg[0] = '\0';
    TEST_CHECK(tc, data_loader_next(l, &err) == NULL && strstr(err.msg, "shard_00001.h5"),
               "error is sticky");
    data_loader_close(l);
    expect_fail(tc, "broken chunk index (verify)", open_try(dir, 1, &err), &err, "shard_00001.h5",
                "checksum");
}

// ---------------------------------------------------------------------------------------
static void test_permutation(test_counts *tc) {
    enum { N = 1000 };
    uint64_t *a = mm_malloc(sizeof(uint64_t) * N), *b = mm_malloc(sizeof(uint64_t) * N);
    uint8_t seen[N] = {0};
    data_permutation(N, 42, 3, a);
    int dup = 0;
    for (int i = 0; i < N; i++) dup += a[i] >= N || seen[a[i]]++;
    TEST_CHECK(tc, dup == 0, "permutation has %d repeats or out-of-range entries", dup);
    data_permutation(N, 42, 3, b);
    TEST_CHECK(tc, memcmp(a, b, sizeof(uint64_t) * N) == 0, "same (seed, epoch), same order");
    data_permutation(N, 42, 4, b);
    TEST_CHECK(tc, memcmp(a, b, sizeof(uint64_t) * N) != 0, "next epoch, new order");
    data_permutation(N, 43, 3, b);
    TEST_CHECK(tc, memcmp(a, b, sizeof(uint64_t) * N) != 0, "other seed, new order");
    free(a);
    free(b);
    data_pos p = {0, 0};
    p = data_pos_advance(p, 10, 4);
    TEST_CHECK(tc, p.epoch == 0 && p.offset == 4, "advance within the epoch");
    p = data_pos_advance(p, 10, 4);
    TEST_CHECK(tc, p.epoch == 1 && p.offset == 0, "partial batch of 2 dropped: (%lld, %llu)",
               (long long)p.epoch, (unsigned long long)p.offset);
    p = data_pos_advance((data_pos){0, 4}, 8, 4);
    TEST_CHECK(tc, p.epoch == 1 && p.offset == 0, "exact end wraps");
}

// Runs dp loaders (ranks 0..dp-1) for `steps` steps and appends, per step, the dataset
// positions in global order (micro-step, rank, sample) to seq (steps * G entries). pos_ok
// counts steps after which every rank's data_loader_pos equals the expected next position.
static int run_loaders(const char *dir, int G, int mb, int dp, data_pos start, int steps,
                       uint64_t *seq, uint64_t *ids, int *pos_ok, mm_err *err) {
    data_loader *l[8] = {0};
    int rc = 0;
    for (int r = 0; r < dp && rc == 0; r++) {
        data_loader_cfg c = {.dir = dir,
                             .seed = 11,
                             .global_batch = G,
                             .micro_batch = mb,
                             .dp_rank = r,
                             .dp_size = dp,
                             .depth = 2,
                             .verify = r == 0,
                             .start = start,
                             .audio = small_audio};
        rc = data_loader_open(&l[r], &c, err);
    }
    int accum = G / (mb * dp);
    size_t at = 0;
    uint64_t n = rc ? 1 : data_loader_schema(l[0])->n_samples;
    data_pos expect = start;
    if (!rc && (expect.offset > n || n - expect.offset < (uint64_t)G))
        expect = (data_pos){start.epoch + 1, 0};
    *pos_ok = 0;
    for (int s = 0; s < steps && rc == 0; s++) {
        for (int k = 0; k < accum && rc == 0; k++)
            for (int r = 0; r < dp && rc == 0; r++) {
                const data_batch *b = data_loader_next(l[r], err);
                if (!b) {
                    rc = -1;
                    break;
                }
                for (int j = 0; j < b->B; j++, at++) {
                    seq[at] = b->index[j];
                    ids[at] = b->sample_id[j];
                }
            }
        expect = data_pos_advance(expect, n, (uint64_t)G);
        int ok = 1;
        for (int r = 0; r < dp; r++) {
            data_pos p = data_loader_pos(l[r]);
            ok &= p.epoch == expect.epoch && p.offset == expect.offset;
        }
        *pos_ok += ok;
    }
    for (int r = 0; r < dp; r++) data_loader_close(l[r]);
    return rc;
}

// The order the promise defines: step s of an uninterrupted run is perm[offset, offset + G).
static void expected_order(uint64_t n, int G, data_pos start, int steps, uint64_t *seq) {
    uint64_t *perm = mm_malloc(sizeof(uint64_t) * n);
    data_pos p = start;
    if (p.offset > n || n - p.offset < (uint64_t)G) p = (data_pos){p.epoch + 1, 0};
    for (int s = 0; s < steps; s++) {
        data_permutation(n, 11, p.epoch, perm);
        memcpy(seq + (size_t)s * G, perm + p.offset, sizeof(uint64_t) * (size_t)G);
        p = data_pos_advance(p, n, (uint64_t)G);
    }
    free(perm);
}

static void test_loader(test_counts *tc, const char *root) {
    char dir[4096];
    mm_err err;
    path_join(dir, sizeof(dir), root, "ld");
    enum { N = 40, G = 8, STEPS = 10, MAXS = 16 };  // 5 steps per epoch, 2 epochs
    TEST_CHECK(tc, write_small(dir, N, 16, 0, &err) == 0, "write: %s", err.msg);
    uint64_t want[MAXS * 12], seq[MAXS * 12], ids[MAXS * 12];
    expected_order(N, G, (data_pos){0, 0}, STEPS, want);
    const int cfgs[][2] = {{1, 2}, {1, 8}, {2, 2}, {4, 1}, {4, 2}};  // (dp, micro_batch)
    for (size_t c = 0; c < sizeof(cfgs) / sizeof(cfgs[0]); c++) {
        int dp = cfgs[c][0], mb = cfgs[c][1], pos_ok;
        int rc = run_loaders(dir, G, mb, dp, (data_pos){0, 0}, STEPS, seq, ids, &pos_ok, &err);
        TEST_CHECK(tc, rc == 0, "dp %d mb %d: %s", dp, mb, err.msg);
        TEST_CHECK(tc, memcmp(seq, want, sizeof(uint64_t) * STEPS * G) == 0,
                   "dp %d mb %d: global order differs from the promise", dp, mb);
        TEST_CHECK(tc, pos_ok == STEPS, "dp %d mb %d: loader position wrong after %d of %d steps",
                   dp, mb, STEPS - pos_ok, STEPS);
        // every sample exactly once per epoch, by sample id
        int bad = 0;
        for (int e = 0; e < 2; e++) {
            int count[N] = {0};
            for (int i = 0; i < N; i++) {
                uint64_t id = ids[e * N + i];
                if (id < 1000 || (id - 1000) % 7 || (id - 1000) / 7 >= N)
                    bad++;
                else
                    count[(id - 1000) / 7]++;
            }
            for (int i = 0; i < N; i++) bad += count[i] != 1;
        }
        TEST_CHECK(tc, bad == 0, "dp %d mb %d: %d samples not seen exactly once per epoch", dp, mb,
                   bad);
    }

    // Drop-last: G = 12 gives 3 steps (36 samples) per epoch; the other 4 wait for no one.
    enum { G2 = 12, STEPS2 = 6 };
    int pos_ok;
    expected_order(N, G2, (data_pos){0, 0}, STEPS2, want);
    TEST_CHECK(tc,
               run_loaders(dir, G2, 3, 2, (data_pos){0, 0}, STEPS2, seq, ids, &pos_ok, &err) == 0,
               "G 12: %s", err.msg);
    TEST_CHECK(tc, memcmp(seq, want, sizeof(uint64_t) * STEPS2 * G2) == 0, "G 12: order");
    TEST_CHECK(tc, pos_ok == STEPS2, "G 12: positions");
    uint64_t perm0[N];
    data_permutation(N, 11, 0, perm0);
    int in_epoch0 = 0, dropped_seen = 0;
    for (int i = 0; i < 3 * G2; i++)
        for (int j = 3 * G2; j < N; j++) dropped_seen += seq[i] == perm0[j];
    for (int i = 0; i < 3 * G2; i++) in_epoch0 += seq[i] == perm0[i];
    TEST_CHECK(tc, dropped_seen == 0 && in_epoch0 == 3 * G2,
               "epoch 0 is perm[0, 36): the last 4 are dropped, not duplicated");

    // Resume: dp 2 runs 3 steps and one micro-step of the 4th, saves its position (the 4th
    // step's start), then dp 2 and dp 4 continue from it exactly as the uninterrupted run.
    data_loader *l[2];
    for (int r = 0; r < 2; r++) {
        data_loader_cfg c = {.dir = dir,
                             .seed = 11,
                             .global_batch = G,
                             .micro_batch = 2,
                             .dp_rank = r,
                             .dp_size = 2,
                             .depth = 1,
                             .audio = small_audio};
        TEST_CHECK(tc, data_loader_open(&l[r], &c, &err) == 0, "open: %s", err.msg);
    }
    for (int s = 0; s < 3 * 2 + 1; s++)  // accum = 2
        for (int r = 0; r < 2; r++) data_loader_next(l[r], &err);
    data_pos saved = data_loader_pos(l[0]), saved1 = data_loader_pos(l[1]);
    TEST_CHECK(tc, saved.epoch == 0 && saved.offset == 3 * G && saved1.offset == saved.offset,
               "mid-step position is the step's start: (%lld, %llu)", (long long)saved.epoch,
               (unsigned long long)saved.offset);
    data_loader_close(l[0]);
    data_loader_close(l[1]);
    expected_order(N, G, (data_pos){0, 0}, STEPS, want);
    const int rcfg[][2] = {{2, 2}, {4, 1}, {1, 4}};
    for (int c = 0; c < 3; c++) {
        int rc = run_loaders(dir, G, rcfg[c][1], rcfg[c][0], saved, 5, seq, ids, &pos_ok, &err);
        TEST_CHECK(tc, rc == 0 && memcmp(seq, want + 3 * G, sizeof(uint64_t) * 5 * G) == 0,
                   "resume at step 3 on dp %d continues the same order (into epoch 1)", rcfg[c][0]);
        TEST_CHECK(tc, pos_ok == 5, "resume on dp %d: positions", rcfg[c][0]);
    }

    // Bad configurations are clear errors.
    data_loader *bad = NULL;
    data_loader_cfg c = {.dir = dir,
                         .seed = 1,
                         .global_batch = 12,
                         .micro_batch = 4,
                         .dp_rank = 0,
                         .dp_size = 2,
                         .depth = 2,
                         .audio = small_audio};
    TEST_CHECK(tc, data_loader_open(&bad, &c, &err) == -1 && strstr(err.msg, "not a multiple"),
               "global_batch %% (micro_batch * dp) != 0: %s", err.msg);
    c.global_batch = 48, c.micro_batch = 4;
    TEST_CHECK(tc,
               data_loader_open(&bad, &c, &err) == -1 && strstr(err.msg, "exceeds the 40 samples"),
               "global_batch > n: %s", err.msg);
    c.global_batch = 8, c.dp_rank = 2;
    TEST_CHECK(tc, data_loader_open(&bad, &c, &err) == -1 && strstr(err.msg, "dp_rank"),
               "dp_rank out of range: %s", err.msg);
    c.dp_rank = 0, c.audio.n_mels = 100;
    TEST_CHECK(tc, data_loader_open(&bad, &c, &err) == -1 && strstr(err.msg, "n_mels"),
               "bad audio settings: %s", err.msg);
    c.audio = small_audio, c.dir = root;
    TEST_CHECK(tc, data_loader_open(&bad, &c, &err) == -1 && strstr(err.msg, "index.json"),
               "not a dataset: %s", err.msg);

    // Close never hangs: right after open (thread mid-read) and with a full ring.
    c.dir = dir;
    for (int i = 0; i < 2; i++) {
        TEST_CHECK(tc, data_loader_open(&bad, &c, &err) == 0, "open: %s", err.msg);
        if (i == 1) {
            data_loader_next(bad, &err);
            double t0 = mm_now();
            while (mm_now() - t0 < 0.05) {
            }  // let the thread fill the ring and block
            TEST_CHECK(tc, data_loader_take_wait(bad) >= 0.0, "wait time");
        }
        data_loader_close(bad);
    }
}

// ---------------------------------------------------------------------------------------
// The caption layout every user shares (loader, `train sample`, generation's prompt): a full
// caption, an empty one (the prompt), and bytes >= 0x80 that must stay bytes, not negatives.
static void test_tokens(test_counts *tc) {
    int32_t tok[6], tgt[6];
    data_tokens_encode("ab\xc3\xa9", 4, 6, tok, tgt);
    const int32_t want_tok[6] = {DATA_TOK_BOS, 'a', 'b', 0xc3, 0xa9, DATA_TOK_PAD};
    const int32_t want_tgt[6] = {'a', 'b', 0xc3, 0xa9, DATA_TOK_EOS, -1};
    TEST_CHECK(tc, memcmp(tok, want_tok, sizeof(tok)) == 0, "tokens of a caption");
    TEST_CHECK(tc, memcmp(tgt, want_tgt, sizeof(tgt)) == 0, "targets of a caption");
    int32_t full[3], full_tgt[3];
    data_tokens_encode("xy", 2, 3, full, full_tgt);  // len = T - 1: no PAD, EOS last
    TEST_CHECK(tc, full[0] == DATA_TOK_BOS && full[2] == 'y' && full_tgt[2] == DATA_TOK_EOS,
               "a caption of text_max bytes");
    for (int t = 0; t < 6; t++) tok[t] = 7;
    data_tokens_encode("", 0, 6, tok, NULL);
    int pads = 0;
    for (int t = 1; t < 6; t++) pads += tok[t] == DATA_TOK_PAD;
    TEST_CHECK(tc, tok[0] == DATA_TOK_BOS && pads == 5, "the prompt: BOS, then PAD");
    TEST_CHECK(tc,
               !data_tok_is_special(0) && !data_tok_is_special(255) &&
                   data_tok_is_special(DATA_TOK_BOS) && data_tok_is_special(DATA_TOK_EOS) &&
                   data_tok_is_special(DATA_TOK_PAD) && DATA_N_BYTES == 256 &&
                   DATA_VOCAB == DATA_TOK_PAD + 1,
               "bytes and specials");
}

// ---------------------------------------------------------------------------------------
static void test_scorer(test_counts *tc) {
    int c[DATA_N_ATTR];
    const char *ref = "a small red circle on the left";
    TEST_CHECK(tc, data_synth_score(ref, ref, c) == 1 && c[0] && c[1] && c[2] && c[3], "identical");
    TEST_CHECK(tc, data_synth_score(ref, "red circle (small) at the left", c) == 1,
               "other phrasing");
    TEST_CHECK(tc, data_synth_score(ref, "A Small RED Circle on the LEFT", c) == 1,
               "case-insensitive");
    TEST_CHECK(tc,
               data_synth_score(ref, "a small blue circle on the left", c) == 0 && !c[0] && c[1] &&
                   c[2] && c[3],
               "wrong colour");
    TEST_CHECK(tc, data_synth_score(ref, "a small circle on the left", c) == 0 && !c[0] && c[1],
               "missing colour");
    TEST_CHECK(tc,
               data_synth_score(ref, "a small red red circle on the left", c) == 0 && !c[0] && c[1],
               "doubled colour");
    TEST_CHECK(tc, data_synth_score(ref, "a small red blue circle on the left", c) == 0 && !c[0],
               "two colours");
    TEST_CHECK(tc,
               data_synth_score(ref, "a small redcircle on the lefts", c) == 0 && !c[0] && !c[1] &&
                   c[2] && !c[3],
               "attribute words only count as whole words");
    TEST_CHECK(tc, data_synth_score(ref, "", c) == 0 && !c[0] && !c[1] && !c[2] && !c[3], "empty");
    TEST_CHECK(tc,
               data_synth_score(ref, "large square on the right, top", c) == 0 && !c[0] && !c[1] &&
                   !c[2] && !c[3],
               "all wrong");
    // Every phrasing of every tuple scores 100% against itself and every other phrasing.
    int total = 0, right = 0, longest = 0;
    char a[128], b[128];
    for (int k = 0; k < 6 * 4 * 2 * 4; k++) {
        int at[4] = {k % 6, k / 6 % 4, k / 24 % 2, k / 48};
        for (int p = 0; p < DATA_SYNTH_N_PHRASINGS; p++)
            for (int q = 0; q < DATA_SYNTH_N_PHRASINGS; q++) {
                int la = data_synth_caption(a, sizeof(a), at, p);
                data_synth_caption(b, sizeof(b), at, q);
                if (la > longest) longest = la;
                total++;
                right += data_synth_score(a, b, c);
            }
    }
    TEST_CHECK(tc, right == total, "%d of %d phrasing pairs score 100%%", right, total);
    data_synth_cfg sc;
    data_synth_default(&sc);
    TEST_CHECK(tc, longest <= sc.text_max, "longest caption %d fits text_max %d", longest,
               sc.text_max);
    // No vocabulary word inside another vocabulary word or a template word.
    int clash = 0;
    for (int p = 0; p < DATA_SYNTH_N_PHRASINGS; p++) {
        int at[4] = {0, 0, 0, 0};
        data_synth_caption(a, sizeof(a), at, p);
        for (char *w = strtok(a, " ,:()"); w; w = strtok(NULL, " ,:()"))
            for (int x = 0; x < DATA_N_ATTR; x++)
                for (int v = 0; v < data_synth_vocab_n[x]; v++) {
                    const char *vw = data_synth_vocab[x][v];
                    if (strcmp(w, vw) != 0 && strstr(w, vw)) clash++;
                }
    }
    for (int x = 0; x < DATA_N_ATTR; x++)
        for (int v = 0; v < data_synth_vocab_n[x]; v++)
            for (int y = 0; y < DATA_N_ATTR; y++)
                for (int u = 0; u < data_synth_vocab_n[y]; u++)
                    if ((x != y || u != v) &&
                        strstr(data_synth_vocab[x][v], data_synth_vocab[y][u]))
                        clash++;
    TEST_CHECK(tc, clash == 0, "%d attribute words occur inside other words", clash);
    TEST_CHECK(tc,
               strcmp(data_synth_attr_names[0], "colour") == 0 &&
                   strcmp(data_synth_attr_names[3], "position") == 0,
               "attribute names");
}

// ---------------------------------------------------------------------------------------
// The synthetic set: counts, presence rules, and that image alone and audio alone carry the
// caption's attributes (checked from pixels and features with the generator's constants).
static void test_synth(test_counts *tc, const char *root) {
    char dir[4096], sub[4096];
    mm_err err;
    path_join(dir, sizeof(dir), root, "syn");
    data_synth_cfg sc;
    data_synth_default(&sc);
    TEST_CHECK(tc, data_synth_write(dir, 300, 7, &sc, &err) == 0, "synth: %s", err.msg);
    TEST_CHECK(tc, data_synth_write(dir, 300, 7, &sc, &err) == -1 && strstr(err.msg, "not empty"),
               "synth refuses to overwrite: %s", err.msg);
    data_dataset *tr = NULL, *va = NULL;
    path_join(sub, sizeof(sub), dir, "train");
    TEST_CHECK(tc, data_dataset_open(&tr, sub, 1, &err) == 0, "train: %s", err.msg);
    path_join(sub, sizeof(sub), dir, "val");
    TEST_CHECK(tc, data_dataset_open(&va, sub, 1, &err) == 0, "val: %s", err.msg);
    if (!tr || !va) {
        data_dataset_close(tr);
        data_dataset_close(va);
        return;
    }
    const data_schema *s = data_dataset_schema(tr);
    TEST_CHECK(tc,
               s->n_samples == 300 && data_dataset_schema(va)->n_samples == 64 && s->img_h == 32 &&
                   s->img_c == 3 && s->audio_rate == 8000 && s->audio_len == 4000,
               "split sizes and schema");
    data_audio_cfg a = {256, 128, 32};
    data_featurizer *f = data_featurizer_new(s, &a);
    data_batch b;
    data_batch_alloc(&b, 300, s, &a);
    uint64_t idx[300];
    for (int i = 0; i < 300; i++) idx[i] = (uint64_t)i;
    TEST_CHECK(tc, data_dataset_read(tr, idx, 300, f, &b, &err) == 0, "read: %s", err.msg);
    static const int rgb[6][3] = {{225, 40, 40},  {40, 200, 60},  {50, 90, 240},
                                  {235, 220, 40}, {165, 60, 215}, {235, 235, 235}};
    static const double beep_hz[6] = {500, 700, 950, 1250, 1600, 2000};
    static const double drone_hz[4] = {120, 200, 300, 400};
    static const float cx[4] = {0.28f, 0.72f, 0.5f, 0.5f}, cy[4] = {0.5f, 0.5f, 0.28f, 0.72f};
    double mel_max = test_hz_to_mel(4000.0);
    int no_img = 0, no_aud = 0, both = 0, bad_caption = 0, n_img = 0, n_aud = 0;
    int img_bad[4] = {0}, aud_bad[4] = {0};
    for (int i = 0; i < 300; i++) {
        no_img += !b.has_image[i];
        no_aud += !b.has_audio[i];
        both += !b.has_image[i] && !b.has_audio[i];
        int cnt[4], at[4];
        data_synth_parse(b.text + (size_t)i * b.text_T, cnt, at);
        if (cnt[0] != 1 || cnt[1] != 1 || cnt[2] != 1 || cnt[3] != 1) {
            bad_caption++;
            continue;
        }
        if (b.has_image[i]) {  // bright pixels: the shape (the background stays below 45)
            n_img++;
            const float *im = b.image + (size_t)i * 32 * 32 * 3;
            double sx = 0, sy = 0, sr = 0, sg = 0, sb = 0;
            int area = 0;
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++) {
                    const float *px = im + (y * 32 + x) * 3;
                    float mx = fmaxf(px[0], fmaxf(px[1], px[2]));
                    if ((mx + 1.0f) * 127.5f < 100.0f) continue;
                    area++, sx += x + 0.5, sy += y + 0.5;
                    sr += (px[0] + 1) * 127.5, sg += (px[1] + 1) * 127.5, sb += (px[2] + 1) * 127.5;
                }
            if (area == 0) area = 1;
            double dr = sr / area - rgb[at[0]][0], dg = sg / area - rgb[at[0]][1],
                   db = sb / area - rgb[at[0]][2];
            img_bad[0] += sqrt(dr * dr + dg * dg + db * db) > 25.0;
            img_bad[2] += at[2] ? area < 100 : area > 90;
            img_bad[3] +=
                fabs(sx / area - cx[at[3]] * 32) > 3.5 || fabs(sy / area - cy[at[3]] * 32) > 3.5;
            // shape: fill ratio of the bounding box tells circle/square/triangle/cross apart
            int x0 = 32, x1 = -1, y0 = 32, y1 = -1;
            for (int y = 0; y < 32; y++)
                for (int x = 0; x < 32; x++) {
                    const float *px = im + (y * 32 + x) * 3;
                    if ((fmaxf(px[0], fmaxf(px[1], px[2])) + 1.0f) * 127.5f < 100.0f) continue;
                    if (x < x0) x0 = x;
                    if (x > x1) x1 = x;
                    if (y < y0) y0 = y;
                    if (y > y1) y1 = y;
                }
            // shape: a triangle (apex up) has far fewer pixels in the top third of its box
            // than in the bottom third; of the rest, a square fills its bounding box, a
            // circle about 0.7-0.87 of it and a cross 0.42-0.61 (measured on this set)
            int bw = x1 - x0 + 1, bh = y1 - y0 + 1, top = 0, bottom = 0;
            for (int y = y0; y <= y1; y++)
                for (int x = x0; x <= x1; x++) {
                    const float *px = im + (y * 32 + x) * 3;
                    if ((fmaxf(px[0], fmaxf(px[1], px[2])) + 1.0f) * 127.5f < 100.0f) continue;
                    if (3 * (y - y0) < bh) top++;
                    if (3 * (y1 - y) < bh) bottom++;
                }
            double fill = (double)area / (bw * bh);
            int shape = top < 0.48 * bottom ? 2 : fill > 0.95 ? 1 : fill > 0.65 ? 0 : 3;
            img_bad[1] += shape != at[1];
        }
        if (b.has_audio[i]) {
            n_aud++;
            const float *ft = b.audio + (size_t)i * b.audio_F * 32;  // (F, 32)
            // colour: the loudest band above the drones, over the whole clip
            double e[32] = {0};
            for (int t = 0; t < b.audio_F; t++)
                for (int m = 0; m < 32; m++) e[m] = fmax(e[m], ft[t * 32 + m]);
            // position: the loudest low band (drones lie in bands 2..7) in its quietest
            // frame, since the drone never stops and the beeps do
            double q[32];
            for (int m = 0; m < 32; m++) {
                q[m] = 1e9;
                for (int t = 0; t < b.audio_F; t++) q[m] = fmin(q[m], ft[t * 32 + m]);
            }
            int lo_b = 8, best = lo_b, dbest = 0;
            for (int m = lo_b; m < 32; m++)
                if (e[m] > e[best]) best = m;
            for (int m = 0; m < lo_b; m++)
                if (q[m] > q[dbest]) dbest = m;
            int want_b = 0, want_d = 0;
            for (int m = 1; m < 32; m++) {
                double cm = mel_max * (m + 1) / 33;
                if (fabs(cm - test_hz_to_mel(beep_hz[at[0]])) <
                    fabs(mel_max * (want_b + 1) / 33 - test_hz_to_mel(beep_hz[at[0]])))
                    want_b = m;
                if (fabs(cm - test_hz_to_mel(drone_hz[at[3]])) <
                    fabs(mel_max * (want_d + 1) / 33 - test_hz_to_mel(drone_hz[at[3]])))
                    want_d = m;
            }
            aud_bad[0] += abs(best - want_b) > 1;
            // beeps: runs of frames where the beep band is well above its floor
            int runs = 0, on = 0, on_frames = 0;
            for (int t = 0; t < b.audio_F; t++) {
                int now = ft[t * 32 + best] > e[best] - 1.5;
                runs += now && !on;
                on_frames += now;
                on = now;
            }
            aud_bad[1] += runs != at[1] + 1;
            double per = (double)on_frames / (runs ? runs : 1);
            aud_bad[2] += at[2] ? per < 3.25 : per > 3.25;  // measured: 2-2.5 vs 4-5
            aud_bad[3] += abs(dbest - want_d) > 0;
        }
    }
    TEST_CHECK(tc, bad_caption == 0, "%d captions do not name each attribute once", bad_caption);
    TEST_CHECK(tc, both == 0 && no_img > 10 && no_img < 55 && no_aud > 10 && no_aud < 55,
               "about 10%% without image (%d), 10%% without audio (%d), never both (%d)", no_img,
               no_aud, both);
    for (int k = 0; k < 4; k++) {
        TEST_CHECK(tc, img_bad[k] == 0, "image: %s wrong in %d of %d", data_synth_attr_names[k],
                   img_bad[k], n_img);
        TEST_CHECK(tc, aud_bad[k] == 0, "audio: %s wrong in %d of %d", data_synth_attr_names[k],
                   aud_bad[k], n_aud);
    }
    data_batch_free(&b);
    data_featurizer_free(f);
    data_dataset_close(tr);
    data_dataset_close(va);
}

// ---------------------------------------------------------------------------------------
// Issue 16, item 9: what HDF5 gets to see. Each open runs in a child process so that a
// crash or a hang (HDF5 on damaged bytes, a FIFO) is one failed check, not a dead test run.
// The child writes its rc and message to a pipe; the parent gives it 20 s.
static int open_in_child(const char *dir, int mode, uid_t as_uid, mm_err *err, int *crashed) {
    int fds[2];
    *crashed = 0;
    if (pipe(fds) != 0) return mm_fail(err, "pipe failed");
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        alarm(20);
        if (as_uid != (uid_t)-1 && setuid(as_uid) != 0) _exit(3);
        mm_err e = {{0}};
        int rc = open_try(dir, mode, &e);
        char out[MM_ERR_LEN + 4];
        int k = snprintf(out, sizeof(out), "%c%s", rc == 0 ? '0' : '1', e.msg);
        if (write(fds[1], out, (size_t)k) != k) _exit(4);
        _exit(0);
    }
    close(fds[1]);
    char buf[MM_ERR_LEN + 4] = {0};
    size_t got = 0;
    ssize_t r;
    while (got < sizeof(buf) - 1 && (r = read(fds[0], buf + got, sizeof(buf) - 1 - got)) > 0)
        got += (size_t)r;
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || got == 0) {
        *crashed = 1;
        return mm_fail(err, "child died (%s %d)", WIFSIGNALED(st) ? "signal" : "exit",
                       WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
    }
    memcpy(err->msg, buf + 1, sizeof(err->msg) - 1);
    err->msg[sizeof(err->msg) - 1] = 0;
    return buf[0] == '0' ? 0 : -1;
}

static void test_checksum_first(test_counts *tc, const char *root) {
    char good[4096], d[4096], p[4096];
    mm_err err;
    path_join(good, sizeof(good), root, "ckfirst");
    TEST_CHECK(tc, write_small(good, 12, 12, 1, &err) == 0, "write: %s", err.msg);
    path_join(d, sizeof(d), root, "ckfirst_bad");
    TEST_CHECK(tc, copy_dir(good, d) == 0, "copy %s", d);
    path_join(p, sizeof(p), d, "shard_00000.h5");
    // Single-bit flips over the metadata at the start of the file and a stride through the
    // rest: with verify, always "checksum mismatch"; without, data or an error that names
    // the mismatch (never a misleading HDF5 reason alone), and never a crash.
    long size = file_size(p);
    int n_flips = 0, v_bad = 0, nv_bad = 0, crashes = 0;
    for (long at = 0; at < size; at += at < 4096 ? 29 : 997) {
        int fd = open(p, O_RDWR);
        unsigned char c;
        if (fd < 0 || pread(fd, &c, 1, at) != 1) break;
        unsigned char flipped = (unsigned char)(c ^ (1u << (at % 8)));
        if (pwrite(fd, &flipped, 1, at) != 1) break;
        int crashed;
        int rc = open_in_child(d, DATA_OPEN_VERIFY, (uid_t)-1, &err, &crashed);
        if (rc == 0 || !strstr(err.msg, "checksum mismatch") ||
            !strstr(err.msg, "shard_00000.h5")) {
            if (v_bad++ == 0)
                TEST_CHECK(tc, 0, "verify, bit flipped at %ld: want checksum mismatch: %s", at,
                           rc ? err.msg : "opened");
        }
        crashes += crashed;
        rc = open_in_child(d, DATA_OPEN_NO_VERIFY, (uid_t)-1, &err, &crashed);
        crashes += crashed;
        if (!crashed && rc != 0 &&
            (!strstr(err.msg, "checksum mismatch") || strchr(err.msg, '\n'))) {
            if (nv_bad++ == 0)
                TEST_CHECK(tc, 0, "no verify, bit flipped at %ld: error without the cause: %s", at,
                           err.msg);
        }
        if (pwrite(fd, &c, 1, at) != 1) break;
        close(fd);
        n_flips++;
    }
    TEST_CHECK(tc, n_flips > 100 && v_bad == 0 && nv_bad == 0 && crashes == 0,
               "%d bit flips: %d verify misreports, %d no-verify misreports, %d crashes", n_flips,
               v_bad, nv_bad, crashes);

    // A schema-only open (the trainer's probe) reads index.json alone: a damaged shard is the
    // real open's business, and its samples cannot be read through the probe.
    flip_byte(p, 200);
    data_dataset *ds = NULL;
    TEST_CHECK(tc, data_dataset_open(&ds, d, DATA_OPEN_SCHEMA, &err) == 0, "schema open: %s",
               err.msg);
    if (ds) {
        TEST_CHECK(tc, data_dataset_schema(ds)->n_samples == 12, "schema from index.json");
        uint8_t img[SM_H * SM_W * SM_C];
        data_raw_info info;
        TEST_CHECK(tc,
                   data_dataset_read_raw(ds, 0, img, NULL, NULL, &info, &err) == -1 &&
                       strstr(err.msg, "schema only"),
                   "schema-only dataset refuses reads: %s", err.msg);
        data_dataset_close(ds);
    }
    expect_fail(tc, "probe then verify", open_try(d, DATA_OPEN_VERIFY, &err), &err,
                "shard_00000.h5", "checksum mismatch");

    // A FIFO where a shard should be: refused at once, with or without verify (not a hang).
    int crashed;
    unlink(p);
    TEST_CHECK(tc, mkfifo(p, 0644) == 0, "mkfifo");
    for (int mode = 0; mode <= 1; mode++) {
        int rc = open_in_child(d, mode, (uid_t)-1, &err, &crashed);
        TEST_CHECK(tc,
                   rc == -1 && !crashed && strstr(err.msg, "shard_00000.h5") &&
                       strstr(err.msg, "not a regular file"),
                   "FIFO shard (verify %d): %s", mode, err.msg);
    }
    unlink(p);

    // A shard this user may not read: "permission denied", not "not a readable HDF5 file".
    // As root the check runs in a child that drops to nobody (65534).
    path_join(d, sizeof(d), root, "ckfirst_perm");
    TEST_CHECK(tc, copy_dir(good, d) == 0, "copy %s", d);
    chmod(d, 0755);
    chmod(root, 0755);
    path_join(p, sizeof(p), d, "shard_00000.h5");
    chmod(p, 0);
    char ix[4096];
    path_join(ix, sizeof(ix), d, "index.json");
    chmod(ix, 0644);
    uid_t as = getuid() == 0 ? (uid_t)65534 : (uid_t)-1;
    for (int mode = 0; mode <= 1; mode++) {
        int rc = open_in_child(d, mode, as, &err, &crashed);
        TEST_CHECK(tc,
                   rc == -1 && !crashed && strstr(err.msg, "shard_00000.h5") &&
                       strstr(err.msg, "permission denied") && !strstr(err.msg, "HDF5"),
                   "unreadable shard (verify %d): %s", mode, err.msg);
    }
    chmod(p, 0644);
    chmod(root, 0700);
}

int main(void) {
    test_counts tc = {0, 0};
    char root[] = "/tmp/mmtrain_test_data_XXXXXX";
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    test_roundtrip(&tc, root);
    test_logmel(&tc);
    test_bad_files(&tc, root);
    test_checksum_first(&tc, root);
    test_loader_read_error(&tc, root);
    test_permutation(&tc);
    test_loader(&tc, root);
    test_tokens(&tc);
    test_scorer(&tc);
    test_synth(&tc, root);
    rm_dir(root);
    return test_finish(&tc);
}
