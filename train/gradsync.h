// gradsync.h: everything between the backward pass and the updated parameters of a
// data-parallel step: bucketed gradient allreduce overlapping backward, or ZeRO-1
// (reduce-scatter gradients, AdamW on this rank's shard, all-gather parameters); the global
// gradient norm counting every parameter once; and the AdamW update.
//
// Buckets: the gradient buffer is cut into buckets of parallel.bucket_mb; the model calls
// back when the gradients at offsets >= lo are final (backward completes the buffer from
// its end), and each bucket then fully complete starts its non-blocking allreduce over dp.
// With gradient accumulation only the last micro-step is armed, so earlier micro-steps
// just accumulate locally.
//
// The reduction is a SUM: backward is scaled by 1/global_batch, so summing over dp ranks
// gives the global-batch gradient. Replicated tensors have identical gradients on every tp
// rank (model.h), so they are never reduced over tp, and the norm counts them once.
#ifndef MM_GRADSYNC_H
#define MM_GRADSYNC_H

#include <stddef.h>

#include "../comm/comm.h"
#include "../model/backend.h"
#include "../model/model.h"
#include "optim.h"
#include "trace.h"

// A network as the optimizer sees it: one contiguous parameter buffer, one gradient buffer,
// the tensor table, and the hook through which backward reports finished gradients. Every
// model family (transformer, diffusion) provides one (train_net_bind).
//
// dparams and dgrads are the buffers the model computes on, in the backend's memory. params
// is their host view, which checkpoints and fine-tuning read and write: the model's own
// buffer on a host-memory backend (the CPU), else a mirror owned here that gsync_full_state
// fills from the device and gsync_upload_params copies back.
typedef struct {
    void *impl;                  // the network, not owned
    const mm_backend *be;        // not owned
    size_t n_params;
    mm_real *params;            // (n_params) host view
    mm_real *dparams, *dgrads;  // (n_params) backend memory, not owned
    mm_real *mirror;            // (n_params) owned host mirror, NULL on a host-memory backend
    int n_tensors;
    const model_tensor *tensors; // (n_tensors)
    void (*set_grad_hook)(void *impl, model_grad_hook fn, void *ctx);
} train_net;

// Fills n for a model's buffers on be; makes the host mirror (a copy of dparams) where be's
// memory is not the host's.
void train_net_bind(train_net *n, const mm_backend *be, void *impl, mm_real *dparams,
                    mm_real *dgrads, size_t n_params, const model_tensor *tensors, int n_tensors,
                    void (*set_grad_hook)(void *impl, model_grad_hook fn, void *ctx));
void train_net_free(train_net *n);

// A host view of n floats of backend memory buf: buf itself on a host-memory backend, else a
// new host copy. Free with train_host_view_free.
float *train_host_view(const mm_backend *be, float *buf, size_t n);
void train_host_view_free(float *host, const float *buf);

typedef struct {
    const comm_layout *lay;  // not owned
    const train_net *net;    // not owned
    size_t n;                // local parameters
    int zero;                // ZeRO stage (0 or 1)
    optim opt;               // AdamW state for [opt.lo, opt.hi), owned
    const mm_backend *be;    // = net->be
    float *m, *v;            // (hi - lo) AdamW moments in the backend's memory: opt.m / opt.v
                             // on a host-memory backend, else owned (opt's are then staging)
    void *plan;              // the backend's optimizer plan, made at the first use (after
                             // fine-tuning's optim_set_groups), owned
    mm_coll *dp;             // the backend's communicator over lay->dp (dp > 1 or ZeRO), owned
    // buckets (zero = 0, dp > 1)
    int n_buckets;
    size_t *bucket_lo;       // (n_buckets + 1) boundaries, ascending, owned
    void *reducer;           // the backend's bucket reduction, owned
    int next;                // highest bucket not yet started, -1 when all are
    int armed;               // 1 during the backward whose gradients are reduced
    // ZeRO-1 (zero = 1)
    size_t shard;            // elements of each dp rank's block: n / dp, rounded down
    size_t tail;             // n - shard * dp (< dp): the last rank's, after its block
    int last;                // 1 on the last dp rank
    float *zgrad;            // (hi - lo) this rank's reduced gradient, backend memory, owned
    double exposed;          // seconds the last gsync_finish spent on communication that
                             // backward did not hide
    trace_timeline *tl;      // the step timeline, not owned; NULL when off
    double *bucket_t;        // (2 n_buckets) the buckets' times for tl, owned
} gsync;

// Sets up reduction and optimizer state for net on layout lay; installs the network's
// gradient hook. net must outlive g.
void gsync_init(gsync *g, const train_net *net, const comm_layout *lay, const optim_cfg *oc,
                int zero, double bucket_mb);
void gsync_free(gsync *g);

// Reports to the step timeline tl (trace.h): each backward stage (the gradient hook, named
// after its first tensor: "backward blocks.3") and each bucket's reduction.
void gsync_trace(gsync *g, trace_timeline *tl);

// Call before the backward of the last micro-step of a step: its buckets reduce as they
// complete.
void gsync_arm(gsync *g);
// For an armed micro-step that runs no backward (nothing to train on this rank): starts
// every bucket as if backward had reported all gradients ready.
void gsync_ready_all(gsync *g);
// Call after that backward: completes the reduction and returns the global gradient norm.
double gsync_finish(gsync *g);
// AdamW with the given lr and gradient scale (clipping); under ZeRO also all-gathers.
void gsync_update(gsync *g, int64_t step, double lr, double grad_scale);

// Full-size (n) AdamW moments for saving a checkpoint. Without ZeRO these are the optimizer's
// own buffers (*owned = 0); under ZeRO they are gathered into new buffers the caller frees
// (*owned = 1). Collective over dp.
void gsync_full_state(gsync *g, float **m, float **v, int *owned);
// Takes this rank's part of full-size moments (after loading a checkpoint).
void gsync_load_state(gsync *g, const float *m, const float *v);

// Zeroes the gradient buffer before a step's first micro-step.
void gsync_zero_grads(gsync *g);
// Copies the host view net->params to the model's buffer (after a checkpoint or init_from
// wrote it, and at the start). Nothing where they are the same buffer.
void gsync_upload_params(gsync *g);

#endif  // MM_GRADSYNC_H
