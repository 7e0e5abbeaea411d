// test64_dit_sched.c: checks model/diffusion_sched.c in float64 against things derived here
// independently of it: the loss floors a trained model cannot beat (so a training curve can be
// judged: a diffusion loss is not near 0 when the model is perfect), and the samplers driven by
// exact oracle predictors of known data distributions, which must land on that distribution.
//
// Loss floors, x0 ~ N(0, I) and no useful conditioning (each pixel independent):
//   flow: x_t = (1-t) x0 + t eps, v = eps - x0. Var v = 2, Cov(v, x_t) = 2t - 1,
//     Var x_t = (1-t)^2 + t^2, so the best predictor is linear, v^ = (2t-1) / Var x_t * x_t,
//     and its MSE is 2 - (2t-1)^2 / ((1-t)^2 + t^2); averaged over uniform t that is pi/2.
//   eps: x_t = sqrt(ab) x0 + sqrt(1-ab) eps has unit variance and Cov(eps, x_t) = sqrt(1-ab),
//     so eps^ = sqrt(1-ab) x_t with MSE ab; the mean of ab over the 1000 steps is 0.4956 for
//     the cosine schedule, 0.2755 for the linear 1e-4..0.02 one.
//   a zero predictor scores E v^2 = 2 (flow) and E eps^2 = 1.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../model/diffusion.h"
#include "test.h"

#ifndef MM_F64
#error "test64_dit_sched is built with -DMM_F64 (see the Makefile)"
#endif

// ---------------------------------------------------------------------------------------
// Monte Carlo loss of a predictor over pairs from dit_make_pair. Per-sample means are the
// independent draws (pixels of one sample share t), so the standard error is over samples.
typedef double (*coef_fn)(dit_objective obj, double t);  // prediction = coef(t) * x_t

static double coef_zero(dit_objective obj, double t) {
    (void)obj, (void)t;
    return 0.0;
}

static double coef_opt(dit_objective obj, double t) {
    if (obj == DIT_FLOW) return (2 * t - 1) / ((1 - t) * (1 - t) + t * t);
    return sqrt(1.0 - dit_alpha_bar((int)lround(t * DIT_DDPM_STEPS)));
}

static void mc_loss(dit_objective obj, coef_fn coef, uint64_t seed, double *mean, double *se) {
    enum { B = 4000, NPIX = 16, ROUNDS = 50 };
    mm_real *x0 = malloc(sizeof(mm_real) * B * NPIX), *eps = malloc(sizeof(mm_real) * B * NPIX);
    mm_real *xt = malloc(sizeof(mm_real) * B * NPIX), *tg = malloc(sizeof(mm_real) * B * NPIX);
    mm_real t[B];
    mm_rng r;
    mm_rng_init(&r, seed, 0);
    double s = 0, s2 = 0;
    for (int round = 0; round < ROUNDS; round++) {
        for (int i = 0; i < B * NPIX; i++) x0[i] = mm_rng_normal(&r), eps[i] = mm_rng_normal(&r);
        dit_draw_t(obj, 0, B, &r, t);
        dit_make_pair(obj, B, NPIX, x0, eps, t, xt, tg);
        for (int b = 0; b < B; b++) {
            double c = coef(obj, t[b]), m = 0;
            for (int i = 0; i < NPIX; i++) {
                double d = c * xt[b * NPIX + i] - tg[b * NPIX + i];
                m += d * d;
            }
            m /= NPIX;
            s += m, s2 += m * m;
        }
    }
    double n = (double)B * ROUNDS;
    *mean = s / n;
    *se = sqrt((s2 / n - *mean * *mean) / n);
    free(x0), free(eps), free(xt), free(tg);
}

static void test_floors(test_counts *tc) {
    // the flow floor by quadrature (midpoint rule, smooth integrand)
    enum { Q = 200000 };
    double q = 0;
    for (int i = 0; i < Q; i++) {
        double t = (i + 0.5) / Q, a = 2 * t - 1;
        q += 2 - a * a / ((1 - t) * (1 - t) + t * t);
    }
    q /= Q;
    TEST_CHECK(tc, fabs(q - M_PI / 2) < 1e-6, "flow floor by quadrature %.7f vs pi/2", q);

    double m, se;
    mc_loss(DIT_FLOW, coef_opt, 1, &m, &se);
    printf("flow floor: quadrature %.5f, Monte Carlo %.5f +- %.5f (pi/2 = %.5f)\n", q, m, se,
           M_PI / 2);
    TEST_CHECK(tc, se < 3e-3 && fabs(m - M_PI / 2) < 4 * se, "flow floor MC %.5f +- %.5f", m, se);
    mc_loss(DIT_FLOW, coef_zero, 2, &m, &se);
    TEST_CHECK(tc, fabs(m - 2.0) < 4 * se, "flow zero predictor %.5f +- %.5f vs 2", m, se);

    // cosine: mean alpha_bar over the steps, and by Monte Carlo through dit_make_pair
    double mab = 0;
    for (int k = 0; k < DIT_DDPM_STEPS; k++) mab += dit_alpha_bar(k);
    mab /= DIT_DDPM_STEPS;
    mc_loss(DIT_DDPM, coef_opt, 3, &m, &se);
    printf("eps floor (cosine): mean alpha_bar %.5f, Monte Carlo %.5f +- %.5f\n", mab, m, se);
    TEST_CHECK(tc, fabs(mab - 0.4956) < 5e-5, "cosine mean alpha_bar %.6f vs 0.4956", mab);
    TEST_CHECK(tc, se < 3e-3 && fabs(m - mab) < 4 * se, "eps floor MC %.5f +- %.5f", m, se);
    mc_loss(DIT_DDPM, coef_zero, 4, &m, &se);
    TEST_CHECK(tc, fabs(m - 1.0) < 4 * se, "eps zero predictor %.5f +- %.5f vs 1", m, se);

    // linear 1e-4..0.02 (Ho et al.), for comparison with the literature's numbers
    double lin = 0, ab = 1;
    for (int k = 0; k < DIT_DDPM_STEPS; k++) {
        ab *= 1.0 - (1e-4 + (0.02 - 1e-4) * k / (DIT_DDPM_STEPS - 1));
        lin += ab;
    }
    lin /= DIT_DDPM_STEPS;
    printf("eps floor (linear 1e-4..0.02): %.5f\n", lin);
    TEST_CHECK(tc, fabs(lin - 0.2755) < 5e-5, "linear mean alpha_bar %.6f vs 0.2755", lin);
}

// The schedule against its closed form: the product telescopes to f((k+1)/T) / f(0) wherever
// the 0.999 clip does not bind, which is every step but the last.
static void test_schedule(test_counts *tc) {
    const double s = 0.008;
    double f0 = pow(cos(s / (1 + s) * M_PI / 2), 2);
    double worst = 0;
    int mono = 1;
    for (int k = 0; k < DIT_DDPM_STEPS - 1; k++) {
        double f = pow(cos(((k + 1.0) / DIT_DDPM_STEPS + s) / (1 + s) * M_PI / 2), 2);
        double ab = dit_alpha_bar(k);
        worst = fmax(worst, fabs(ab - f / f0) / (f / f0));
        mono &= dit_alpha_bar(k + 1) < ab;
    }
    TEST_CHECK(tc, worst < 1e-10, "alpha_bar vs f((k+1)/T)/f(0): rel err %g", worst);
    TEST_CHECK(tc, mono, "alpha_bar strictly decreasing");
    double last = dit_alpha_bar(DIT_DDPM_STEPS - 1), prev = dit_alpha_bar(DIT_DDPM_STEPS - 2);
    TEST_CHECK(tc, fabs(last / prev - 0.001) < 1e-12, "last beta clipped to 0.999");
    TEST_CHECK(tc, fabs(dit_alpha_bar(0) - 0.999958715775) < 1e-11, "alpha_bar(0) %.12f",
               dit_alpha_bar(0));

    // the pair formulas on one value each
    mm_real x0 = 0.5, e = -1.25, t = 0.25, xt, tg;
    dit_make_pair(DIT_FLOW, 1, 1, &x0, &e, &t, &xt, &tg);
    TEST_CHECK(tc, fabs(xt - (0.75 * 0.5 - 0.25 * 1.25)) < 1e-15 && tg == -1.75, "flow pair");
    t = 0.123;
    dit_make_pair(DIT_DDPM, 1, 1, &x0, &e, &t, &xt, &tg);
    double ab = dit_alpha_bar(123);
    TEST_CHECK(tc, fabs(xt - (sqrt(ab) * 0.5 - sqrt(1 - ab) * 1.25)) < 1e-15 && tg == e,
               "ddpm pair");
}

static void test_draw_t(test_counts *tc) {
    enum { N = 200000 };
    mm_real *t = malloc(sizeof(mm_real) * N);
    mm_rng r;
    mm_rng_init(&r, 7, 0);
    const char *name[3] = {"uniform", "logit-normal", "ddpm"};
    for (int mode = 0; mode < 3; mode++) {
        dit_objective obj = mode == 2 ? DIT_DDPM : DIT_FLOW;
        dit_draw_t(obj, mode == 1, N, &r, t);
        double s = 0, s2 = 0;
        int in_range = 1, integral = 1, mid = 0;
        for (int i = 0; i < N; i++) {
            s += t[i], s2 += t[i] * t[i];
            in_range &= t[i] >= 0 && t[i] < 1 && (mode != 1 || t[i] > 0);
            double k = t[i] * DIT_DDPM_STEPS;
            integral &= fabs(k - round(k)) < 1e-9;
            // sigmoid(+-1) = 0.7311, 0.2689: a standard normal falls in [-1, 1] 68.27% of the time
            mid += t[i] > 0.26894142 && t[i] < 0.73105858;
        }
        double mean = s / N, var = s2 / N - mean * mean, fmid = (double)mid / N;
        TEST_CHECK(tc, in_range, "%s: t in range", name[mode]);
        TEST_CHECK(tc, fabs(mean - (mode == 2 ? 0.4995 : 0.5)) < 0.003, "%s: mean %.4f", name[mode],
                   mean);
        if (mode == 0)
            TEST_CHECK(tc, fabs(var - 1.0 / 12) < 0.002 && fabs(fmid - 0.4621) < 0.005,
                       "uniform: var %.4f, share in the middle %.4f", var, fmid);
        if (mode == 1)
            TEST_CHECK(tc, fabs(fmid - 0.6827) < 0.005, "logit-normal: share %.4f vs 0.6827", fmid);
        if (mode == 2) TEST_CHECK(tc, integral, "ddpm: t = k / 1000");
    }
    free(t);
}

// ---------------------------------------------------------------------------------------
// Oracle predictors. Data: every pixel i independently N(mu_i, s^2) (s = 0: all images equal
// x* = mu). Flow: E[eps - x0 | x_t] = -mu + (t - (1-t) s^2) / ((1-t)^2 s^2 + t^2) (x_t - (1-t) mu).
// DDPM: E[eps | x_t] = sqrt(1-ab) / (ab s^2 + 1 - ab) (x_t - sqrt(ab) mu).
typedef struct {
    dit_objective obj;
    size_t n;
    const mm_real *mu;  // (n)
    double s;
    int calls;
} oracle;

static void oracle_predict(void *ctx, const dit_input *in, mm_real *out) {
    oracle *o = ctx;
    o->calls++;
    for (int b = 0; b < in->B; b++) {
        double t = in->t[b], s2 = o->s * o->s, a, sig, c;
        if (o->obj == DIT_FLOW) {
            a = 1 - t, sig = t;
        } else {
            double ab = dit_alpha_bar((int)lround(t * DIT_DDPM_STEPS));
            a = sqrt(ab), sig = sqrt(1 - ab);
        }
        double var = a * a * s2 + sig * sig;
        // flow: Cov(eps - x0, x_t) = sig - a s2; eps: Cov(eps, x_t) = sig
        c = o->obj == DIT_FLOW ? (sig - a * s2) / var : sig / var;
        for (size_t i = 0; i < o->n; i++) {
            double xt = in->x_t[b * o->n + i], mu = o->mu[i];
            out[b * o->n + i] = (mm_real)((o->obj == DIT_FLOW ? -mu : 0) + c * (xt - a * mu));
        }
    }
}

static void test_oracles(test_counts *tc) {
    enum { B = 8, N = 4096 };
    mm_real *mu = malloc(sizeof(mm_real) * N), *out = malloc(sizeof(mm_real) * B * N);
    mm_real *z = malloc(sizeof(mm_real) * B * N);
    mm_rng r;
    mm_rng_init(&r, 11, 0);
    for (int i = 0; i < N; i++) mu[i] = 0.8 * mm_rng_uniform(&r) - 0.4;  // mu + s z stays inside [-1, 1]
    uint8_t has[B];
    memset(has, 1, sizeof(has));
    dit_input cond = {0};
    cond.B = B, cond.has_text = has, cond.has_audio = has;
    for (int obj = 0; obj < 2; obj++) {
        const char *on = obj ? "DDIM" : "Euler";
        // all images equal: exact in any number of steps (Euler's error factor t_next / t
        // vanishes at t = 0; DDIM's x0 estimate is exact and alpha_bar_prev = 1 at the end)
        int steps_list[3] = {1, 7, 50};
        for (int si = 0; si < 3; si++) {
            oracle o = {obj, N, mu, 0.0, 0};
            mm_rng_init(&r, 12, (uint64_t)si);
            dit_sample_with(oracle_predict, &o, N, obj, &cond, steps_list[si], 1.0, &r, out);
            double worst = 0;
            for (int i = 0; i < B * N; i++) worst = fmax(worst, fabs(out[i] - mu[i % N]));
            TEST_CHECK(tc, worst < 1e-9 && o.calls == steps_list[si],
                       "%s, %d steps, all images x*: max error %g, %d calls", on,
                       steps_list[si], worst, o.calls);
        }
        // a Gaussian: the deterministic sampler's ODE is linear per pixel, and the monotone map
        // from N(0,1) to N(mu, s^2) is z -> mu + s z, so each output must be mu + s z for its
        // own noise z (recovered from a copy of the rng), up to a discretization error that
        // falls like 1/steps (both samplers are first order)
        double s = 0.15, err[2];
        int steps[2] = {obj ? 100 : 200, obj ? 500 : 1000};
        for (int si = 0; si < 2; si++) {
            oracle o = {obj, N, mu, s, 0};
            mm_rng_init(&r, 13, 0);
            mm_rng rz = r;
            for (int i = 0; i < B * N; i++) z[i] = mm_rng_normal(&rz);
            dit_sample_with(oracle_predict, &o, N, obj, &cond, steps[si], 1.0, &r, out);
            double worst = 0, v = 0;
            for (int i = 0; i < B * N; i++) {
                worst = fmax(worst, fabs(out[i] - (mu[i % N] + s * z[i])));
                double d = (out[i] - mu[i % N]) / s - z[i];  // the map's own error, no noise
                v += d * d;
            }
            err[si] = worst;
            v = sqrt(v / (B * N));
            printf("%s on N(mu, %.2f^2), %4d steps: max |x - (mu + s z)| = %.2e, rms %.2e\n", on,
                   s, steps[si], worst, s * v);
        }
        TEST_CHECK(tc, err[1] < (obj ? 8e-3 : 3e-3) && err[0] / err[1] > 3.5 && err[0] / err[1] < 6.5,
                   "%s Gaussian: max error %g at %d steps, %g at %d (first order)", on, err[0],
                   steps[0], err[1], steps[1]);
    }
    free(mu), free(out), free(z);
}

// ---------------------------------------------------------------------------------------
// Guidance: a predictor that returns one affine function of x_t when conditioned and another
// when not, and records every call, so the combination and the call pattern can be checked.
enum { GB = 3, GN = 5, MAX_CALLS = 64 };
typedef struct {
    int calls;
    int uncond[MAX_CALLS];
    double t[MAX_CALLS];
    const int32_t *tokens;
    int bad_input;
} recorder;

static void rec_predict(void *ctx, const dit_input *in, mm_real *out) {
    recorder *rc = ctx;
    int un = !in->has_text[0];
    for (int b = 0; b < in->B; b++) {
        if (in->has_text[b] != !un || in->has_audio[b] != !un || in->t[b] != in->t[0])
            rc->bad_input++;
    }
    if (in->target || in->tokens != rc->tokens || in->B != GB) rc->bad_input++;
    if (rc->calls < MAX_CALLS) rc->uncond[rc->calls] = un, rc->t[rc->calls] = in->t[0];
    rc->calls++;
    for (int i = 0; i < GB * GN; i++)
        out[i] = un ? 0.5 * in->x_t[i] - 0.2 : 0.5 * in->x_t[i] + 0.1 + 0.01 * i;
}

static void test_guidance(test_counts *tc) {
    int32_t tokens[GB] = {1, 2, 3};
    uint8_t has[GB] = {1, 1, 1};
    dit_input cond = {0};
    cond.B = GB, cond.tokens = tokens, cond.has_text = has, cond.has_audio = has;
    mm_real out[GB * GN], out2[GB * GN], z[GB * GN];
    double gs[3] = {1.0, 3.0, 0.0};
    for (int gi = 0; gi < 3; gi++) {
        double g = gs[gi];
        // one Euler step from t = 1: out = clip(z - (u + g (c - u)))
        recorder rc = {0};
        rc.tokens = tokens;
        mm_rng r;
        mm_rng_init(&r, 21, 0);
        mm_rng rz = r;
        for (int i = 0; i < GB * GN; i++) z[i] = mm_rng_normal(&rz);
        dit_sample_with(rec_predict, &rc, GN, DIT_FLOW, &cond, 1, g, &r, out);
        double worst = 0;
        for (int i = 0; i < GB * GN; i++) {
            double u = 0.5 * z[i] - 0.2, c = 0.5 * z[i] + 0.1 + 0.01 * i;
            double want = z[i] - (g == 1.0 ? c : u + g * (c - u));
            want = want < -1 ? -1 : want > 1 ? 1 : want;
            worst = fmax(worst, fabs(out[i] - want));
        }
        TEST_CHECK(tc, worst < 1e-14, "guidance %g: combination off by %g", g, worst);
        TEST_CHECK(tc, rc.calls == (g == 1.0 ? 1 : 2) && rc.bad_input == 0,
                   "guidance %g: %d calls, %d bad inputs", g, rc.calls, rc.bad_input);

        // the call pattern over several steps: cond then uncond at each time, times in order
        for (int obj = 0; obj < 2; obj++) {
            int steps = 4;
            recorder rs = {0};
            rs.tokens = tokens;
            mm_rng_init(&r, 22, 0);
            dit_sample_with(rec_predict, &rs, GN, obj, &cond, steps, g, &r, out);
            int per = g == 1.0 ? 1 : 2, ok = rs.calls == steps * per && rs.bad_input == 0;
            for (int c = 0; ok && c < rs.calls; c++) {
                int i = c / per;
                // flow: t = 1, 3/4, 1/2, 1/4; DDIM: k = 999, 666, 333, 0
                double want = obj == DIT_FLOW ? 1.0 - (double)i / steps
                                              : (double)((3 - i) * 333) / DIT_DDPM_STEPS;
                ok &= rs.uncond[c] == (per == 2 && c % 2 == 1) && fabs(rs.t[c] - want) < 1e-12;
            }
            TEST_CHECK(tc, ok, "%s guidance %g: call pattern (%d calls)", obj ? "DDIM" : "Euler",
                       g, rs.calls);
            int inside = 1;
            for (int i = 0; i < GB * GN; i++) inside &= out[i] >= -1 && out[i] <= 1;
            TEST_CHECK(tc, inside, "output clipped to [-1, 1]");
        }
    }

    // determinism: the rng state alone decides; a different state gives different images
    for (int obj = 0; obj < 2; obj++) {
        recorder rs = {0};
        rs.tokens = tokens;
        mm_rng r1, r2, r3;
        mm_rng_init(&r1, 5, 1);
        mm_rng_init(&r2, 5, 1);
        mm_rng_init(&r3, 5, 2);
        mm_real out3[GB * GN];
        dit_sample_with(rec_predict, &rs, GN, obj, &cond, 3, 2.0, &r1, out);
        dit_sample_with(rec_predict, &rs, GN, obj, &cond, 3, 2.0, &r2, out2);
        dit_sample_with(rec_predict, &rs, GN, obj, &cond, 3, 2.0, &r3, out3);
        TEST_CHECK(tc, memcmp(out, out2, sizeof(out)) == 0 && memcmp(&r1, &r2, sizeof(r1)) == 0,
                   "same rng state, same images");
        TEST_CHECK(tc, memcmp(out, out3, sizeof(out)) != 0, "another rng state, other images");
    }
}

int main(void) {
    test_counts tc = {0, 0};
    test_schedule(&tc);
    test_draw_t(&tc);
    test_floors(&tc);
    test_oracles(&tc);
    test_guidance(&tc);
    return test_finish(&tc);
}
