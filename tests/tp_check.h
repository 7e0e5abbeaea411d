// tp_check.h: the tensor-parallel equivalence harness that tests/test_tp.c (the transformer)
// and tests/test_dit.c (the diffusion model) share, kept once so that both models are held to
// the serial model in the same way: each rank's tensors are its slices (model_tensor's
// split_dim / start / local) of the tp = 1 tensors, the loss matches, the gradient slices
// match (worst over ranks), replicated gradients are bitwise identical across ranks, and the
// gradient-ready hook fires in order with final gradients. It works on the model_tensor table
// and raw parameter / gradient buffers, which both models expose. Also the small transformer
// config that tests/test_ops.c and tests/test_tp.c build (n_heads 4, d_ff 64: tp 1, 2, 4 divide).
// The counts of all ranks are summed by tp_finish into the one closing line.
#ifndef MM_TEST_TP_CHECK_H
#define MM_TEST_TP_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../model/model.h"
#include "test.h"

enum { TP_MAX_HOOK_CALLS = 64 };

static inline void small_model_config(model_config *c) {
    memset(c, 0, sizeof(*c));
    c->d_model = 32;
    c->n_layers = 2;
    c->n_heads = 4;
    c->d_ff = 64;
    c->vocab = DATA_VOCAB;
    c->text_T = 9;
    c->img_h = 8;
    c->img_w = 12;
    c->img_c = 3;
    c->patch = 4;
    c->audio_F = 6;
    c->n_mels = 5;
    c->audio_group = 2;
    c->tp = 1;
}

// dst (loc->size) = this rank's slice, described by loc, of the full (tp = 1) tensor full.
static inline void take_slice(mm_real *dst, const mm_real *full, const model_tensor *loc) {
    int sd = loc->split_dim;
    if (sd < 0) {
        memcpy(dst, full, loc->size * sizeof(mm_real));
        return;
    }
    size_t inner = 1, outer = 1;
    for (int i = sd + 1; i < loc->ndim; i++) inner *= (size_t)loc->shape[i];
    for (int i = 0; i < sd; i++) outer *= (size_t)loc->shape[i];
    size_t run = (size_t)loc->local[sd] * inner;  // contiguous elements per outer index
    for (size_t o = 0; o < outer; o++)
        memcpy(dst + o * run, full + (o * (size_t)loc->shape[sd] + (size_t)loc->start) * inner,
               run * sizeof(mm_real));
}

// max|x - ref| / max|ref| (absolute when ref is all zero).
static inline double nerr_r(const mm_real *x, const mm_real *ref, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)x[i] - ref[i]));
        s = fmax(s, fabs((double)ref[i]));
    }
    return s > 0 ? d / s : d;
}

// How many of the nt tensors tt (in params) are not named as, or do not hold exactly their
// slice of, the tp = 1 tensors t1 (in ref_params). slice: scratch of the largest tensor.
static inline int tp_slices_differ(const model_tensor *t1, const mm_real *ref_params,
                                   const model_tensor *tt, const mm_real *params, int nt,
                                   mm_real *slice) {
    int bad = 0;
    for (int k = 0; k < nt; k++) {
        take_slice(slice, ref_params + t1[k].offset, &tt[k]);
        bad += strcmp(t1[k].name, tt[k].name) != 0 ||
               memcmp(slice, params + tt[k].offset, tt[k].size * sizeof(mm_real)) != 0;
    }
    return bad;
}

// params (tensors tt) = this rank's slices of ref_params (tensors t1).
static inline void tp_copy_slices(mm_real *params, const model_tensor *tt,
                                  const mm_real *ref_params, const model_tensor *t1, int nt) {
    for (int k = 0; k < nt; k++) take_slice(params + tt[k].offset, ref_params + t1[k].offset, &tt[k]);
}

// The tp loss lt against the tp = 1 loss l1, relative; printed by the root rank.
static inline void tp_check_loss(test_counts *tc, comm_group *tpg, double lt, double l1,
                                 double tol) {
    const int tp = comm_size(tpg), rank = comm_rank(tpg);
    double lrel = fabs(lt - l1) / fabs(l1);
    if (rank == 0) printf("tp=%d: loss %.9f vs tp=1 %.9f (rel %.2e)\n", tp, lt, l1, lrel);
    TEST_CHECK(tc, lrel <= tol, "tp=%d rank %d: loss %.9g vs tp=1 %.9g (rel %.2e)", tp, rank, lt,
               l1, lrel);
}

// Each rank's gradient slices (tensors tt in grads) against the tp = 1 gradients (t1 in
// ref_grads), normwise per tensor, worst over the ranks: one check per tensor. The root prints
// a row for each split or failing tensor (name padded to w_name), leaving out those whose name
// starts with skip_prefix (when not NULL), then the worst error.
static inline void tp_check_grads(test_counts *tc, comm_group *tpg, const model_tensor *t1,
                                  const mm_real *ref_grads, const model_tensor *tt,
                                  const mm_real *grads, int nt, mm_real *slice, int w_name,
                                  const char *skip_prefix, double tol) {
    const int tp = comm_size(tpg), root = comm_rank(tpg) == 0;
    double *errs = malloc((size_t)nt * sizeof(double));
    for (int k = 0; k < nt; k++) {
        take_slice(slice, ref_grads + t1[k].offset, &tt[k]);
        errs[k] = nerr_r(grads + tt[k].offset, slice, tt[k].size);
    }
    comm_allreduce_max(tpg, errs, (size_t)nt, COMM_F64);
    double worst = 0;
    for (int k = 0; k < nt; k++) {
        worst = fmax(worst, errs[k]);
        if (root && (tt[k].split_dim >= 0 || errs[k] > tol) &&
            !(skip_prefix && strncmp(tt[k].name, skip_prefix, strlen(skip_prefix)) == 0))
            printf("  %-*s split %2d  %.2e%s\n", w_name, tt[k].name, tt[k].split_dim, errs[k],
                   errs[k] <= tol ? "" : "  FAIL");
        TEST_CHECK(tc, errs[k] <= tol, "tp=%d: grad %s off by %.3e (normwise) from tp=1", tp,
                   tt[k].name, errs[k]);
    }
    if (root) printf("  worst gradient error over all tensors and ranks: %.2e\n", worst);
    free(errs);
}

// How many replicated (split_dim < 0) gradients differ in any bit from rank 0's; each one is
// named on stderr. *n_rep: how many replicated tensors there are.
static inline int tp_replicated_differ(comm_group *tpg, const model_tensor *tt,
                                       const mm_real *grads, int nt, mm_real *slice, int *n_rep) {
    int bad = 0;
    *n_rep = 0;
    for (int k = 0; k < nt; k++) {
        if (tt[k].split_dim >= 0) continue;
        (*n_rep)++;
        memcpy(slice, grads + tt[k].offset, tt[k].size * sizeof(mm_real));
        comm_bcast(tpg, slice, tt[k].size, sizeof(mm_real) == 8 ? COMM_F64 : COMM_F32, 0);
        if (memcmp(slice, grads + tt[k].offset, tt[k].size * sizeof(mm_real))) {
            bad++;
            fprintf(stderr, "rank %d: replicated grad %s differs from rank 0's\n", comm_rank(tpg),
                    tt[k].name);
        }
    }
    return bad;
}

// ---------------------------------------------------------------------------------------
// gradient-ready hook recorder

typedef struct {
    const mm_real *grads;  // the model's buffer, not owned
    size_t n;
    int calls;
    size_t lo[TP_MAX_HOOK_CALLS];
    mm_real *snap[TP_MAX_HOOK_CALLS];  // grads[lo..n) at the call, owned
} hook_rec;

static inline void record_hook(void *ctx, size_t lo) {
    hook_rec *h = ctx;
    MM_CHECK(h->calls < TP_MAX_HOOK_CALLS, "grad hook called more than %d times",
             TP_MAX_HOOK_CALLS);
    MM_CHECK(lo <= h->n, "grad hook lo %zu beyond the %zu parameters", lo, h->n);
    h->lo[h->calls] = lo;
    h->snap[h->calls] = malloc((h->n - lo + 1) * sizeof(mm_real));
    memcpy(h->snap[h->calls], h->grads + lo, (h->n - lo) * sizeof(mm_real));
    h->calls++;
}

static inline void free_hook_rec(hook_rec *h) {
    for (int i = 0; i < h->calls; i++) free(h->snap[i]);
    h->calls = 0;
}

// Checks the lo values of one recorded backward pass against the final gradients grads of a
// model with the nt tensors ts: strictly decreasing, each a tensor's first offset, ending at
// 0, and at each call every gradient at >= lo already final. Four checks; the caller checks
// the number of calls, which depends on the model.
static inline void check_hook_lo(test_counts *tc, const hook_rec *h, const model_tensor *ts,
                                 int nt, const mm_real *grads, const char *what) {
    int decreasing = 1, on_tensor = 1, stale = 0;
    for (int i = 0; i < h->calls; i++) {
        if (i) decreasing &= h->lo[i] < h->lo[i - 1];
        int found = 0;  // a lo inside a tensor would split it between "done" and "not done"
        for (int k = 0; k < nt; k++) found |= ts[k].offset == h->lo[i];
        on_tensor &= found;
        stale += memcmp(h->snap[i], grads + h->lo[i], (h->n - h->lo[i]) * sizeof(mm_real)) != 0;
    }
    TEST_CHECK(tc, decreasing, "%s: hook lo values must strictly decrease", what);
    TEST_CHECK(tc, on_tensor, "%s: every hook lo must be a tensor's first offset", what);
    TEST_CHECK(tc, h->calls > 0 && h->lo[h->calls - 1] == 0, "%s: the last hook call must be lo 0",
               what);
    TEST_CHECK(tc, stale == 0, "%s: %d hook calls came before the gradients at >= lo were final",
               what, stale);
}

static inline void print_hook_lo(const hook_rec *h, size_t np) {
    printf("  grad hook lo:");
    for (int i = 0; i < h->calls; i++) printf(" %zu", h->lo[i]);
    printf(" (of %zu)\n", np);
}

// Sums the counts of all ranks of world; rank 0 prints the closing line. Returns the exit
// status (the same on every rank).
static inline int tp_finish(comm_group *world, const test_counts *tc) {
    int64_t cnt[2] = {tc->passed, tc->failed};
    comm_allreduce_sum(world, cnt, 2, COMM_I64);
    if (comm_rank(world) == 0) printf("%lld passed, %lld failed\n", (long long)cnt[0], (long long)cnt[1]);
    return cnt[1] ? 1 : 0;
}

#endif  // MM_TEST_TP_CHECK_H
