// optim.c: CPU implementation of the schedule, gradient norm and AdamW (see optim.h).
// The CUDA backend will run the same update as a kernel; this one is the reference.
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void optim_init(optim *o, const optim_cfg *cfg, const model_tensor *tensors, int n_tensors,
                size_t n_params) {
    memset(o, 0, sizeof(*o));
    o->cfg = *cfg;
    o->n = n_params;
    o->m = mm_alloc_aligned(n_params * sizeof(float));
    o->v = mm_alloc_aligned(n_params * sizeof(float));
    o->n_seg = n_tensors;
    o->seg = mm_calloc((size_t)n_tensors, sizeof(*o->seg));
    for (int t = 0; t < n_tensors; t++) {
        const model_tensor *T = &tensors[t];
        MM_CHECK(T->offset + T->size <= n_params, "tensor %s outside the parameter buffer",
                 T->name);
        o->seg[t] = (struct optim_seg){T->offset, T->size, T->decay ? 1.0f : 0.0f, 1.0f};
    }
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

double optim_sumsq(const float *g, size_t n) {
    // Fixed chunks, each summed in order, then the chunk sums in order: the result depends on
    // n only, not on how OpenMP schedules threads.
    enum { CHUNK = 1 << 14 };
    size_t nchunks = (n + CHUNK - 1) / CHUNK;
    double *part = mm_malloc((nchunks ? nchunks : 1) * sizeof(double));
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t lo = c * CHUNK, hi = lo + CHUNK < n ? lo + CHUNK : n;
        double s = 0.0;
        for (size_t i = lo; i < hi; i++) s += (double)g[i] * (double)g[i];
        part[c] = s;
    }
    double total = 0.0;
    for (size_t c = 0; c < nchunks; c++) total += part[c];
    free(part);
    return total;
}

void optim_adamw(optim *o, float *params, const float *grads, int64_t step, double lr,
                 double grad_scale) {
    const float b1 = (float)o->cfg.beta1, b2 = (float)o->cfg.beta2, eps = (float)o->cfg.eps;
    const float bc1 = (float)(1.0 - pow(o->cfg.beta1, (double)step));
    const float bc2 = (float)(1.0 - pow(o->cfg.beta2, (double)step));
    const float flr = (float)lr, wd = (float)o->cfg.weight_decay, gs = (float)grad_scale;
    float *m = o->m, *v = o->v;
    // One parallel region for all tensors; elementwise, so `nowait` between them is safe.
#pragma omp parallel
    for (int s = 0; s < o->n_seg; s++) {
        const size_t lo = o->seg[s].offset, hi = lo + o->seg[s].size;
        const float lri = flr * o->seg[s].lr_mult, wdi = wd * o->seg[s].decay;
#pragma omp for simd schedule(static) nowait
        for (size_t i = lo; i < hi; i++) {
            float g = grads[i] * gs;
            float mi = b1 * m[i] + (1.0f - b1) * g;
            float vi = b2 * v[i] + (1.0f - b2) * g * g;
            m[i] = mi;
            v[i] = vi;
            float mhat = mi / bc1, vhat = vi / bc2;
            params[i] -= lri * (mhat / (sqrtf(vhat) + eps) + wdi * params[i]);
        }
    }
}
