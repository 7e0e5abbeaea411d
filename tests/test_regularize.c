// test_regularize.c: properties of the transformer's regularisation (model.h model_config,
// model_drop.h) that must hold whatever the arithmetic: the dropout op keeps each element with
// probability 1 - p (the kept count within 4 binomial standard deviations) and keeps the mean
// (inverted dropout), depends on the sample's key but not on where the sample sits in the
// batch; modality dropout leaves out audio and image each in the configured share and never
// both; evaluation (train 0) is untouched by any of it, bitwise; model_create refuses a
// probability outside [0, 1) naming it, and the config refuses these keys on a diffusion
// model. The gradients are test64_gradcheck.c's, tp and recomputation test_tp.c's and
// test_recompute.c's, the trainer tests/regularize.sh.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"
#include "../model/backend.h"
#include "../model/model.h"
#include "../model/model_drop.h"
#include "../train/config.h"
#include "test.h"
#include "tp_check.h"

static const model_ops *const ops = &model_ops_cpu;

// |count - n q| <= 4 sqrt(n q (1 - q)): a correct draw fails this about once in 16,000 runs,
// and the seeds are fixed, so it never flakes.
static void check_share(test_counts *tc, const char *what, double count, double n, double q) {
    const double sd = sqrt(n * q * (1 - q)), dev = fabs(count - n * q);
    printf("  %-34s %.5f (want %.5f, %.1f sd)\n", what, count / n, q, sd > 0 ? dev / sd : 0);
    TEST_CHECK(tc, dev <= 4 * sd + 1e-9, "%s: share %.5f, want %.5f (%.1f sd off)", what, count / n,
               q, dev / sd);
}

static void test_dropout_op(test_counts *tc) {
    enum { B = 4 };
    const size_t n = 250000;
    const uint64_t keys[B] = {1, 2, 3, 4};
    float *x = malloc(B * n * sizeof(float)), *y = malloc(B * n * sizeof(float));
    for (int pi = 0; pi < 3; pi++) {
        const double p = (double[]){0.1, 0.3, 0.5}[pi];
        const uint32_t thr = (uint32_t)llround(p * (1 << MODEL_DROP_BITS));
        const model_drop d = {keys, 1, MODEL_DROP_MLP_OUT, thr, (float)(1 / (1 - p)), 0};
        for (size_t i = 0; i < B * n; i++) x[i] = 1.0f + (float)(i % 7) * 0.25f;
        ops->dropout(&mm_backend_cpu, y, x, &d, B, n);
        double kept = 0, sx = 0, sy = 0;
        for (size_t i = 0; i < B * n; i++) {
            kept += y[i] != 0;
            sx += x[i];
            sy += y[i];
        }
        char what[64];
        snprintf(what, sizeof(what), "dropout %.1f: kept", p);
        check_share(tc, what, kept, (double)B * n, 1 - p);
        // the mean of the output is the input's within the binomial error of the mask
        // (relative sd of the mean: sqrt(p / ((1 - p) N)) times the spread of x around 0)
        const double rel = fabs(sy / sx - 1), tol = 4 * sqrt(p / ((1 - p) * B * n)) * 1.3;
        printf("  dropout %.1f: mean out / mean in - 1 = %.2e (tol %.1e)\n", p, rel, tol);
        TEST_CHECK(tc, rel <= tol, "dropout %.1f: mean changed by %.2e", p, rel);
    }
    // a sample's mask follows its key, not its row: sample 2 alone draws what it drew in row 2
    const model_drop d = {keys + 2, 1, MODEL_DROP_MLP_OUT, 5000000, 1.5f, 0},
                     d4 = {keys, 1, MODEL_DROP_MLP_OUT, 5000000, 1.5f, 0};
    ops->dropout(&mm_backend_cpu, y, x, &d4, B, n);
    float *one = malloc(n * sizeof(float));
    ops->dropout(&mm_backend_cpu, one, x + 2 * n, &d, 1, n);
    TEST_CHECK(tc, memcmp(one, y + 2 * n, n * sizeof(float)) == 0,
               "dropout: a sample's mask depends on its place in the batch");
    // another site or layer draws another mask
    const model_drop dl = {keys, 2, MODEL_DROP_MLP_OUT, 5000000, 1.5f, 0};
    ops->dropout(&mm_backend_cpu, one, x, &dl, 1, n);
    TEST_CHECK(tc, memcmp(one, y, n * sizeof(float)) != 0, "dropout: layer 2 drew layer 1's mask");
    // thr 0: a copy
    const model_drop off = {keys, 1, 1, 0, 1, 0};
    ops->dropout(&mm_backend_cpu, y, x, &off, B, n);
    TEST_CHECK(tc, memcmp(x, y, B * n * sizeof(float)) == 0, "dropout with thr 0 changed x");
    free(x), free(y), free(one);
}

static void test_modality(test_counts *tc) {
    const int n = 200000;
    double no_audio = 0, no_image = 0, both_gone = 0, single_touched = 0;
    for (int i = 0; i < n; i++) {
        uint8_t hi = 1, ha = 1;
        model_modality_drop(1234, 17, (uint64_t)i, 0.2, 0, &hi, &ha);
        no_audio += !ha;
        no_image += !hi;
        both_gone += !hi && !ha;
        uint8_t h1 = 1, h0 = 0;  // a sample with one modality keeps it
        model_modality_drop(1234, 17, (uint64_t)i, 0.5, 1, &h1, &h0);
        single_touched += h1 != 1 || h0 != 0;
    }
    check_share(tc, "modality_drop 0.2: audio left out", no_audio, n, 0.2);
    check_share(tc, "modality_drop 0.2: image left out", no_image, n, 0.2);
    TEST_CHECK(tc, both_gone == 0 && single_touched == 0,
               "modality drop: %g samples lost both, %g single-modality samples changed", both_gone,
               single_touched);
    // audio_drop: of the samples modality_drop left whole, the audio_drop share loses audio
    double whole = 0, lost = 0;
    for (int i = 0; i < n; i++) {
        uint8_t hi = 1, ha = 1, hi0 = 1, ha0 = 1;
        model_modality_drop(99, 3, (uint64_t)i, 0.1, 0, &hi0, &ha0);
        if (!hi0 || !ha0) continue;
        whole++;
        model_modality_drop(99, 3, (uint64_t)i, 0.1, 0.6, &hi, &ha);
        lost += hi && !ha;
    }
    check_share(tc, "audio_drop 0.6 (after 0.1 each)", lost, whole, 0.6);
    // the draw is the step's: another step draws again
    int same = 0;
    for (int i = 0; i < 1000; i++) {
        uint8_t a1 = 1, a2 = 1, i1 = 1, i2 = 1;
        model_modality_drop(1, 5, (uint64_t)i, 0.5, 0, &i1, &a1);
        model_modality_drop(1, 6, (uint64_t)i, 0.5, 0, &i2, &a2);
        same += a1 == a2 && i1 == i2;
    }
    TEST_CHECK(tc, same < 700, "modality drop: steps 5 and 6 agree on %d of 1000 samples", same);
}

enum { SB = 3 };

// A regularised model in evaluation gives the plain model's loss bitwise; in training, not.
static void test_eval_untouched(test_counts *tc) {
    model_config plain, reg;
    small_model_config(&plain);
    reg = plain;
    reg.dropout = 0.3;
    reg.attn_dropout = 0.3;
    reg.label_smoothing = 0.2;
    mm_err err = {{0}};
    model *mp = NULL, *mr = NULL;
    int ok = model_create(&mp, &plain, &mm_backend_cpu, SB, 5, &err) == 0 &&
             model_create(&mr, &reg, &mm_backend_cpu, SB, 5, &err) == 0;
    TEST_CHECK(tc, ok, "model_create: %s", err.msg);
    if (!ok) return;
    mm_rng r;
    mm_rng_init(&r, 3, 0);
    const size_t ni = (size_t)SB * plain.img_h * plain.img_w * plain.img_c,
                 na = (size_t)SB * plain.audio_F * plain.n_mels, nt = (size_t)SB * plain.text_T;
    mm_real *image = malloc(ni * sizeof(mm_real)), *audio = malloc(na * sizeof(mm_real));
    int32_t *tok = malloc(nt * sizeof(int32_t)), *tg = malloc(nt * sizeof(int32_t));
    for (size_t i = 0; i < ni; i++) image[i] = 2 * mm_rng_uniform(&r) - 1;
    for (size_t i = 0; i < na; i++) audio[i] = mm_rng_normal(&r);
    for (size_t i = 0; i < nt; i++) {
        tok[i] = i % (size_t)plain.text_T == 0 ? DATA_TOK_BOS : 'a' + (int)mm_rng_below(&r, 26);
        tg[i] = 'a' + (int)mm_rng_below(&r, 26);
    }
    const uint8_t hi[SB] = {1, 1, 0}, ha[SB] = {1, 0, 1};
    const uint64_t ids[SB] = {8, 9, 10};
    model_input in = {SB, image, hi, audio, ha, tok, tg, 0, 4, ids, 0};
    const double lp = model_forward(mp, &in, NULL), le = model_forward(mr, &in, NULL);
    TEST_CHECK(tc, memcmp(&lp, &le, sizeof(double)) == 0,
               "evaluation of a regularised model: loss %.17g, plain %.17g", le, lp);
    char gp[SB][16], gr[SB][16];
    model_generate(mp, &in, &gp[0][0], 16);
    model_generate(mr, &in, &gr[0][0], 16);
    for (int b = 0; b < SB; b++)
        TEST_CHECK(tc, strcmp(gp[b], gr[b]) == 0, "generation of a regularised model differs");
    in.train = 1;
    const double lt = model_forward(mr, &in, NULL), lt2 = model_forward(mr, &in, NULL);
    printf("  loss: plain %.6f, regularised in evaluation %.6f, in training %.6f\n", lp, le, lt);
    TEST_CHECK(tc, lt != lp, "training with dropout gave the evaluation loss");
    TEST_CHECK(tc, memcmp(&lt, &lt2, sizeof(double)) == 0, "a training forward is not repeatable");
    in.step = 5;
    TEST_CHECK(tc, model_forward(mr, &in, NULL) != lt, "another step drew the same masks");
    free(image), free(audio), free(tok), free(tg);
    model_free(mp);
    model_free(mr);
}

static void test_bad_config(test_counts *tc) {
    const char *names[3] = {"dropout", "attn_dropout", "label_smoothing"};
    for (int i = 0; i < 3; i++) {
        model_config c;
        small_model_config(&c);
        double *f = i == 0 ? &c.dropout : i == 1 ? &c.attn_dropout : &c.label_smoothing;
        for (int bad = 0; bad < 2; bad++) {
            *f = bad ? -0.1 : 1.0;
            mm_err err = {{0}};
            model *m = NULL;
            const int rc = model_create(&m, &c, &mm_backend_cpu, 2, 1, &err);
            TEST_CHECK(tc, rc == -1 && !m && strstr(err.msg, names[i]),
                       "%s = %g: rc %d, message \"%s\"", names[i], *f, rc, err.msg);
            if (rc == 0) model_free(m);
        }
    }
}

// The regularisation keys of the transformer on a diffusion model: refused, naming the key.
static void test_config_kind(test_counts *tc) {
    const char *keys[] = {"model.dropout=0.1", "model.attn_dropout=0.1", "model.modality_drop=0.1",
                          "model.audio_drop=0.1", "optim.label_smoothing=0.1"};
    for (int i = 0; i < 5; i++) {
        mm_config c;
        mm_config_default(&c);
        mm_err err = {{0}};
        int ok = mm_config_set(&c, "data.train=/data/x", &err) == 0 &&
                 mm_config_set(&c, keys[i], &err) == 0 && mm_config_validate(&c, &err) == 0;
        TEST_CHECK(tc, ok, "transformer with %s: %s", keys[i], err.msg);
        ok = mm_config_set(&c, "model.kind=diffusion", &err) == 0 &&
             mm_config_validate(&c, &err) == -1;
        char key[32];
        snprintf(key, sizeof(key), "%.*s", (int)(strchr(keys[i], '=') - keys[i]), keys[i]);
        TEST_CHECK(tc, ok && strstr(err.msg, key), "diffusion with %s: \"%s\"", keys[i], err.msg);
    }
}

int main(void) {
    test_counts tc = {0, 0};
    printf("regularisation: dropout and modality-dropout shares, evaluation untouched\n");
    test_dropout_op(&tc);
    test_modality(&tc);
    test_eval_untouched(&tc);
    test_bad_config(&tc);
    test_config_kind(&tc);
    return test_finish(&tc);
}
