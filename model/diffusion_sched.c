// diffusion_sched.c: the parts of the diffusion model that are arithmetic on noise and time,
// not network: the DDPM cosine schedule, the training pairs and times of both objectives, and
// the Euler / DDIM samplers with classifier-free guidance. Kept apart from the DiT
// (diffusion.c) so that they are pure functions of their inputs, testable in float64 against
// closed-form oracles (tests/test64_dit_sched.c) without a network.
//
// Conventions (model/diffusion.h):
//   rectified flow: x_t = (1 - t) x0 + t eps, t in [0, 1], the model predicts v = eps - x0;
//       t = 1 is pure noise, so sampling integrates dx/dt = v from t = 1 down to t = 0.
//   DDPM: x_t = sqrt(ab_k) x0 + sqrt(1 - ab_k) eps, k in [0, 1000), the model predicts eps and
//       sees t = k / 1000, so one time input serves both objectives.
// Coefficients are computed in double whatever mm_real is; the arrays are mm_real.
#include <math.h>
#include <stdlib.h>

#include "diffusion.h"

// ---------------------------------------------------------------------------------------
// Schedule.

// f(u) of the cosine schedule; alpha_bar(k) telescopes to f((k+1)/T) / f(0) except where the
// 0.999 clip binds (the last step, where f reaches 0), so the product is formed explicitly:
// that is the improved-diffusion convention and costs k multiplications, nothing next to a
// network call. No table is cached: the module keeps no mutable state.
static double cosine_f(double u) {
    const double s = 0.008;
    double c = cos((u + s) / (1.0 + s) * M_PI * 0.5);
    return c * c;
}

double dit_alpha_bar(int k) {
    MM_CHECK(k >= 0 && k < DIT_DDPM_STEPS, "dit_alpha_bar: step %d outside [0, %d)", k,
             DIT_DDPM_STEPS);
    const double T = DIT_DDPM_STEPS;
    double ab = 1.0, f_prev = cosine_f(0.0);
    for (int i = 0; i <= k; i++) {
        double f_next = cosine_f((i + 1) / T);
        double beta = 1.0 - f_next / f_prev;
        if (beta > 0.999) beta = 0.999;
        ab *= 1.0 - beta;
        f_prev = f_next;
    }
    return ab;
}

// DDPM step of a time t = k / 1000 (rounded: float cannot hold k / 1000 exactly), clamped
// so that t = 1.0 from a careless caller still names the last step.
static int ddpm_step(mm_real t) {
    long k = lround((double)t * DIT_DDPM_STEPS);
    return k < 0 ? 0 : k >= DIT_DDPM_STEPS ? DIT_DDPM_STEPS - 1 : (int)k;
}

// ---------------------------------------------------------------------------------------
// Training pairs and times. x0, eps, x_t, target are (B, n); t is (B).
void dit_make_pair(dit_objective obj, int B, size_t n, const mm_real *x0, const mm_real *eps,
                   const mm_real *t, mm_real *x_t, mm_real *target) {
    MM_CHECK(obj == DIT_FLOW || obj == DIT_DDPM, "dit_make_pair: unknown objective %d", obj);
    for (int b = 0; b < B; b++) {
        double a, s;  // x_t = a x0 + s eps
        if (obj == DIT_FLOW) {
            a = 1.0 - (double)t[b], s = (double)t[b];
        } else {
            double ab = dit_alpha_bar(ddpm_step(t[b]));
            a = sqrt(ab), s = sqrt(1.0 - ab);
        }
        const mm_real *x0b = x0 + (size_t)b * n, *eb = eps + (size_t)b * n;
        mm_real *xb = x_t + (size_t)b * n, *tb = target + (size_t)b * n;
        for (size_t i = 0; i < n; i++) {
            xb[i] = (mm_real)(a * x0b[i] + s * eb[i]);
            tb[i] = obj == DIT_FLOW ? eb[i] - x0b[i] : eb[i];
        }
    }
}

// Logit-normal(0, 1) (SD3) spends the steps on mid-range t, where the flow target is hardest
// to predict; uniform is the plain rectified-flow choice.
void dit_draw_t(dit_objective obj, int logit_normal, int B, mm_rng *rng, mm_real *t) {
    MM_CHECK(obj == DIT_FLOW || obj == DIT_DDPM, "dit_draw_t: unknown objective %d", obj);
    for (int b = 0; b < B; b++) {
        if (obj == DIT_DDPM)
            t[b] = (mm_real)((double)mm_rng_below(rng, DIT_DDPM_STEPS) / DIT_DDPM_STEPS);
        else if (logit_normal)
            t[b] = (mm_real)(1.0 / (1.0 + exp(-(double)mm_rng_normal(rng))));
        else
            t[b] = (mm_real)mm_rng_uniform(rng);
    }
}

// ---------------------------------------------------------------------------------------
// Samplers.

// One guided prediction at time tv for every sample: pred (B, n) = u + g (c - u), or c alone
// when g == 1 (one predictor call instead of two). un is `in` with no conditioning.
static void guided_predict(dit_predict_fn fn, void *ctx, dit_input *in, dit_input *un,
                           mm_real *t, double tv, double g, mm_real *pred, mm_real *upred,
                           size_t total) {
    for (int b = 0; b < in->B; b++) t[b] = (mm_real)tv;
    fn(ctx, in, pred);
    if (g == 1.0) return;
    fn(ctx, un, upred);
    mm_real gg = (mm_real)g;
    for (size_t i = 0; i < total; i++) pred[i] = upred[i] + gg * (pred[i] - upred[i]);
}

static mm_real clip1(mm_real v) {
    return v < (mm_real)-1 ? (mm_real)-1 : v > (mm_real)1 ? (mm_real)1 : v;
}

// DDIM step i of `steps`: evenly spaced over [999, 0], rounded; strictly decreasing since the
// spacing 999 / (steps - 1) is >= 1 for steps <= 1000.
static int ddim_step(int i, int steps) {
    if (steps == 1) return DIT_DDPM_STEPS - 1;
    long span = DIT_DDPM_STEPS - 1;
    return (int)(((long)(steps - 1 - i) * span + (steps - 1) / 2) / (steps - 1));
}

// out (B, n) doubles as the sampler's state x; scratch buffers are allocated here and freed
// before returning. The noise is drawn b-major from rng, so the result depends only on the rng
// state, the layout and the predictor (and is identical on every tp rank).
void dit_sample_with(dit_predict_fn fn, void *ctx, size_t n, dit_objective obj,
                     const dit_input *cond, int steps, double guidance, mm_rng *rng,
                     mm_real *out) {
    MM_CHECK(obj == DIT_FLOW || obj == DIT_DDPM, "dit_sample: unknown objective %d", obj);
    MM_CHECK(cond && cond->B >= 1 && n >= 1, "dit_sample: needs B >= 1 samples of n >= 1 pixels");
    MM_CHECK(steps >= 1 && (obj == DIT_FLOW || steps <= DIT_DDPM_STEPS),
             "dit_sample: %d steps (flow needs >= 1, DDIM 1..%d)", steps, DIT_DDPM_STEPS);
    MM_CHECK(isfinite(guidance), "dit_sample: guidance must be finite");
    int B = cond->B;
    size_t total = (size_t)B * n;
    mm_real *x = out;
    mm_real *pred = mm_malloc(sizeof(mm_real) * total);                          // (B, n)
    mm_real *upred = guidance != 1.0 ? mm_malloc(sizeof(mm_real) * total) : NULL;  // (B, n)
    mm_real *t = mm_malloc(sizeof(mm_real) * (size_t)B);                         // (B)
    uint8_t *none = mm_calloc((size_t)B, 1);                                     // (B) zeros
    for (size_t i = 0; i < total; i++) x[i] = (mm_real)mm_rng_normal(rng);

    dit_input in = *cond;
    in.x_t = x, in.t = t, in.target = NULL;
    dit_input un = in;  // the unconditional copy: the null token alone (classifier-free)
    un.has_text = none, un.has_audio = none;

    for (int i = 0; i < steps; i++) {
        if (obj == DIT_FLOW) {
            // Euler on dx/dt = v from t to t_next < t
            double t0 = (double)(steps - i) / steps, t1 = (double)(steps - i - 1) / steps;
            guided_predict(fn, ctx, &in, &un, t, t0, guidance, pred, upred, total);
            mm_real dt = (mm_real)(t1 - t0);
            for (size_t j = 0; j < total; j++) x[j] += dt * pred[j];
        } else {
            // DDIM, eta = 0: x0 estimate from eps, clipped to the data range, then re-noised
            // deterministically to the previous step (alpha_bar = 1 after the last)
            int k = ddim_step(i, steps);
            double ab = dit_alpha_bar(k);
            double ab_prev = i + 1 < steps ? dit_alpha_bar(ddim_step(i + 1, steps)) : 1.0;
            guided_predict(fn, ctx, &in, &un, t, (double)k / DIT_DDPM_STEPS, guidance, pred,
                           upred, total);
            double inv_sa = 1.0 / sqrt(ab), s1 = sqrt(1.0 - ab);
            double sp = sqrt(ab_prev), sp1 = sqrt(1.0 - ab_prev);
            for (size_t j = 0; j < total; j++) {
                mm_real x0 = clip1((mm_real)(((double)x[j] - s1 * (double)pred[j]) * inv_sa));
                x[j] = (mm_real)(sp * (double)x0 + sp1 * (double)pred[j]);
            }
        }
    }
    for (size_t j = 0; j < total; j++) x[j] = clip1(x[j]);
    free(pred);
    free(upred);
    free(t);
    free(none);
}

static void predict_dit(void *ctx, const dit_input *in, mm_real *out) {
    dit_predict((dit *)ctx, in, out);
}

void dit_sample(dit *m, dit_objective obj, const dit_input *cond, int steps, double guidance,
                mm_rng *rng, mm_real *out) {
    const dit_config *c = dit_cfg(m);
    size_t n = (size_t)c->img_h * c->img_w * c->img_c;
    dit_sample_with(predict_dit, m, n, obj, cond, steps, guidance, rng, out);
}
