// mmdata.c: the command-line door to the data module, so that datasets can be made and
// checked without writing C: `mmdata synth` writes the synthetic paired set the demo trains
// on; `mmdata verify` reads a dataset exactly as training would (index, every shard's
// checksum and structure, then every sample decoded) and says what is wrong, if anything;
// `mmdata pack` turns a user's own files into a dataset and `mmdata inspect` shows what one
// holds and writes a sample back out as files (both in data/pack.c).
//
// Each command's usage and options are one table below (core/cli.h): `mmdata COMMAND
// --help` prints it and the parser takes exactly what it lists.
// Exit status: 0 success, 1 the work failed (e.g. a corrupt dataset), 2 a bad command line.
// Every failure is one line on stderr starting with "error: ".
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/cli.h"
#include "data.h"
#include "data_internal.h"

// Each command's options and usage (cli.h): `mmdata COMMAND --help` prints them, and the
// parsers below take exactly these options.
static const mm_cli_opt synth_opts[] = {
    {"--out", "DIR",
     "writes DIR/train (N samples) and DIR/val (max(64, N/10) samples), which\n"
     "must not hold files; required"},
    {"--samples", "N", "training samples, 1..100000000; required"},
    {"--seed", "S", "the generator's seed (1): the same seed writes the same bytes"},
    {"--only", "ATTR=WORD[,WORD...]",
     "restrict an attribute (colour, shape, size, position) to some words, e.g.\n"
     "--only colour=yellow,white: a differently distributed set (fine-tuning);\n"
     "repeatable"},
    {NULL, NULL, NULL}};
static const mm_cli_cmd synth_cli = {
    .prog = "mmdata",
    .name = "synth",
    .synopsis = "--out DIR --samples N [options]",
    .summary = "write the synthetic paired image/audio/caption set the demos train on",
    .about = "  Writes the synthetic paired image/audio/text set.\n",
    .opts = synth_opts};

static const mm_cli_cmd verify_cli = {
    .prog = "mmdata",
    .name = "verify",
    .synopsis = "DIR",
    .summary = "check a dataset completely, as training would read it",
    .about =
        "  Checks a dataset completely: index.json, each shard's checksum, attributes and\n"
        "  datasets, then decodes every sample. Prints a summary, or the first problem.\n"};

static const mm_cli_opt pack_opts[] = {
    {"--manifest", "FILE", "the manifest: .jsonl or .csv (above)"},
    {"--folder", "FOLDER", "a Hugging Face style folder (above), instead of --manifest"},
    {"--out", "DIR", "where DIR/train and DIR/val are written; required"},
    {"--image-key", "K", "read the image path from key/column K (default image, file_name)"},
    {"--audio-key", "K", "read the audio path from key/column K (default audio)"},
    {"--caption-key", "K", "read the inline caption from key/column K (default caption, text)"},
    {"--caption-file-key", "K", "read the caption's .txt path from K (default caption_file)"},
    {"--ignore-keys", "K1,K2", "read past these keys (other unknown keys are errors)"},
    {"--val-manifest", "FILE", "val from FILE, not split off (pre-split sets)"},
    {"--train-split", "NAME", "FOLDER's subfolder that holds train"},
    {"--val-split", "NAME|none", "FOLDER's subfolder that holds val; none: split val off train"},
    {"--image-size", "HxW|N", "image height x width, or N x N (32)"},
    {"--channels", "1|3|4", "image channels: grey, RGB or RGBA (3)"},
    {"--audio-rate", "HZ", "audio sample rate (8000)"},
    {"--audio-len", "SAMPLES",
     "clip length (default: the longest clip, rounded up to 128, at\n"
     "most 10 s; the clips' length percentiles are printed)"},
    {"--text-max", "BYTES",
     "caption limit (default: the longest caption, at most 256; longer\n"
     "ones cut)"},
    {"--long-captions", "cut|refuse",
     "captions over --text-max (default: cut with the default\n"
     "text-max, refuse with an explicit one)"},
    {"--schema-from", "SET", "shapes not given from dataset SET (to fit a base model)"},
    {"--shard-size", "N", "samples per shard (500)"},
    {"--val-fraction", "F", "the share split off as val, in [0, 1) (0.1; none with a val split)"},
    {"--seed", "S", "the seed of the split (1)"},
    {"--threads", "N", "decoding threads, 1..256 (the CPUs, at most 16)"},
    {"--on-error", "fail|skip",
     "fail: stop at the first bad sample, leave no DIR (default);\n"
     "skip: leave bad samples out, list them in DIR/skipped.tsv"},
    {NULL, NULL, NULL}};
static const mm_cli_cmd pack_cli = {
    .prog = "mmdata",
    .name = "pack",
    .synopsis = "--manifest FILE --out DIR [options]\n--folder FOLDER --out DIR [options]",
    .summary = "pack your own images, audio and captions into a dataset",
    .about =
        "  Packs your own images (PNG, JPEG), audio (WAV, FLAC, OGG, ...) and captions into\n"
        "  DIR/train and DIR/val. FILE is .jsonl (one object per line) or .csv (header row)\n"
        "  with the fields image (or file_name), audio, caption (or text; inline) or\n"
        "  caption_file (a .txt); relative paths are relative to FILE's folder.\n"
        "  FOLDER is Hugging Face style: FOLDER/metadata.jsonl|csv, or FOLDER/train/ with\n"
        "  FOLDER/validation/ (or valid, val, dev, test) as val.\n",
    .opts = pack_opts,
    .notes = "The model's input shape follows the schema (data/FORMAT.md \"Packing\").\n"};

static const mm_cli_opt inspect_opts[] = {
    {"--sample", "I",
     "write sample I (a position in the split) to FOLDER as sample_I.png,\n"
     ".wav and .txt"},
    {"--split", "train|val",
     "the split of --sample (default: DIR when it is one split,\n"
     "else train)"},
    {"--out", "FOLDER", "where --sample writes; required with it"},
    {NULL, NULL, NULL}};
static const mm_cli_cmd inspect_cli = {
    .prog = "mmdata",
    .name = "inspect",
    .synopsis = "DIR [--sample I [--split train|val] --out FOLDER]",
    .summary = "show a dataset's schema, splits and shards; write a sample out as files",
    .about =
        "  Prints a dataset's schema, splits, shards and modalities; with --sample, writes\n"
        "  one sample back out as ordinary files.\n",
    .opts = inspect_opts};

static const mm_cli_cmd *const mmdata_subs[] = {&synth_cli, &verify_cli, &pack_cli, &inspect_cli,
                                                NULL};
static const mm_cli_cmd mmdata_cli = {
    .prog = "mmdata",
    .synopsis = "COMMAND [options]",
    .about = "  Makes, packs and checks the datasets training reads (data/FORMAT.md).\n",
    .subs = mmdata_subs,
    .notes = "exit status: 0 ok, 1 the command failed, 2 bad command line\n"};

// A bad command line of command c: prints its one-line error, returns exit status 2.
static int usage_error(const mm_cli_cmd *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const mm_cli_cmd *c, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    mm_err err;
    mm_cli_fail(c, &err, "%s", msg);
    fprintf(stderr, "error: %s\n", err.msg);
    return 2;
}

// The error mm_cli_next left in err: exit status 2.
static int usage_error_from(const mm_err *err) {
    fprintf(stderr, "error: %s\n", err->msg);
    return 2;
}

// A decimal number without sign or trailing characters.
static int parse_u64(const char *s, uint64_t *out) {
    if (!s || *s < '0' || *s > '9') return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static volatile sig_atomic_t stop_signal;
static void on_stop_signal(int sig) {
    stop_signal = sig;
}

static int cmd_synth(int argc, char **argv) {
    const char *out = NULL;
    uint64_t n = 0, seed = 1;
    int have_n = 0;
    data_synth_cfg c;
    data_synth_default(&c);
    for (int i = 0; i < argc; i++) {
        const char *v;
        mm_err e;
        const mm_cli_opt *o = mm_cli_next(&synth_cli, argc, argv, &i, &v, &e);
        if (!o) return usage_error_from(&e);
        const char *a = o->name;
        if (strcmp(a, "--out") == 0) {
            if (!*v) return usage_error(&synth_cli, "--out needs a directory");
            out = v;
        } else if (strcmp(a, "--samples") == 0) {
            if (parse_u64(v, &n) || n < 1 || n > DATA_SYNTH_MAX_SAMPLES)
                return usage_error(&synth_cli,
                                   "--samples wants a whole number in 1..%llu, got '%s'",
                                   DATA_SYNTH_MAX_SAMPLES, v);
            have_n = 1;
        } else if (strcmp(a, "--only") == 0) {
            if (data_synth_restrict(&c, v, &e)) return usage_error(&synth_cli, "--only: %s", e.msg);
        } else if (parse_u64(v, &seed)) {
            return usage_error(&synth_cli, "--seed wants a non-negative whole number, got '%s'", v);
        }
    }
    if (!out) return usage_error(&synth_cli, "missing --out DIR");
    if (!have_n) return usage_error(&synth_cli, "missing --samples N");
    mm_err err;
    double t0 = mm_now();
    // SIGINT/SIGTERM stop the writing cleanly: the temporary folders are removed and the
    // exit status is 1 (never a partial DIR/train, never 130 or 143)
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    c.stop = &stop_signal;
    c.progress = stderr;
    if (data_synth_write(out, n, seed, &c, &err)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    printf("%s: wrote train (%llu samples) and val (%llu samples), seed %llu, in %.1f s\n", out,
           (unsigned long long)n, (unsigned long long)(n / 10 > 64 ? n / 10 : 64),
           (unsigned long long)seed, mm_now() - t0);
    return 0;
}

static int cmd_verify(int argc, char **argv) {
    if (argc < 1) return usage_error(&verify_cli, "missing the dataset directory");
    if (argc > 1) return usage_error(&verify_cli, "unexpected argument '%s'", argv[1]);
    if (argv[0][0] == '-') return usage_error(&verify_cli, "unknown option '%s'", argv[0]);
    const char *dir = argv[0];
    mm_err err;
    data_index ix;
    if (data_index_read(dir, &ix, &err)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    int n_shards = ix.n_shards;
    data_index_free(&ix);
    data_dataset *ds;
    if (data_dataset_open(&ds, dir, 1, &err)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    const data_schema *s = data_dataset_schema(ds);
    // Decode with the default feature settings (any valid ones exercise every read).
    data_audio_cfg a = {256, 128, 32};
    if (s->audio_len < a.n_fft) a.n_fft = s->audio_len, a.hop = a.n_fft / 2;  // >= 64
    data_featurizer *f = data_featurizer_new(s, &a);
    enum { CHUNK = 64 };
    data_batch b;
    data_batch_alloc(&b, CHUNK, s, &a);
    uint64_t idx[CHUNK], with_img = 0, with_aud = 0;
    int rc = 0;
    for (uint64_t i = 0; i < s->n_samples && rc == 0; i += CHUNK) {
        int k = (int)(s->n_samples - i < CHUNK ? s->n_samples - i : CHUNK);
        for (int j = 0; j < k; j++) idx[j] = i + (uint64_t)j;
        rc = data_dataset_read(ds, idx, k, f, &b, &err);
        for (int j = 0; j < k && rc == 0; j++)
            with_img += b.has_image[j], with_aud += b.has_audio[j];
    }
    if (rc) {
        fprintf(stderr, "error: %s\n", err.msg);
    } else {
        printf(
            "%s: ok: %llu samples in %d shard%s; images %dx%dx%d (%llu present), audio %d Hz x "
            "%d (%llu present), captions <= %d bytes (%s)\n",
            dir, (unsigned long long)s->n_samples, n_shards, n_shards == 1 ? "" : "s", s->img_h,
            s->img_w, s->img_c, (unsigned long long)with_img, s->audio_rate, s->audio_len,
            (unsigned long long)with_aud, s->text_max, s->tokenizer);
    }
    data_batch_free(&b);
    data_featurizer_free(f);
    data_dataset_close(ds);
    return rc ? 1 : 0;
}

// A decimal number in [lo, hi], for pack's options.
static int int_opt(const mm_cli_cmd *c, const char *opt, const char *v, long lo, long hi,
                   int *out) {
    uint64_t x;
    if (parse_u64(v, &x) || x < (uint64_t)lo || x > (uint64_t)hi)
        return usage_error(c, "%s wants a whole number in %ld..%ld, got '%s'", opt, lo, hi, v);
    *out = (int)x;
    return 0;
}

// --schema-from DIR: the schema of an existing dataset (DIR, or DIR/train of a packed
// folder) for every shape option not given, so that a set packed for fine-tuning fits the
// base model (whose shapes are its training set's).
static int schema_from(const char *dir, data_schema *s, mm_err *err) {
    data_index ix;
    char p[DATA_PATH_CAP + 16];
    snprintf(p, sizeof(p), "%s/index.json", dir);
    if (access(p, F_OK) != 0)
        snprintf(p, sizeof(p), "%s/train", dir);
    else
        snprintf(p, sizeof(p), "%s", dir);
    if (data_index_read(p, &ix, err)) return -1;
    *s = ix.schema;
    data_index_free(&ix);
    return 0;
}

// What pack took from the data (stdout, before the summary line): the caption limit, the
// clips' lengths at a few percentiles with how many each would cut, and the length chosen.
static void print_survey(const data_pack_cfg *c, const data_pack_stats *st) {
    if (st->text_auto) {
        printf("captions: longest %d bytes; text_max %d", st->text_longest, st->text_max);
        if (st->text_longest > st->text_max)
            printf(" (at most %d): %llu caption%s cut to it at a character boundary",
                   DATA_PACK_TEXT_CAP, (unsigned long long)st->captions_cut,
                   st->captions_cut == 1 ? "" : "s");
        printf(" (from the data; --text-max N to choose)\n");
    }
    if (!st->audio_auto) return;
    double rate = c->audio_rate;
    if (st->clips == 0) {
        printf("audio: no clips; audio_len %d (%.3f s, the default)\n", st->audio_len,
               st->audio_len / rate);
        return;
    }
    printf(
        "audio: %llu clip%s at %d Hz, by length (and how many clips are longer: what that "
        "--audio-len would cut):",
        (unsigned long long)st->clips, st->clips == 1 ? "" : "s", c->audio_rate);
    for (int j = 0; j < DATA_PACK_N_PCT; j++)
        printf("%s p%d %lld samples (%.3f s, %llu longer)", j ? "," : "", data_pack_pcts[j],
               (long long)st->clip_pct[j], st->clip_pct[j] / rate,
               (unsigned long long)st->clip_cut[j]);
    printf("\n");
    const int64_t longest = st->clip_pct[DATA_PACK_N_PCT - 1];
    // the model's audio input: frames of the trainer's default STFT (n_fft 256, hop 128)
    char why[96];
    if (longest > st->audio_len)
        snprintf(why, sizeof(why), "the cap of %d s", DATA_PACK_AUDIO_CAP_S);
    else
        snprintf(why, sizeof(why), "the longest clip rounded up to a multiple of %d",
                 DATA_PACK_AUDIO_ROUND);
    printf(
        "audio: audio_len %d (%.3f s, %d log-mel frames at the default data.n_fft 256, "
        "data.hop 128): %s (from the data; --audio-len N to choose)\n",
        st->audio_len, st->audio_len / rate, 1 + (st->audio_len - 256) / 128, why);
    const int64_t p95 = st->clip_pct[2];
    if (p95 > 0 && st->audio_len > 2 * p95)  // a few long clips make every sample long
        printf(
            "audio: note: audio_len is %.1f times the p95 clip; --audio-len %lld would "
            "shorten %llu clips and the model's audio input %.1f times\n",
            (double)st->audio_len / p95, (long long)p95, (unsigned long long)st->clip_cut[2],
            (double)st->audio_len / p95);
}

static int cmd_pack(int argc, char **argv) {
    data_pack_cfg c;
    data_pack_default(&c);
    const char *from = NULL;
    int given_size = 0, given_c = 0, given_rate = 0;
    for (int i = 0; i < argc; i++) {
        const char *v;
        mm_err e;
        const mm_cli_opt *o = mm_cli_next(&pack_cli, argc, argv, &i, &v, &e);
        if (!o) return usage_error_from(&e);
        const char *a = o->name;
        int bad = 0;
        if (!strcmp(a, "--manifest")) {
            c.manifest = v;
        } else if (!strcmp(a, "--folder")) {
            c.folder = v;
        } else if (!strcmp(a, "--val-manifest")) {
            c.val_manifest = v;
        } else if (!strcmp(a, "--train-split")) {
            c.train_split = v;
        } else if (!strcmp(a, "--val-split")) {
            c.val_split = v;
        } else if (!strcmp(a, "--ignore-keys")) {
            c.keys.ignore = v;
        } else if (!strcmp(a, "--schema-from")) {
            from = v;
        } else if (!strcmp(a, "--long-captions")) {
            if (!strcmp(v, "cut"))
                c.cut_captions = 1;
            else if (!strcmp(v, "refuse"))
                c.cut_captions = 0;
            else
                bad = usage_error(&pack_cli, "--long-captions wants cut or refuse, got '%s'", v);
        } else if (!strcmp(a, "--out")) {
            c.out = v;
        } else if (!strcmp(a, "--image-size")) {
            const char *x = strchr(v, 'x');
            char hbuf[32];
            given_size = 1;
            if (!x) {
                bad = int_opt(&pack_cli, a, v, 1, 16384, &c.img_h);
                c.img_w = c.img_h;
            } else if ((size_t)(x - v) < sizeof(hbuf)) {
                memcpy(hbuf, v, (size_t)(x - v));
                hbuf[x - v] = '\0';
                bad = int_opt(&pack_cli, a, hbuf, 1, 16384, &c.img_h) ||
                      int_opt(&pack_cli, a, x + 1, 1, 16384, &c.img_w);
            } else {
                bad = usage_error(&pack_cli, "--image-size wants HxW or N, got '%s'", v);
            }
        } else if (!strcmp(a, "--channels")) {
            given_c = 1;
            bad = int_opt(&pack_cli, a, v, 1, 4, &c.img_c);
            if (!bad && c.img_c == 2)
                bad =
                    usage_error(&pack_cli, "--channels wants 1 (grey), 3 (RGB) or 4 (RGBA), got 2");
        } else if (!strcmp(a, "--audio-rate")) {
            given_rate = 1;
            bad = int_opt(&pack_cli, a, v, 1, 1000000, &c.audio_rate);
        } else if (!strcmp(a, "--audio-len")) {
            bad = int_opt(&pack_cli, a, v, 64, 1 << 26, &c.audio_len);
        } else if (!strcmp(a, "--text-max")) {
            bad = int_opt(&pack_cli, a, v, 1, 1 << 20, &c.text_max);
        } else if (!strcmp(a, "--shard-size")) {
            bad = int_opt(&pack_cli, a, v, 1, 1000000, &c.shard_size);
        } else if (!strcmp(a, "--threads")) {
            bad = int_opt(&pack_cli, a, v, 1, 256, &c.threads);
        } else if (!strcmp(a, "--seed")) {
            if (parse_u64(v, &c.seed))
                bad =
                    usage_error(&pack_cli, "--seed wants a non-negative whole number, got '%s'", v);
        } else if (!strcmp(a, "--val-fraction")) {
            char *end;
            errno = 0;
            c.val_fraction = strtod(v, &end);
            if (errno || end == v || *end || !(c.val_fraction >= 0 && c.val_fraction < 1))
                bad =
                    usage_error(&pack_cli, "--val-fraction wants a number in [0, 1), got '%s'", v);
        } else if (!strcmp(a, "--on-error")) {
            if (!strcmp(v, "fail")) c.on_error = DATA_PACK_FAIL;
            else if (!strcmp(v, "skip")) c.on_error = DATA_PACK_SKIP;
            else
                bad = usage_error(&pack_cli, "--on-error wants fail or skip, got '%s'", v);
        } else {  // --image-key, --audio-key, --caption-key, --caption-file-key
            for (int f = 0; f < DATA_MF_N; f++)
                if (!strcmp(a, data_manifest_key_opts[f])) c.keys.key[f] = v;
        }
        if (bad) return 2;
    }
    int have_m = c.manifest && c.manifest[0], have_f = c.folder && c.folder[0];
    if (have_m && have_f)
        return usage_error(&pack_cli, "--manifest and --folder exclude each other");
    if (!have_m && !have_f)
        return usage_error(&pack_cli, "missing --manifest FILE or --folder DIR");
    if (!c.out || !c.out[0]) return usage_error(&pack_cli, "missing --out DIR");
    if ((c.train_split || c.val_split) && !have_f)
        return usage_error(&pack_cli, "--train-split and --val-split need --folder DIR");
    if (c.val_manifest && c.val_split)
        return usage_error(&pack_cli, "--val-manifest and --val-split exclude each other");
    if (c.val_manifest && c.val_fraction >= 0)
        return usage_error(&pack_cli,
                           "--val-manifest and --val-fraction exclude each other (val "
                           "comes from the file)");
    mm_err err;
    if (data_manifest_keys_check(&c.keys, &err)) return usage_error(&pack_cli, "%s", err.msg);
    if (from) {
        data_schema s;
        if (schema_from(from, &s, &err)) {
            fprintf(stderr, "error: --schema-from: %s\n", err.msg);
            return 1;
        }
        if (!given_size) c.img_h = s.img_h, c.img_w = s.img_w;
        if (!given_c) c.img_c = s.img_c;
        if (!given_rate) c.audio_rate = s.audio_rate;
        if (!c.audio_len) c.audio_len = s.audio_len;
        if (!c.text_max) c.text_max = s.text_max;
    }
    c.log = stderr;
    c.progress = isatty(fileno(stderr));
    data_pack_stats st;
    if (data_pack(&c, &st, &err)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    if (st.val_manifest[0])
        printf("splits: train from %s, val from %s\n", st.train_manifest, st.val_manifest);
    else if (c.folder)
        printf("splits: train and val from %s\n", st.train_manifest);
    print_survey(&c, &st);
    char skipped[64 + 4200] = "";
    if (c.on_error == DATA_PACK_SKIP)
        snprintf(skipped, sizeof(skipped), " (listed in %s/skipped.tsv)", c.out);
    char trimmed[160] = "";
    if (st.trimmed)
        snprintf(trimmed, sizeof(trimmed), "; %llu clip%s longer than %d samples cut to it",
                 (unsigned long long)st.trimmed, st.trimmed == 1 ? "" : "s", st.audio_len);
    if (st.captions_cut && !st.text_auto)
        snprintf(trimmed + strlen(trimmed), sizeof(trimmed) - strlen(trimmed),
                 "; %llu caption%s longer than %d bytes cut to it",
                 (unsigned long long)st.captions_cut, st.captions_cut == 1 ? "" : "s", st.text_max);
    printf("%s: packed %llu of %llu samples: train %llu in %d shard%s, val %llu in %d shard%s; "
           "skipped %llu%s; %llu bytes in %.1f s (%.1f samples/s)%s\n",
           c.out, (unsigned long long)st.packed, (unsigned long long)st.records,
           (unsigned long long)st.train, st.train_shards, st.train_shards == 1 ? "" : "s",
           (unsigned long long)st.val, st.val_shards, st.val_shards == 1 ? "" : "s",
           (unsigned long long)st.skipped, skipped, (unsigned long long)st.bytes, st.seconds,
           st.seconds > 0 ? (double)st.records / st.seconds : 0.0, trimmed);
    return 0;
}

static int cmd_inspect(int argc, char **argv) {
    const char *dir = NULL, *out = NULL, *split = NULL;
    uint64_t index = 0;
    int have_sample = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-') {
            if (dir) return usage_error(&inspect_cli, "unexpected argument '%s'", a);
            dir = a;
            continue;
        }
        const char *v;
        mm_err e;
        const mm_cli_opt *o = mm_cli_next(&inspect_cli, argc, argv, &i, &v, &e);
        if (!o) return usage_error_from(&e);
        a = o->name;
        if (!strcmp(a, "--sample")) {
            if (parse_u64(v, &index))
                return usage_error(&inspect_cli, "--sample wants a position >= 0, got '%s'", v);
            have_sample = 1;
        } else if (!strcmp(a, "--out")) {
            out = v;
        } else {
            if (strcmp(v, "train") != 0 && strcmp(v, "val") != 0)
                return usage_error(&inspect_cli, "--split wants train or val, got '%s'", v);
            split = v;
        }
    }
    if (!dir) return usage_error(&inspect_cli, "missing the dataset directory");
    if ((out || split) && !have_sample)
        return usage_error(&inspect_cli, "--out and --split need --sample I");
    if (have_sample && !out) return usage_error(&inspect_cli, "--sample needs --out FOLDER");
    mm_err err;
    int rc = have_sample ? data_inspect_sample(dir, split, index, out, stdout, &err)
                         : data_inspect(dir, stdout, &err);
    if (rc) {
        fflush(stdout);
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const mm_cli_cmd *sub = argc >= 2 ? mm_cli_sub(&mmdata_cli, argv[1]) : NULL;
    if (sub && mm_cli_wants_help(sub, argc - 2, argv + 2)) {
        mm_cli_usage(sub, stdout);
        return 0;
    }
    if (!sub && (mm_cli_wants_help(&mmdata_cli, argc - 1, argv + 1) ||
                 (argc >= 2 && !strcmp(argv[1], "help")))) {
        mm_cli_usage(&mmdata_cli, stdout);
        return 0;
    }
    if (argc < 2) return usage_error(&mmdata_cli, "missing command");
    if (sub == &synth_cli) return cmd_synth(argc - 2, argv + 2);
    if (sub == &verify_cli) return cmd_verify(argc - 2, argv + 2);
    if (sub == &pack_cli) return cmd_pack(argc - 2, argv + 2);
    if (sub == &inspect_cli) return cmd_inspect(argc - 2, argv + 2);
    return usage_error(&mmdata_cli, "unknown command '%s'", argv[1]);
}
