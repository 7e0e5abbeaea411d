// test_gradsync.c: train/gradsync.c's ZeRO-1 against its plain data-parallel path, on the CPU
// backend over every rank of the world (tests/mpi_ranks.sh runs 1, 2 and 4). Gradients are
// small multiples of 1/4, so their sums over ranks are exact in any order: after two AdamW
// steps the weights and both moments must be BITWISE those of the bucketed allreduce path,
// on every rank, and the gradient norm equal to one computed here in float64. The parameter
// count, 1031, is prime, so every dp > 1 leaves a tail that the equal blocks of the
// reduce-scatter and all-gather do not cover and the last rank owns: a tail reduced twice,
// not at all, or not sent back to the others fails here bit for bit.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../train/gradsync.h"
#include "test.h"

enum { N = 1031, STEPS = 2 };

// The fake network's hook slot: gsync installs its bucket callback here (zero = 0, dp > 1).
typedef struct {
    model_grad_hook fn;
    void *ctx;
} hook_slot;

static void set_hook(void *impl, model_grad_hook fn, void *ctx) {
    hook_slot *h = impl;
    h->fn = fn;
    h->ctx = ctx;
}

static float grad_of(size_t i, int rank, int step) {
    return (float)((int)((i * 7 + (size_t)rank * 3 + (size_t)step) % 11) - 5) * 0.25f;
}

typedef struct {
    float params[N], m[N], v[N];
    double norm[STEPS];
} result;

// Two steps of gsync with ZeRO stage zero; the full state at the end into r.
static void run(const comm_layout *lay, int zero, result *r) {
    static const model_tensor tensors[3] = {{.name = "a.w",
                                             .ndim = 1,
                                             .shape = {500},
                                             .split_dim = -1,
                                             .local = {500},
                                             .offset = 0,
                                             .size = 500,
                                             .decay = 1},
                                            {.name = "b.b",
                                             .ndim = 1,
                                             .shape = {500},
                                             .split_dim = -1,
                                             .local = {500},
                                             .offset = 500,
                                             .size = 500,
                                             .decay = 0},
                                            {.name = "c.w",
                                             .ndim = 1,
                                             .shape = {31},
                                             .split_dim = -1,
                                             .local = {31},
                                             .offset = 1000,
                                             .size = 31,
                                             .decay = 1}};
    float *params = mm_alloc_aligned(N * sizeof(float)),
          *grads = mm_alloc_aligned(N * sizeof(float));
    for (size_t i = 0; i < N; i++) params[i] = (float)(i % 17) * 0.125f - 1.0f;
    hook_slot hook = {0};
    train_net net;
    train_net_bind(&net, &mm_backend_cpu, &hook, params, grads, N, tensors, 3, set_hook);
    const optim_cfg oc = {.lr = 1e-2,
                          .min_lr = 1e-3,
                          .warmup = 0,
                          .total = 10,
                          .beta1 = 0.9,
                          .beta2 = 0.95,
                          .eps = 1e-8,
                          .weight_decay = 0.1};
    gsync g;
    gsync_init(&g, &net, lay, &oc, zero, 0.001);  // 1024-float buckets: 2 of them
    for (int s = 0; s < STEPS; s++) {
        gsync_zero_grads(&g);
        for (size_t i = 0; i < N; i++) grads[i] = grad_of(i, lay->dp_rank, s);
        gsync_arm(&g);
        gsync_ready_all(&g);  // as a backward that finished every gradient at once
        r->norm[s] = gsync_finish(&g);
        gsync_update(&g, s + 1, 1e-2, 1.0);
    }
    float *m, *v;
    int owned;
    gsync_full_state(&g, &m, &v, &owned);
    memcpy(r->params, params, sizeof(r->params));
    memcpy(r->m, m, sizeof(r->m));
    memcpy(r->v, v, sizeof(r->v));
    if (owned) free(m), free(v);
    gsync_free(&g);
    train_net_free(&net);
    free(params);
    free(grads);
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    test_counts tc = {0, 0};
    mm_err err;
    comm_layout lay;
    MM_CHECK(comm_layout_init(&lay, world, 1, &err) == 0, "%s", err.msg);
    const int dp = lay.dp_size;
    result *plain = mm_calloc(1, sizeof(result)), *zero = mm_calloc(1, sizeof(result));
    run(&lay, 0, plain);
    run(&lay, 1, zero);
    TEST_CHECK(&tc, memcmp(plain->params, zero->params, sizeof(plain->params)) == 0,
               "dp %d: ZeRO-1 weights bitwise those of the plain path", dp);
    TEST_CHECK(&tc,
               memcmp(plain->m, zero->m, sizeof(plain->m)) == 0 &&
                   memcmp(plain->v, zero->v, sizeof(plain->v)) == 0,
               "dp %d: ZeRO-1 AdamW moments, gathered, bitwise the plain path's", dp);
    // every rank holds rank 0's weights
    float *r0 = mm_alloc_aligned(sizeof(zero->params));
    memcpy(r0, zero->params, sizeof(zero->params));
    comm_bcast(lay.dp, r0, N, COMM_F32, 0);
    TEST_CHECK(&tc, memcmp(r0, zero->params, sizeof(zero->params)) == 0,
               "dp %d, rank %d: ZeRO-1 weights equal rank 0's", dp, lay.dp_rank);
    free(r0);
    for (int s = 0; s < STEPS; s++) {
        double want = 0;
        for (size_t i = 0; i < N; i++) {
            double sum = 0;
            for (int r = 0; r < dp; r++) sum += grad_of(i, r, s);
            want += sum * sum;
        }
        want = sqrt(want);
        TEST_CHECK(&tc,
                   fabs(zero->norm[s] - want) <= 1e-12 * want &&
                       fabs(plain->norm[s] - want) <= 1e-12 * want,
                   "dp %d step %d: norm plain %.17g, ZeRO %.17g, float64 %.17g", dp, s + 1,
                   plain->norm[s], zero->norm[s], want);
    }
    free(plain);
    free(zero);
    comm_layout_free(&lay);
    int64_t sum[2] = {tc.passed, tc.failed};
    const int rank = comm_rank(world);
    comm_allreduce_sum(world, sum, 2, COMM_I64);
    comm_finalize(world);
    tc.passed = (int)sum[0], tc.failed = (int)sum[1];
    if (rank != 0) return tc.failed ? 1 : 0;
    return test_finish(&tc);
}
