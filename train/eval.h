// eval.h: evaluation split into its jobs, so that a model family only computes and a new
// way of scoring or a new dataset does not mean another copy of the loop:
//   computing  stays in the family (family_lm.c, family_dit.c): validation loss and what the
//              model generates, packed into fixed-size per-sample records;
//   gathering  eval_gather: the records of every dp rank to every rank, in batch order, so
//              the results do not depend on the layout;
//   scoring    captions of any dataset against their reference (eval_text: exact match,
//              character error rate, BLEU-4, word F1); a dataset's own rule on top
//              (eval_scorer "synth": the synthetic set's attributes, applied only when the
//              data is the synthetic set, eval_scorer.judges);
//   writing    the eval/step_*.jsonl lines, the metrics.jsonl object and the printed summary.
#ifndef MM_EVAL_H
#define MM_EVAL_H

#include <stdint.h>
#include <stdio.h>

#include "../comm/comm.h"
#include "../core/core.h"

// ---------------------------------------------------------------------------------------
// Gathering. n samples in batches of `batch`; in round r, dp rank d evaluates batch
// r * dp + d (none when that is past the last). After each round's exchange every rank holds
// the round's batches in dp-rank order, which is batch order, so whoever reads them in that
// order sees the samples 0..n-1 in order, for any number of dp ranks. Each batch also sends
// EVAL_GATHER_SUMS numbers (the family's batch sums: its losses per input mode).
enum { EVAL_GATHER_SUMS = 4 };
typedef struct {
    comm_group *dp;  // not owned
    int dp_rank, dp_size;
    int64_t n;            // samples evaluated
    int batch;            // samples per batch
    size_t rec;           // bytes of one record, rounded up to 8
    size_t msg;           // bytes one rank sends per round: a header and batch records
    uint8_t *mine, *all;  // owned: this rank's message, every rank's (dp_size messages)
} eval_gather;

// rec_bytes: the family's record (it decides what goes in); rounded up to 8 bytes so that
// 8-byte fields at offset 0 stay aligned.
void eval_gather_init(eval_gather *g, comm_group *dp, int dp_rank, int dp_size, int64_t n,
                      int batch, size_t rec_bytes);
void eval_gather_free(eval_gather *g);
// Rounds it takes: every dp rank runs all of them (the exchange is collective).
int64_t eval_gather_rounds(const eval_gather *g);
// This rank's batch of round r: *first = the index of its first sample; returns its size
// (0 when it has none this round).
int eval_gather_batch(const eval_gather *g, int64_t round, int64_t *first);
// Record i of this rank's batch, for the family to fill before the exchange (rec bytes).
void *eval_gather_mine(eval_gather *g, int i);
// Collective over dp: sends this rank's n_mine records and its batch's sums
// (EVAL_GATHER_SUMS numbers; all 0 when it has no batch).
void eval_gather_exchange(eval_gather *g, int n_mine, const double *sums);
// After the exchange: dp rank d's batch of the round, its size (0: none) and its sums
// (sums may be NULL).
int eval_gather_count(const eval_gather *g, int d, double *sums);
const void *eval_gather_record(const eval_gather *g, int d, int i);

// ---------------------------------------------------------------------------------------
// Scoring.
typedef enum { EVAL_CAPTIONS, EVAL_IMAGES } eval_kind;  // what a family generates

// A validation sample's caption and what the model generated from it: a caption
// (EVAL_CAPTIONS) or an image (EVAL_IMAGES), the other one NULL. Nothing is owned.
typedef struct {
    const char *ref_text;      // NUL-terminated
    const char *gen_text;      // NUL-terminated, or NULL
    const uint8_t *gen_image;  // (h, w, c) uint8, or NULL
    int h, w, c;
} eval_pair;

enum { EVAL_MAX_METRICS = 8, EVAL_MAX_NOTES = 4 };

typedef struct {
    const char *key;    // in metrics.jsonl (per conditioning mode: key_<mode>)
    const char *label;  // in the printed summary
} eval_metric;

// One pair's result. Metrics are means over samples, so each value is the pair's share of
// it (0 or 1 for a yes/no rule). Notes are what the scorer read off the output (e.g. the
// colour it saw), written into the pair's eval JSONL line where the family writes them.
typedef struct {
    double value[EVAL_MAX_METRICS];
    int note[EVAL_MAX_NOTES];
} eval_score;

typedef struct {
    const char *name;           // the eval.scorer value
    eval_kind kind;             // what it scores
    int n_metrics;              // <= EVAL_MAX_METRICS; metric 0 is the headline
    const eval_metric *metric;  // (n_metrics)
    int n_notes;                // <= EVAL_MAX_NOTES
    const char *const *note;    // (n_notes) JSON keys of the notes
    void (*score)(const eval_pair *p, eval_score *out);
    // Whether it can judge a sample with this reference. A rule is the rule of one kind of
    // data, and nothing else marks a set as that kind: its numbers are reported only when it
    // can judge every evaluated reference. synth: the reference names exactly one word of
    // each attribute (data_synth_attrs), as every caption of the synthetic set does and
    // practically no other set's (and where one does, its rule's numbers mean something).
    int (*judges)(const char *ref);
} eval_scorer;

// The scorer named `name` for outputs of `kind`, or NULL when there is none. "synth" is the
// only one (captions and images); eval.scorer: text names none (captions get eval_text's
// metrics whatever the scorer).
const eval_scorer *eval_scorer_find(const char *name, eval_kind kind);

// Sums of one scorer's metrics over samples (plain data; no free).
typedef struct {
    const eval_scorer *sc;
    int64_t n;
    double sum[EVAL_MAX_METRICS];
} eval_tally;
void eval_tally_init(eval_tally *t, const eval_scorer *sc);
// Scores p and adds it; out (may be NULL) gets the pair's score.
void eval_tally_score(eval_tally *t, const eval_pair *p, eval_score *out);
// Mean of metric k, 0 over no samples.
double eval_tally_mean(const eval_tally *t, int k);

// ---------------------------------------------------------------------------------------
// Caption metrics for any dataset: generated captions against their references.
//   exact   share of pairs equal after normalising both: ASCII letters lowercased, every run
//           of ASCII whitespace (space, \t \n \v \f \r) made one space, leading and trailing
//           whitespace dropped. Other bytes (UTF-8, NUL) compare as they are.
//   cer     character error rate, corpus-level (not a mean of per-sample rates): the summed
//           Levenshtein distances (Levenshtein 1966: fewest insertions, deletions and
//           substitutions, each costing 1) between generated and reference, over the summed
//           reference lengths, as jiwer.cer computes it over a list. Characters are UTF-8
//           sequences (core.h's strict rule); a byte that starts none is one character; a
//           generated NUL is a character. The raw strings, not normalised. 0 is perfect; it
//           can exceed 1 (a long wrong caption); NAN when every reference is empty.
//   bleu4   corpus BLEU-4 (Papineni, Roukos, Ward, Zhu 2002, "BLEU: a method for automatic
//           evaluation of machine translation", ACL): words split on ASCII whitespace after
//           ASCII lowercasing; for n = 1..4, p_n = clipped n-gram matches / hypothesis n-grams,
//           each summed over the corpus (one reference per caption); BLEU = BP * exp(sum
//           log(p_n) / 4), BP = 1 when the hypotheses' words c > the references' r, else
//           exp(1 - r / c). No smoothing: 0 when any p_n is 0 or c is 0 (sacrebleu's
//           smooth_method="none" with tokenize="none", lowercase=True). In [0, 1].
//   f1      mean over pairs of the word F1 of the two bags of words (words split on ASCII
//           spaces, controls and punctuation, ASCII lowercased; 1 when both have none).
typedef struct {
    int exact;          // 1 when equal after normalising
    int64_t edits;      // Levenshtein distance in characters
    int64_t ref_chars;  // reference length in characters
    double f1;          // word F1
} eval_text_one;

// Corpus sums (plain data; no free).
typedef struct {
    int64_t n, exact;
    int64_t edits, ref_chars;
    int64_t match[4], total[4];  // BLEU: clipped n-gram matches, hypothesis n-grams, n = 1..4
    int64_t hyp_words, ref_words;
    double f1;
} eval_text;
void eval_text_init(eval_text *t);
// Adds the pair ref[0..ref_n) / gen[0..gen_n) (any bytes); one (may be NULL) gets its scores.
void eval_text_add(eval_text *t, const char *ref, size_t ref_n, const char *gen, size_t gen_n,
                   eval_text_one *one);
double eval_text_exact(const eval_text *t);
double eval_text_cer(const eval_text *t);
double eval_text_bleu4(const eval_text *t);
double eval_text_f1(const eval_text *t);

// ---------------------------------------------------------------------------------------
// Writing. Each function writes to the streams it is given; NULL skips that stream.

// How eval_escape writes text. Captions a model generates are arbitrary bytes (the bytes-v1
// tokenizer's tokens are the bytes 0..255): not UTF-8, NULs, control bytes.
//   EVAL_ESC_JSON: the inside of a JSON string: '"' and '\\' backslashed, \n; other controls
//                  (NUL included) and DEL as \u00xx (as runs have always written them).
//   EVAL_ESC_TERM: printable on a terminal: '\\' doubled; \n, \t; other controls and DEL
//                  as \xXX, so no control byte reaches the terminal raw.
// In both, a byte that starts no valid UTF-8 sequence (core.h's strict rule) becomes U+FFFD
// and is counted (JSON has no way to carry a raw byte, and \u00XX would claim a character
// the model did not write); valid multi-byte characters pass unchanged.
typedef enum { EVAL_ESC_JSON, EVAL_ESC_TERM } eval_esc;
// Escapes s[0..n) into out (cap bytes, NUL-terminated; stops before an escape or character
// that would not fit, never cutting one). Returns the bytes written (without the NUL);
// *bad (may be NULL) gets the number of bytes replaced by U+FFFD.
size_t eval_escape(char *out, size_t cap, const char *s, size_t n, eval_esc mode, size_t *bad);

// The first few (reference, generated) captions, shown under the summary so a person sees
// what the model says (escaped for the terminal, EVAL_ESC_TERM; cut to 63 bytes).
enum { EVAL_N_EXAMPLES = 3 };
typedef struct {
    int n;
    char ref[EVAL_N_EXAMPLES][64], gen[EVAL_N_EXAMPLES][64];
} eval_examples;
// gen holds gen_n bytes (a generated NUL does not end it).
void eval_examples_add(eval_examples *e, const char *ref, const char *gen, size_t gen_n);
// The examples as a Markdown table (reference | generated) into out (cap bytes, at least
// EVAL_EXAMPLES_MD), for TensorBoard's text tab: ASCII punctuation is backslash-escaped, so
// a caption shows as its characters, never as Markdown.
enum { EVAL_EXAMPLES_MD = 64 + 4 * EVAL_N_EXAMPLES * 64 };
void eval_examples_markdown(const eval_examples *e, char *out, size_t cap);

// ---------------------------------------------------------------------------------------
// A captioning evaluation by input mode. Every validation sample is evaluated as given
// (EVAL_GIVEN: val_loss and the caption metrics without a suffix, as runs always have), and
// again in each mode it supports: EVAL_IMAGE, its audio left out (samples with an image);
// EVAL_AUDIO, its image left out (samples with audio); EVAL_BOTH, as given (samples with an
// image and audio). A sample with neither counts in EVAL_GIVEN only. Each mode's numbers are
// over the samples that support it, so val_loss_both over a set where every sample has both
// is val_loss. The family decides which modes get generated captions (family_lm.c).
enum { EVAL_GIVEN, EVAL_IMAGE, EVAL_AUDIO, EVAL_BOTH, EVAL_N_MODES };
extern const char *const eval_mode_name[EVAL_N_MODES];  // "", "image", "audio", "both"

typedef struct {
    double loss_sum[EVAL_N_MODES];   // summed per-sample losses
    int64_t n[EVAL_N_MODES];         // samples of each mode (what loss_sum is over)
    eval_text text[EVAL_N_MODES];    // generated captions of each mode (may be none: n = 0)
    const eval_scorer *rule;         // the synthetic set's rule (eval.scorer synth) or NULL
    eval_tally tally[EVAL_N_MODES];  // its metrics, by mode
    int64_t not_rule;                // references it cannot read: then it is not reported
    eval_examples ex;                // the first captions as given
} eval_captions;
void eval_captions_init(eval_captions *e, const eval_scorer *rule);
// Scores the caption gen[0..gen_n) generated in mode m against ref (NUL-terminated); one
// (may be NULL) gets its eval_text scores. The rule sees gen up to its first NUL.
void eval_captions_add(eval_captions *e, int m, const char *ref, const char *gen, size_t gen_n,
                       eval_text_one *one);
// Whether the rule's metrics are reported: there is a rule, it read every reference
// (eval_scorer.judges), and there was a sample.
int eval_captions_rule_applies(const eval_captions *e);

// One generated caption of a sample and its scores, for its eval line.
typedef struct {
    const char *gen;  // gen_n bytes (a NUL does not end it)
    size_t gen_n;
    eval_text_one s;
} eval_caption_gen;
// {"sample_id":ID,"reference":"...","generated":"...","exact":E,"cer":C} where E is 0 or 1
// and C the sample's edits / reference characters (null for an empty reference); with image
// (NULL: the sample has no image) also "generated_image", "exact_image", "cer_image": the
// caption generated with its audio left out. ,"generated_invalid_bytes":N (and
// "generated_image_invalid_bytes") follows its caption when N > 0 of its bytes were not UTF-8
// (written as U+FFFD). With audio (NULL: not generated, or the sample has no sound) likewise
// "generated_audio", "exact_audio", "cer_audio": the caption generated with its image left
// out. Strings escaped with EVAL_ESC_JSON: each line is valid JSON in valid UTF-8. The first
// three keys come first, as runs have always written them.
void eval_write_caption(FILE *f, uint64_t id, const char *ref, const eval_caption_gen *given,
                        const eval_caption_gen *image, const eval_caption_gen *audio);
// {"sample_id":ID,"mode":"MODE","prompt":"...",<the scorer's notes as "key":int>}
void eval_write_image(FILE *f, uint64_t id, const char *mode, const char *prompt,
                      const eval_scorer *sc, const eval_score *s);

// In both reports a val_loss of NAN means there was nothing to evaluate it on (a diffusion
// validation set without images): "val_loss n/a" is printed and metrics.jsonl has no
// "val_loss" key, rather than a perfect-looking 0.
// A captioning evaluation. To `out`:
//   eval step S | val_loss L | exact X% | CER X% | BLEU-4 X | F1 X% | N samples
//     image only: val_loss L | exact ... | N samples      (each mode with a sample; the
//     audio only: val_loss L | N samples                   caption metrics where it has
//     both: val_loss L | exact ... | N samples             generated captions)
//     synthetic set's rule: <headline> X% (<label> Y%, ...; image only X%, both X%)
//   and the examples. To `metrics`, on one line: {"step":S,"val_loss":L,<the rule's keys>,
//   "caption_exact":..,"caption_cer":..,"caption_bleu4":..,"caption_f1":.., then per mode
//   "val_loss_<mode>", "caption_*_<mode>", <rule key>_<mode>}. Metrics are shares in [0, 1]
//   (CER may exceed 1); a mode without samples, or a CER over empty references, has no key.
void eval_report_captions(FILE *out, FILE *metrics, int64_t step, const eval_captions *e);
// A generator's evaluation, one tally per conditioning mode (mode names in `mode`); the
// headline is metric 0 in mode `head`. To `out`: "eval step S | val_loss L | <headline> X%
// (<mode> Y%, ...) over P prompts each; <label> a/b/c%, ..."; to `metrics`:
// {"step":S,"val_loss":L,"<key0>":v,"<key>_<mode>":v,...}. t NULL (n_modes 0): nothing was
// scored (not the synthetic set): "eval step S | val_loss L" and {"step":S,"val_loss":L}.
void eval_report_images(FILE *out, FILE *metrics, int64_t step, double val_loss,
                        const eval_tally *t, int n_modes, const char *const *mode, int head,
                        int prompts);

#endif  // MM_EVAL_H
