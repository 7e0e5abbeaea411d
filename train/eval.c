// eval.c: what evaluation does the same way for every model family (eval.h): the exchange
// of per-sample records over dp ranks, the scorers that eval.scorer chooses from, and the
// bytes evaluation writes (eval JSONL lines, the metrics.jsonl object, the printed summary).
// The formats are the ones runs have always written: tools read them.
#include "eval.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"

// ---------------------------------------------------------------------------------------
// Gathering.

// What leads each rank's message: its batch size and loss.
typedef struct {
    int64_t n;    // records that follow (0 when the rank had no batch this round)
    double loss;  // sum of the batch's per-sample losses
} gather_head;

void eval_gather_init(eval_gather *g, comm_group *dp, int dp_rank, int dp_size, int64_t n,
                      int batch, size_t rec_bytes) {
    MM_CHECK(dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size && n >= 0 && batch >= 1,
             "eval_gather_init: dp %d of %d, %lld samples, batch %d", dp_rank, dp_size,
             (long long)n, batch);
    memset(g, 0, sizeof(*g));
    g->dp = dp;
    g->dp_rank = dp_rank;
    g->dp_size = dp_size;
    g->n = n;
    g->batch = batch;
    g->rec = (rec_bytes + 7) / 8 * 8;
    g->msg = sizeof(gather_head) + (size_t)batch * g->rec;
    g->mine = mm_calloc(g->msg, 1);
    g->all = mm_malloc(g->msg * (size_t)dp_size);
}

void eval_gather_free(eval_gather *g) {
    free(g->mine);
    free(g->all);
    memset(g, 0, sizeof(*g));
}

int64_t eval_gather_rounds(const eval_gather *g) {
    const int64_t n_batches = (g->n + g->batch - 1) / g->batch;
    return (n_batches + g->dp_size - 1) / g->dp_size;
}

int eval_gather_batch(const eval_gather *g, int64_t round, int64_t *first) {
    const int64_t bi = round * g->dp_size + g->dp_rank;
    *first = bi * g->batch;
    if (*first >= g->n) return 0;
    return (int)(g->n - *first < g->batch ? g->n - *first : g->batch);
}

void *eval_gather_mine(eval_gather *g, int i) {
    MM_CHECK(i >= 0 && i < g->batch, "eval_gather_mine: record %d of %d", i, g->batch);
    return g->mine + sizeof(gather_head) + (size_t)i * g->rec;
}

void eval_gather_exchange(eval_gather *g, int n_mine, double loss) {
    MM_CHECK(n_mine >= 0 && n_mine <= g->batch, "eval_gather_exchange: %d records of %d", n_mine,
             g->batch);
    const gather_head h = {n_mine, loss};
    memcpy(g->mine, &h, sizeof(h));
    comm_all_gather(g->dp, g->mine, g->all, g->msg, COMM_U8);
}

int eval_gather_count(const eval_gather *g, int d, double *loss) {
    MM_CHECK(d >= 0 && d < g->dp_size, "eval_gather_count: rank %d of %d", d, g->dp_size);
    gather_head h;
    memcpy(&h, g->all + g->msg * (size_t)d, sizeof(h));
    if (loss) *loss = h.loss;
    return (int)h.n;
}

const void *eval_gather_record(const eval_gather *g, int d, int i) {
    MM_CHECK(d >= 0 && d < g->dp_size && i >= 0 && i < g->batch,
             "eval_gather_record: rank %d of %d, record %d of %d", d, g->dp_size, i, g->batch);
    return g->all + g->msg * (size_t)d + sizeof(gather_head) + (size_t)i * g->rec;
}

// ---------------------------------------------------------------------------------------
// Scorers.

// synth, captions: the generated caption names each attribute as the reference does.
static const eval_metric synth_caption_metrics[1 + DATA_N_ATTR] = {{"caption_acc", "caption_acc"},
                                                                   {"acc_colour", "colour"},
                                                                   {"acc_shape", "shape"},
                                                                   {"acc_size", "size"},
                                                                   {"acc_position", "position"}};

static void score_synth_caption(const eval_pair *p, eval_score *s) {
    int correct[DATA_N_ATTR];
    s->value[0] = data_synth_score(p->ref_text, p->gen_text, correct);
    for (int a = 0; a < DATA_N_ATTR; a++) s->value[1 + a] = correct[a];
}

// synth, images: colour and shape read off the pixels (data_synth_classify) against the
// ones the prompt names; a prompt the rule cannot parse, or an image without a shape, is
// wrong in every metric and notes -1 for what it could not read.
static const eval_metric synth_image_metrics[3] = {
    {"cond_acc", "cond_acc"}, {"colour_acc", "colour right"}, {"shape_acc", "shape right"}};
static const char *const synth_image_notes[3] = {"colour", "shape", "right"};

static void score_synth_image(const eval_pair *p, eval_score *s) {
    int attr[DATA_N_ATTR], colour = -1, shape = -1;
    int read = data_synth_attrs(p->ref_text, attr) == 0 &&
               data_synth_classify(p->gen_image, p->h, p->w, p->c, &colour, &shape) == 0;
    int ok = read && colour == attr[0] && shape == attr[1];
    s->value[0] = ok;
    s->value[1] = read && colour == attr[0];
    s->value[2] = read && shape == attr[1];
    s->note[0] = colour;
    s->note[1] = shape;
    s->note[2] = ok;
}

// text, captions: for data without a rule of its own. Word F1 is the headline because a
// caption that says the right things in another order or case is nearly right, which exact
// match (the strict second metric) cannot tell from nonsense.
static const eval_metric text_caption_metrics[2] = {{"caption_f1", "caption_f1"},
                                                    {"caption_exact", "exact"}};

// The words of s, normalised: ASCII letters lowercased; ASCII spaces, controls and
// punctuation separate words; other bytes (digits, UTF-8) are kept as they are. buf
// (strlen(s) + 1 bytes) receives them NUL-separated, w[] points at each. Returns the count.
static int split_words(const char *s, char *buf, const char **w) {
    int n = 0;
    size_t k = 0;
    int in_word = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int sep = *p < 0x80 && (isspace(*p) || ispunct(*p) || iscntrl(*p));
        if (sep) {
            if (in_word) buf[k++] = '\0';
            in_word = 0;
            continue;
        }
        if (!in_word) w[n++] = buf + k;
        in_word = 1;
        buf[k++] = (char)(*p < 0x80 ? tolower(*p) : *p);
    }
    if (in_word) buf[k] = '\0';
    return n;
}

static int cmp_word(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// F1 of the two captions' bags of words: 2 * common / (words of one + words of the other),
// each word counted as often as both have it; 1 when both have no words.
static double word_f1(const char *ref, const char *gen) {
    size_t lr = strlen(ref), lg = strlen(gen);
    char *br = mm_malloc(lr + 1), *bg = mm_malloc(lg + 1);
    const char **wr = mm_malloc(sizeof(char *) * (lr / 2 + 1));
    const char **wg = mm_malloc(sizeof(char *) * (lg / 2 + 1));
    int nr = split_words(ref, br, wr), ng = split_words(gen, bg, wg);
    qsort(wr, (size_t)nr, sizeof(char *), cmp_word);
    qsort(wg, (size_t)ng, sizeof(char *), cmp_word);
    int common = 0;
    for (int i = 0, j = 0; i < nr && j < ng;) {
        int c = strcmp(wr[i], wg[j]);
        if (c == 0) common++;
        if (c <= 0) i++;
        if (c >= 0) j++;
    }
    free(br);
    free(bg);
    free(wr);
    free(wg);
    return nr + ng == 0 ? 1.0 : 2.0 * common / (nr + ng);
}

static void score_text_caption(const eval_pair *p, eval_score *s) {
    s->value[0] = word_f1(p->ref_text, p->gen_text);
    s->value[1] = strcmp(p->ref_text, p->gen_text) == 0;
}

static const eval_scorer scorers[] = {
    {.name = "synth",
     .kind = EVAL_CAPTIONS,
     .n_metrics = 1 + DATA_N_ATTR,
     .metric = synth_caption_metrics,
     .score = score_synth_caption},
    {.name = "synth",
     .kind = EVAL_IMAGES,
     .n_metrics = 3,
     .metric = synth_image_metrics,
     .n_notes = 3,
     .note = synth_image_notes,
     .score = score_synth_image},
    {.name = "text",
     .kind = EVAL_CAPTIONS,
     .n_metrics = 2,
     .metric = text_caption_metrics,
     .score = score_text_caption},
};

const eval_scorer *eval_scorer_find(const char *name, eval_kind kind) {
    for (size_t i = 0; i < sizeof(scorers) / sizeof(scorers[0]); i++)
        if (scorers[i].kind == kind && strcmp(scorers[i].name, name) == 0) return &scorers[i];
    return NULL;
}

void eval_tally_init(eval_tally *t, const eval_scorer *sc) {
    memset(t, 0, sizeof(*t));
    t->sc = sc;
}

void eval_tally_score(eval_tally *t, const eval_pair *p, eval_score *out) {
    eval_score s;
    memset(&s, 0, sizeof(s));
    t->sc->score(p, &s);
    for (int k = 0; k < t->sc->n_metrics; k++) t->sum[k] += s.value[k];
    t->n++;
    if (out) *out = s;
}

double eval_tally_mean(const eval_tally *t, int k) {
    return t->n ? t->sum[k] / (double)t->n : 0.0;
}

// ---------------------------------------------------------------------------------------
// Writing.

// One character of s at i, as its bytes may be written: the length of a valid UTF-8
// sequence (1 for ASCII, NUL and controls included), or 0 for a byte that starts none.
static size_t utf8_unit(const uint8_t *s, size_t n, size_t i) {
    const uint8_t b = s[i];
    size_t len = b < 0x80                 ? 1
                 : b >= 0xC2 && b <= 0xDF ? 2
                 : b >= 0xE0 && b <= 0xEF ? 3
                 : b >= 0xF0 && b <= 0xF4 ? 4
                                          : 0;
    size_t at;
    if (len == 0 || len > n - i || (len > 1 && mm_utf8_check(s + i, len, &at))) return 0;
    return len;
}

size_t eval_escape(char *out, size_t cap, const char *s, size_t n, eval_esc mode, size_t *bad) {
    static const char fffd[] = "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER, in UTF-8
    const uint8_t *u = (const uint8_t *)s;
    size_t k = 0, nbad = 0;
    for (size_t i = 0; i < n;) {
        char tmp[8];
        const char *piece = tmp;
        size_t len = utf8_unit(u, n, i), step = len ? len : 1;
        const uint8_t b = u[i];
        if (len == 0) {
            piece = fffd;
            nbad++;
        } else if (len > 1) {
            memcpy(tmp, u + i, len);
            tmp[len] = '\0';
        } else if (mode == EVAL_ESC_JSON) {
            if (b == '"' || b == '\\')
                snprintf(tmp, sizeof(tmp), "\\%c", b);
            else if (b == '\n')
                piece = "\\n";
            else if (b < 0x20 || b == 0x7F)
                snprintf(tmp, sizeof(tmp), "\\u%04x", b);
            else
                tmp[0] = (char)b, tmp[1] = '\0';
        } else {  // EVAL_ESC_TERM: nothing the terminal would act on
            if (b == '\\')
                piece = "\\\\";
            else if (b == '\n')
                piece = "\\n";
            else if (b == '\t')
                piece = "\\t";
            else if (b < 0x20 || b == 0x7F)
                snprintf(tmp, sizeof(tmp), "\\x%02X", b);
            else
                tmp[0] = (char)b, tmp[1] = '\0';
        }
        const size_t pl = strlen(piece);
        if (k + pl + 1 > cap) break;  // never cut an escape or a character
        memcpy(out + k, piece, pl);
        k += pl;
        i += step;
    }
    if (cap) out[k] = '\0';
    if (bad) *bad = nbad;
    return k;
}

void eval_examples_add(eval_examples *e, const char *ref, const char *gen, size_t gen_n) {
    if (e->n >= EVAL_N_EXAMPLES) return;
    eval_escape(e->ref[e->n], sizeof(e->ref[0]), ref, strlen(ref), EVAL_ESC_TERM, NULL);
    eval_escape(e->gen[e->n], sizeof(e->gen[0]), gen, gen_n, EVAL_ESC_TERM, NULL);
    e->n++;
}

// Writes s[0..n) as a JSON string (quotes included); returns its invalid UTF-8 byte count.
static size_t json_string_n(FILE *f, const char *s, size_t n) {
    const size_t cap = 6 * n + 1;  // the longest escape, \u00XX, is 6 bytes for 1
    char *buf = mm_malloc(cap);
    size_t bad;
    const size_t k = eval_escape(buf, cap, s, n, EVAL_ESC_JSON, &bad);
    fputc('"', f);
    fwrite(buf, 1, k, f);
    fputc('"', f);
    free(buf);
    return bad;
}

void eval_write_caption(FILE *f, uint64_t id, const char *ref, const char *gen, size_t gen_n) {
    if (!f) return;
    fprintf(f, "{\"sample_id\":%llu,\"reference\":", (unsigned long long)id);
    json_string_n(f, ref, strlen(ref));
    fputs(",\"generated\":", f);
    const size_t bad = json_string_n(f, gen, gen_n);
    if (bad) fprintf(f, ",\"generated_invalid_bytes\":%zu", bad);
    fputs("}\n", f);
}

void eval_write_image(FILE *f, uint64_t id, const char *mode, const char *prompt,
                      const eval_scorer *sc, const eval_score *s) {
    if (!f) return;
    fprintf(f, "{\"sample_id\":%llu,\"mode\":\"%s\",\"prompt\":", (unsigned long long)id, mode);
    json_string_n(f, prompt, strlen(prompt));
    for (int k = 0; k < sc->n_notes; k++) fprintf(f, ",\"%s\":%d", sc->note[k], s->note[k]);
    fputs("}\n", f);
}

// "val_loss L", or "val_loss n/a" for NAN (nothing to evaluate it on).
static const char *val_loss_text(double v, char buf[48]) {
    if (isnan(v))
        snprintf(buf, 48, "val_loss n/a");
    else
        snprintf(buf, 48, "val_loss %.4f", v);
    return buf;
}

void eval_report_captions(FILE *out, FILE *metrics, int64_t step, double val_loss,
                          const eval_tally *t, const eval_examples *ex) {
    const eval_scorer *sc = t->sc;
    char buf[48];
    if (out) {
        fprintf(out, "eval step %lld | %s | %s %.1f%% (", (long long)step,
                val_loss_text(val_loss, buf), sc->metric[0].label, 100.0 * eval_tally_mean(t, 0));
        for (int k = 1; k < sc->n_metrics; k++)
            fprintf(out, "%s%s %.1f%%", k > 1 ? ", " : "", sc->metric[k].label,
                    100.0 * eval_tally_mean(t, k));
        fprintf(out, ") over %lld samples\n", (long long)t->n);
        for (int i = 0; ex && i < ex->n; i++)
            fprintf(out, "  ref: %-44s gen: %s\n", ex->ref[i], ex->gen[i]);
        fflush(out);
    }
    if (metrics) {
        fprintf(metrics, "{\"step\":%lld", (long long)step);
        if (!isnan(val_loss)) fprintf(metrics, ",\"val_loss\":%.9g", val_loss);
        for (int k = 0; k < sc->n_metrics; k++)
            fprintf(metrics, ",\"%s\":%.9g", sc->metric[k].key, eval_tally_mean(t, k));
        fputs("}\n", metrics);
        fflush(metrics);
    }
}

void eval_report_images(FILE *out, FILE *metrics, int64_t step, double val_loss,
                        const eval_tally *t, int n_modes, const char *const *mode, int head,
                        int prompts) {
    MM_CHECK(n_modes >= 1 && head >= 0 && head < n_modes, "eval_report_images: mode %d of %d", head,
             n_modes);
    const eval_scorer *sc = t[0].sc;
    char buf[48];
    if (out) {
        fprintf(out, "eval step %lld | %s | %s %.1f%% (", (long long)step,
                val_loss_text(val_loss, buf), sc->metric[0].label,
                100.0 * eval_tally_mean(&t[head], 0));
        for (int m = 0; m < n_modes; m++)
            fprintf(out, "%s%s %.1f%%", m ? ", " : "", mode[m], 100.0 * eval_tally_mean(&t[m], 0));
        fprintf(out, ") over %d prompts each", prompts);
        for (int k = 1; k < sc->n_metrics; k++) {
            fprintf(out, "%s%s ", k > 1 ? ", " : "; ", sc->metric[k].label);
            for (int m = 0; m < n_modes; m++)
                fprintf(out, "%s%.0f", m ? "/" : "", 100.0 * eval_tally_mean(&t[m], k));
            fputs("%", out);
        }
        fputs("\n", out);
        fflush(out);
    }
    if (metrics) {
        fprintf(metrics, "{\"step\":%lld", (long long)step);
        if (!isnan(val_loss)) fprintf(metrics, ",\"val_loss\":%.9g", val_loss);
        fprintf(metrics, ",\"%s\":%.9g", sc->metric[0].key, eval_tally_mean(&t[head], 0));
        for (int m = 0; m < n_modes; m++)
            for (int k = 0; k < sc->n_metrics; k++)
                fprintf(metrics, ",\"%s_%s\":%.9g", sc->metric[k].key, mode[m],
                        eval_tally_mean(&t[m], k));
        fputs("}\n", metrics);
        fflush(metrics);
    }
}
