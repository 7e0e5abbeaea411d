// trace.c: the step timeline (trace.h): events kept in preallocated buffers, written as the
// Trace Event Format's JSON object form ({"traceEvents": [...]}) with "X" (complete) events,
// microseconds, pid = rank and a tid per thread named by "M" events.
#include "trace.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

// Room for the events of many steps between checkpoints (48 bytes each: 3 MiB), and for the
// device marks of one step (a mark per backward stage of every micro-step).
#define TRACE_EVENTS 65536
#define TRACE_MARKS 4096

static const char TRACE_CLOSE[] = "\n],\"displayTimeUnit\":\"ms\"}\n";

static int write_failed(trace_timeline *tl, mm_err *err) {
    return mm_fail(err, "%s: cannot write the step timeline: %s", tl->path,
                   errno ? strerror(errno) : "write error");
}

// The closing of the document at tl->tail, flushed: the file is complete after every write.
static int close_document(trace_timeline *tl, mm_err *err) {
    errno = 0;
    tl->tail = ftell(tl->f);
    if (tl->tail < 0 || fputs(TRACE_CLOSE, tl->f) < 0 || fflush(tl->f) != 0)
        return write_failed(tl, err);
    return 0;
}

static int name_thread(FILE *f, int rank, int tid, const char *name) {
    return fprintf(f,
                   ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":%d,\"tid\":%d,"
                   "\"args\":{\"name\":\"%s\"}},\n{\"name\":\"thread_sort_index\",\"ph\":\"M\","
                   "\"pid\":%d,\"tid\":%d,\"args\":{\"sort_index\":%d}}",
                   rank, tid, name, rank, tid, tid);
}

int trace_init(trace_timeline *tl, const char *out_dir, int rank, const mm_backend *be,
               mm_err *err) {
    memset(tl, 0, sizeof(*tl));
    tl->rank = rank;
    tl->be = be;
    tl->device_tid = be->caps.host_memory ? TRACE_MAIN : TRACE_DEVICE;
    snprintf(tl->path, sizeof(tl->path), "%s/trace", out_dir);
    if (mm_mkdirs(tl->path, err) != 0) return -1;
    snprintf(tl->path, sizeof(tl->path), "%s/trace/rank_%05d.json", out_dir, rank);
    tl->f = fopen(tl->path, "w");
    if (!tl->f) return write_failed(tl, err);
    int rc = fprintf(tl->f,
                     "{\"traceEvents\":[\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,"
                     "\"tid\":0,\"args\":{\"name\":\"rank %d\"}},\n{\"name\":"
                     "\"process_sort_index\",\"ph\":\"M\",\"pid\":%d,\"tid\":0,\"args\":"
                     "{\"sort_index\":%d}}",
                     rank, rank, rank, rank);
    if (rc >= 0) rc = name_thread(tl->f, rank, TRACE_MAIN, "main");
    if (rc >= 0) rc = name_thread(tl->f, rank, TRACE_LOADER, "loader");
    if (rc >= 0 && tl->device_tid == TRACE_DEVICE)
        rc = name_thread(tl->f, rank, TRACE_DEVICE, "device");
    if (rc < 0) return write_failed(tl, err);
    if (close_document(tl, err) != 0) return -1;
    tl->cap_ev = TRACE_EVENTS;
    tl->ev = mm_malloc((size_t)tl->cap_ev * sizeof(trace_event));
    tl->cap_marks = TRACE_MARKS;
    tl->mark_t = mm_malloc((size_t)tl->cap_marks * sizeof(double));
    tl->span = mm_malloc((size_t)tl->cap_marks * sizeof(trace_span));
    tl->timer = be->iface->timer_new(be, tl->cap_marks);
    return 0;
}

void trace_free(trace_timeline *tl) {
    if (tl->timer) tl->be->iface->timer_free(tl->be, tl->timer);
    if (tl->f) fclose(tl->f);
    free(tl->ev);
    free(tl->mark_t);
    free(tl->span);
    memset(tl, 0, sizeof(*tl));
}

int trace_full(const trace_timeline *tl) {
    return tl->cap_ev - tl->n_ev < 2 * tl->step_max + 64;
}

// JSON string bodies: names are ours or tensor names ([a-z0-9._]); anything else becomes '?'
// so that the file stays valid whatever a name holds.
static int put_name(FILE *f, const char *s, int n) {
    for (int i = 0; i < n && s[i]; i++) {
        const char ch = s[i];
        if (fputc(ch == '"' || ch == '\\' || (unsigned char)ch < 0x20 ? '?' : ch, f) < 0) return -1;
    }
    return 0;
}

int trace_flush(trace_timeline *tl, mm_err *err) {
    if (!tl) return 0;
    errno = 0;
    FILE *f = tl->f;
    if (fseek(f, tl->tail, SEEK_SET) != 0) return write_failed(tl, err);
    int rc = 0;
    for (int i = 0; i < tl->n_ev && rc >= 0; i++) {
        const trace_event *e = &tl->ev[i];
        for (; e->tid >= TRACE_BUCKET + tl->n_buckets && rc >= 0; tl->n_buckets++) {
            char name[32];
            snprintf(name, sizeof(name), "comm bucket %d", tl->n_buckets);
            rc = name_thread(f, tl->rank, TRACE_BUCKET + tl->n_buckets, name);
        }
        if (rc >= 0) rc = fputs(",\n{\"name\":\"", f);
        if (rc >= 0) rc = put_name(f, e->name, (int)strlen(e->name));
        if (rc >= 0 && e->label && e->label_len > 0) {
            rc = fputc(' ', f);
            if (rc >= 0) rc = put_name(f, e->label, e->label_len);
        }
        if (rc >= 0)
            rc = fprintf(f, "\",\"ph\":\"X\",\"pid\":%d,\"tid\":%d,\"ts\":%.3f,\"dur\":%.3f",
                         tl->rank, e->tid, e->ts * 1e6, e->dur > 0 ? e->dur * 1e6 : 0.0);
        if (rc >= 0 && e->arg_name)
            rc = fprintf(f, ",\"args\":{\"%s\":%lld}", e->arg_name, (long long)e->arg);
        if (rc >= 0) rc = fputc('}', f);
    }
    if (rc < 0) return write_failed(tl, err);
    tl->n_ev = tl->step_first = 0;
    if (tl->dropped) {  // said once per flush that lost some
        fprintf(stderr, "note: %s: %lld events not kept (a step larger than the buffers)\n",
                tl->path, tl->dropped);
        tl->dropped = 0;
    }
    return close_document(tl, err);
}

// --------------------------------------------------------------------------------------
// events

void trace_event_(trace_timeline *tl, const char *name, const char *label, int label_len, int tid,
                  const char *arg_name, int64_t arg, double ts, double dur) {
    if (tl->n_ev == tl->cap_ev) {  // a single step larger than the buffer: counted, said at
        tl->dropped++;             // the next flush
        return;
    }
    tl->ev[tl->n_ev++] = (trace_event){.name = name,
                                       .label = label,
                                       .label_len = label_len,
                                       .tid = tid,
                                       .arg_name = arg_name,
                                       .arg = arg,
                                       .ts = ts,
                                       .dur = dur};
}

void trace_begin_(trace_timeline *tl, const char *name, const char *arg_name, int64_t arg) {
    MM_CHECK(tl->depth < TRACE_DEPTH, "trace: phases nested deeper than %d (%s)", TRACE_DEPTH,
             name);
    tl->open[tl->depth++] = (trace_open){name, arg_name, arg, mm_now()};
}

void trace_end_(trace_timeline *tl) {
    MM_CHECK(tl->depth > 0, "trace: trace_end without trace_begin");
    const trace_open *o = &tl->open[--tl->depth];
    trace_event_(tl, o->name, NULL, 0, TRACE_MAIN, o->arg_name, o->arg, o->ts, mm_now() - o->ts);
}

// A mark on the backend's queue; -1 when this step has used them all (its spans are lost).
static int mark(trace_timeline *tl) {
    if (tl->n_marks == tl->cap_marks) return -1;
    tl->be->iface->timer_mark(tl->be, tl->timer, tl->n_marks);
    return tl->n_marks++;
}

static trace_span *new_span(trace_timeline *tl, const char *name, const char *label, int label_len,
                            const char *arg_name, int64_t arg, int from) {
    if (tl->n_span == tl->cap_marks) return NULL;
    trace_span *s = &tl->span[tl->n_span++];
    *s = (trace_span){name, label, label_len, arg_name, arg, from, -1};
    return s;
}

void trace_dev_begin_(trace_timeline *tl, const char *name, const char *arg_name, int64_t arg) {
    MM_CHECK(tl->dev_depth < TRACE_DEPTH, "trace: device phases nested deeper than %d (%s)",
             TRACE_DEPTH, name);
    const int m = mark(tl);
    trace_span *s = new_span(tl, name, NULL, 0, arg_name, arg, m);
    tl->dev_open[tl->dev_depth++] = s ? (int)(s - tl->span) : -1;
    tl->stage_from = m;
}

void trace_dev_end_(trace_timeline *tl) {
    MM_CHECK(tl->dev_depth > 0, "trace: trace_dev_end without trace_dev_begin");
    const int i = tl->dev_open[--tl->dev_depth];
    const int m = mark(tl);
    if (i >= 0) tl->span[i].to = m;
}

void trace_dev_next_(trace_timeline *tl, const char *name) {
    MM_CHECK(tl->dev_depth > 0, "trace: trace_dev_next without trace_dev_begin");
    const int i = tl->dev_open[tl->dev_depth - 1];
    const char *arg_name = i >= 0 ? tl->span[i].arg_name : NULL;
    const int64_t arg = i >= 0 ? tl->span[i].arg : 0;
    trace_dev_end_(tl);
    trace_dev_begin_(tl, name, arg_name, arg);
}

void trace_dev_stage_(trace_timeline *tl, const char *label, int label_len) {
    if (tl->dev_depth == 0) return;  // the hook outside a traced backward (evaluation's)
    const int m = mark(tl);
    trace_span *s = new_span(tl, "backward", label, label_len, NULL, 0, tl->stage_from);
    if (s) s->to = m;
    tl->stage_from = m;
}

void trace_step_(trace_timeline *tl, int64_t step, double t0, double dur) {
    if (tl->n_marks > 0) {
        tl->be->iface->timer_read(tl->be, tl->timer, tl->n_marks, tl->mark_t);
        for (int i = 0; i < tl->n_span; i++) {
            const trace_span *s = &tl->span[i];
            if (s->from < 0 || s->to < 0) {
                tl->dropped++;
                continue;
            }
            const double a = tl->mark_t[s->from], b = tl->mark_t[s->to];
            trace_event_(tl, s->name, s->label, s->label_len, tl->device_tid, s->arg_name, s->arg,
                         a, b - a);
        }
    }
    tl->n_marks = tl->n_span = tl->dev_depth = 0;
    trace_event_(tl, "step", NULL, 0, TRACE_MAIN, "step", step, t0, dur);
    // what a step adds (with the evaluation or checkpoint before it): a flush leaves room
    if (tl->n_ev - tl->step_first > tl->step_max) tl->step_max = tl->n_ev - tl->step_first;
    tl->step_first = tl->n_ev;
}
