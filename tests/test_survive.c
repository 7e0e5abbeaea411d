// test_survive.c: what train/survive.h and the checkpoint fallback promise, in one process:
//   (1) the non-finite guard: a finite step passes, a NaN step is skipped naming the first
//       non-finite tensor, optim.max_skips in a row is an error naming the step and tensor;
//       malformed test-hook variables are one-line errors;
//   (2) a skipped step applies nothing: a run of 3 steps whose step 3 gets a NaN gradient
//       ends with exactly the parameters, AdamW moments (and diffusion EMA) of a 2-step run,
//       and its metrics line says "skipped";
//   (3) a corrupt checkpoint (one flipped value in a rank file, or a damaged meta.h5) is
//       reported by file and tensor and `resume: auto` falls back to the previous committed
//       checkpoint, saying so; the resumed run then ends bit-identical to one never
//       interrupted; a `latest` naming a missing directory falls back too;
//   (4) data.trace truncation drops the lines of steps after the checkpoint and a cut line.
// `test_survive --same DIR_A DIR_B` compares two checkpoints' params, adam_m, adam_v (and
// ema) bit for bit, whatever layout they were saved with, and prints "same" or why not: the
// script tests (tests/kill.sh, tests/signal.sh) use it.
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../train/ckpt.h"
#include "../train/config.h"
#include "../train/survive.h"
#include "../train/train.h"
#include "test.h"

// ---------------------------------------------------------------------------------------
// Checkpoint comparison.

typedef struct {
    int n;
    model_tensor *t;  // (n) full tensors, replicated, contiguous
    size_t total;
    float *buf[4];    // params, m, v, ema (ema NULL when the checkpoint has none)
} full_state;

// Loads every tensor of dir at full shape. -1 with err.
static int load_full(const char *dir, full_state *s, mm_err *err) {
    memset(s, 0, sizeof(*s));
    ckpt_tensor_info *info = NULL, *ema = NULL;
    int n = 0, n_ema = 0;
    if (ckpt_list_tensors(dir, "params", &info, &n, err)) return -1;
    if (ckpt_list_tensors(dir, "ema", &ema, &n_ema, err)) {
        free(info);
        return -1;
    }
    free(ema);
    s->n = n;
    s->t = mm_calloc((size_t)n, sizeof(model_tensor));
    for (int i = 0; i < n; i++) {
        model_tensor *t = &s->t[i];
        snprintf(t->name, sizeof(t->name), "%s", info[i].name);
        t->ndim = info[i].ndim;
        t->split_dim = -1;
        t->size = 1;
        for (int d = 0; d < t->ndim; d++) {
            t->shape[d] = t->local[d] = info[i].shape[d];
            t->size *= (size_t)info[i].shape[d];
        }
        t->offset = s->total;
        s->total += t->size;
    }
    free(info);
    for (int k = 0; k < 4; k++)
        s->buf[k] = k == 3 && n_ema == 0 ? NULL : mm_calloc(s->total + 1, sizeof(float));
    ckpt_state st = {.tensors = s->t, .n_tensors = n, .n_params = s->total,
                     .params = s->buf[0], .m = s->buf[1], .v = s->buf[2], .ema = s->buf[3]};
    return ckpt_load_state(dir, &st, err);
}

static void free_full(full_state *s) {
    for (int k = 0; k < 4; k++) free(s->buf[k]);
    free(s->t);
}

// 1 when a and b hold bit-identical state; otherwise 0 with why.
static int same_ckpt(const char *a, const char *b, char *why, size_t n) {
    full_state x, y;
    mm_err err;
    int ok = 0;
    if (load_full(a, &x, &err)) {
        snprintf(why, n, "%s", err.msg);
        free_full(&x);
        return 0;
    }
    if (load_full(b, &y, &err)) {
        snprintf(why, n, "%s", err.msg);
        goto done;
    }
    if (x.n != y.n || x.total != y.total) {
        snprintf(why, n, "%d tensors / %zu values vs %d / %zu", x.n, x.total, y.n, y.total);
        goto done_y;
    }
    static const char *const kind[4] = {"params", "adam_m", "adam_v", "ema"};
    for (int k = 0; k < 4; k++) {
        if (!x.buf[k] != !y.buf[k]) {
            snprintf(why, n, "/%s in one checkpoint only", kind[k]);
            goto done_y;
        }
        if (!x.buf[k]) continue;
        for (int i = 0; i < x.n; i++)
            if (memcmp(x.buf[k] + x.t[i].offset, y.buf[k] + y.t[i].offset,
                       x.t[i].size * sizeof(float)) != 0) {
                snprintf(why, n, "/%s/%s differs", kind[k], x.t[i].name);
                goto done_y;
            }
    }
    ok = 1;
done_y:
    free_full(&y);
done:
    free_full(&x);
    return ok;
}

// ---------------------------------------------------------------------------------------
// Runs.

static void config_for(mm_config *c, const char *data, const char *out, const char *extra[]) {
    char buf[1024];
    const char *base[] = {"model.d_model=16", "model.n_layers=1", "model.n_heads=2",
                          "model.d_ff=32", "data.global_batch=4", "data.micro_batch=4",
                          "checkpoint.every=2", "run.log_every=100", "optim.warmup=2",
                          "run.threads=1", "checkpoint.keep_last=5", NULL};
    mm_err err;
    mm_config_default(c);
    for (int i = 0; base[i]; i++) MM_CHECK(mm_config_set(c, base[i], &err) == 0, "%s", err.msg);
    snprintf(buf, sizeof(buf), "data.train=%s/train", data);
    MM_CHECK(mm_config_set(c, buf, &err) == 0, "%s", err.msg);
    snprintf(buf, sizeof(buf), "run.out_dir=%s", out);
    MM_CHECK(mm_config_set(c, buf, &err) == 0, "%s", err.msg);
    for (int i = 0; extra && extra[i]; i++)
        MM_CHECK(mm_config_set(c, extra[i], &err) == 0, "%s", err.msg);
    MM_CHECK(mm_config_validate(c, &err) == 0, "%s", err.msg);
}

// train_run with stderr captured into *captured (malloc'd, caller frees).
static int run_capture(const mm_config *c, comm_group *w, mm_err *err, char **captured) {
    char path[] = "/tmp/mm_test_survive_err_XXXXXX";
    int fd = mkstemp(path);
    MM_CHECK(fd >= 0, "mkstemp failed");
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    int rc = train_run(c, w, err);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fd);
    mm_err ignore;
    *captured = NULL;
    if (mm_read_file(path, captured, NULL, &ignore) != 0) *captured = strdup("");
    unlink(path);
    return rc;
}

static int run(const char *data, const char *out, const char *extra[], comm_group *w,
               mm_err *err) {
    mm_config c;
    config_for(&c, data, out, extra);
    return train_run(&c, w, err);
}

static void step_dir(char *out, size_t n, const char *run_dir, int step) {
    snprintf(out, n, "%s/ckpt/step_%08d", run_dir, step);
}

// Adds 1 to the first value of /params/<tensor> in file (the crc32 attribute stays).
static int flip_value(const char *file, const char *tensor) {
    hid_t f = H5Fopen(file, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return -1;
    char link[128];
    snprintf(link, sizeof(link), "params/%s", tensor);
    hid_t d = H5Dopen2(f, link, H5P_DEFAULT);
    int rc = -1;
    if (d >= 0) {
        hid_t sp = H5Dget_space(d);
        hssize_t np = H5Sget_simple_extent_npoints(sp);
        float *v = mm_malloc((size_t)np * sizeof(float));
        if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0) {
            v[0] += 1.0f;
            rc = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) < 0 ? -1 : 0;
        }
        free(v);
        H5Sclose(sp);
        H5Dclose(d);
    }
    H5Fclose(f);
    return rc;
}

// Overwrites the byte at the first occurrence of needle in file (+ skip) with c.
static int poke(const char *file, const char *needle, size_t skip, char c) {
    char *text = NULL;
    size_t n = 0;
    mm_err err;
    if (mm_read_file(file, &text, &n, &err)) return -1;
    size_t k = strlen(needle);
    long at = -1;
    for (size_t i = 0; i + k <= n && at < 0; i++)
        if (memcmp(text + i, needle, k) == 0) at = (long)i;
    free(text);
    if (at < 0) return -1;
    int fd = open(file, O_WRONLY);
    if (fd < 0) return -1;
    int ok = pwrite(fd, &c, 1, at + (long)skip) == 1;
    close(fd);
    return ok ? 0 : -1;
}

// ---------------------------------------------------------------------------------------

static void check_guard(test_counts *tc, comm_group *w) {
    model_tensor t[3];
    memset(t, 0, sizeof(t));
    const char *names[3] = {"a.w", "b.w", "c.w"};
    for (int i = 0; i < 3; i++) {
        snprintf(t[i].name, sizeof(t[i].name), "%s", names[i]);
        t[i].offset = (size_t)i * 4;
        t[i].size = 4;
    }
    mm_real g[12] = {0};
    const train_net net = {.be = &mm_backend_cpu,
                           .params = g,
                           .dparams = g,
                           .dgrads = g,
                           .n_tensors = 3,
                           .tensors = t};
    train_guard gd;
    mm_err err;
    unsetenv("MM_TEST_INJECT_NAN");
    unsetenv("MM_TEST_FAIL");
    TEST_CHECK(tc, train_guard_init(&gd, 2, &err) == 0, "guard init: %s", err.msg);
    TEST_CHECK(tc, train_guard_check(&gd, w, 1, 1.0, 2.0, &net, &err) == 0, "finite step");
    g[9] = INFINITY;
    g[6] = NAN;
    TEST_CHECK(tc, train_guard_check(&gd, w, 2, 1.0, NAN, &net, &err) == 1, "NaN skipped");
    TEST_CHECK(tc, strcmp(gd.first_tensor, "b.w") == 0, "first non-finite tensor: '%s'",
               gd.first_tensor);
    TEST_CHECK(tc, train_guard_check(&gd, w, 3, 1.0, 2.0, &net, &err) == 0,
               "a finite step ends the streak");
    TEST_CHECK(tc, train_guard_check(&gd, w, 4, NAN, 2.0, &net, &err) == 1, "NaN loss");
    int rc = train_guard_check(&gd, w, 5, 1.0, INFINITY, &net, &err);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "step 5") && strstr(err.msg, "step 4") &&
                       strstr(err.msg, "'b.w'") && strstr(err.msg, "optim.max_skips = 2"),
               "max_skips: rc %d: %s", rc, err.msg);
    TEST_CHECK(tc, gd.total == 3, "skips counted: %lld", (long long)gd.total);
    train_guard_free(&gd);

    setenv("MM_TEST_INJECT_NAN", "3,x", 1);
    TEST_CHECK(tc, train_guard_init(&gd, 2, &err) == -1 && strstr(err.msg, "MM_TEST_INJECT_NAN"),
               "bad inject hook: %s", err.msg);
    setenv("MM_TEST_INJECT_NAN", "2,5", 1);
    TEST_CHECK(tc, train_guard_init(&gd, 2, &err) == 0 && gd.n_inject == 2, "inject hook");
    memset(g, 0, sizeof(g));
    train_guard_inject(&gd, 5, &net);
    TEST_CHECK(tc, isnan(g[4]) && !isnan(g[0]) && !isnan(g[8]), "NaN into the middle tensor");
    train_guard_free(&gd);
    unsetenv("MM_TEST_INJECT_NAN");
    setenv("MM_TEST_FAIL", "crash:1:2", 1);
    TEST_CHECK(tc, train_guard_init(&gd, 2, &err) == -1 && strstr(err.msg, "MM_TEST_FAIL"),
               "bad fail hook: %s", err.msg);
    unsetenv("MM_TEST_FAIL");
}

static void check_trace(test_counts *tc, const char *root) {
    char path[512];
    snprintf(path, sizeof(path), "%s/trace.txt", root);
    const char *text = "1 0 0 5 6\n2 0 0 7 8\n3 0 0 1 2\n4 0 0 3";
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    mm_err err;
    TEST_CHECK(tc, train_log_truncate(path, 2, NULL, &err) == 0, "truncate: %s", err.msg);
    char *got = NULL;
    mm_read_file(path, &got, NULL, &err);
    TEST_CHECK(tc, got && strcmp(got, "1 0 0 5 6\n2 0 0 7 8\n") == 0, "trace kept: '%s'", got);
    free(got);
    f = fopen(path, "w");
    fputs("1 0 0 5 6\n2 0 0 7", f);  // cut short, step 2 not committed either way
    fclose(f);
    TEST_CHECK(tc, train_log_truncate(path, 5, NULL, &err) == 0, "truncate: %s", err.msg);
    mm_read_file(path, &got, NULL, &err);
    TEST_CHECK(tc, got && strcmp(got, "1 0 0 5 6\n") == 0, "cut line dropped: '%s'", got);
    free(got);
}

// (2): step 3 gets a NaN: nothing of it may be applied.
static void check_skip(test_counts *tc, comm_group *w, const char *data, const char *root,
                       const char *kind_keys[], const char *tag) {
    char A[512], B[512], a[600], b[600], why[1024];
    snprintf(A, sizeof(A), "%s/skip_%s_A", root, tag);
    snprintf(B, sizeof(B), "%s/skip_%s_B", root, tag);
    const char *ka[16], *kb[16];
    int n = 0;
    for (; kind_keys && kind_keys[n]; n++) ka[n] = kb[n] = kind_keys[n];
    ka[n] = "run.steps=3", kb[n] = "run.steps=2";
    ka[n + 1] = kb[n + 1] = NULL;
    mm_err err;
    setenv("MM_TEST_INJECT_NAN", "3", 1);
    TEST_CHECK(tc, run(data, A, ka, w, &err) == 0, "%s: NaN run: %s", tag, err.msg);
    unsetenv("MM_TEST_INJECT_NAN");
    TEST_CHECK(tc, run(data, B, kb, w, &err) == 0, "%s: 2-step run: %s", tag, err.msg);
    step_dir(a, sizeof(a), A, 3);
    step_dir(b, sizeof(b), B, 2);
    TEST_CHECK(tc, same_ckpt(a, b, why, sizeof(why)), "%s: skipped step applied something: %s",
               tag, why);
    char path[600], *text = NULL;
    snprintf(path, sizeof(path), "%s/metrics.jsonl", A);
    mm_read_file(path, &text, NULL, &err);
    TEST_CHECK(tc, text && strstr(text, "{\"step\":3,") && strstr(text, "\"skipped\":1") &&
                       strstr(text, "\"grad_norm\":null"),
               "%s: metrics line of the skipped step: %s", tag, text ? text : "(none)");
    free(text);
    step_dir(b, sizeof(b), A, 2);
    TEST_CHECK(tc, same_ckpt(a, b, why, sizeof(why)), "%s: step 3 changed the state: %s", tag,
               why);
    // the comparison can tell: an applied step differs
    char c[600];
    step_dir(c, sizeof(c), B, 2);
    snprintf(A, sizeof(A), "%s/skip_%s_C", root, tag);
    ka[n] = "run.steps=3";
    TEST_CHECK(tc, run(data, A, ka, w, &err) == 0, "%s: 3-step run: %s", tag, err.msg);
    step_dir(a, sizeof(a), A, 3);
    TEST_CHECK(tc, !same_ckpt(a, c, why, sizeof(why)) && strstr(why, "differs"),
               "%s: a real step 3 compares equal to step 2 (%s)", tag, why);
}

// (3): damaged checkpoints and resume: auto.
static void check_fallback(test_counts *tc, comm_group *w, const char *data, const char *root) {
    char R[512], U[512], dir[600], file[700], why[1024];
    snprintf(R, sizeof(R), "%s/fb_R", root);
    snprintf(U, sizeof(U), "%s/fb_U", root);
    mm_err err;
    // stop_after keeps the learning-rate schedule of run.steps = 8, as a preemption would
    const char *s4[] = {"run.steps=8", "run.stop_after=4", NULL}, *s8[] = {"run.steps=8", NULL};
    TEST_CHECK(tc, run(data, U, s8, w, &err) == 0, "uninterrupted run: %s", err.msg);
    TEST_CHECK(tc, run(data, R, s4, w, &err) == 0, "first 4 steps: %s", err.msg);

    // a flipped value in step 4's rank file
    step_dir(dir, sizeof(dir), R, 4);
    snprintf(file, sizeof(file), "%s/rank_00000.h5", dir);
    TEST_CHECK(tc, flip_value(file, "lm_head.w") == 0, "could not damage %s", file);
    mm_config c;
    const char *s6[] = {"run.steps=8", "run.stop_after=6", NULL};
    config_for(&c, data, R, s6);
    char *msg = NULL;
    int rc = run_capture(&c, w, &err, &msg);
    TEST_CHECK(tc, rc == 0, "resume after damage: %s", err.msg);
    TEST_CHECK(tc, strstr(msg, "rank_00000.h5: tensor '") && strstr(msg, "checksum mismatch") &&
                       strstr(msg, "falls back to") && strstr(msg, "step_00000002"),
               "damage reported by file and tensor, fallback said: %s", msg);
    free(msg);

    // a damaged meta.h5 (HDF5's header checksums) in the newest one, step 6
    step_dir(dir, sizeof(dir), R, 6);
    snprintf(file, sizeof(file), "%s/meta.h5", dir);
    TEST_CHECK(tc, poke(file, "n_layers: 1", 10, '7') == 0, "could not damage %s", file);
    config_for(&c, data, R, s8);
    rc = run_capture(&c, w, &err, &msg);
    TEST_CHECK(tc, rc == 0, "resume after meta damage: %s", err.msg);
    TEST_CHECK(tc, strstr(msg, "meta.h5") && strstr(msg, "corrupt") &&
                       strstr(msg, "falls back to") && strstr(msg, "step_00000004"),
               "meta damage reported, fallback said: %s", msg);
    free(msg);
    char a[600], b[600];
    step_dir(a, sizeof(a), R, 8);
    step_dir(b, sizeof(b), U, 8);
    TEST_CHECK(tc, same_ckpt(a, b, why, sizeof(why)),
               "after two fallbacks the run differs from an uninterrupted one: %s", why);
    char *latest = NULL;
    snprintf(file, sizeof(file), "%s/ckpt/latest", R);
    mm_read_file(file, &latest, NULL, &err);
    TEST_CHECK(tc, latest && strcmp(latest, "step_00000008\n") == 0, "latest: %s", latest);
    free(latest);

    // `latest` names a directory that is gone: the newest committed one, saying so
    FILE *f = fopen(file, "w");
    fputs("step_00000010\n", f);
    fclose(f);
    // (a longer run changes the learning-rate schedule: allowed by name)
    const char *s9[] = {"run.steps=9", "checkpoint.allow_changes=[steps]", NULL};
    config_for(&c, data, R, s9);
    rc = run_capture(&c, w, &err, &msg);
    TEST_CHECK(tc, rc == 0 && strstr(msg, "step_00000010") && strstr(msg, "instead"),
               "latest names a missing checkpoint: rc %d: %s / %s", rc, err.msg, msg);
    free(msg);
    snprintf(file, sizeof(file), "%s/ckpt/step_00000009/COMMITTED", R);
    TEST_CHECK(tc, access(file, F_OK) == 0, "resumed from step 8 and committed step 9");

    // without resume: auto there is no fallback: the damage is an error
    step_dir(dir, sizeof(dir), R, 9);
    snprintf(file, sizeof(file), "%s/rank_00000.h5", dir);
    flip_value(file, "lm_head.w");
    char key[700];
    snprintf(key, sizeof(key), "checkpoint.resume=%s", dir);
    const char *explicit_keys[] = {"run.steps=10", "checkpoint.allow_changes=[steps]", key, NULL};
    config_for(&c, data, R, explicit_keys);
    rc = run_capture(&c, w, &err, &msg);
    TEST_CHECK(tc, rc == -1 && strstr(err.msg, "checksum mismatch") && strstr(err.msg, "lm_head.w"),
               "explicit resume of a damaged checkpoint: rc %d: %s", rc, err.msg);
    free(msg);

    TEST_CHECK(tc, ckpt_find_previous(R, dir, file, sizeof(file)) == 1 &&
                       strstr(file, "step_00000008"),
               "previous of step 9: %s", file);
    snprintf(dir, sizeof(dir), "%s/ckpt/step_00000002", R);
    TEST_CHECK(tc, ckpt_find_previous(R, dir, file, sizeof(file)) == 0 ||
                       strstr(file, "step_00000002") == NULL,
               "nothing before the oldest kept");
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    if (argc == 4 && strcmp(argv[1], "--same") == 0) {
        char why[1024];
        int same = same_ckpt(argv[2], argv[3], why, sizeof(why));
        if (same) printf("same\n");
        else printf("differ: %s\n", why);
        comm_finalize(world);
        return same ? 0 : 1;
    }
    test_counts tc = {0, 0};
    omp_set_num_threads(1);
    char tmpl[] = "/tmp/mm_test_survive_XXXXXX";
    char *root = mkdtemp(tmpl);
    MM_CHECK(root, "mkdtemp failed");
    char data[256];
    snprintf(data, sizeof(data), "%s/data", root);
    mm_err err;
    data_synth_cfg sc;
    data_synth_default(&sc);
    MM_CHECK(data_synth_write(data, 64, 5, &sc, &err) == 0, "%s", err.msg);

    check_guard(&tc, world);
    check_trace(&tc, root);
    check_skip(&tc, world, data, root, NULL, "lm");
    const char *dit[] = {"model.kind=diffusion", "model.patch=8", "diffusion.enc_layers=1",
                         "diffusion.eval_samples=4", "diffusion.sample_steps=2",
                         "diffusion.ema_decay=0.5", NULL};
    check_skip(&tc, world, data, root, dit, "dit");
    check_fallback(&tc, world, data, root);

    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", root);
    comm_finalize(world);
    return test_finish(&tc);
}
