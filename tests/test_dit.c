// test_dit.c: the diffusion model (model/diffusion.c, model/ops_dit_cpu.c) in the shipped
// float build. Runs as one plain process (tests/run.sh) and under mpirun with world = tp in
// {1, 2, 4} (tests/mpi_ranks.sh). Local checks (world rank 0 only, no collectives):
//   - the dit_ops against naive float64 loops (normwise 1e-5);
//   - forward/backward bitwise deterministic; bad configs refused by dit_create with a message;
//   - adaLN-Zero at init: the output is exactly 0 and only final.proj.* get a gradient (every
//     other gradient exactly 0);
//   - the parameter table: names, groups, decay, split dims, and tp = 2 / 4 layout-only slices
//     that concatenate to the tp = 1 tensors (initial values independent of tp);
//   - absent conditioning is ignored: changing the caption of a sample with has_text = 0 (or
//     the audio of one with has_audio = 0) leaves its output bit-identical, while changing a
//     present caption / audio does change it; a sample's output does not depend on its batch;
//   - dit_flops_per_sample against a count derived from the tensor table.
// Tensor parallel (every rank; each also builds the tp = 1 model locally from the same seed
// and batch): same initial slices, loss within 1e-5 relative, gradient slices within 1e-4
// normwise per tensor of the tp = 1 gradients (the tolerance of tests/test_tp.c, same reasons),
// replicated gradients and the predicted images bitwise identical on every tp rank, the grad
// hook's lo decreasing to 0 with every gradient >= lo final when reported. The counts of all
// ranks are summed into the one closing "N passed, N failed" line printed by rank 0.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../model/backend.h"
#include "../model/diffusion.h"
#include "test.h"
#include "tp_check.h"

static const double OP_TOL = 1e-5;
static const double LOSS_TOL = 1e-5;
static const double GRAD_TOL = 1e-4;
static const mm_backend *const be = &mm_backend_cpu;
static const dit_ops *const dops = &dit_ops_cpu;

enum { SB = 4 };

static void fill_normal(mm_real *x, size_t n, double std, mm_rng *r) {
    for (size_t i = 0; i < n; i++) x[i] = (mm_real)(std * mm_rng_normal(r));
}

static mm_real *alloc_normal(size_t n, double std, mm_rng *r) {
    mm_real *x = malloc(n * sizeof(mm_real));
    fill_normal(x, n, std, r);
    return x;
}

// max|x - ref| / max|ref| (absolute when ref is all zero).
static double nerr(const mm_real *x, const double *ref, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d = fmax(d, fabs((double)x[i] - ref[i]));
        s = fmax(s, fabs(ref[i]));
    }
    return s > 0 ? d / s : d;
}

static void op_report(test_counts *tc, const char *what, double e) {
    printf("  %-34s %.2e %s\n", what, e, e <= OP_TOL ? "" : "FAIL");
    TEST_CHECK(tc, e <= OP_TOL, "%s: error %.3e vs the float64 reference", what, e);
}

// ---------------------------------------------------------------------------------------
// ops against naive float64 loops

static void test_ops(test_counts *tc, mm_rng *r) {
    printf("dit ops vs float64 loops (normwise, tolerance %.0e)\n", OP_TOL);
    // silu
    {
        size_t n = 1000;
        mm_real *x = alloc_normal(n, 4, r), *dout = alloc_normal(n, 1, r);
        mm_real *out = malloc(n * sizeof(mm_real)), *dx = alloc_normal(n, 1, r);
        double *ro = malloc(n * sizeof(double)), *rd = malloc(n * sizeof(double));
        for (size_t i = 0; i < n; i++) {
            double s = 1 / (1 + exp(-(double)x[i]));
            ro[i] = x[i] * s;
            rd[i] = dx[i] + dout[i] * s * (1 + x[i] * (1 - s));
        }
        dops->silu_fwd(be, out, x, n);
        dops->silu_bwd(be, dx, x, dout, n);
        op_report(tc, "silu fwd", nerr(out, ro, n));
        op_report(tc, "silu bwd (accumulating)", nerr(dx, rd, n));
        free(x), free(dout), free(out), free(dx), free(ro), free(rd);
    }
    // modulate, gated_add: C = 130 spans more than one column block, stride sc = 6C
    {
        const int B = 3, N = 37, C = 130, sc = 6 * C;
        size_t n = (size_t)B * N * C, nm = (size_t)B * sc;
        mm_real *x = alloc_normal(n, 1, r), *y = alloc_normal(n, 1, r),
                *dout = alloc_normal(n, 1, r);
        mm_real *mods = alloc_normal(nm, 1, r), *out = malloc(n * sizeof(mm_real));
        mm_real *dx = alloc_normal(n, 1, r), *dmods = alloc_normal(nm, 1, r);
        double *ro = malloc(n * sizeof(double)), *rdx = malloc(n * sizeof(double));
        double *rdm = malloc(nm * sizeof(double));
        const mm_real *sh = mods + 3 * C, *sl = mods + 4 * C, *gt = mods + 5 * C;
        for (size_t i = 0; i < nm; i++) rdm[i] = dmods[i];
        for (int b = 0; b < B; b++)
            for (int i = 0; i < N; i++)
                for (int c = 0; c < C; c++) {
                    size_t k = ((size_t)b * N + i) * C + c, m = (size_t)b * sc + c;
                    ro[k] = (double)x[k] * (1 + (double)sl[m]) + sh[m];
                    rdx[k] = dx[k] + (double)dout[k] * (1 + (double)sl[m]);
                    rdm[m + 3 * C] += dout[k];
                    rdm[m + 4 * C] += (double)dout[k] * x[k];
                }
        dops->modulate_fwd(be, out, x, sh, sl, sc, B, N, C);
        dops->modulate_bwd(be, dx, dmods + 3 * C, dmods + 4 * C, dout, x, sl, sc, B, N, C);
        op_report(tc, "modulate fwd", nerr(out, ro, n));
        op_report(tc, "modulate bwd dx", nerr(dx, rdx, n));
        op_report(tc, "modulate bwd dshift, dscale", nerr(dmods, rdm, nm));
        // gated add: x += gate * y; dy += dx * gate; dgate += sum dx * y
        for (size_t i = 0; i < nm; i++) rdm[i] = dmods[i];
        mm_real *dy = alloc_normal(n, 1, r);
        for (int b = 0; b < B; b++)
            for (int i = 0; i < N; i++)
                for (int c = 0; c < C; c++) {
                    size_t k = ((size_t)b * N + i) * C + c, m = (size_t)b * sc + c;
                    ro[k] = (double)x[k] + (double)gt[m] * y[k];
                    rdx[k] = dy[k] + (double)dout[k] * gt[m];
                    rdm[m + 5 * C] += (double)dout[k] * y[k];
                }
        dops->gated_add_fwd(be, out, x, y, gt, sc, B, N, C);
        dops->gated_add_bwd(be, dy, dmods + 5 * C, dout, y, gt, sc, B, N, C);
        op_report(tc, "gated_add fwd", nerr(out, ro, n));
        op_report(tc, "gated_add bwd dy", nerr(dy, rdx, n));
        op_report(tc, "gated_add bwd dgate", nerr(dmods, rdm, nm));
        memcpy(out, x, n * sizeof(mm_real));  // in place, as the op allows
        dops->gated_add_fwd(be, out, out, y, gt, sc, B, N, C);
        op_report(tc, "gated_add fwd in place", nerr(out, ro, n));
        free(x), free(y), free(dout), free(mods), free(out), free(dx), free(dmods), free(dy);
        free(ro), free(rdx), free(rdm);
    }
    // ln_modulate: LayerNorm of a (or of a + b, or a + gate * b, written to res) with gain and
    // bias, then the modulation (none in the gated case, as the block runs it), against float64
    {
        const int B = 2, N = 19, C = 70, sc = 6 * C;
        size_t n = (size_t)B * N * C, nm = (size_t)B * sc;
        mm_real *a = alloc_normal(n, 1, r), *b2 = alloc_normal(n, 1, r);
        mm_real *mods = alloc_normal(nm, 1, r), *g = alloc_normal(C, 1, r), *beta = alloc_normal(C, 1, r);
        mm_real *res = malloc(n * sizeof(mm_real)), *h = malloc(n * sizeof(mm_real));
        mm_real *out = malloc(n * sizeof(mm_real)), *mean = malloc(B * N * sizeof(mm_real));
        mm_real *rstd = malloc(B * N * sizeof(mm_real));
        double *rres = malloc(n * sizeof(double)), *rh = malloc(n * sizeof(double));
        double *ro = malloc(n * sizeof(double)), *rm = malloc(B * N * sizeof(double));
        double *rr = malloc(B * N * sizeof(double));
        const mm_real *sh = mods + 3 * C, *sl = mods + 4 * C, *gt = mods + 2 * C;
        static const char *const what[3][2] = {{"ln_modulate h", "ln_modulate out"},
                                                {"ln_modulate (a + b) h", "ln_modulate (a + b) out"},
                                                {"ln_modulate (a + gate b) h", ""}};
        for (int with = 0; with < 3; with++) {  // no add, add, gated add (no modulation)
            for (int row = 0; row < B * N; row++) {
                const size_t o = (size_t)row * C, m = (size_t)(row / N) * sc;
                double s = 0, v = 0;
                for (int c = 0; c < C; c++) {
                    const double gb = with == 2 ? (double)gt[m + c] * b2[o + c] : b2[o + c];
                    rres[o + c] = (double)a[o + c] + (with ? gb : 0);
                    s += rres[o + c];
                }
                rm[row] = s / C;
                for (int c = 0; c < C; c++) v += (rres[o + c] - rm[row]) * (rres[o + c] - rm[row]);
                rr[row] = 1 / sqrt(v / C + 1e-5);
                for (int c = 0; c < C; c++) {
                    rh[o + c] = (rres[o + c] - rm[row]) * rr[row] * g[c] + beta[c];
                    ro[o + c] = rh[o + c] * (1 + (double)sl[m + c]) + sh[m + c];
                }
            }
            dops->ln_modulate_fwd(be, with ? res : NULL, h, with < 2 ? out : NULL, mean, rstd, a,
                                  with ? b2 : NULL, with == 2 ? gt : NULL, g, beta,
                                  with < 2 ? sh : NULL, with < 2 ? sl : NULL, sc, B, N, C);
            op_report(tc, what[with][0], nerr(h, rh, n));
            if (with < 2) op_report(tc, what[with][1], nerr(out, ro, n));
            op_report(tc, "ln_modulate mean", nerr(mean, rm, (size_t)B * N));
            op_report(tc, "ln_modulate rstd", nerr(rstd, rr, (size_t)B * N));
            if (with) op_report(tc, "ln_modulate res", nerr(res, rres, n));
        }
        // its backward through the modulation and the LayerNorm of a (no add): dx and dmods
        // accumulate; dh is scratch (NaN going in)
        mm_real *dout = alloc_normal(n, 1, r), *dx = alloc_normal(n, 1, r);
        mm_real *dmods = alloc_normal(nm, 1, r), *dh = malloc(n * sizeof(mm_real));
        double *rdx = malloc(n * sizeof(double)), *rdm = malloc(nm * sizeof(double));
        for (size_t i = 0; i < n; i++) dh[i] = NAN;
        for (size_t i = 0; i < nm; i++) rdm[i] = dmods[i];
        dops->ln_modulate_fwd(be, NULL, h, out, mean, rstd, a, NULL, NULL, g, beta, sh, sl, sc, B, N,
                              C);
        for (int row = 0; row < B * N; row++) {
            const size_t o = (size_t)row * C, m = (size_t)(row / N) * sc;
            double s1 = 0, s2 = 0, mu = 0, v = 0;
            for (int c = 0; c < C; c++) mu += a[o + c];
            mu /= C;
            for (int c = 0; c < C; c++) v += (a[o + c] - mu) * (a[o + c] - mu);
            const double rs = 1 / sqrt(v / C + 1e-5);
            for (int c = 0; c < C; c++) {
                const double xh = (a[o + c] - mu) * rs, hv = xh * g[c] + beta[c];
                const double dn = (double)dout[o + c] * (1 + (double)sl[m + c]) * g[c];
                rdm[m + 3 * C + c] += dout[o + c];
                rdm[m + 4 * C + c] += dout[o + c] * hv;
                s1 += dn;
                s2 += dn * xh;
            }
            for (int c = 0; c < C; c++) {
                const double xh = (a[o + c] - mu) * rs;
                const double dn = (double)dout[o + c] * (1 + (double)sl[m + c]) * g[c];
                rdx[o + c] = dx[o + c] + (dn - s1 / C - xh * s2 / C) * rs;
            }
        }
        dops->modulate_ln_bwd(be, dx, dmods + 3 * C, dmods + 4 * C, dh, dout, h, sl, sc, a, g, mean,
                              rstd, B, N, C);
        op_report(tc, "modulate_ln_bwd dx (accumulating)", nerr(dx, rdx, n));
        op_report(tc, "modulate_ln_bwd dshift, dscale", nerr(dmods, rdm, nm));
        free(dout), free(dx), free(dmods), free(dh), free(rdx), free(rdm);
        free(a), free(b2), free(mods), free(g), free(beta), free(res), free(h), free(out);
        free(mean), free(rstd), free(rres), free(rh), free(ro), free(rm), free(rr);
    }
    // cross-attention; sample 1 has one valid key, sample 2 none (zero rows)
    {
        const int B = 3, Tq = 9, Tk = 7, NH = 4, HD = 8, C = NH * HD;
        uint8_t valid[3 * 7];
        for (int j = 0; j < Tk; j++) {
            valid[j] = j != 2;
            valid[Tk + j] = j == 4;
            valid[2 * Tk + j] = 0;
        }
        size_t nq = (size_t)B * Tq * C, nkv = (size_t)B * Tk * 2 * C;
        mm_real *q = alloc_normal(nq, 1, r), *kv = alloc_normal(nkv, 1, r);
        mm_real *dout = alloc_normal(nq, 1, r), *out = malloc(nq * sizeof(mm_real));
        mm_real *att = malloc((size_t)B * NH * Tq * Tk * sizeof(mm_real));
        mm_real *dq = alloc_normal(nq, 1, r), *dkv = alloc_normal(nkv, 1, r);
        double *ro = calloc(nq, sizeof(double)), *rdq = malloc(nq * sizeof(double));
        double *rdkv = malloc(nkv * sizeof(double));
        for (size_t i = 0; i < nq; i++) rdq[i] = dq[i];
        for (size_t i = 0; i < nkv; i++) rdkv[i] = dkv[i];
        double P[9][7], dP[9][7], scale = 1 / sqrt((double)HD);
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++) {
#define Q(i, d) ((double)q[((size_t)b * Tq + (i)) * C + h * HD + (d)])
#define K(j, d) ((double)kv[((size_t)b * Tk + (j)) * 2 * C + h * HD + (d)])
#define V(j, d) ((double)kv[((size_t)b * Tk + (j)) * 2 * C + C + h * HD + (d)])
#define DO(i, d) ((double)dout[((size_t)b * Tq + (i)) * C + h * HD + (d)])
                for (int i = 0; i < Tq; i++) {
                    double mx = -INFINITY, s = 0;
                    for (int j = 0; j < Tk; j++) {
                        P[i][j] = 0;
                        for (int d = 0; d < HD; d++) P[i][j] += scale * Q(i, d) * K(j, d);
                        if (valid[b * Tk + j]) mx = fmax(mx, P[i][j]);
                    }
                    for (int j = 0; j < Tk; j++) {
                        P[i][j] = valid[b * Tk + j] ? exp(P[i][j] - mx) : 0;
                        s += P[i][j];
                    }
                    for (int j = 0; j < Tk; j++) P[i][j] = s > 0 ? P[i][j] / s : 0;
                    double dot = 0;
                    for (int j = 0; j < Tk; j++) {
                        dP[i][j] = 0;
                        for (int d = 0; d < HD; d++) dP[i][j] += DO(i, d) * V(j, d);
                        dot += P[i][j] * dP[i][j];
                    }
                    for (int d = 0; d < HD; d++)
                        for (int j = 0; j < Tk; j++)
                            ro[((size_t)b * Tq + i) * C + h * HD + d] += P[i][j] * V(j, d);
                    for (int j = 0; j < Tk; j++) dP[i][j] = P[i][j] * (dP[i][j] - dot);  // dS
                }
                for (int i = 0; i < Tq; i++)
                    for (int j = 0; j < Tk; j++)
                        for (int d = 0; d < HD; d++) {
                            size_t kq = ((size_t)b * Tq + i) * C + h * HD + d;
                            size_t kk = ((size_t)b * Tk + j) * 2 * C + h * HD + d;
                            rdq[kq] += scale * dP[i][j] * K(j, d);
                            rdkv[kk] += scale * dP[i][j] * Q(i, d);
                            rdkv[kk + C] += P[i][j] * DO(i, d);
                        }
#undef Q
#undef K
#undef V
#undef DO
            }
        dops->xattn_fwd(be, out, att, q, kv, valid, B, Tq, Tk, NH, HD);
        dops->xattn_bwd(be, dq, dkv, dout, q, kv, out, att, B, Tq, Tk, NH, HD);
        op_report(tc, "xattn fwd (masked)", nerr(out, ro, nq));
        op_report(tc, "xattn bwd dq", nerr(dq, rdq, nq));
        op_report(tc, "xattn bwd dkv", nerr(dkv, rdkv, nkv));
        int zero_rows = 1;  // sample 2 has no key: zero output
        for (size_t i = (size_t)2 * Tq * C; i < nq; i++) zero_rows &= out[i] == 0;
        TEST_CHECK(tc, zero_rows, "xattn: a sample without valid keys must output zeros");
        free(q), free(kv), free(dout), free(out), free(att), free(dq), free(dkv);
        free(ro), free(rdq), free(rdkv);
    }
    // mse
    {
        const int B = 3;
        const size_t n = 777;
        mm_real *p = alloc_normal(B * n, 1, r), *t = alloc_normal(B * n, 1, r);
        mm_real loss[3], dl[3] = {0.5f, -1.0f, 2.0f}, *d = malloc(B * n * sizeof(mm_real));
        double rl[3], *rd = malloc(B * n * sizeof(double));
        for (int b = 0; b < B; b++) {
            rl[b] = 0;
            for (size_t i = 0; i < n; i++) {
                double e = (double)p[b * n + i] - t[b * n + i];
                rl[b] += e * e / n;
                rd[b * n + i] = 2 * e / n * dl[b];
            }
        }
        dops->mse_fwd(be, loss, p, t, B, n);
        dops->mse_bwd(be, d, p, t, dl, B, n);
        op_report(tc, "mse fwd", nerr(loss, rl, B));
        op_report(tc, "mse bwd", nerr(d, rd, B * n));
        free(p), free(t), free(d), free(rd);
    }
}

// ---------------------------------------------------------------------------------------
// model helpers

static void small_config(dit_config *c) {
    memset(c, 0, sizeof(*c));
    c->d_model = 32;
    c->n_layers = 2;
    c->n_heads = 4;
    c->d_ff = 64;
    c->img_h = 8;
    c->img_w = 12;
    c->img_c = 3;
    c->patch = 4;
    c->vocab = DATA_VOCAB;
    c->text_T = 7;
    c->audio_F = 7;  // groups of 2: 3 audio tokens, one frame dropped
    c->n_mels = 5;
    c->audio_group = 2;
    c->enc_layers = 1;
    c->tp = 1;
}

typedef struct {
    mm_real *x_t, *t, *audio, *target;
    int32_t *tok;
    uint8_t ht[SB], ha[SB];
    dit_input in;
    size_t pix;  // per sample
} batch;

// Sample 0 full, 1 without caption, 2 without audio, 3 without both. The same r state on
// every rank gives the same batch everywhere, as the loader promises tp ranks.
static void make_batch(batch *b, const dit_config *c, mm_rng *r) {
    b->pix = (size_t)c->img_h * c->img_w * c->img_c;
    b->x_t = alloc_normal(SB * b->pix, 1, r);
    b->target = alloc_normal(SB * b->pix, 1, r);
    b->audio = alloc_normal((size_t)SB * c->audio_F * c->n_mels, 1, r);
    b->t = malloc(SB * sizeof(mm_real));
    b->tok = malloc((size_t)SB * c->text_T * sizeof(int32_t));
    for (int s = 0; s < SB; s++) {
        b->t[s] = mm_rng_uniform(r);
        b->ht[s] = s == 0 || s == 2;
        b->ha[s] = s <= 1;
        for (int t = 0; t < c->text_T; t++)
            b->tok[s * c->text_T + t] = t == 0                  ? DATA_TOK_BOS
                                        : t < c->text_T - 1 - s ? 'a' + (int)mm_rng_below(r, 26)
                                                                : DATA_TOK_PAD;
    }
    b->in = (dit_input){SB, b->x_t, b->t, b->tok, b->ht, b->audio, b->ha, b->target};
}

static void free_batch(batch *b) {
    free(b->x_t), free(b->t), free(b->audio), free(b->target), free(b->tok);
}

static dit *create_or_die(const dit_config *c, int max_B, uint64_t seed) {
    mm_err err = {{0}};
    dit *m = NULL;
    if (dit_create(&m, c, &mm_backend_cpu, max_B, seed, &err)) {
        fprintf(stderr, "dit_create: %s\n", err.msg);
        exit(1);
    }
    return m;
}

static int find_tensor(const dit *m, const char *name) {
    for (int k = 0; k < dit_n_tensors(m); k++)
        if (strcmp(dit_tensors(m)[k].name, name) == 0) return k;
    return -1;
}

// ---------------------------------------------------------------------------------------
// local model checks

static void test_init_and_determinism(test_counts *tc, mm_rng *r) {
    dit_config c;
    small_config(&c);
    dit *m = create_or_die(&c, SB, 5);
    batch b;
    make_batch(&b, &c, r);
    const size_t np = dit_n_params(m), npix = SB * b.pix;

    // adaLN-Zero: the output is exactly 0, so the loss is sum_b mean(target^2)
    mm_real *out = malloc(npix * sizeof(mm_real));
    dit_predict(m, &b.in, out);
    int nz = 0;
    for (size_t i = 0; i < npix; i++) nz += out[i] != 0;
    TEST_CHECK(tc, nz == 0, "at init %d output values are non-zero (final.proj is zero-init)", nz);
    double loss = dit_forward(m, &b.in), want = 0;
    for (int s = 0; s < SB; s++) {
        double e = 0;
        for (size_t i = 0; i < b.pix; i++)
            e += (double)b.target[s * b.pix + i] * b.target[s * b.pix + i];
        want += e / b.pix;
    }
    TEST_CHECK(tc, fabs(loss - want) <= 1e-6 * want,
               "init loss %.9g, want sum of mean(target^2) %.9g", loss, want);
    dit_zero_grad(m);
    dit_backward(m, &b.in, 1);
    int bad = 0, final_nz = 0;
    for (int k = 0; k < dit_n_tensors(m); k++) {
        const model_tensor *t = &dit_tensors(m)[k];
        int is_fp = strncmp(t->name, "final.proj.", 11) == 0, n = 0;
        for (size_t i = 0; i < t->size; i++) n += dit_grads(m)[t->offset + i] != 0;
        if (is_fp) final_nz += n > 0;
        if (!is_fp && n) {
            bad++;
            fprintf(stderr, "  at init %s has %d non-zero gradient entries\n", t->name, n);
        }
    }
    TEST_CHECK(tc, bad == 0, "at init %d tensors besides final.proj.* got a gradient", bad);
    TEST_CHECK(tc, final_nz == 2, "at init final.proj.w and .b must get a gradient");

    // away from init: bit-identical forward and backward on repeat
    for (size_t i = 0; i < np; i++) dit_params(m)[i] += 0.1f * mm_rng_normal(r);
    double l1 = dit_forward(m, &b.in);
    dit_zero_grad(m);
    dit_backward(m, &b.in, 0.25f);
    mm_real *g1 = malloc(np * sizeof(mm_real));
    memcpy(g1, dit_grads(m), np * sizeof(mm_real));
    int nzg = 0;
    for (size_t i = 0; i < np; i++) nzg += g1[i] != 0;
    TEST_CHECK(tc, nzg > (int)(np / 2), "after perturbing, only %d of %zu gradients non-zero", nzg,
               np);
    double l2 = dit_forward(m, &b.in);
    dit_zero_grad(m);
    dit_backward(m, &b.in, 0.25f);
    TEST_CHECK(tc, l1 == l2, "forward not bit-identical on repeat (%.9g vs %.9g)", l1, l2);
    TEST_CHECK(tc, memcmp(g1, dit_grads(m), np * sizeof(mm_real)) == 0,
               "backward not bit-identical on repeat");
    printf(
        "init: output exactly 0, only final.proj.* gets a gradient; loss %.6f after perturbing\n",
        l1);

    // absent conditioning is never read; present conditioning is
    mm_real *o1 = malloc(npix * sizeof(mm_real)), *o2 = malloc(npix * sizeof(mm_real));
    dit_predict(m, &b.in, o1);
    const int Tt = c.text_T;
    const size_t af = (size_t)c.audio_F * c.n_mels;
    for (int t = 1; t < Tt; t++) b.tok[1 * Tt + t] = 'z' - t;  // sample 1: has_text 0
    for (size_t i = 0; i < af; i++) b.audio[2 * af + i] += 1;  // sample 2: has_audio 0
    dit_predict(m, &b.in, o2);
    TEST_CHECK(tc, memcmp(o1, o2, npix * sizeof(mm_real)) == 0,
               "changing an absent caption / absent audio changed the output");
    for (int t = 1; t < Tt; t++) b.tok[0 * Tt + t] = 'z' - t;  // sample 0: present caption
    dit_predict(m, &b.in, o2);
    TEST_CHECK(tc, memcmp(o1, o2, b.pix * sizeof(mm_real)) != 0,
               "changing a present caption did not change the output");
    TEST_CHECK(tc, memcmp(o1 + b.pix, o2 + b.pix, 3 * b.pix * sizeof(mm_real)) == 0,
               "changing sample 0's caption changed other samples");
    for (size_t i = 0; i < af; i++) b.audio[0 * af + i] += 1;  // sample 0: present audio
    memcpy(o1, o2, npix * sizeof(mm_real));
    dit_predict(m, &b.in, o2);
    TEST_CHECK(tc, memcmp(o1, o2, b.pix * sizeof(mm_real)) != 0,
               "changing present audio did not change the output");
    // a sample alone gives its batched output (up to gemm blocking)
    dit_input one = b.in;
    one.B = 1;
    one.x_t += 3 * b.pix;
    one.t += 3;
    one.tokens += 3 * Tt;
    one.has_text += 3;
    one.audio += 3 * af;
    one.has_audio += 3;
    dit_predict(m, &one, o1);
    double e1 = nerr_r(o1, o2 + 3 * b.pix, b.pix);
    TEST_CHECK(tc, e1 <= 1e-5, "sample 3 alone differs from batched by %.2e", e1);
    printf("conditioning: absent caption/audio ignored bitwise; alone vs batched %.1e\n", e1);
    free(o1), free(o2), free(out), free(g1);
    free_batch(&b);
    dit_free(m);
}

static void test_bad_configs(test_counts *tc) {
    struct {
        const char *what, *expect;
    } cases[] = {
        {"heads do not divide d_model", "n_heads"},
        {"d_model not a multiple of 4", "multiple of 4"},
        {"image not divisible by patch", "patches"},
        {"tp does not divide heads", "tp"},
        {"negative enc_layers", "enc_layers"},
        {"vocab without PAD", "PAD"},
        {"fewer frames than a group", "audio_group"},
        {"zero layers", "n_layers"},
    };
    for (int i = 0; i < (int)(sizeof(cases) / sizeof(cases[0])); i++) {
        dit_config c;
        small_config(&c);
        if (i == 0) c.n_heads = 3;
        if (i == 1) c.d_model = 18, c.n_heads = 2;
        if (i == 2) c.img_w = 10;
        if (i == 3) c.tp = 8;
        if (i == 4) c.enc_layers = -1;
        if (i == 5) c.vocab = 256;
        if (i == 6) c.audio_F = 1;
        if (i == 7) c.n_layers = 0;
        mm_err err = {{0}};
        dit *m = (dit *)&c;  // must be reset to NULL on failure
        int rc = dit_create(&m, &c, &mm_backend_cpu, 2, 1, &err);
        TEST_CHECK(tc, rc == -1 && m == NULL && strstr(err.msg, cases[i].expect),
                   "%s: rc %d, message \"%s\" should mention \"%s\"", cases[i].what, rc, err.msg,
                   cases[i].expect);
        if (rc == 0) dit_free(m);
    }
}

// Names, groups, decay, split dims; tp layouts slice the tp = 1 tensors.
static void test_table(test_counts *tc) {
    dit_config c;
    small_config(&c);
    dit *ref = create_or_die(&c, 1, 9);
    const model_tensor *t1 = dit_tensors(ref);
    const int nt = dit_n_tensors(ref);
    static const struct {
        const char *name;
        int split, group, decay;
    } expect[] = {
        {"text.wte", -1, MODEL_GROUP_TEXT, 1},
        {"text.blocks.0.attn.qkv.w", -1, MODEL_GROUP_TEXT, 1},
        {"text.ln_f.g", -1, MODEL_GROUP_TEXT, 0},
        {"audio.proj.w", -1, MODEL_GROUP_AUDIO, 1},
        {"audio.pos", -1, MODEL_GROUP_AUDIO, 1},
        {"cond.null", -1, MODEL_GROUP_TRUNK, 1},
        {"t_embed.fc1.w", -1, MODEL_GROUP_TRUNK, 1},
        {"x_embed.w", -1, MODEL_GROUP_TRUNK, 1},
        {"blocks.1.ada.w", -1, MODEL_GROUP_TRUNK, 1},
        {"blocks.1.attn.qkv.w", 1, MODEL_GROUP_TRUNK, 1},
        {"blocks.1.attn.qkv.b", 1, MODEL_GROUP_TRUNK, 0},
        {"blocks.1.attn.proj.w", 1, MODEL_GROUP_TRUNK, 1},
        {"blocks.1.attn.proj.b", -1, MODEL_GROUP_TRUNK, 0},
        {"blocks.1.xattn.q.w", 0, MODEL_GROUP_TRUNK, 1},
        {"blocks.1.xattn.kv.w", 1, MODEL_GROUP_TRUNK, 1},
        {"blocks.1.xattn.kv.b", 1, MODEL_GROUP_TRUNK, 0},
        {"blocks.1.xattn.proj.w", 1, MODEL_GROUP_TRUNK, 1},
        {"blocks.1.mlp.fc.w", 0, MODEL_GROUP_TRUNK, 1},
        {"blocks.1.mlp.proj.w", 1, MODEL_GROUP_TRUNK, 1},
        {"final.proj.w", -1, MODEL_GROUP_TRUNK, 1},
    };
    int bad = 0;
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        int k = find_tensor(ref, expect[i].name);
        if (k < 0 || t1[k].split_dim != expect[i].split || t1[k].group != expect[i].group ||
            t1[k].decay != expect[i].decay) {
            bad++;
            fprintf(stderr, "  table: %s missing or wrong split/group/decay\n", expect[i].name);
        }
    }
    TEST_CHECK(tc, bad == 0, "%d tensors with a wrong table entry", bad);
    // order: the encoders first, the final layer last (backward completes from the end)
    TEST_CHECK(tc,
               strcmp(t1[0].name, "text.wte") == 0 && strncmp(t1[nt - 1].name, "final.", 6) == 0,
               "table must start with text.wte and end with final.*");
    int contiguous = t1[0].offset == 0;
    for (int k = 1; k < nt; k++) contiguous &= t1[k].offset == t1[k - 1].offset + t1[k - 1].size;
    TEST_CHECK(tc, contiguous && t1[nt - 1].offset + t1[nt - 1].size == dit_n_params(ref),
               "tensor offsets must tile the buffer in table order");

    mm_real *slice = malloc(dit_n_params(ref) * sizeof(mm_real));
    for (int tp = 2; tp <= 4; tp *= 2) {
        int slice_bad = 0, shape_bad = 0;
        size_t *covered = calloc((size_t)nt, sizeof(size_t));
        for (int rank = 0; rank < tp; rank++) {
            dit_config ct = c;
            ct.tp = tp;
            ct.tp_rank = rank;
            dit *m = create_or_die(&ct, 1, 9);  // layout only: no tp_group
            const model_tensor *tt = dit_tensors(m);
            shape_bad += dit_n_tensors(m) != nt;
            for (int k = 0; k < nt && k < dit_n_tensors(m); k++) {
                shape_bad += strcmp(tt[k].name, t1[k].name) != 0 ||
                             memcmp(tt[k].shape, t1[k].shape, sizeof(tt[k].shape)) != 0 ||
                             tt[k].split_dim != t1[k].split_dim;
                take_slice(slice, dit_params(ref) + t1[k].offset, &tt[k]);
                slice_bad +=
                    memcmp(slice, dit_params(m) + tt[k].offset, tt[k].size * sizeof(mm_real)) != 0;
                covered[k] += tt[k].split_dim >= 0 ? tt[k].size : (rank == 0 ? tt[k].size : 0);
            }
            dit_free(m);
        }
        int cover_bad = 0;
        for (int k = 0; k < nt; k++) cover_bad += covered[k] != t1[k].size;
        free(covered);
        TEST_CHECK(tc, shape_bad == 0, "tp=%d: %d table entries differ from tp=1", tp, shape_bad);
        TEST_CHECK(tc, slice_bad == 0, "tp=%d: %d tensors' init is not the tp=1 slice", tp,
                   slice_bad);
        TEST_CHECK(tc, cover_bad == 0, "tp=%d: %d split tensors' slices do not add up to the whole",
                   tp, cover_bad);
    }
    printf("table: %d tensors, %zu parameters; tp=2,4 slices concatenate to tp=1\n", nt,
           dit_n_params(ref));
    free(slice);
    dit_free(ref);
}

// dit_flops_per_sample against a count from the table: 6 x (weight entries x the tokens each
// is applied to) for trained matmuls, 4 x where no input gradient is needed, plus attention.
static void test_flops(test_counts *tc, int pool) {
    dit_config c;
    small_config(&c);
    c.pool_cond = pool;
    dit *m = create_or_die(&c, 1, 1);
    const double N = (c.img_h / c.patch) * (c.img_w / c.patch), na = c.audio_F / c.audio_group;
    const double Tt = c.text_T, Tc = Tt + na + 1, C = c.d_model;
    double f = 0;
    for (int k = 0; k < dit_n_tensors(m); k++) {
        const model_tensor *t = &dit_tensors(m)[k];
        size_t len = strlen(t->name);
        if (t->ndim < 2 || strcmp(t->name + len - 2, ".w") != 0) continue;  // matrices only
        double w = (double)t->size, rows = 0, mul = 6;
        if (strncmp(t->name, "text.blocks", 11) == 0)
            rows = Tt;
        else if (strncmp(t->name, "audio.blocks", 12) == 0)
            rows = na;
        else if (strcmp(t->name, "audio.proj.w") == 0)
            rows = na, mul = 4;
        else if (strcmp(t->name, "x_embed.w") == 0)
            rows = N, mul = 4;
        else if (strcmp(t->name, "t_embed.fc1.w") == 0)
            rows = 1, mul = 4;
        else if (strstr(t->name, ".ada.") || strcmp(t->name, "t_embed.fc2.w") == 0 ||
                 strncmp(t->name, "cond.pool.", 10) == 0)
            rows = 1;
        else if (strstr(t->name, "xattn.kv"))
            rows = Tc;
        else
            rows = N;  // generator block matrices and final.proj
        f += mul * rows * w;
    }
    f += 12.0 * c.n_layers * (N * N + N * Tc) * C + 12.0 * c.enc_layers * (Tt * Tt + na * na) * C;
    double got = dit_flops_per_sample(m);
    TEST_CHECK(tc, fabs(got - f) <= 1e-9 * f, "flops %.6g, table count %.6g", got, f);
    dit_config ct = c;
    ct.tp = 2;
    ct.tp_rank = 1;
    dit *m2 = create_or_die(&ct, 1, 1);
    TEST_CHECK(tc, dit_flops_per_sample(m2) == got, "flops must count the whole model under tp");
    printf("flops/sample %.4g (table count %.4g)%s\n", got, f, pool ? ", pool_cond" : "");
    dit_free(m2);
    dit_free(m);
}

static void check_hook_pass(test_counts *tc, hook_rec *h, dit *m, int n_layers, const char *what) {
    // final, each block, x_embed, t_embed, cond.null, audio, text (lo 0)
    TEST_CHECK(tc, h->calls == n_layers + 6, "%s: %d hook calls, want %d", what, h->calls,
               n_layers + 6);
    check_hook_lo(tc, h, dit_tensors(m), dit_n_tensors(m), dit_grads(m), what);
}

// ---------------------------------------------------------------------------------------
// tensor parallel against the serial model; tp = size of tpg

// pool: the pooled-conditioning path (cfg.pool_cond), replicated, whose d(cond) share must
// be added once and not once per tp rank. x_pred: cfg.x_pred, on the replicated output.
static void test_tp_equivalence(test_counts *tc, comm_group *tpg, int pool, int x_pred) {
    const int tp = comm_size(tpg), rank = comm_rank(tpg), root = rank == 0;
    dit_config c1, ct;
    small_config(&c1);
    c1.pool_cond = pool;
    c1.x_pred = x_pred;
    ct = c1;
    ct.tp = tp;
    ct.tp_rank = rank;
    ct.tp_group = tp > 1 ? tpg : NULL;
    dit *ref = create_or_die(&c1, SB, 11), *m = create_or_die(&ct, SB, 11);
    const model_tensor *t1 = dit_tensors(ref), *tt = dit_tensors(m);
    const int nt = dit_n_tensors(m);
    const size_t np = dit_n_params(m);
    mm_real *slice = malloc(dit_n_params(ref) * sizeof(mm_real));
    int init_bad = tp_slices_differ(t1, dit_params(ref), tt, dit_params(m), nt, slice);
    TEST_CHECK(tc, init_bad == 0, "tp=%d rank %d: %d tensors' init is not the tp=1 slice", tp, rank,
               init_bad);

    // weights away from init (adaLN-Zero would otherwise zero most gradients)
    mm_rng r;
    mm_rng_init(&r, 99, 0);
    for (size_t i = 0; i < dit_n_params(ref); i++) dit_params(ref)[i] += 0.1f * mm_rng_normal(&r);
    tp_copy_slices(dit_params(m), tt, dit_params(ref), t1, nt);
    batch b;
    make_batch(&b, &c1, &r);
    const mm_real scale = 1.0f / 3;
    double l1 = dit_forward(ref, &b.in);
    dit_zero_grad(ref);
    dit_backward(ref, &b.in, scale);
    double lt = dit_forward(m, &b.in);
    dit_zero_grad(m);
    dit_backward(m, &b.in, scale);
    tp_check_loss(tc, tpg, lt, l1, LOSS_TOL);

    tp_check_grads(tc, tpg, t1, dit_grads(ref), tt, dit_grads(m), nt, slice, 26, "blocks.1.",
                   GRAD_TOL);

    // replicated gradients and the predicted images: the same bits on every tp rank
    int n_rep;
    int rep_bad = tp_replicated_differ(tpg, tt, dit_grads(m), nt, slice, &n_rep);
    TEST_CHECK(tc, rep_bad == 0, "tp=%d rank %d: %d of %d replicated grads differ across ranks", tp,
               rank, rep_bad, n_rep);
    const size_t npix = SB * b.pix;
    mm_real *o1 = malloc(npix * sizeof(mm_real)), *ot = malloc(npix * sizeof(mm_real));
    dit_predict(ref, &b.in, o1);
    dit_predict(m, &b.in, ot);
    double perr = nerr_r(ot, o1, npix);
    TEST_CHECK(tc, perr <= LOSS_TOL, "tp=%d: predict differs from tp=1 by %.2e", tp, perr);
    memcpy(o1, ot, npix * sizeof(mm_real));
    if (tp > 1) comm_bcast(tpg, o1, npix, sizeof(mm_real) == 8 ? COMM_F64 : COMM_F32, 0);
    TEST_CHECK(tc, memcmp(o1, ot, npix * sizeof(mm_real)) == 0,
               "tp=%d rank %d: predicted images differ from rank 0's", tp, rank);

    // determinism at a fixed layout
    mm_real *g_first = malloc(np * sizeof(mm_real));
    memcpy(g_first, dit_grads(m), np * sizeof(mm_real));
    double lt2 = dit_forward(m, &b.in);
    dit_zero_grad(m);
    dit_backward(m, &b.in, scale);
    TEST_CHECK(tc, lt2 == lt, "tp=%d: forward not bit-identical across runs", tp);
    TEST_CHECK(tc, memcmp(g_first, dit_grads(m), np * sizeof(mm_real)) == 0,
               "tp=%d: backward not bit-identical across runs", tp);

    // grad hook: a fresh pass, then an accumulating one
    hook_rec h = {.grads = dit_grads(m), .n = np};
    dit_set_grad_hook(m, record_hook, &h);
    dit_zero_grad(m);
    for (int pass = 0; pass < 2; pass++) {
        dit_forward(m, &b.in);
        dit_backward(m, &b.in, scale);
        check_hook_pass(tc, &h, m, c1.n_layers, pass ? "accumulating pass" : "first pass");
        if (!pass)
            TEST_CHECK(tc, memcmp(g_first, dit_grads(m), np * sizeof(mm_real)) == 0,
                       "a grad hook changed the gradients");
        if (root && !pass) print_hook_lo(&h, np);
        free_hook_rec(&h);
    }
    dit_set_grad_hook(m, NULL, NULL);
    dit_forward(m, &b.in);
    dit_backward(m, &b.in, scale);
    TEST_CHECK(tc, h.calls == 0, "a removed grad hook was still called");

    free(g_first), free(o1), free(ot), free(slice);
    free_batch(&b);
    dit_free(ref);
    dit_free(m);
}

// A tp_group whose size differs from cfg.tp is refused. Local: no collectives.
static void test_bad_group(test_counts *tc, comm_group *self) {
    dit_config c;
    small_config(&c);
    c.tp = 2;
    c.tp_group = self;
    mm_err err = {{0}};
    dit *m = NULL;
    int rc = dit_create(&m, &c, &mm_backend_cpu, 2, 1, &err);
    TEST_CHECK(tc, rc == -1 && m == NULL && strstr(err.msg, "tp_group"),
               "a group of one rank for tp 2: rc %d, message \"%s\"", rc, err.msg);
    if (rc == 0) dit_free(m);
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    const int size = comm_size(world), rank = comm_rank(world);
    test_counts tc = {0, 0};
    comm_group *tpg = comm_split(world, 0, rank);  // world = one tp group (dp = 1)
    comm_group *self = comm_split(world, rank, 0);
    if (rank == 0) {
        mm_rng r;
        mm_rng_init(&r, 2024, 0);
        test_ops(&tc, &r);
        test_init_and_determinism(&tc, &r);
        test_bad_configs(&tc);
        test_table(&tc);
        test_flops(&tc, 0);
        test_flops(&tc, 1);
    }
    if (size == 1 || size == 2 || size == 4) {
        test_tp_equivalence(&tc, tpg, 0, 0);
        test_tp_equivalence(&tc, tpg, 1, 0);
        test_tp_equivalence(&tc, tpg, 0, 1);
    } else
        TEST_CHECK(&tc, 0, "test_dit runs with 1, 2 or 4 ranks (n_heads = 4), not %d", size);
    test_bad_group(&tc, self);
    int status = tp_finish(world, &tc);
    comm_group_free(self);
    comm_group_free(tpg);
    comm_finalize(world);
    return status;
}
