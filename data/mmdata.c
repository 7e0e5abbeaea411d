// mmdata.c: the command-line door to the data module, so that datasets can be made and
// checked without writing C: `mmdata synth` writes the synthetic paired set the demo trains
// on; `mmdata verify` reads a dataset exactly as training would (index, every shard's
// checksum and structure, then every sample decoded) and says what is wrong, if anything.
//
// Exit status: 0 success, 1 the work failed (e.g. a corrupt dataset), 2 a bad command line.
// Every failure is one line on stderr starting with "error: ".
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "data_internal.h"

static const char usage[] =
    "usage: mmdata <command> [options]\n"
    "\n"
    "commands:\n"
    "  synth --out DIR --samples N [--seed S]\n"
    "        write the synthetic paired image/audio/text set: DIR/train (N samples) and\n"
    "        DIR/val (max(64, N/10) samples). DIR/train and DIR/val must not hold files.\n"
    "  verify DIR\n"
    "        check a dataset completely: index.json, each shard's checksum, attributes and\n"
    "        datasets, then decode every sample. Prints a summary, or the first problem.\n"
    "  --help, -h, help\n"
    "        print this text\n"
    "\n"
    "exit status: 0 ok, 1 the command failed, 2 bad command line\n";

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fprintf(stderr, "error: mmdata: %s (see mmdata --help)\n", msg);
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

static int cmd_synth(int argc, char **argv) {
    const char *out = NULL;
    uint64_t n = 0, seed = 1;
    int have_n = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--out") != 0 && strcmp(a, "--samples") != 0 && strcmp(a, "--seed") != 0)
            return usage_error("synth: unknown option '%s'", a);
        if (i + 1 >= argc) return usage_error("synth: option '%s' needs a value", a);
        const char *v = argv[++i];
        if (strcmp(a, "--out") == 0) {
            if (!*v) return usage_error("synth: --out needs a directory");
            out = v;
        } else if (strcmp(a, "--samples") == 0) {
            if (parse_u64(v, &n) || n < 1 || n > ((uint64_t)1 << 40))
                return usage_error("synth: --samples wants a whole number >= 1, got '%s'", v);
            have_n = 1;
        } else if (parse_u64(v, &seed)) {
            return usage_error("synth: --seed wants a non-negative whole number, got '%s'", v);
        }
    }
    if (!out) return usage_error("synth: missing --out DIR");
    if (!have_n) return usage_error("synth: missing --samples N");
    data_synth_cfg c;
    data_synth_default(&c);
    mm_err err;
    double t0 = mm_now();
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
    if (argc < 1) return usage_error("verify: missing the dataset directory");
    if (argc > 1) return usage_error("verify: unexpected argument '%s'", argv[1]);
    if (argv[0][0] == '-') return usage_error("verify: unknown option '%s'", argv[0]);
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

int main(int argc, char **argv) {
    if (argc < 2) return usage_error("missing command");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(usage, stdout);
        return 0;
    }
    if (!strcmp(cmd, "synth")) return cmd_synth(argc - 2, argv + 2);
    if (!strcmp(cmd, "verify")) return cmd_verify(argc - 2, argv + 2);
    return usage_error("unknown command '%s'", cmd);
}
