// gradsync.c: data-parallel gradient reduction, ZeRO-1 and the optimizer update (gradsync.h).
#include "gradsync.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// The model's hook: gradients at offsets >= lo are final. Starts every bucket that lies
// entirely in that range, and lets MPI progress the ones in flight (there is no progress
// thread, so without these tests the reductions would only move in the final wait).
static void grad_ready(void *ctx, size_t lo) {
    gsync *g = ctx;
    if (!g->armed) return;
    mm_real *grads = g->net->grads;
    while (g->next >= 0 && g->bucket_lo[g->next] >= lo) {
        int b = g->next--;
        g->req[b] = comm_iallreduce_sum(g->lay->dp, grads + g->bucket_lo[b],
                                        g->bucket_lo[b + 1] - g->bucket_lo[b], COMM_F32);
    }
    for (int b = g->n_buckets - 1; b > g->next; b--) comm_test(g->req[b]);
}

void gsync_init(gsync *g, const train_net *net, const comm_layout *lay, const optim_cfg *oc,
                int zero, double bucket_mb) {
    memset(g, 0, sizeof(*g));
    g->lay = lay;
    g->net = net;
    g->n = net->n_params;
    g->zero = zero && lay->dp_size > 1;
    g->next = -1;
    size_t lo = 0, hi = g->n;
    if (g->zero) {
        size_t dp = (size_t)lay->dp_size;
        g->shard = (g->n + dp - 1) / dp;
        g->zbuf = mm_alloc_aligned(g->shard * dp * sizeof(float));
        g->zgrad = mm_alloc_aligned(g->shard * sizeof(float));
        lo = g->shard * (size_t)lay->dp_rank;
        hi = lo + g->shard;
        if (lo > g->n) lo = g->n;
        if (hi > g->n) hi = g->n;
    } else if (lay->dp_size > 1) {
        size_t per = (size_t)(bucket_mb * 1024 * 1024 / sizeof(float));
        if (per < 1024) per = 1024;
        g->n_buckets = (int)((g->n + per - 1) / per);
        g->bucket_lo = mm_malloc(((size_t)g->n_buckets + 1) * sizeof(size_t));
        for (int b = 0; b < g->n_buckets; b++) g->bucket_lo[b] = (size_t)b * per;
        g->bucket_lo[g->n_buckets] = g->n;
        g->req = mm_calloc((size_t)g->n_buckets, sizeof(comm_request *));
        net->set_grad_hook(net->impl, grad_ready, g);
    }
    optim_init(&g->opt, oc, net->tensors, net->n_tensors, lo, hi);
}

void gsync_free(gsync *g) {
    if (g->n_buckets) g->net->set_grad_hook(g->net->impl, NULL, NULL);
    optim_free(&g->opt);
    free(g->bucket_lo);
    free(g->req);
    free(g->zbuf);
    free(g->zgrad);
    memset(g, 0, sizeof(*g));
}

void gsync_arm(gsync *g) {
    if (!g->n_buckets) return;
    g->armed = 1;
    g->next = g->n_buckets - 1;
}

void gsync_ready_all(gsync *g) { grad_ready(g, 0); }

double gsync_finish(gsync *g) {
    const comm_layout *lay = g->lay;
    mm_real *grads = g->net->grads;
    const float *mine = grads;  // this rank's reduced gradients, indexed from opt.lo
    double t0 = mm_now();
    if (g->n_buckets) {
        MM_CHECK(g->armed && g->next < 0,
                 "gradient buckets %d..0 never started: the model did not report them ready",
                 g->next);
        for (int b = 0; b < g->n_buckets; b++) {
            comm_wait(g->req[b]);
            g->req[b] = NULL;
        }
        g->armed = 0;
    } else if (g->zero) {
        size_t padded = g->shard * (size_t)lay->dp_size;
        memcpy(g->zbuf, grads, g->n * sizeof(float));
        memset(g->zbuf + g->n, 0, (padded - g->n) * sizeof(float));
        comm_reduce_scatter_sum(lay->dp, g->zbuf, g->zgrad, g->shard);
        mine = g->zgrad;
    }
    g->exposed = mm_now() - t0;
    // ||g||^2 = sum over dp shards of (tp-summed sharded part + replicated part).
    double ss[2];
    optim_sumsq(&g->opt, mine, &ss[0], &ss[1]);
    comm_allreduce_sum(lay->tp, &ss[0], 1, COMM_F64);
    if (g->zero) comm_allreduce_sum(lay->dp, ss, 2, COMM_F64);
    return sqrt(ss[0] + ss[1]);
}

void gsync_update(gsync *g, int64_t step, double lr, double grad_scale) {
    mm_real *params = g->net->params;
    if (!g->zero) {
        optim_adamw(&g->opt, params, g->net->grads, step, lr, grad_scale);
        return;
    }
    optim_adamw(&g->opt, params, g->zgrad, step, lr, grad_scale);
    // all-gather the updated shards in place in the padded buffer, then back to the model
    float *mine = g->zbuf + g->shard * (size_t)g->lay->dp_rank;
    memcpy(mine, params + g->opt.lo, (g->opt.hi - g->opt.lo) * sizeof(float));
    comm_all_gather(g->lay->dp, mine, g->zbuf, g->shard, COMM_F32);
    memcpy(params, g->zbuf, g->n * sizeof(float));
}

static float *gather_moment(gsync *g, const float *part) {
    float *mine = g->zbuf + g->shard * (size_t)g->lay->dp_rank;
    memset(mine, 0, g->shard * sizeof(float));
    memcpy(mine, part, (g->opt.hi - g->opt.lo) * sizeof(float));
    comm_all_gather(g->lay->dp, mine, g->zbuf, g->shard, COMM_F32);
    float *full = mm_alloc_aligned(g->n * sizeof(float));
    memcpy(full, g->zbuf, g->n * sizeof(float));
    return full;
}

void gsync_full_state(gsync *g, float **m, float **v, int *owned) {
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
}
