// config.h: the run configuration as typed structs. A YAML file (libyaml) plus command-line
// overrides `section.key=value` are resolved into mm_config; every key, its type, default,
// range and meaning lives in ONE table in config.c (documented in train/CONFIG.md).
// Unknown keys, wrong types, out-of-range values, broken YAML and unreadable files are errors
// that name file:line:column (or the override) and make the entry point exit non-zero.
#ifndef MM_CONFIG_H
#define MM_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "../core/core.h"
#include "../data/data.h"

#define MM_STR 512

// A list value (YAML sequence `[a, b]`; override `key=a,b`): at most MM_LIST_MAX items of at
// most MM_LIST_ITEM - 1 bytes. Unused items are all zero (configs compare with memcmp).
#define MM_LIST_MAX 16
#define MM_LIST_ITEM 64
typedef struct {
    int n;                                 // items in use
    char item[MM_LIST_MAX][MM_LIST_ITEM];  // NUL-terminated
} mm_list;

// Parameter groups as config keys name them, in model.h's MODEL_GROUP_* order.
#define MM_N_GROUPS 4
extern const char *const mm_group_names[MM_N_GROUPS];  // "text", "image", "audio", "trunk"

typedef struct {
    struct {
        char out_dir[MM_STR];  // run directory: metrics.jsonl, config.yaml, ckpt/, eval/
        int64_t steps;         // total optimizer steps of the run (a resumed run continues to it)
        int64_t stop_after;    // stop (with a checkpoint) after this step, 0 = run to `steps`
        uint64_t seed;         // seeds init, sampler and everything random
        int log_every;         // progress line + metrics every N steps
        int threads;           // OpenMP/OpenBLAS threads per rank (0 = all cores / ranks)
        int trace;             // write the step timeline (train/trace.h) (0/1)
        double collective_timeout;  // seconds a collective may take before the job ends
                                    // naming the ranks that did not arrive (0 = wait forever)
        char tensorboard[MM_STR];   // TensorBoard event files' directory, relative to out_dir
                                    // unless absolute; "" = none (tboard.h)
    } run;
    struct {
        char train[MM_STR];    // dataset directory (mmdata format)
        char val[MM_STR];      // validation dataset directory ("" = none)
        int global_batch;      // samples per optimizer step over all ranks
        int micro_batch;       // samples per rank per micro-step
        int prefetch;          // batches decoded ahead by the loader thread
        int verify;            // verify shard checksums at open (0/1)
        int trace;             // log the sample ids each rank trains on (0/1)
        int n_fft, hop, n_mels;  // audio features
        // What every sample looks like; 0 = take it from the training set's schema. The
        // trainer resolves them (the saved config holds the data's values) and refuses a
        // nonzero value that disagrees with the data.
        int img_h, img_w, img_c;  // image shape
        int audio_rate;        // Hz
        int audio_len;         // PCM samples per clip
        int text_max;          // caption bytes
    } data;
    // Training-time augmentation (data/augment.c, applied by the loader thread; never to
    // evaluation). Every default changes nothing.
    data_augment_cfg augment;
    struct {
        char kind[32];         // "transformer" or "diffusion"
        int d_model, n_layers, n_heads, d_ff;  // d_ff 0 = 4 * d_model
        int patch;             // image patch size in pixels
        char stem[16];         // "patch" or "conv": the transformer's image stem
        int stem_width;        // stem conv: channels of the first convolution
        int audio_group;       // log-mel frames per audio token
        char recompute[16];    // "none", "attention" or "block": what backward recomputes
        // regularisation of the transformer's training (model.h model_config, CONFIG.md)
        double dropout;        // embeddings and residual branches
        double attn_dropout;   // attention probabilities
        double modality_drop;  // share of image+audio samples trained on one of them, each
        double audio_drop;     // then, share of image+audio samples trained without audio
    } model;
    struct {
        char objective[16];    // "flow" or "ddpm"
        char t_sampling[16];   // "uniform" or "logit_normal"
        char predict[16];      // "v" or "x" (flow only)
        double cond_drop;      // conditioning dropout for classifier-free guidance
        double modality_drop;  // caption-only / audio-only training share each
        double ema_decay;      // EMA of the weights (sampling uses it)
        int enc_layers;        // conditioning encoder blocks
        int pool_cond;         // pooled conditioning also feeds adaLN (0/1)
        int sample_every;      // PNG sample grid every N steps (0 = at evaluations)
        int sample_steps;      // sampler steps
        double guidance;       // classifier-free guidance scale
        int eval_samples;      // prompts per conditioning mode for cond_acc
    } diffusion;
    struct {
        double lr, min_lr;     // peak and final learning rate (cosine)
        int64_t warmup;        // linear warmup steps
        double weight_decay;   // decoupled (AdamW), on matrices only
        double beta1, beta2, eps;
        double grad_clip;      // global-norm clip (0 = off)
        int max_skips;         // consecutive non-finite steps that end the run (0 = never)
        mm_list freeze;        // parameter groups kept fixed (mm_group_names)
        double lr_mult[MM_N_GROUPS];  // learning-rate multiplier per group (text, image,
                                      // audio, trunk)
        double label_smoothing;       // eps of the transformer's training cross-entropy
        double ema_decay;             // transformer: EMA of the weights (0 = none)
    } optim;
    struct {
        int every;             // evaluate every N steps (0 = only at the last step)
        int samples;           // validation samples for val_loss and captions (0 = all)
        int batch;             // samples per eval forward
        char scorer[16];       // "synth" or "text": how generated outputs are scored (eval.h)
        int audio_captions;    // transformer: captions from the sound alone too (1 = yes)
    } eval;
    struct {
        int64_t every;         // checkpoint every N steps (0 = none periodic; still at end)
        int keep_last;         // keep the newest K committed checkpoints
        char resume[MM_STR];   // "auto", "none" or a checkpoint directory
        char init_from[MM_STR];// checkpoint to take weights from ("" = none)
        mm_list reinit;        // init_from: tensor-name globs that keep their fresh init
        mm_list allow_changes;  // resume: what may differ from the checkpoint (data, seed,
                                // batch, lr, steps); anything else is refused
    } checkpoint;
    struct {
        int tp;                // tensor-parallel size
        int zero;              // ZeRO stage (0 or 1)
        double bucket_mb;      // gradient bucket size in MiB
    } parallel;
    char backend[16];          // "cpu" or "cuda"
    char precision[16];        // "fp32" or "bf16" (cuda: matmul inputs; the cpu is fp32)
} mm_config;

// Fills every field with its default (the table in config.c is the only place they live).
void mm_config_default(mm_config *c);

// Loads a YAML file over the defaults, then applies overrides ("section.key=value", in order).
// path may be NULL (defaults + overrides). Returns -1 with err naming file:line:col (or
// "override 'x=y'") and the reason; c is only written on success. Does not validate.
int mm_config_load(mm_config *c, const char *path, int n_over, char *const *overrides,
                   mm_err *err);

// Applies one "section.key=value" override. -1 with err on unknown key / bad value.
int mm_config_set(mm_config *c, const char *assignment, mm_err *err);

// Cross-field checks (e.g. global_batch divisible by micro_batch). -1 with err.
int mm_config_validate(const mm_config *c, mm_err *err);

// The fully resolved config as YAML text (every key, defaults included), loadable again by
// mm_config_load. Returns a malloc'd string the caller frees.
char *mm_config_to_yaml(const mm_config *c);

// Loads config text from memory (e.g. from a checkpoint's metadata) over the defaults.
// name is used in errors; c is only written on success.
int mm_config_load_string(mm_config *c, const char *text, const char *name, mm_err *err);

// Writes the Markdown key reference (every key: type, default, range, meaning) generated from
// the key table; train/CONFIG.md embeds it and a test keeps the two identical.
void mm_config_doc(FILE *f);

#endif  // MM_CONFIG_H
