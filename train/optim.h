// optim.h: the optimizer's configuration and state: learning-rate schedule (linear warmup,
// cosine decay), the tensors cut into segments, and the AdamW moments over the one
// contiguous parameter buffer. AdamW state covers a contiguous range [lo, hi) of that
// buffer: all of it normally, this rank's shard under ZeRO-1, so checkpoints and shards are
// plain slices. The arithmetic (AdamW, sum of squares) is the backend's (model/backend.h);
// optim_adamw and optim_sumsq run the CPU backend's on host buffers.
// Fine-tuning adds parameter groups (model.h MODEL_GROUP_*): a learning-rate multiplier per
// group and frozen groups that the optimizer leaves alone (optim_set_groups).
#ifndef MM_OPTIM_H
#define MM_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "../model/backend.h"
#include "../model/model.h"

typedef struct {
    double lr, min_lr;
    int64_t warmup, total;      // warmup steps, total steps of the schedule
    double beta1, beta2, eps;
    double weight_decay;
    double grad_clip;           // 0 = off
} optim_cfg;

typedef struct {
    optim_cfg cfg;
    size_t lo, hi;              // the parameter range this optimizer updates
    float *m;                   // (hi - lo) first moment, owned
    float *v;                   // (hi - lo) second moment, owned
    int n_seg;                  // tensors intersecting [lo, hi), clipped to it
    mm_opt_seg *seg;            // (n_seg) owned
} optim;

// Allocates zeroed state for the part [lo, hi) of the parameters described by tensors.
void optim_init(optim *o, const optim_cfg *cfg, const model_tensor *tensors, int n_tensors,
                size_t lo, size_t hi);
void optim_free(optim *o);

// Parameter groups (fine-tuning). Tensors of a group g with frozen[g] leave the optimizer:
// no AdamW step and no weight decay (their values stay bit-identical), their moments stay
// zero, and their gradients do not count in optim_sumsq (the global norm and clipping see
// only what is trained, as if they had no gradient). Every other tensor's learning rate is
// multiplied by lr_mult[g]. Call after optim_init, before the first step.
void optim_set_groups(optim *o, const double lr_mult[MODEL_N_GROUPS],
                      const int frozen[MODEL_N_GROUPS]);

// Learning rate for step s (0-based): linear warmup from lr/warmup to lr over `warmup` steps,
// then cosine from lr to min_lr at step total-1.
double optim_lr(const optim_cfg *c, int64_t step);

// Host buffers, on the CPU backend (tests, benchmarks; the trainer goes through its backend).
// Sums of squares of the gradients of [lo, hi) (grads indexed from lo), split into tensors
// sharded over tp and replicated ones; accumulated in double in a fixed order, so the result
// is bit-identical for a given layout.
void optim_sumsq(const optim *o, const float *grads, double *sharded, double *replicated);

// One AdamW update of params[lo, hi) from grads (indexed from lo); step is 1-based for bias
// correction; grad_scale multiplies every gradient first (clipping). Elementwise.
void optim_adamw(optim *o, float *params, const float *grads, int64_t step, double lr,
                 double grad_scale);
// The backend's AdamW arguments for that update.
mm_adamw_args optim_adamw_args(const optim_cfg *c, int64_t step, double lr, double grad_scale);

#endif  // MM_OPTIM_H
