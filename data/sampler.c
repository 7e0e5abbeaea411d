// sampler.c: the arithmetic of the loader's promise (data.h), kept apart from the thread
// that uses it so that it can be tested, and reasoned about, on its own: one permutation per
// (seed, epoch), and a position that moves by whole global batches and drops the partial
// batch at the end of an epoch.
#include "data.h"

// Fisher-Yates from the top: every permutation equally likely, and the result depends only
// on (n, seed, epoch), never on how many ranks ask for it.
void data_permutation(uint64_t n, uint64_t seed, int64_t epoch, uint64_t *perm) {
    MM_CHECK(epoch >= 0, "data_permutation: negative epoch %lld", (long long)epoch);
    mm_rng r;
    mm_rng_init(&r, seed, (uint64_t)epoch);
    for (uint64_t i = 0; i < n; i++) perm[i] = i;
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = mm_rng_below(&r, i);
        uint64_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

// A position whose remaining samples cannot fill a global batch (including one saved by a
// run with a different global batch) moves to the start of the next epoch: drop-last.
data_pos data_pos_advance(data_pos pos, uint64_t n, uint64_t G) {
    MM_CHECK(G > 0 && G <= n, "data_pos_advance: global batch %llu vs %llu samples",
             (unsigned long long)G, (unsigned long long)n);
    pos.offset += G;
    if (pos.offset > n || n - pos.offset < G) {
        pos.epoch += 1;
        pos.offset = 0;
    }
    return pos;
}
