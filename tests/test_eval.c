// test_eval.c: evaluation's shared parts (train/eval.h): the scorers eval.scorer chooses
// (synth, the synthetic set's rule, agrees with data_synth_score and data_synth_classify;
// text gives exact match and word F1 for any captions), the bytes the writers produce (the
// formats runs have always written, checked literally), and the gather: every sample comes
// back once, in order, for any number of dp ranks.
//
// Run as one process, or under mpirun -np N (tests/mpi_ranks.sh): the gather then runs over
// N dp ranks.
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../train/eval.h"
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
    const eval_scorer *t = eval_scorer_find("text", EVAL_CAPTIONS);
    TEST_CHECK(tc, a && b && t && a != b && a->kind == EVAL_CAPTIONS && b->kind == EVAL_IMAGES,
               "the scorers eval.scorer names");
    TEST_CHECK(tc,
               !eval_scorer_find("text", EVAL_IMAGES) && !eval_scorer_find("bleu", EVAL_CAPTIONS),
               "no text scorer of images, no unknown scorer");
    int ok = 1;
    const eval_scorer *all[3] = {a, b, t};
    for (int i = 0; i < 3; i++)
        ok &= all[i]->n_metrics >= 1 && all[i]->n_metrics <= EVAL_MAX_METRICS &&
              all[i]->n_notes <= EVAL_MAX_NOTES;
    TEST_CHECK(tc, ok, "metric and note counts within bounds");
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

// text on captions: exact match and word F1 (case, punctuation and order do not matter).
static void test_text_captions(test_counts *tc) {
    const eval_scorer *sc = eval_scorer_find("text", EVAL_CAPTIONS);
    TEST_CHECK(tc,
               sc->n_metrics == 2 && strcmp(sc->metric[0].key, "caption_f1") == 0 &&
                   strcmp(sc->metric[1].key, "caption_exact") == 0 && sc->n_notes == 0,
               "metrics caption_f1, caption_exact");
    struct {
        const char *ref, *gen;
        double f1, exact;
    } cases[] = {
        {"a dog runs on the beach", "a dog runs on the beach", 1, 1},
        {"a dog runs on the beach", "on the beach a dog runs", 1, 0},
        {"A dog, running.", "a DOG running", 1, 0},
        {"a b c d", "a b x", 4.0 / 7, 0},            // 2 common of 4 + 3 words
        {"the the cat", "the cat cat", 4.0 / 6, 0},  // counted as often as both have it
        {"caf\xc3\xa9 au lait", "CAF\xc3\xa9 au lait", 1, 0},
        {"caf\xc3\xa9", "caf\xc3\x89", 0, 0},  // only ASCII letters are lowercased
        {"", "", 1, 1},
        {"a dog", "", 0, 0},
        {"", "...", 1, 0},  // punctuation alone has no words
        {"one two three", "four five", 0, 0},
    };
    int n = sizeof(cases) / sizeof(cases[0]), bad = 0;
    for (int i = 0; i < n; i++) {
        eval_score s = score_of(sc, cases[i].ref, cases[i].gen);
        if (fabs(s.value[0] - cases[i].f1) > 1e-12 || s.value[1] != cases[i].exact) {
            bad++;
            fprintf(stderr, "text('%s', '%s') = %g, %g; want %g, %g\n", cases[i].ref, cases[i].gen,
                    s.value[0], s.value[1], cases[i].f1, cases[i].exact);
        }
    }
    TEST_CHECK(tc, bad == 0, "%d of %d text scores wrong", bad, n);
    // a long caption of many short words: no overflow of the word tables
    char longref[2001], longgen[2001];
    for (int i = 0; i < 2000; i++) longref[i] = i % 2 ? ' ' : 'a' + i % 26, longgen[i] = 'x';
    longref[2000] = longgen[2000] = '\0';
    eval_score s = score_of(sc, longref, longref);
    TEST_CHECK(tc, s.value[0] == 1 && score_of(sc, longref, longgen).value[0] == 0,
               "a long caption");
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
    const eval_scorer *cap = eval_scorer_find("synth", EVAL_CAPTIONS);
    eval_tally t;
    eval_tally_init(&t, cap);
    eval_examples ex = {0};
    const char *refs[4] = {"a small red circle on the left", "a large blue square on the right",
                           "a small green cross at the top of a very long caption line",
                           "a large white triangle at the bottom"};
    const char *gens[4] = {"a small red circle on the left", "a large blue circle on the right", "",
                           "x"};
    for (int i = 0; i < 4; i++) {
        eval_tally_score(&t, &(eval_pair){.ref_text = refs[i], .gen_text = gens[i]}, NULL);
        eval_examples_add(&ex, refs[i], gens[i], strlen(gens[i]));
    }
    sink ko, km;
    eval_report_captions(sink_open(&ko), sink_open(&km), 40, 1.234567891234, &t, &ex);
    char *bo = sink_close(&ko), *bm = sink_close(&km);
    const char *want_out =
        "eval step 40 | val_loss 1.2346 | caption_acc 25.0% (colour 50.0%, shape 25.0%, size "
        "50.0%, position 50.0%) over 4 samples\n"
        "  ref: a small red circle on the left               gen: a small red circle on the left\n"
        "  ref: a large blue square on the right             gen: a large blue circle on the "
        "right\n"
        "  ref: a small green cross at the top of a very long caption line gen: \n";
    const char *want_met =
        "{\"step\":40,\"val_loss\":1.23456789,\"caption_acc\":0.25,\"acc_colour\":0.5,"
        "\"acc_shape\":0.25,\"acc_size\":0.5,\"acc_position\":0.5}\n";
    TEST_CHECK(tc, strcmp(bo, want_out) == 0, "caption summary:\n%s", bo);
    TEST_CHECK(tc, strcmp(bm, want_met) == 0, "caption metrics: %s", bm);
    free(bo);
    free(bm);

    eval_write_caption(sink_open(&ko), 17, "say \"hi\"\n", "tab\there", 8);
    eval_write_caption(NULL, 17, "", "", 0);  // a rank without the file writes nothing
    bo = sink_close(&ko);
    TEST_CHECK(tc,
               strcmp(bo,
                      "{\"sample_id\":17,\"reference\":\"say \\\"hi\\\"\\n\",\"generated\":"
                      "\"tab\\u0009here\"}\n") == 0,
               "caption line: %s", bo);
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
    eval_write_caption(sink_open(&ko), 3, "ref", "x\0y\x80\xFF", 5);
    char *bo = sink_close(&ko);
    TEST_CHECK(tc,
               strcmp(bo,
                      "{\"sample_id\":3,\"reference\":\"ref\",\"generated\":\"x\\u0000y"
                      "\xEF\xBF\xBD\xEF\xBF\xBD\",\"generated_invalid_bytes\":2}\n") == 0,
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
    double loss_sum = 0, want_loss = 0;
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
        eval_gather_exchange(&g, nb, nb ? (double)(first / b) : 0.0);
        for (int d = 0; d < dp; d++) {
            double l;
            int cnt = eval_gather_count(&g, d, &l);
            loss_sum += l;
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
    TEST_CHECK(tc, seen == n && bad == 0 && loss_sum == want_loss,
               "gather %lld in batches of %d over %d rank(s): %lld seen, %lld out of order, "
               "loss %g (want %g)",
               (long long)n, b, dp, (long long)seen, (long long)bad, loss_sum, want_loss);
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    test_counts tc = {0, 0};
    const int rank = comm_rank(world);
    if (rank == 0) {  // single-process parts once
        test_find(&tc);
        test_synth_captions(&tc);
        test_synth_images(&tc);
        test_text_captions(&tc);
        test_writers(&tc);
        test_escape(&tc);
    }
    test_gather(&tc, world, 10, 4);
    test_gather(&tc, world, 7, 1);
    test_gather(&tc, world, 3, 8);
    test_gather(&tc, world, 0, 4);
    int64_t sum[2] = {tc.passed, tc.failed};
    comm_allreduce_sum(world, sum, 2, COMM_I64);
    comm_finalize(world);
    tc.passed = (int)sum[0], tc.failed = (int)sum[1];
    if (rank != 0) return tc.failed ? 1 : 0;
    return test_finish(&tc);
}
