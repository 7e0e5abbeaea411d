// family_dit.c: the diffusion generator as a model family of the trainer. A micro-step
// noises each sample's image at a random time and regresses the velocity (flow) or the
// noise (DDPM); the conditioning (caption, audio) is dropped for a share of samples so the
// model also learns the unconditional prediction that guidance needs. The EMA of the
// weights is kept here and used for sampling.
//
// Randomness is a pure function of (run.seed, step, sample_id): the time, the noise and the
// dropout of a sample do not depend on which rank or micro-step trains it, so runs agree
// across layouts and a resumed run continues exactly (no RNG state to save).
//
// A sample without an image has nothing to denoise: it counts in the global batch (the loss
// is the mean over global_batch samples, so it does not depend on the split) but adds 0.
//
// The family computes on the trainer's backend (t->be), as family_lm.c: the model's buffers
// and the EMA (ema.h, updated by the backend's ema kernel after every update) are the
// backend's memory; t->net.params and t->ema are their host views for checkpoints
// (gradsync.h; sync_host / sync_device move the EMA's on a GPU). The per-sample randomness is
// drawn on the host whatever the backend; each micro-batch's images, noise, times, pair
// coefficients and conditioning go through the backend's staging and the noising runs there
// (dit_ops.make_pair). Evaluation and the sample grids run there too; only the generated
// images come back.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/diffusion.h"
#include "ema.h"
#include "eval.h"
#include "trainer_internal.h"

typedef struct {
    dit *net;                // owned
    const mm_backend *be;    // not owned
    dit_objective obj;
    int logit_normal;        // flow: draw t logit-normally
    int max_B;
    int warned_no_val_images;  // the one warning that val_loss cannot be evaluated
    int noted_rule;            // the one note that cond_acc is not evaluated (not synthetic)
    size_t npix;             // H * W * C
    // host micro-batch scratch, max_B samples each (owned)
    mm_real *x0, *eps, *t, *audio, *out;
    int32_t *tokens;
    uint8_t *has_text, *has_audio;
    uint64_t *ids;
    double *coef;            // (max_B, 2) the pairs' coefficients (dit_pair_coefs)
    // in the backend's memory (owned)
    void *stage;             // the micro-batches' way there
    train_ema ema;           // the EMA; t->ema is its host view
    mm_real *dxt, *dtarget;  // (max_B, npix) the training pairs
    mm_real *dout;           // (max_B, npix) samples
} dit_state;

static dit_state *ds(const trainer *t) { return (dit_state *)t->impl; }

static void dit_set_hook(void *impl, model_grad_hook fn, void *ctx) {
    dit_set_grad_hook((dit *)impl, fn, ctx);
}

dit_config train_dit_config(const mm_config *c, const data_schema *sc) {
    const data_audio_cfg ac = {.n_fft = c->data.n_fft, .hop = c->data.hop,
                               .n_mels = c->data.n_mels};
    return (dit_config){.d_model = c->model.d_model,
                        .n_layers = c->model.n_layers,
                        .n_heads = c->model.n_heads,
                        .d_ff = c->model.d_ff ? c->model.d_ff : 4 * c->model.d_model,
                        .img_h = sc->img_h,
                        .img_w = sc->img_w,
                        .img_c = sc->img_c,
                        .patch = c->model.patch,
                        .vocab = DATA_VOCAB,
                        .text_T = sc->text_max + 1,
                        .audio_F = data_audio_frames(sc, &ac),
                        .n_mels = c->data.n_mels,
                        .audio_group = c->model.audio_group,
                        .enc_layers = c->diffusion.enc_layers,
                        .pool_cond = c->diffusion.pool_cond,
                        .x_pred = strcmp(c->diffusion.predict, "x") == 0,
                        .tp = 1,
                        .tp_rank = 0,
                        .tp_group = NULL,
                        .recompute = model_recompute_named(c->model.recompute)};
}

// The generator this rank builds: train_dit_config at the run's tp placement.
static dit_config dit_fam_config(const trainer *t) {
    dit_config dc = train_dit_config(t->cfg, &t->schema);
    dc.tp = t->lay.tp_size;
    dc.tp_rank = t->lay.tp_rank;
    dc.tp_group = t->lay.tp_size > 1 ? t->lay.tp : NULL;
    return dc;
}

static int dit_fam_mem_plan(const trainer *t, int max_B, model_recompute rc, model_mem *out,
                            int *ema, mm_err *err) {
    dit_config dc = dit_fam_config(t);
    dc.recompute = rc;
    mm_err me;
    *ema = 1;  // the EMA of the weights, in the backend's memory
    if (dit_mem_plan(&dc, t->be, max_B, out, &me) != 0) return mm_fail(err, "model: %s", me.msg);
    return 0;
}

static int dit_fam_create(trainer *t, int max_B, mm_err *err) {
    const mm_config *c = t->cfg;
    dit_config dc = dit_fam_config(t);
    dit_state *s = mm_calloc(1, sizeof(*s));
    t->impl = s;  // dit_fam_destroy frees what is made from here on, on failure too
    mm_err me;
    if (dit_create(&s->net, &dc, t->be, max_B, c->run.seed, &me) != 0)
        return mm_fail(err, "model: %s", me.msg);
    s->be = t->be;
    s->obj = strcmp(c->diffusion.objective, "ddpm") == 0 ? DIT_DDPM : DIT_FLOW;
    s->logit_normal = strcmp(c->diffusion.t_sampling, "logit_normal") == 0;
    s->max_B = max_B;
    s->npix = (size_t)t->schema.img_h * t->schema.img_w * t->schema.img_c;
    size_t img = (size_t)max_B * s->npix * sizeof(mm_real);
    s->x0 = mm_alloc_aligned(img);
    s->eps = mm_alloc_aligned(img);
    s->out = mm_alloc_aligned(img);
    s->t = mm_alloc_aligned((size_t)max_B * sizeof(mm_real));
    int F = dc.audio_F;
    s->audio = mm_alloc_aligned((size_t)max_B * F * dc.n_mels * sizeof(mm_real));
    s->tokens = mm_alloc_aligned((size_t)max_B * dc.text_T * sizeof(int32_t));
    s->has_text = mm_calloc((size_t)max_B, 1);
    s->has_audio = mm_calloc((size_t)max_B, 1);
    s->ids = mm_calloc((size_t)max_B, sizeof(uint64_t));
    s->coef = mm_calloc((size_t)max_B * 2, sizeof(double));
    const mm_backend *be = t->be;
    train_net_bind(&t->net, be, s->net, dit_params(s->net), dit_grads(s->net), dit_n_params(s->net),
                   dit_tensors(s->net), dit_n_tensors(s->net), dit_set_hook);
    train_ema_init(&s->ema, be, t->net.dparams, t->net.n_params);
    t->ema = s->ema.host;
    s->dxt = be->ops->mem_alloc(be, img);
    s->dtarget = be->ops->mem_alloc(be, img);
    s->dout = be->ops->mem_alloc(be, img);
    size_t bytes = 0;  // one micro-batch of max_B samples, each region 256-byte aligned
    const size_t per[8] = {s->npix * sizeof(float),
                           s->npix * sizeof(float),
                           sizeof(float),
                           2 * sizeof(double),
                           (size_t)dc.text_T * sizeof(int32_t),
                           (size_t)F * dc.n_mels * sizeof(float),
                           1,
                           1};
    for (int i = 0; i < 8; i++) bytes += (per[i] * max_B + 255) / 256 * 256;
    s->stage = be->iface->stage_new(be, bytes);
    return 0;
}

static void dit_fam_destroy(trainer *t) {
    dit_state *s = ds(t);
    if (!s) return;
    const mm_backend *be = t->be;
    if (s->stage) be->iface->stage_free(be, s->stage);
    train_ema_free(&s->ema);
    t->ema = NULL;
    if (s->dxt) be->ops->mem_free(be, s->dxt);
    if (s->dtarget) be->ops->mem_free(be, s->dtarget);
    if (s->dout) be->ops->mem_free(be, s->dout);
    if (s->net) dit_free(s->net);
    train_net_free(&t->net);
    free(s->x0);
    free(s->eps);
    free(s->out);
    free(s->t);
    free(s->audio);
    free(s->tokens);
    free(s->has_text);
    free(s->has_audio);
    free(s->ids);
    free(s->coef);
    free(s);
    t->impl = NULL;
}

// Copies sample i of b into slot j of the scratch batch (image as x0, caption, audio).
static void take_sample(dit_state *s, const data_batch *b, int i, int j) {
    size_t F = (size_t)b->audio_F * b->n_mels;
    memcpy(s->x0 + (size_t)j * s->npix, b->image + (size_t)i * s->npix, s->npix * sizeof(float));
    memcpy(s->tokens + (size_t)j * b->text_T, b->tokens + (size_t)i * b->text_T,
           (size_t)b->text_T * sizeof(int32_t));
    memcpy(s->audio + (size_t)j * F, b->audio + (size_t)i * F, F * sizeof(float));
    s->has_text[j] = 1;
    s->has_audio[j] = b->has_audio[i];
    s->ids[j] = b->sample_id[i];
}

// The time, noise and conditioning dropout of sample `id` at `step`, from its own stream.
// With probability cond_drop both modalities go (the unconditional prediction guidance
// needs); otherwise each of caption and audio is dropped with probability modality_drop
// while the other stays, so that each alone learns to condition the image.
static void draw_sample(const dit_state *s, uint64_t seed, int64_t step, uint64_t id,
                        double cond_drop, double modality_drop, int j) {
    mm_rng r;
    mm_rng_init(&r, seed ^ (0x9e3779b97f4a7c15ULL * (uint64_t)(step + 1)), id);
    float u = mm_rng_uniform(&r), v = mm_rng_uniform(&r);
    if (u < cond_drop) {
        s->has_text[j] = s->has_audio[j] = 0;
    } else if (s->has_audio[j] && v < modality_drop) {
        s->has_text[j] = 0;
    } else if (s->has_text[j] && v >= 1.0f - modality_drop) {
        s->has_audio[j] = 0;
    }
    dit_draw_t(s->obj, s->logit_normal, 1, &r, s->t + j);
    mm_real *e = s->eps + (size_t)j * s->npix;
    for (size_t k = 0; k < s->npix; k++) e[k] = mm_rng_normal(&r);
}

// The model's input for the first B samples of the scratch batch, staged into the backend's
// memory (call input_done after queueing the work that reads it): with_target, the training
// pairs of x0, eps and t (dit_make_pair's arithmetic, as dit_ops.make_pair), else the
// conditioning alone (sampling).
static dit_input make_input(dit_state *s, int B, int with_target) {
    const mm_backend *be = s->be;
    if (with_target) dit_pair_coefs(s->obj, B, s->t, s->coef);
    const dit_config *dc = dit_cfg(s->net);
    const size_t nb = (size_t)B, img = with_target ? nb * s->npix * sizeof(float) : 0;
    const void *src[8] = {s->x0,     s->eps,   s->t,        s->coef,
                          s->tokens, s->audio, s->has_text, s->has_audio};
    const size_t len[8] = {img,
                           img,
                           nb * sizeof(float),
                           with_target ? nb * 2 * sizeof(double) : 0,
                           nb * dc->text_T * sizeof(int32_t),
                           nb * dc->audio_F * dc->n_mels * sizeof(float),
                           nb,
                           nb};
    void *dst[8];
    be->iface->stage_put(be, s->stage, 8, src, len, dst);
    if (with_target)
        dit_dit_ops(s->net)->make_pair(be, s->dxt, s->dtarget, dst[0], dst[1], dst[3],
                                       s->obj == DIT_FLOW, B, s->npix);
    return (dit_input){.B = B,
                       .x_t = s->dxt,
                       .t = dst[2],
                       .tokens = dst[4],
                       .has_text = dst[6],
                       .audio = dst[5],
                       .has_audio = dst[7],
                       .target = with_target ? s->dtarget : NULL};
}

static void input_done(dit_state *s) {
    s->be->iface->stage_done(s->be, s->stage);
}

static double dit_fam_micro_step(trainer *t, const data_batch *b) {
    dit_state *s = ds(t);
    const mm_config *c = t->cfg;
    int n = 0;
    for (int i = 0; i < b->B; i++) {
        if (!b->has_image[i]) continue;
        take_sample(s, b, i, n);
        draw_sample(s, c->run.seed, t->step, b->sample_id[i], c->diffusion.cond_drop,
                    c->diffusion.modality_drop, n);
        n++;
    }
    if (n == 0) {  // nothing to denoise here; the gradient buckets still have to go out
        gsync_ready_all(&t->sync);
        return 0.0;
    }
    dit_input in = make_input(s, n, 1);
    double loss = dit_forward(s->net, &in);
    t->be->iface->sync(t->be);  // a corrupt token ends the job here, named
    trace_dev_next(t->timeline, "backward");
    dit_backward(s->net, &in, (mm_real)(1.0 / c->data.global_batch));
    input_done(s);
    return loss;
}

static void dit_fam_after_update(trainer *t) {
    train_ema_update(&ds(t)->ema, t->net.dparams, (float)t->cfg->diffusion.ema_decay);
}

static int dit_fam_seq_len(const trainer *t) {
    const data_schema *sc = &t->schema;
    int p = t->cfg->model.patch;
    return (sc->img_h / p) * (sc->img_w / p);
}

// --------------------------------------------------------------------------------------
// evaluation: validation loss at fixed noise, samples from validation prompts with the EMA
// weights, and the conditional accuracy a pixel rule reads off them.

enum { MODE_TEXT, MODE_AUDIO, MODE_BOTH, N_MODES };
static const char *const mode_name[N_MODES] = {"text", "audio", "both"};

// Swaps the network's weights with the EMA (twice restores them).
static void swap_ema(trainer *t) { train_ema_swap(&ds(t)->ema, t->net.dparams); }

// Reads validation samples idx[0..n) into the scratch batch as prompts of the given mode.
static void load_prompts(trainer *t, const uint64_t *idx, int n, int mode) {
    dit_state *s = ds(t);
    mm_err e;
    if (data_dataset_read(t->val, idx, n, t->val_feat, &t->val_batch, &e) != 0)
        train_die(t, e.msg);
    for (int i = 0; i < n; i++) {
        take_sample(s, &t->val_batch, i, i);
        s->has_text[i] = mode != MODE_AUDIO;
        s->has_audio[i] = mode != MODE_TEXT && t->val_batch.has_audio[i];
    }
}

// Validation samples usable as prompts of a mode (need an image to know the attributes,
// and audio for the audio modes), the first `want` of them.
static int pick_prompts(trainer *t, int mode, int want, uint64_t *out) {
    const data_schema *vs = data_dataset_schema(t->val);
    int n = 0;
    uint64_t idx[1];
    for (uint64_t i = 0; i < vs->n_samples && n < want; i++) {
        idx[0] = i;
        mm_err e;
        if (data_dataset_read(t->val, idx, 1, t->val_feat, &t->val_batch, &e) != 0)
            train_die(t, e.msg);
        if (!t->val_batch.has_image[0]) continue;
        if (mode != MODE_TEXT && !t->val_batch.has_audio[0]) continue;
        out[n++] = i;
    }
    return n;
}

// Generates images for prompts idx[0..n) in mode into rgb (n, H, W, C) uint8, batch by batch.
static void generate(trainer *t, const uint64_t *idx, int n, int mode, uint64_t stream,
                     uint8_t *rgb) {
    dit_state *s = ds(t);
    const int eb = t->cfg->eval.batch < s->max_B ? t->cfg->eval.batch : s->max_B;
    for (int b0 = 0; b0 < n; b0 += eb) {
        int nb = n - b0 < eb ? n - b0 : eb;
        load_prompts(t, idx + b0, nb, mode);
        mm_rng r;
        mm_rng_init(&r, t->cfg->run.seed, stream + (uint64_t)b0);
        dit_input cond = make_input(s, nb, 0);
        dit_sample(s->net, s->obj, &cond, t->cfg->diffusion.sample_steps,
                   t->cfg->diffusion.guidance, &r, s->dout);
        input_done(s);
        t->be->ops->mem_download(t->be, s->out, s->dout, nb * s->npix * sizeof(mm_real));
        data_image_to_u8(s->out, (int)(nb * s->npix), rgb + (size_t)b0 * s->npix);
    }
}

// Writes <out>/samples/step_X.png: one row per conditioning mode for the first prompts.
static void write_grid(trainer *t) {
    enum { COLS = 8 };
    const data_schema *sc = &t->schema;
    uint64_t idx[N_MODES][COLS];
    int n[N_MODES];
    size_t npix = ds(t)->npix;
    uint8_t *imgs = mm_calloc((size_t)N_MODES * COLS * npix, 1);
    for (int m = 0; m < N_MODES; m++) {
        n[m] = pick_prompts(t, m, COLS, idx[m]);
        generate(t, idx[m], n[m], m, 0x6772696400ULL + (uint64_t)m * 4096,  // "grid"
                 imgs + (size_t)m * COLS * npix);
    }
    if (t->rank == 0) {
        int gh = 0, gw = 0, pad = 2;
        size_t cap = (size_t)(N_MODES * (sc->img_h + pad) + pad) *
                     (COLS * (sc->img_w + pad) + pad) * sc->img_c;
        uint8_t *grid = mm_calloc(cap, 1);
        data_image_grid(imgs, N_MODES * COLS, sc->img_h, sc->img_w, sc->img_c, COLS, pad, grid,
                        &gh, &gw);
        char path[MM_STR + 64];
        snprintf(path, sizeof(path), "%s/samples", t->cfg->run.out_dir);
        mm_err e;
        if (mm_mkdirs(path, &e) != 0) train_die(t, e.msg);
        snprintf(path, sizeof(path), "%s/samples/step_%08lld.png", t->cfg->run.out_dir,
                 (long long)t->step);
        if (data_png_write(path, grid, gh, gw, sc->img_c, &e) != 0) train_die(t, e.msg);
        train_tb_image(t, "samples", path, gh, gw, sc->img_c);
        printf("samples: %s (rows: text, audio, both; %d prompts each)\n", path, COLS);
        free(grid);
    }
    free(imgs);
}

static void dit_fam_evaluate(trainer *t) {
    const mm_config *c = t->cfg;
    dit_state *s = ds(t);
    const data_schema *vs = data_dataset_schema(t->val);
    // validation loss at a fixed time and noise per sample, with the current weights
    int64_t nval = (int64_t)vs->n_samples;
    if (c->eval.samples > 0 && c->eval.samples < nval) nval = c->eval.samples;
    const int eb = c->eval.batch < s->max_B ? c->eval.batch : s->max_B;
    uint64_t *idx = mm_malloc((size_t)(nval > eb ? nval : eb) * sizeof(uint64_t));
    double loss_sum = 0.0;
    int64_t scored = 0, unjudged = 0;
    // the pixel rule reads the synthetic set's drawings: only there is it asked (eval.h,
    // eval_scorer.judges: every evaluated caption must be the synthetic set's)
    const eval_scorer *sc = eval_scorer_find(c->eval.scorer, EVAL_IMAGES);
    MM_CHECK(sc, "eval.scorer %s scores no images (mm_config_validate lets it through)",
             c->eval.scorer);
    for (int64_t b0 = 0; b0 < nval; b0 += eb) {
        int nb = (int)(nval - b0 < eb ? nval - b0 : eb);
        for (int i = 0; i < nb; i++) idx[i] = (uint64_t)(b0 + i);
        mm_err e;
        if (data_dataset_read(t->val, idx, nb, t->val_feat, &t->val_batch, &e) != 0)
            train_die(t, e.msg);
        int n = 0;
        for (int i = 0; i < nb; i++) {
            unjudged += !sc->judges(t->val_batch.text + (size_t)i * (vs->text_max + 1));
            if (!t->val_batch.has_image[i]) continue;
            take_sample(s, &t->val_batch, i, n);
            draw_sample(s, c->run.seed, -2, t->val_batch.sample_id[i], 0.0, 0.0, n);
            n++;
        }
        if (n == 0) continue;
        dit_input in = make_input(s, n, 1);
        loss_sum += dit_forward(s->net, &in);
        input_done(s);
        scored += n;
    }
    // No image among the evaluated samples: there is no diffusion loss to report, and a 0
    // would read as perfect. NAN makes the reports say "n/a" and leave val_loss out.
    double val_loss = scored ? loss_sum / (double)scored : NAN;
    if (!scored && t->rank == 0 && !s->warned_no_val_images) {
        fprintf(stderr,
                "warning: %s: none of the %lld validation samples evaluated has an image; the "
                "diffusion validation loss cannot be evaluated (val_loss n/a)\n",
                c->data.val, (long long)nval);
        s->warned_no_val_images = 1;
    }

    // conditional accuracy: generate from validation prompts with the EMA weights and score
    // each image against its prompt (eval.scorer for images: synth reads colour and shape
    // back from the pixels). Every rank decides alike: each read the same captions.
    const int judge = unjudged == 0 && nval > 0;
    if (!judge && t->rank == 0 && !s->noted_rule) {
        printf(
            "note: %s: %lld of %lld validation captions name no attributes as the synthetic "
            "set's do: cond_acc (read off the pixels by the synthetic set's rule) is not "
            "evaluated on this set\n",
            c->data.val, (long long)unjudged, (long long)nval);
        s->noted_rule = 1;
    }
    swap_ema(t);
    eval_tally tally[N_MODES];
    int want = judge ? c->diffusion.eval_samples : 0;
    uint64_t *pidx = mm_malloc((size_t)(want > 0 ? want : 1) * sizeof(uint64_t));
    uint8_t *rgb = mm_malloc((size_t)(want > 0 ? want : 1) * s->npix);
    FILE *ev = NULL;
    char path[MM_STR + 64];
    if (t->rank == 0 && judge) ev = train_open_output(t, "eval", "jsonl", path, sizeof(path));
    for (int m = 0; m < N_MODES; m++) eval_tally_init(&tally[m], sc);
    for (int m = 0; m < N_MODES && want > 0; m++) {
        int n = pick_prompts(t, m, want, pidx);
        generate(t, pidx, n, m, 0x6576616c00ULL + (uint64_t)m * 1000003,  // "eval"
                 rgb);
        for (int i = 0; i < n; i++) {
            uint64_t one = pidx[i];
            mm_err e;
            if (data_dataset_read(t->val, &one, 1, t->val_feat, &t->val_batch, &e) != 0)
                train_die(t, e.msg);
            const eval_pair p = {.ref_text = t->val_batch.text,
                                 .gen_image = rgb + (size_t)i * s->npix,
                                 .h = vs->img_h,
                                 .w = vs->img_w,
                                 .c = vs->img_c};
            eval_score score;
            eval_tally_score(&tally[m], &p, &score);
            eval_write_image(ev, t->val_batch.sample_id[0], mode_name[m], t->val_batch.text, sc,
                             &score);
            train_check_write(t, ev, path, 0);
        }
    }
    train_close_output(t, ev, path);
    int grid_now = c->diffusion.sample_every == 0;
    if (grid_now) write_grid(t);
    swap_ema(t);
    if (t->rank == 0)
        eval_report_images(stdout, t->metrics, t->step, val_loss, judge ? tally : NULL,
                           judge ? N_MODES : 0, mode_name, MODE_BOTH, want);
    free(idx);
    free(pidx);
    free(rgb);
}

// diffusion.sample_every writes the sample grid on its own schedule.
static void dit_fam_after_update_and_grid(trainer *t) {
    dit_fam_after_update(t);
    int every = t->cfg->diffusion.sample_every;
    if (every > 0 && t->val && t->step % every == 0) {
        swap_ema(t);
        write_grid(t);
        swap_ema(t);
    }
}

// The EMA's host view from the backend before a checkpoint, and back after one (or
// init_from) wrote it: nothing where the view is the buffer itself.
static void dit_fam_sync_host(trainer *t) { train_ema_to_host(&ds(t)->ema); }

static void dit_fam_sync_device(trainer *t) { train_ema_from_host(&ds(t)->ema); }

const train_family train_family_dit = {.kind = "diffusion",
                                       .create = dit_fam_create,
                                       .mem_plan = dit_fam_mem_plan,
                                       .destroy = dit_fam_destroy,
                                       .micro_step = dit_fam_micro_step,
                                       .after_update = dit_fam_after_update_and_grid,
                                       .evaluate = dit_fam_evaluate,
                                       .seq_len = dit_fam_seq_len,
                                       .sync_host = dit_fam_sync_host,
                                       .sync_device = dit_fam_sync_device};
