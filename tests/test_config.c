// test_config.c: the config's promises: defaults are valid once data.train is given; a file
// plus overrides resolves as written; every kind of bad input is a -1 whose one-line message
// names the file, the 1-based line:col and the reason; the resolved YAML reads back into an
// identical struct; train/CONFIG.md holds exactly the reference the key table generates.
//
// `test_config --update-doc` rewrites the generated part of train/CONFIG.md from the table.
#define _POSIX_C_SOURCE 200809L
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../model/backend.h"
#include "../train/config.h"
#include "test.h"

#define DOC_MARKER "<!-- generated from the key table in train/config.c"

// What every check needs: the counts and a scratch directory for config files.
typedef struct {
    test_counts tc;
    char dir[64];
    char path[512];  // the file write_tmp wrote last
} ctx;

// Writes text to <dir>/name and returns its path (valid until the next call).
static const char *write_tmp(ctx *x, const char *name, const char *text) {
    char *path = x->path;
    snprintf(path, sizeof(x->path), "%s/%s", x->dir, name);
    FILE *f = fopen(path, "w");
    MM_CHECK(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
    return path;
}

// Loads text as file `name`; expects failure with each of the given substrings in the message.
static void expect_file_error(ctx *x, const char *name, const char *text, const char *where,
                              const char *reason) {
    test_counts *tc = &x->tc;
    const char *path = write_tmp(x, name, text);
    mm_config c;
    mm_err err = {{0}};
    int rc = mm_config_load(&c, path, 0, NULL, &err);
    char want[600];
    snprintf(want, sizeof(want), "%s:%s", path, where);
    TEST_CHECK(tc, rc == -1, "%s: expected -1, got %d", name, rc);
    TEST_CHECK(tc, strstr(err.msg, want) != NULL, "%s: message lacks '%s': %s", name, want,
               err.msg);
    TEST_CHECK(tc, strstr(err.msg, reason) != NULL, "%s: message lacks '%s': %s", name, reason,
               err.msg);
    TEST_CHECK(tc, strchr(err.msg, '\n') == NULL, "%s: message is not one line: %s", name, err.msg);
}

static void expect_override_error(test_counts *tc, const char *assignment, const char *reason) {
    mm_config c, before;
    mm_config_default(&c);
    before = c;
    mm_err err = {{0}};
    int rc = mm_config_set(&c, assignment, &err);
    char want[600];  // the message shows control bytes as '?'
    snprintf(want, sizeof(want), "override '%s': ", assignment);
    for (char *w = want; *w; w++)
        if ((unsigned char)*w < 0x20) *w = '?';
    TEST_CHECK(tc, rc == -1, "override %s: expected -1", assignment);
    TEST_CHECK(tc, strncmp(err.msg, want, strlen(want)) == 0, "override %s: message: %s",
               assignment, err.msg);
    TEST_CHECK(tc, strstr(err.msg, reason) != NULL, "override %s: lacks '%s': %s", assignment,
               reason, err.msg);
    TEST_CHECK(tc, memcmp(&c, &before, sizeof(c)) == 0, "override %s: changed the config",
               assignment);
}

static void expect_invalid(test_counts *tc, const char *const *sets, const char *reason) {
    mm_config c;
    mm_config_default(&c);
    mm_err err = {{0}};
    MM_CHECK(mm_config_set(&c, "data.train=/data/x", &err) == 0, "%s", err.msg);
    for (int i = 0; sets[i]; i++) MM_CHECK(mm_config_set(&c, sets[i], &err) == 0, "%s", err.msg);
    int rc = mm_config_validate(&c, &err);
    TEST_CHECK(tc, rc == -1, "validate after %s: expected -1", sets[0]);
    TEST_CHECK(tc, strstr(err.msg, reason) != NULL, "validate after %s: lacks '%s': %s", sets[0],
               reason, err.msg);
}

static void test_defaults(test_counts *tc) {
    mm_config c;
    mm_err err = {{0}};
    mm_config_default(&c);
    TEST_CHECK(tc, c.run.steps == 100 && c.run.seed == 1234 && c.run.log_every == 10, "run");
    TEST_CHECK(tc, strcmp(c.run.out_dir, "runs/default") == 0, "out_dir %s", c.run.out_dir);
    TEST_CHECK(tc, c.data.global_batch == 32 && c.data.micro_batch == 32 && c.data.verify == 1,
               "data");
    TEST_CHECK(tc, c.data.n_fft == 256 && c.data.hop == 128 && c.data.n_mels == 32, "audio");
    TEST_CHECK(
        tc, strcmp(c.model.kind, "transformer") == 0 && c.model.d_model == 128 && c.model.d_ff == 0,
        "model");
    TEST_CHECK(tc, c.optim.lr == 1e-3 && c.optim.eps == 1e-8 && c.optim.beta2 == 0.95, "optim");
    TEST_CHECK(tc, strcmp(c.eval.scorer, "synth") == 0, "eval.scorer %s", c.eval.scorer);
    TEST_CHECK(tc, strcmp(c.model.recompute, "none") == 0, "model.recompute %s", c.model.recompute);
    TEST_CHECK(tc, strcmp(c.checkpoint.resume, "auto") == 0 && c.checkpoint.keep_last == 3,
               "checkpoint");
    TEST_CHECK(tc, c.parallel.tp == 1 && c.parallel.bucket_mb == 4, "parallel");
    TEST_CHECK(tc, strcmp(c.backend, "cpu") == 0, "backend %s", c.backend);
    TEST_CHECK(tc, mm_config_validate(&c, &err) == -1 && strstr(err.msg, "data.train"),
               "defaults need data.train: %s", err.msg);
    TEST_CHECK(tc, mm_config_set(&c, "data.train=/d", &err) == 0, "%s", err.msg);
    TEST_CHECK(tc, mm_config_validate(&c, &err) == 0, "defaults + data.train: %s", err.msg);
    // path NULL: defaults plus overrides
    char *over[] = {"run.steps=7"};
    TEST_CHECK(tc, mm_config_load(&c, NULL, 1, over, &err) == 0 && c.run.steps == 7, "NULL path");
}

static void test_good_file(ctx *x) {
    test_counts *tc = &x->tc;
    const char *path = write_tmp(x, "good.yaml",
                                 "# a comment\n"
                                 "run:\n"
                                 "  out_dir: 'runs/my run'   # quoted\n"
                                 "  steps: 500\n"
                                 "  seed: 18446744073709551615\n"
                                 "data:\n"
                                 "  train: \"/data/train\"\n"
                                 "  val:\n"
                                 "  verify: no\n"
                                 "  global_batch: 64\n"
                                 "model: {d_model: 256, n_heads: 8}\n"
                                 "optim:\n"
                                 "  lr: 3.0e-4\n"
                                 "  eps: 1e-6\n"
                                 "eval:\n"
                                 "backend: cuda\n");
    char *over[] = {"run.steps=1000", "optim.lr=0.002", "data.val=/data/val",
                    "checkpoint.resume=none"};
    mm_config c;
    mm_err err = {{0}};
    int rc = mm_config_load(&c, path, 4, over, &err);
    TEST_CHECK(tc, rc == 0, "good file: %s", err.msg);
    TEST_CHECK(tc, strcmp(c.run.out_dir, "runs/my run") == 0, "out_dir %s", c.run.out_dir);
    TEST_CHECK(tc, c.run.steps == 1000, "override wins: steps %lld", (long long)c.run.steps);
    TEST_CHECK(tc, c.run.seed == UINT64_MAX, "seed");
    TEST_CHECK(tc, strcmp(c.data.train, "/data/train") == 0, "train %s", c.data.train);
    TEST_CHECK(tc, strcmp(c.data.val, "/data/val") == 0, "val %s", c.data.val);
    TEST_CHECK(tc, c.data.verify == 0 && c.data.global_batch == 64, "data");
    TEST_CHECK(tc, c.model.d_model == 256 && c.model.n_heads == 8 && c.model.n_layers == 4,
               "model flow mapping");
    TEST_CHECK(tc, c.optim.lr == 0.002 && c.optim.eps == 1e-6, "optim");
    TEST_CHECK(tc, strcmp(c.checkpoint.resume, "none") == 0, "resume");
    TEST_CHECK(tc, strcmp(c.backend, "cuda") == 0, "backend");
    TEST_CHECK(tc, mm_config_validate(&c, &err) == 0, "valid: %s", err.msg);
#ifndef MM_HAVE_CUDA
    // a CPU-only binary refuses backend: cuda before any work, saying which binary can
    const mm_backend *be = NULL;
    TEST_CHECK(tc,
               mm_backend_create(&be, c.backend, c.precision, 0, 0, &err) != 0 &&
                   strstr(err.msg, "built without CUDA") && strstr(err.msg, "make cuda"),
               "cuda refused by a CPU build: %s", err.msg);
#endif
    // an empty file and a comment-only file are all defaults
    mm_config d, e;
    mm_config_default(&d);
    rc = mm_config_load(&e, write_tmp(x, "empty.yaml", "# nothing\n"), 0, NULL, &err);
    TEST_CHECK(tc, rc == 0 && memcmp(&d, &e, sizeof(d)) == 0, "empty file: %s", err.msg);
    // shipped configs load and validate
    const char *tests = getenv("MM_TESTS");
    char cfg[1024];
    snprintf(cfg, sizeof(cfg), "%s/../configs/tiny.yaml", tests ? tests : "tests");
    if (access(cfg, R_OK) == 0) {
        rc = mm_config_load(&c, cfg, 0, NULL, &err);
        TEST_CHECK(tc, rc == 0 && mm_config_validate(&c, &err) == 0, "configs/tiny.yaml: %s",
                   err.msg);
    }
}

static void test_file_errors(ctx *x) {
    test_counts *tc = &x->tc;
    expect_file_error(x, "unknown_key.yaml", "run:\n  stesp: 3\n",
                      "2:3: ", "unknown key 'run.stesp' (did you mean 'run.steps'?)");
    expect_file_error(x, "unknown_section.yaml", "run:\n  steps: 3\noptimizer:\n  lr: 1\n",
                      "3:1: ", "unknown section or key 'optimizer' (did you mean 'optim'?)");
    expect_file_error(x, "toplevel_key.yaml", "steps: 3\n", "1:1: ", "(did you mean 'run.steps'?)");
    expect_file_error(x, "dotted.yaml", "run.steps: 3\n", "1:1: ", "under its section");
    expect_file_error(x, "type_int.yaml", "run:\n  steps: abc\n",
                      "2:10: ", "run.steps: expected an integer, got 'abc'");
    expect_file_error(x, "type_int2.yaml", "run:\n  steps: 1.5\n",
                      "2:10: ", "expected an integer, got '1.5'");
    expect_file_error(x, "overflow.yaml", "run:\n  steps: 99999999999999999999\n",
                      "2:10: ", "expected an integer");
    expect_file_error(x, "type_double.yaml", "optim:\n  lr: fast\n",
                      "2:7: ", "optim.lr: expected a number, got 'fast'");
    expect_file_error(x, "nan.yaml", "optim:\n  lr: nan\n", "2:7: ", "expected a number");
    expect_file_error(x, "type_bool.yaml", "data:\n  verify: maybe\n",
                      "2:11: ", "expected true or false, got 'maybe'");
    expect_file_error(x, "seed.yaml", "run:\n  seed: -1\n", "2:9: ", "non-negative");
    expect_file_error(x, "range.yaml", "data:\n  prefetch: 0\n",
                      "2:13: ", "data.prefetch: must be in [1, 64], got 0");
    expect_file_error(x, "range_double.yaml", "optim:\n  beta1: 1.5\n",
                      "2:10: ", "must be in [0, 1], got 1.5");
    expect_file_error(x, "recompute.yaml", "model:\n  recompute: layers\n", "2:14: ",
                      "model.recompute: expected one of none|attention|block, got 'layers'");
    expect_file_error(x, "enum.yaml", "run:\n  steps: 3\nbackend: tpu\n",
                      "3:10: ", "expected one of cpu|cuda, got 'tpu'");
    expect_file_error(x, "map_for_scalar.yaml", "run:\n  steps:\n    a: 1\n",
                      "3:5: ", "run.steps: expected a scalar value, got a mapping");
    expect_file_error(x, "seq_for_scalar.yaml", "run:\n  steps: [1, 2]\n",
                      "2:10: ", "got a sequence");
    expect_file_error(x, "scalar_for_map.yaml", "run: 5\n",
                      "1:6: ", "section 'run' must be a mapping of keys, got a scalar");
    expect_file_error(x, "map_for_top.yaml", "backend:\n  x: 1\n",
                      "2:3: ", "backend: expected a scalar value, got a mapping");
    expect_file_error(x, "root_scalar.yaml", "hello\n", "1:1: ", "expected a mapping of sections");
    expect_file_error(x, "dup_key.yaml", "run:\n  steps: 1\n  seed: 2\n  steps: 2\n",
                      "4:3: ", "duplicate key 'run.steps' (first set at line 2)");
    expect_file_error(x, "dup_section.yaml", "run:\n  steps: 1\ndata:\n  hop: 2\nrun:\n  seed: 1\n",
                      "5:1: ", "duplicate section 'run' (first at line 1)");
    expect_file_error(x, "broken.yaml", "run:\n  steps: 1\n  seed: [1, 2\n",
                      "4:1: ", "did not find expected ',' or ']'");
    expect_file_error(x, "tab.yaml", "run:\n\tsteps: 1\n",
                      "2:1: ", "found character that cannot start any token");
    expect_file_error(x, "badindent.yaml", "run:\n  steps: 1\n seed: 2\n",
                      "3:", "did not find expected key");
    expect_file_error(x, "utf8.yaml", "run:\n  out_dir: a\xff\n", "2:", "invalid");
    // overlong forms, surrogates and code points past U+10FFFF in a value: libyaml's reader
    // refuses them before the value reaches the key table, at the value's place
    expect_file_error(x, "overlong2.yaml", "run:\n  out_dir: a\xc0\xaf\n", "2:13: ", "UTF-8");
    expect_file_error(x, "overlong3.yaml", "run:\n  out_dir: ab\xe0\x80\xaf\n", "2:14: ", "UTF-8");
    expect_file_error(x, "overlong4.yaml", "data:\n  train: \xf0\x80\x80\xaf\n", "2:10: ", "UTF-8");
    expect_file_error(x, "surrogate.yaml", "run:\n  out_dir: a\xed\xa0\x80\n",
                      "2:13: ", "invalid Unicode character");
    expect_file_error(x, "above_max.yaml", "run:\n  out_dir: a\xf4\x90\x80\x80\n",
                      "2:13: ", "invalid Unicode character");
    expect_file_error(x, "two_docs.yaml", "run:\n  steps: 1\n---\nrun:\n  steps: 2\n",
                      "4:1: ", "second YAML document");
    char big[700] = "data:\n  train: ";
    size_t n = strlen(big);
    memset(big + n, 'x', 600);
    strcpy(big + n + 600, "\n");
    expect_file_error(x, "long.yaml", big, "2:10: ", "at most 511 allowed");
    // a missing file and a directory
    mm_config c;
    mm_err err = {{0}};
    char path[600];
    snprintf(path, sizeof(path), "%s/nope.yaml", x->dir);
    TEST_CHECK(tc, mm_config_load(&c, path, 0, NULL, &err) == -1, "missing file");
    char want[700];
    snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
    TEST_CHECK(tc, strcmp(err.msg, want) == 0, "missing file message: %s", err.msg);
    TEST_CHECK(tc,
               mm_config_load(&c, x->dir, 0, NULL, &err) == -1 &&
                   strstr(err.msg, "cannot open: Is a directory"),
               "directory: %s", err.msg);
    // an override error after a good file names the override
    const char *good = write_tmp(x, "ok.yaml", "run:\n  steps: 3\n");
    char *over[] = {"run.log_every=5", "run.steps=x"};
    TEST_CHECK(tc,
               mm_config_load(&c, good, 2, over, &err) == -1 &&
                   strstr(err.msg, "override 'run.steps=x': expected an integer"),
               "file + bad override: %s", err.msg);
    // an override is text that no YAML reader has seen: the key table applies the same rule
    char *overlong[] = {"run.out_dir=a\xc0\xaf"};
    TEST_CHECK(tc,
               mm_config_load(&c, good, 1, overlong, &err) == -1 &&
                   strstr(err.msg, "override 'run.out_dir=a") &&
                   strstr(err.msg, "not valid UTF-8 (byte 1: overlong encoding)") &&
                   !strchr(err.msg, '\n'),
               "file + override with an overlong form: %s", err.msg);
}

static void test_override_errors(test_counts *tc) {
    expect_override_error(tc, "run.steps", "expected section.key=value");
    expect_override_error(tc, "run.stesp=3", "unknown key 'run.stesp' (did you mean 'run.steps'?)");
    expect_override_error(tc, "nothing.at_all=3", "unknown key 'nothing.at_all'");
    expect_override_error(tc, "run.steps=abc", "expected an integer, got 'abc'");
    expect_override_error(tc, "run.steps=", "expected an integer, got ''");
    expect_override_error(tc, "run.steps= 5", "expected an integer");
    expect_override_error(tc, "run.steps=5x", "expected an integer, got '5x'");
    expect_override_error(tc, "run.steps=-5", "must be in [1, 1000000000000], got -5");
    expect_override_error(tc, "run.threads=9223372036854775808", "expected an integer");
    expect_override_error(tc, "data.hop=2147483648", "must be in [1, 65536]");
    expect_override_error(tc, "optim.lr=1e400", "expected a number");
    expect_override_error(tc, "optim.lr=0x1p-3", "expected a number");
    expect_override_error(tc, "optim.lr=inf", "expected a number");
    expect_override_error(tc, "run.seed=-1", "non-negative");
    expect_override_error(tc, "run.seed=18446744073709551616", "non-negative");
    expect_override_error(tc, "data.verify=2", "expected true or false, got '2'");
    expect_override_error(tc, "model.kind=gan", "expected one of transformer|diffusion, got 'gan'");
    expect_override_error(tc, "eval.scorer=bleu", "expected one of synth|text, got 'bleu'");
    expect_override_error(tc, "model.recompute=all",
                          "expected one of none|attention|block, got 'all'");
    expect_override_error(tc, "data.train=a\tb", "control character");
    expect_override_error(tc, "data.train=a\xc3", "not valid UTF-8");
    // the one strict UTF-8 rule (core's), as for captions: byte offset and reason
    expect_override_error(tc, "data.train=a\xc0\xaf", "not valid UTF-8 (byte 1: overlong");
    expect_override_error(tc, "data.train=\xc1\xbf", "not valid UTF-8 (byte 0: overlong");
    expect_override_error(tc, "data.train=ab\xe0\x80\xaf", "not valid UTF-8 (byte 2: overlong");
    expect_override_error(tc, "data.train=\xf0\x8f\xbf\xbf", "(byte 0: overlong encoding)");
    expect_override_error(tc, "data.train=a\xed\xa0\x80", "(byte 1: UTF-16 surrogate");
    expect_override_error(tc, "data.train=\xf4\x90\x80\x80", "code point above U+10FFFF");
    expect_override_error(tc, "data.train=a\xe2\x82", "(byte 1: sequence cut short");
    expect_override_error(tc, "checkpoint.reinit=ok,a\xe0\x80\xaf",
                          "item 'a\xe0\x80\xaf' is not valid UTF-8 (byte 1: overlong encoding)");
    expect_override_error(tc, "parallel.zero=2", "must be in [0, 1], got 2");
    // good ones, including every bool spelling
    mm_config c;
    mm_err err = {{0}};
    mm_config_default(&c);
    const char *t[] = {"true", "yes", "1", "True", "YES"},
               *f[] = {"false", "no", "0", "FALSE", "No"};
    for (int i = 0; i < 5; i++) {
        char a[64];
        snprintf(a, sizeof(a), "data.verify=%s", f[i]);
        TEST_CHECK(tc, mm_config_set(&c, a, &err) == 0 && c.data.verify == 0, "%s", a);
        snprintf(a, sizeof(a), "data.verify=%s", t[i]);
        TEST_CHECK(tc, mm_config_set(&c, a, &err) == 0 && c.data.verify == 1, "%s", a);
    }
    TEST_CHECK(tc,
               mm_config_set(&c, "data.train=a=b", &err) == 0 && strcmp(c.data.train, "a=b") == 0,
               "value with '='");
    TEST_CHECK(tc, mm_config_set(&c, "backend=cuda", &err) == 0 && strcmp(c.backend, "cuda") == 0,
               "top-level override");
    TEST_CHECK(tc, mm_config_set(&c, "run.steps=+12", &err) == 0 && c.run.steps == 12, "+12");
    const char *multi = "caf\xc3\xa9/\xe4\xb8\xad/\xf0\x9f\x98\x80";  // U+00E9, U+4E2D, U+1F600
    char set[64];
    snprintf(set, sizeof(set), "data.train=%s", multi);
    TEST_CHECK(tc, mm_config_set(&c, set, &err) == 0 && strcmp(c.data.train, multi) == 0,
               "multi-byte UTF-8 value: %s", err.msg);
}

static void test_validate(test_counts *tc) {
    {
        mm_config c;
        mm_config_default(&c);
        mm_err err = {{0}};
        TEST_CHECK(tc,
                   mm_config_set(&c, "data.train=/data/x", &err) == 0 &&
                       mm_config_set(&c, "eval.scorer=text", &err) == 0 &&
                       mm_config_validate(&c, &err) == 0,
                   "eval.scorer: text for a transformer: %s", err.msg);
    }
    expect_invalid(tc, (const char *const[]){"data.global_batch=30", "data.micro_batch=8", NULL},
                   "data.global_batch (30) must be a multiple of data.micro_batch (8)");
    expect_invalid(tc, (const char *const[]){"data.micro_batch=64", NULL},
                   "data.micro_batch (64) must not exceed data.global_batch (32)");
    expect_invalid(tc, (const char *const[]){"diffusion.ema_decay=1", NULL},
                   "diffusion.ema_decay (1) must be below 1");
    expect_invalid(tc, (const char *const[]){"optim.ema_decay=1", NULL},
                   "optim.ema_decay (1) must be below 1");
    expect_invalid(tc, (const char *const[]){"model.kind=diffusion", "optim.ema_decay=0.99", NULL},
                   "optim.ema_decay (0.99) is the transformer's EMA");
    expect_invalid(tc, (const char *const[]){"model.n_heads=3", NULL},
                   "model.d_model (128) must be a multiple of model.n_heads (3)");
    expect_invalid(tc, (const char *const[]){"parallel.tp=8", NULL},
                   "parallel.tp (8) must divide model.n_heads (4)");
    expect_invalid(tc, (const char *const[]){"parallel.tp=2", "model.d_ff=101", NULL},
                   "parallel.tp (2) must divide the MLP width (model.d_ff = 101)");
    expect_invalid(tc, (const char *const[]){"optim.min_lr=0.01", NULL},
                   "optim.min_lr (0.01) must not exceed optim.lr (0.001)");
    expect_invalid(tc, (const char *const[]){"optim.beta2=1", NULL}, "must be < 1");
    expect_invalid(tc, (const char *const[]){"data.hop=512", NULL},
                   "data.hop (512) must not exceed data.n_fft (256)");
    expect_invalid(tc, (const char *const[]){"data.n_mels=200", NULL},
                   "data.n_mels (200) must not exceed data.n_fft / 2 + 1 (129)");
    expect_invalid(tc, (const char *const[]){"checkpoint.resume=", NULL}, "checkpoint.resume");
    expect_invalid(tc, (const char *const[]){"run.out_dir=", NULL}, "run.out_dir");
    expect_invalid(tc, (const char *const[]){"run.stop_after=200", NULL},
                   "run.stop_after (200) must not exceed run.steps (100)");
    expect_invalid(tc, (const char *const[]){"diffusion.predict=x", "diffusion.objective=ddpm",
                                             NULL},
                   "diffusion.predict: x needs diffusion.objective: flow");
    expect_invalid(tc, (const char *const[]){"model.kind=diffusion", "eval.scorer=text", NULL},
                   "eval.scorer: text scores generated captions; a diffusion model generates "
                   "images");
    expect_invalid(tc, (const char *const[]){"model.stem=conv", "model.patch=6", NULL},
                   "model.stem: conv needs model.patch a multiple of 4");
    expect_invalid(tc, (const char *const[]){"model.kind=diffusion", "model.stem=conv", NULL},
                   "model.stem: conv is the transformer's image stem");
}

static void test_round_trip(test_counts *tc) {
    const char *sets[] = {"run.out_dir=runs/it's \"quoted\" \\ back: # not a comment",
                          "run.seed=18446744073709551615",
                          "run.steps=1000000000000",
                          "data.train=  leading and trailing  ",
                          "data.val=ünïcödé/数据",
                          "data.verify=no",
                          "model.kind=diffusion",
                          "optim.lr=0.1",
                          "optim.min_lr=3.3333333333333335e-05",
                          "optim.eps=4.9406564584124654e-324",
                          "optim.beta1=0.30000000000000004",
                          "parallel.bucket_mb=0.001",
                          "checkpoint.init_from=true",  // a string that looks like a bool
                          "checkpoint.resume=123",      // and one that looks like a number
                          "backend=cuda",
                          NULL};
    mm_config a, b;
    mm_err err = {{0}};
    mm_config_default(&a);
    for (int i = 0; sets[i]; i++)
        TEST_CHECK(tc, mm_config_set(&a, sets[i], &err) == 0, "%s: %s", sets[i], err.msg);
    a.optim.weight_decay = nextafter(0.1, 1.0);
    char *yaml = mm_config_to_yaml(&a);
    int rc = mm_config_load_string(&b, yaml, "saved", &err);
    TEST_CHECK(tc, rc == 0, "round trip load: %s\n%s", err.msg, yaml);
    TEST_CHECK(tc, memcmp(&a, &b, sizeof(a)) == 0, "round trip differs:\n%s", yaml);
    TEST_CHECK(tc, b.optim.weight_decay == nextafter(0.1, 1.0), "double bits");
    TEST_CHECK(tc, strcmp(b.data.train, "  leading and trailing  ") == 0, "spaces: '%s'",
               b.data.train);
    // every key appears, grouped under its section
    TEST_CHECK(tc,
               strstr(yaml, "\nrun:\n  out_dir: ") && strstr(yaml, "\nbackend: cuda\n") &&
                   strstr(yaml, "\noptim:\n  lr: 0.1\n") &&
                   strstr(yaml, "  seed: 18446744073709551615\n"),
               "yaml layout:\n%s", yaml);
    char *yaml2 = mm_config_to_yaml(&b);
    TEST_CHECK(tc, strcmp(yaml, yaml2) == 0, "to_yaml is not stable");
    free(yaml);
    free(yaml2);
    // defaults round trip too, and errors in text name the given name
    mm_config_default(&a);
    yaml = mm_config_to_yaml(&a);
    rc = mm_config_load_string(&b, yaml, "ckpt/meta.h5:config", &err);
    TEST_CHECK(tc, rc == 0 && memcmp(&a, &b, sizeof(a)) == 0, "defaults round trip");
    free(yaml);
    rc = mm_config_load_string(&b, "run:\n  bogus: 1\n", "ckpt/meta.h5:config", &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "ckpt/meta.h5:config:2:3: unknown key"),
               "load_string error: %s", err.msg);
}

// The generated key reference, as mm_config_doc writes it. Caller frees.
static char *doc_text(void) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    MM_CHECK(f, "open_memstream");
    mm_config_doc(f);
    fclose(f);
    return buf;
}

static void config_md_path(char *out, size_t cap) {
    const char *tests = getenv("MM_TESTS");
    if (tests)
        snprintf(out, cap, "%s/../train/CONFIG.md", tests);
    else if (access("train/CONFIG.md", R_OK) == 0)
        snprintf(out, cap, "train/CONFIG.md");
    else
        snprintf(out, cap, "../train/CONFIG.md");
}

static void test_doc(test_counts *tc) {
    char path[1024];
    config_md_path(path, sizeof(path));
    char *md = NULL;
    mm_err err = {{0}};
    int rc = mm_read_file(path, &md, NULL, &err);
    TEST_CHECK(tc, rc == 0, "CONFIG.md: %s", err.msg);
    if (rc) return;
    char *doc = doc_text();
    char *mark = strstr(md, DOC_MARKER);
    char *gen = mark ? strchr(mark, '\n') : NULL;
    TEST_CHECK(tc, gen != NULL, "%s lacks the marker line '%s'", path, DOC_MARKER);
    if (gen)
        TEST_CHECK(tc, strcmp(gen + 1, doc) == 0,
                   "%s is out of date with the key table: run `build/tests/test_config "
                   "--update-doc` from the repository root",
                   path);
    // every key of the resolved YAML is documented (independent of the generator)
    mm_config c;
    mm_config_default(&c);
    char *yaml = mm_config_to_yaml(&c);
    char section[64] = "";
    int n_keys = 0;
    for (char *line = strtok(yaml, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        char *colon = strchr(line, ':');
        if (!colon) continue;
        char name[160];
        if (line[0] != ' ' && colon[1] == '\0') {
            snprintf(section, sizeof(section), "%.*s", (int)(colon - line), line);
            continue;
        }
        if (line[0] == ' ')
            snprintf(name, sizeof(name), "`%s.%.*s`", section, (int)(colon - line - 2), line + 2);
        else
            snprintf(name, sizeof(name), "`%.*s`", (int)(colon - line), line);
        n_keys++;
        TEST_CHECK(tc, strstr(md, name) != NULL, "%s does not document %s", path, name);
    }
    TEST_CHECK(tc, n_keys >= 40, "only %d keys found in the YAML", n_keys);
    free(yaml);
    free(doc);
    free(md);
}

// Rewrites everything after the marker line of CONFIG.md with the generated reference.
static int update_doc(void) {
    char path[1024];
    config_md_path(path, sizeof(path));
    char *md = NULL;
    mm_err err;
    if (mm_read_file(path, &md, NULL, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    char *mark = strstr(md, DOC_MARKER);
    char *end = mark ? strchr(mark, '\n') : NULL;
    if (!end) return fprintf(stderr, "%s: no marker line\n", path), free(md), 1;
    end[1] = '\0';
    char *doc = doc_text();
    size_t n = strlen(md) + strlen(doc);
    char *out = mm_malloc(n + 1);
    snprintf(out, n + 1, "%s%s", md, doc);
    int rc = mm_write_file_atomic(path, out, n, &err);
    if (rc)
        fprintf(stderr, "%s\n", err.msg);
    else
        printf("updated %s\n", path);
    free(out);
    free(doc);
    free(md);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--update-doc") == 0) return update_doc();
    ctx x = {.tc = {0, 0}, .dir = "/tmp/mm_test_config_XXXXXX"};
    MM_CHECK(mkdtemp(x.dir), "mkdtemp failed");
    test_defaults(&x.tc);
    test_good_file(&x);
    test_file_errors(&x);
    test_override_errors(&x.tc);
    test_validate(&x.tc);
    test_round_trip(&x.tc);
    test_doc(&x.tc);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", x.dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", x.dir);
    return test_finish(&x.tc);
}
