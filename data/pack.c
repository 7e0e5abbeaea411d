// pack.c: `mmdata pack` and `mmdata inspect`: how a user's folder of images, sounds and
// captions becomes a dataset mmtrain trains on, and how they look inside one afterwards.
//
// Packing (the rules are in data/FORMAT.md "Packing"):
//   1. the manifest is read whole (data/manifest.c), or two (a training and a val manifest,
//      given or found in a Hugging Face-style folder); each record is one sample, and its
//      line number becomes the sample_id, so any sample can be traced back to its line;
//   2. what the schema does not fix is taken from the data: the longest caption (text_max)
//      and the longest clip (audio_len), both capped, read on several threads first;
//   3. without a val manifest the records are split into train and val by a seeded
//      permutation of the record indices (data_permutation), before anything is decoded, so
//      the split depends only on the manifest and the seed, never on which samples turn out
//      to be bad or on threads;
//   4. worker threads decode samples (data/media.c) into a ring of slots; the calling thread
//      takes them in manifest order and writes them (data_writer_*), so the dataset's bytes
//      do not depend on the number of threads;
//   5. everything is written into "<out>.packing-<pid>" beside <out> and renamed to <out>
//      only when complete: a failed or interrupted pack never leaves something at <out> that
//      looks like a dataset (an interrupted one leaves the .packing folder, which says so).
//
// Bad samples: with DATA_PACK_FAIL the first one in manifest order stops the job (malformed
// manifest lines are checked before any decoding); with DATA_PACK_SKIP each is listed in
// <out>/skipped.tsv, the first few are printed as warnings, and the summary counts them.
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <pthread.h>
#include <sndfile.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "data.h"
#include "data_internal.h"

#define PATH_CAP 4200
enum { WARN_SHOWN = 10 };  // skipped samples printed as warnings; the rest only in the report

void data_pack_default(data_pack_cfg *c) {
    memset(c, 0, sizeof(*c));
    data_synth_cfg sc;
    data_synth_default(&sc);  // the defaults are the synthetic set's, so configs/tiny.yaml fits
    c->img_h = sc.synth_h;
    c->img_w = sc.synth_w;
    c->img_c = 3;
    c->audio_rate = sc.audio_rate;
    c->audio_len = 0;  // from the clips
    c->text_max = 0;   // from the captions
    c->cut_captions = -1;
    c->shard_size = 500;
    c->val_fraction = -1;  // 0.1, or none with a val manifest
    c->seed = 1;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    c->threads = cpus < 1 ? 1 : cpus > 16 ? 16 : (int)cpus;
    c->on_error = DATA_PACK_FAIL;
}

// ---------------------------------------------------------------------------------------
// Small helpers: TSV fields (in a data_strbuf), recursive removal, folder sizes.
// A TSV field: tab, line breaks and backslash escaped so one sample stays one line.
static void sb_tsv_field(data_strbuf *sb, const char *s) {
    for (; *s; s++) {
        if (*s == '\t') data_sb_printf(sb, "\\t");
        else if (*s == '\n') data_sb_printf(sb, "\\n");
        else if (*s == '\r') data_sb_printf(sb, "\\r");
        else if (*s == '\\') data_sb_printf(sb, "\\\\");
        else data_sb_printf(sb, "%c", *s);
    }
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;  // go on: remove as much as possible
}

static void remove_tree(const char *path) {
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static uint64_t dir_bytes(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    uint64_t total = 0;
    struct dirent *e;
    char p[PATH_CAP];
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        if (e->d_name[0] != '.' && stat(p, &st) == 0 && S_ISREG(st.st_mode))
            total += (uint64_t)st.st_size;
    }
    closedir(d);
    return total;
}

// 0 when path does not exist or is an empty directory.
static int check_out_free(const char *path, mm_err *err) {
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno == ENOENT) return 0;
        return mm_fail(err, "%s: %s", path, strerror(errno));
    }
    if (!S_ISDIR(st.st_mode)) return mm_fail(err, "%s: exists and is not a directory", path);
    DIR *d = opendir(path);
    if (!d) return mm_fail(err, "%s: cannot open directory: %s", path, strerror(errno));
    struct dirent *e;
    int used = 0;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) used = 1;
    closedir(d);
    if (used) return mm_fail(err, "%s: directory is not empty (refusing to mix datasets)", path);
    return 0;
}

static void fsync_dir_of(const char *path) {
    char dir[PATH_CAP];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(dir, sizeof(dir), ".");
    FILE *f = fopen(dir, "r");
    if (f) {
        fsync(fileno(f));
        fclose(f);
    }
}

// ---------------------------------------------------------------------------------------
// Where the records come from: a manifest (and maybe a val manifest), or a Hugging Face-style
// folder (FORMAT.md "Folders").

// DIR/metadata.jsonl or DIR/metadata.csv into out: 1 found, 0 neither, -1 both (err).
static int find_metadata(const char *dir, char *out, size_t cap, mm_err *err) {
    char j[PATH_CAP + 32], c[PATH_CAP + 32];
    if (snprintf(j, sizeof(j), "%s/metadata.jsonl", dir) >= (int)cap)
        return mm_fail(err, "%s: path too long", dir);
    snprintf(c, sizeof(c), "%s/metadata.csv", dir);
    struct stat st;
    int hj = stat(j, &st) == 0, hc = stat(c, &st) == 0;
    if (hj && hc)
        return mm_fail(err, "%s: holds both metadata.jsonl and metadata.csv (keep one)", dir);
    if (!hj && !hc) return 0;
    memcpy(out, hj ? j : c, strlen(hj ? j : c) + 1);  // fits: checked above
    return 1;
}

// The training manifest into train, the val manifest (or "") into val.
static int resolve_sources(const data_pack_cfg *c, char *train, char *val, size_t cap,
                           mm_err *err) {
    val[0] = '\0';
    if (c->val_manifest) snprintf(val, cap, "%s", c->val_manifest);
    if (!c->folder) {
        snprintf(train, cap, "%s", c->manifest);
        return 0;
    }
    char d[PATH_CAP];
    int r;
    if (!c->train_split) {  // DIR/metadata.*: one set, val by fraction or its own manifest
        if ((r = find_metadata(c->folder, train, cap, err)) < 0) return -1;
        if (r == 1 && c->val_split && strcmp(c->val_split, "none") != 0)
            return mm_fail(err,
                           "%s: --val-split %s: the folder holds metadata itself, not in "
                           "split subfolders",
                           c->folder, c->val_split);
        if (r == 1) return 0;
    }
    const char *tn = c->train_split ? c->train_split : "train";
    snprintf(d, sizeof(d), "%s/%s", c->folder, tn);
    if ((r = find_metadata(d, train, cap, err)) < 0) return -1;
    if (r == 0 && c->train_split)
        return mm_fail(err, "%s: no metadata.jsonl or metadata.csv (--train-split %s)", d, tn);
    if (r == 0)
        return mm_fail(err,
                       "%s: no metadata.jsonl or metadata.csv in it or in its train/ (a "
                       "Hugging Face folder: DIR/metadata.jsonl, or DIR/train/metadata.jsonl "
                       "beside DIR/test/ or DIR/validation/)",
                       c->folder);
    if (val[0] || (c->val_split && strcmp(c->val_split, "none") == 0)) return 0;
    if (c->val_split) {
        snprintf(d, sizeof(d), "%s/%s", c->folder, c->val_split);
        if ((r = find_metadata(d, val, cap, err)) < 0) return -1;
        if (r == 0)
            return mm_fail(err, "%s: no metadata.jsonl or metadata.csv (--val-split %s)", d,
                           c->val_split);
        return 0;
    }
    // a held-out validation split is preferred to test, which is for the final evaluation
    static const char *const names[] = {"validation", "valid", "val", "dev", "test"};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        if (strcmp(names[k], tn) == 0) continue;
        snprintf(d, sizeof(d), "%s/%s", c->folder, names[k]);
        if ((r = find_metadata(d, val, cap, err)) != 0) return r < 0 ? -1 : 0;
    }
    return 0;  // no val split: it is split off the training records
}

// ---------------------------------------------------------------------------------------
// The packer: records, the ring of decoded samples, the writers.

// One record to pack, in the order they are written: the training manifest's, then the val
// manifest's.
typedef struct {
    const data_manifest *m;
    data_manifest_rec *r;
    uint8_t val;  // goes to out/val
} item;

typedef struct {
    int done;             // decoded and waiting for the writer (guarded by packer.mu)
    uint8_t *img;         // (H, W, C)
    int16_t *pcm;         // (audio_len)
    char *text;           // (text_max + 1)
    int has_img, has_aud, audio_n, trimmed, text_n, text_cut;
    int bad;              // the sample is bad: bad_path (may be NULL) and why
    const char *bad_path;
    mm_err why;
} slot;

typedef struct {
    const data_pack_cfg *c;  // with the schema's audio_len and text_max resolved
    const item *it;
    int64_t n;  // items
    int cut;    // cut captions over text_max (else they are bad samples)
    data_media *media;
    int K;         // slots in the ring
    slot *slots;   // (K); record i uses slot i % K
    pthread_mutex_t mu;
    pthread_cond_t ready;  // a slot became done
    pthread_cond_t space;  // the writer freed a slot, or stop was set
    int64_t next;          // next record a worker takes
    int64_t written;       // records the writer has taken out of the ring
    int stop;
} packer;

static void decode(packer *p, int64_t i, slot *s) {
    const data_pack_cfg *c = p->c;
    const data_manifest_rec *r = p->it[i].r;
    s->has_img = s->has_aud = s->audio_n = s->trimmed = s->text_n = s->text_cut = s->bad = 0;
    s->bad_path = NULL;
    s->text[0] = '\0';
    if (r->error) {
        s->bad = 1;
        mm_fail(&s->why, "%s", r->error);
        return;
    }
    const char *img = r->field[DATA_MF_IMAGE], *aud = r->field[DATA_MF_AUDIO];
    const char *cap = r->field[DATA_MF_CAPTION], *cap_file = r->field[DATA_MF_CAPTION_FILE];
    if (!img && !aud && !cap && !cap_file) {
        s->bad = 1;
        mm_fail(&s->why, "empty sample: no image, audio or caption");
        return;
    }
    if (cap || cap_file) {
        char *from_file = NULL;
        size_t len = r->caption_n;
        if (!cap && data_caption_read(cap_file, &from_file, &len, &s->why)) {
            s->bad = 1, s->bad_path = cap_file;
            return;
        }
        const char *t = cap ? cap : from_file;
        size_t keep = len;
        if (p->cut && data_caption_check(t, len, INT32_MAX, &s->why) == 0)
            keep = data_caption_cut(t, len, (size_t)c->text_max);
        int bad = data_caption_check(t, keep, c->text_max, &s->why);
        if (!bad) {
            memcpy(s->text, t, keep);
            s->text[keep] = '\0';
            s->text_n = (int)keep;
            s->text_cut = keep < len;
        }
        free(from_file);
        if (bad) {
            s->bad = 1, s->bad_path = cap ? "caption" : cap_file;
            return;
        }
    }
    if (img) {
        if (data_image_load(img, c->img_h, c->img_w, c->img_c, s->img, &s->why)) {
            s->bad = 1, s->bad_path = img;
            return;
        }
        s->has_img = 1;
    }
    if (aud) {
        data_audio_info ai;
        if (data_audio_load(p->media, aud, c->audio_rate, c->audio_len, s->pcm, &ai, &s->why)) {
            s->bad = 1, s->bad_path = aud;
            return;
        }
        s->has_aud = 1, s->audio_n = ai.n, s->trimmed = ai.trimmed;
    }
}

static void *worker(void *arg) {
    packer *p = arg;
    int64_t n = p->n;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        while (!p->stop && p->next < n && p->next >= p->written + p->K)
            pthread_cond_wait(&p->space, &p->mu);
        if (p->stop || p->next >= n) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        int64_t i = p->next++;
        pthread_mutex_unlock(&p->mu);
        slot *s = &p->slots[i % p->K];
        decode(p, i, s);
        pthread_mutex_lock(&p->mu);
        s->done = 1;
        pthread_cond_broadcast(&p->ready);
        pthread_mutex_unlock(&p->mu);
    }
}

// "FILE:LINE: PATH: reason" (or "FILE:LINE:COL: reason" for a malformed record, "FILE:LINE:
// reason" for an empty one).
static void bad_line(char *out, size_t cap, const data_manifest *m, const data_manifest_rec *r,
                     const char *path, const char *why) {
    if (r->error && r->col > 0)
        snprintf(out, cap, "%s:%d:%d: %s", m->path, r->line, r->col, why);
    else if (r->error)
        snprintf(out, cap, "%s:%d: %s", m->path, r->line, why);
    else if (path)
        snprintf(out, cap, "%s:%d: %s: %s", m->path, r->line, path, why);
    else
        snprintf(out, cap, "%s:%d: %s", m->path, r->line, why);
}

// Duplicate records (FORMAT.md "Packing"): a record naming the same image, audio and caption
// (inline text or caption file) as an earlier one would put one sample in the dataset twice,
// or in train and val at once (also across a training and a val manifest). Paths are
// compared after realpath (so "a.png" and "./a.png" are one file). Content is not hashed: two
// files with the same bytes are two samples.
typedef struct {
    char *key;
    size_t n;
    int64_t i;  // item
} dup_key;

static int cmp_dup_key(const void *a, const void *b) {
    const dup_key *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    if (x->n != y->n) return x->n < y->n ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

// Marks each later copy as a malformed record "duplicate of line K (...)" (col 0: none).
// Returns how many were marked.
static int mark_duplicates(item *it, int64_t n) {
    dup_key *k = mm_calloc((size_t)n + 1, sizeof(dup_key));
    int64_t nk = 0;
    int marked = 0;
    for (int64_t i = 0; i < n; i++) {
        data_manifest_rec *r = it[i].r;
        if (r->error) continue;
        data_strbuf sb = {mm_malloc(256), 0, 256};
        for (int f = 0; f < DATA_MF_N; f++) {
            data_sb_printf(&sb, "%d:", f);
            if (!r->field[f]) continue;
            if (f == DATA_MF_CAPTION) {  // may hold any byte: copied with its length
                data_sb_printf(&sb, "%zu:", r->caption_n);
                if (sb.cap - sb.n < r->caption_n + 2) {
                    sb.cap = sb.n + r->caption_n + 256;
                    sb.buf = realloc(sb.buf, sb.cap);
                    MM_CHECK(sb.buf, "out of memory");
                }
                memcpy(sb.buf + sb.n, r->field[f], r->caption_n);
                sb.n += r->caption_n;
            } else {
                char *real = realpath(r->field[f], NULL);
                data_sb_printf(&sb, "%zu:%s", strlen(real ? real : r->field[f]),
                               real ? real : r->field[f]);
                free(real);
            }
            data_sb_printf(&sb, "%c", '\x1f');
        }
        k[nk++] = (dup_key){sb.buf, sb.n, i};
    }
    qsort(k, (size_t)nk, sizeof(dup_key), cmp_dup_key);
    for (int64_t a = 0, b; a < nk; a = b) {
        for (b = a + 1; b < nk && k[b].n == k[a].n && !memcmp(k[b].key, k[a].key, k[a].n); b++) {
            const item *first = &it[k[a].i];
            data_manifest_rec *r = it[k[b].i].r;
            char why[PATH_CAP + 128];
            if (first->m == it[k[b].i].m)
                snprintf(why, sizeof(why), "duplicate of line %d (same image, audio and caption)",
                         first->r->line);
            else  // a val record that is also a training one
                snprintf(why, sizeof(why),
                         "duplicate of %s:%d (same image, audio and caption in train and val)",
                         first->m->path, first->r->line);
            r->error = strdup(why);
            MM_CHECK(r->error, "out of memory");
            r->col = 0;
            marked++;
        }
    }
    for (int64_t i = 0; i < nk; i++) free(k[i].key);
    free(k);
    return marked;
}

// ---------------------------------------------------------------------------------------
// The survey: what text_max and audio_len are taken from when not given (FORMAT.md
// "Packing"): every caption's length and every clip's length at the dataset's rate, read
// from the headers on several threads. Files that cannot be read are left out here; the
// packing proper reports them.
const int data_pack_pcts[DATA_PACK_N_PCT] = {50, 90, 95, 99, 100};

typedef struct {
    const item *it;
    int64_t n, next;
    int rate, text, audio;  // what to measure
    data_media *media;
    int64_t *clip;     // (n) length at rate, -1 when none
    int64_t *caption;  // (n) bytes, -1 when none
    pthread_mutex_t mu;
} survey;

static void *survey_worker(void *arg) {
    survey *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        int64_t i = s->next++;
        pthread_mutex_unlock(&s->mu);
        if (i >= s->n) return NULL;
        const data_manifest_rec *r = s->it[i].r;
        s->clip[i] = s->caption[i] = -1;
        if (r->error) continue;
        mm_err ignored;
        if (s->audio && r->field[DATA_MF_AUDIO]) {
            int64_t len;
            if (data_audio_probe(s->media, r->field[DATA_MF_AUDIO], s->rate, &len, &ignored) == 0)
                s->clip[i] = len;
        }
        if (!s->text) continue;
        if (r->field[DATA_MF_CAPTION]) {
            if (!data_utf8_why((const uint8_t *)r->field[DATA_MF_CAPTION], r->caption_n,
                               &(size_t){0}))
                s->caption[i] = (int64_t)r->caption_n;
        } else if (r->field[DATA_MF_CAPTION_FILE]) {
            char *t;
            size_t tn, at;
            if (data_caption_read(r->field[DATA_MF_CAPTION_FILE], &t, &tn, &ignored) == 0) {
                if (!data_utf8_why((const uint8_t *)t, tn, &at)) s->caption[i] = (int64_t)tn;
                free(t);
            }
        }
    }
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

// Fills c->text_max and c->audio_len where they are 0, and the survey's part of st.
static void survey_schema(data_pack_cfg *c, const item *it, int64_t n, data_media *media,
                          data_pack_stats *st) {
    survey s = {.it = it,
                .n = n,
                .rate = c->audio_rate,
                .text = c->text_max == 0,
                .audio = c->audio_len == 0,
                .media = media};
    if (!s.text && !s.audio) return;
    s.clip = mm_malloc(sizeof(int64_t) * (size_t)n);
    s.caption = mm_malloc(sizeof(int64_t) * (size_t)n);
    pthread_mutex_init(&s.mu, NULL);
    int nt = c->threads < n ? c->threads : (int)n;
    pthread_t *tid = mm_calloc((size_t)nt, sizeof(pthread_t));
    for (int j = 0; j < nt; j++)
        MM_CHECK(pthread_create(&tid[j], NULL, survey_worker, &s) == 0, "pthread_create failed");
    for (int j = 0; j < nt; j++) pthread_join(tid[j], NULL);
    free(tid);
    pthread_mutex_destroy(&s.mu);
    if (s.text) {
        int64_t longest = 0;
        for (int64_t i = 0; i < n; i++) longest = s.caption[i] > longest ? s.caption[i] : longest;
        st->text_auto = 1;
        st->text_longest = (int)(longest < INT32_MAX ? longest : INT32_MAX);
        c->text_max = longest < 1                    ? 1
                      : longest > DATA_PACK_TEXT_CAP ? DATA_PACK_TEXT_CAP
                                                     : (int)longest;
    }
    if (s.audio) {
        int64_t k = 0;  // the clips' lengths, sorted, at the front of s.clip
        for (int64_t i = 0; i < n; i++)
            if (s.clip[i] >= 0) s.clip[k++] = s.clip[i];
        qsort(s.clip, (size_t)k, sizeof(int64_t), cmp_i64);
        st->audio_auto = 1;
        st->clips = (uint64_t)k;
        for (int j = 0; j < DATA_PACK_N_PCT && k > 0; j++) {
            int64_t rank = (data_pack_pcts[j] * k + 99) / 100;  // nearest rank
            st->clip_pct[j] = s.clip[rank < 1 ? 0 : rank - 1];
            for (int64_t i = 0; i < k; i++) st->clip_cut[j] += s.clip[i] > st->clip_pct[j];
        }
        if (k == 0) {  // no sound at all: the synthetic set's length
            data_synth_cfg sc;
            data_synth_default(&sc);
            c->audio_len = sc.audio_len;
        } else {
            const int64_t R = DATA_PACK_AUDIO_ROUND;
            int64_t cap = (int64_t)DATA_PACK_AUDIO_CAP_S * c->audio_rate / R * R;
            int64_t len = (s.clip[k - 1] + R - 1) / R * R;
            if (cap < 2 * R) cap = 2 * R;
            c->audio_len = (int)(len < 2 * R ? 2 * R : len > cap ? cap : len);
        }
    }
    free(s.clip);
    free(s.caption);
}

static void progress(FILE *log, uint64_t done, uint64_t n, uint64_t skipped, double t) {
    enum { BAR = 30 };
    char bar[BAR + 1];
    int fill = n ? (int)(BAR * done / n) : BAR;
    for (int k = 0; k < BAR; k++) bar[k] = k < fill ? '#' : '.';
    bar[BAR] = '\0';
    fprintf(log, "\rpack [%s] %llu/%llu samples  %.1f samples/s  skipped %llu ", bar,
            (unsigned long long)done, (unsigned long long)n, t > 0 ? done / t : 0.0,
            (unsigned long long)skipped);
    fflush(log);
}

static int check_cfg(const data_pack_cfg *c, mm_err *err) {
    if (!!(c->manifest && c->manifest[0]) == !!(c->folder && c->folder[0]))
        return mm_fail(err, "pack: give a manifest or a folder (one of them)");
    if (!c->out || !c->out[0]) return mm_fail(err, "pack: no output folder given");
    if (!c->folder && (c->train_split || c->val_split))
        return mm_fail(err, "pack: a split by name needs a folder");
    if (c->val_manifest && c->val_split)
        return mm_fail(err, "pack: a val manifest and a val split exclude each other");
    if (c->train_split && c->val_split && strcmp(c->train_split, c->val_split) == 0)
        return mm_fail(err, "pack: the train and val splits are both '%s'", c->val_split);
    if (data_manifest_keys_check(&c->keys, err)) return -1;
    if (c->img_c != 1 && c->img_c != 3 && c->img_c != 4)
        return mm_fail(err, "pack: image channels %d: must be 1 (grey), 3 (RGB) or 4 (RGBA)",
                       c->img_c);
    if (c->shard_size < 1 || c->shard_size > 1000000)
        return mm_fail(err, "pack: shard size %d is out of range 1..1000000", c->shard_size);
    if (!(c->val_fraction >= 0 && c->val_fraction < 1) && c->val_fraction != -1)
        return mm_fail(err, "pack: val fraction %g must be in [0, 1)", c->val_fraction);
    if (c->threads < 1 || c->threads > 256)
        return mm_fail(err, "pack: threads %d is out of range 1..256", c->threads);
    if (c->on_error != DATA_PACK_FAIL && c->on_error != DATA_PACK_SKIP)
        return mm_fail(err, "pack: on_error must be fail or skip");
    return 0;
}

int data_pack(const data_pack_cfg *cfg, data_pack_stats *st, mm_err *err) {
    memset(st, 0, sizeof(*st));
    double t0 = mm_now();
    if (check_cfg(cfg, err)) return -1;
    // "out/" must name out itself, not a place inside it for the temporary folder
    char outp[PATH_CAP];
    if (snprintf(outp, sizeof(outp), "%s", cfg->out) >= (int)sizeof(outp) - 32)
        return mm_fail(err, "%s: path too long", cfg->out);
    for (size_t l = strlen(outp); l > 1 && outp[l - 1] == '/'; l--) outp[l - 1] = '\0';
    data_pack_cfg cc = *cfg;
    cc.out = outp;
    data_pack_cfg *c = &cc;
    if (check_out_free(c->out, err)) return -1;
    char *src[2] = {st->train_manifest, st->val_manifest};
    if (resolve_sources(c, src[0], src[1], DATA_PACK_PATH, err)) return -1;
    double frac = c->val_fraction;
    if (src[1][0] && frac > 0)
        return mm_fail(err,
                       "pack: --val-fraction %g would split val off the training records, "
                       "but val comes from %s (leave --val-fraction out%s)",
                       frac, src[1], c->folder ? ", or use --val-split none" : "");
    if (frac < 0) frac = src[1][0] ? 0 : 0.1;

    data_manifest m[2];
    memset(m, 0, sizeof(m));
    int n_man = src[1][0] ? 2 : 1;
    for (int j = 0; j < n_man; j++) {
        if (data_manifest_read(src[j], &c->keys, &m[j], err)) {
            if (j) data_manifest_free(&m[0]);
            return -1;
        }
        if (m[j].n == 0) {
            mm_fail(err, "%s: the manifest holds no samples", src[j]);
            for (int q = 0; q <= j; q++) data_manifest_free(&m[q]);
            return -1;
        }
    }
    int64_t n_items = m[0].n + (n_man > 1 ? m[1].n : 0);
    item *it = mm_calloc((size_t)n_items, sizeof(item));
    for (int64_t i = 0; i < n_items; i++) {
        int j = i >= m[0].n;
        it[i] = (item){&m[j], &m[j].rec[i - (j ? m[0].n : 0)], (uint8_t)j};
    }
    int n_dup = mark_duplicates(it, n_items);
    int rc = -1;
    data_writer *w[2] = {NULL, NULL};
    packer p;
    memset(&p, 0, sizeof(p));
    data_strbuf skipped = {mm_malloc(256), 0, 256};
    skipped.buf[0] = '\0';
    data_sb_printf(&skipped, "line\tpath\treason\n");
    int have_tmp = 0, threads_up = 0;
    pthread_t *tid = NULL;
    char tmp[PATH_CAP], path[PATH_CAP + 32];
    uint64_t n = (uint64_t)n_items, n_val = 0;
    if (c->on_error == DATA_PACK_FAIL) {  // a typo in the manifest: say so before decoding
        for (int64_t i = 0; i < n_items; i++) {
            const data_manifest_rec *r = it[i].r;
            if (!r->error) continue;
            if (r->col > 0)
                mm_fail(err, "%s:%d:%d: %s", it[i].m->path, r->line, r->col, r->error);
            else
                mm_fail(err,
                        "%s:%d: %s (%d duplicate record(s) in all; remove them or use "
                        "--on-error skip)",
                        it[i].m->path, r->line, r->error, n_dup);
            goto done;
        }
    }
    if (n_dup && c->log)
        fprintf(c->log, "warning: %s: %d duplicate record(s) skipped (listed in skipped.tsv)\n",
                m[n_man - 1].path, n_dup);
    st->records = n;

    // The schema: what is not given is taken from the data.
    p.media = data_media_new();
    survey_schema(c, it, n_items, p.media, st);
    data_schema schema = {0};
    schema.img_h = c->img_h, schema.img_w = c->img_w, schema.img_c = c->img_c;
    schema.audio_rate = c->audio_rate, schema.audio_len = c->audio_len;
    schema.text_max = c->text_max;
    snprintf(schema.tokenizer, sizeof(schema.tokenizer), "%s", DATA_TOKENIZER_NAME);
    if (data_schema_check(&schema, "pack", err)) goto done;
    st->text_max = c->text_max, st->audio_len = c->audio_len;

    // The split: a val manifest's records, or the first round(f * n) records of a seeded
    // permutation of the training manifest's.
    if (n_man > 1) {
        n_val = (uint64_t)m[1].n;
    } else {
        n_val = (uint64_t)llround(frac * (double)n);
        if (frac > 0 && n_val == 0) n_val = 1;
        if (frac > 0 && n_val >= n) {
            mm_fail(err,
                    "%s: --val-fraction %g leaves no training sample among %llu (use more "
                    "samples or --val-fraction 0)",
                    src[0], frac, (unsigned long long)n);
            goto done;
        }
        uint64_t *perm = mm_malloc(sizeof(uint64_t) * n);
        data_permutation(n, c->seed, 0, perm);
        for (uint64_t k = 0; k < n_val; k++) it[perm[k]].val = 1;
        free(perm);
    }

    // The temporary folder beside out.
    int k = snprintf(tmp, sizeof(tmp), "%s.packing-%ld", c->out, (long)getpid());
    if (k < 0 || (size_t)k >= sizeof(tmp) - 16) {
        mm_fail(err, "%s: path too long", c->out);
        goto done;
    }
    {  // parents of out, then the temporary folder itself
        char parent[PATH_CAP];
        snprintf(parent, sizeof(parent), "%s", c->out);
        char *slash = strrchr(parent, '/');
        if (slash && slash != parent) {
            *slash = '\0';
            if (mm_mkdirs(parent, err)) goto done;
        }
    }
    if (mkdir(tmp, 0755) != 0) {
        mm_fail(err, "%s: cannot create: %s", tmp, strerror(errno));
        goto done;
    }
    have_tmp = 1;
    snprintf(path, sizeof(path), "%s/train", tmp);
    if (data_writer_open(&w[0], path, &schema, c->shard_size, err)) goto done;
    if (n_val > 0) {
        snprintf(path, sizeof(path), "%s/val", tmp);
        if (data_writer_open(&w[1], path, &schema, c->shard_size, err)) goto done;
    }

    // Decoding threads and the ring.
    p.c = c, p.it = it, p.n = n_items;
    p.cut = c->cut_captions >= 0 ? c->cut_captions : st->text_auto;
    int nt = c->threads < n_items ? c->threads : (int)n_items;
    p.K = 4 * nt + 4;
    p.slots = mm_calloc((size_t)p.K, sizeof(slot));
    size_t img_n = (size_t)c->img_h * c->img_w * c->img_c;
    for (int j = 0; j < p.K; j++) {
        p.slots[j].img = mm_malloc(img_n);
        p.slots[j].pcm = mm_malloc(sizeof(int16_t) * (size_t)c->audio_len);
        p.slots[j].text = mm_malloc((size_t)c->text_max + 1);
    }
    pthread_mutex_init(&p.mu, NULL);
    pthread_cond_init(&p.ready, NULL);
    pthread_cond_init(&p.space, NULL);
    tid = mm_calloc((size_t)nt, sizeof(pthread_t));
    for (int j = 0; j < nt; j++) {
        MM_CHECK(pthread_create(&tid[j], NULL, worker, &p) == 0, "pthread_create failed");
        threads_up++;
    }

    // The writer: samples in manifest order.
    FILE *log = c->log;
    double last_draw = 0;
    int failed = 0;
    for (int64_t i = 0; i < n_items && !failed; i++) {
        slot *s = &p.slots[i % p.K];
        pthread_mutex_lock(&p.mu);
        while (!s->done) pthread_cond_wait(&p.ready, &p.mu);
        pthread_mutex_unlock(&p.mu);
        const data_manifest_rec *r = it[i].r;
        if (s->bad) {
            char line[2 * MM_ERR_LEN];
            bad_line(line, sizeof(line), it[i].m, r, s->bad_path, s->why.msg);
            if (c->on_error == DATA_PACK_FAIL) {
                mm_fail(err, "%s", line);
                failed = 1;
            } else {
                st->skipped++;
                if (log && st->skipped <= WARN_SHOWN) {
                    if (c->progress) fprintf(log, "\r\033[K");
                    fprintf(log, "warning: skipped: %s\n", line);
                }
                if (n_man > 1) {  // which manifest the line is in
                    sb_tsv_field(&skipped, it[i].m->path);
                    data_sb_printf(&skipped, ":");
                }
                data_sb_printf(&skipped, "%d\t", r->line);
                sb_tsv_field(&skipped, s->bad_path ? s->bad_path : "");
                data_sb_printf(&skipped, "\t");
                if (r->error) data_sb_printf(&skipped, "column %d: ", r->col);
                sb_tsv_field(&skipped, s->why.msg);
                data_sb_printf(&skipped, "\n");
            }
        } else {
            data_sample smp = {0};
            smp.sample_id = (uint64_t)r->line;
            smp.image = s->has_img ? s->img : NULL;
            smp.audio = s->has_aud ? s->pcm : NULL;
            smp.audio_n = s->audio_n;
            smp.text = s->text;
            smp.text_n = s->text_n;
            if (data_writer_add(w[it[i].val], &smp, err)) {
                failed = 1;
            } else {
                st->packed++;
                if (it[i].val)
                    st->val++;
                else st->train++;
                st->trimmed += (uint64_t)s->trimmed;
                st->captions_cut += (uint64_t)s->text_cut;
            }
        }
        pthread_mutex_lock(&p.mu);
        s->done = 0;
        p.written = i + 1;
        pthread_cond_broadcast(&p.space);
        pthread_mutex_unlock(&p.mu);
        double now = mm_now();
        if (log && c->progress && (now - last_draw >= 0.1 || i + 1 == n_items)) {
            progress(log, (uint64_t)i + 1, n, st->skipped, now - t0);
            last_draw = now;
        }
    }
    if (log && c->progress) fprintf(log, "\n");
    if (log && st->skipped > WARN_SHOWN)
        fprintf(log, "warning: ... and %llu more skipped samples (all are listed in %s/skipped.tsv)\n",
                (unsigned long long)(st->skipped - WARN_SHOWN), c->out);
    if (failed) goto done;
    if (st->train == 0) {
        mm_fail(err, "%s: no training sample is left: all %llu training records were skipped",
                src[0], (unsigned long long)(n - n_val));
        goto done;
    }
    if (n_val > 0 && st->val == 0) {
        mm_fail(err, "%s: no validation sample is left: all %llu val records were skipped%s",
                src[n_man - 1], (unsigned long long)n_val,
                n_man > 1 ? "" : " (use --val-fraction 0 for no val split)");
        goto done;
    }
    for (int j = 0; j < 2; j++) {
        data_writer *wj = w[j];
        w[j] = NULL;
        if (wj && data_writer_close(wj, err)) goto done;
    }
    if (c->on_error == DATA_PACK_SKIP) {
        snprintf(path, sizeof(path), "%s/skipped.tsv", tmp);
        if (mm_write_file_atomic(path, skipped.buf, skipped.n, err)) goto done;
    }
    {
        data_index ix;
        snprintf(path, sizeof(path), "%s/train", tmp);
        if (data_index_read(path, &ix, err)) goto done;
        st->train_shards = ix.n_shards;
        data_index_free(&ix);
        st->bytes = dir_bytes(path);
        if (n_val > 0) {
            snprintf(path, sizeof(path), "%s/val", tmp);
            if (data_index_read(path, &ix, err)) goto done;
            st->val_shards = ix.n_shards;
            data_index_free(&ix);
            st->bytes += dir_bytes(path);
        }
    }
    // rename(2) replaces an empty directory, which check_out_free allowed
    if (rename(tmp, c->out) != 0) {
        mm_fail(err, "%s: cannot rename %s to it: %s", c->out, tmp, strerror(errno));
        goto done;
    }
    have_tmp = 0;
    fsync_dir_of(c->out);
    rc = 0;
done:
    if (threads_up) {
        pthread_mutex_lock(&p.mu);
        p.stop = 1;
        pthread_cond_broadcast(&p.space);
        pthread_mutex_unlock(&p.mu);
        for (int j = 0; j < threads_up; j++) pthread_join(tid[j], NULL);
    }
    if (p.slots) {
        pthread_mutex_destroy(&p.mu);
        pthread_cond_destroy(&p.ready);
        pthread_cond_destroy(&p.space);
        for (int j = 0; j < p.K; j++) {
            free(p.slots[j].img);
            free(p.slots[j].pcm);
            free(p.slots[j].text);
        }
        free(p.slots);
    }
    free(tid);
    data_media_free(p.media);
    for (int j = 0; j < 2; j++) {
        mm_err ignored;
        if (w[j]) data_writer_close(w[j], &ignored);
    }
    if (have_tmp) remove_tree(tmp);
    free(skipped.buf);
    free(it);
    for (int j = 0; j < n_man; j++) data_manifest_free(&m[j]);
    st->seconds = mm_now() - t0;
    return rc;
}

// ---------------------------------------------------------------------------------------
// Inspect.
static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static double pct(uint64_t a, uint64_t b) {
    return b ? 100.0 * (double)a / (double)b : 0.0;
}

// One split: schema, counts, modalities, shards.
static int inspect_split(const char *dir, const char *name, FILE *out, mm_err *err) {
    data_index ix;
    if (data_index_read(dir, &ix, err)) return -1;
    data_dataset *ds;
    if (data_dataset_open(&ds, dir, 1, err)) {
        data_index_free(&ix);
        return -1;
    }
    const data_schema *s = data_dataset_schema(ds);
    fprintf(out, "%s: %llu sample%s in %d shard%s (%s)\n", name,
            (unsigned long long)s->n_samples, s->n_samples == 1 ? "" : "s", ix.n_shards,
            ix.n_shards == 1 ? "" : "s", dir);
    fprintf(out,
            "  schema: image %dx%dx%d uint8, audio %d Hz x %d samples int16 mono (%.3f s), "
            "captions <= %d bytes, tokenizer %s\n",
            s->img_h, s->img_w, s->img_c, s->audio_rate, s->audio_len,
            (double)s->audio_len / s->audio_rate, s->text_max, s->tokenizer);
    uint64_t tot[4] = {0}, both = 0, img_only = 0, aud_only = 0, neither = 0;  // img aud cap trim
    int rc = 0;
    for (int k = 0; k < ix.n_shards && rc == 0; k++) {
        const data_shard_info *sh = &ix.shards[k];
        uint64_t cnt[3] = {0};
        for (uint64_t i = sh->first; i < sh->first + sh->n; i++) {
            data_raw_info ri;
            if ((rc = data_dataset_read_raw(ds, i, NULL, NULL, NULL, &ri, err))) break;
            cnt[0] += (uint64_t)ri.has_image;
            cnt[1] += (uint64_t)ri.has_audio;
            cnt[2] += ri.text_n > 0;
            both += ri.has_image && ri.has_audio;
            img_only += ri.has_image && !ri.has_audio;
            aud_only += !ri.has_image && ri.has_audio;
            neither += !ri.has_image && !ri.has_audio;
        }
        for (int j = 0; j < 3; j++) tot[j] += cnt[j];
        if (rc == 0)
            fprintf(out,
                    "  %s: %llu sample%s from position %llu, crc32 %08x: image %llu, audio %llu, "
                    "caption %llu\n",
                    sh->file, (unsigned long long)sh->n, sh->n == 1 ? "" : "s",
                    (unsigned long long)sh->first,
                    (unsigned)sh->crc32, (unsigned long long)cnt[0], (unsigned long long)cnt[1],
                    (unsigned long long)cnt[2]);
    }
    if (rc == 0) {
        uint64_t N = s->n_samples;
        fprintf(out,
                "  modalities: image %llu (%.1f%%), audio %llu (%.1f%%), non-empty caption %llu "
                "(%.1f%%); image+audio %llu, image only %llu, audio only %llu, caption only %llu\n",
                (unsigned long long)tot[0], pct(tot[0], N), (unsigned long long)tot[1],
                pct(tot[1], N), (unsigned long long)tot[2], pct(tot[2], N),
                (unsigned long long)both, (unsigned long long)img_only,
                (unsigned long long)aud_only, (unsigned long long)neither);
    }
    data_dataset_close(ds);
    data_index_free(&ix);
    return rc;
}

int data_inspect(const char *dir, FILE *out, mm_err *err) {
    char p[PATH_CAP];
    snprintf(p, sizeof(p), "%s/index.json", dir);
    if (is_file(p)) return inspect_split(dir, "dataset", out, err);
    snprintf(p, sizeof(p), "%s/train/index.json", dir);
    if (!is_file(p))
        return mm_fail(err, "%s: not a dataset (neither index.json nor train/index.json is there)",
                       dir);
    snprintf(p, sizeof(p), "%s/train", dir);
    if (inspect_split(p, "train", out, err)) return -1;
    snprintf(p, sizeof(p), "%s/val/index.json", dir);
    if (is_file(p)) {
        snprintf(p, sizeof(p), "%s/val", dir);
        if (inspect_split(p, "val", out, err)) return -1;
    } else {
        fprintf(out, "val: none\n");
    }
    snprintf(p, sizeof(p), "%s/skipped.tsv", dir);
    FILE *f = fopen(p, "r");
    if (f) {
        long lines = -1;  // less the header
        int ch;
        while ((ch = fgetc(f)) != EOF) lines += ch == '\n';
        fclose(f);
        fprintf(out, "skipped when packing: %ld sample%s (listed in %s)\n", lines < 0 ? 0 : lines,
                lines == 1 ? "" : "s", p);
    }
    return 0;
}

// Writes a mono 16-bit WAV atomically (path.tmp, then rename).
static int wav_write(const char *path, const int16_t *pcm, int n, int rate, mm_err *err) {
    char tmp[PATH_CAP + 8];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    SF_INFO si;
    memset(&si, 0, sizeof(si));
    si.samplerate = rate;
    si.channels = 1;
    si.format = SF_FORMAT_WAV | SF_FORMAT_PCM_16;
    SNDFILE *sf = sf_open(tmp, SFM_WRITE, &si);
    if (!sf) return mm_fail(err, "%s: cannot write: %s", tmp, sf_strerror(NULL));
    sf_count_t wr = sf_writef_short(sf, pcm, n);
    int bad = wr != n ? 1 : 0;
    if (bad) mm_fail(err, "%s: write failed: %s", tmp, sf_strerror(sf));
    if (sf_close(sf) != 0 && !bad) bad = 1, mm_fail(err, "%s: close failed", tmp);
    if (!bad && rename(tmp, path) != 0) bad = 1, mm_fail(err, "%s: rename failed: %s", path,
                                                         strerror(errno));
    if (bad) unlink(tmp);
    return bad ? -1 : 0;
}

int data_inspect_sample(const char *dir, const char *split, uint64_t index, const char *out_dir,
                        FILE *out, mm_err *err) {
    char ds_dir[PATH_CAP], p[PATH_CAP];
    snprintf(p, sizeof(p), "%s/index.json", dir);
    if (split) {
        if (strcmp(split, "train") != 0 && strcmp(split, "val") != 0)
            return mm_fail(err, "split '%s': must be train or val", split);
        snprintf(ds_dir, sizeof(ds_dir), "%s/%s", dir, split);
    } else if (is_file(p)) {
        snprintf(ds_dir, sizeof(ds_dir), "%s", dir);
    } else {
        snprintf(ds_dir, sizeof(ds_dir), "%s/train", dir);
    }
    data_dataset *ds;
    if (data_dataset_open(&ds, ds_dir, 1, err)) return -1;
    const data_schema *s = data_dataset_schema(ds);
    size_t img_n = (size_t)s->img_h * s->img_w * s->img_c;
    uint8_t *img = mm_malloc(img_n);
    int16_t *pcm = mm_malloc(sizeof(int16_t) * (size_t)s->audio_len);
    char *text = mm_malloc((size_t)s->text_max + 1);
    data_raw_info ri;
    data_index ix = {0};
    int rc = -1;
    if (data_dataset_read_raw(ds, index, img, pcm, text, &ri, err)) goto done;
    if (data_index_read(ds_dir, &ix, err)) goto done;
    if (mm_mkdirs(out_dir, err)) goto done;
    fprintf(out, "%s: sample %llu of %llu: sample_id %llu (manifest line, when packed), %s\n",
            ds_dir, (unsigned long long)index, (unsigned long long)s->n_samples,
            (unsigned long long)ri.sample_id, ix.shards[ri.shard].file);
    if (ri.has_image) {
        snprintf(p, sizeof(p), "%s/sample_%llu.png", out_dir, (unsigned long long)index);
        if (data_png_write(p, img, s->img_h, s->img_w, s->img_c, err)) goto done;
        fprintf(out, "  image: %s (%dx%dx%d)\n", p, s->img_h, s->img_w, s->img_c);
    } else {
        fprintf(out, "  image: none\n");
    }
    if (ri.has_audio) {
        snprintf(p, sizeof(p), "%s/sample_%llu.wav", out_dir, (unsigned long long)index);
        if (wav_write(p, pcm, ri.audio_n, s->audio_rate, err)) goto done;
        fprintf(out, "  audio: %s (%d samples at %d Hz, %.3f s)\n", p, ri.audio_n, s->audio_rate,
                (double)ri.audio_n / s->audio_rate);
    } else {
        fprintf(out, "  audio: none\n");
    }
    snprintf(p, sizeof(p), "%s/sample_%llu.txt", out_dir, (unsigned long long)index);
    if (mm_write_file_atomic(p, text, (size_t)ri.text_n, err)) goto done;
    fprintf(out, "  caption: %s (%d bytes): \"", p, ri.text_n);
    for (int i = 0; i < ri.text_n; i++) {  // control bytes shown escaped, the rest as is
        unsigned char ch = (unsigned char)text[i];
        if (ch == '"' || ch == '\\') fprintf(out, "\\%c", ch);
        else if (ch < 0x20 || ch == 0x7F) fprintf(out, "\\x%02x", ch);
        else fputc(ch, out);
    }
    fprintf(out, "\"\n");
    rc = 0;
done:
    if (ix.shards) data_index_free(&ix);
    free(img);
    free(pcm);
    free(text);
    data_dataset_close(ds);
    return rc;
}
