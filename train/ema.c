// ema.c: the weight average of ema.h on any backend: the update is the backend's ema kernel,
// the swap three device copies (mem_copy: parameters, not activations, whose element type
// copy_rows follows), so a GPU never moves the weights to the host for evaluation.
#include "ema.h"

#include <string.h>

#include "gradsync.h"

void train_ema_init(train_ema *e, const mm_backend *be, const float *dparams, size_t n) {
    memset(e, 0, sizeof(*e));
    e->be = be;
    e->n = n;
    e->dema = be->ops->mem_alloc(be, n * sizeof(float));
    be->ops->mem_copy(be, e->dema, dparams, n * sizeof(float));
    e->host = train_host_view(be, e->dema, n);
}

void train_ema_free(train_ema *e) {
    if (!e->be) return;
    train_host_view_free(e->host, e->dema);
    if (e->dema) e->be->ops->mem_free(e->be, e->dema);
    if (e->dswap) e->be->ops->mem_free(e->be, e->dswap);
    memset(e, 0, sizeof(*e));
}

void train_ema_update(train_ema *e, const float *dparams, float decay) {
    e->be->iface->ema(e->be, e->dema, dparams, e->n, decay);
}

void train_ema_swap(train_ema *e, float *dparams) {
    const mm_backend *be = e->be;
    if (!e->dswap) e->dswap = be->ops->mem_alloc(be, e->n * sizeof(float));
    const size_t bytes = e->n * sizeof(float);
    be->ops->mem_copy(be, e->dswap, dparams, bytes);
    be->ops->mem_copy(be, dparams, e->dema, bytes);
    be->ops->mem_copy(be, e->dema, e->dswap, bytes);
}

void train_ema_to_host(train_ema *e) {
    mm_backend_to_host(e->be, e->host, e->dema, e->n * sizeof(float));
}

void train_ema_from_host(train_ema *e) {
    mm_backend_from_host(e->be, e->dema, e->host, e->n * sizeof(float));
}
