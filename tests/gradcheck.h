// gradcheck.h: the finite-difference gradient-check machinery that tests/test64_gradcheck.c
// (the transformer) and tests/test64_dit_gradcheck.c (the diffusion model) share, kept once so
// that both hold their backward passes to the same numeric derivative and error measure. Only
// for the float64 builds (-DMM_F64, see the Makefile's obj64 rule).
//
// Numeric derivative: the fourth-order central difference
//   n = (8 (f(x+h) - f(x-h)) - (f(x+2h) - f(x-2h))) / 12h.
// Error per checked entry: |a - n| / max(|a|, |n|, 1e-3 * s), a analytic, n numeric, s the
// largest |n| of that tensor (entries ~0 analytically are held to an absolute tol * 1e-3 * s
// instead of a meaningless relative error). Step and tolerance are the caller's; the reasoning
// behind 1e-3 and 1e-6 is at the top of tests/test64_gradcheck.c.
#ifndef MM_TEST_GRADCHECK_H
#define MM_TEST_GRADCHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/model.h"
#include "test.h"

#ifndef MM_F64
#error "gradcheck.h is for the float64 tests (-DMM_F64)"
#endif

static inline void fill_normal(mm_real *x, size_t n, double std, mm_rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = std * mm_rng_normal(r);
}

static inline mm_real *alloc_normal(size_t n, double std, mm_rng *r) {
    mm_real *x = malloc(n * sizeof(mm_real));
    fill_normal(x, n, std, r);
    return x;
}

// Sum of a * b: the scalar f = sum(out * R) whose gradient is the backward fed dout = R.
static inline double dot(const mm_real *a, const mm_real *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// ---------------------------------------------------------------------------------------
// generic finite-difference check of one input tensor

typedef double (*scalar_fn)(void *ctx);

typedef struct {
    double max_err;
    size_t checked;
} fd_result;

// Checks analytic[i] against the numeric derivative of f with respect to x[i] at step eps for
// the entries idx (all n entries when idx is NULL).
static inline fd_result fd_check(scalar_fn f, void *ctx, mm_real *x, const mm_real *analytic,
                                 size_t n, const size_t *idx, size_t n_idx, double eps) {
    size_t m = idx ? n_idx : n;
    double *num = malloc(m * sizeof(double));
    double scale = 0;
    for (size_t k = 0; k < m; k++) {
        size_t i = idx ? idx[k] : k;
        mm_real keep = x[i];
        double fv[4];  // f at x_i + eps * {1, -1, 2, -2}
        const double st[4] = {1, -1, 2, -2};
        for (int j = 0; j < 4; j++) {
            x[i] = keep + st[j] * eps;
            fv[j] = f(ctx);
        }
        x[i] = keep;
        num[k] = (8 * (fv[0] - fv[1]) - (fv[2] - fv[3])) / (12 * eps);
        if (fabs(num[k]) > scale) scale = fabs(num[k]);
    }
    fd_result r = {0, m};
    for (size_t k = 0; k < m; k++) {
        size_t i = idx ? idx[k] : k;
        double a = analytic[i], d = fabs(a - num[k]);
        double den = fmax(fmax(fabs(a), fabs(num[k])), 1e-3 * scale);
        double e = den > 0 ? d / den : d;
        if (e > r.max_err) r.max_err = e;
    }
    free(num);
    return r;
}

// One row of an op table: "  <what> <input> <n> <max rel err> ok|FAIL", the two names padded
// to w_what and w_input columns; counts one check.
static inline void fd_report(test_counts *tc, int w_what, const char *what, int w_input,
                             const char *input, fd_result r, double tol) {
    printf("  %-*s %-*s %6zu  %.2e  %s\n", w_what, what, w_input, input, r.checked, r.max_err,
           r.max_err <= tol ? "ok" : "FAIL");
    TEST_CHECK(tc, r.max_err <= tol, "%s: d%s max rel err %.3e > %.0e", what, input, r.max_err,
               tol);
}

// Worst relative deviation of g from factor * ga: a backward that accumulates, called again
// with loss_scale factor - 1 on top of ga, must leave factor * ga.
static inline double accumulate_err(const mm_real *g, const mm_real *ga, size_t n,
                                    double factor) {
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs(g[i] - factor * ga[i]) / fmax(fabs(ga[i]), 1e-12);
        if (e > worst) worst = e;
    }
    return worst;
}

// Every parameter tensor of a model against the numeric derivative of f (the model's loss):
// all entries of a tensor of <= 64, else 24 random ones; for "text.wte" only rows of tokens
// marked in used (other rows have zero gradient and would prove nothing). ga holds the
// analytic gradient of params. Prints one row per tensor (name padded to w_name) and counts
// one check each, failures named "<what> grad <tensor>"; returns the worst error.
static inline double fd_check_tensors(test_counts *tc, const char *what, int w_name,
                                      const model_tensor *ts, int nt, mm_real *params,
                                      const mm_real *ga, scalar_fn f, void *ctx, const int *used,
                                      mm_rng *r, double eps, double tol) {
    double worst = 0;
    for (int k = 0; k < nt; k++) {
        const model_tensor *t = &ts[k];
        size_t idx[24], n_idx = 0;
        const size_t *ip = NULL;
        if (t->size > 64) {
            int is_wte = strcmp(t->name, "text.wte") == 0;
            while (n_idx < 24) {
                size_t i = mm_rng_below(r, t->size);
                if (is_wte && !used[i / (size_t)t->shape[1]]) continue;
                idx[n_idx++] = i;
            }
            ip = idx;
        }
        fd_result res = fd_check(f, ctx, params + t->offset, ga + t->offset, t->size, ip, n_idx, eps);
        worst = fmax(worst, res.max_err);
        printf("  %-*s %7zu  %.2e %s\n", w_name, t->name, res.checked, res.max_err,
               res.max_err <= tol ? "" : "FAIL");
        TEST_CHECK(tc, res.max_err <= tol, "%s grad %s: max rel err %.3e", what, t->name,
                   res.max_err);
    }
    return worst;
}

#endif  // MM_TEST_GRADCHECK_H
