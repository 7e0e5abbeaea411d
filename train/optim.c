// optim.c: CPU implementation of the schedule, gradient norm and AdamW (see optim.h).
// The CUDA backend will run the same update as a kernel; this one is the reference.
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
        o->seg[o->n_seg++] = (struct optim_seg){a, b - a, T->decay ? 1.0f : 0.0f, 1.0f,
                                                 T->split_dim >= 0, T->group};
    }
}

void optim_set_groups(optim *o, const double lr_mult[MODEL_N_GROUPS],
                      const int frozen[MODEL_N_GROUPS]) {
    int kept = 0;
    for (int s = 0; s < o->n_seg; s++) {
        struct optim_seg g = o->seg[s];
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

// Fixed chunks, each summed in order, then the chunk sums in order: the result depends on
// n only, not on how OpenMP schedules threads.
static double sumsq(const float *g, size_t n) {
    enum { CHUNK = 1 << 14 };
    size_t nchunks = (n + CHUNK - 1) / CHUNK;
    if (nchunks <= 1) {
        double s = 0.0;
        for (size_t i = 0; i < n; i++) s += (double)g[i] * (double)g[i];
        return s;
    }
    double *part = mm_malloc(nchunks * sizeof(double));
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

void optim_sumsq(const optim *o, const float *grads, double *sharded, double *replicated) {
    *sharded = *replicated = 0.0;
    for (int s = 0; s < o->n_seg; s++) {
        double v = sumsq(grads + (o->seg[s].offset - o->lo), o->seg[s].size);
        if (o->seg[s].sharded) *sharded += v;
        else *replicated += v;
    }
}

void optim_adamw(optim *o, float *params, const float *grads, int64_t step, double lr,
                 double grad_scale) {
    const float b1 = (float)o->cfg.beta1, b2 = (float)o->cfg.beta2, eps = (float)o->cfg.eps;
    // reciprocals of the bias corrections: the loop then divides once per element, not three
    // times (vector division is the slowest op in it)
    const float ibc1 = (float)(1.0 / (1.0 - pow(o->cfg.beta1, (double)step)));
    const float ibc2 = (float)(1.0 / (1.0 - pow(o->cfg.beta2, (double)step)));
    const float flr = (float)lr, wd = (float)o->cfg.weight_decay, gs = (float)grad_scale;
    float *m = o->m, *v = o->v;  // indexed from o->lo, like grads
    const size_t base = o->lo;
    // One parallel region for all tensors; elementwise, so `nowait` between them is safe.
#pragma omp parallel
    for (int s = 0; s < o->n_seg; s++) {
        const size_t lo = o->seg[s].offset, hi = lo + o->seg[s].size;
        const float lri = flr * o->seg[s].lr_mult, wdi = wd * o->seg[s].decay;
#pragma omp for simd schedule(static) nowait
        for (size_t i = lo; i < hi; i++) {
            const size_t j = i - base;
            float gi = grads[j] * gs;
            float mi = b1 * m[j] + (1.0f - b1) * gi;
            float vi = b2 * v[j] + (1.0f - b2) * gi * gi;
            m[j] = mi;
            v[j] = vi;
            float mhat = mi * ibc1, vhat = vi * ibc2;
            params[i] -= lri * (mhat / (sqrtf(vhat) + eps) + wdi * params[i]);
        }
    }
}
