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
#include "../model/model.h"
#include "optim.h"

// A network as the optimizer sees it: one contiguous parameter buffer, one gradient buffer,
// the tensor table, and the hook through which backward reports finished gradients. Every
// model family (transformer, diffusion) provides one.
//
// On the GPU (backend: cuda, issue 6) the network's buffers are device memory: dev is the
// cuda_ctx (model/cuda.h), dparams/dgrads the device buffers the model computes on, and
// params a HOST mirror owned by the family that checkpoints and fine-tuning read and write;
// gsync_full_state fills it from the device and gsync_upload_params copies it back. grads
// is NULL there. On the CPU dev, dparams and dgrads are NULL.
typedef struct {
    void *impl;                  // the network, not owned
    size_t n_params;
    mm_real *params;             // (n_params)
    mm_real *grads;              // (n_params)
    void *dev;                   // cuda_ctx * (backend cuda) or NULL; not owned
    mm_real *dparams, *dgrads;   // (n_params) device buffers, not owned
    int n_tensors;
    const model_tensor *tensors; // (n_tensors)
    void (*set_grad_hook)(void *impl, model_grad_hook fn, void *ctx);
} train_net;

typedef struct {
    const comm_layout *lay;  // not owned
    const train_net *net;    // not owned
    size_t n;                // local parameters
    int zero;                // ZeRO stage (0 or 1)
    optim opt;               // AdamW state for [opt.lo, opt.hi), owned
    // buckets (zero = 0, dp > 1)
    int n_buckets;
    size_t *bucket_lo;       // (n_buckets + 1) boundaries, ascending, owned
    comm_request **req;      // (n_buckets) in flight, owned
    int next;                // highest bucket not yet started, -1 when all are
    int armed;               // 1 during the backward whose gradients are reduced
    // ZeRO-1 (zero = 1)
    size_t shard;            // elements per dp rank (n rounded up to a multiple of dp)
    float *zbuf;             // (shard * dp) padded scratch: reduce-scatter in, all-gather out
    float *zgrad;            // (shard) this rank's reduced gradient
    double exposed;          // seconds the last gsync_finish spent on communication that
                             // backward did not hide
    void *dev;               // device optimizer state (net->dev set), owned; see gradsync.c
} gsync;

// Sets up reduction and optimizer state for net on layout lay; installs the network's
// gradient hook. net must outlive g.
void gsync_init(gsync *g, const train_net *net, const comm_layout *lay, const optim_cfg *oc,
                int zero, double bucket_mb);
void gsync_free(gsync *g);

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

// Zeroes the gradient buffer (device or host) before a step's first micro-step.
void gsync_zero_grads(gsync *g);
// On the GPU: copies the host mirror net->params to the device (after a checkpoint or
// init_from wrote it, and at the start). Nothing on the CPU.
void gsync_upload_params(gsync *g);

#endif  // MM_GRADSYNC_H
