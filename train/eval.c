// eval.c: what evaluation does the same way for every model family (eval.h): the exchange
// of per-sample records over dp ranks, the caption metrics of any dataset and the synthetic
// set's rule, and the bytes evaluation writes (eval JSONL lines, the metrics.jsonl object,
// the printed summary). Keys runs have always written keep their place: tools read them.
#include "eval.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../data/data.h"

// ---------------------------------------------------------------------------------------
// Gathering.

// What leads each rank's message: its batch size and sums.
typedef struct {
    int64_t n;                      // records that follow (0: no batch this round)
    double sums[EVAL_GATHER_SUMS];  // the family's (its losses by input mode)
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

void eval_gather_exchange(eval_gather *g, int n_mine, const double *sums) {
    MM_CHECK(n_mine >= 0 && n_mine <= g->batch, "eval_gather_exchange: %d records of %d", n_mine,
             g->batch);
    gather_head h = {.n = n_mine};
    memcpy(h.sums, sums, sizeof(h.sums));
    memcpy(g->mine, &h, sizeof(h));
    comm_all_gather(g->dp, g->mine, g->all, g->msg, COMM_U8);
}

int eval_gather_count(const eval_gather *g, int d, double *sums) {
    MM_CHECK(d >= 0 && d < g->dp_size, "eval_gather_count: rank %d of %d", d, g->dp_size);
    gather_head h;
    memcpy(&h, g->all + g->msg * (size_t)d, sizeof(h));
    if (sums) memcpy(sums, h.sums, sizeof(h.sums));
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

// Both synth scorers judge a sample by the attributes its caption names.
static int synth_judges(const char *ref) {
    int attr[DATA_N_ATTR];
    return data_synth_attrs(ref, attr) == 0;
}

static const eval_scorer scorers[] = {
    {.name = "synth",
     .kind = EVAL_CAPTIONS,
     .n_metrics = 1 + DATA_N_ATTR,
     .metric = synth_caption_metrics,
     .score = score_synth_caption,
     .judges = synth_judges},
    {.name = "synth",
     .kind = EVAL_IMAGES,
     .n_metrics = 3,
     .metric = synth_image_metrics,
     .n_notes = 3,
     .note = synth_image_notes,
     .score = score_synth_image,
     .judges = synth_judges},
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
// Caption metrics (eval_text; definitions in eval.h).

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

static int ascii_space(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r');
}
static char ascii_lower(unsigned char c) {
    return (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
}

// s[0..n) lowercased, its whitespace runs made one space and trimmed, into out (n bytes at
// least); returns the length. Exact match compares these; BLEU splits them at the spaces.
static size_t normalise(const char *s, size_t n, char *out) {
    size_t k = 0;
    int gap = 0;
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        if (ascii_space(c)) {
            gap = k > 0;
            continue;
        }
        if (gap) out[k++] = ' ';
        gap = 0;
        out[k++] = ascii_lower(c);
    }
    return k;
}

// s[0..n) as characters, one code each into out (n codes at least): a valid UTF-8 sequence
// is its bytes, a byte that starts none is 0x80000000 | byte (no sequence packs to that).
static size_t to_chars(const char *s, size_t n, uint32_t *out) {
    const uint8_t *u = (const uint8_t *)s;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        const size_t len = utf8_unit(u, n, i);
        uint32_t c = len ? 0 : 0x80000000u | u[i];
        for (size_t j = 0; j < len; j++) c = c << 8 | u[i + j];
        out[k++] = c;
        i += len ? len : 1;
    }
    return k;
}

// Levenshtein distance of a and b: the classic dynamic programme, one row kept.
static int64_t levenshtein(const uint32_t *a, size_t na, const uint32_t *b, size_t nb) {
    int64_t *row = mm_malloc((nb + 1) * sizeof(int64_t));
    for (size_t j = 0; j <= nb; j++) row[j] = (int64_t)j;
    for (size_t i = 1; i <= na; i++) {
        int64_t diag = row[0];  // row i-1, column j-1
        row[0] = (int64_t)i;
        for (size_t j = 1; j <= nb; j++) {
            const int64_t up = row[j];
            int64_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    const int64_t d = row[nb];
    free(row);
    return d;
}

typedef struct {
    const char *p;
    size_t n;
} word;

// The words of a normalised string (separated by single spaces) into w; returns the count.
static size_t split_normalised(const char *s, size_t n, word *w) {
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && s[j] != ' ') j++;
        w[k++] = (word){s + i, j - i};
        i = j + 1;
    }
    return k;
}

static int ngram_eq(const word *a, const word *b, int n) {
    for (int k = 0; k < n; k++)
        if (a[k].n != b[k].n || memcmp(a[k].p, b[k].p, a[k].n) != 0) return 0;
    return 1;
}

// BLEU's counts for n-grams: *total += h's n-grams; *match += each distinct one's count in h,
// clipped to its count in r. Quadratic, which captions' lengths afford.
static void bleu_counts(const word *h, size_t nh, const word *r, size_t nr, int n, int64_t *match,
                        int64_t *total) {
    if (nh < (size_t)n) return;
    *total += (int64_t)(nh - (size_t)n + 1);
    for (size_t i = 0; i + n <= nh; i++) {
        int first = 1;
        for (size_t j = 0; j < i && first; j++) first = !ngram_eq(h + j, h + i, n);
        if (!first) continue;  // counted at its first occurrence
        int64_t ch = 0, cr = 0;
        for (size_t j = i; j + n <= nh; j++) ch += ngram_eq(h + j, h + i, n);
        for (size_t j = 0; j + n <= nr; j++) cr += ngram_eq(r + j, h + i, n);
        *match += ch < cr ? ch : cr;
    }
}

// The words of s[0..n) for word F1, normalised: ASCII letters lowercased; ASCII spaces,
// controls (NUL included) and punctuation separate words; other bytes (digits, UTF-8) are
// kept as they are. buf (n + 1 bytes) receives them NUL-separated, w[] points at each.
// Returns the count.
static int split_words(const char *s, size_t n, char *buf, const char **w) {
    int nw = 0;
    size_t k = 0;
    int in_word = 0;
    for (size_t i = 0; i < n; i++) {
        const unsigned char c = (unsigned char)s[i];
        if (c < 0x80 && (isspace(c) || ispunct(c) || iscntrl(c))) {
            if (in_word) buf[k++] = '\0';
            in_word = 0;
            continue;
        }
        if (!in_word) w[nw++] = buf + k;
        in_word = 1;
        buf[k++] = ascii_lower(c);
    }
    if (in_word) buf[k] = '\0';
    return nw;
}

static int cmp_word(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// F1 of the two captions' bags of words: 2 * common / (words of one + words of the other),
// each word counted as often as both have it; 1 when both have no words.
static double word_f1(const char *ref, size_t lr, const char *gen, size_t lg) {
    char *br = mm_malloc(lr + 1), *bg = mm_malloc(lg + 1);
    const char **wr = mm_malloc(sizeof(char *) * (lr / 2 + 1));
    const char **wg = mm_malloc(sizeof(char *) * (lg / 2 + 1));
    int nr = split_words(ref, lr, br, wr), ng = split_words(gen, lg, bg, wg);
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

void eval_text_init(eval_text *t) {
    memset(t, 0, sizeof(*t));
}

void eval_text_add(eval_text *t, const char *ref, size_t ref_n, const char *gen, size_t gen_n,
                   eval_text_one *one) {
    char *nr = mm_malloc(ref_n + 1), *ng = mm_malloc(gen_n + 1);
    const size_t lr = normalise(ref, ref_n, nr), lg = normalise(gen, gen_n, ng);
    eval_text_one o = {.exact = lr == lg && memcmp(nr, ng, lr) == 0};
    uint32_t *cr = mm_malloc((ref_n + 1) * sizeof(uint32_t));
    uint32_t *cg = mm_malloc((gen_n + 1) * sizeof(uint32_t));
    const size_t kr = to_chars(ref, ref_n, cr), kg = to_chars(gen, gen_n, cg);
    o.edits = levenshtein(cg, kg, cr, kr);
    o.ref_chars = (int64_t)kr;
    word *wr = mm_malloc((lr / 2 + 1) * sizeof(word)), *wg = mm_malloc((lg / 2 + 1) * sizeof(word));
    const size_t nwr = split_normalised(nr, lr, wr), nwg = split_normalised(ng, lg, wg);
    for (int n = 1; n <= 4; n++)
        bleu_counts(wg, nwg, wr, nwr, n, &t->match[n - 1], &t->total[n - 1]);
    o.f1 = word_f1(ref, ref_n, gen, gen_n);
    t->n++;
    t->exact += o.exact;
    t->edits += o.edits;
    t->ref_chars += o.ref_chars;
    t->hyp_words += (int64_t)nwg;
    t->ref_words += (int64_t)nwr;
    t->f1 += o.f1;
    if (one) *one = o;
    free(nr);
    free(ng);
    free(cr);
    free(cg);
    free(wr);
    free(wg);
}

double eval_text_exact(const eval_text *t) {
    return t->n ? (double)t->exact / (double)t->n : 0.0;
}

double eval_text_cer(const eval_text *t) {
    return t->ref_chars ? (double)t->edits / (double)t->ref_chars : NAN;
}

double eval_text_bleu4(const eval_text *t) {
    if (t->hyp_words == 0) return 0.0;
    double log_p = 0.0;
    for (int n = 0; n < 4; n++) {
        if (t->match[n] == 0) return 0.0;  // no smoothing
        log_p += log((double)t->match[n] / (double)t->total[n]);
    }
    const double c = (double)t->hyp_words, r = (double)t->ref_words;
    return (c > r ? 1.0 : exp(1.0 - r / c)) * exp(log_p / 4.0);
}

double eval_text_f1(const eval_text *t) {
    return t->n ? t->f1 / (double)t->n : 0.0;
}

// ---------------------------------------------------------------------------------------
// Writing.

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

static size_t md_cell(char *out, const char *s) {
    size_t o = 0;
    for (; *s; s++) {
        if (ispunct((unsigned char)*s)) out[o++] = '\\';
        out[o++] = *s;
    }
    return o;
}

void eval_examples_markdown(const eval_examples *e, char *out, size_t cap) {
    MM_CHECK(cap >= EVAL_EXAMPLES_MD, "eval_examples_markdown: %zu bytes", cap);
    size_t o = (size_t)sprintf(out, "| reference | generated |\n|---|---|\n");
    for (int i = 0; i < e->n; i++) {
        o += (size_t)sprintf(out + o, "| ");
        o += md_cell(out + o, e->ref[i]);
        o += (size_t)sprintf(out + o, " | ");
        o += md_cell(out + o, e->gen[i]);
        o += (size_t)sprintf(out + o, " |\n");
    }
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

// ,"<key>":"..."[,"<key>_invalid_bytes":N],"exact<sfx>":E,"cer<sfx>":C|null
static void write_gen(FILE *f, const char *key, const char *sfx, const eval_caption_gen *g) {
    fprintf(f, ",\"%s\":", key);
    const size_t bad = json_string_n(f, g->gen, g->gen_n);
    if (bad) fprintf(f, ",\"%s_invalid_bytes\":%zu", key, bad);
    fprintf(f, ",\"exact%s\":%d,\"cer%s\":", sfx, g->s.exact, sfx);
    if (g->s.ref_chars)
        fprintf(f, "%.9g", (double)g->s.edits / (double)g->s.ref_chars);
    else
        fputs("null", f);
}

void eval_write_caption(FILE *f, uint64_t id, const char *ref, const eval_caption_gen *given,
                        const eval_caption_gen *image, const eval_caption_gen *audio) {
    if (!f) return;
    fprintf(f, "{\"sample_id\":%llu,\"reference\":", (unsigned long long)id);
    json_string_n(f, ref, strlen(ref));
    write_gen(f, "generated", "", given);
    if (image) write_gen(f, "generated_image", "_image", image);
    if (audio) write_gen(f, "generated_audio", "_audio", audio);
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

const char *const eval_mode_name[EVAL_N_MODES] = {"", "image", "audio", "both"};
static const char *const mode_label[EVAL_N_MODES] = {"as given", "image only", "audio only",
                                                     "both"};

void eval_captions_init(eval_captions *e, const eval_scorer *rule) {
    memset(e, 0, sizeof(*e));
    e->rule = rule;
    for (int m = 0; m < EVAL_N_MODES; m++) {
        eval_text_init(&e->text[m]);
        if (rule) eval_tally_init(&e->tally[m], rule);
    }
}

void eval_captions_add(eval_captions *e, int m, const char *ref, const char *gen, size_t gen_n,
                       eval_text_one *one) {
    MM_CHECK(m >= 0 && m < EVAL_N_MODES, "eval_captions_add: mode %d", m);
    eval_text_add(&e->text[m], ref, strlen(ref), gen, gen_n, one);
    if (e->rule)
        eval_tally_score(&e->tally[m], &(eval_pair){.ref_text = ref, .gen_text = gen}, NULL);
    if (m != EVAL_GIVEN) return;
    if (e->rule && !e->rule->judges(ref)) e->not_rule++;
    eval_examples_add(&e->ex, ref, gen, gen_n);
}

int eval_captions_rule_applies(const eval_captions *e) {
    return e->rule && e->not_rule == 0 && e->text[EVAL_GIVEN].n > 0;
}

// " | exact X% | CER X% | BLEU-4 X | F1 X%": BLEU on its usual 0-100 scale.
static void text_summary(FILE *out, const eval_text *t) {
    const double cer = eval_text_cer(t);
    fprintf(out, " | exact %.1f%% | ", 100.0 * eval_text_exact(t));
    if (isnan(cer))
        fputs("CER n/a", out);
    else
        fprintf(out, "CER %.1f%%", 100.0 * cer);
    fprintf(out, " | BLEU-4 %.1f | F1 %.1f%%", 100.0 * eval_text_bleu4(t), 100.0 * eval_text_f1(t));
}

static void text_keys(FILE *f, const eval_text *t, const char *sfx) {
    const double cer = eval_text_cer(t);
    fprintf(f, ",\"caption_exact%s\":%.9g", sfx, eval_text_exact(t));
    if (!isnan(cer)) fprintf(f, ",\"caption_cer%s\":%.9g", sfx, cer);
    fprintf(f, ",\"caption_bleu4%s\":%.9g,\"caption_f1%s\":%.9g", sfx, eval_text_bleu4(t), sfx,
            eval_text_f1(t));
}

void eval_report_captions(FILE *out, FILE *metrics, int64_t step, const eval_captions *e) {
    const eval_scorer *sc = eval_captions_rule_applies(e) ? e->rule : NULL;
    double vl[EVAL_N_MODES];
    for (int m = 0; m < EVAL_N_MODES; m++) vl[m] = e->n[m] ? e->loss_sum[m] / (double)e->n[m] : NAN;
    char buf[48];
    if (out) {
        fprintf(out, "eval step %lld | %s", (long long)step, val_loss_text(vl[EVAL_GIVEN], buf));
        text_summary(out, &e->text[EVAL_GIVEN]);
        fprintf(out, " | %lld samples\n", (long long)e->n[EVAL_GIVEN]);
        for (int m = EVAL_GIVEN + 1; m < EVAL_N_MODES; m++) {
            if (!e->n[m]) continue;
            fprintf(out, "  %s: %s", mode_label[m], val_loss_text(vl[m], buf));
            if (e->text[m].n) text_summary(out, &e->text[m]);
            fprintf(out, " | %lld samples\n", (long long)e->n[m]);
        }
        if (sc) {
            const eval_tally *t = e->tally;
            fprintf(out, "  synthetic set's rule: %s %.1f%% (", sc->metric[0].label,
                    100.0 * eval_tally_mean(&t[EVAL_GIVEN], 0));
            for (int k = 1; k < sc->n_metrics; k++)
                fprintf(out, "%s%s %.1f%%", k > 1 ? ", " : "", sc->metric[k].label,
                        100.0 * eval_tally_mean(&t[EVAL_GIVEN], k));
            const char *sep = "; ";
            for (int m = EVAL_GIVEN + 1; m < EVAL_N_MODES; m++) {
                if (!t[m].n) continue;
                fprintf(out, "%s%s %.1f%%", sep, mode_label[m], 100.0 * eval_tally_mean(&t[m], 0));
                sep = ", ";
            }
            fputs(")\n", out);
        }
        for (int i = 0; i < e->ex.n; i++)
            fprintf(out, "  ref: %-44s gen: %s\n", e->ex.ref[i], e->ex.gen[i]);
        fflush(out);
    }
    if (metrics) {
        // the keys runs have always written first, in their order
        fprintf(metrics, "{\"step\":%lld", (long long)step);
        if (!isnan(vl[EVAL_GIVEN])) fprintf(metrics, ",\"val_loss\":%.9g", vl[EVAL_GIVEN]);
        for (int k = 0; sc && k < sc->n_metrics; k++)
            fprintf(metrics, ",\"%s\":%.9g", sc->metric[k].key,
                    eval_tally_mean(&e->tally[EVAL_GIVEN], k));
        text_keys(metrics, &e->text[EVAL_GIVEN], "");
        for (int m = EVAL_GIVEN + 1; m < EVAL_N_MODES; m++) {
            if (!e->n[m]) continue;
            char sfx[16];
            snprintf(sfx, sizeof(sfx), "_%s", eval_mode_name[m]);
            fprintf(metrics, ",\"val_loss%s\":%.9g", sfx, vl[m]);
            if (e->text[m].n) text_keys(metrics, &e->text[m], sfx);
            for (int k = 0; sc && e->tally[m].n && k < sc->n_metrics; k++)
                fprintf(metrics, ",\"%s%s\":%.9g", sc->metric[k].key, sfx,
                        eval_tally_mean(&e->tally[m], k));
        }
        fputs("}\n", metrics);
        fflush(metrics);
    }
}

void eval_report_images(FILE *out, FILE *metrics, int64_t step, double val_loss,
                        const eval_tally *t, int n_modes, const char *const *mode, int head,
                        int prompts) {
    char buf[48];
    if (!t) {  // nothing scored: the loss alone
        if (out) {
            fprintf(out, "eval step %lld | %s\n", (long long)step, val_loss_text(val_loss, buf));
            fflush(out);
        }
        if (metrics) {
            fprintf(metrics, "{\"step\":%lld", (long long)step);
            if (!isnan(val_loss)) fprintf(metrics, ",\"val_loss\":%.9g", val_loss);
            fputs("}\n", metrics);
            fflush(metrics);
        }
        return;
    }
    MM_CHECK(n_modes >= 1 && head >= 0 && head < n_modes, "eval_report_images: mode %d of %d", head,
             n_modes);
    const eval_scorer *sc = t[0].sc;
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
