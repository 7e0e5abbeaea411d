// backend_cuda.cu: the CUDA backend object (backend.h): this rank's GPU context behind the
// generic ops table (model_ops_cuda), and the iface the trainer uses around a step: staging
// through pinned buffers and a copy stream, the optimizer kernels of cuda.cu, and the
// collectives the models and ZeRO-1 run on device buffers (tp activations, reduce-scatter,
// all-gather), and the data-parallel bucket reduction.
//
// Buckets: when backward reports a bucket final, an event recorded on the compute stream
// marks the point; the comm stream waits for it and runs the bucket's NCCL allreduce, so the
// reduction overlaps the rest of backward; finish makes the compute stream wait for the comm
// stream, so the norm and AdamW read the sums. The other collectives run on the compute
// stream itself, in order with the kernels around them. In a CUDA build without NCCL (and in
// the CPU emulation build, which is how make test checks this logic on a machine without
// GPUs) they go through the host instead: the buckets downloaded when final, summed with
// comm/'s non-blocking MPI allreduce while backward goes on, uploaded in finish; the others
// downloaded, reduced with MPI and uploaded in place.
#include <stdio.h>
#include <stdlib.h>

#include "cuda_internal.h"

static cuda_ctx *ctx_of(const mm_backend *be) {
    return cu_ctx(be);
}

static void cb_destroy(const mm_backend *be) {
    cuda_ctx *c = ctx_of(be);
    cuda_ctx_free(c);
    free(c);
    free((void *)be);  // cuda_backend_create allocated it
}

static void cb_sync(const mm_backend *be) {
    cuda_ctx_sync(ctx_of(be));
}

// ---------------------------------------------------------------------------------------
// staging

static void *cb_stage_new(const mm_backend *be, size_t bytes) {
    cuda_stage *s = (cuda_stage *)mm_calloc(1, sizeof(cuda_stage));
    cuda_stage_init(s, ctx_of(be), bytes);
    return s;
}

static void cb_stage_put(const mm_backend *be, void *stage, int n, const void *const *src,
                         const size_t *len, void **dst) {
    cuda_stage_put((cuda_stage *)stage, ctx_of(be), n, src, len, dst);
}

static void cb_stage_done(const mm_backend *be, void *stage) {
    cuda_stage_done((cuda_stage *)stage, ctx_of(be));
}

static void cb_stage_free(const mm_backend *be MM_UNUSED, void *stage) {
    cuda_stage_free((cuda_stage *)stage);
    free(stage);
}

// ---------------------------------------------------------------------------------------
// optimizer

static void *cb_opt_plan_new(const mm_backend *be, const mm_opt_seg *seg, int n_seg, size_t lo,
                             size_t hi) {
    cuda_plan *p = (cuda_plan *)mm_calloc(1, sizeof(cuda_plan));
    cuda_plan_init(p, ctx_of(be), seg, n_seg, lo, hi);
    return p;
}

static void cb_opt_plan_free(const mm_backend *be MM_UNUSED, void *plan) {
    cuda_plan_free((cuda_plan *)plan);
    free(plan);
}

static void cb_adamw(const mm_backend *be, const void *plan, float *params, const float *grads,
                     float *m, float *v, const mm_adamw_args *a) {
    cuda_adamw(ctx_of(be), (const cuda_plan *)plan, params, grads, m, v, a->step, a->lr, a->beta1,
               a->beta2, a->eps, a->weight_decay, a->grad_scale);
}

static void cb_sumsq(const mm_backend *be, const void *plan, const float *grads, double *sharded,
                     double *replicated) {
    cuda_sumsq(ctx_of(be), (const cuda_plan *)plan, grads, sharded, replicated);
}

static void cb_ema(const mm_backend *be, float *ema, const float *params, size_t n, float decay) {
    cuda_ema(ctx_of(be), ema, params, n, decay);
}

// ---------------------------------------------------------------------------------------
// collectives over a group: NCCL on the compute stream, or (without NCCL, and under the
// emulator) through the host: download, comm/'s MPI collective, upload

typedef struct {
#ifdef MM_HAVE_NCCL
    ncclComm_t nccl;  // over the group, owned
#else
    float *host;  // staging, grown on demand, owned
    size_t cap;   // its floats
#endif
} cb_coll;

static void *cb_coll_init(const mm_backend *be MM_UNUSED, comm_group *g) {
    cb_coll *k = (cb_coll *)mm_calloc(1, sizeof(cb_coll));
#ifdef MM_HAVE_NCCL
    mm_err err = {{0}};
    if (comm_nccl_init(g, &k->nccl, &err) != 0) comm_abort(g, 1, err.msg);
#else
    (void)g;
#endif
    return k;
}

static void cb_coll_free(const mm_backend *be MM_UNUSED, void *impl) {
    cb_coll *k = (cb_coll *)impl;
    if (!k) return;
#ifdef MM_HAVE_NCCL
    ncclCommDestroy(k->nccl);
#else
    free(k->host);
#endif
    free(k);
}

static cb_coll *coll_of(const mm_coll *c) {
    return (cb_coll *)c->impl;
}

#ifndef MM_HAVE_NCCL
static float *coll_host(const mm_coll *c, size_t n) {
    cb_coll *k = coll_of(c);
    if (k->cap < n) {
        free(k->host);
        k->host = (float *)mm_alloc_aligned(n * sizeof(float));
        k->cap = n;
    }
    return k->host;
}
#endif

static void cb_allreduce(const mm_backend *be, const mm_coll *c, float *buf, size_t n) {
    cuda_ctx *x = ctx_of(be);
    cuda_params16_touch(x, buf, n * sizeof(float));
#ifdef MM_HAVE_NCCL
    comm_nccl_allreduce(coll_of(c)->nccl, buf, n, 0, x->stream);
#else
    float *h = coll_host(c, n);
    cuda_download(x, h, buf, n * sizeof(float));
    comm_allreduce_sum(c->group, h, n, COMM_F32);
    cuda_upload(x, buf, h, n * sizeof(float));
#endif
}

// bf16 activations: NCCL sums bf16; the host path sums them in fp32 and rounds once
static void cb_allreduce_acts(const mm_backend *be, const mm_coll *c, float *buf, size_t n) {
    cuda_ctx *x = ctx_of(be);
    if (!x->act16) {
        cb_allreduce(be, c, buf, n);
        return;
    }
#ifdef MM_HAVE_NCCL
    comm_nccl_allreduce_bf16(coll_of(c)->nccl, buf, n, x->stream);
#else
    float *h = coll_host(c, n);
    __nv_bfloat16 *h16 = (__nv_bfloat16 *)mm_alloc_aligned(n * sizeof(__nv_bfloat16));
    cuda_download(x, h16, buf, n * sizeof(__nv_bfloat16));
    for (size_t i = 0; i < n; i++) h[i] = __bfloat162float(h16[i]);
    comm_allreduce_sum(c->group, h, n, COMM_F32);
    for (size_t i = 0; i < n; i++) h16[i] = __float2bfloat16(h[i]);
    cuda_upload(x, buf, h16, n * sizeof(__nv_bfloat16));
    free(h16);
#endif
}

static void cb_reduce_scatter(const mm_backend *be, const mm_coll *c, const float *send,
                              float *recv, size_t count) {
    cuda_ctx *x = ctx_of(be);
    cuda_params16_touch(x, recv, count * sizeof(float));
#ifdef MM_HAVE_NCCL
    comm_nccl_reduce_scatter(coll_of(c)->nccl, send, recv, count, x->stream);
#else
    const size_t all = count * (size_t)comm_size(c->group);
    float *h = coll_host(c, all + count);
    cuda_download(x, h, send, all * sizeof(float));
    comm_reduce_scatter_sum(c->group, h, h + all, count);
    cuda_upload(x, recv, h + all, count * sizeof(float));
#endif
}

static void cb_all_gather(const mm_backend *be, const mm_coll *c, float *buf, size_t count) {
    cuda_ctx *x = ctx_of(be);
    const int rank = comm_rank(c->group);
    cuda_params16_touch(x, buf, count * (size_t)comm_size(c->group) * sizeof(float));
#ifdef MM_HAVE_NCCL
    comm_nccl_all_gather(coll_of(c)->nccl, buf, count, rank, x->stream);
#else
    const size_t all = count * (size_t)comm_size(c->group), mine = count * (size_t)rank;
    float *h = coll_host(c, all);
    cuda_download(x, h + mine, buf + mine, count * sizeof(float));
    comm_all_gather(c->group, h + mine, h, count, COMM_F32);
    cuda_upload(x, buf, h, all * sizeof(float));
#endif
}

// ---------------------------------------------------------------------------------------
// gradient buckets

typedef struct {
    const mm_coll *dp;  // not owned
    float *grads;       // (n) device, not owned
    int n_buckets;
    size_t *lo;          // (n_buckets + 1) owned
    cudaEvent_t *ready;  // (n_buckets) on the compute stream: the bucket's gradients are final
    cudaEvent_t done;    // on the comm stream: every bucket reduced
    // the step timeline (reducer_times), NULL until asked for: (2 n_buckets) each bucket's
    // start and end, as timing events around its allreduce on the comm stream (NCCL) or as
    // host times (the host path); anchor reads the events on the host's clock
    cudaEvent_t *tev, anchor;
    double *tt;
#ifndef MM_HAVE_NCCL
    float *host;         // (n) host staging, owned
    comm_request **req;  // (n_buckets) in flight, owned
#endif
} cb_reducer;

static void *cb_reducer_new(const mm_backend *be MM_UNUSED, const mm_coll *dp, float *grads,
                            size_t n, int n_buckets, const size_t *bucket_lo) {
    cb_reducer *r = (cb_reducer *)mm_calloc(1, sizeof(cb_reducer));
    r->dp = dp;
    r->grads = grads;
    r->n_buckets = n_buckets;
    r->lo = (size_t *)mm_malloc(((size_t)n_buckets + 1) * sizeof(size_t));
    memcpy(r->lo, bucket_lo, ((size_t)n_buckets + 1) * sizeof(size_t));
    r->ready = (cudaEvent_t *)mm_calloc((size_t)n_buckets, sizeof(cudaEvent_t));
    for (int b = 0; b < n_buckets; b++)
        CU_CHECK(cudaEventCreateWithFlags(&r->ready[b], cudaEventDisableTiming));
    CU_CHECK(cudaEventCreateWithFlags(&r->done, cudaEventDisableTiming));
#ifdef MM_HAVE_NCCL
    (void)n;
#else
    r->host = (float *)mm_alloc_aligned(n * sizeof(float));
    r->req = (comm_request **)mm_calloc((size_t)n_buckets, sizeof(comm_request *));
#endif
    return r;
}

static void cb_reducer_start(const mm_backend *be, void *rp, int b) {
    cb_reducer *r = (cb_reducer *)rp;
    cuda_ctx *c = ctx_of(be);
    const size_t off = r->lo[b], len = r->lo[b + 1] - off;
    CU_CHECK(cudaEventRecord(r->ready[b], c->stream));
#ifdef MM_HAVE_NCCL
    CU_CHECK(cudaStreamWaitEvent(c->comm_stream, r->ready[b], 0));
    if (r->tev) CU_CHECK(cudaEventRecord(r->tev[2 * b], c->comm_stream));
    comm_nccl_allreduce(coll_of(r->dp)->nccl, r->grads + off, len, 0, c->comm_stream);
    if (r->tev) CU_CHECK(cudaEventRecord(r->tev[2 * b + 1], c->comm_stream));
#else
    if (r->tt) r->tt[2 * b] = mm_now();
    cuda_download(c, r->host + off, r->grads + off, len * sizeof(float));  // after the event
    r->req[b] = comm_iallreduce_sum(r->dp->group, r->host + off, len, COMM_F32);
#endif
}

static void cb_reducer_progress(const mm_backend *be MM_UNUSED, void *rp) {
#ifdef MM_HAVE_NCCL
    (void)rp;  // NCCL progresses on its own
#else
    cb_reducer *r = (cb_reducer *)rp;
    for (int b = r->n_buckets - 1; b >= 0; b--) comm_test(r->req[b]);  // NULL: no-op
#endif
}

static void cb_reducer_finish(const mm_backend *be, void *rp) {
    cb_reducer *r = (cb_reducer *)rp;
    cuda_ctx *c = ctx_of(be);
#ifdef MM_HAVE_NCCL
    CU_CHECK(cudaEventRecord(r->done, c->comm_stream));
    CU_CHECK(cudaStreamWaitEvent(c->stream, r->done, 0));
#else
    for (int b = 0; b < r->n_buckets; b++) {
        comm_wait(r->req[b]);
        r->req[b] = NULL;
        if (r->tt) r->tt[2 * b + 1] = mm_now();
        const size_t off = r->lo[b], len = r->lo[b + 1] - off;
        cuda_upload(c, r->grads + off, r->host + off, len * sizeof(float));
    }
#endif
}

// The times of events ev (n, recorded) on mm_now()'s clock: an anchor recorded on s after
// them is waited for, and the host clock read then stands for the anchor's time.
static void event_times(cudaStream_t s, cudaEvent_t anchor, const cudaEvent_t *ev, int n,
                        double *t) {
    CU_CHECK(cudaEventRecord(anchor, s));
    CU_CHECK(cudaEventSynchronize(anchor));
    const double now = mm_now();
    for (int i = 0; i < n; i++) {
        float ms = 0;
        CU_CHECK(cudaEventElapsedTime(&ms, ev[i], anchor));
        t[i] = now - 1e-3 * (double)ms;
    }
}

static void cb_reducer_times(const mm_backend *be, void *rp, double *start, double *end) {
    cb_reducer *r = (cb_reducer *)rp;
    const int n = r->n_buckets;
    if (!r->tt) {
        r->tt = (double *)mm_calloc(2 * (size_t)n, sizeof(double));
#ifdef MM_HAVE_NCCL
        r->tev = (cudaEvent_t *)mm_calloc(2 * (size_t)n, sizeof(cudaEvent_t));
        for (int i = 0; i < 2 * n; i++)
            CU_CHECK(cudaEventCreateWithFlags(&r->tev[i], cudaEventDefault));
        CU_CHECK(cudaEventCreateWithFlags(&r->anchor, cudaEventDefault));
#endif
        return;  // nothing recorded yet
    }
    if (!start || !end) return;
#ifdef MM_HAVE_NCCL
    event_times(ctx_of(be)->comm_stream, r->anchor, r->tev, 2 * n, r->tt);
#else
    (void)be;
#endif
    for (int b = 0; b < n; b++) start[b] = r->tt[2 * b], end[b] = r->tt[2 * b + 1];
}

static void cb_reducer_free(const mm_backend *be, void *rp) {
    cb_reducer *r = (cb_reducer *)rp;
    if (!r) return;
    CU_CHECK(cudaStreamSynchronize(ctx_of(be)->comm_stream));
    for (int b = 0; b < r->n_buckets; b++) CU_CHECK(cudaEventDestroy(r->ready[b]));
    CU_CHECK(cudaEventDestroy(r->done));
    if (r->tev) {
        for (int i = 0; i < 2 * r->n_buckets; i++) CU_CHECK(cudaEventDestroy(r->tev[i]));
        CU_CHECK(cudaEventDestroy(r->anchor));
        free(r->tev);
    }
    free(r->tt);
#ifndef MM_HAVE_NCCL
    free(r->host);
    free(r->req);
#endif
    free(r->ready);
    free(r->lo);
    free(r);
}

// ---------------------------------------------------------------------------------------
// the step timeline's marks: timing events on the compute stream

typedef struct {
    int n;
    cudaEvent_t *ev;  // (n) owned
    cudaEvent_t anchor;
} cb_timer;

static void *cb_timer_new(const mm_backend *be MM_UNUSED, int n) {
    cb_timer *tm = (cb_timer *)mm_calloc(1, sizeof(cb_timer));
    tm->n = n;
    tm->ev = (cudaEvent_t *)mm_calloc((size_t)n, sizeof(cudaEvent_t));
    for (int i = 0; i < n; i++) CU_CHECK(cudaEventCreateWithFlags(&tm->ev[i], cudaEventDefault));
    CU_CHECK(cudaEventCreateWithFlags(&tm->anchor, cudaEventDefault));
    return tm;
}

static void cb_timer_mark(const mm_backend *be, void *tp, int i) {
    CU_CHECK(cudaEventRecord(((cb_timer *)tp)->ev[i], ctx_of(be)->stream));
}

static void cb_timer_read(const mm_backend *be, void *tp, int n, double *t) {
    cb_timer *tm = (cb_timer *)tp;
    event_times(ctx_of(be)->stream, tm->anchor, tm->ev, n, t);
}

static void cb_timer_free(const mm_backend *be MM_UNUSED, void *tp) {
    cb_timer *tm = (cb_timer *)tp;
    for (int i = 0; i < tm->n; i++) CU_CHECK(cudaEventDestroy(tm->ev[i]));
    CU_CHECK(cudaEventDestroy(tm->anchor));
    free(tm->ev);
    free(tm);
}

// ---------------------------------------------------------------------------------------
// memory

static void cb_mem_avail(const mm_backend *be MM_UNUSED, size_t *avail, size_t *total) {
    CU_CHECK(cudaMemGetInfo(avail, total));
}

// The ops' scratch (cuda_scratch) grows to the largest single request: self-attention's
// backward on the cuBLAS core (when the probabilities fit in attn_core_bytes and the
// tensor-core flash kernels do not take the attention; the flash kernels need none) holds the
// probabilities and their gradient, in bf16 also their bf16 copies: 2 or 3 times the fp32
// probabilities; the chunked reductions' partial sums, within one block's activations; in
// bf16 the copies of a matmul's operands: within one block's activations, or, for a matmul
// backward that goes in passes (the classifier's), a pass's rows (matmul_chunk_bytes) and
// its weight. Plus cuBLAS's own workspace (32 MiB on Hopper) and, in bf16, cuBLASLt's (the
// context's) and the bf16 copy of the parameters (params_ready).
static size_t cb_scratch_bound(const mm_backend *be, const model_mem *m) {
    const cuda_ctx *c = ctx_of(be);
    const int bf16 = c->precision == CUDA_BF16;
    const int flash_tc = bf16 && c->flash_tc && !m->attn_dropout && cu_flash_tc_ok(m->attn_hd);
    const size_t attn = m->attn_probs <= c->attn_core_bytes && !flash_tc
                            ? m->attn_probs * (bf16 ? 3 : 2)
                            : 0;
    // a pass's copies: bf16 halves of activations (dout, inp), so also within act_bytes / 2;
    // none with bf16 activations (the matmuls read them in place), but a weight's
    const size_t rows = m->act_bytes / 2 < c->matmul_chunk_bytes ? m->act_bytes / 2
                                                                 : c->matmul_chunk_bytes;
    const size_t mm = bf16 ? (c->act16 ? 0 : rows) + m->max_tensor * 2 : 0;
    size_t big = attn > m->act_per_layer ? attn : m->act_per_layer;
    big = mm > big ? mm : big;
    // bf16 activations on an attention path without bf16 kernels: fp32 copies of qkv, dqkv,
    // dout and out (8 rows), in their own scratch (cuda_act_scratch)
    const size_t wide = c->act16 && !flash_tc ? m->attn_rows * 8 * sizeof(float) : 0;
    return big + wide + ((size_t)32 << 20) + (bf16 ? CUDA_LT_WORKSPACE + m->n_params * 2 : 0);
}

static const mm_backend_iface cuda_iface = {
    .destroy = cb_destroy,
    .sync = cb_sync,
    .stage_new = cb_stage_new,
    .stage_put = cb_stage_put,
    .stage_done = cb_stage_done,
    .stage_free = cb_stage_free,
    .opt_plan_new = cb_opt_plan_new,
    .opt_plan_free = cb_opt_plan_free,
    .adamw = cb_adamw,
    .sumsq = cb_sumsq,
    .ema = cb_ema,
    .reducer_new = cb_reducer_new,
    .reducer_start = cb_reducer_start,
    .reducer_progress = cb_reducer_progress,
    .reducer_finish = cb_reducer_finish,
    .reducer_free = cb_reducer_free,
    .reducer_times = cb_reducer_times,
    .timer_new = cb_timer_new,
    .timer_mark = cb_timer_mark,
    .timer_read = cb_timer_read,
    .timer_free = cb_timer_free,
    .coll_init = cb_coll_init,
    .coll_free = cb_coll_free,
    .allreduce = cb_allreduce,
    .allreduce_acts = cb_allreduce_acts,
    .reduce_scatter = cb_reduce_scatter,
    .all_gather = cb_all_gather,
    .mem_avail = cb_mem_avail,
    .scratch_bound = cb_scratch_bound,
};

int cuda_backend_create(const mm_backend **out, const char *precision, int act16, int world_rank,
                        mm_err *err) {
    *out = NULL;
    cuda_precision prec;
    if (cuda_precision_parse(precision, &prec, err) != 0) return -1;
    cuda_ctx *c = (cuda_ctx *)mm_calloc(1, sizeof(cuda_ctx));
    if (cuda_ctx_init(c, world_rank, prec, err) != 0) {
        cuda_ctx_free(c);
        free(c);
        return -1;
    }
    mm_backend *be = (mm_backend *)mm_calloc(1, sizeof(mm_backend));
    be->name = "cuda";
    be->kind = MM_BACKEND_CUDA;
    be->caps = (mm_backend_caps){.host_memory = 0, .tp = 1, .zero = 1};
    c->act16 = act16 && prec == CUDA_BF16;
    be->act_bytes = c->act16 ? sizeof(__nv_bfloat16) : sizeof(float);
    be->ops = &model_ops_cuda;
    be->iface = &cuda_iface;
    be->ctx = c;
    snprintf(be->desc, sizeof(be->desc),
             "cuda: rank %d on GPU %d (%.200s, %d SMs, %.1f GiB), "
             "precision %s%s",
             world_rank, c->device, c->device_name, c->sm_count, c->mem_bytes / 1073741824.0,
             cuda_precision_name(prec),
             c->act16 ? " (bf16 activations)" : prec == CUDA_BF16 ? " (fp32 activations)" : "");
    *out = be;
    return 0;
}
