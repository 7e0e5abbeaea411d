// gradsync.c: data-parallel gradient reduction, ZeRO-1 and the optimizer update (gradsync.h).
// On the GPU (net->dev) the norm and AdamW run as model/cuda.h's kernels on the device
// buffers, with device moments; the host moments of optim stay as the checkpoint's staging.
//
// Data parallelism on the GPU (issue 6): the same buckets as on the CPU, over the device
// gradients. When backward reports a bucket final, an event recorded on the compute stream
// marks the point; the comm stream waits for it and runs the bucket's NCCL allreduce, so the
// reduction overlaps the rest of backward; gsync_finish makes the compute stream wait for the
// comm stream before the norm and AdamW read the sums. In a CUDA build without NCCL (and the
// CPU emulation build, which is how tests/cuda_dp.sh checks this logic on a machine without
// GPUs) the buckets go through the host instead: downloaded when final, reduced with
// comm/'s non-blocking MPI allreduce while backward goes on, uploaded in gsync_finish.
// ZeRO-1 and tp > 1 stay CPU-only for now (family_lm refuses them with backend cuda).
#include "gradsync.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef MM_HAVE_CUDA
#include "../model/cuda/cuda.h"

#define GS_CUDA(call)                                                                    \
    do {                                                                                 \
        cudaError_t e_ = (call);                                                         \
        if (e_ != cudaSuccess)                                                           \
            mm_fatal(__FILE__, __LINE__, "CUDA: %s failed: %s", #call,                   \
                     cudaGetErrorString(e_));                                            \
    } while (0)

// The device side of the optimizer: moments and the chunk plan of cuda_adamw / cuda_sumsq;
// the dp buckets' events and communicator.
typedef struct {
    cuda_ctx *c;       // not owned
    float *m, *v;      // (hi - lo) device moments, owned
    cuda_plan plan;    // built at the first use, after optim_set_groups (fine-tuning)
    int plan_ready;
    cudaEvent_t *ready;  // (n_buckets) on the compute stream: the bucket's gradients are final
    cudaEvent_t done;    // on the comm stream: every bucket reduced
#ifdef MM_HAVE_NCCL
    ncclComm_t dp;       // over lay->dp, owned (n_buckets > 0)
#else
    float *host;         // (n) host staging of the buckets, owned (n_buckets > 0)
#endif
} gdev;

// Starts bucket b ([off, off + len) of the device gradients) once the work queued so far on
// the compute stream (the backward up to this hook) is done.
static void dev_bucket_start(gsync *g, int b, size_t off, size_t len) {
    gdev *d = g->dev;
    float *buf = g->net->dgrads + off;
    GS_CUDA(cudaEventRecord(d->ready[b], d->c->stream));
#ifdef MM_HAVE_NCCL
    GS_CUDA(cudaStreamWaitEvent(d->c->comm_stream, d->ready[b], 0));
    comm_nccl_allreduce(d->dp, buf, len, 0, d->c->comm_stream);
#else
    cuda_download(d->c, d->host + off, buf, len * sizeof(float));  // waits for the event's work
    g->req[b] = comm_iallreduce_sum(g->lay->dp, d->host + off, len, COMM_F32);
#endif
}

// Every bucket started: the compute stream's next work sees the sums.
static void dev_buckets_finish(gsync *g) {
    gdev *d = g->dev;
#ifdef MM_HAVE_NCCL
    GS_CUDA(cudaEventRecord(d->done, d->c->comm_stream));
    GS_CUDA(cudaStreamWaitEvent(d->c->stream, d->done, 0));
#else
    for (int b = 0; b < g->n_buckets; b++) {
        comm_wait(g->req[b]);
        g->req[b] = NULL;
        const size_t off = g->bucket_lo[b], len = g->bucket_lo[b + 1] - off;
        cuda_upload(d->c, g->net->dgrads + off, d->host + off, len * sizeof(float));
    }
#endif
}

static gdev *dev_of(gsync *g) {
    gdev *d = g->dev;
    if (!d->plan_ready) {
        cuda_seg *seg = mm_calloc((size_t)(g->opt.n_seg ? g->opt.n_seg : 1), sizeof(cuda_seg));
        for (int i = 0; i < g->opt.n_seg; i++)
            seg[i] = (cuda_seg){g->opt.seg[i].offset, g->opt.seg[i].size, g->opt.seg[i].decay,
                                g->opt.seg[i].lr_mult, g->opt.seg[i].sharded};
        cuda_plan_init(&d->plan, d->c, seg, g->opt.n_seg, g->opt.lo, g->opt.hi);
        free(seg);
        d->plan_ready = 1;
    }
    return d;
}
#endif

// The model's hook: gradients at offsets >= lo are final. Starts every bucket that lies
// entirely in that range, and lets MPI progress the ones in flight (there is no progress
// thread, so without these tests the reductions would only move in the final wait).
static void grad_ready(void *ctx, size_t lo) {
    gsync *g = ctx;
    if (!g->armed) return;
    mm_real *grads = g->net->grads;
    while (g->next >= 0 && g->bucket_lo[g->next] >= lo) {
        int b = g->next--;
#ifdef MM_HAVE_CUDA
        if (g->dev) {
            dev_bucket_start(g, b, g->bucket_lo[b], g->bucket_lo[b + 1] - g->bucket_lo[b]);
            continue;
        }
#endif
        g->req[b] = comm_iallreduce_sum(g->lay->dp, grads + g->bucket_lo[b],
                                        g->bucket_lo[b + 1] - g->bucket_lo[b], COMM_F32);
    }
    for (int b = g->n_buckets - 1; b > g->next; b--) comm_test(g->req[b]);  // NULL: no-op
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
    if (net->dev) {
#ifdef MM_HAVE_CUDA
        MM_CHECK(!g->zero, "gsync on cuda: ZeRO-1 is not supported yet (family_lm refuses it)");
        gdev *d = mm_calloc(1, sizeof(gdev));
        d->c = net->dev;
        d->m = cuda_alloc(d->c, (hi - lo) * sizeof(float));
        d->v = cuda_alloc(d->c, (hi - lo) * sizeof(float));
        g->dev = d;
        if (g->n_buckets) {
            d->ready = mm_calloc((size_t)g->n_buckets, sizeof(cudaEvent_t));
            for (int b = 0; b < g->n_buckets; b++)
                GS_CUDA(cudaEventCreateWithFlags(&d->ready[b], cudaEventDisableTiming));
            GS_CUDA(cudaEventCreateWithFlags(&d->done, cudaEventDisableTiming));
#ifdef MM_HAVE_NCCL
            mm_err err = {{0}};
            if (comm_nccl_init(lay->dp, &d->dp, &err) != 0) comm_abort(lay->world, 1, err.msg);
#else
            d->host = mm_alloc_aligned(g->n * sizeof(float));
#endif
        }
#else
        MM_CHECK(0, "gsync: a device network in a build without CUDA");
#endif
    }
}

void gsync_free(gsync *g) {
#ifdef MM_HAVE_CUDA
    if (g->dev) {
        gdev *d = g->dev;
        if (d->plan_ready) cuda_plan_free(&d->plan);
        cuda_free(d->m);
        cuda_free(d->v);
        if (g->n_buckets) {
            GS_CUDA(cudaStreamSynchronize(d->c->comm_stream));
            for (int b = 0; b < g->n_buckets; b++) cudaEventDestroy(d->ready[b]);
            cudaEventDestroy(d->done);
#ifdef MM_HAVE_NCCL
            ncclCommDestroy(d->dp);
#else
            free(d->host);
#endif
        }
        free(d->ready);
        free(d);
    }
#endif
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
#ifdef MM_HAVE_CUDA
        if (g->dev) dev_buckets_finish(g);
        else
#endif
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
#ifdef MM_HAVE_CUDA
    if (g->dev) {
        gdev *d = dev_of(g);
        cuda_sumsq(d->c, &d->plan, g->net->dgrads + g->opt.lo, &ss[0], &ss[1]);
    } else
#endif
    optim_sumsq(&g->opt, mine, &ss[0], &ss[1]);
    comm_allreduce_sum(lay->tp, &ss[0], 1, COMM_F64);
    if (g->zero) comm_allreduce_sum(lay->dp, ss, 2, COMM_F64);
    return sqrt(ss[0] + ss[1]);
}

void gsync_update(gsync *g, int64_t step, double lr, double grad_scale) {
    mm_real *params = g->net->params;
#ifdef MM_HAVE_CUDA
    if (g->dev) {
        gdev *d = dev_of(g);
        const optim_cfg *c = &g->opt.cfg;
        cuda_adamw(d->c, &d->plan, g->net->dparams, g->net->dgrads + g->opt.lo, d->m, d->v,
                   step, lr, c->beta1, c->beta2, c->eps, c->weight_decay, grad_scale);
        return;
    }
#endif
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
#ifdef MM_HAVE_CUDA
    if (g->dev) {  // the host mirrors take the device state (the checkpoint writes them)
        gdev *d = g->dev;
        size_t len = g->opt.hi - g->opt.lo;
        cuda_download(d->c, g->net->params, g->net->dparams, g->n * sizeof(float));
        cuda_download(d->c, g->opt.m, d->m, len * sizeof(float));
        cuda_download(d->c, g->opt.v, d->v, len * sizeof(float));
    }
#endif
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
#ifdef MM_HAVE_CUDA
    if (g->dev) {
        gdev *d = g->dev;
        cuda_upload(d->c, d->m, g->opt.m, len * sizeof(float));
        cuda_upload(d->c, d->v, g->opt.v, len * sizeof(float));
    }
#endif
}

void gsync_zero_grads(gsync *g) {
#ifdef MM_HAVE_CUDA
    if (g->dev) {
        cuda_zero(((gdev *)g->dev)->c, g->net->dgrads, g->n * sizeof(mm_real));
        return;
    }
#endif
    memset(g->net->grads, 0, g->n * sizeof(mm_real));
}

void gsync_upload_params(gsync *g) {
#ifdef MM_HAVE_CUDA
    if (g->dev)
        cuda_upload(((gdev *)g->dev)->c, g->net->dparams, g->net->params, g->n * sizeof(float));
#else
    (void)g;
#endif
}
