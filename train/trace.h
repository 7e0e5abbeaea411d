// trace.h: the step timeline (run.trace): where each rank's time goes inside a training
// step, written as a Chrome trace / Perfetto JSON file per rank, <out_dir>/trace/
// rank_XXXXX.json (README "Step timeline" says how to open it).
//
// Why a module of its own: a slow step is found by looking at its phases side by side (data
// wait, forward, backward per block, each gradient bucket's allreduce, optimizer, evaluation,
// checkpoint), and the trainer, the gradient sync and the families each know one part. They
// share one trace_timeline, handed to them as a pointer; a NULL pointer is tracing off, and
// every entry below is then one predictable branch (the inline wrappers), with no clock read.
//
// Clocks: host phases read mm_now() (a monotonic clock, the same in every process of a
// node, so the ranks' files line up when opened together). Phases of work queued on the
// backend (forward, backward, the optimizer) are marks on its queue (the backend's timer:
// mm_now() on the CPU, CUDA events on a GPU), read back as mm_now() seconds once the step
// ends; on a GPU they are drawn on a thread of their own ("device"), since the host runs
// ahead of them. Each bucket's reduction is timed by the backend (iface reducer_times) and
// drawn on a thread per bucket, since buckets overlap each other.
//
// Memory: every event goes into a buffer allocated at init (no allocation per event),
// written out by trace_flush: at checkpoints, at the end, and when the buffer could not
// take another step. After each flush the file is a complete JSON document; a run killed
// between flushes loses the events since the last one, and a kill during a flush's write can
// leave the file cut (then the file is as complete as the Trace Event Format's JSON array
// form, which Chrome and Perfetto open without the closing bracket). Each job writes its
// file anew: a resumed run's timeline starts at its first step.
#ifndef MM_TRACE_H
#define MM_TRACE_H

#include <stdint.h>
#include <stdio.h>

#include "../core/core.h"
#include "../model/backend.h"
#include "config.h"

// Thread ids of the file: one per thread of a rank, plus the device's queue and one per
// gradient bucket (TRACE_BUCKET + b).
enum { TRACE_MAIN = 1, TRACE_LOADER = 2, TRACE_DEVICE = 3, TRACE_BUCKET = 16 };

// One finished event. name and label are static strings or tensor names that outlive the
// timeline (not owned); label (label_len bytes) is appended after a space when set.
typedef struct {
    const char *name, *label;
    int label_len;
    int tid;
    const char *arg_name;  // NULL: no argument
    int64_t arg;
    double ts, dur;  // seconds, mm_now()'s clock
} trace_event;

// A phase on the backend's queue, resolved when the step ends.
typedef struct {
    const char *name, *label;
    int label_len;
    const char *arg_name;
    int64_t arg;
    int from, to;  // marks; to = -1 while open
} trace_span;

// A phase begun on the main thread and not yet ended.
typedef struct {
    const char *name, *arg_name;
    int64_t arg;
    double ts;
} trace_open;

#define TRACE_DEPTH 8

typedef struct {
    char path[MM_STR + 64];
    int rank;
    const mm_backend *be;  // not owned
    int device_tid;        // where spans go: TRACE_MAIN on a host-memory backend, else DEVICE
    FILE *f;               // owned
    long tail;             // file offset of the closing "]}" (the next events go there)
    int n_buckets;         // bucket threads named so far
    // finished events, owned (cap_ev)
    trace_event *ev;
    int n_ev, cap_ev;
    int step_first;  // ev index where the current step's events begin
    int step_max;    // most events one step has added: a flush leaves room for them
    // the main thread's open phases
    trace_open open[TRACE_DEPTH];
    int depth;
    // the backend's queue: marks and the spans between them, for the current step, owned
    void *timer;
    double *mark_t;  // (cap_marks) the marks' times once read
    int n_marks, cap_marks;
    trace_span *span;  // (cap_marks) spans
    int n_span;
    int dev_open[TRACE_DEPTH];  // open spans (indices into span)
    int dev_depth;
    int stage_from;     // mark where the next backward stage starts
    long long dropped;  // events not kept (a step larger than the buffers)
} trace_timeline;

// Opens <out_dir>/trace/rank_XXXXX.json for rank's timeline of work on be, writes its
// header (names of the process and threads) and allocates the buffers. -1 with err naming
// the file when it cannot be written.
int trace_init(trace_timeline *tl, const char *out_dir, int rank, const mm_backend *be,
               mm_err *err);
// Closes the file (without flushing: call trace_flush first) and frees the buffers.
void trace_free(trace_timeline *tl);
// Appends the finished events to the file, leaving a complete JSON document. -1 with err
// naming the file when a write fails.
int trace_flush(trace_timeline *tl, mm_err *err);
// 1 when the buffer may not hold another step: the caller flushes (where it can stop the
// job with the error).
int trace_full(const trace_timeline *tl);

// The out-of-line halves of the wrappers below.
void trace_begin_(trace_timeline *tl, const char *name, const char *arg_name, int64_t arg);
void trace_end_(trace_timeline *tl);
void trace_event_(trace_timeline *tl, const char *name, const char *label, int label_len, int tid,
                  const char *arg_name, int64_t arg, double ts, double dur);
void trace_dev_begin_(trace_timeline *tl, const char *name, const char *arg_name, int64_t arg);
void trace_dev_end_(trace_timeline *tl);
void trace_dev_next_(trace_timeline *tl, const char *name);
void trace_dev_stage_(trace_timeline *tl, const char *label, int label_len);
void trace_step_(trace_timeline *tl, int64_t step, double t0, double dur);

// A phase of the main thread, timed here: begin ... end, nested at most TRACE_DEPTH deep.
static inline void trace_begin(trace_timeline *tl, const char *name, const char *arg_name,
                               int64_t arg) {
    if (tl) trace_begin_(tl, name, arg_name, arg);
}
static inline void trace_end(trace_timeline *tl) {
    if (tl) trace_end_(tl);
}
// A finished event timed by someone else (a batch's production on the loader thread, a
// bucket's reduction).
static inline void trace_event_at(trace_timeline *tl, const char *name, int tid,
                                  const char *arg_name, int64_t arg, double ts, double dur) {
    if (tl) trace_event_(tl, name, NULL, 0, tid, arg_name, arg, ts, dur);
}
// A phase of the work queued on the backend: from the work queued before begin to the work
// queued before end.
static inline void trace_dev_begin(trace_timeline *tl, const char *name, const char *arg_name,
                                   int64_t arg) {
    if (tl) trace_dev_begin_(tl, name, arg_name, arg);
}
static inline void trace_dev_end(trace_timeline *tl) {
    if (tl) trace_dev_end_(tl);
}
// Ends the innermost device phase and begins `name` with the same argument where it ended
// (a family's forward -> backward).
static inline void trace_dev_next(trace_timeline *tl, const char *name) {
    if (tl) trace_dev_next_(tl, name);
}
// Inside an open device phase (backward): the part queued since it began or since the last
// stage, named "backward <label>" (a block's backward, reported by the gradient hook).
static inline void trace_dev_stage(trace_timeline *tl, const char *label, int label_len) {
    if (tl) trace_dev_stage_(tl, label, label_len);
}
// The step `step` took [t0, t0 + dur] on the main thread (the trainer's own measurement:
// metrics.jsonl's step_time); reads back the device phases queued since the last step
// (waiting for them on a GPU).
static inline void trace_step(trace_timeline *tl, int64_t step, double t0, double dur) {
    if (tl) trace_step_(tl, step, t0, dur);
}

#endif  // MM_TRACE_H
