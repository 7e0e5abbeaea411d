// test_dit_sched.c: the samplers in the precision that ships (float). The float64 test
// (test64_dit_sched.c) proves the algebra; this one proves it survives float rounding where
// it is most exposed: DDIM's first step divides by sqrt(alpha_bar(999)) ~ 5e-5, and Euler
// steps of 1/1000 add small increments to unit-sized pixels.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../model/diffusion.h"
#include "test.h"

// Exact predictor when every image is x*: flow v = (x_t - x*) / t, DDPM
// eps = (x_t - sqrt(ab) x*) / sqrt(1 - ab).
typedef struct {
    dit_objective obj;
    size_t n;
    const mm_real *xs;  // (n)
} delta_oracle;

static void delta_predict(void *ctx, const dit_input *in, mm_real *out) {
    delta_oracle *o = ctx;
    for (int b = 0; b < in->B; b++) {
        double t = in->t[b], a, s;
        if (o->obj == DIT_FLOW) {
            a = 1 - t, s = t;
        } else {
            double ab = dit_alpha_bar((int)lround(t * DIT_DDPM_STEPS));
            a = sqrt(ab), s = sqrt(1 - ab);
        }
        for (size_t i = 0; i < o->n; i++) {
            double xt = in->x_t[b * o->n + i], x = o->xs[i];
            out[b * o->n + i] = (mm_real)(o->obj == DIT_FLOW ? (xt - x) / t : (xt - a * x) / s);
        }
    }
}

int main(void) {
    test_counts tc = {0, 0};
    enum { B = 4, N = 3 * 16 * 16 };
    mm_real *xs = malloc(sizeof(mm_real) * N), *out = malloc(sizeof(mm_real) * B * N);
    mm_real *out2 = malloc(sizeof(mm_real) * B * N);
    mm_rng r;
    mm_rng_init(&r, 3, 0);
    for (int i = 0; i < N; i++) xs[i] = 2.0f * mm_rng_uniform(&r) - 1.0f;  // edges included
    uint8_t has[B] = {1, 1, 1, 1};
    dit_input cond = {0};
    cond.B = B, cond.has_text = has, cond.has_audio = has;
    const int steps[4] = {1, 10, 250, 1000};
    for (int obj = 0; obj < 2; obj++)
        for (int k = 0; k < 4; k++) {
            delta_oracle o = {obj, N, xs};
            mm_rng_init(&r, 4, (uint64_t)k);
            dit_sample_with(delta_predict, &o, N, obj, &cond, steps[k], 1.0, &r, out);
            double worst = 0;
            for (int i = 0; i < B * N; i++) worst = fmax(worst, fabs(out[i] - xs[i % N]));
            // one DDIM step from k = 999 multiplies the float rounding of eps^ (~6e-8) by
            // sqrt((1 - ab) / ab) ~ 2e4; with more steps the error is re-scaled by the small
            // sqrt(ab_prev) and the last steps, with ab near 1, set the result
            double tol = obj == DIT_DDPM && steps[k] == 1 ? 2e-2 : 2e-5;
            printf("%s, %4d steps: max |x - x*| = %.2e\n", obj ? "DDIM" : "Euler", steps[k], worst);
            TEST_CHECK(&tc, worst < tol, "%s, %d steps: lands %g from x*",
                       obj ? "DDIM" : "Euler", steps[k], worst);
            // guided with the same oracle for both branches: u + g (c - u) = c
            mm_rng_init(&r, 4, (uint64_t)k);
            dit_sample_with(delta_predict, &o, N, obj, &cond, steps[k], 4.5, &r, out2);
            TEST_CHECK(&tc, memcmp(out, out2, sizeof(mm_real) * B * N) == 0,
                       "%s, %d steps: guidance of identical branches changes nothing",
                       obj ? "DDIM" : "Euler", steps[k]);
        }
    free(xs), free(out), free(out2);
    return test_finish(&tc);
}
