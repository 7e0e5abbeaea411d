// eval.h: evaluation split into its three jobs, so that a model family only computes and a
// new way of scoring or a new dataset does not mean another copy of the loop:
//   computing  stays in the family (family_lm.c, family_dit.c): validation loss and what the
//              model generates, packed into fixed-size per-sample records;
//   gathering  eval_gather: the records of every dp rank to every rank, in batch order, so
//              the results do not depend on the layout;
//   scoring    eval_scorer: one (reference, generated) pair -> metrics in [0, 1]; config key
//              eval.scorer picks one: "synth" (the synthetic set's attribute rule, default),
//              "text" (captions against their reference, for any dataset);
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
// order sees the samples 0..n-1 in order, for any number of dp ranks.
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
// Collective over dp: sends this rank's n_mine records and its batch's summed loss.
void eval_gather_exchange(eval_gather *g, int n_mine, double loss);
// After the exchange: dp rank d's batch of the round, its size (0: none) and *loss.
int eval_gather_count(const eval_gather *g, int d, double *loss);
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
} eval_scorer;

// The scorer named `name` for outputs of `kind`, or NULL when there is none (the config's
// validation refuses such a pair before a run starts).
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

// {"sample_id":ID,"reference":"...","generated":"..."} plus ,"generated_invalid_bytes":N
// when N > 0 bytes of gen[0..gen_n) were not UTF-8 (written as U+FFFD). Strings escaped with
// EVAL_ESC_JSON: each line is valid JSON in valid UTF-8.
void eval_write_caption(FILE *f, uint64_t id, const char *ref, const char *gen, size_t gen_n);
// {"sample_id":ID,"mode":"MODE","prompt":"...",<the scorer's notes as "key":int>}
void eval_write_image(FILE *f, uint64_t id, const char *mode, const char *prompt,
                      const eval_scorer *sc, const eval_score *s);

// In both reports a val_loss of NAN means there was nothing to evaluate it on (a diffusion
// validation set without images): "val_loss n/a" is printed and metrics.jsonl has no
// "val_loss" key, rather than a perfect-looking 0.
// A captioning evaluation: to `out` "eval step S | val_loss L | <headline> X% (<label> Y%,
// ...) over N samples" and the examples; to `metrics` {"step":S,"val_loss":L,"<key>":v,...}.
void eval_report_captions(FILE *out, FILE *metrics, int64_t step, double val_loss,
                          const eval_tally *t, const eval_examples *ex);
// A generator's evaluation, one tally per conditioning mode (mode names in `mode`); the
// headline is metric 0 in mode `head`. To `out`: "eval step S | val_loss L | <headline> X%
// (<mode> Y%, ...) over P prompts each; <label> a/b/c%, ..."; to `metrics`:
// {"step":S,"val_loss":L,"<key0>":v,"<key>_<mode>":v,...}.
void eval_report_images(FILE *out, FILE *metrics, int64_t step, double val_loss,
                        const eval_tally *t, int n_modes, const char *const *mode, int head,
                        int prompts);

#endif  // MM_EVAL_H
