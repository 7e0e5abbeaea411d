// ema.h: the exponential moving average of a network's weights, kept in the backend's memory
// beside them and swapped in for evaluation and sampling. Both model families use it: the
// generator always (diffusion.ema_decay), the captioner when optim.ema_decay > 0, since an
// average over the last few hundred updates generalises better than the last update alone
// on a small set.
#ifndef MM_TRAIN_EMA_H
#define MM_TRAIN_EMA_H

#include <stddef.h>

#include "../model/backend.h"

typedef struct {
    const mm_backend *be;  // not owned
    size_t n;              // parameters averaged
    float *dema;           // (n) the average, backend memory, owned
    float *dswap;          // (n) swap scratch, made at the first swap, owned
    float *host;           // (n) host view of dema (train_host_view): dema itself on a
                           // host-memory backend, else an owned copy
} train_ema;

// Starts the average at the n weights dparams (backend memory).
void train_ema_init(train_ema *e, const mm_backend *be, const float *dparams, size_t n);
void train_ema_free(train_ema *e);
// ema = decay * ema + (1 - decay) * dparams, after an optimizer update.
void train_ema_update(train_ema *e, const float *dparams, float decay);
// Exchanges the weights dparams and the average (a second call restores them).
void train_ema_swap(train_ema *e, float *dparams);
// The host view from the backend (before a checkpoint is written) and back (after one or
// init_from wrote the view): nothing where the view is the buffer itself.
void train_ema_to_host(train_ema *e);
void train_ema_from_host(train_ema *e);

#endif
