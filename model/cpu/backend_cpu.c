// backend_cpu.c: the CPU backend object (backend.h): host memory, OpenMP threads and MPI
// between ranks. It has no state, so it is one immutable object. Its optimizer kernels are
// the reference arithmetic every other backend follows step for step: AdamW with decoupled
// weight decay, the gradient sum of squares over fixed chunks, and the EMA of the weights.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../backend.h"
#include "cpu_isa.h"

static void cpu_destroy(const mm_backend *be MM_UNUSED) {}
static void cpu_sync(const mm_backend *be MM_UNUSED) {}

// ---------------------------------------------------------------------------------------
// staging: host batches are read where they are

static void *cpu_stage_new(const mm_backend *be MM_UNUSED, size_t bytes MM_UNUSED) {
    return mm_calloc(1, 1);  // a distinct handle; nothing is staged
}

static void cpu_stage_put(const mm_backend *be MM_UNUSED, void *stage MM_UNUSED, int n,
                          const void *const *src, const size_t *len MM_UNUSED, void **dst) {
    for (int i = 0; i < n; i++) dst[i] = (void *)src[i];
}

static void cpu_stage_done(const mm_backend *be MM_UNUSED, void *stage MM_UNUSED) {}
static void cpu_stage_free(const mm_backend *be MM_UNUSED, void *stage) {
    free(stage);
}

// ---------------------------------------------------------------------------------------
// optimizer kernels

typedef struct {
    mm_opt_seg *seg;  // (n_seg) owned
    int n_seg;
    size_t lo, hi;
} cpu_plan;

static void *cpu_opt_plan_new(const mm_backend *be MM_UNUSED, const mm_opt_seg *seg, int n_seg,
                              size_t lo, size_t hi) {
    cpu_plan *p = mm_calloc(1, sizeof(*p));
    p->seg = mm_calloc((size_t)(n_seg > 0 ? n_seg : 1), sizeof(mm_opt_seg));
    if (n_seg > 0) memcpy(p->seg, seg, (size_t)n_seg * sizeof(mm_opt_seg));
    p->n_seg = n_seg;
    p->lo = lo;
    p->hi = hi;
    return p;
}

static void cpu_opt_plan_free(const mm_backend *be MM_UNUSED, void *plan) {
    cpu_plan *p = plan;
    if (!p) return;
    free(p->seg);
    free(p);
}

// Fixed chunks, each summed in order, then the chunk sums in order: the result depends on
// n only, not on how OpenMP schedules threads. A chunk's sum is one serial chain of double
// adds (latency bound), so a task runs LANES chunks side by side: independent chains in
// flight at once, each still in its own order, so the same bits.
enum { SUMSQ_CHUNK = 1 << 14, SUMSQ_LANES = 4 };

// part[l] = sum of squares of chunk c0 + l of g (n elements in all), l < lanes
CPU_ISA_CLONES
static void sumsq_chunks(const float *g, size_t n, size_t c0, int lanes, double *part) {
    double s[SUMSQ_LANES] = {0};
    const float *base = g + c0 * SUMSQ_CHUNK;
    // every chunk but the last is full: run the full ones together
    int full = lanes;
    while (full > 0 && (c0 + (size_t)full) * SUMSQ_CHUNK > n) full--;
    for (size_t i = 0; i < SUMSQ_CHUNK; i++)
        for (int l = 0; l < full; l++) {
            const double x = base[(size_t)l * SUMSQ_CHUNK + i];
            s[l] += x * x;
        }
    for (int l = full; l < lanes; l++) {
        const size_t lo = (c0 + (size_t)l) * SUMSQ_CHUNK;
        for (size_t i = lo; i < n; i++) s[l] += (double)g[i] * (double)g[i];
    }
    for (int l = 0; l < lanes; l++) part[l] = s[l];
}

static double sumsq(const float *g, size_t n) {
    const size_t nchunks = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    const size_t ntasks = (nchunks + SUMSQ_LANES - 1) / SUMSQ_LANES;
    double one[SUMSQ_LANES],
        *part = nchunks <= SUMSQ_LANES ? one : mm_malloc(nchunks * sizeof(double));
#pragma omp parallel for schedule(static) if (ntasks > 1)
    for (size_t t = 0; t < ntasks; t++) {
        const size_t c0 = t * SUMSQ_LANES;
        const int lanes = nchunks - c0 < SUMSQ_LANES ? (int)(nchunks - c0) : SUMSQ_LANES;
        sumsq_chunks(g, n, c0, lanes, part + c0);
    }
    double total = 0.0;
    for (size_t c = 0; c < nchunks; c++) total += part[c];
    if (part != one) free(part);
    return total;
}

static void cpu_sumsq(const mm_backend *be MM_UNUSED, const void *plan, const float *grads,
                      double *sharded, double *replicated) {
    const cpu_plan *p = plan;
    *sharded = *replicated = 0.0;
    for (int s = 0; s < p->n_seg; s++) {
        double v = sumsq(grads + (p->seg[s].offset - p->lo), p->seg[s].size);
        if (p->seg[s].sharded)
            *sharded += v;
        else
            *replicated += v;
    }
}

// AdamW on n contiguous elements. Its own function with restrict pointers and a plain counted
// loop: written inline under `omp for simd` over size_t, GCC 12 left it scalar ("control flow
// in loop"). Elementwise and without contraction (-std=c11), so vector and scalar code give
// the same bits.
CPU_ISA_CLONES
static void adamw_span(float *restrict p, const float *restrict g, float *restrict m,
                       float *restrict v, size_t n, float b1, float b2, float eps, float ibc1,
                       float ibc2, float lr, float wd, float gs) {
#pragma omp simd
    for (size_t i = 0; i < n; i++) {
        float gi = g[i] * gs;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        float mhat = mi * ibc1, vhat = vi * ibc2;
        p[i] -= lr * (mhat / (sqrtf(vhat) + eps) + wd * p[i]);
    }
}

static void cpu_adamw(const mm_backend *be MM_UNUSED, const void *plan, float *params,
                      const float *grads, float *m, float *v, const mm_adamw_args *a) {
    const cpu_plan *p = plan;
    const float b1 = (float)a->beta1, b2 = (float)a->beta2, eps = (float)a->eps;
    // reciprocals of the bias corrections: the loop then divides once per element, not three
    // times (vector division is the slowest op in it)
    const float ibc1 = (float)(1.0 / (1.0 - pow(a->beta1, (double)a->step)));
    const float ibc2 = (float)(1.0 / (1.0 - pow(a->beta2, (double)a->step)));
    const float flr = (float)a->lr, wd = (float)a->weight_decay, gs = (float)a->grad_scale;
    const size_t base = p->lo;  // m, v and grads are indexed from lo
    // One parallel region for all tensors; each thread takes its contiguous share of every
    // tensor (elementwise, so no barrier between tensors).
#pragma omp parallel
    {
        const size_t nth = (size_t)omp_get_num_threads(), tid = (size_t)omp_get_thread_num();
        for (int s = 0; s < p->n_seg; s++) {
            const size_t n = p->seg[s].size, per = (n + nth - 1) / nth;
            const size_t i0 = tid * per < n ? tid * per : n;
            const size_t i1 = i0 + per < n ? i0 + per : n;
            const size_t lo = p->seg[s].offset + i0, j = lo - base;
            adamw_span(params + lo, grads + j, m + j, v + j, i1 - i0, b1, b2, eps, ibc1, ibc2,
                       flr * p->seg[s].lr_mult, wd * p->seg[s].decay, gs);
        }
    }
}

CPU_ISA_CLONES
static void cpu_ema(const mm_backend *be MM_UNUSED, float *ema, const float *params, size_t n,
                    float decay) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + (1.0f - decay) * params[i];
}

// ---------------------------------------------------------------------------------------
// gradient buckets: non-blocking MPI allreduces on the host buffer

typedef struct {
    comm_group *dp;  // not owned
    float *grads;    // (n) not owned
    int n_buckets;
    size_t *lo;          // (n_buckets + 1) owned
    comm_request **req;  // (n_buckets) in flight, owned
    double *t;           // (2 n_buckets) each bucket's start and end for the step timeline,
                         // owned; NULL while nobody asked (reducer_times)
} cpu_reducer;

static void *cpu_reducer_new(const mm_backend *be MM_UNUSED, const mm_coll *dp, float *grads,
                             size_t n MM_UNUSED, int n_buckets, const size_t *bucket_lo) {
    cpu_reducer *r = mm_calloc(1, sizeof(*r));
    r->dp = dp->group;
    r->grads = grads;
    r->n_buckets = n_buckets;
    r->lo = mm_malloc(((size_t)n_buckets + 1) * sizeof(size_t));
    memcpy(r->lo, bucket_lo, ((size_t)n_buckets + 1) * sizeof(size_t));
    r->req = mm_calloc((size_t)n_buckets, sizeof(comm_request *));
    return r;
}

static void cpu_reducer_start(const mm_backend *be MM_UNUSED, void *rp, int b) {
    cpu_reducer *r = rp;
    if (r->t) r->t[2 * b] = mm_now(), r->t[2 * b + 1] = 0;
    r->req[b] = comm_iallreduce_sum(r->dp, r->grads + r->lo[b], r->lo[b + 1] - r->lo[b], COMM_F32);
}

// there is no progress thread: without these tests the reductions would only move in the
// final wait. A bucket's end, for the timeline, is when a test first sees it complete.
static void cpu_reducer_progress(const mm_backend *be MM_UNUSED, void *rp) {
    cpu_reducer *r = rp;
    for (int b = r->n_buckets - 1; b >= 0; b--) {
        const int done = comm_test(r->req[b]);  // NULL: no-op
        if (r->t && done && r->req[b] && r->t[2 * b + 1] == 0) r->t[2 * b + 1] = mm_now();
    }
}

static void cpu_reducer_finish(const mm_backend *be MM_UNUSED, void *rp) {
    cpu_reducer *r = rp;
    for (int b = 0; b < r->n_buckets; b++) {
        comm_wait(r->req[b]);
        if (r->t && r->req[b] && r->t[2 * b + 1] == 0) r->t[2 * b + 1] = mm_now();
        r->req[b] = NULL;
    }
}

static void cpu_reducer_times(const mm_backend *be MM_UNUSED, void *rp, double *start,
                              double *end) {
    cpu_reducer *r = rp;
    if (!r->t) r->t = mm_calloc(2 * (size_t)r->n_buckets, sizeof(double));
    for (int b = 0; start && end && b < r->n_buckets; b++)
        start[b] = r->t[2 * b], end[b] = r->t[2 * b + 1];
}

static void cpu_reducer_free(const mm_backend *be MM_UNUSED, void *rp) {
    cpu_reducer *r = rp;
    if (!r) return;
    free(r->lo);
    free(r->req);
    free(r->t);
    free(r);
}

// ---------------------------------------------------------------------------------------
// the step timeline's marks: every op has run when it returns, so a mark is the time now

static void *cpu_timer_new(const mm_backend *be MM_UNUSED, int n) {
    return mm_calloc((size_t)n, sizeof(double));
}

static void cpu_timer_mark(const mm_backend *be MM_UNUSED, void *tm, int i) {
    ((double *)tm)[i] = mm_now();
}

static void cpu_timer_read(const mm_backend *be MM_UNUSED, void *tm, int n, double *t) {
    memcpy(t, tm, (size_t)n * sizeof(double));
}

static void cpu_timer_free(const mm_backend *be MM_UNUSED, void *tm) {
    free(tm);
}

// ---------------------------------------------------------------------------------------
// collectives: comm/'s MPI ones, on the buffers where they are

#ifdef MM_F64
#define MM_REAL_COMM COMM_F64
#else
#define MM_REAL_COMM COMM_F32
#endif

static void *cpu_coll_init(const mm_backend *be MM_UNUSED, comm_group *g MM_UNUSED) {
    return NULL;
}

static void cpu_coll_free(const mm_backend *be MM_UNUSED, void *impl MM_UNUSED) {}

static void cpu_allreduce(const mm_backend *be MM_UNUSED, const mm_coll *c, mm_real *buf,
                          size_t n) {
    comm_allreduce_sum(c->group, buf, n, MM_REAL_COMM);
}

static void cpu_reduce_scatter(const mm_backend *be MM_UNUSED, const mm_coll *c, const float *send,
                               float *recv, size_t count) {
    comm_reduce_scatter_sum(c->group, send, recv, count);
}

static void cpu_all_gather(const mm_backend *be MM_UNUSED, const mm_coll *c, float *buf,
                           size_t count) {
    comm_all_gather(c->group, buf + count * (size_t)comm_rank(c->group), buf, count, COMM_F32);
}

// ---------------------------------------------------------------------------------------
// memory: the host's

static void cpu_mem_avail(const mm_backend *be MM_UNUSED, size_t *avail, size_t *total) {
    const long page = sysconf(_SC_PAGESIZE);
    const long av = sysconf(_SC_AVPHYS_PAGES), all = sysconf(_SC_PHYS_PAGES);
    *avail = av > 0 && page > 0 ? (size_t)av * (size_t)page : 0;
    *total = all > 0 && page > 0 ? (size_t)all * (size_t)page : 0;
}

static size_t cpu_scratch_bound(const mm_backend *be MM_UNUSED, const model_mem *m MM_UNUSED) {
    return 0;
}

static const mm_backend_iface cpu_iface = {
    .destroy = cpu_destroy,
    .sync = cpu_sync,
    .stage_new = cpu_stage_new,
    .stage_put = cpu_stage_put,
    .stage_done = cpu_stage_done,
    .stage_free = cpu_stage_free,
    .opt_plan_new = cpu_opt_plan_new,
    .opt_plan_free = cpu_opt_plan_free,
    .adamw = cpu_adamw,
    .sumsq = cpu_sumsq,
    .ema = cpu_ema,
    .reducer_new = cpu_reducer_new,
    .reducer_start = cpu_reducer_start,
    .reducer_progress = cpu_reducer_progress,
    .reducer_finish = cpu_reducer_finish,
    .reducer_free = cpu_reducer_free,
    .reducer_times = cpu_reducer_times,
    .timer_new = cpu_timer_new,
    .timer_mark = cpu_timer_mark,
    .timer_read = cpu_timer_read,
    .timer_free = cpu_timer_free,
    .coll_init = cpu_coll_init,
    .coll_free = cpu_coll_free,
    .allreduce = cpu_allreduce,
    .allreduce_acts = cpu_allreduce,  // activations are mm_real here
    .reduce_scatter = cpu_reduce_scatter,
    .all_gather = cpu_all_gather,
    .mem_avail = cpu_mem_avail,
    .scratch_bound = cpu_scratch_bound,
};

const mm_backend mm_backend_cpu = {
    .name = "cpu",
    .kind = MM_BACKEND_CPU,
    .caps = {.host_memory = 1, .tp = 1, .zero = 1},
    .act_bytes = sizeof(mm_real),
    .ops = &model_ops_cpu,
    .iface = &cpu_iface,
    .ctx = NULL,
    .desc = "",  // nothing worth a line per rank
};
