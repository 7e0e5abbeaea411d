// config.c: the run configuration. Every key lives in ONE static table (name, type, field,
// default, range, doc) and everything else walks it: defaults, YAML loading, overrides,
// YAML output and the key reference in train/CONFIG.md. Adding a key is one table line, so
// the parser, the saved config and the docs cannot disagree.
//
// Strictness is the point (an unused key is an error, not a warning): a typo in a config
// must stop the run before it spends hours on the wrong settings, and the message must say
// where (file:line:col, 1-based) and why in one line. Text values follow core's one UTF-8
// rule (mm_utf8_check), as strict as the one libyaml applies to a file's bytes, so that an
// override on the command line cannot slip in what a config file could not.
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <yaml.h>

// ---------------------------------------------------------------------------------------
// The key table.

typedef enum { K_INT, K_I64, K_U64, K_F64, K_BOOL, K_STR, K_ENUM, K_LIST } key_kind;

typedef struct {
    const char *name;  // "section.key", or "key" for a top-level scalar
    key_kind kind;
    size_t off;          // offsetof(mm_config, field)
    size_t size;         // sizeof the field (checks the kind; bounds strings)
    const char *def;     // default, written as a user would write it; parsed like input
    double lo, hi;       // inclusive range of numbers (integers: exact, all bounds < 2^53)
    const char *values;  // K_ENUM (and K_LIST when not NULL): allowed values, '|'-separated
    const char *doc;     // one line for CONFIG.md
} cfg_key;

#define FIELD(f) offsetof(mm_config, f), sizeof(((mm_config *)0)->f)
#define KINT(n, f, d, lo, hi, doc) \
    { n, K_INT, FIELD(f), d, lo, hi, NULL, doc }
#define KI64(n, f, d, lo, hi, doc) \
    { n, K_I64, FIELD(f), d, lo, hi, NULL, doc }
#define KU64(n, f, d, doc) \
    { n, K_U64, FIELD(f), d, 0, 0, NULL, doc }
#define KF64(n, f, d, lo, hi, doc) \
    { n, K_F64, FIELD(f), d, lo, hi, NULL, doc }
#define KBOOL(n, f, d, doc) \
    { n, K_BOOL, FIELD(f), d, 0, 1, NULL, doc }
#define KSTR(n, f, d, doc) \
    { n, K_STR, FIELD(f), d, 0, 0, NULL, doc }
#define KENUM(n, f, d, vals, doc) \
    { n, K_ENUM, FIELD(f), d, 0, 0, vals, doc }
// a list of words from vals (NULL: any text, e.g. glob patterns); default written "a,b" or ""
#define KLIST(n, f, d, vals, doc) \
    { n, K_LIST, FIELD(f), d, 0, 0, vals, doc }

const char *const mm_group_names[MM_N_GROUPS] = {"text", "image", "audio", "trunk"};

// Grouped by section, in the order to_yaml and the docs print them.
static const cfg_key keys[] = {
    KSTR("run.out_dir", run.out_dir, "runs/default",
         "run directory: metrics.jsonl, config.yaml, ckpt/, eval/"),
    KI64("run.steps", run.steps, "100", 1, 1e12,
         "total optimizer steps of the run (a resumed run continues up to it)"),
    KI64("run.stop_after", run.stop_after, "0", 0, 1e12,
         "stop (with a checkpoint) after this step, as a preemption would; 0 = run to steps"),
    KU64("run.seed", run.seed, "1234", "seeds init, sampler and everything random"),
    KINT("run.log_every", run.log_every, "10", 1, 1e9, "progress line and metrics every N steps"),
    KINT("run.threads", run.threads, "0", 0, 4096,
         "OpenMP/OpenBLAS threads per rank (0 = cores / ranks on the node)"),
    KBOOL("run.trace", run.trace, "false",
          "write each rank's step timeline (Chrome trace / Perfetto JSON: data wait, forward, "
          "backward per block, bucket allreduces, optimizer, evaluation, checkpoint) to "
          "<out_dir>/trace/rank_XXXXX.json"),
    KF64("run.collective_timeout", run.collective_timeout, "900", 0, 1e9,
         "seconds a collective may wait for the other ranks before the job ends naming the "
         "ranks that did not arrive (0 = wait forever); must exceed a checkpoint write"),
    KSTR("run.tensorboard", run.tensorboard, "tb",
         "directory of the TensorBoard event files (every metrics.jsonl scalar, sample grids, "
         "generated captions), relative to run.out_dir unless absolute; \"\" = none"),

    KSTR("data.train", data.train, "", "training dataset directory (mmdata format); required"),
    KSTR("data.val", data.val, "", "validation dataset directory (\"\" = no validation)"),
    KINT("data.global_batch", data.global_batch, "32", 1, 16777216,
         "samples per optimizer step over all ranks"),
    KINT("data.micro_batch", data.micro_batch, "32", 1, 1048576,
         "samples per rank per micro-step (accumulation = global / (micro * dp))"),
    KINT("data.prefetch", data.prefetch, "2", 1, 64, "batches decoded ahead by the loader thread"),
    KBOOL("data.verify", data.verify, "true", "verify shard checksums when opening the dataset"),
    KBOOL("data.trace", data.trace, "false",
          "write the sample ids each rank trains on to <out_dir>/trace/rank_XXXXX.txt"),
    KINT("data.n_fft", data.n_fft, "256", 8, 65536, "audio STFT window and FFT size (samples)"),
    KINT("data.hop", data.hop, "128", 1, 65536, "audio STFT hop length (samples)"),
    KINT("data.n_mels", data.n_mels, "32", 1, 1024, "mel bands of the audio features"),
    KINT("data.img_h", data.img_h, "0", 0, 65536,
         "image height in pixels; 0 = the training set's (a value that differs is an error)"),
    KINT("data.img_w", data.img_w, "0", 0, 65536, "image width in pixels; 0 = the training set's"),
    KINT("data.img_c", data.img_c, "0", 0, 16, "image channels; 0 = the training set's"),
    KINT("data.audio_rate", data.audio_rate, "0", 0, 1000000,
         "audio sample rate in Hz; 0 = the training set's"),
    KINT("data.audio_len", data.audio_len, "0", 0, 1 << 30,
         "PCM samples per audio clip; 0 = the training set's"),
    KINT("data.text_max", data.text_max, "0", 0, 1 << 20,
         "caption bytes per sample; 0 = the training set's"),

    KF64("augment.crop_scale", augment.crop_scale, "1", 0.01, 1,
         "random resized crop: least share of the image's area a crop keeps (drawn up to 1), "
         "resized back bilinearly; 1 with crop_ratio 1 = no crop"),
    KF64("augment.crop_ratio", augment.crop_ratio, "1", 1, 10,
         "random resized crop: most aspect stretch against the image's own, drawn "
         "log-uniformly in [1/r, r]; 1 = none"),
    KBOOL("augment.flip", augment.flip, "false",
          "mirror images left-right with probability 1/2 (wrong for text, digits and anything "
          "with a handedness)"),
    KINT("augment.translate", augment.translate, "0", 0, 16384,
         "largest image shift in pixels along each axis, either way; the border pixels repeat "
         "into the uncovered part"),
    KF64("augment.brightness", augment.brightness, "0", 0, 1,
         "colour jitter: intensity factor drawn in [1 - s, 1 + s]"),
    KF64("augment.contrast", augment.contrast, "0", 0, 1,
         "colour jitter: contrast factor drawn in [1 - s, 1 + s], about the image's mean grey"),
    KF64("augment.saturation", augment.saturation, "0", 0, 1,
         "colour jitter: saturation factor drawn in [1 - s, 1 + s]; colour images only"),
    KINT("augment.audio_shift", augment.audio_shift, "0", 0, 1 << 20,
         "largest time shift of the log-mel in frames (data.hop samples each), either way; "
         "silence comes in"),
    KF64("augment.audio_gain_db", augment.audio_gain_db, "0", 0, 60,
         "largest audio gain in dB, either way (silence stays silence)"),
    KINT("augment.time_masks", augment.time_masks, "0", 0, DATA_AUG_MAX_MASKS,
         "SpecAugment time masks per clip"),
    KINT("augment.time_mask_width", augment.time_mask_width, "0", 0, 1 << 20,
         "SpecAugment: most frames one time mask covers (width drawn in 0..W); masked values "
         "are 0, the mean of the normalised log-mel"),
    KINT("augment.freq_masks", augment.freq_masks, "0", 0, DATA_AUG_MAX_MASKS,
         "SpecAugment frequency masks per clip"),
    KINT("augment.freq_mask_width", augment.freq_mask_width, "0", 0, 1024,
         "SpecAugment: most mel bands one frequency mask covers (width drawn in 0..W); masked "
         "values are 0"),

    KENUM("model.kind", model.kind, "transformer", "transformer|diffusion",
          "transformer: captions from image/audio; diffusion: images from caption/audio"),
    KINT("model.d_model", model.d_model, "128", 1, 65536, "residual stream width"),
    KINT("model.n_layers", model.n_layers, "4", 1, 1024, "transformer blocks"),
    KINT("model.n_heads", model.n_heads, "4", 1, 1024,
         "attention heads (must divide d_model; tp must divide it)"),
    KINT("model.d_ff", model.d_ff, "0", 0, 1048576, "MLP hidden width (0 = 4 * d_model)"),
    KINT("model.patch", model.patch, "8", 1, 4096, "image patch size in pixels"),
    KENUM("model.stem", model.stem, "patch", "patch|conv",
          "transformer: how images become tokens. patch: each patch projected linearly; conv: "
          "two 3x3 convolution + GELU + 2x2 max-pool stages first, then patches of patch/4 "
          "(patch a multiple of 4): a CNN's locality, for small real image sets"),
    KINT("model.stem_width", model.stem_width, "32", 1, 4096,
         "transformer, stem conv: channels of the first convolution (the second has twice)"),
    KINT("model.audio_group", model.audio_group, "2", 1, 4096, "log-mel frames per audio token"),
    KENUM("model.recompute", model.recompute, "none", "none|attention|block",
          "activation recomputation: attention keeps no attention internals and reruns each "
          "attention in backward; block keeps only each block's input and reruns the block"),
    KF64("model.dropout", model.dropout, "0", 0, 0.99,
         "transformer: inverted dropout on the embeddings and on each attention and MLP branch "
         "before its residual add, training only (GPT-2's embd/resid pdrop)"),
    KF64("model.attn_dropout", model.attn_dropout, "0", 0, 0.99,
         "transformer: inverted dropout on the attention probabilities, training only"),
    KF64("model.modality_drop", model.modality_drop, "0", 0, 0.5,
         "transformer: share of training samples with image and audio trained on the image "
         "alone, and the same share on the audio alone"),
    KF64("model.audio_drop", model.audio_drop, "0", 0, 1,
         "transformer: then, share of the training samples still with both trained without "
         "their audio (image-only test sets)"),

    KENUM("diffusion.objective", diffusion.objective, "flow", "flow|ddpm",
          "flow: rectified flow, velocity target; ddpm: epsilon target, cosine schedule"),
    KENUM("diffusion.predict", diffusion.predict, "v", "v|x",
          "what the network estimates (flow): v, the velocity; x, the clean image, turned into "
          "the velocity (x_t - x) / max(t, 0.05) for the loss and the sampler (JiT)"),
    KENUM("diffusion.t_sampling", diffusion.t_sampling, "uniform", "uniform|logit_normal",
          "how flow training draws t (DDPM draws a uniform step)"),
    KF64("diffusion.cond_drop", diffusion.cond_drop, "0.1", 0, 1,
         "share of samples trained without conditioning (classifier-free guidance)"),
    KF64("diffusion.modality_drop", diffusion.modality_drop, "0.3", 0, 0.5,
         "otherwise, share of samples trained on audio alone, and on the caption alone"),
    KF64("diffusion.ema_decay", diffusion.ema_decay, "0.999", 0, 1,
         "EMA of the weights, used for sampling (0 = the EMA is the current weights)"),
    KINT("diffusion.enc_layers", diffusion.enc_layers, "1", 0, 64,
         "blocks of the text and of the audio conditioning encoder"),
    KBOOL("diffusion.pool_cond", diffusion.pool_cond, "false",
          "also add an MLP of the mean conditioning token to the timestep embedding (adaLN)"),
    KINT("diffusion.sample_every", diffusion.sample_every, "0", 0, 1000000000,
         "write a PNG grid of samples every N steps (0 = at evaluation steps)"),
    KINT("diffusion.sample_steps", diffusion.sample_steps, "25", 1, 1000,
         "sampler steps (Euler for flow, DDIM for ddpm)"),
    KF64("diffusion.guidance", diffusion.guidance, "3", 0, 100,
         "classifier-free guidance scale (1 = none)"),
    KINT("diffusion.eval_samples", diffusion.eval_samples, "64", 0, 1000000,
         "validation prompts generated per conditioning mode for cond_acc"),

    KF64("optim.lr", optim.lr, "1e-3", 0, 10, "peak learning rate (after warmup)"),
    KF64("optim.min_lr", optim.min_lr, "1e-4", 0, 10,
         "final learning rate of the cosine decay (<= lr)"),
    KI64("optim.warmup", optim.warmup, "50", 0, 1e12, "linear warmup steps"),
    KF64("optim.weight_decay", optim.weight_decay, "0.1", 0, 10,
         "decoupled (AdamW) weight decay, matrices only"),
    KF64("optim.beta1", optim.beta1, "0.9", 0, 1, "AdamW first-moment decay (< 1)"),
    KF64("optim.beta2", optim.beta2, "0.95", 0, 1, "AdamW second-moment decay (< 1)"),
    KF64("optim.eps", optim.eps, "1e-8", 0, 1, "AdamW denominator epsilon"),
    KF64("optim.grad_clip", optim.grad_clip, "1.0", 0, 1e9, "global gradient-norm clip (0 = off)"),
    KINT("optim.max_skips", optim.max_skips, "10", 0, 1000000000,
         "consecutive steps with a non-finite loss or gradient norm (each skipped: nothing "
         "applied) that end the run (0 = never)"),
    KF64("optim.label_smoothing", optim.label_smoothing, "0", 0, 0.99,
         "transformer: label smoothing eps of the training cross-entropy (target (1 - eps) "
         "one-hot + eps / vocab); val_loss stays plain cross-entropy"),
    KF64("optim.ema_decay", optim.ema_decay, "0", 0, 1,
         "transformer: keep an EMA of the weights with this decay (0 = none) and evaluate, "
         "sample and export with it (the diffusion model always keeps one: "
         "diffusion.ema_decay)"),
    KLIST("optim.freeze", optim.freeze, "", "text|image|audio|trunk",
          "parameter groups kept fixed: no AdamW step, no decay, not in the gradient norm"),
    KF64("optim.lr_mult_text", optim.lr_mult[0], "1", 0, 1000,
         "learning-rate multiplier of the text group (text.*, lm_head)"),
    KF64("optim.lr_mult_image", optim.lr_mult[1], "1", 0, 1000,
         "learning-rate multiplier of the image group (transformer img.*)"),
    KF64("optim.lr_mult_audio", optim.lr_mult[2], "1", 0, 1000,
         "learning-rate multiplier of the audio group (audio.*)"),
    KF64("optim.lr_mult_trunk", optim.lr_mult[3], "1", 0, 1000,
         "learning-rate multiplier of the trunk group (everything else)"),

    KINT("eval.every", eval.every, "0", 0, 1000000000,
         "evaluate every N steps (0 = only at the last step)"),
    KINT("eval.samples", eval.samples, "256", 0, 1000000000,
         "validation samples for val_loss and captions (0 = all)"),
    KINT("eval.batch", eval.batch, "64", 1, 1048576, "samples per evaluation forward pass"),
    KENUM("eval.scorer", eval.scorer, "synth", "synth|text",
          "captions are always scored against their references (exact match, CER, BLEU-4, "
          "word F1); synth adds the synthetic set's rule (attribute by attribute; diffusion: "
          "colour and shape read off the pixels) when every reference is a synthetic "
          "caption; text never applies it"),
    KBOOL("eval.audio_captions", eval.audio_captions, "false",
          "transformer: also caption every validation sample that has sound from the sound "
          "alone (its image left out) and score those as audio only (exact, CER, BLEU-4, F1; "
          "eval/*.jsonl: generated_audio): one more greedy decoding of the samples with both"),

    KI64("checkpoint.every", checkpoint.every, "0", 0, 1e12,
         "checkpoint every N steps (0 = only at the end of the run)"),
    KINT("checkpoint.keep_last", checkpoint.keep_last, "3", 1, 1000000,
         "committed checkpoints kept (oldest deleted first)"),
    KSTR("checkpoint.resume", checkpoint.resume, "auto",
         "auto (continue from <out_dir>/ckpt/latest if any), none, or a checkpoint directory"),
    KSTR("checkpoint.init_from", checkpoint.init_from, "",
         "weights to start from when not resuming: a checkpoint, a ckpt/ or a run directory, or a "
         ".safetensors file"),
    KLIST("checkpoint.reinit", checkpoint.reinit, "", NULL,
          "init_from: tensor-name globs (fnmatch) that keep their fresh init; may be missing, "
          "reshaped or unused in the checkpoint"),
    KLIST("checkpoint.allow_changes", checkpoint.allow_changes, "",
          "data|seed|batch|lr|steps|regularization|augment|ema",
          "resume: what may differ from the checkpoint without a refusal (data = data.train's "
          "content, seed = run.seed, batch = data.global_batch, lr = optim.lr/min_lr/warmup, "
          "steps = run.steps, regularization = model.dropout/attn_dropout/modality_drop/audio_drop "
          "and optim.label_smoothing, augment = every augment.* key, ema = optim.ema_decay and "
          "diffusion.ema_decay); each allowed change is logged"),

    KINT("parallel.tp", parallel.tp, "1", 1, 4096,
         "tensor-parallel size (divides world size and n_heads)"),
    KINT("parallel.zero", parallel.zero, "0", 0, 1, "ZeRO stage: 0 or 1 (optimizer state sharded)"),
    KF64("parallel.bucket_mb", parallel.bucket_mb, "4", 0.001, 65536,
         "gradient allreduce bucket size in MiB (MPI over shared memory is fastest near 4)"),

    KENUM("backend", backend, "cpu", "cpu|cuda", "compute backend"),
    KENUM("precision", precision, "fp32", "fp32|bf16",
          "matmul precision on cuda: bf16 inputs with fp32 accumulation for the linear layers "
          "and, without attention dropout, the attention products (scores, softmax and its "
          "backward stay fp32); the activations and their gradients are then bf16 in memory "
          "as well, for both model kinds (each op computes in fp32 and rounds its outputs "
          "once; LayerNorm statistics, losses and the diffusion model's prediction, loss and "
          "sampler stay fp32); fp32 master weights and optimizer state (backend cpu: fp32 "
          "only)"),
};

#define N_KEYS (sizeof(keys) / sizeof(keys[0]))

// ---------------------------------------------------------------------------------------
// Small helpers.

// Length of the section part of a name ("run.steps" -> 3), 0 for a top-level key.
static size_t section_len(const char *name) {
    const char *dot = strchr(name, '.');
    return dot ? (size_t)(dot - name) : 0;
}

static const cfg_key *find_key(const char *name, size_t n) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (strlen(keys[i].name) == n && memcmp(keys[i].name, name, n) == 0) return &keys[i];
    return NULL;
}

static int is_section(const char *s, size_t n) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (section_len(keys[i].name) == n && n > 0 && memcmp(keys[i].name, s, n) == 0) return 1;
    return 0;
}

// Edit distance, capped strings (names are short); used only to suggest a known key.
static int edit_distance(const char *a, size_t na, const char *b, size_t nb) {
    enum { CAP = 64 };
    if (na > CAP || nb > CAP) return 1000;
    int row[CAP + 1];
    for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int up = row[j];
            int best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

// Writes " (did you mean 'x'?)" into out when a known key (or section, when sections is set)
// is close to name; "" otherwise. A bare key also matches the key part of dotted names, so
// `steps: 10` at the top level suggests run.steps.
static void suggest(const char *name, size_t n, int sections, char *out, size_t cap) {
    const char *best = NULL;
    size_t best_len = 0;
    int best_d = 1000;
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *cand = keys[i].name;
        size_t cl = sections ? section_len(cand) : strlen(cand);
        if (sections && cl == 0) continue;
        int d = edit_distance(name, n, cand, cl);
        // `optimizer` for `optim`: a prefix of three or more letters is a good guess too
        size_t m = n < cl ? n : cl;
        if (m >= 3 && memcmp(name, cand, m) == 0 && d > 1) d = 1;
        size_t sl = section_len(cand);
        if (!sections && sl > 0) {
            const char *tail = cand + sl + 1;
            int d2 = edit_distance(name, n, tail, strlen(tail));
            if (d2 < d) d = d2;
        }
        if (d < best_d) best_d = d, best = cand, best_len = cl;
    }
    int limit = n < 6 ? 1 : (n < 12 ? 2 : 3);
    if (best && best_d <= limit)
        snprintf(out, cap, " (did you mean '%.*s'?)", (int)best_len, best);
    else if (cap)
        out[0] = '\0';
}

// Fills why with a formatted reason and returns -1 (mm_fail for a bare char buffer).
static int why_fail(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int why_fail(char *why, size_t why_len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    return -1;
}

// Quotes a value for a message: at most 60 bytes, control bytes shown as '?'.
static void show_value(const char *s, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 4 < cap; i++) {
        if (i == 60) {
            memcpy(out + k, "...", 3);
            k += 3;
            break;
        }
        unsigned char ch = (unsigned char)s[i];
        out[k++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
    }
    out[k] = '\0';
}

// Checks list items (text, allowed words, no word twice) and stores them into k's field.
// items[i] has lens[i] bytes. On failure c is untouched and why gets the reason.
static int set_list(mm_config *c, const cfg_key *k, const char *const *items, const size_t *lens,
                    int n, char *why, size_t why_len) {
    if (n > MM_LIST_MAX)
        return why_fail(why, why_len, "%d items, at most %d allowed", n, MM_LIST_MAX);
    mm_list l;
    memset(&l, 0, sizeof(l));  // zero tail: resolved configs compare with memcmp
    for (int i = 0; i < n; i++) {
        const char *s = items[i];
        size_t len = lens[i];
        char shown[80];
        show_value(s, len, shown, sizeof(shown));
        if (len == 0) return why_fail(why, why_len, "item %d is empty", i + 1);
        if (len >= MM_LIST_ITEM)
            return why_fail(why, why_len, "item '%s' is %zu bytes, at most %d allowed", shown,
                            len, MM_LIST_ITEM - 1);
        for (size_t j = 0; j < len; j++) {
            unsigned char ch = (unsigned char)s[j];
            if (ch < 0x20 || ch == 0x7f)
                return why_fail(why, why_len, "control character in item '%s'", shown);
        }
        size_t at;
        const char *bad = mm_utf8_check((const uint8_t *)s, len, &at);
        if (bad)
            return why_fail(why, why_len, "item '%s' is not valid UTF-8 (byte %zu: %s)", shown,
                            at, bad);
        if (k->values) {
            int ok = 0;
            for (const char *v = k->values; *v;) {
                size_t vl = strcspn(v, "|");
                if (vl == len && memcmp(v, s, len) == 0) ok = 1;
                v += vl + (v[vl] == '|');
            }
            if (!ok)
                return why_fail(why, why_len, "item '%s' is not one of %s", shown, k->values);
            for (int j = 0; j < i; j++)
                if (strlen(l.item[j]) == len && memcmp(l.item[j], s, len) == 0)
                    return why_fail(why, why_len, "item '%s' listed twice", shown);
        }
        memcpy(l.item[i], s, len);
    }
    l.n = n;
    memcpy((char *)c + k->off, &l, sizeof(l));
    return 0;
}

// A list written as text (an override, or a YAML scalar): "a,b", "[a, b]", "" or "[]";
// blanks around items and quotes around an item are dropped.
static int set_list_text(mm_config *c, const cfg_key *k, const char *text, size_t n, char *why,
                         size_t why_len) {
    const char *items[MM_LIST_MAX + 1];
    size_t lens[MM_LIST_MAX + 1];
    while (n > 0 && (text[0] == ' ' || text[0] == '\t')) text++, n--;
    while (n > 0 && (text[n - 1] == ' ' || text[n - 1] == '\t')) n--;
    if (n >= 2 && text[0] == '[' && text[n - 1] == ']') text++, n -= 2;
    while (n > 0 && (text[0] == ' ' || text[0] == '\t')) text++, n--;
    int count = 0;
    if (n > 0) {
        for (size_t i = 0; i <= n;) {
            size_t j = i;
            while (j < n && text[j] != ',') j++;
            size_t a = i, b = j;
            while (a < b && (text[a] == ' ' || text[a] == '\t')) a++;
            while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t')) b--;
            if (b - a >= 2 && (text[a] == '"' || text[a] == '\'') && text[b - 1] == text[a])
                a++, b--;
            if (count == MM_LIST_MAX + 1) break;
            items[count] = text + a;
            lens[count++] = b - a;
            i = j + 1;
        }
    }
    if (count > MM_LIST_MAX)
        return why_fail(why, why_len, "more than %d items", MM_LIST_MAX);
    return set_list(c, k, items, lens, count, why, why_len);
}

// Parses text as the key's type, checks its range and stores it into c. On failure c is
// untouched and why gets the reason (without location; the caller adds it). is_null marks a
// YAML null (`key:`, `~`, `null`), which a string key takes as "".
static int set_key(mm_config *c, const cfg_key *k, const char *text, size_t n, int is_null,
                   char *why, size_t why_len) {
    char shown[80];
    show_value(text, n, shown, sizeof(shown));
    char *field = (char *)c + k->off;
    if (k->kind == K_LIST) {
        if (is_null) n = 0;
        if (memchr(text, '\0', n)) return why_fail(why, why_len, "NUL byte in value");
        return set_list_text(c, k, text, n, why, why_len);
    }
    if (k->kind == K_STR) {
        if (is_null) n = 0;
        if (memchr(text, '\0', n)) return why_fail(why, why_len, "NUL byte in value");
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)text[i];
            if (ch < 0x20 || ch == 0x7f)
                return why_fail(why, why_len, "control character in '%s'", shown);
        }
        size_t at;
        const char *bad = mm_utf8_check((const uint8_t *)text, n, &at);
        if (bad)
            return why_fail(why, why_len, "'%s' is not valid UTF-8 (byte %zu: %s)", shown, at,
                            bad);
        if (n >= k->size)
            return why_fail(why, why_len, "value is %zu bytes, at most %zu allowed", n,
                            k->size - 1);
        memset(field, 0, k->size);  // zero tail: resolved configs compare with memcmp
        memcpy(field, text, n);
        return 0;
    }
    if (k->kind == K_ENUM) {
        const char *v = k->values;
        while (*v) {
            size_t vl = strcspn(v, "|");
            if (vl == n && memcmp(v, text, n) == 0) {
                memset(field, 0, k->size);
                memcpy(field, text, n);
                return 0;
            }
            v += vl + (v[vl] == '|');
        }
        return why_fail(why, why_len, "expected one of %s, got '%s'", k->values, shown);
    }
    // Numbers and bools: a NUL-terminated copy; anything longer than 63 bytes is not one.
    char buf[64];
    int fits = n < sizeof(buf) && !memchr(text, '\0', n);
    if (fits) {
        memcpy(buf, text, n);
        buf[n] = '\0';
    } else {
        buf[0] = '\0';
    }
    // strto* skip leading blanks; a value must be the number and nothing else.
    int blank = n > 0 && (text[0] == ' ' || text[0] == '\t');
    if (k->kind == K_BOOL) {
        static const char *const yes[] = {"true", "yes", "1"}, *const no[] = {"false", "no", "0"};
        int val = -1;
        for (int i = 0; fits && i < 3; i++) {
            if (strcasecmp(buf, yes[i]) == 0) val = 1;
            if (strcasecmp(buf, no[i]) == 0) val = 0;
        }
        if (val < 0) return why_fail(why, why_len, "expected true or false, got '%s'", shown);
        *(int *)field = val;
        return 0;
    }
    if (k->kind == K_F64) {
        char *end = NULL;
        errno = 0;
        double d = fits && n > 0 && !blank ? strtod(buf, &end) : 0;
        // ERANGE with a nonzero finite result is a subnormal: exact enough, keep it
        if (!fits || n == 0 || blank || *end != '\0' || (errno == ERANGE && d == 0) ||
            !isfinite(d) || strchr(buf, 'x') || strchr(buf, 'X'))
            return why_fail(why, why_len, "expected a number, got '%s'", shown);
        if (d < k->lo || d > k->hi)
            return why_fail(why, why_len, "must be in [%g, %g], got %s", k->lo, k->hi, shown);
        *(double *)field = d;
        return 0;
    }
    if (k->kind == K_U64) {
        char *end = NULL;
        errno = 0;
        unsigned long long u = 0;
        int ok = fits && n > 0 && !blank && buf[0] != '-' && buf[0] != '+';
        if (ok) u = strtoull(buf, &end, 10);
        if (!ok || *end != '\0' || errno == ERANGE)
            return why_fail(why, why_len, "expected a non-negative integer below 2^64, got '%s'",
                            shown);
        *(uint64_t *)field = (uint64_t)u;
        return 0;
    }
    // K_INT, K_I64
    char *end = NULL;
    errno = 0;
    long long v = 0;
    int ok = fits && n > 0 && !blank;
    if (ok) v = strtoll(buf, &end, 10);
    if (!ok || *end != '\0' || errno == ERANGE)
        return why_fail(why, why_len, "expected an integer, got '%s'", shown);
    if (v < (long long)k->lo || v > (long long)k->hi)
        return why_fail(why, why_len, "must be in [%.0f, %.0f], got %lld", k->lo, k->hi, v);
    if (k->kind == K_INT)
        *(int *)field = (int)v;
    else
        *(int64_t *)field = (int64_t)v;
    return 0;
}

// The table's kinds must match the struct's field sizes; a mismatch is a bug in this file.
static void check_table(void) {
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &keys[i];
        size_t want = k->kind == K_INT || k->kind == K_BOOL ? sizeof(int)
                      : k->kind == K_I64                    ? sizeof(int64_t)
                      : k->kind == K_U64                    ? sizeof(uint64_t)
                      : k->kind == K_F64                    ? sizeof(double)
                      : k->kind == K_LIST                   ? sizeof(mm_list)
                                                            : 0;
        MM_CHECK(want == 0 || k->size == want, "config key %s: kind does not match its field",
                 k->name);
    }
}

void mm_config_default(mm_config *c) {
    check_table();
    memset(c, 0, sizeof(*c));  // padding and string tails zero: configs compare with memcmp
    for (size_t i = 0; i < N_KEYS; i++) {
        char why[256];
        int rc = set_key(c, &keys[i], keys[i].def, strlen(keys[i].def), 0, why, sizeof(why));
        MM_CHECK(rc == 0, "default of config key %s is invalid: %s", keys[i].name, why);
    }
}

// ---------------------------------------------------------------------------------------
// YAML.

static int node_is_null(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *s = (const char *)n->data.scalar.value;
    size_t len = n->data.scalar.length;
    return len == 0 || (len == 1 && s[0] == '~') || (len == 4 && strcmp(s, "null") == 0) ||
           (len == 4 && strcmp(s, "Null") == 0) || (len == 4 && strcmp(s, "NULL") == 0);
}

static const char *node_kind(const yaml_node_t *n) {
    return n->type == YAML_MAPPING_NODE    ? "a mapping"
           : n->type == YAML_SEQUENCE_NODE ? "a sequence"
                                           : "a scalar";
}

// 1-based line and column of a node, for messages.
#define MARK(n) (int)(n)->start_mark.line + 1, (int)(n)->start_mark.column + 1

// Sets one key from a YAML value node; seen/first_line detect duplicates.
static int load_pair(mm_config *c, yaml_document_t *doc, const char *name, const cfg_key *k,
                     yaml_node_t *key_node, yaml_node_t *val, int *first_line, mm_err *err) {
    size_t i = (size_t)(k - keys);
    if (first_line[i])
        return mm_fail(err, "%s:%d:%d: duplicate key '%s' (first set at line %d)", name,
                       MARK(key_node), k->name, first_line[i]);
    first_line[i] = (int)key_node->start_mark.line + 1;
    char why[512];
    if (k->kind == K_LIST && val->type == YAML_SEQUENCE_NODE) {
        const char *items[MM_LIST_MAX];
        size_t lens[MM_LIST_MAX];
        int n = 0;
        for (yaml_node_item_t *it = val->data.sequence.items.start;
             it < val->data.sequence.items.top; it++) {
            yaml_node_t *in = yaml_document_get_node(doc, *it);
            if (in->type != YAML_SCALAR_NODE)
                return mm_fail(err, "%s:%d:%d: %s: expected a list of words, got %s in it", name,
                               MARK(in), k->name, node_kind(in));
            if (n == MM_LIST_MAX)
                return mm_fail(err, "%s:%d:%d: %s: more than %d items", name, MARK(in), k->name,
                               MM_LIST_MAX);
            if (memchr(in->data.scalar.value, '\0', in->data.scalar.length))
                return mm_fail(err, "%s:%d:%d: %s: NUL byte in value", name, MARK(in), k->name);
            items[n] = (const char *)in->data.scalar.value;
            lens[n++] = in->data.scalar.length;
        }
        if (set_list(c, k, items, lens, n, why, sizeof(why)) != 0)
            return mm_fail(err, "%s:%d:%d: %s: %s", name, MARK(val), k->name, why);
        return 0;
    }
    if (val->type != YAML_SCALAR_NODE)
        return mm_fail(err, "%s:%d:%d: %s: expected a scalar value, got %s", name, MARK(val),
                       k->name, node_kind(val));
    if (set_key(c, k, (const char *)val->data.scalar.value, val->data.scalar.length,
                node_is_null(val), why, sizeof(why)) != 0)
        return mm_fail(err, "%s:%d:%d: %s: %s", name, MARK(val), k->name, why);
    return 0;
}

// Walks the document's root mapping into c.
static int load_document(mm_config *c, yaml_document_t *doc, const char *name, mm_err *err) {
    yaml_node_t *root = yaml_document_get_root_node(doc);
    if (!root || node_is_null(root)) return 0;  // empty file: all defaults
    if (root->type != YAML_MAPPING_NODE)
        return mm_fail(err, "%s:%d:%d: expected a mapping of sections (run:, data:, ...), got %s",
                       name, MARK(root), node_kind(root));
    int first_line[N_KEYS] = {0};
    // Section names seen so far and where: a section given twice is a duplicate key too.
    const char *sec_name[N_KEYS];
    size_t sec_len[N_KEYS];
    int sec_line[N_KEYS], n_sec = 0;
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top;
         p++) {
        yaml_node_t *kn = yaml_document_get_node(doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(doc, p->value);
        if (kn->type != YAML_SCALAR_NODE)
            return mm_fail(err, "%s:%d:%d: expected a section name, got %s", name, MARK(kn),
                           node_kind(kn));
        const char *ks = (const char *)kn->data.scalar.value;
        size_t kl = kn->data.scalar.length;
        char shown[80], hint[96];
        show_value(ks, kl, shown, sizeof(shown));
        const cfg_key *top = memchr(ks, '.', kl) ? NULL : find_key(ks, kl);
        if (top) {  // a top-level scalar such as backend
            if (load_pair(c, doc, name, top, kn, vn, first_line, err)) return -1;
            continue;
        }
        if (memchr(ks, '.', kl) && find_key(ks, kl))
            return mm_fail(err,
                           "%s:%d:%d: '%s' must be written as a key under its section "
                           "(%.*s:, then the key indented)",
                           name, MARK(kn), shown, (int)section_len(ks), ks);
        if (!is_section(ks, kl)) {
            suggest(ks, kl, 0, hint, sizeof(hint));
            if (!hint[0]) suggest(ks, kl, 1, hint, sizeof(hint));
            return mm_fail(err, "%s:%d:%d: unknown section or key '%s'%s", name, MARK(kn), shown,
                           hint);
        }
        for (int s = 0; s < n_sec; s++)
            if (sec_len[s] == kl && memcmp(sec_name[s], ks, kl) == 0)
                return mm_fail(err, "%s:%d:%d: duplicate section '%s' (first at line %d)", name,
                               MARK(kn), shown, sec_line[s]);
        sec_name[n_sec] = ks, sec_len[n_sec] = kl, sec_line[n_sec] = (int)kn->start_mark.line + 1;
        n_sec++;
        if (node_is_null(vn)) continue;  // `eval:` with nothing under it
        if (vn->type != YAML_MAPPING_NODE)
            return mm_fail(err, "%s:%d:%d: section '%s' must be a mapping of keys, got %s", name,
                           MARK(vn), shown, node_kind(vn));
        for (yaml_node_pair_t *q = vn->data.mapping.pairs.start; q < vn->data.mapping.pairs.top;
             q++) {
            yaml_node_t *k2 = yaml_document_get_node(doc, q->key);
            yaml_node_t *v2 = yaml_document_get_node(doc, q->value);
            if (k2->type != YAML_SCALAR_NODE)
                return mm_fail(err, "%s:%d:%d: expected a key name in section '%s', got %s", name,
                               MARK(k2), shown, node_kind(k2));
            char full[256];
            int fl = snprintf(full, sizeof(full), "%.*s.%.*s", (int)kl, ks,
                              (int)k2->data.scalar.length, (const char *)k2->data.scalar.value);
            const cfg_key *k =
                fl > 0 && (size_t)fl < sizeof(full) ? find_key(full, (size_t)fl) : NULL;
            if (!k) {
                char fshown[80];
                size_t flen = (size_t)fl < sizeof(full) ? (size_t)fl : sizeof(full) - 1;
                show_value(full, flen, fshown, sizeof(fshown));
                suggest(full, flen, 0, hint, sizeof(hint));
                return mm_fail(err, "%s:%d:%d: unknown key '%s'%s", name, MARK(k2), fshown, hint);
            }
            if (load_pair(c, doc, name, k, k2, v2, first_line, err)) return -1;
        }
    }
    return 0;
}

// 1-based line:col of a byte offset (libyaml's reader errors carry only the offset).
static void offset_mark(const char *text, size_t off, int *line, int *col) {
    *line = 1, *col = 1;
    for (size_t i = 0; i < off && text[i]; i++) {
        if (text[i] == '\n')
            (*line)++, *col = 1;
        else
            (*col)++;
    }
}

static int parse_text(mm_config *c, const char *text, size_t len, const char *name, mm_err *err) {
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = 0, have_doc = 0;
    MM_CHECK(yaml_parser_initialize(&parser), "yaml_parser_initialize failed (out of memory)");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    if (!yaml_parser_load(&parser, &doc)) goto yaml_error;
    have_doc = 1;
    rc = load_document(c, &doc, name, err);
    if (rc == 0) {  // a second document would be silently ignored: refuse it
        yaml_document_t extra;
        if (!yaml_parser_load(&parser, &extra)) goto yaml_error;
        yaml_node_t *r = yaml_document_get_root_node(&extra);
        if (r)
            rc = mm_fail(err, "%s:%d:%d: a second YAML document; the config is one document", name,
                         MARK(r));
        yaml_document_delete(&extra);
    }
    goto done;
yaml_error:;
    int line, col;
    const char *problem = parser.problem ? parser.problem : "invalid YAML";
    if (parser.error == YAML_READER_ERROR) {
        offset_mark(text, parser.problem_offset, &line, &col);
    } else {
        line = (int)parser.problem_mark.line + 1;
        col = (int)parser.problem_mark.column + 1;
    }
    if (parser.context)
        rc = mm_fail(err, "%s:%d:%d: %s (%s started at line %d)", name, line, col, problem,
                     parser.context, (int)parser.context_mark.line + 1);
    else
        rc = mm_fail(err, "%s:%d:%d: %s", name, line, col, problem);
done:
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return rc;
}

int mm_config_load_string(mm_config *c, const char *text, const char *name, mm_err *err) {
    mm_config tmp;
    mm_config_default(&tmp);
    if (parse_text(&tmp, text, strlen(text), name, err)) return -1;
    *c = tmp;
    return 0;
}

int mm_config_set(mm_config *c, const char *assignment, mm_err *err) {
    char shown[160];
    show_value(assignment, strlen(assignment), shown, sizeof(shown));
    const char *eq = strchr(assignment, '=');
    if (!eq) return mm_fail(err, "override '%s': expected section.key=value", shown);
    size_t kl = (size_t)(eq - assignment);
    const cfg_key *k = find_key(assignment, kl);
    if (!k) {
        char hint[96];
        suggest(assignment, kl, 0, hint, sizeof(hint));
        return mm_fail(err, "override '%s': unknown key '%.*s'%s", shown, (int)kl, assignment,
                       hint);
    }
    char why[512];
    const char *v = eq + 1;
    if (set_key(c, k, v, strlen(v), 0, why, sizeof(why)))
        return mm_fail(err, "override '%s': %s", shown, why);
    return 0;
}

int mm_config_load(mm_config *c, const char *path, int n_over, char *const *overrides,
                   mm_err *err) {
    mm_config tmp;
    mm_config_default(&tmp);
    if (path) {
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
            return mm_fail(err, "%s: cannot open: Is a directory", path);
        char *text = NULL;
        size_t n = 0;
        if (mm_read_file(path, &text, &n, err)) return -1;
        int rc = parse_text(&tmp, text, n, path, err);
        free(text);
        if (rc) return -1;
    }
    for (int i = 0; i < n_over; i++)
        if (mm_config_set(&tmp, overrides[i], err)) return -1;
    *c = tmp;
    return 0;
}

// ---------------------------------------------------------------------------------------
// Cross-field rules: what no single key's range can express.

int mm_config_validate(const mm_config *c, mm_err *err) {
    if (!c->run.out_dir[0]) return mm_fail(err, "config: run.out_dir must not be empty");
    if (c->run.stop_after > c->run.steps)
        return mm_fail(err, "config: run.stop_after (%lld) must not exceed run.steps (%lld)",
                       (long long)c->run.stop_after, (long long)c->run.steps);
    if (!c->data.train[0])
        return mm_fail(err, "config: data.train is required (a dataset directory made by mmdata)");
    if (c->data.micro_batch > c->data.global_batch)
        return mm_fail(err, "config: data.micro_batch (%d) must not exceed data.global_batch (%d)",
                       c->data.micro_batch, c->data.global_batch);
    if (c->data.global_batch % c->data.micro_batch)
        return mm_fail(err,
                       "config: data.global_batch (%d) must be a multiple of "
                       "data.micro_batch (%d)",
                       c->data.global_batch, c->data.micro_batch);
    if (c->data.hop > c->data.n_fft)
        return mm_fail(err, "config: data.hop (%d) must not exceed data.n_fft (%d)", c->data.hop,
                       c->data.n_fft);
    if (c->data.n_mels > c->data.n_fft / 2 + 1)
        return mm_fail(err, "config: data.n_mels (%d) must not exceed data.n_fft / 2 + 1 (%d)",
                       c->data.n_mels, c->data.n_fft / 2 + 1);
    if ((c->augment.time_masks > 0) != (c->augment.time_mask_width > 0))
        return mm_fail(err,
                       "config: augment.time_masks (%d) and augment.time_mask_width (%d) "
                       "must both be 0 or both be positive (one without the other masks nothing)",
                       c->augment.time_masks, c->augment.time_mask_width);
    if ((c->augment.freq_masks > 0) != (c->augment.freq_mask_width > 0))
        return mm_fail(err,
                       "config: augment.freq_masks (%d) and augment.freq_mask_width (%d) "
                       "must both be 0 or both be positive (one without the other masks nothing)",
                       c->augment.freq_masks, c->augment.freq_mask_width);
    if (c->optim.ema_decay >= 1)
        return mm_fail(err, "config: optim.ema_decay (%.17g) must be below 1 (the EMA would "
                       "never move)", c->optim.ema_decay);
    if (c->diffusion.ema_decay >= 1)
        return mm_fail(err, "config: diffusion.ema_decay (%.17g) must be below 1 (the EMA would "
                       "never move)", c->diffusion.ema_decay);
    if (strcmp(c->diffusion.predict, "x") == 0 && strcmp(c->diffusion.objective, "flow") != 0)
        return mm_fail(err, "config: diffusion.predict: x needs diffusion.objective: flow (DDPM "
                       "predicts the noise), got objective %s", c->diffusion.objective);
    if (c->model.d_model % c->model.n_heads)
        return mm_fail(err, "config: model.d_model (%d) must be a multiple of model.n_heads (%d)",
                       c->model.d_model, c->model.n_heads);
    if (c->model.n_heads % c->parallel.tp)
        return mm_fail(err, "config: parallel.tp (%d) must divide model.n_heads (%d)",
                       c->parallel.tp, c->model.n_heads);
    long long d_ff = c->model.d_ff ? c->model.d_ff : 4LL * c->model.d_model;
    if (d_ff % c->parallel.tp)
        return mm_fail(err,
                       "config: parallel.tp (%d) must divide the MLP width (model.d_ff = "
                       "%lld)",
                       c->parallel.tp, d_ff);
    if (c->optim.min_lr > c->optim.lr)
        return mm_fail(err, "config: optim.min_lr (%g) must not exceed optim.lr (%g)",
                       c->optim.min_lr, c->optim.lr);
    if (c->optim.beta1 >= 1 || c->optim.beta2 >= 1)
        return mm_fail(err,
                       "config: optim.beta1 (%g) and optim.beta2 (%g) must be < 1 "
                       "(Adam's bias correction divides by 1 - beta^t)",
                       c->optim.beta1, c->optim.beta2);
    if (strcmp(c->eval.scorer, "synth") != 0 && strcmp(c->model.kind, "diffusion") == 0)
        return mm_fail(err, "config: eval.scorer: %s scores generated captions; a diffusion "
                       "model generates images, which only synth scores", c->eval.scorer);
    if (strcmp(c->model.stem, "conv") == 0 && strcmp(c->model.kind, "diffusion") == 0)
        return mm_fail(err, "config: model.stem: conv is the transformer's image stem; the "
                       "diffusion model takes patches (set model.stem: patch)");
    if (strcmp(c->model.stem, "conv") == 0 && c->model.patch % 4)
        return mm_fail(err, "config: model.stem: conv needs model.patch a multiple of 4 (two "
                       "2x2 poolings, then patches of patch/4), got %d", c->model.patch);
    if (strcmp(c->model.kind, "diffusion") == 0) {
        const struct {
            const char *key;
            double v;
        } lm_only[] = {{"model.dropout", c->model.dropout},
                       {"model.attn_dropout", c->model.attn_dropout},
                       {"model.modality_drop", c->model.modality_drop},
                       {"model.audio_drop", c->model.audio_drop},
                       {"optim.label_smoothing", c->optim.label_smoothing}};
        for (size_t i = 0; i < sizeof(lm_only) / sizeof(lm_only[0]); i++)
            if (lm_only[i].v != 0)
                return mm_fail(err,
                               "config: %s (%g) regularises the transformer; the diffusion "
                               "model has diffusion.cond_drop and diffusion.modality_drop",
                               lm_only[i].key, lm_only[i].v);
        if (c->optim.ema_decay != 0)
            return mm_fail(err, "config: optim.ema_decay (%g) is the transformer's EMA; the "
                           "diffusion model keeps its own with diffusion.ema_decay",
                           c->optim.ema_decay);
    }
    if (c->checkpoint.reinit.n > 0 && !c->checkpoint.init_from[0])
        return mm_fail(err, "config: checkpoint.reinit names tensors to re-initialise, but "
                       "checkpoint.init_from is not set (nothing to take the others from)");
    if (!c->checkpoint.resume[0])
        return mm_fail(err,
                       "config: checkpoint.resume must be auto, none or a checkpoint "
                       "directory, got ''");
    if (strcmp(c->backend, "cpu") == 0 && strcmp(c->precision, "fp32") != 0)
        return mm_fail(err, "config: precision: %s needs backend: cuda (the cpu backend "
                       "computes in fp32)", c->precision);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Output: YAML and docs.

// Shortest %g form that reads back as exactly d.
static void fmt_double(double d, char *out, size_t cap) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, cap, "%.*g", prec, d);
        if (strtod(out, NULL) == d) return;
    }
}

static void put_quoted(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void print_value(FILE *f, const mm_config *c, const cfg_key *k) {
    const char *field = (const char *)c + k->off;
    char num[64];
    switch (k->kind) {
        case K_INT:
            fprintf(f, "%d", *(const int *)field);
            break;
        case K_I64:
            fprintf(f, "%" PRId64, *(const int64_t *)field);
            break;
        case K_U64:
            fprintf(f, "%" PRIu64, *(const uint64_t *)field);
            break;
        case K_F64:
            fmt_double(*(const double *)field, num, sizeof(num));
            fputs(num, f);
            break;
        case K_BOOL:
            fputs(*(const int *)field ? "true" : "false", f);
            break;
        case K_ENUM:
            fputs(field, f);
            break;
        case K_STR:  // double-quoted: only '"' and '\' need escaping (control bytes are refused)
            put_quoted(f, field);
            break;
        case K_LIST: {  // a flow sequence of quoted items (a glob's '*' would start an alias)
            const mm_list *l = (const mm_list *)field;
            fputc('[', f);
            for (int i = 0; i < l->n; i++) {
                if (i) fputs(", ", f);
                put_quoted(f, l->item[i]);
            }
            fputc(']', f);
            break;
        }
    }
}

char *mm_config_to_yaml(const mm_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    MM_CHECK(f, "open_memstream failed (out of memory)");
    fputs("# mmtrain configuration, fully resolved (every key; see train/CONFIG.md)\n", f);
    size_t cur_len = 0;
    const char *cur = NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &keys[i];
        size_t sl = section_len(k->name);
        if (sl && (!cur || sl != cur_len || memcmp(cur, k->name, sl) != 0)) {
            fprintf(f, "%.*s:\n", (int)sl, k->name);
            cur = k->name, cur_len = sl;
        }
        if (!sl) cur = NULL;
        fprintf(f, "%s%s: ", sl ? "  " : "", sl ? k->name + sl + 1 : k->name);
        print_value(f, c, k);
        fputc('\n', f);
    }
    MM_CHECK(fclose(f) == 0, "writing the config YAML failed (out of memory)");
    return buf;
}

// Markdown-escapes '|' so a value list does not split a table cell.
static void md_cell(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '|') fputc('\\', f);
        fputc(*s, f);
    }
}

void mm_config_doc(FILE *f) {
    static const char *const kind_name[] = {"int",  "int64",  "uint64", "float",
                                            "bool", "string", "enum",   "list"};
    size_t cur_len = (size_t)-1;
    const char *cur = NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &keys[i];
        size_t sl = section_len(k->name);
        if (!cur || sl != cur_len || memcmp(cur, k->name, sl) != 0) {
            if (sl)
                fprintf(f, "\n### %.*s\n\n", (int)sl, k->name);
            else
                fprintf(f, "\n### top level\n\n");
            fputs("| key | type | default | range | meaning |\n", f);
            fputs("|---|---|---|---|---|\n", f);
            cur = k->name, cur_len = sl;
        }
        fprintf(f, "| `%s` | %s | ", k->name, kind_name[k->kind]);
        if (k->kind == K_STR)
            fprintf(f, "`\"%s\"`", k->def);
        else if (k->kind == K_LIST)
            fprintf(f, "`[%s]`", k->def);
        else
            fprintf(f, "`%s`", k->def);
        fputs(" | ", f);
        switch (k->kind) {
            case K_INT:
            case K_I64:
                fprintf(f, "%.0f .. %.0f", k->lo, k->hi);
                break;
            case K_F64:
                fprintf(f, "%g .. %g", k->lo, k->hi);
                break;
            case K_U64:
                fputs("0 .. 2^64-1", f);
                break;
            case K_BOOL:
                fputs("true, false", f);
                break;
            case K_ENUM:
                md_cell(f, k->values);
                break;
            case K_STR:
                fprintf(f, "up to %zu bytes", k->size - 1);
                break;
            case K_LIST:
                if (k->values) {
                    fputs("any of ", f);
                    md_cell(f, k->values);
                } else {
                    fprintf(f, "up to %d items of %d bytes", MM_LIST_MAX, MM_LIST_ITEM - 1);
                }
                break;
        }
        fputs(" | ", f);
        md_cell(f, k->doc);
        fputs(" |\n", f);
    }
}
