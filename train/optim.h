// optim.h: the optimizer side of a step on the host: learning-rate schedule (linear warmup,
// cosine decay), global gradient norm with clipping, and AdamW with decoupled weight decay
// over the one contiguous parameter buffer. AdamW state m and v are contiguous buffers too,
// laid out like the parameters, so checkpoints and (later) ZeRO shards are plain slices.
#ifndef MM_OPTIM_H
#define MM_OPTIM_H

#include <stddef.h>
#include <stdint.h>

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
    size_t n;                   // parameters (local)
    float *m;                   // (n) first moment, owned
    float *v;                   // (n) second moment, owned
    int n_seg;                  // one segment per tensor
    struct optim_seg {
        size_t offset, size;    // element range in the parameter buffer
        float decay;            // 1 where weight decay applies, 0 elsewhere
        float lr_mult;          // learning-rate multiplier (parameter groups, fine-tuning)
    } *seg;                     // (n_seg) owned
} optim;

// Allocates zeroed state for the tensors of a model (decay flags from model_tensor.decay,
// lr multipliers 1).
void optim_init(optim *o, const optim_cfg *cfg, const model_tensor *tensors, int n_tensors,
                size_t n_params);
void optim_free(optim *o);

// Learning rate for step s (0-based): linear warmup from lr/warmup to lr over `warmup` steps,
// then cosine from lr to min_lr at step total-1.
double optim_lr(const optim_cfg *c, int64_t step);

// Sum of squares of g (n), accumulated in double in a fixed order so the result is
// bit-identical for a given thread count.
double optim_sumsq(const float *g, size_t n);

// One AdamW update (step is 1-based for bias correction). grad_scale multiplies every
// gradient first (clipping). Deterministic and elementwise.
void optim_adamw(optim *o, float *params, const float *grads, int64_t step, double lr,
                 double grad_scale);

#endif  // MM_OPTIM_H
