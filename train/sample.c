// sample.c: `train sample`: generate images from a diffusion checkpoint with its EMA
// weights, conditioned on a caption and/or a sound file, without a training run around it.
// Options and usage: train_sample_cli below (`train sample --help`).
// Writes DIR/sample_XXX.png and DIR/grid.png. The audio file may be anything `mmdata pack`
// accepts (any rate and channel count): it is decoded by the same function. --backend cuda
// (a `make cuda` build) samples on this process's GPU with the checkpoint's precision; the
// noise is drawn on the host either way, so CPU and GPU agree to rounding. --ckpt may be a
// checkpoint, a ckpt/ or a run directory (ckpt_resolve). Shapes come from the checkpoint's config:
// its data.img_* / audio_* / text_max keys (saved resolved since they exist), or for older
// checkpoints the schema of its training set (data.train must then still be readable).
// Threads: as training sets them (train_set_threads), --threads N in place of run.threads;
// the images do not depend on the count.
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "../model/diffusion.h"
#include "ckpt.h"
#include "config.h"
#include "memory.h"
#include "train.h"
#include "trainer_internal.h"

static const mm_cli_opt sample_opts[] = {
    {"--ckpt", "DIR",
     "the diffusion checkpoint: a checkpoint, a ckpt/ directory or a run\n"
     "directory (its latest checkpoint); required"},
    {"--out", "DIR", "where to write sample_000.png ... and grid.png; required"},
    {"--text", "CAPTION", "the caption every image is conditioned on"},
    {"--audio", "FILE",
     "a sound every image is conditioned on: any file `mmdata pack` reads\n"
     "(WAV, FLAC, OGG, ...; any rate and channel count)"},
    {"--n", "K", "how many images, 1..4096 (8)"},
    {"--steps", "S", "sampling steps, 1..4096 (the checkpoint's diffusion.sample_steps)"},
    {"--guidance", "G", "classifier-free guidance, 0..100 (its diffusion.guidance)"},
    {"--seed", "S", "the seed of the noise (0): the same seed gives the same images"},
    {"--threads", "N",
     "OpenMP/OpenBLAS threads, 1..4096 (default: the cores this process may\n"
     "use, as training with run.threads 0); on a machine busy with other\n"
     "work, --threads 1 (or OMP_WAIT_POLICY=passive) can be many times\n"
     "faster"},
    {"--backend", "cpu|cuda", "where to sample (cpu); cuda needs a `make cuda` build"},
    {NULL, NULL, NULL}};

const mm_cli_cmd train_sample_cli = {
    .prog = "train",
    .name = "sample",
    .synopsis = "--ckpt DIR --out DIR [options]",
    .summary = "generate images from a diffusion checkpoint (its EMA weights)",
    .about =
        "  Generates images conditioned on a caption and/or a sound (neither: unconditional)\n"
        "  with the EMA weights of a diffusion checkpoint of any layout.\n",
    .opts = sample_opts};

typedef struct {
    const char *ckpt, *out, *text, *audio, *backend;
    int n, steps;
    int threads;  // --threads (0: training's rule), then the count in use
    double guidance;
    uint64_t seed;
} sample_args;

static int parse_args(int argc, char **argv, sample_args *a, mm_err *err) {
    const mm_cli_cmd *c = &train_sample_cli;
    memset(a, 0, sizeof(*a));
    a->n = 8;
    a->steps = -1;
    a->guidance = -1;
    a->backend = "cpu";
    for (int i = 0; i < argc; i++) {
        const char *v;
        const mm_cli_opt *o = mm_cli_next(c, argc, argv, &i, &v, err);
        if (!o) return -1;
        const char *k = o->name;
        char *end = NULL;
        errno = 0;
        if (strcmp(k, "--ckpt") == 0) a->ckpt = v;
        else if (strcmp(k, "--out") == 0) a->out = v;
        else if (strcmp(k, "--text") == 0) a->text = v;
        else if (strcmp(k, "--audio") == 0) a->audio = v;
        else if (strcmp(k, "--backend") == 0) {
            if (strcmp(v, "cpu") != 0 && strcmp(v, "cuda") != 0)
                return mm_cli_fail(c, err, "--backend '%s': expected cpu or cuda", v);
            a->backend = v;  // whether this binary has it: mm_backend_create says
        } else if (strcmp(k, "--n") == 0 || strcmp(k, "--steps") == 0 ||
                   strcmp(k, "--threads") == 0) {
            long x = strtol(v, &end, 10);
            if (errno || end == v || *end || x < 1 || x > 4096)
                return mm_cli_fail(c, err, "%s '%s': expected an integer in [1, 4096]", k, v);
            *(k[2] == 'n' ? &a->n : k[2] == 's' ? &a->steps : &a->threads) = (int)x;
        } else if (strcmp(k, "--guidance") == 0) {
            // the config's range for diffusion.guidance; NaN and inf fail the comparison
            a->guidance = strtod(v, &end);
            if (errno || end == v || *end || !(a->guidance >= 0 && a->guidance <= 100))
                return mm_cli_fail(c, err, "--guidance '%s': expected a number in [0, 100]", v);
        } else {  // --seed
            a->seed = strtoull(v, &end, 10);
            if (errno || end == v || *end || *v == '-')
                return mm_cli_fail(c, err, "--seed '%s': expected an unsigned integer", v);
        }
    }
    if (!a->ckpt) return mm_cli_fail(c, err, "--ckpt DIR is required");
    if (!a->out) return mm_cli_fail(c, err, "--out DIR is required");
    return 0;
}

// Reads an audio file as `mmdata pack` does (data_audio_load: any format libsndfile reads,
// channels mixed down, resampled with libsoxr to the model's rate, the first audio_len
// samples kept), so a clip conditions the model exactly as it would after packing.
static int read_audio(const char *path, const data_schema *sc, int16_t *pcm, int *n,
                      mm_err *err) {
    data_media *media = data_media_new();
    data_audio_info ai;
    mm_err e;
    int rc = data_audio_load(media, path, sc->audio_rate, sc->audio_len, pcm, &ai, &e);
    data_media_free(media);
    if (rc != 0) return mm_fail(err, "sample: --audio %s: %s", path, e.msg);
    *n = ai.n;
    printf("audio: %s: %d Hz, %d channel%s, %.3f s -> %d samples at %d Hz%s\n", path, ai.src_rate,
           ai.src_channels, ai.src_channels == 1 ? "" : "s", (double)ai.src_frames / ai.src_rate,
           ai.n, sc->audio_rate, ai.trimmed ? " (cut to the model's clip length)" : "");
    return 0;
}

static int run_sample(const sample_args *a, mm_err *err) {
    const double t0 = mm_now();
    ckpt_meta meta;
    char ck[4200];
    mm_err e;
    mm_config c;
    int rc = ckpt_open_config(a->ckpt, "sample: --ckpt", ck, sizeof(ck), &meta, &c, NULL, err);
    if (rc != 0) return -1;
    if (strcmp(c.model.kind, "diffusion") != 0)
        return mm_fail(err, "%s: a %s checkpoint; sample needs a diffusion one", ck,
                       c.model.kind);
    data_schema sc = {.img_h = c.data.img_h, .img_w = c.data.img_w, .img_c = c.data.img_c,
                      .audio_rate = c.data.audio_rate, .audio_len = c.data.audio_len,
                      .text_max = c.data.text_max};
    if (!sc.img_h || !sc.img_w || !sc.img_c || !sc.audio_rate || !sc.audio_len ||
        !sc.text_max) {  // a checkpoint from before the shape keys: ask its training set
        data_dataset *probe = NULL;
        if (data_dataset_open(&probe, c.data.train, DATA_OPEN_SCHEMA, &e) != 0)
            return mm_fail(err, "%s: needs the schema of its training set data.train: %s", ck,
                           e.msg);
        sc = *data_dataset_schema(probe);
        data_dataset_close(probe);
    }
    const data_audio_cfg ac = {c.data.n_fft, c.data.hop, c.data.n_mels};  // the run's features
    dit_config dc = train_dit_config(&c, &sc);
    const int n = a->n, text_T = dc.text_T, F = dc.audio_F;
    const mm_backend *be = NULL;
    if (mm_backend_create(&be, a->backend, c.precision, 1, 0, err) != 0) return -1;
    const model_ops *ops = be->ops;
    dit *m = NULL;
    if (dit_create(&m, &dc, be, n, 0, err) != 0) {
        mm_backend_free(be);
        return -1;
    }
    size_t np = dit_n_params(m), npix = (size_t)sc.img_h * sc.img_w * sc.img_c;
    float *ema = mm_alloc_aligned(np * sizeof(float));
    int32_t *tokens = mm_calloc((size_t)n * text_T, sizeof(int32_t));
    float *audio = mm_calloc((size_t)n * F * c.data.n_mels, sizeof(float));
    uint8_t *has_text = mm_calloc((size_t)n, 1), *has_audio = mm_calloc((size_t)n, 1);
    float *out = mm_alloc_aligned((size_t)n * npix * sizeof(float));
    uint8_t *rgb = mm_malloc((size_t)n * npix);
    int16_t *pcm = mm_calloc((size_t)sc.audio_len, sizeof(int16_t));
    data_featurizer *feat = NULL;
    rc = -1;
    // the weights are loaded into a host buffer: only the EMA goes to the model
    float *params = mm_alloc_aligned(np * sizeof(float));
    ckpt_state st = {.tensors = dit_tensors(m), .n_tensors = dit_n_tensors(m), .n_params = np,
                     .params = params, .ema = ema};
    int lrc = ckpt_load_state(ck, &st, err);
    free(params);
    if (lrc != 0) goto done;
    ops->mem_upload(be, dit_params(m), ema, np * sizeof(float));  // sample with the EMA weights
    if (a->text) {
        size_t len = strlen(a->text);
        if ((int)len > sc.text_max) {
            mm_fail(err, "sample: --text is %zu bytes, the model takes at most %d", len,
                    sc.text_max);
            goto done;
        }
        for (int b = 0; b < n; b++) {
            data_tokens_encode(a->text, (int)len, text_T, tokens + (size_t)b * text_T, NULL);
            has_text[b] = 1;
        }
    }
    if (a->audio) {
        int got = 0;
        if (read_audio(a->audio, &sc, pcm, &got, err) != 0) goto done;
        feat = data_featurizer_new(&sc, &ac);
        data_featurize_audio(feat, pcm, got, audio);
        const size_t per = (size_t)F * c.data.n_mels;
        for (int b = 0; b < n; b++) {
            if (b) memcpy(audio + (size_t)b * per, audio, per * sizeof(float));
            has_audio[b] = 1;
        }
    }
    {
        // the conditioning and the output in the model's memory (copies on the GPU)
        const size_t bt = (size_t)n * text_T * sizeof(int32_t),
                     ba = (size_t)n * F * c.data.n_mels * sizeof(float),
                     bo = (size_t)n * npix * sizeof(float);
        int32_t *dtok = ops->mem_alloc(be, bt);
        float *daud = ops->mem_alloc(be, ba), *dout = ops->mem_alloc(be, bo);
        uint8_t *dht = ops->mem_alloc(be, (size_t)n), *dha = ops->mem_alloc(be, (size_t)n);
        ops->mem_upload(be, dtok, tokens, bt);
        ops->mem_upload(be, daud, audio, ba);
        ops->mem_upload(be, dht, has_text, (size_t)n);
        ops->mem_upload(be, dha, has_audio, (size_t)n);
        dit_input cond = {.B = n, .tokens = dtok, .has_text = dht, .audio = daud,
                          .has_audio = dha};
        dit_objective obj = strcmp(c.diffusion.objective, "ddpm") == 0 ? DIT_DDPM : DIT_FLOW;
        mm_rng r;
        mm_rng_init(&r, a->seed, 0x73616d70ULL);  // "samp"
        dit_sample(m, obj, &cond, a->steps > 0 ? a->steps : c.diffusion.sample_steps,
                   a->guidance >= 0 ? a->guidance : c.diffusion.guidance, &r, dout);
        ops->mem_download(be, out, dout, bo);
        ops->mem_free(be, dtok);
        ops->mem_free(be, daud);
        ops->mem_free(be, dout);
        ops->mem_free(be, dht);
        ops->mem_free(be, dha);
    }
    data_image_to_u8(out, (int)(n * npix), rgb);
    if (mm_mkdirs(a->out, err) != 0) goto done;
    char path[4200];
    for (int b = 0; b < n; b++) {
        snprintf(path, sizeof(path), "%s/sample_%03d.png", a->out, b);
        if (data_png_write(path, rgb + (size_t)b * npix, sc.img_h, sc.img_w, sc.img_c, err))
            goto done;
    }
    {
        int cols = n < 8 ? n : 8, gh = 0, gw = 0, pad = 2;
        int rows = (n + cols - 1) / cols;
        uint8_t *grid = mm_calloc((size_t)(rows * (sc.img_h + pad) + pad) *
                                      (cols * (sc.img_w + pad) + pad) * sc.img_c, 1);
        data_image_grid(rgb, n, sc.img_h, sc.img_w, sc.img_c, cols, pad, grid, &gh, &gw);
        snprintf(path, sizeof(path), "%s/grid.png", a->out);
        int wrc = data_png_write(path, grid, gh, gw, sc.img_c, err);
        free(grid);
        if (wrc) goto done;
    }
    printf("sample: %d image(s) from %s (step %lld) in %s (grid.png); %.1f s, %d thread%s\n", n, ck,
           (long long)meta.step, a->out, mm_now() - t0, a->threads, a->threads == 1 ? "" : "s");
    rc = 0;
done:
    if (feat) data_featurizer_free(feat);
    dit_free(m);
    mm_backend_free(be);
    free(ema);
    free(tokens);
    free(audio);
    free(has_text);
    free(has_audio);
    free(out);
    free(rgb);
    free(pcm);
    return rc;
}

int train_sample_main(int argc, char **argv, comm_group *world, mm_err *err) {
    if (comm_size(world) != 1) return mm_fail(err, "sample: run it as a single process");
    sample_args a;
    if (parse_args(argc, argv, &a, err) != 0) return -1;
    a.threads = train_set_threads(a.threads);
    return run_sample(&a, err);
}
