// loader.c: keeps the training loop from ever waiting on disk or on audio features. A
// background thread walks the sampler's order (sampler.c), reads this rank's micro-batches
// from the shards, decodes and augments them (augment.c) into a ring of batch buffers,
// `depth` batches ahead of the caller, who takes them in order with data_loader_next.
//
// Ring discipline: depth + 1 buffers. The caller holds the batch it was last given (valid
// until its next call), and the thread may fill up to `depth` others meanwhile. `produced`
// and `returned` count batches; the thread may fill slot produced % nbuf while
// (produced - returned) + held < nbuf. Both counters, the stop flag and the thread's error
// live under one mutex; the batch buffers themselves are owned by one side at a time, so
// they are touched without the lock.
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "data_internal.h"

struct data_loader {
    char *dir;            // copy of cfg.dir
    data_loader_cfg cfg;  // cfg.dir points at dir
    data_dataset *ds;
    data_featurizer *feat;  // created here, used only by the thread
    data_augmenter aug;     // used only by the thread
    uint64_t n, G;          // samples in the dataset, global batch
    int accum;              // micro-steps per optimizer step
    int nbuf;               // depth + 1
    data_batch *ring;       // (nbuf)
    data_pos *pos_after;    // (nbuf) loader position once ring[i] has been handed out

    // thread-only state: where the next micro-batch comes from
    data_pos prod_pos;   // the step being produced
    int prod_k;          // its next micro-step
    uint64_t *perm;      // (n) the permutation of perm_epoch
    int64_t perm_epoch;  // -1 before the first
    uint64_t *idx;       // (micro_batch) dataset positions of one micro-batch

    // shared, under mu
    pthread_mutex_t mu;
    pthread_cond_t can_fill, can_take;
    uint64_t produced, returned;
    int held;  // the caller holds ring[(returned - 1) % nbuf]
    int stop, failed;
    mm_err thread_err;

    // caller-only state
    data_pos pos;   // first step not fully handed out
    double wait_s;  // seconds blocked in data_loader_next, not yet taken
    pthread_t thread;
    int started;
};

// Fills ring[slot] with the next micro-batch in the promised order and moves the producer
// on. Returns -1 with err when the read fails.
static int produce(data_loader *l, int slot, mm_err *err) {
    const data_loader_cfg *c = &l->cfg;
    if (l->perm_epoch != l->prod_pos.epoch) {
        data_permutation(l->n, c->seed, l->prod_pos.epoch, l->perm);
        l->perm_epoch = l->prod_pos.epoch;
    }
    uint64_t base =
        l->prod_pos.offset + ((uint64_t)l->prod_k * (uint64_t)c->dp_size + (uint64_t)c->dp_rank) *
                                 (uint64_t)c->micro_batch;
    MM_CHECK(base + (uint64_t)c->micro_batch <= l->n, "loader: micro-batch beyond the epoch");
    const double t0 = mm_now();
    for (int j = 0; j < c->micro_batch; j++) l->idx[j] = l->perm[base + (uint64_t)j];
    if (data_dataset_read(l->ds, l->idx, c->micro_batch, l->feat, &l->ring[slot], err)) return -1;
    data_augment_batch(&l->aug, &l->ring[slot], l->prod_pos.epoch);
    l->ring[slot].load_t0 = t0;
    l->ring[slot].load_t1 = mm_now();
    if (++l->prod_k == l->accum) {
        l->prod_k = 0;
        l->prod_pos = data_pos_advance(l->prod_pos, l->n, l->G);
    }
    l->pos_after[slot] = l->prod_pos;
    return 0;
}

static void *loader_thread(void *arg) {
    data_loader *l = arg;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        while (!l->stop && (l->produced - l->returned) + (uint64_t)l->held >= (uint64_t)l->nbuf)
            pthread_cond_wait(&l->can_fill, &l->mu);
        int stop = l->stop;
        int slot = (int)(l->produced % (uint64_t)l->nbuf);
        pthread_mutex_unlock(&l->mu);
        if (stop) break;

        mm_err err;
        int rc = produce(l, slot, &err);

        pthread_mutex_lock(&l->mu);
        if (rc) {
            l->failed = 1;
            l->thread_err = err;
        } else {
            l->produced++;
        }
        pthread_cond_signal(&l->can_take);
        pthread_mutex_unlock(&l->mu);
        if (rc) break;
    }
    return NULL;
}

// A saved position whose epoch cannot hold another whole global batch (e.g. saved by a run
// with a smaller global batch) starts the next epoch, as data_pos_advance would have.
static data_pos normalize_pos(data_pos p, uint64_t n, uint64_t G) {
    if (p.offset > n || n - p.offset < G) {
        p.epoch += 1;
        p.offset = 0;
    }
    return p;
}

// Checks cfg against the dataset, opens it and starts the thread. The caller owns *out and
// calls data_loader_close. Returns -1 with err (nothing left open) on a bad cfg or dataset.
int data_loader_open(data_loader **out, const data_loader_cfg *cfg, mm_err *err) {
    *out = NULL;
    const char *dir = cfg->dir ? cfg->dir : "(null)";
    if (cfg->micro_batch < 1 || cfg->global_batch < 1 || cfg->dp_size < 1 || cfg->depth < 1)
        return mm_fail(err,
                       "%s: loader needs global_batch, micro_batch, dp_size and depth >= 1 "
                       "(got %d, %d, %d, %d)",
                       dir, cfg->global_batch, cfg->micro_batch, cfg->dp_size, cfg->depth);
    if (cfg->dp_rank < 0 || cfg->dp_rank >= cfg->dp_size)
        return mm_fail(err, "%s: dp_rank %d is outside 0..%d", dir, cfg->dp_rank, cfg->dp_size - 1);
    if (cfg->global_batch % (cfg->micro_batch * cfg->dp_size) != 0)
        return mm_fail(err, "%s: global_batch %d is not a multiple of micro_batch %d x dp_size %d",
                       dir, cfg->global_batch, cfg->micro_batch, cfg->dp_size);
    if (cfg->start.epoch < 0)
        return mm_fail(err, "%s: start position has a negative epoch %lld", dir,
                       (long long)cfg->start.epoch);
    if (!cfg->dir) return mm_fail(err, "loader: no dataset directory given");

    data_dataset *ds;
    if (data_dataset_open(&ds, cfg->dir, cfg->verify, err)) return -1;
    const data_schema *s = data_dataset_schema(ds);
    if ((uint64_t)cfg->global_batch > s->n_samples) {
        mm_fail(err, "%s: global_batch %d exceeds the %llu samples of the dataset", dir,
                cfg->global_batch, (unsigned long long)s->n_samples);
        data_dataset_close(ds);
        return -1;
    }
    mm_err why;
    if (data_audio_check(s, &cfg->audio, &why) ||
        data_augment_check(&cfg->augment, s->img_h, s->img_w, s->img_c,
                           data_audio_frames(s, &cfg->audio), cfg->audio.n_mels, &why)) {
        data_dataset_close(ds);
        return mm_fail(err, "%s: %.900s", dir, why.msg);
    }

    data_loader *l = mm_calloc(1, sizeof(*l));
    l->dir = strdup(cfg->dir);
    MM_CHECK(l->dir, "out of memory");
    l->cfg = *cfg;
    l->cfg.dir = l->dir;
    l->ds = ds;
    l->feat = data_featurizer_new(s, &cfg->audio);
    data_augmenter_init(&l->aug, &cfg->augment, cfg->seed);
    l->n = s->n_samples;
    l->G = (uint64_t)cfg->global_batch;
    l->accum = cfg->global_batch / (cfg->micro_batch * cfg->dp_size);
    l->nbuf = cfg->depth + 1;
    l->ring = mm_calloc((size_t)l->nbuf, sizeof(data_batch));
    l->pos_after = mm_calloc((size_t)l->nbuf, sizeof(data_pos));
    for (int i = 0; i < l->nbuf; i++)
        data_batch_alloc(&l->ring[i], cfg->micro_batch, s, &cfg->audio);
    l->pos = normalize_pos(cfg->start, l->n, l->G);
    l->prod_pos = l->pos;
    l->perm = mm_malloc(sizeof(uint64_t) * l->n);
    l->perm_epoch = -1;
    l->idx = mm_malloc(sizeof(uint64_t) * (size_t)cfg->micro_batch);
    MM_CHECK(pthread_mutex_init(&l->mu, NULL) == 0, "pthread_mutex_init failed");
    MM_CHECK(pthread_cond_init(&l->can_fill, NULL) == 0, "pthread_cond_init failed");
    MM_CHECK(pthread_cond_init(&l->can_take, NULL) == 0, "pthread_cond_init failed");
    if (pthread_create(&l->thread, NULL, loader_thread, l) != 0) {
        data_loader_close(l);
        return mm_fail(err, "%s: cannot start the loader thread", dir);
    }
    l->started = 1;
    *out = l;
    return 0;
}

// Gives back the previous batch and waits for the next one. The result is owned by the
// loader and valid until the next call (or close). After a read error every call returns
// NULL with that error, once the batches read before it have been handed out.
const data_batch *data_loader_next(data_loader *l, mm_err *err) {
    double t0 = mm_now();
    pthread_mutex_lock(&l->mu);
    if (l->held) {
        l->held = 0;
        pthread_cond_signal(&l->can_fill);
    }
    while (l->produced == l->returned && !l->failed) pthread_cond_wait(&l->can_take, &l->mu);
    const data_batch *b = NULL;
    if (l->produced > l->returned) {
        int slot = (int)(l->returned % (uint64_t)l->nbuf);
        l->returned++;
        l->held = 1;
        l->pos = l->pos_after[slot];
        b = &l->ring[slot];
    } else {
        mm_fail(err, "%s", l->thread_err.msg);
    }
    pthread_mutex_unlock(&l->mu);
    l->wait_s += mm_now() - t0;
    return b;
}

// Only meaningful from the thread that calls data_loader_next (it is that thread's state).
data_pos data_loader_pos(const data_loader *l) {
    return l->pos;
}

const data_schema *data_loader_schema(const data_loader *l) {
    return data_dataset_schema(l->ds);
}

double data_loader_take_wait(data_loader *l) {
    double w = l->wait_s;
    l->wait_s = 0.0;
    return w;
}

// Stops the thread (waking it if it waits for a free buffer; a read in progress finishes
// first), joins it and frees everything. Batches handed out become invalid.
void data_loader_close(data_loader *l) {
    if (!l) return;
    if (l->started) {
        pthread_mutex_lock(&l->mu);
        l->stop = 1;
        pthread_cond_broadcast(&l->can_fill);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
    }
    pthread_cond_destroy(&l->can_take);
    pthread_cond_destroy(&l->can_fill);
    pthread_mutex_destroy(&l->mu);
    for (int i = 0; i < l->nbuf; i++) data_batch_free(&l->ring[i]);
    free(l->ring);
    free(l->pos_after);
    free(l->perm);
    free(l->idx);
    data_featurizer_free(l->feat);
    data_augmenter_free(&l->aug);
    data_dataset_close(l->ds);
    free(l->dir);
    free(l);
}
