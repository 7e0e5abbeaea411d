// gradsync.c: data-parallel gradient reduction, ZeRO-1 and the optimizer update (gradsync.h),
// written once for every backend: the bucket reduction, ZeRO-1's collectives, the sum of
// squares and AdamW are the backend's (model/backend.h), on the buffers the model computes
// on. The CPU reduces buckets with non-blocking MPI allreduces on host memory; CUDA with
// NCCL on its comm stream, so the reduction overlaps the rest of backward either way. ZeRO-1
// reduce-scatters and all-gathers in the backend's memory (MPI on the CPU, NCCL on a GPU).
#include "gradsync.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void train_net_bind(train_net *n, const mm_backend *be, void *impl, mm_real *dparams,
                    mm_real *dgrads, size_t n_params, const model_tensor *tensors, int n_tensors,
                    void (*set_grad_hook)(void *impl, model_grad_hook fn, void *ctx)) {
    *n = (train_net){.impl = impl,
                     .be = be,
                     .n_params = n_params,
                     .params = dparams,
                     .dparams = dparams,
                     .dgrads = dgrads,
                     .n_tensors = n_tensors,
                     .tensors = tensors,
                     .set_grad_hook = set_grad_hook};
    n->params = train_host_view(be, dparams, n_params);
    if (n->params != dparams) n->mirror = n->params;
}

void train_net_free(train_net *n) {
    free(n->mirror);
    memset(n, 0, sizeof(*n));
}

float *train_host_view(const mm_backend *be, float *buf, size_t n) {
    if (be->caps.host_memory) return buf;
    float *host = mm_alloc_aligned(n * sizeof(float));
    be->ops->mem_download(be, host, buf, n * sizeof(float));
    return host;
}

void train_host_view_free(float *host, const float *buf) {
    if (host != buf) free(host);
}

// The plan over the optimizer's segments, made at the first use: fine-tuning changes the
// segments (optim_set_groups) after gsync_init.
static const void *plan_of(gsync *g) {
    if (!g->plan)
        g->plan = g->be->iface->opt_plan_new(g->be, g->opt.seg, g->opt.n_seg, g->opt.lo, g->opt.hi);
    return g->plan;
}

// The timeline's name of the backward stage that made gradients from lo on final: its first
// tensor's name up to the block index ("blocks.3.ln1.g" -> "blocks.3", "lnf.g" -> "lnf").
static void trace_stage(gsync *g, size_t lo) {
    const model_tensor *t = NULL;
    for (int i = 0; i < g->net->n_tensors && !t; i++)
        if (g->net->tensors[i].offset == lo) t = &g->net->tensors[i];
    if (!t) {
        trace_dev_stage(g->tl, "", 0);
        return;
    }
    const char *dot = strchr(t->name, '.');
    int n = dot ? (int)(dot - t->name) : (int)strlen(t->name);
    if (dot && dot[1] >= '0' && dot[1] <= '9') n += 1 + (int)strspn(dot + 1, "0123456789");
    trace_dev_stage(g->tl, t->name, n);
}

// The model's hook: gradients at offsets >= lo are final. Starts every bucket that lies
// entirely in that range, and lets the ones in flight progress.
static void grad_ready(void *ctx, size_t lo) {
    gsync *g = ctx;
    if (g->tl) trace_stage(g, lo);
    if (!g->armed) return;
    while (g->next >= 0 && g->bucket_lo[g->next] >= lo)
        g->be->iface->reducer_start(g->be, g->reducer, g->next--);
    g->be->iface->reducer_progress(g->be, g->reducer);
}

void gsync_init(gsync *g, const train_net *net, const comm_layout *lay, const optim_cfg *oc,
                int zero, double bucket_mb) {
    memset(g, 0, sizeof(*g));
    const mm_backend *be = net->be;
    g->be = be;
    g->lay = lay;
    g->net = net;
    g->n = net->n_params;
    // ZeRO-1 at dp 1 runs its own path too (its collectives are copies there), so that one
    // GPU checks it
    g->zero = zero;
    g->next = -1;
    MM_CHECK(!g->zero || be->caps.zero,
             "gsync: ZeRO-1 on backend %s (mm_backend_check_layout refuses it at start)", be->name);
    if (g->zero || lay->dp_size > 1) g->dp = mm_coll_new(be, lay->dp);
    size_t lo = 0, hi = g->n;
    if (g->zero) {
        // equal shards for the collectives, which need equal counts, and the few left over
        // (tail < dp) to the last rank, so that no full-size padded copy is needed
        const size_t dp = (size_t)lay->dp_size;
        MM_CHECK(g->n >= dp, "ZeRO-1 over %zu ranks of a model of %zu parameters", dp, g->n);
        g->shard = g->n / dp;
        g->tail = g->n - g->shard * dp;
        g->last = lay->dp_rank == lay->dp_size - 1;
        lo = g->shard * (size_t)lay->dp_rank;
        hi = lo + g->shard + (g->last ? g->tail : 0);
        g->zgrad = be->ops->mem_alloc(be, (hi - lo) * sizeof(float));
    } else if (lay->dp_size > 1) {
        size_t per = (size_t)(bucket_mb * 1024 * 1024 / sizeof(float));
        if (per < 1024) per = 1024;
        g->n_buckets = (int)((g->n + per - 1) / per);
        g->bucket_lo = mm_malloc(((size_t)g->n_buckets + 1) * sizeof(size_t));
        for (int b = 0; b < g->n_buckets; b++) g->bucket_lo[b] = (size_t)b * per;
        g->bucket_lo[g->n_buckets] = g->n;
        g->reducer =
            be->iface->reducer_new(be, g->dp, net->dgrads, g->n, g->n_buckets, g->bucket_lo);
        net->set_grad_hook(net->impl, grad_ready, g);
    }
    optim_init(&g->opt, oc, net->tensors, net->n_tensors, lo, hi);
    g->m = g->opt.m;
    g->v = g->opt.v;
    if (!be->caps.host_memory) {
        g->m = be->ops->mem_alloc(be, (hi - lo) * sizeof(float));
        g->v = be->ops->mem_alloc(be, (hi - lo) * sizeof(float));
    }
}

void gsync_free(gsync *g) {
    const mm_backend *be = g->be;
    if (g->n_buckets) be->iface->reducer_free(be, g->reducer);
    if (g->n_buckets || g->tl) g->net->set_grad_hook(g->net->impl, NULL, NULL);
    free(g->bucket_t);
    if (g->plan) be->iface->opt_plan_free(be, g->plan);
    if (g->m != g->opt.m) be->ops->mem_free(be, g->m);
    if (g->v != g->opt.v) be->ops->mem_free(be, g->v);
    optim_free(&g->opt);
    free(g->bucket_lo);
    be->ops->mem_free(be, g->zgrad);
    mm_coll_free(be, g->dp);
    memset(g, 0, sizeof(*g));
}

void gsync_trace(gsync *g, trace_timeline *tl) {
    g->tl = tl;
    if (!tl) return;
    g->net->set_grad_hook(g->net->impl, grad_ready, g);  // also without buckets (dp = 1)
    if (!g->n_buckets) return;
    g->be->iface->reducer_times(g->be, g->reducer, NULL, NULL);
    g->bucket_t = mm_malloc(2 * (size_t)g->n_buckets * sizeof(double));
}

void gsync_arm(gsync *g) {
    if (!g->n_buckets) return;
    g->armed = 1;
    g->next = g->n_buckets - 1;
}

void gsync_ready_all(gsync *g) { grad_ready(g, 0); }

double gsync_finish(gsync *g) {
    const comm_layout *lay = g->lay;
    const mm_backend *be = g->be;
    mm_real *grads = g->net->dgrads;
    const float *mine = grads + g->opt.lo;  // this rank's reduced gradients
    double t0 = mm_now();
    if (g->n_buckets) {
        MM_CHECK(g->armed && g->next < 0,
                 "gradient buckets %d..0 never started: the model did not report them ready",
                 g->next);
        be->iface->reducer_finish(be, g->reducer);
        g->armed = 0;
        if (g->tl) {
            double *start = g->bucket_t, *end = g->bucket_t + g->n_buckets;
            be->iface->reducer_times(be, g->reducer, start, end);
            for (int b = 0; b < g->n_buckets; b++)
                trace_event_at(g->tl, "allreduce", TRACE_BUCKET + b, "bucket", b, start[b],
                               end[b] - start[b]);
        }
    } else if (g->zero) {
        // this rank's shard of the sums straight from the gradient buffer; the tail summed
        // everywhere, kept by the last rank after its shard
        const size_t body = g->shard * (size_t)lay->dp_size;
        be->iface->reduce_scatter(be, g->dp, grads, g->zgrad, g->shard);
        if (g->tail) {
            be->iface->allreduce(be, g->dp, grads + body, g->tail);
            if (g->last)
                be->ops->mem_copy(be, g->zgrad + g->shard, grads + body, g->tail * sizeof(float));
        }
        mine = g->zgrad;
    }
    g->exposed = mm_now() - t0;
    // ||g||^2 = sum over dp shards of (tp-summed sharded part + replicated part).
    double ss[2];
    be->iface->sumsq(be, plan_of(g), mine, &ss[0], &ss[1]);
    comm_allreduce_sum(lay->tp, &ss[0], 1, COMM_F64);
    if (g->zero) comm_allreduce_sum(lay->dp, ss, 2, COMM_F64);
    return sqrt(ss[0] + ss[1]);
}

void gsync_update(gsync *g, int64_t step, double lr, double grad_scale) {
    const mm_backend *be = g->be;
    mm_real *params = g->net->dparams;
    const mm_adamw_args a = optim_adamw_args(&g->opt.cfg, step, lr, grad_scale);
    const float *grads = g->zero ? g->zgrad : g->net->dgrads + g->opt.lo;
    be->iface->adamw(be, plan_of(g), params, grads, g->m, g->v, &a);
    if (!g->zero) return;
    // every rank's updated shard to every rank, in place in the model's buffer (this rank's
    // block is where its shard lives); the tail from the last rank: the others zero theirs
    // and the sum is the last rank's values exactly
    const size_t body = g->shard * (size_t)g->lay->dp_size;
    be->iface->all_gather(be, g->dp, params, g->shard);
    if (g->tail) {
        if (!g->last) be->ops->mem_zero(be, params + body, g->tail * sizeof(float));
        be->iface->allreduce(be, g->dp, params + body, g->tail);
    }
}

// The full-size moment from every rank's part (host memory; the caller frees it).
static float *gather_moment(gsync *g, const float *part) {
    const size_t body = g->shard * (size_t)g->lay->dp_size;
    float *all = mm_alloc_aligned(g->n * sizeof(float));
    float *mine = all + g->shard * (size_t)g->lay->dp_rank;
    memcpy(mine, part, (g->opt.hi - g->opt.lo) * sizeof(float));
    comm_all_gather(g->lay->dp, mine, all, g->shard, COMM_F32);
    if (g->tail) comm_bcast(g->lay->dp, all + body, g->tail, COMM_F32, g->lay->dp_size - 1);
    return all;
}

void gsync_full_state(gsync *g, float **m, float **v, int *owned) {
    // the host views take the backend's state (the checkpoint writes them)
    const size_t len = g->opt.hi - g->opt.lo;
    mm_backend_to_host(g->be, g->net->params, g->net->dparams, g->n * sizeof(float));
    mm_backend_to_host(g->be, g->opt.m, g->m, len * sizeof(float));
    mm_backend_to_host(g->be, g->opt.v, g->v, len * sizeof(float));
    if (!g->zero) {
        *m = g->opt.m;
        *v = g->opt.v;
        *owned = 0;
        return;
    }
    *m = gather_moment(g, g->opt.m);
    *v = gather_moment(g, g->opt.v);
    *owned = 1;
}

void gsync_load_state(gsync *g, const float *m, const float *v) {
    size_t len = g->opt.hi - g->opt.lo;
    if (m != g->opt.m) memcpy(g->opt.m, m + g->opt.lo, len * sizeof(float));
    if (v != g->opt.v) memcpy(g->opt.v, v + g->opt.lo, len * sizeof(float));
    mm_backend_from_host(g->be, g->m, g->opt.m, len * sizeof(float));
    mm_backend_from_host(g->be, g->v, g->opt.v, len * sizeof(float));
}

void gsync_zero_grads(gsync *g) {
    g->be->ops->mem_zero(g->be, g->net->dgrads, g->n * sizeof(mm_real));
}

void gsync_upload_params(gsync *g) {
    mm_backend_from_host(g->be, g->net->dparams, g->net->params, g->n * sizeof(float));
}
