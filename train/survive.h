// survive.h: what keeps a training run from losing work on a shared cluster, kept out of the
// main loop so that trainer.c only calls a few hooks (README "Surviving the cluster"):
//
//   - preemption: SIGTERM, SIGINT and SIGUSR1 ask the run to stop. Every rank finishes the
//     step it is in; the ranks then AGREE on stopping (one 8-byte allreduce-max of the
//     "signal seen" flag per step, so a signal that reached only some ranks, or reached them
//     in different steps, still stops all of them after the same step), write a checkpoint
//     together and exit 0. A second signal to a rank ends it at once (_exit).
//   - non-finite numbers: a step whose loss or global gradient norm is not finite applies
//     nothing (parameters, AdamW moments and EMA untouched); the step still counts (the
//     loader position and the learning-rate schedule move on, so the next step trains on
//     fresh data), the skip is printed and written to metrics.jsonl, and optim.max_skips
//     consecutive skips end the run with an error naming the step and the first tensor
//     whose gradient went non-finite.
//   - test hooks (environment variables, for the test suite only; never set them in a real
//     run): MM_TEST_INJECT_NAN=STEP[,STEP...] puts a NaN into one gradient (the tensor in
//     the middle of the table) at those 1-based steps on every rank;
//     MM_TEST_FAIL=exit:RANK:STEP or stall:RANK:STEP makes world rank RANK exit (status 3,
//     without MPI_Finalize) or sleep forever in the middle of step STEP (after backward,
//     before the gradient reduction completes).
#ifndef MM_SURVIVE_H
#define MM_SURVIVE_H

#include <stdint.h>
#include <stdio.h>

#include "../comm/comm.h"
#include "../core/core.h"
#include "../model/model.h"
#include "gradsync.h"

// --- preemption signals ----------------------------------------------------------------

// The handlers replaced by train_signals_install, restored by train_signals_restore.
typedef struct {
    void *old;  // (3) struct sigaction, owned
} train_signals;

// Installs the handlers for SIGTERM, SIGINT and SIGUSR1 and clears any earlier request.
// One run per process at a time (the flag a handler may touch is process-wide).
void train_signals_install(train_signals *s);
void train_signals_restore(train_signals *s);
// The first stop signal this process received (0 = none). Local, not collective.
int train_signals_pending(void);
// Collective over world: the largest signal number any rank received (0 = none), so every
// rank decides alike whether to stop after this step.
int train_signals_agree(comm_group *world);
// "SIGTERM", "SIGUSR1", ... for messages.
const char *train_signal_name(int sig);

// --- non-finite steps ------------------------------------------------------------------

typedef struct {
    int max_skips;          // optim.max_skips: this many consecutive skips end the run
    int consecutive;        // skips in a row up to the last step
    int64_t total;          // skips since this process started the run
    int64_t first_step;     // step of the first skip of the current streak
    char first_tensor[64];  // first non-finite gradient tensor of the streak ("" = loss)
    int64_t *inject;        // (n_inject) MM_TEST_INJECT_NAN steps, owned
    int n_inject;
    int fail_mode;          // MM_TEST_FAIL: 0 none, 1 exit, 2 stall
    int fail_rank;
    int64_t fail_step;
} train_guard;

// Reads optim.max_skips and the test hooks. -1 with err when a hook variable is malformed.
int train_guard_init(train_guard *g, int max_skips, mm_err *err);
void train_guard_free(train_guard *g);

// Test hook: at the start of step `step` (1-based, gradients just zeroed) puts a NaN into
// the gradient of the tensor in the middle of net's table when MM_TEST_INJECT_NAN lists
// step; on the host gradients, or on the device's (backend cuda).
void train_guard_inject(const train_guard *g, int64_t step, const train_net *net);
// Test hook: in the middle of step `step` on world rank `rank`, exits or stalls as
// MM_TEST_FAIL says.
void train_guard_fail_point(const train_guard *g, int64_t step, int rank);

// After the gradient reduction of step `step` (1-based): 1 when the step must be skipped
// (loss or gnorm not finite), 0 otherwise. loss and gnorm are identical on every rank, so
// every rank decides alike; on a skip the ranks find (collectively over world) the first
// tensor, in table order, whose local gradient holds a non-finite value (device gradients
// are copied to the host tensor by tensor for that, on this rare path only). Returns -1
// with err once max_skips consecutive steps were skipped.
int train_guard_check(train_guard *g, comm_group *world, int64_t step, double loss,
                      double gnorm, const train_net *net, mm_err *err);
// The metrics.jsonl line of a skipped step (rank 0): non-finite numbers as null, so the
// file stays JSON.
void train_guard_log(const train_guard *g, FILE *metrics, int64_t step, double loss,
                     double gnorm, double lr);

// --- logs after a kill -----------------------------------------------------------------

// Keeps only the lines of a log of steps <= step, and drops a last line without a newline
// (cut short by a kill), so that after a resume the file reads like one uninterrupted run.
// A line's step is the number after `key` in it (metrics.jsonl: "\"step\":"), or with key
// NULL its first number (data.trace: every sample once per epoch); a line without it is
// dropped. The trainer flushes the trace every step and the metrics before each checkpoint,
// so nothing before a checkpoint is ever lost. A missing file is no error.
int train_log_truncate(const char *path, int64_t step, const char *key, mm_err *err);

#endif  // MM_SURVIVE_H
