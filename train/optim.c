// optim.c: the optimizer's state and schedule (optim.h). The update arithmetic itself is the
// backend's (model/cpu/backend_cpu.c is the reference every backend follows).
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void optim_init(optim *o, const optim_cfg *cfg, const model_tensor *tensors, int n_tensors,
                size_t lo, size_t hi) {
    memset(o, 0, sizeof(*o));
    MM_CHECK(lo <= hi, "optim_init: empty range [%zu, %zu)", lo, hi);
    o->cfg = *cfg;
    o->lo = lo;
    o->hi = hi;
    o->m = mm_alloc_aligned((hi - lo) * sizeof(float));
    o->v = mm_alloc_aligned((hi - lo) * sizeof(float));
    o->seg = mm_calloc((size_t)n_tensors, sizeof(*o->seg));
    for (int t = 0; t < n_tensors; t++) {
        const model_tensor *T = &tensors[t];
        size_t a = T->offset > lo ? T->offset : lo;
        size_t b = T->offset + T->size < hi ? T->offset + T->size : hi;
        if (a >= b) continue;
        MM_CHECK(T->group >= 0 && T->group < MODEL_N_GROUPS, "tensor %s: group %d", T->name,
                 T->group);
        o->seg[o->n_seg++] =
            (mm_opt_seg){a, b - a, T->decay ? 1.0f : 0.0f, 1.0f, T->split_dim >= 0, T->group};
    }
}

void optim_set_groups(optim *o, const double lr_mult[MODEL_N_GROUPS],
                      const int frozen[MODEL_N_GROUPS]) {
    int kept = 0;
    for (int s = 0; s < o->n_seg; s++) {
        mm_opt_seg g = o->seg[s];
        if (frozen[g.group]) continue;
        g.lr_mult = (float)lr_mult[g.group];
        o->seg[kept++] = g;
    }
    o->n_seg = kept;
}

void optim_free(optim *o) {
    free(o->m);
    free(o->v);
    free(o->seg);
    memset(o, 0, sizeof(*o));
}

double optim_lr(const optim_cfg *c, int64_t step) {
    if (c->warmup > 0 && step < c->warmup) return c->lr * (double)(step + 1) / (double)c->warmup;
    int64_t span = c->total - 1 - c->warmup;
    if (span <= 0) return c->lr;
    double frac = (double)(step - c->warmup) / (double)span;
    if (frac > 1.0) frac = 1.0;
    return c->min_lr + 0.5 * (c->lr - c->min_lr) * (1.0 + cos(M_PI * frac));
}

void optim_sumsq(const optim *o, const float *grads, double *sharded, double *replicated) {
    const mm_backend *be = &mm_backend_cpu;
    void *plan = be->iface->opt_plan_new(be, o->seg, o->n_seg, o->lo, o->hi);
    be->iface->sumsq(be, plan, grads, sharded, replicated);
    be->iface->opt_plan_free(be, plan);
}

void optim_adamw(optim *o, float *params, const float *grads, int64_t step, double lr,
                 double grad_scale) {
    const mm_backend *be = &mm_backend_cpu;
    void *plan = be->iface->opt_plan_new(be, o->seg, o->n_seg, o->lo, o->hi);
    const mm_adamw_args a = optim_adamw_args(&o->cfg, step, lr, grad_scale);
    be->iface->adamw(be, plan, params, grads, o->m, o->v, &a);
    be->iface->opt_plan_free(be, plan);
}

mm_adamw_args optim_adamw_args(const optim_cfg *c, int64_t step, double lr, double grad_scale) {
    return (mm_adamw_args){.step = step,
                           .lr = lr,
                           .beta1 = c->beta1,
                           .beta2 = c->beta2,
                           .eps = c->eps,
                           .weight_decay = c->weight_decay,
                           .grad_scale = grad_scale};
}
