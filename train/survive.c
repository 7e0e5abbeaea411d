// survive.c: preemption signals, the non-finite step guard and the failure test hooks
// (survive.h says what each promises).
//
// The one mutable global of the project lives here: a signal handler can only reach state
// through a global, and what it may write is a volatile sig_atomic_t or a lock-free atomic
// (C11 7.14.1.1). The handler does nothing else but, on a second signal, write(2) a fixed
// line and _exit, both async-signal-safe. Which thread takes the signal (the main thread, an
// OpenMP worker, the loader thread, an MPI progress thread) does not matter: the flag is
// process-wide and the main loop reads it once per step. The handler swaps its signal in
// with one atomic exchange: a test of the flag and a later store left a window in which two
// signals, taken by two threads at once or one nested in the other's handler (both pending
// while the process was stopped, then delivered together), each saw no signal before them
// and the run stopped gracefully instead of at once (tests/signal.sh caught it under load).
#include "survive.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_int stop_signal;  // first stop signal received, 0 = none
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "a signal handler may only touch lock-free atomics");

static const int stop_signals[3] = {SIGTERM, SIGINT, SIGUSR1};

static void on_stop_signal(int sig) {
    if (atomic_exchange(&stop_signal, sig) != 0) {
        static const char msg[] = "train: second stop signal: exiting now, without a checkpoint\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
        (void)w;
        _exit(128 + sig);
    }
}

void train_signals_install(train_signals *s) {
    struct sigaction *old = mm_calloc(3, sizeof(struct sigaction));
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // file and socket calls of other threads go on undisturbed
    atomic_store(&stop_signal, 0);
    for (int i = 0; i < 3; i++)
        MM_CHECK(sigaction(stop_signals[i], &sa, &old[i]) == 0, "sigaction: %s", strerror(errno));
    s->old = old;
}

void train_signals_restore(train_signals *s) {
    struct sigaction *old = s->old;
    if (!old) return;
    for (int i = 0; i < 3; i++) sigaction(stop_signals[i], &old[i], NULL);
    free(old);
    s->old = NULL;
}

int train_signals_pending(void) { return atomic_load(&stop_signal); }

int train_signals_agree(comm_group *world) {
    int64_t v = atomic_load(&stop_signal);
    comm_allreduce_max(world, &v, 1, COMM_I64);
    return (int)v;
}

const char *train_signal_name(int sig) {
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: return "a stop signal";
    }
}

// ---------------------------------------------------------------------------------------
// Non-finite guard and test hooks.

// "3,4,5" into a malloc'd list. -1 with err naming the variable on anything else.
static int parse_steps(const char *s, int64_t **out, int *n, mm_err *err) {
    int cap = 8;
    int64_t *v = mm_malloc(sizeof(int64_t) * (size_t)cap);
    *n = 0;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || x < 1 || (*end && *end != ',')) {
            free(v);
            return mm_fail(err, "MM_TEST_INJECT_NAN='%.64s': expected 1-based steps like 3,4,5",
                           s);
        }
        if (*n == cap) {
            cap *= 2;
            int64_t *grown = realloc(v, sizeof(int64_t) * (size_t)cap);
            MM_CHECK(grown, "out of memory");
            v = grown;
        }
        v[(*n)++] = x;
        p = *end ? end + 1 : end;
    }
    *out = v;
    return 0;
}

int train_guard_init(train_guard *g, int max_skips, mm_err *err) {
    memset(g, 0, sizeof(*g));
    g->max_skips = max_skips;
    const char *nan = getenv("MM_TEST_INJECT_NAN");
    if (nan && *nan && parse_steps(nan, &g->inject, &g->n_inject, err)) return -1;
    const char *fail = getenv("MM_TEST_FAIL");
    if (fail && *fail) {
        char mode[16];
        int rank;
        long long step;
        char tail;
        if (sscanf(fail, "%15[a-z]:%d:%lld%c", mode, &rank, &step, &tail) != 3 ||
            (strcmp(mode, "exit") && strcmp(mode, "stall")) || rank < 0 || step < 1) {
            train_guard_free(g);
            return mm_fail(err, "MM_TEST_FAIL='%.64s': expected exit:RANK:STEP or "
                           "stall:RANK:STEP", fail);
        }
        g->fail_mode = strcmp(mode, "exit") == 0 ? 1 : 2;
        g->fail_rank = rank;
        g->fail_step = step;
    }
    return 0;
}

void train_guard_free(train_guard *g) {
    free(g->inject);
    memset(g, 0, sizeof(*g));
}

void train_guard_inject(const train_guard *g, int64_t step, const train_net *net) {
    for (int i = 0; i < g->n_inject; i++) {
        if (g->inject[i] != step || net->n_tensors == 0) continue;
        const size_t off = net->tensors[net->n_tensors / 2].offset;
        const mm_real nan = NAN;  // queued after the zeroing, before the backward
        net->be->ops->mem_upload(net->be, net->dgrads + off, &nan, sizeof(nan));
    }
}

void train_guard_fail_point(const train_guard *g, int64_t step, int rank) {
    if (!g->fail_mode || g->fail_rank != rank || g->fail_step != step) return;
    fflush(stdout);
    if (g->fail_mode == 1) _exit(3);
    for (;;) sleep(1000);  // stalled: alive, never reaching the next collective
}

// Index of the first tensor holding a non-finite gradient, n_tensors when none. The
// gradients come over one tensor at a time into buf (owned here): a copy on the CPU too, but
// this runs only after a non-finite step.
static int first_nonfinite(const train_net *net) {
    mm_real *buf = NULL;
    int found = net->n_tensors;
    for (int i = 0; i < net->n_tensors && found == net->n_tensors; i++) {
        const model_tensor *t = &net->tensors[i];
        free(buf);
        buf = mm_malloc(t->size * sizeof(mm_real) + 1);
        net->be->ops->mem_download(net->be, buf, net->dgrads + t->offset,
                                   t->size * sizeof(mm_real));
        const mm_real *x = buf;
        for (size_t j = 0; j < t->size; j++)
            if (!isfinite(x[j])) {
                found = i;
                break;
            }
    }
    free(buf);
    return found;
}

int train_guard_check(train_guard *g, comm_group *world, int64_t step, double loss,
                      double gnorm, const train_net *net, mm_err *err) {
    const model_tensor *tensors = net->tensors;
    const int n_tensors = net->n_tensors;
    if (isfinite(loss) && isfinite(gnorm)) {
        g->consecutive = 0;
        return 0;
    }
    // Only on this rare path: every rank scans its own gradients (under ZeRO or tp each
    // holds other values) and the lowest index anywhere names the tensor.
    int64_t idx = first_nonfinite(net);
    int64_t neg = -idx;
    comm_allreduce_max(world, &neg, 1, COMM_I64);
    idx = -neg;
    if (g->consecutive == 0) {
        g->first_step = step;
        if (idx < n_tensors)
            snprintf(g->first_tensor, sizeof(g->first_tensor), "%s", tensors[idx].name);
        else
            g->first_tensor[0] = '\0';
    }
    g->consecutive++;
    g->total++;
    if (comm_rank(world) == 0) {
        printf("step %lld: non-finite %s (loss %g, grad_norm %g%s%s%s): update skipped "
               "(%d in a row, %lld in this run)\n",
               (long long)step, isfinite(loss) ? "gradient norm" : "loss", loss, gnorm,
               idx < n_tensors ? ", first in tensor '" : "",
               idx < n_tensors ? tensors[idx].name : "", idx < n_tensors ? "'" : "",
               g->consecutive, (long long)g->total);
        fflush(stdout);
    }
    if (g->max_skips > 0 && g->consecutive >= g->max_skips) {
        if (g->first_tensor[0])
            return mm_fail(err,
                           "step %lld: %d consecutive steps with a non-finite loss or gradient "
                           "(optim.max_skips = %d); the first was step %lld, whose first "
                           "non-finite gradient was tensor '%s'",
                           (long long)step, g->consecutive, g->max_skips,
                           (long long)g->first_step, g->first_tensor);
        return mm_fail(err,
                       "step %lld: %d consecutive steps with a non-finite loss or gradient "
                       "(optim.max_skips = %d); the first was step %lld, with finite gradients "
                       "but a non-finite loss",
                       (long long)step, g->consecutive, g->max_skips, (long long)g->first_step);
    }
    return 1;
}

static void json_num(FILE *f, const char *key, double x) {
    if (isfinite(x)) fprintf(f, ",\"%s\":%.9g", key, x);
    else fprintf(f, ",\"%s\":null", key);
}

void train_guard_log(const train_guard *g, FILE *metrics, int64_t step, double loss,
                     double gnorm, double lr) {
    fprintf(metrics, "{\"step\":%lld", (long long)step);
    json_num(metrics, "loss", loss);
    json_num(metrics, "lr", lr);
    json_num(metrics, "grad_norm", gnorm);
    fprintf(metrics, ",\"skipped\":1,\"skips_in_a_row\":%d,\"skips\":%lld}\n", g->consecutive,
            (long long)g->total);
    fflush(metrics);
}

// ---------------------------------------------------------------------------------------
// Logs after a kill.

int train_log_truncate(const char *path, int64_t step, const char *key, mm_err *err) {
    char *text = NULL;
    size_t n = 0;
    mm_err ignore;
    if (mm_read_file(path, &text, &n, &ignore) != 0) return 0;  // no file yet
    char *out = mm_malloc(n + 1);
    size_t o = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line + 1) : strlen(line);
        // a line the kill cut short has no newline; a later step was never committed
        const char *at = key ? strstr(line, key) : line;
        int keep = nl && at && at < line + len &&
                   strtoll(at + (key ? strlen(key) : 0), NULL, 10) <= step;
        if (keep) {
            memcpy(out + o, line, len);
            o += len;
        }
        line += len;
    }
    int rc = o == n ? 0 : mm_write_file_atomic(path, out, o, err);
    free(out);
    free(text);
    return rc;
}
