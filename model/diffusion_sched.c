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

#include "backend.h"
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
void dit_pair_coefs(dit_objective obj, int B, const mm_real *t, double *coef) {
    MM_CHECK(obj == DIT_FLOW || obj == DIT_DDPM, "dit_make_pair: unknown objective %d", obj);
    for (int b = 0; b < B; b++) {
        double a, s;  // x_t = a x0 + s eps
        if (obj == DIT_FLOW) {
            a = 1.0 - (double)t[b], s = (double)t[b];
        } else {
            double ab = dit_alpha_bar(ddpm_step(t[b]));
            a = sqrt(ab), s = sqrt(1.0 - ab);
        }
        coef[2 * b] = a;
        coef[2 * b + 1] = s;
    }
}

void dit_make_pair(dit_objective obj, int B, size_t n, const mm_real *x0, const mm_real *eps,
                   const mm_real *t, mm_real *x_t, mm_real *target) {
    double *coef = mm_malloc((size_t)(B > 0 ? B : 1) * 2 * sizeof(double));
    dit_pair_coefs(obj, B, t, coef);
    dit_ops_cpu.make_pair(&mm_backend_cpu, x_t, target, x0, eps, coef, obj == DIT_FLOW, B, n);
    free(coef);
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

// The sampler's state in one place: the ops it runs on, the predictor, and its buffers (ops
// memory, owned, except x = the caller's out).
typedef struct {
    const mm_backend *be;  // not owned
    const model_ops *ops;  // be->ops
    const dit_ops *dops;
    dit_predict_fn fn;
    void *ctx;
    mm_real *x, *pred, *upred;  // (B, n) each; upred NULL without guidance
    mm_real *t;                 // (B) ops memory
    mm_real *t_host;            // (B) host
} sampler;

// One guided prediction at time tv for every sample: pred (B, n) = u + g (c - u), or c alone
// when g == 1 (one predictor call instead of two). un is `in` with no conditioning.
static void guided_predict(const sampler *sp, dit_input *in, dit_input *un, double tv, double g,
                           size_t total) {
    for (int b = 0; b < in->B; b++) sp->t_host[b] = (mm_real)tv;
    sp->ops->mem_upload(sp->be, sp->t, sp->t_host, (size_t)in->B * sizeof(mm_real));
    sp->fn(sp->ctx, in, sp->pred);
    if (g == 1.0) return;
    sp->fn(sp->ctx, un, sp->upred);
    sp->dops->guide(sp->be, sp->pred, sp->upred, (mm_real)g, total);
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
    dit_sample_ops(&mm_backend_cpu, &dit_ops_cpu, fn, ctx, n, obj, cond, steps, guidance, rng, out);
}

void dit_sample_ops(const mm_backend *be, const dit_ops *dops, dit_predict_fn fn, void *ctx,
                    size_t n, dit_objective obj, const dit_input *cond, int steps, double guidance,
                    mm_rng *rng, mm_real *out) {
    MM_CHECK(obj == DIT_FLOW || obj == DIT_DDPM, "dit_sample: unknown objective %d", obj);
    MM_CHECK(cond && cond->B >= 1 && n >= 1, "dit_sample: needs B >= 1 samples of n >= 1 pixels");
    MM_CHECK(steps >= 1 && (obj == DIT_FLOW || steps <= DIT_DDPM_STEPS),
             "dit_sample: %d steps (flow needs >= 1, DDIM 1..%d)", steps, DIT_DDPM_STEPS);
    MM_CHECK(isfinite(guidance), "dit_sample: guidance must be finite");
    int B = cond->B;
    size_t total = (size_t)B * n;
    const model_ops *ops = be->ops;
    sampler sp = {.be = be, .ops = ops, .dops = dops, .fn = fn, .ctx = ctx, .x = out};
    sp.pred = ops->mem_alloc(be, sizeof(mm_real) * total);
    sp.upred = guidance != 1.0 ? ops->mem_alloc(be, sizeof(mm_real) * total) : NULL;
    sp.t = ops->mem_alloc(be, sizeof(mm_real) * (size_t)B);
    sp.t_host = mm_malloc(sizeof(mm_real) * (size_t)B);
    uint8_t *none = ops->mem_alloc(be, (size_t)B);  // (B) zeros
    // the noise is drawn on the host (b-major) whatever the backend, then uploaded
    mm_real *noise = mm_malloc(sizeof(mm_real) * total);
    for (size_t i = 0; i < total; i++) noise[i] = (mm_real)mm_rng_normal(rng);
    ops->mem_upload(be, out, noise, sizeof(mm_real) * total);
    free(noise);
    mm_real *x = out;

    dit_input in = *cond;
    in.x_t = x, in.t = sp.t, in.target = NULL;
    dit_input un = in;  // the unconditional copy: the null token alone (classifier-free)
    un.has_text = none, un.has_audio = none;

    for (int i = 0; i < steps; i++) {
        if (obj == DIT_FLOW) {
            // Euler on dx/dt = v from t to t_next < t
            double t0 = (double)(steps - i) / steps, t1 = (double)(steps - i - 1) / steps;
            guided_predict(&sp, &in, &un, t0, guidance, total);
            dops->euler(be, x, sp.pred, (mm_real)(t1 - t0), total);
        } else {
            // DDIM, eta = 0: x0 estimate from eps, clipped to the data range, then re-noised
            // deterministically to the previous step (alpha_bar = 1 after the last)
            int k = ddim_step(i, steps);
            double ab = dit_alpha_bar(k);
            double ab_prev = i + 1 < steps ? dit_alpha_bar(ddim_step(i + 1, steps)) : 1.0;
            guided_predict(&sp, &in, &un, (double)k / DIT_DDPM_STEPS, guidance, total);
            dops->ddim(be, x, sp.pred, 1.0 / sqrt(ab), sqrt(1.0 - ab), sqrt(ab_prev),
                       sqrt(1.0 - ab_prev), total);
        }
    }
    dops->clip(be, x, total);
    ops->mem_free(be, sp.pred);
    ops->mem_free(be, sp.upred);
    ops->mem_free(be, sp.t);
    free(sp.t_host);
    ops->mem_free(be, none);
}

static void predict_dit(void *ctx, const dit_input *in, mm_real *out) {
    dit_predict((dit *)ctx, in, out);
}

void dit_sample(dit *m, dit_objective obj, const dit_input *cond, int steps, double guidance,
                mm_rng *rng, mm_real *out) {
    const dit_config *c = dit_cfg(m);
    size_t n = (size_t)c->img_h * c->img_w * c->img_c;
    dit_sample_ops(dit_backend(m), dit_dit_ops(m), predict_dit, m, n, obj, cond, steps, guidance,
                   rng, out);
}
