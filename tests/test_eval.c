// test_eval.c: evaluation's shared parts (train/eval.h): the synthetic set's rule (agrees
// with data_synth_score and data_synth_classify, judges only the synthetic set's captions);
// the caption metrics of any set (exact match, CER, BLEU-4, word F1) against hand-computed
// values (tests/eval_metrics.sh checks them against Python and sacrebleu); the bytes the
// writers produce, checked literally; the gather: every sample comes back once, in order, for
// any number of dp ranks; and the transformer's evaluation by input mode on real runs: the
// loss and captions of a mode equal those of a set whose samples only have that mode's
// modalities (val_loss_image on a set = val_loss_image on it with the audio removed, ...;
// val_loss_both = val_loss on the samples with both).
//
// Run as one process, or under mpirun -np N (tests/mpi_ranks.sh): the gather and the runs
// then go over N dp ranks.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../data/data_internal.h"  // the synthetic captions' phrasings
#include "../train/config.h"
#include "../train/eval.h"
#include "../train/train.h"
#include "test.h"

static eval_score score_of(const eval_scorer *sc, const char *ref, const char *gen) {
    eval_score s;
    memset(&s, 0, sizeof(s));
    sc->score(&(eval_pair){.ref_text = ref, .gen_text = gen}, &s);
    return s;
}

static void test_find(test_counts *tc) {
    const eval_scorer *a = eval_scorer_find("synth", EVAL_CAPTIONS);
    const eval_scorer *b = eval_scorer_find("synth", EVAL_IMAGES);
    TEST_CHECK(tc, a && b && a != b && a->kind == EVAL_CAPTIONS && b->kind == EVAL_IMAGES,
               "the scorers eval.scorer names");
    TEST_CHECK(tc,
               !eval_scorer_find("text", EVAL_CAPTIONS) && !eval_scorer_find("text", EVAL_IMAGES) &&
                   !eval_scorer_find("bleu", EVAL_CAPTIONS),
               "eval.scorer text names no rule, no unknown scorer");
    int ok = 1;
    const eval_scorer *all[2] = {a, b};
    for (int i = 0; i < 2; i++)
        ok &= all[i]->n_metrics >= 1 && all[i]->n_metrics <= EVAL_MAX_METRICS &&
              all[i]->n_notes <= EVAL_MAX_NOTES && all[i]->judges;
    TEST_CHECK(tc, ok, "metric and note counts within bounds");
    // the rule judges the synthetic set's captions (every phrasing) and no others
    int attr[DATA_N_ATTR] = {2, 1, 0, 3}, judged = 1;
    for (int p = 0; p < DATA_SYNTH_N_PHRASINGS; p++) {
        char cap[256];
        data_synth_caption(cap, sizeof(cap), attr, p);
        judged &= a->judges(cap) && b->judges(cap);
    }
    TEST_CHECK(tc,
               judged && !a->judges("a photo of a dog") && !a->judges("") &&
                   !a->judges("a red blue circle on the left") && !b->judges("seven"),
               "synth judges the synthetic captions only");
}

// synth on captions: the same verdicts as data_synth_score, named after its attributes.
static void test_synth_captions(test_counts *tc) {
    const eval_scorer *sc = eval_scorer_find("synth", EVAL_CAPTIONS);
    TEST_CHECK(tc,
               sc->n_metrics == 1 + DATA_N_ATTR && strcmp(sc->metric[0].key, "caption_acc") == 0,
               "headline caption_acc");
    int names = 1;
    for (int a = 0; a < DATA_N_ATTR; a++) {
        char key[64];
        snprintf(key, sizeof(key), "acc_%s", data_synth_attr_names[a]);
        names &= strcmp(sc->metric[1 + a].key, key) == 0 &&
                 strcmp(sc->metric[1 + a].label, data_synth_attr_names[a]) == 0;
    }
    TEST_CHECK(tc, names, "metrics acc_<attribute>, labelled by the attribute");
    const char *ref = "a small red circle on the left";
    const char *gens[] = {ref, "red circle (small) at the left", "a small blue circle on the left",
                          "large square on the right, top", ""};
    int agree = 1;
    for (int i = 0; i < 5; i++) {
        int correct[DATA_N_ATTR];
        int all = data_synth_score(ref, gens[i], correct);
        eval_score s = score_of(sc, ref, gens[i]);
        agree &= s.value[0] == all;
        for (int a = 0; a < DATA_N_ATTR; a++) agree &= s.value[1 + a] == correct[a];
    }
    TEST_CHECK(tc, agree, "synth agrees with data_synth_score");
}

// synth on images: a shape drawn on a dark background is read back; an empty image is wrong
// and notes -1 for what it could not read; a prompt the rule cannot parse is wrong too.
static void test_synth_images(test_counts *tc) {
    const eval_scorer *sc = eval_scorer_find("synth", EVAL_IMAGES);
    TEST_CHECK(tc,
               sc->n_notes == 3 && strcmp(sc->note[0], "colour") == 0 &&
                   strcmp(sc->note[1], "shape") == 0 && strcmp(sc->note[2], "right") == 0,
               "notes colour, shape, right");
    enum { H = 32, W = 32, C = 3 };
    uint8_t img[H * W * C];
    memset(img, 10, sizeof(img));
    eval_pair p = {
        .ref_text = "a small red circle on the left", .gen_image = img, .h = H, .w = W, .c = C};
    eval_score s;
    sc->score(&p, &s);
    TEST_CHECK(tc,
               s.value[0] == 0 && s.value[1] == 0 && s.value[2] == 0 && s.note[0] == -1 &&
                   s.note[1] == -1 && s.note[2] == 0,
               "no foreground: wrong, nothing read");
    // a bright square block: what data_synth_classify reads is what the scorer notes
    for (int y = 8; y < 24; y++)
        for (int x = 8; x < 24; x++) {
            uint8_t *px = img + (y * W + x) * C;
            px[0] = 230, px[1] = 30, px[2] = 30;
        }
    int colour = -1, shape = -1;
    int read = data_synth_classify(img, H, W, C, &colour, &shape) == 0;
    sc->score(&p, &s);
    int attr[DATA_N_ATTR];
    data_synth_attrs(p.ref_text, attr);
    TEST_CHECK(tc,
               read && s.note[0] == colour && s.note[1] == shape &&
                   s.value[1] == (colour == attr[0]) && s.value[2] == (shape == attr[1]) &&
                   s.value[0] == (colour == attr[0] && shape == attr[1]) &&
                   s.note[2] == (int)s.value[0],
               "the scorer notes and judges what the pixel rule reads (%d, %d)", colour, shape);
    p.ref_text = "something else entirely";
    sc->score(&p, &s);
    TEST_CHECK(tc, s.value[0] == 0 && s.value[1] == 0 && s.note[0] == -1,
               "a prompt without attributes: wrong, nothing read");
}

static eval_text_one text_one(const char *ref, const char *gen, size_t gen_n) {
    eval_text t;
    eval_text_init(&t);
    eval_text_one o;
    eval_text_add(&t, ref, strlen(ref), gen, gen_n, &o);
    return o;
}

// Caption metrics of one pair, computed by hand.
static void test_text_pairs(test_counts *tc) {
    struct {
        const char *ref, *gen;
        int exact;
        int64_t edits, ref_chars;
        double f1;
    } cases[] = {
        {"a dog runs on the beach", "a dog runs on the beach", 1, 0, 23, 1},
        {"a dog runs", "  A  Dog\truns \n", 1, 8, 10, 1},  // spaces and case: exact after
        {"a dog runs on the beach", "on the beach a dog runs", 0, 20, 23, 1},
        {"kitten", "sitting", 0, 3, 6, 0},       // the textbook distance
        {"a b c d", "a b x", 0, 3, 7, 4.0 / 7},  // F1: 2 common of 4 + 3 words
        {"the the cat", "the cat cat", 0, 3, 11, 4.0 / 6},
        {"caf\xc3\xa9", "caf\xc3\x89", 0, 1, 4, 0},  // one character apart; not lowercased
        {"caf\xc3\xa9", "cafe", 0, 1, 4, 0},
        {"", "", 1, 0, 0, 1},
        {"a dog", "", 0, 5, 5, 0},
        {"", "xyz", 0, 3, 0, 0},
        {"one two three", "four five", 0, 11, 13, 0},
    };
    int n = sizeof(cases) / sizeof(cases[0]), bad = 0;
    for (int i = 0; i < n; i++) {
        eval_text_one o = text_one(cases[i].ref, cases[i].gen, strlen(cases[i].gen));
        if (o.exact != cases[i].exact || o.edits != cases[i].edits ||
            o.ref_chars != cases[i].ref_chars || fabs(o.f1 - cases[i].f1) > 1e-12) {
            bad++;
            fprintf(stderr,
                    "text('%s', '%s') = exact %d, %lld/%lld edits, f1 %g; want %d, %lld/%lld, %g\n",
                    cases[i].ref, cases[i].gen, o.exact, (long long)o.edits, (long long)o.ref_chars,
                    o.f1, cases[i].exact, (long long)cases[i].edits, (long long)cases[i].ref_chars,
                    cases[i].f1);
        }
    }
    TEST_CHECK(tc, bad == 0, "%d of %d caption scores wrong", bad, n);
    // bytes a model writes: a NUL is a character (and no word separator for exact match), an
    // invalid byte one character, a valid sequence one character
    eval_text_one o = text_one("ab", "a\0b", 3);
    TEST_CHECK(tc, o.edits == 1 && o.exact == 0, "a NUL is a character: %lld", (long long)o.edits);
    o = text_one("\xc3\xa9t\xc3\xa9", "\xc3\xa9t\xff", 4);
    TEST_CHECK(tc, o.edits == 1 && o.ref_chars == 3, "invalid byte: %lld of %lld",
               (long long)o.edits, (long long)o.ref_chars);
    o = text_one("\xe2\x82\xac", "\xe2\x82", 2);  // a cut sequence: two invalid bytes
    TEST_CHECK(tc, o.edits == 2 && o.ref_chars == 1, "cut sequence: %lld", (long long)o.edits);
    // a long caption of many short words: no overflow of the word tables
    char longref[2001], longgen[2001];
    for (int i = 0; i < 2000; i++) longref[i] = i % 2 ? ' ' : 'a' + i % 26, longgen[i] = 'x';
    longref[2000] = longgen[2000] = '\0';
    TEST_CHECK(tc,
               text_one(longref, longref, 2000).f1 == 1 && text_one(longref, longgen, 2000).f1 == 0,
               "a long caption");
}

// Corpus metrics: CER over the summed lengths, BLEU-4 from the summed counts, by hand.
static void test_text_corpus(test_counts *tc) {
    eval_text t;
    eval_text_init(&t);
    TEST_CHECK(tc, isnan(eval_text_cer(&t)) && eval_text_bleu4(&t) == 0 && eval_text_exact(&t) == 0,
               "no pairs: CER n/a, BLEU 0");
    // corpus CER is not the mean of per-sample rates: 1/4 and 4/4 give 5/8, not 0.625 by luck
    eval_text_add(&t, "abcd", 4, "abce", 4, NULL);
    eval_text_add(&t, "wxyz", 4, "", 0, NULL);
    TEST_CHECK(tc, eval_text_cer(&t) == 5.0 / 8 && eval_text_exact(&t) == 0, "CER %g",
               eval_text_cer(&t));
    eval_text_init(&t);
    eval_text_add(&t, "abc", 3, "abcdefgh", 8, NULL);
    TEST_CHECK(tc, eval_text_cer(&t) == 5.0 / 3, "CER above 1: %g", eval_text_cer(&t));
    // BLEU-4 of one pair: ref "the cat sat on the mat" (6 words), hyp "The cat sat on a mat"
    // (6): p1 = 5/6, p2 = 3/5 (the cat, cat sat, sat on), p3 = 2/4, p4 = 1/3, BP = 1
    eval_text_init(&t);
    eval_text_add(&t, "the cat sat on the mat", 22, "The cat sat on a mat", 20, NULL);
    double want = exp((log(5.0 / 6) + log(3.0 / 5) + log(2.0 / 4) + log(1.0 / 3)) / 4);
    TEST_CHECK(tc, fabs(eval_text_bleu4(&t) - want) < 1e-15, "BLEU %.17g, want %.17g",
               eval_text_bleu4(&t), want);
    // clipping: "the the the the" against "the cat": p1 = 1/4; a 4-word hypothesis has one
    // 4-gram, unmatched: BLEU 0 without smoothing
    eval_text_init(&t);
    eval_text_add(&t, "the cat", 7, "the the the the", 15, NULL);
    TEST_CHECK(tc, t.match[0] == 1 && t.total[0] == 4 && eval_text_bleu4(&t) == 0,
               "clipped unigrams %lld / %lld", (long long)t.match[0], (long long)t.total[0]);
    // brevity: hypothesis "a b c d" (4) against "a b c d e f g h" (8): precisions 1, BP e^-1
    eval_text_init(&t);
    eval_text_add(&t, "a b c d e f g h", 15, "a b c d", 7, NULL);
    TEST_CHECK(tc, fabs(eval_text_bleu4(&t) - exp(-1.0)) < 1e-15, "brevity penalty: %.17g",
               eval_text_bleu4(&t));
    // corpus sums: a short pair that alone has no 4-gram still counts its unigrams
    eval_text_add(&t, "x y", 3, "x y", 3, NULL);
    want = exp(1.0 - 10.0 / 6) * exp((log(6.0 / 6) + log(4.0 / 4) + log(2.0 / 2) + log(1.0)) / 4);
    TEST_CHECK(tc,
               fabs(eval_text_bleu4(&t) - want) < 1e-15 && t.hyp_words == 6 && t.ref_words == 10,
               "corpus BLEU %.17g, want %.17g", eval_text_bleu4(&t), want);
    // an empty hypothesis: no words, BLEU 0; an empty reference: CER of the others only
    eval_text_init(&t);
    eval_text_add(&t, "a b c d", 7, "", 0, NULL);
    eval_text_add(&t, "", 0, "junk", 4, NULL);
    TEST_CHECK(tc, eval_text_bleu4(&t) == 0 && eval_text_cer(&t) == 11.0 / 7,
               "empty sides: BLEU %g, CER %g", eval_text_bleu4(&t), eval_text_cer(&t));
}

// A stream into memory: what a writer wrote is in buf after sink_close (caller frees).
typedef struct {
    FILE *f;
    char *buf;
    size_t n;
} sink;

static FILE *sink_open(sink *k) {
    k->buf = NULL;
    k->f = open_memstream(&k->buf, &k->n);
    MM_CHECK(k->f, "open_memstream");
    return k->f;
}

static char *sink_close(sink *k) {
    fclose(k->f);
    return k->buf;
}

// The writers' bytes, literally: what tools reading metrics.jsonl, eval/step_*.jsonl and the
// log have always seen.
static void test_writers(test_counts *tc) {
    // captions: 4 samples, 0 and 1 with image and audio, 2 image only, 3 audio only; the
    // expected numbers computed in Python (exact, Levenshtein, BLEU-4 from n-gram counters)
    const eval_scorer *cap = eval_scorer_find("synth", EVAL_CAPTIONS);
    const char *refs[4] = {"a small red circle on the left", "a large blue square on the right",
                           "a small green cross at the top of a very long caption line",
                           "a large white triangle at the bottom"};
    const char *gens[4] = {"a small red circle on the left", "a large blue circle on the right", "",
                           "x"};
    const char *imgs[3] = {refs[0], refs[1], "a small green cross"};
    eval_captions ec;
    eval_captions_init(&ec, cap);
    for (int i = 0; i < 4; i++) {
        eval_captions_add(&ec, EVAL_GIVEN, refs[i], gens[i], strlen(gens[i]), NULL);
        if (i < 3) eval_captions_add(&ec, EVAL_IMAGE, refs[i], imgs[i], strlen(imgs[i]), NULL);
        if (i < 2) eval_captions_add(&ec, EVAL_BOTH, refs[i], gens[i], strlen(gens[i]), NULL);
    }
    const int64_t n[EVAL_N_MODES] = {4, 3, 2, 2};
    const double loss[EVAL_N_MODES] = {4 * 1.234567891234, 3.0, 5.0, 2.5};
    for (int m = 0; m < EVAL_N_MODES; m++) ec.n[m] = n[m], ec.loss_sum[m] = loss[m];
    sink ko, km;
    eval_report_captions(sink_open(&ko), sink_open(&km), 40, &ec);
    char *bo = sink_close(&ko), *bm = sink_close(&km);
    const char *want_out =
        "eval step 40 | val_loss 1.2346 | exact 25.0% | CER 63.5% | BLEU-4 20.0 | F1 46.4% | 4 "
        "samples\n"
        "  image only: val_loss 1.0000 | exact 66.7% | CER 32.5% | BLEU-4 60.7 | F1 82.4% | 3 "
        "samples\n"
        "  audio only: val_loss 2.5000 | 2 samples\n"
        "  both: val_loss 1.2500 | exact 50.0% | CER 8.1% | BLEU-4 72.1 | F1 92.9% | 2 samples\n"
        "  synthetic set's rule: caption_acc 25.0% (colour 50.0%, shape 25.0%, size 50.0%, "
        "position 50.0%; image only 66.7%, both 50.0%)\n"
        "  ref: a small red circle on the left               gen: a small red circle on the left\n"
        "  ref: a large blue square on the right             gen: a large blue circle on the "
        "right\n"
        "  ref: a small green cross at the top of a very long caption line gen: \n";
    // the keys runs have always written come first, in their order
    const char *want_met =
        "{\"step\":40,\"val_loss\":1.23456789,\"caption_acc\":0.25,\"acc_colour\":0.5,"
        "\"acc_shape\":0.25,\"acc_size\":0.5,\"acc_position\":0.5,\"caption_exact\":0.25,"
        "\"caption_cer\":0.634615385,\"caption_bleu4\":0.199792131,\"caption_f1\":0.464285714,"
        "\"val_loss_image\":1,\"caption_exact_image\":0.666666667,\"caption_cer_image\":0.325,"
        "\"caption_bleu4_image\":0.60653066,\"caption_f1_image\":0.823529412,"
        "\"caption_acc_image\":0.666666667,\"acc_colour_image\":1,\"acc_shape_image\":1,"
        "\"acc_size_image\":1,\"acc_position_image\":0.666666667,\"val_loss_audio\":2.5,"
        "\"val_loss_both\":1.25,\"caption_exact_both\":0.5,\"caption_cer_both\":0.0806451613,"
        "\"caption_bleu4_both\":0.721398988,\"caption_f1_both\":0.928571429,"
        "\"caption_acc_both\":0.5,\"acc_colour_both\":1,\"acc_shape_both\":0.5,"
        "\"acc_size_both\":1,\"acc_position_both\":1}\n";
    TEST_CHECK(tc, strcmp(bo, want_out) == 0, "caption summary:\n%s", bo);
    TEST_CHECK(tc, strcmp(bm, want_met) == 0, "caption metrics: %s", bm);
    free(bo);
    free(bm);
    // a set that is not the synthetic one: no rule, with eval.scorer synth or text alike;
    // a mode without samples has no keys; an empty reference has no CER
    for (int with_rule = 0; with_rule < 2; with_rule++) {
        eval_captions_init(&ec, with_rule ? cap : NULL);
        eval_captions_add(&ec, EVAL_GIVEN, "a photo of a dog", "a photo of a dog", 16, NULL);
        eval_captions_add(&ec, EVAL_IMAGE, "a photo of a dog", "a photo of a dog", 16, NULL);
        eval_captions_add(&ec, EVAL_GIVEN, refs[0], refs[0], strlen(refs[0]), NULL);
        eval_captions_add(&ec, EVAL_IMAGE, refs[0], refs[0], strlen(refs[0]), NULL);
        ec.n[EVAL_GIVEN] = ec.n[EVAL_IMAGE] = 2;
        ec.loss_sum[EVAL_GIVEN] = ec.loss_sum[EVAL_IMAGE] = 1.0;
        eval_report_captions(sink_open(&ko), sink_open(&km), 3, &ec);
        bo = sink_close(&ko);
        bm = sink_close(&km);
        TEST_CHECK(tc,
                   strcmp(bm,
                          "{\"step\":3,\"val_loss\":0.5,\"caption_exact\":1,\"caption_cer\":0,"
                          "\"caption_bleu4\":1,\"caption_f1\":1,\"val_loss_image\":0.5,"
                          "\"caption_exact_image\":1,\"caption_cer_image\":0,"
                          "\"caption_bleu4_image\":1,\"caption_f1_image\":1}\n") == 0 &&
                       !strstr(bo, "rule") && !strstr(bo, "audio") && ec.not_rule == with_rule &&
                       !eval_captions_rule_applies(&ec),
                   "not the synthetic set (rule %d): %s%s", with_rule, bo, bm);
        free(bo);
        free(bm);
    }
    eval_captions_init(&ec, NULL);
    eval_captions_add(&ec, EVAL_GIVEN, "", "abc", 3, NULL);
    ec.n[EVAL_GIVEN] = 1;
    eval_report_captions(sink_open(&ko), sink_open(&km), 3, &ec);
    bo = sink_close(&ko);
    bm = sink_close(&km);
    TEST_CHECK(tc, strstr(bo, "| CER n/a |") && !strstr(bm, "caption_cer"),
               "empty references: CER n/a: %s%s", bo, bm);
    free(bo);
    free(bm);

    // one eval line: as given, and image only with its own scores; null CER for an empty
    // reference; invalid bytes counted per caption; a sample with sound and no image: as
    // given and audio only
    eval_caption_gen given = {
        .gen = "tab\there", .gen_n = 8, .s = {.exact = 0, .edits = 3, .ref_chars = 9}};
    eval_caption_gen image = {
        .gen = "x\xff", .gen_n = 2, .s = {.exact = 1, .edits = 0, .ref_chars = 9}};
    eval_write_caption(sink_open(&ko), 17, "say \"hi\"\n", &given, &image, NULL);
    eval_write_caption(NULL, 17, "", &given, NULL, NULL);  // a rank without the file writes nothing
    given.s.ref_chars = 0;
    eval_caption_gen audio = {.gen = "ab", .gen_n = 2, .s = {.exact = 0, .edits = 2}};
    eval_write_caption(ko.f, 18, "", &given, NULL, &audio);
    bo = sink_close(&ko);
    TEST_CHECK(tc,
               strcmp(bo,
                      "{\"sample_id\":17,\"reference\":\"say \\\"hi\\\"\\n\",\"generated\":"
                      "\"tab\\u0009here\",\"exact\":0,\"cer\":0.333333333,\"generated_image\":"
                      "\"x\xEF\xBF\xBD\",\"generated_image_invalid_bytes\":1,\"exact_image\":1,"
                      "\"cer_image\":0}\n"
                      "{\"sample_id\":18,\"reference\":\"\",\"generated\":\"tab\\u0009here\","
                      "\"exact\":0,\"cer\":null,\"generated_audio\":\"ab\",\"exact_audio\":0,"
                      "\"cer_audio\":null}\n") == 0,
               "caption lines: %s", bo);
    free(bo);

    // images: one tally per mode; the headline is metric 0 in mode `both`
    const eval_scorer *img = eval_scorer_find("synth", EVAL_IMAGES);
    eval_tally m[3];
    static const char *const modes[3] = {"text", "audio", "both"};
    for (int i = 0; i < 3; i++) eval_tally_init(&m[i], img);
    m[0].n = 4, m[0].sum[0] = 1, m[0].sum[1] = 4, m[0].sum[2] = 1;
    m[1].n = 3, m[1].sum[0] = 0, m[1].sum[1] = 2, m[1].sum[2] = 1;
    m[2].n = 0;
    eval_report_images(sink_open(&ko), sink_open(&km), 9, 0.5, m, 3, modes, 2, 4);
    bo = sink_close(&ko);
    bm = sink_close(&km);
    TEST_CHECK(tc,
               strcmp(bo,
                      "eval step 9 | val_loss 0.5000 | cond_acc 0.0% (text 25.0%, audio 0.0%, "
                      "both 0.0%) over 4 prompts each; colour right 100/67/0%, shape right "
                      "25/33/0%\n") == 0,
               "image summary: %s", bo);
    TEST_CHECK(tc,
               strcmp(bm,
                      "{\"step\":9,\"val_loss\":0.5,\"cond_acc\":0,\"cond_acc_text\":0.25,"
                      "\"colour_acc_text\":1,\"shape_acc_text\":0.25,\"cond_acc_audio\":0,"
                      "\"colour_acc_audio\":0.666666667,\"shape_acc_audio\":0.333333333,"
                      "\"cond_acc_both\":0,\"colour_acc_both\":0,\"shape_acc_both\":0}\n") == 0,
               "image metrics: %s", bm);
    free(bo);
    free(bm);
    // no val_loss to report (a diffusion val set without images): n/a, and no key
    eval_report_images(sink_open(&ko), sink_open(&km), 9, NAN, m, 3, modes, 2, 4);
    bo = sink_close(&ko);
    bm = sink_close(&km);
    TEST_CHECK(tc, strncmp(bo, "eval step 9 | val_loss n/a | cond_acc 0.0% (", 44) == 0,
               "image summary without val_loss: %s", bo);
    TEST_CHECK(tc, strstr(bm, "{\"step\":9,\"cond_acc\":0,") == bm && !strstr(bm, "val_loss"),
               "image metrics without val_loss: %s", bm);
    free(bo);
    free(bm);
    eval_score s = {.note = {2, -1, 0}};
    eval_write_image(sink_open(&ko), 5, "audio", "a \"red\" circle", img, &s);
    bo = sink_close(&ko);
    TEST_CHECK(tc,
               strcmp(bo,
                      "{\"sample_id\":5,\"mode\":\"audio\",\"prompt\":\"a \\\"red\\\" circle\","
                      "\"colour\":2,\"shape\":-1,\"right\":0}\n") == 0,
               "image line: %s", bo);
    free(bo);
}

// Generated bytes are arbitrary: eval lines stay valid JSON in valid UTF-8 (issue 16, item 5)
// and printed captions carry no raw control byte.
static void test_escape(test_counts *tc) {
    char out[128];
    size_t bad = 99;
    // invalid UTF-8: a lone continuation byte, a lead byte cut short, an overlong form, 0xFF
    static const char gen[] = "ok \x80 \xC3 \xC0\xAF \xFF \xC3\xA9\xE2\x82\xAC";
    size_t k = eval_escape(out, sizeof(out), gen, sizeof(gen) - 1, EVAL_ESC_JSON, &bad);
    TEST_CHECK(tc,
               strcmp(out,
                      "ok \xEF\xBF\xBD \xEF\xBF\xBD \xEF\xBF\xBD\xEF\xBF\xBD \xEF\xBF\xBD "
                      "\xC3\xA9\xE2\x82\xAC") == 0 &&
                   k == strlen(out) && bad == 5,
               "invalid bytes become U+FFFD, valid ones pass (bad %zu): %s", bad, out);
    size_t at;
    TEST_CHECK(tc, mm_utf8_check((const uint8_t *)out, k, &at) == NULL, "escaped text is UTF-8");
    // a NUL inside does not cut the caption; controls and DEL are escaped
    static const char ctl[] = "a\0b\x01\x1b[31m\x7f\\\"\n";
    eval_escape(out, sizeof(out), ctl, sizeof(ctl) - 1, EVAL_ESC_JSON, &bad);
    TEST_CHECK(tc, strcmp(out, "a\\u0000b\\u0001\\u001b[31m\\u007f\\\\\\\"\\n") == 0 && bad == 0,
               "JSON escapes: %s", out);
    eval_escape(out, sizeof(out), ctl, sizeof(ctl) - 1, EVAL_ESC_TERM, &bad);
    TEST_CHECK(tc, strcmp(out, "a\\x00b\\x01\\x1B[31m\\x7F\\\\\"\\n") == 0, "terminal escapes: %s",
               out);
    int raw = 0;
    for (const char *p = out; *p; p++) raw |= (unsigned char)*p < 0x20 || *p == 0x7f;
    TEST_CHECK(tc, !raw, "no raw control byte for the terminal");
    // a short buffer: never cut an escape or a character
    k = eval_escape(out, 6, "ab\x01\xC3\xA9", 5, EVAL_ESC_JSON, NULL);
    TEST_CHECK(tc, k == 2 && strcmp(out, "ab") == 0, "cut before \\u0001: %s", out);
    k = eval_escape(out, 5, "abc\xC3\xA9", 5, EVAL_ESC_TERM, NULL);
    TEST_CHECK(tc, k == 3 && strcmp(out, "abc") == 0, "cut before a 2-byte character: %s", out);
    // the caption line: a NUL, a control and invalid bytes, counted
    sink ko;
    eval_caption_gen g = {.gen = "x\0y\x80\xFF", .gen_n = 5, .s = {.edits = 5, .ref_chars = 3}};
    eval_write_caption(sink_open(&ko), 3, "ref", &g, NULL, NULL);
    char *bo = sink_close(&ko);
    TEST_CHECK(tc,
               strcmp(bo,
                      "{\"sample_id\":3,\"reference\":\"ref\",\"generated\":\"x\\u0000y"
                      "\xEF\xBF\xBD\xEF\xBF\xBD\",\"generated_invalid_bytes\":2,\"exact\":0,"
                      "\"cer\":1.66666667}\n") == 0,
               "caption line with bad bytes: %s", bo);
    free(bo);
    // examples shown on the terminal
    eval_examples ex = {0};
    eval_examples_add(&ex, "ref", "a\x1b]0;x\x07\0z", 9);
    TEST_CHECK(tc, strcmp(ex.gen[0], "a\\x1B]0;x\\x07\\x00z") == 0, "example: %s", ex.gen[0]);
}

// n samples in batches of b over the world as dp: every rank sees every sample once, in
// order, each with the loss of its batch; ranks without a batch in the last round send none.
static void test_gather(test_counts *tc, comm_group *world, int64_t n, int b) {
    const int dp = comm_size(world), rank = comm_rank(world);
    eval_gather g;
    eval_gather_init(&g, world, rank, dp, n, b, 13);  // 13 bytes: rounded up to 16
    int64_t seen = 0, bad = 0, rounds = eval_gather_rounds(&g);
    double loss_sum = 0, want_loss = 0, batches = 0;  // every sum comes through
    for (int64_t bi = 0; bi * b < n; bi++) want_loss += (double)bi;
    for (int64_t r = 0; r < rounds; r++) {
        int64_t first;
        int nb = eval_gather_batch(&g, r, &first);
        for (int i = 0; i < nb; i++) {
            uint8_t *rec = eval_gather_mine(&g, i);
            int64_t v = first + i;
            memcpy(rec, &v, sizeof(v));
            memset(rec + 8, (int)(v & 0x7f), 5);
        }
        double sums[EVAL_GATHER_SUMS] = {nb ? (double)(first / b) : 0.0, 0, 0, nb ? 1.0 : 0.0};
        eval_gather_exchange(&g, nb, sums);
        for (int d = 0; d < dp; d++) {
            double l[EVAL_GATHER_SUMS];
            int cnt = eval_gather_count(&g, d, l);
            loss_sum += l[0];
            batches += l[EVAL_GATHER_SUMS - 1];
            for (int i = 0; i < cnt; i++) {
                const uint8_t *rec = eval_gather_record(&g, d, i);
                int64_t v;
                memcpy(&v, rec, sizeof(v));
                bad += v != seen || rec[12] != (uint8_t)(seen & 0x7f);
                seen++;
            }
        }
    }
    eval_gather_free(&g);
    TEST_CHECK(tc, seen == n && bad == 0 && loss_sum == want_loss && batches == (n + b - 1) / b,
               "gather %lld in batches of %d over %d rank(s): %lld seen, %lld out of order, "
               "loss %g (want %g)",
               (long long)n, b, dp, (long long)seen, (long long)bad, loss_sum, want_loss);
}

// ---------------------------------------------------------------------------------------
// Evaluation by input mode on real runs.

// Writes a copy of the first n samples of dataset src to dst, their images dropped when
// !image, their audio when !audio, and with only_both only those that have both.
static void copy_set(const char *src, const char *dst, uint64_t n, int image, int audio,
                     int only_both) {
    mm_err err;
    data_dataset *ds;
    MM_CHECK(data_dataset_open(&ds, src, DATA_OPEN_VERIFY, &err) == 0, "%s", err.msg);
    const data_schema *sc = data_dataset_schema(ds);
    data_writer *w;
    MM_CHECK(data_writer_open(&w, dst, sc, 500, &err) == 0, "%s", err.msg);
    uint8_t *img = mm_malloc((size_t)sc->img_h * sc->img_w * sc->img_c);
    int16_t *pcm = mm_malloc(sizeof(int16_t) * (size_t)sc->audio_len);
    char *text = mm_malloc((size_t)sc->text_max + 1);
    for (uint64_t i = 0; i < sc->n_samples && i < n; i++) {
        data_raw_info info;
        MM_CHECK(data_dataset_read_raw(ds, i, img, pcm, text, &info, &err) == 0, "%s", err.msg);
        if (only_both && !(info.has_image && info.has_audio)) continue;
        data_sample smp = {.sample_id = info.sample_id,
                           .image = image && info.has_image ? img : NULL,
                           .audio = audio && info.has_audio ? pcm : NULL,
                           .audio_n = audio && info.has_audio ? info.audio_n : 0,
                           .text = text,
                           .text_n = info.text_n};
        MM_CHECK(data_writer_add(w, &smp, &err) == 0, "%s", err.msg);
    }
    MM_CHECK(data_writer_close(w, &err) == 0, "%s", err.msg);
    data_dataset_close(ds);
    free(img);
    free(pcm);
    free(text);
}

// Value of "key" in the last line of <out>/metrics.jsonl, NAN when absent.
static double last_metric(const char *out, const char *key) {
    char path[1024], pat[128];
    snprintf(path, sizeof(path), "%s/metrics.jsonl", out);
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    char *text = NULL;
    mm_err err;
    if (mm_read_file(path, &text, NULL, &err) != 0) return NAN;
    char *last = strrchr(text, '{'), *at = last ? strstr(last, pat) : NULL;
    double v = at ? strtod(at + strlen(pat), NULL) : NAN;
    free(text);
    return v;
}

// The same tiny model trained alike (training never reads data.val) and evaluated on: A, the
// synthetic val set's first N samples (with image and audio, image only, audio only); B,
// those without audio; C, without images; D, those with both. A mode's loss and captions use the
// same inputs as the set whose samples hold only that mode's modalities, in the same
// batches: val_loss_image and the image-only caption metrics of A equal B's; val_loss_audio
// of A equals C's; val_loss_both of A is the plain val_loss over D's samples (other batches:
// equal up to rounding); and on D, where every sample has both, val_loss_both = val_loss.
static void test_modes(test_counts *tc, comm_group *world) {
    enum { N = 20 };  // samples evaluated: 3 batches of 8, the last one short
    char root[256] = "/tmp/mm_test_eval_XXXXXX";
    if (comm_rank(world) == 0) MM_CHECK(mkdtemp(root), "mkdtemp failed");
    comm_bcast(world, root, sizeof(root), COMM_U8, 0);
    char data[300], set[4][320], out[4][320], buf[800];
    snprintf(data, sizeof(data), "%s/data", root);
    mm_err err;
    if (comm_rank(world) == 0) {
        data_synth_cfg sc;
        data_synth_default(&sc);
        MM_CHECK(data_synth_write(data, 64, 3, &sc, &err) == 0, "%s", err.msg);
        snprintf(set[0], sizeof(set[0]), "%s/val", data);
        for (int k = 1; k < 4; k++) snprintf(set[k], sizeof(set[k]), "%s/%c", root, 'A' + k);
        copy_set(set[0], set[1], N, 1, 0, 0);
        copy_set(set[0], set[2], N, 0, 1, 0);
        copy_set(set[0], set[3], N, 1, 1, 1);
    }
    comm_barrier(world);
    snprintf(set[0], sizeof(set[0]), "%s/val", data);
    for (int k = 1; k < 4; k++) snprintf(set[k], sizeof(set[k]), "%s/%c", root, 'A' + k);
    const char *base[] = {"model.d_model=32",   "model.n_layers=1",
                          "model.n_heads=2",    "data.global_batch=8",
                          "data.micro_batch=2", "run.steps=3",
                          "eval.samples=20",    "eval.batch=8",
                          "run.threads=1",      NULL};
    for (int k = 0; k < 4; k++) {
        mm_config c;
        mm_config_default(&c);
        for (int i = 0; base[i]; i++)
            MM_CHECK(mm_config_set(&c, base[i], &err) == 0, "%s", err.msg);
        snprintf(out[k], sizeof(out[k]), "%s/run%d", root, k);
        const char *kv[3][2] = {
            {"data.train", data}, {"data.val", set[k]}, {"run.out_dir", out[k]}};
        for (int i = 0; i < 3; i++) {
            snprintf(buf, sizeof(buf), "%s=%s%s", kv[i][0], kv[i][1], i == 0 ? "/train" : "");
            MM_CHECK(mm_config_set(&c, buf, &err) == 0, "%s", err.msg);
        }
        MM_CHECK(mm_config_validate(&c, &err) == 0, "%s", err.msg);
        TEST_CHECK(tc, train_run(&c, world, &err) == 0, "run on %s: %s", set[k], err.msg);
    }
    if (comm_rank(world) == 0) {
        double a_img = last_metric(out[0], "val_loss_image"),
               b_img = last_metric(out[1], "val_loss_image");
        double a_aud = last_metric(out[0], "val_loss_audio"),
               c_aud = last_metric(out[2], "val_loss_audio");
        double a_both = last_metric(out[0], "val_loss_both"),
               d_all = last_metric(out[3], "val_loss");
        double d_both = last_metric(out[3], "val_loss_both");
        printf(
            "modes: val_loss %.9g; image %.9g (without audio %.9g); audio %.9g (without image "
            "%.9g); both %.9g (on those samples alone %.9g)\n",
            last_metric(out[0], "val_loss"), a_img, b_img, a_aud, c_aud, a_both, d_all);
        TEST_CHECK(tc, a_img == b_img && isfinite(a_img),
                   "val_loss_image %.9g = %.9g on the set without audio", a_img, b_img);
        TEST_CHECK(tc, a_aud == c_aud && isfinite(a_aud),
                   "val_loss_audio %.9g = %.9g on the set without images", a_aud, c_aud);
        TEST_CHECK(tc, fabs(a_both - d_all) <= 1e-6 * d_all,
                   "val_loss_both %.9g = val_loss %.9g over those samples", a_both, d_all);
        TEST_CHECK(tc, d_both == d_all,
                   "every sample with both: val_loss_both %.9g = val_loss %.9g", d_both, d_all);
        static const char *const img_keys[] = {"caption_exact_image", "caption_cer_image",
                                               "caption_bleu4_image", "caption_f1_image",
                                               "caption_acc_image"};
        int same = 1;
        for (int i = 0; i < 5; i++)
            same &= last_metric(out[0], img_keys[i]) == last_metric(out[1], img_keys[i]);
        TEST_CHECK(
            tc, same && last_metric(out[0], "caption_cer_image") > 0,
            "image-only captions: the same metrics as on the set without audio (CER %.9g, %.9g)",
            last_metric(out[0], "caption_cer_image"), last_metric(out[1], "caption_cer_image"));
        // modes a set cannot have: no keys
        TEST_CHECK(tc,
                   isnan(last_metric(out[1], "val_loss_audio")) &&
                       isnan(last_metric(out[1], "val_loss_both")) &&
                       isnan(last_metric(out[2], "val_loss_image")) &&
                       isnan(last_metric(out[2], "caption_cer_image")) &&
                       isnan(last_metric(out[2], "val_loss_both")),
                   "no keys for modes a set's samples do not support");
        snprintf(buf, sizeof(buf), "rm -rf '%s'", root);
        MM_CHECK(system(buf) == 0, "cleanup %s", root);
    }
}

// test_eval --score FILE (for tests/eval_metrics.sh): FILE holds one pair per line,
// "REFHEX<TAB>GENHEX" (bytes in hex, either may be empty); prints each pair's "exact edits
// ref_chars" and then the corpus "exact cer bleu4 f1" to full precision.
static int score_file(const char *path) {
    char *text = NULL;
    mm_err err;
    if (mm_read_file(path, &text, NULL, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 2;
    }
    eval_text t;
    eval_text_init(&t);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *tab = strchr(line, '\t');
        MM_CHECK(tab, "%s: a line without a tab", path);
        *tab = '\0';
        char *side[2] = {line, tab + 1};
        size_t len[2];
        for (int k = 0; k < 2; k++) {  // hex to bytes in place
            len[k] = strlen(side[k]) / 2;
            for (size_t i = 0; i < len[k]; i++) {
                unsigned v;
                MM_CHECK(sscanf(side[k] + 2 * i, "%2x", &v) == 1, "%s: bad hex", path);
                side[k][i] = (char)v;
            }
        }
        eval_text_one o;
        eval_text_add(&t, side[0], len[0], side[1], len[1], &o);
        printf("%d %lld %lld\n", o.exact, (long long)o.edits, (long long)o.ref_chars);
    }
    printf("%.17g %.17g %.17g %.17g\n", eval_text_exact(&t), eval_text_cer(&t), eval_text_bleu4(&t),
           eval_text_f1(&t));
    free(text);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--score") == 0) return score_file(argv[2]);
    comm_group *world = comm_init(&argc, &argv);
    test_counts tc = {0, 0};
    const int rank = comm_rank(world);
    if (rank == 0) {  // single-process parts once
        test_find(&tc);
        test_synth_captions(&tc);
        test_synth_images(&tc);
        test_text_pairs(&tc);
        test_text_corpus(&tc);
        test_writers(&tc);
        test_escape(&tc);
    }
    test_gather(&tc, world, 10, 4);
    test_gather(&tc, world, 7, 1);
    test_gather(&tc, world, 3, 8);
    test_gather(&tc, world, 0, 4);
    // the runs at 1 and 2 ranks (dp 2 covers the per-mode sums' gather); 4 ranks on 2 cores
    // would spin in collectives for minutes
    if (comm_size(world) <= 2) test_modes(&tc, world);
    int64_t sum[2] = {tc.passed, tc.failed};
    comm_allreduce_sum(world, sum, 2, COMM_I64);
    comm_finalize(world);
    tc.passed = (int)sum[0], tc.failed = (int)sum[1];
    if (rank != 0) return tc.failed ? 1 : 0;
    return test_finish(&tc);
}
