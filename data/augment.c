// augment.c: random changes to training samples, so that a model trained on a few thousand
// samples sees each one differently in every epoch and learns what does not change under
// them. It runs in the loader thread on the decoded batch (the model never waits for it)
// and draws everything from (seed, sample_id, epoch), the loader's promise extended: a
// sample is changed the same way whatever the ranks, the micro-batches or a resume.
//
// Images: random resized crop (Szegedy et al. 2015, as torchvision's RandomResizedCrop, with
// the aspect stretch taken against the image's own so that scale 1 and ratio 1 keep it
// whole), flip, translation, colour jitter. The crop box is never larger than the image, so
// resampling it back always enlarges and bilinear needs no low-pass filter first.
//
// Audio: the batch holds normalised log-mel features (audio.c), not PCM, so every audio
// transform works on them: re-featurising a changed waveform would cost an FFT per frame
// again, for changes the features express directly.
//  - time shift moves whole frames (a hop of samples each; 16 ms at the defaults): for
//    every frame whose window lies inside the clip it is exactly the featurised shifted
//    waveform, and the frames that come in are digital silence, as the zero padding of a
//    short clip already is. Finer shifts than a hop would only change each window's phase,
//    which the power spectrum drops.
//  - gain scales the mel power by g^2, inverted through the fixed normalisation and its
//    floor, so silence stays silence and 0 dB changes nothing (the clipping a louder int16
//    waveform would suffer is not modelled).
//  - SpecAugment masks (Park et al. 2019, "SpecAugment: A Simple Data Augmentation Method
//    for Automatic Speech Recognition", section 2): each of N masks takes a width drawn in
//    [0, W] and a first frame (band) drawn so that the mask fits, and sets the region to the
//    mean of the features, which after the fixed normalisation is 0.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "data_internal.h"

// ---------------------------------------------------------------------------------------
// Transforms.

static int clampi(int v, int lo, int hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}
static float clampf(float v) {
    return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
}

// Where output pixel i of n samples the box [at, at + len) of a side of n pixels: its
// centre maps to the box's, clamped to the pixel centres; *i0, *i1 the neighbours, *f the
// weight of *i1.
static void sample_at(int i, int n, double at, double len, int *i0, int *i1, float *f) {
    double s = at + ((double)i + 0.5) * (len / (double)n) - 0.5;
    if (s < 0.0) s = 0.0;
    if (s > (double)(n - 1)) s = (double)(n - 1);
    int k = (int)s;
    *i0 = k;
    *i1 = k + 1 < n ? k + 1 : k;
    *f = (float)(s - (double)k);
}

void data_aug_crop(const float *src, int h, int w, int c, double y0, double x0, double bh,
                   double bw, float *dst) {
    for (int i = 0; i < h; i++) {
        int ya, yb;
        float fy;
        sample_at(i, h, y0, bh, &ya, &yb, &fy);
        for (int j = 0; j < w; j++) {
            int xa, xb;
            float fx;
            sample_at(j, w, x0, bw, &xa, &xb, &fx);
            const float *p00 = src + ((size_t)ya * w + xa) * c,
                        *p01 = src + ((size_t)ya * w + xb) * c;
            const float *p10 = src + ((size_t)yb * w + xa) * c,
                        *p11 = src + ((size_t)yb * w + xb) * c;
            float *o = dst + ((size_t)i * w + j) * c;
            for (int k = 0; k < c; k++) {
                float top = p00[k] * (1.0f - fx) + p01[k] * fx;
                float bot = p10[k] * (1.0f - fx) + p11[k] * fx;
                o[k] = top * (1.0f - fy) + bot * fy;
            }
        }
    }
}

void data_aug_flip(float *img, int h, int w, int c) {
    for (int i = 0; i < h; i++) {
        float *row = img + (size_t)i * w * c;
        for (int a = 0, b = w - 1; a < b; a++, b--)
            for (int k = 0; k < c; k++) {
                float t = row[(size_t)a * c + k];
                row[(size_t)a * c + k] = row[(size_t)b * c + k];
                row[(size_t)b * c + k] = t;
            }
    }
}

void data_aug_translate(const float *src, int h, int w, int c, int dy, int dx, float *dst) {
    for (int i = 0; i < h; i++) {
        int si = clampi(i - dy, 0, h - 1);
        for (int j = 0; j < w; j++) {
            int sj = clampi(j - dx, 0, w - 1);
            memcpy(dst + ((size_t)i * w + j) * c, src + ((size_t)si * w + sj) * c,
                   sizeof(float) * (size_t)c);
        }
    }
}

// Grey of one pixel's colour channels (nc = 1 or 3).
static float grey(const float *p, int nc) {
    return nc == 3 ? 0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2] : p[0];
}

void data_aug_jitter(float *img, int h, int w, int c, float brightness, float contrast,
                     float saturation) {
    size_t n = (size_t)h * w;
    int nc = c >= 3 ? 3 : 1;
    if (brightness != 1.0f)  // on the intensity x + 1 in [0, 2], so black stays black
        for (size_t p = 0; p < n; p++)
            for (int k = 0; k < nc; k++) {
                float *v = img + p * c + k;
                *v = clampf((*v + 1.0f) * brightness - 1.0f);
            }
    if (contrast != 1.0f) {
        double sum = 0.0;
        for (size_t p = 0; p < n; p++) sum += grey(img + p * c, nc);
        float mean = (float)(sum / (double)n);
        for (size_t p = 0; p < n; p++)
            for (int k = 0; k < nc; k++) {
                float *v = img + p * c + k;
                *v = clampf(mean + (*v - mean) * contrast);
            }
    }
    if (saturation != 1.0f && nc == 3)
        for (size_t p = 0; p < n; p++) {
            float *v = img + p * c, g = grey(v, 3);
            for (int k = 0; k < 3; k++) v[k] = clampf(g + (v[k] - g) * saturation);
        }
}

void data_aug_shift(float *feat, int F, int M, int k) {
    if (k >= F || k <= -F) k = k > 0 ? F : -F;  // everything moves out
    size_t row = (size_t)M, keep = (size_t)(F - abs(k));
    float sil = data_logmel_silence();
    if (k > 0) {
        memmove(feat + (size_t)k * row, feat, sizeof(float) * keep * row);
        for (size_t i = 0; i < (size_t)k * row; i++) feat[i] = sil;
    } else if (k < 0) {
        memmove(feat, feat + (size_t)(-k) * row, sizeof(float) * keep * row);
        for (size_t i = keep * row; i < (size_t)F * row; i++) feat[i] = sil;
    }
}

// With y = x std + mean = ln(mel + floor) and r = floor / (mel + floor) in (0, 1]:
// ln(g^2 mel + floor) = y + ln(g^2 - (g^2 - 1) r). Written this way, g = 1 adds ln(1) = 0
// exactly, and r = 1 (silence) adds 0 for any g.
void data_aug_gain(float *feat, size_t n, float db) {
    float g2 = powf(10.0f, db / 10.0f);
    for (size_t i = 0; i < n; i++) {
        float y = feat[i] * DATA_LOGMEL_STD + DATA_LOGMEL_MEAN;
        float r = DATA_LOGMEL_FLOOR / expf(y);
        if (r > 1.0f) r = 1.0f;  // rounding at the floor
        feat[i] += logf(g2 - (g2 - 1.0f) * r) / DATA_LOGMEL_STD;
    }
}

void data_aug_mask_time(float *feat, int F, int M, int at, int width) {
    MM_CHECK(at >= 0 && width >= 0 && at + width <= F, "time mask [%d, %d) outside %d frames", at,
             at + width, F);
    memset(feat + (size_t)at * M, 0, sizeof(float) * (size_t)width * M);
}

void data_aug_mask_freq(float *feat, int F, int M, int at, int width) {
    MM_CHECK(at >= 0 && width >= 0 && at + width <= M, "freq mask [%d, %d) outside %d bands", at,
             at + width, M);
    for (int t = 0; t < F; t++) memset(feat + (size_t)t * M + at, 0, sizeof(float) * width);
}

// ---------------------------------------------------------------------------------------
// Settings and draws.

static int crop_on(const data_augment_cfg *a) {
    return (a->crop_scale > 0.0 && a->crop_scale < 1.0) || a->crop_ratio > 1.0;
}
static int jitter_on(const data_augment_cfg *a) {
    return a->brightness > 0.0 || a->contrast > 0.0 || a->saturation > 0.0;
}

int data_augment_on(const data_augment_cfg *a) {
    return crop_on(a) || a->flip || a->translate > 0 || jitter_on(a) || a->audio_shift > 0 ||
           a->audio_gain_db > 0.0 || (a->time_masks > 0 && a->time_mask_width > 0) ||
           (a->freq_masks > 0 && a->freq_mask_width > 0);
}

int data_augment_check(const data_augment_cfg *a, int h, int w, int c, int frames, int n_mels,
                       mm_err *err) {
    if (!(a->crop_scale >= 0.0 && a->crop_scale <= 1.0))
        return mm_fail(err, "augment.crop_scale = %g must be in [0, 1] (0 or 1: no crop)",
                       a->crop_scale);
    if (!(a->crop_ratio == 0.0 || (a->crop_ratio >= 1.0 && a->crop_ratio <= 10.0)))
        return mm_fail(err, "augment.crop_ratio = %g must be 0 or in [1, 10] (0 or 1: no stretch)",
                       a->crop_ratio);
    int side = h < w ? h : w;
    if (a->translate < 0 || a->translate >= side)
        return mm_fail(err, "augment.translate = %d must be in [0, %d): the images are %d x %d",
                       a->translate, side, h, w);
    const double js[3] = {a->brightness, a->contrast, a->saturation};
    const char *jn[3] = {"brightness", "contrast", "saturation"};
    for (int i = 0; i < 3; i++)
        if (!(js[i] >= 0.0 && js[i] <= 1.0))
            return mm_fail(err, "augment.%s = %g must be in [0, 1]", jn[i], js[i]);
    if (a->saturation > 0.0 && c < 3)
        return mm_fail(err,
                       "augment.saturation = %g needs colour images; these have %d channel%s "
                       "(use brightness and contrast)",
                       a->saturation, c, c == 1 ? "" : "s");
    if (a->audio_shift < 0 || a->audio_shift >= frames)
        return mm_fail(err, "augment.audio_shift = %d must be in [0, %d): a clip has %d frames",
                       a->audio_shift, frames, frames);
    if (!(a->audio_gain_db >= 0.0 && a->audio_gain_db <= 60.0))
        return mm_fail(err, "augment.audio_gain_db = %g must be in [0, 60]", a->audio_gain_db);
    if (a->time_masks < 0 || a->time_masks > DATA_AUG_MAX_MASKS || a->freq_masks < 0 ||
        a->freq_masks > DATA_AUG_MAX_MASKS)
        return mm_fail(err,
                       "augment.time_masks = %d, augment.freq_masks = %d: each must be in "
                       "[0, %d]",
                       a->time_masks, a->freq_masks, DATA_AUG_MAX_MASKS);
    if (a->time_mask_width < 0 || a->time_mask_width > frames)
        return mm_fail(err, "augment.time_mask_width = %d must be in [0, %d]: a clip has %d frames",
                       a->time_mask_width, frames, frames);
    if (a->freq_mask_width < 0 || a->freq_mask_width > n_mels)
        return mm_fail(err, "augment.freq_mask_width = %d must be in [0, %d], the mel bands",
                       a->freq_mask_width, n_mels);
    return 0;
}

// The finaliser of splitmix64: a bijection that spreads every input bit over the output.
static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

// Each transform draws from its own stream of the sample's key, so that turning one on or
// off leaves the others' draws as they were.
enum { S_CROP, S_FLIP, S_TRANSLATE, S_JITTER, S_SHIFT, S_GAIN, S_TIME, S_FREQ };

static float sym(mm_rng *r, double s) {  // uniform in [-s, s]
    return (float)(s * (2.0 * (double)mm_rng_uniform(r) - 1.0));
}
static int sym_int(mm_rng *r, int s) {  // uniform integer in [-s, s]
    return (int)mm_rng_below(r, 2 * (uint64_t)s + 1) - s;
}

void data_augment_draw(const data_augment_cfg *a, uint64_t seed, uint64_t sample_id, int64_t epoch,
                       int h, int w, int frames, int n_mels, data_aug_draw *d) {
    memset(d, 0, sizeof(*d));
    d->brightness = d->contrast = d->saturation = 1.0f;
    // "augment" as the salt keeps these streams apart from the sampler's (seed, epoch) ones
    uint64_t key = mix64(mix64(mix64(seed ^ 0x61756d656e74ULL) ^ sample_id) ^ (uint64_t)epoch);
    mm_rng r;
    if (crop_on(a)) {
        mm_rng_init(&r, key, S_CROP);
        double smin = a->crop_scale > 0.0 ? a->crop_scale : 1.0;
        double lr = a->crop_ratio > 1.0 ? log(a->crop_ratio) : 0.0;
        double area = smin + (1.0 - smin) * (double)mm_rng_uniform(&r);
        double ratio = exp(lr * (2.0 * (double)mm_rng_uniform(&r) - 1.0));
        d->crop = 1;
        d->crop_w = fmin((double)w * sqrt(area * ratio), (double)w);
        d->crop_h = fmin((double)h * sqrt(area / ratio), (double)h);
        d->crop_x = ((double)w - d->crop_w) * (double)mm_rng_uniform(&r);
        d->crop_y = ((double)h - d->crop_h) * (double)mm_rng_uniform(&r);
    }
    if (a->flip) {
        mm_rng_init(&r, key, S_FLIP);
        d->flip = mm_rng_uniform(&r) < 0.5f;
    }
    if (a->translate > 0) {
        mm_rng_init(&r, key, S_TRANSLATE);
        d->dy = sym_int(&r, a->translate);
        d->dx = sym_int(&r, a->translate);
    }
    if (jitter_on(a)) {
        mm_rng_init(&r, key, S_JITTER);
        d->brightness = 1.0f + sym(&r, a->brightness);
        d->contrast = 1.0f + sym(&r, a->contrast);
        d->saturation = 1.0f + sym(&r, a->saturation);
    }
    if (a->audio_shift > 0) {
        mm_rng_init(&r, key, S_SHIFT);
        d->shift = sym_int(&r, a->audio_shift);
    }
    if (a->audio_gain_db > 0.0) {
        mm_rng_init(&r, key, S_GAIN);
        d->gain_db = sym(&r, a->audio_gain_db);
    }
    if (a->time_mask_width > 0) {
        mm_rng_init(&r, key, S_TIME);
        d->n_time = a->time_masks;
        for (int m = 0; m < d->n_time; m++) {
            int wd = (int)mm_rng_below(&r, (uint64_t)a->time_mask_width + 1);
            if (wd > frames) wd = frames;
            d->time_w[m] = wd;
            d->time_at[m] = (int)mm_rng_below(&r, (uint64_t)(frames - wd) + 1);
        }
    }
    if (a->freq_mask_width > 0) {
        mm_rng_init(&r, key, S_FREQ);
        d->n_freq = a->freq_masks;
        for (int m = 0; m < d->n_freq; m++) {
            int wd = (int)mm_rng_below(&r, (uint64_t)a->freq_mask_width + 1);
            if (wd > n_mels) wd = n_mels;
            d->freq_w[m] = wd;
            d->freq_at[m] = (int)mm_rng_below(&r, (uint64_t)(n_mels - wd) + 1);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The loader thread's augmenter.

void data_augmenter_init(data_augmenter *g, const data_augment_cfg *cfg, uint64_t seed) {
    memset(g, 0, sizeof(*g));
    g->cfg = *cfg;
    g->seed = seed;
    g->on = data_augment_on(cfg);
}

void data_augmenter_free(data_augmenter *g) {
    free(g->scratch);
    memset(g, 0, sizeof(*g));
}

void data_augment_batch(data_augmenter *g, data_batch *b, int64_t epoch) {
    if (!g->on) return;
    int h = b->img_h, w = b->img_w, c = b->img_c, F = b->audio_F, M = b->n_mels;
    size_t npix = (size_t)h * w * c, nfeat = (size_t)F * M;
    if (g->scratch_n < npix) {
        free(g->scratch);
        g->scratch = mm_malloc(sizeof(float) * npix);
        g->scratch_n = npix;
    }
    for (int i = 0; i < b->B; i++) {
        data_aug_draw d;
        data_augment_draw(&g->cfg, g->seed, b->sample_id[i], epoch, h, w, F, M, &d);
        if (b->has_image[i]) {
            float *img = b->image + (size_t)i * npix;
            if (d.crop) {
                data_aug_crop(img, h, w, c, d.crop_y, d.crop_x, d.crop_h, d.crop_w, g->scratch);
                memcpy(img, g->scratch, sizeof(float) * npix);
            }
            if (d.flip) data_aug_flip(img, h, w, c);
            if (d.dy || d.dx) {
                data_aug_translate(img, h, w, c, d.dy, d.dx, g->scratch);
                memcpy(img, g->scratch, sizeof(float) * npix);
            }
            data_aug_jitter(img, h, w, c, d.brightness, d.contrast, d.saturation);
        }
        if (b->has_audio[i]) {
            float *feat = b->audio + (size_t)i * nfeat;
            if (d.shift) data_aug_shift(feat, F, M, d.shift);
            if (d.gain_db != 0.0f) data_aug_gain(feat, nfeat, d.gain_db);
            for (int m = 0; m < d.n_time; m++)
                data_aug_mask_time(feat, F, M, d.time_at[m], d.time_w[m]);
            for (int m = 0; m < d.n_freq; m++)
                data_aug_mask_freq(feat, F, M, d.freq_at[m], d.freq_w[m]);
        }
    }
}
