// test_augment.c: the augmentation of training samples (data/augment.c). Each transform is
// checked for a property that must hold whatever its code looks like: a flip twice and the
// neutral settings (whole-box crop, no shift, 0 dB, factors 1) give the input back bit for
// bit; bilinear resampling reproduces a linear ramp; a gain equals featurising the scaled
// waveform; masks zero exactly the drawn region. Then the promise the loader relies on:
// draws depend on (seed, sample id, epoch) only, so a loader's augmented batches equal
// reading and augmenting the same samples by hand, at any dp split; and the config keys'
// defaults are off and bad values are one-line errors naming the key.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../data/data.h"
#include "../data/data_internal.h"
#include "../train/config.h"
#include "test.h"

static void fill_random(float *x, size_t n, uint64_t seed) {
    mm_rng r;
    mm_rng_init(&r, seed, 0);
    for (size_t i = 0; i < n; i++) x[i] = 2.0f * mm_rng_uniform(&r) - 1.0f;
}

static int same(const float *a, const float *b, size_t n) {
    return memcmp(a, b, sizeof(float) * n) == 0;
}

// ---------------------------------------------------------------------------------------
// Images.
static void test_image_transforms(test_counts *tc) {
    enum { H = 7, W = 10, C = 3, N = H * W * C };
    float src[N], a[N], b[N];
    fill_random(src, N, 1);

    memcpy(a, src, sizeof(a));
    data_aug_flip(a, H, W, C);
    TEST_CHECK(tc, !same(a, src, N), "a flip changes the image");
    TEST_CHECK(tc, a[0] == src[(W - 1) * C] && a[C * W - 1] == src[C - 1],
               "a flip swaps the first and last column");
    data_aug_flip(a, H, W, C);
    TEST_CHECK(tc, same(a, src, N), "flip twice = identity (even width)");
    float odd[5 * 3], odd0[5 * 3];
    fill_random(odd, 15, 2);
    memcpy(odd0, odd, sizeof(odd));
    data_aug_flip(odd, 1, 5, 3);
    TEST_CHECK(tc, memcmp(odd + 6, odd0 + 6, 3 * sizeof(float)) == 0, "odd width: middle stays");
    data_aug_flip(odd, 1, 5, 3);
    TEST_CHECK(tc, same(odd, odd0, 15), "flip twice = identity (odd width)");

    data_aug_crop(src, H, W, C, 0.0, 0.0, H, W, a);
    TEST_CHECK(tc, same(a, src, N), "crop of the whole image = identity, bit for bit");

    // Bilinear resampling reproduces a linear function exactly (to rounding): on the ramp
    // v = 0.1 y - 0.05 x + 0.01 k, output pixel (i, j) of box (y0, x0, bh, bw) must hold the
    // ramp at its sampling point y0 + (i + 0.5) bh / H - 0.5 (inside the image here).
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int k = 0; k < C; k++) b[(y * W + x) * C + k] = 0.1f * y - 0.05f * x + 0.01f * k;
    double y0 = 1.25, x0 = 2.5, bh = 4.0, bw = 5.5;
    data_aug_crop(b, H, W, C, y0, x0, bh, bw, a);
    double worst = 0.0;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++)
            for (int k = 0; k < C; k++) {
                double sy = y0 + (i + 0.5) * bh / H - 0.5, sx = x0 + (j + 0.5) * bw / W - 0.5;
                double want = 0.1 * sy - 0.05 * sx + 0.01 * k;
                double d = fabs(a[(i * W + j) * C + k] - want);
                if (d > worst) worst = d;
            }
    TEST_CHECK(tc, worst < 1e-6, "crop resamples a ramp to the ramp: worst error %g", worst);

    data_aug_translate(src, H, W, C, 0, 0, a);
    TEST_CHECK(tc, same(a, src, N), "translation by 0 = identity");
    data_aug_translate(src, H, W, C, 2, -3, a);
    int moved = 1, edge = 1;
    for (int i = 0; i < H; i++)
        for (int j = 0; j < W; j++) {
            int si = i - 2, sj = j + 3;
            const float *want =
                src + ((size_t)(si < 0 ? 0 : si) * W + (sj > W - 1 ? W - 1 : sj)) * C;
            int inside = si >= 0 && sj <= W - 1;
            int eq = memcmp(a + ((size_t)i * W + j) * C, want, sizeof(float) * C) == 0;
            if (inside)
                moved &= eq;
            else
                edge &= eq;
        }
    TEST_CHECK(tc, moved, "translation (2, -3) moves the content down 2 and left 3");
    TEST_CHECK(tc, edge, "translation fills the gap with the nearest border pixel");

    memcpy(a, src, sizeof(a));
    data_aug_jitter(a, H, W, C, 1.0f, 1.0f, 1.0f);
    TEST_CHECK(tc, same(a, src, N), "jitter factors 1 = identity");
    data_aug_jitter(a, H, W, C, 1.0f, 1.0f, 0.0f);
    int grey = 1;
    for (int p = 0; p < H * W; p++) grey &= a[p * C] == a[p * C + 1] && a[p * C] == a[p * C + 2];
    TEST_CHECK(tc, grey, "saturation 0 leaves only grey pixels");
    float g1[H * W];
    fill_random(g1, H * W, 3);
    data_aug_jitter(g1, H, W, 1, 1.0f, 0.0f, 1.0f);
    double mean = 0.0;
    fill_random(b, H * W, 3);
    for (int p = 0; p < H * W; p++) mean += b[p];
    mean /= H * W;
    int flat = 1;
    for (int p = 0; p < H * W; p++) flat &= fabs(g1[p] - mean) < 1e-6;
    TEST_CHECK(tc, flat, "contrast 0 on a grey image gives its mean everywhere");
    float px[4] = {-1.0f, 0.0f, 0.5f, 1.0f};
    data_aug_jitter(px, 1, 4, 1, 1.5f, 1.0f, 1.0f);
    TEST_CHECK(tc, px[0] == -1.0f && px[1] == 0.5f && px[2] == 1.0f && px[3] == 1.0f,
               "brightness 1.5: black stays, mid-grey brightens, white clips: %g %g %g %g", px[0],
               px[1], px[2], px[3]);
    float rgba[4] = {0.2f, -0.4f, 0.6f, 0.3f};
    data_aug_jitter(rgba, 1, 1, 4, 0.5f, 1.0f, 0.0f);
    TEST_CHECK(tc, rgba[3] == 0.3f, "the alpha channel is not jittered");
}

// ---------------------------------------------------------------------------------------
// Audio.
static void test_audio_transforms(test_counts *tc) {
    enum { F = 12, M = 8, N = F * M };
    float src[N], a[N];
    fill_random(src, N, 4);
    float sil = data_logmel_silence();

    memcpy(a, src, sizeof(a));
    data_aug_shift(a, F, M, 0);
    TEST_CHECK(tc, same(a, src, N), "shift by 0 = identity");
    data_aug_shift(a, F, M, 3);
    int ok = memcmp(a + 3 * M, src, sizeof(float) * (F - 3) * M) == 0;
    for (int i = 0; i < 3 * M; i++) ok &= a[i] == sil;
    TEST_CHECK(tc, ok, "shift by 3: frames move 3 later, silence comes in");
    memcpy(a, src, sizeof(a));
    data_aug_shift(a, F, M, -5);
    ok = memcmp(a, src + 5 * M, sizeof(float) * (F - 5) * M) == 0;
    for (int i = (F - 5) * M; i < N; i++) ok &= a[i] == sil;
    TEST_CHECK(tc, ok, "shift by -5: frames move 5 earlier, silence comes in at the end");

    memcpy(a, src, sizeof(a));
    data_aug_gain(a, N, 0.0f);
    TEST_CHECK(tc, same(a, src, N), "gain of 0 dB = identity, bit for bit");
    data_aug_gain(a, N, 6.0f);
    data_aug_gain(a, N, -6.0f);
    double worst = 0.0;
    for (int i = 0; i < N; i++) worst = fmax(worst, fabs(a[i] - src[i]));
    TEST_CHECK(tc, worst < 1e-4, "+6 dB then -6 dB gives the features back: worst %g", worst);
    float s[4] = {sil, sil, sil, sil};
    data_aug_gain(s, 4, 20.0f);
    TEST_CHECK(tc, fabsf(s[0] - sil) < 1e-5f, "silence stays silence under +20 dB: %g vs %g", s[0],
               sil);

    // Against the featurizer: halving the waveform scales every power by 1/4 exactly in
    // float (a power of two), so the features of pcm / 2 are those of pcm at -6.0206 dB.
    data_schema sc = {.n_samples = 1,
                      .img_h = 1,
                      .img_w = 1,
                      .img_c = 1,
                      .audio_rate = 8000,
                      .audio_len = 1024,
                      .text_max = 4};
    data_audio_cfg ac = {.n_fft = 256, .hop = 128, .n_mels = 16};
    data_featurizer *f = data_featurizer_new(&sc, &ac);
    int Fr = data_audio_frames(&sc, &ac);
    int16_t pcm[1024], half[1024], zero[1024] = {0};
    mm_rng r;
    mm_rng_init(&r, 9, 0);
    for (int i = 0; i < 1024; i++) {
        int v = 2 * (int)(mm_rng_below(&r, 8001) - 4000) + (int)(3000 * sin(i * 0.3));
        v &= ~1;  // even, so that halving is exact
        pcm[i] = (int16_t)v;
        half[i] = (int16_t)(v / 2);
    }
    float *fa = mm_malloc(sizeof(float) * Fr * 16), *fb = mm_malloc(sizeof(float) * Fr * 16);
    data_featurize_audio(f, pcm, 700, fa);  // the end is zero padding: silence frames too
    data_featurize_audio(f, half, 700, fb);
    data_aug_gain(fa, (size_t)Fr * 16, (float)(20.0 * log10(0.5)));
    worst = 0.0;
    for (int i = 0; i < Fr * 16; i++) worst = fmax(worst, fabs(fa[i] - fb[i]));
    TEST_CHECK(tc, worst < 2e-4, "gain -6.02 dB = featurising pcm / 2: worst %g", worst);
    data_featurize_audio(f, zero, 0, fa);
    TEST_CHECK(tc, fa[0] == sil && fa[Fr * 16 - 1] == sil,
               "data_logmel_silence is what the featurizer gives for silence (%g vs %g)", fa[0],
               sil);
    free(fa);
    free(fb);
    data_featurizer_free(f);

    float ones[N];
    for (int i = 0; i < N; i++) ones[i] = 1.0f;
    memcpy(a, ones, sizeof(a));
    data_aug_mask_time(a, F, M, 4, 3);
    ok = 1;
    for (int t = 0; t < F; t++)
        for (int m = 0; m < M; m++) ok &= a[t * M + m] == ((t >= 4 && t < 7) ? 0.0f : 1.0f);
    TEST_CHECK(tc, ok, "time mask [4, 7) zeroes exactly those frames");
    memcpy(a, ones, sizeof(a));
    data_aug_mask_freq(a, F, M, 6, 2);
    ok = 1;
    for (int t = 0; t < F; t++)
        for (int m = 0; m < M; m++) ok &= a[t * M + m] == (m >= 6 ? 0.0f : 1.0f);
    TEST_CHECK(tc, ok, "frequency mask [6, 8) zeroes exactly those bands");
    memcpy(a, ones, sizeof(a));
    data_aug_mask_time(a, F, M, 5, 0);
    TEST_CHECK(tc, same(a, ones, N), "a mask of width 0 changes nothing");
}

// ---------------------------------------------------------------------------------------
// Draws.
static data_augment_cfg all_on(void) {
    return (data_augment_cfg){.crop_scale = 0.5,
                              .crop_ratio = 1.5,
                              .flip = 1,
                              .translate = 3,
                              .brightness = 0.3,
                              .contrast = 0.3,
                              .saturation = 0.3,
                              .audio_shift = 4,
                              .audio_gain_db = 6,
                              .time_masks = 2,
                              .time_mask_width = 5,
                              .freq_masks = 2,
                              .freq_mask_width = 4};
}

static void test_draws(test_counts *tc) {
    data_augment_cfg off = {0}, on = all_on();
    TEST_CHECK(tc, !data_augment_on(&off), "a zero cfg is off");
    data_augment_cfg neutral = {.crop_scale = 1, .crop_ratio = 1};
    TEST_CHECK(tc, !data_augment_on(&neutral), "crop scale 1 and ratio 1 is off");
    TEST_CHECK(tc, data_augment_on(&on), "all on is on");
    data_aug_draw d, e;
    data_augment_draw(&on, 7, 42, 3, 28, 20, 30, 32, &d);
    data_augment_draw(&on, 7, 42, 3, 28, 20, 30, 32, &e);
    TEST_CHECK(tc, memcmp(&d, &e, sizeof(d)) == 0, "same (seed, id, epoch): same draw");
    data_augment_draw(&on, 7, 42, 4, 28, 20, 30, 32, &e);
    TEST_CHECK(tc, memcmp(&d, &e, sizeof(d)) != 0, "another epoch: another draw");
    data_augment_draw(&on, 7, 43, 3, 28, 20, 30, 32, &e);
    TEST_CHECK(tc, memcmp(&d, &e, sizeof(d)) != 0, "another sample: another draw");
    data_augment_draw(&on, 8, 42, 3, 28, 20, 30, 32, &e);
    TEST_CHECK(tc, memcmp(&d, &e, sizeof(d)) != 0, "another seed: another draw");

    // Each transform has its own stream: the crop drawn alone is the crop drawn with the rest.
    data_augment_cfg crop_only = {.crop_scale = 0.5, .crop_ratio = 1.5};
    data_augment_draw(&crop_only, 7, 42, 3, 28, 20, 30, 32, &e);
    TEST_CHECK(tc,
               e.crop && e.crop_x == d.crop_x && e.crop_h == d.crop_h && !e.flip && e.n_time == 0 &&
                   e.brightness == 1.0f,
               "the crop's draw does not depend on the other transforms being on");

    // The draws over many samples stay inside their ranges and reach both ends.
    int bad = 0, flips = 0, dxs[7] = {0}, shifts[9] = {0};
    double amin = 1, amax = 0;
    for (uint64_t id = 0; id < 2000; id++) {
        data_augment_draw(&on, 1, id, 0, 28, 20, 30, 32, &d);
        double area = d.crop_h * d.crop_w / (28.0 * 20.0);
        amin = fmin(amin, area), amax = fmax(amax, area);
        bad += d.crop_y < 0 || d.crop_x < 0 || d.crop_y + d.crop_h > 28 + 1e-9 ||
               d.crop_x + d.crop_w > 20 + 1e-9 || area < 0.5 - 1e-9;
        bad += d.brightness < 0.7f || d.brightness > 1.3f || abs(d.dx) > 3 || abs(d.dy) > 3 ||
               abs(d.shift) > 4 || fabsf(d.gain_db) > 6.0f || d.n_time != 2 || d.n_freq != 2;
        for (int m = 0; m < 2; m++)
            bad += d.time_w[m] > 5 || d.time_at[m] + d.time_w[m] > 30 || d.freq_w[m] > 4 ||
                   d.freq_at[m] + d.freq_w[m] > 32 || d.time_at[m] < 0 || d.freq_at[m] < 0;
        flips += d.flip;
        dxs[d.dx + 3]++;
        shifts[d.shift + 4]++;
    }
    int all_dx = 1, all_shift = 1;
    for (int i = 0; i < 7; i++) all_dx &= dxs[i] > 0;
    for (int i = 0; i < 9; i++) all_shift &= shifts[i] > 0;
    TEST_CHECK(tc, bad == 0, "%d draws out of range", bad);
    TEST_CHECK(tc, flips > 900 && flips < 1100, "flips in 2000 draws: %d (about half)", flips);
    TEST_CHECK(tc, all_dx && all_shift, "every shift in [-3, 3] pixels and [-4, 4] frames drawn");
    TEST_CHECK(tc, amin < 0.52 && amax > 0.95, "crop area shares span [%.3f, %.3f]", amin, amax);

    // Masks on a batch zero exactly the drawn region (and augment nothing absent).
    data_schema s = {.n_samples = 4,
                     .img_h = 6,
                     .img_w = 5,
                     .img_c = 3,
                     .audio_rate = 8000,
                     .audio_len = 1024,
                     .text_max = 4};
    data_audio_cfg ac = {.n_fft = 128, .hop = 64, .n_mels = 8};
    data_batch b;
    data_batch_alloc(&b, 4, &s, &ac);
    b.B = 4;
    size_t nf = (size_t)b.audio_F * b.n_mels, np = 6 * 5 * 3;
    for (size_t i = 0; i < 4 * nf; i++) b.audio[i] = 1.0f;
    fill_random(b.image, 4 * np, 5);
    float *img0 = mm_malloc(sizeof(float) * 4 * np);
    memcpy(img0, b.image, sizeof(float) * 4 * np);
    for (int i = 0; i < 4; i++) {
        b.sample_id[i] = 100 + (uint64_t)i;
        b.has_image[i] = i != 1;
        b.has_audio[i] = i != 2;
    }
    data_augment_cfg masks = {
        .time_masks = 3, .time_mask_width = 6, .freq_masks = 2, .freq_mask_width = 3};
    data_augmenter g;
    data_augmenter_init(&g, &masks, 77);
    data_augment_batch(&g, &b, 5);
    int exact = 1, counted = 0;
    for (int i = 0; i < 4; i++) {
        data_augment_draw(&masks, 77, b.sample_id[i], 5, 6, 5, b.audio_F, b.n_mels, &d);
        for (int t = 0; t < b.audio_F; t++)
            for (int m = 0; m < b.n_mels; m++) {
                int in = 0;
                for (int k = 0; k < d.n_time; k++)
                    in |= t >= d.time_at[k] && t < d.time_at[k] + d.time_w[k];
                for (int k = 0; k < d.n_freq; k++)
                    in |= m >= d.freq_at[k] && m < d.freq_at[k] + d.freq_w[k];
                in &= b.has_audio[i];
                counted += in;
                exact &= b.audio[i * nf + (size_t)t * b.n_mels + m] == (in ? 0.0f : 1.0f);
            }
    }
    TEST_CHECK(tc, exact && counted > 0,
               "masks zero exactly the drawn regions (%d cells), nothing in a clip absent",
               counted);
    TEST_CHECK(tc, same(b.image, img0, 4 * np), "audio-only settings leave images alone");
    data_augmenter_free(&g);

    // The whole pipeline: same epoch, same batch; another epoch, another; absent image kept.
    data_augment_cfg every = all_on();
    every.translate = 2;
    every.time_mask_width = 3;
    every.audio_shift = 3;
    data_augmenter_init(&g, &every, 77);
    memcpy(b.image, img0, sizeof(float) * 4 * np);
    memset(b.image + np, 0, sizeof(float) * np);  // sample 1 has no image: zeros
    memcpy(img0, b.image, sizeof(float) * 4 * np);
    data_augment_batch(&g, &b, 1);
    float *out1 = mm_malloc(sizeof(float) * 4 * np);
    memcpy(out1, b.image, sizeof(float) * 4 * np);
    memcpy(b.image, img0, sizeof(float) * 4 * np);
    data_augment_batch(&g, &b, 1);
    TEST_CHECK(tc, same(b.image, out1, 4 * np), "same epoch twice: the same images");
    TEST_CHECK(tc, same(b.image + np, img0 + np, np), "a sample without image keeps its zeros");
    TEST_CHECK(tc, !same(b.image, img0, np), "an image is changed");
    memcpy(b.image, img0, sizeof(float) * 4 * np);
    data_augment_batch(&g, &b, 2);
    TEST_CHECK(tc, !same(b.image, out1, np), "another epoch: another image");
    data_augmenter_free(&g);
    free(out1);
    free(img0);
    data_batch_free(&b);
}

// ---------------------------------------------------------------------------------------
// Settings: data-dependent limits (loader) and the config keys.
static void expect_msg(test_counts *tc, int rc, const mm_err *e, const char *want) {
    TEST_CHECK(tc, rc == -1 && strstr(e->msg, want) && !strchr(e->msg, '\n'),
               "want a one-line error with '%s', got rc %d: %s", want, rc, e->msg);
}

static void test_settings(test_counts *tc) {
    mm_err e;
    data_augment_cfg a = all_on();
    TEST_CHECK(tc, data_augment_check(&a, 28, 20, 3, 30, 32, &e) == 0, "valid: %s", e.msg);
    a.translate = 20;
    expect_msg(tc, data_augment_check(&a, 28, 20, 3, 30, 32, &e), &e, "augment.translate = 20");
    a = all_on();
    expect_msg(tc, data_augment_check(&a, 28, 20, 1, 30, 32, &e), &e, "augment.saturation");
    a.saturation = 0;
    TEST_CHECK(tc, data_augment_check(&a, 28, 20, 1, 30, 32, &e) == 0, "grey, no saturation: %s",
               e.msg);
    a = all_on();
    a.audio_shift = 30;
    expect_msg(tc, data_augment_check(&a, 28, 20, 3, 30, 32, &e), &e, "augment.audio_shift = 30");
    a = all_on();
    a.time_mask_width = 31;
    expect_msg(tc, data_augment_check(&a, 28, 20, 3, 30, 32, &e), &e, "augment.time_mask_width");
    a = all_on();
    a.freq_mask_width = 33;
    expect_msg(tc, data_augment_check(&a, 28, 20, 3, 30, 32, &e), &e, "augment.freq_mask_width");

    mm_config c;
    mm_config_default(&c);
    TEST_CHECK(tc, !data_augment_on(&c.augment), "the config's defaults augment nothing");
    TEST_CHECK(tc, c.augment.crop_scale == 1.0 && c.augment.crop_ratio == 1.0,
               "crop defaults 1 and 1");
    expect_msg(tc, mm_config_set(&c, "augment.crop_scale=0", &e), &e, "augment.crop_scale");
    expect_msg(tc, mm_config_set(&c, "augment.brightness=1.5", &e), &e, "augment.brightness");
    expect_msg(tc, mm_config_set(&c, "augment.flip=maybe", &e), &e, "augment.flip");
    expect_msg(tc, mm_config_set(&c, "augment.crop=0.5", &e), &e, "augment.crop");
    TEST_CHECK(tc, mm_config_set(&c, "augment.time_masks=2", &e) == 0, "set: %s", e.msg);
    snprintf(c.data.train, sizeof(c.data.train), "d");
    expect_msg(tc, mm_config_validate(&c, &e), &e, "augment.time_mask_width (0)");
    TEST_CHECK(tc, mm_config_set(&c, "augment.time_mask_width=4", &e) == 0, "set: %s", e.msg);
    TEST_CHECK(tc, mm_config_validate(&c, &e) == 0, "masks and width: %s", e.msg);
    TEST_CHECK(tc, mm_config_set(&c, "augment.freq_mask_width=4", &e) == 0, "set: %s", e.msg);
    expect_msg(tc, mm_config_validate(&c, &e), &e, "augment.freq_masks (0)");

    // a YAML file: a bad value names file:line:col
    char path[] = "/tmp/test_augment_XXXXXX.yaml";
    int fd = mkstemps(path, 5);
    TEST_CHECK(tc, fd >= 0, "mkstemps");
    if (fd < 0) return;
    FILE *f = fdopen(fd, "w");
    fprintf(f, "data:\n  train: d\naugment:\n  translate: -2\n");
    fclose(f);
    expect_msg(tc, mm_config_load(&c, path, 0, NULL, &e), &e, ":4:14:");
    unlink(path);
}

// ---------------------------------------------------------------------------------------
// The loader: its batches are the samples read and augmented by hand with the epoch of their
// step, at dp 1 and dp 2 alike (evaluation, which reads without the loader: augment.sh).
static void test_loader(test_counts *tc, const char *root) {
    char dir[4200];
    mm_err e;
    data_synth_cfg sc;
    data_synth_default(&sc);
    TEST_CHECK(tc, data_synth_write(root, 24, 3, &sc, &e) == 0, "synth: %s", e.msg);
    snprintf(dir, sizeof(dir), "%s/train", root);
    data_audio_cfg ac = {.n_fft = 256, .hop = 128, .n_mels = 16};
    data_augment_cfg aug = all_on();
    enum { G = 8, STEPS = 7 };  // 3 steps per epoch: 7 steps span 3 epochs
    data_dataset *ds;
    TEST_CHECK(tc, data_dataset_open(&ds, dir, 1, &e) == 0, "open: %s", e.msg);
    if (!ds) return;
    const data_schema *s = data_dataset_schema(ds);
    data_featurizer *f = data_featurizer_new(s, &ac);
    data_augmenter g;
    data_augmenter_init(&g, &aug, 21);
    data_batch want;
    data_batch_alloc(&want, 4, s, &ac);
    size_t np = (size_t)s->img_h * s->img_w * s->img_c, nf = (size_t)want.audio_F * want.n_mels;
    for (int dp = 1; dp <= 2; dp++) {
        data_loader *l[2] = {0};
        for (int r = 0; r < dp; r++) {
            data_loader_cfg c = {.dir = dir,
                                 .seed = 21,
                                 .global_batch = G,
                                 .micro_batch = 4 / dp,
                                 .dp_rank = r,
                                 .dp_size = dp,
                                 .depth = 2,
                                 .verify = 0,
                                 .audio = ac,
                                 .augment = aug};
            TEST_CHECK(tc, data_loader_open(&l[r], &c, &e) == 0, "loader: %s", e.msg);
        }
        if (!l[0] || (dp == 2 && !l[1])) break;
        int mb = 4 / dp, accum = G / (mb * dp), mism = 0, changed = 0;
        data_pos pos = {0, 0};
        uint64_t *perm = mm_malloc(sizeof(uint64_t) * s->n_samples);
        for (int step = 0; step < STEPS; step++) {
            data_permutation(s->n_samples, 21, pos.epoch, perm);
            for (int k = 0; k < accum; k++)
                for (int r = 0; r < dp; r++) {
                    const data_batch *b = data_loader_next(l[r], &e);
                    if (!b) {
                        mism++;
                        continue;
                    }
                    uint64_t idx[4];
                    for (int j = 0; j < mb; j++)
                        idx[j] = perm[pos.offset + (uint64_t)(k * dp + r) * mb + (uint64_t)j];
                    data_dataset_read(ds, idx, mb, f, &want, &e);
                    float *img0 = mm_malloc(sizeof(float) * np * mb);
                    memcpy(img0, want.image, sizeof(float) * np * mb);
                    data_augment_batch(&g, &want, pos.epoch);
                    changed += !same(img0, want.image, np * mb);
                    free(img0);
                    mism += !same(b->image, want.image, np * mb) ||
                            !same(b->audio, want.audio, nf * mb) ||
                            memcmp(b->sample_id, want.sample_id, sizeof(uint64_t) * mb) != 0;
                }
            pos = data_pos_advance(pos, s->n_samples, G);
        }
        TEST_CHECK(tc, mism == 0 && changed > 0,
                   "dp %d: loader batches = samples read and augmented by (seed, id, epoch) "
                   "(%d differ, %d changed)",
                   dp, mism, changed);
        free(perm);
        for (int r = 0; r < dp; r++) data_loader_close(l[r]);
    }
    data_loader_cfg bad = {.dir = dir,
                           .seed = 1,
                           .global_batch = 4,
                           .micro_batch = 4,
                           .dp_size = 1,
                           .depth = 1,
                           .audio = ac,
                           .augment = {.translate = 32}};
    data_loader *l = NULL;
    expect_msg(tc, data_loader_open(&l, &bad, &e), &e, "augment.translate = 32");
    TEST_CHECK(tc, strstr(e.msg, dir) != NULL, "the error names the dataset: %s", e.msg);
    data_augmenter_free(&g);
    data_batch_free(&want);
    data_featurizer_free(f);
    data_dataset_close(ds);
}

int main(void) {
    test_counts tc = {0};
    test_image_transforms(&tc);
    test_audio_transforms(&tc);
    test_draws(&tc);
    test_settings(&tc);
    char root[] = "/tmp/test_augment_XXXXXX";
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    char ds[4096];
    snprintf(ds, sizeof(ds), "%s/set", root);
    test_loader(&tc, ds);
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    return test_finish(&tc);
}
