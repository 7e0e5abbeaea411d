// trainer_internal.h: the state of a training run, shared by the loop (trainer.c) and the
// model families it trains (family_lm.c: the captioning transformer; family_dit.c: the
// diffusion generator). A family owns its network and says how one micro-batch is turned
// into a loss and gradients, what happens after each update, and how it is evaluated;
// everything else (data, parallelism, optimizer, checkpoints, metrics) is the loop's.
#ifndef MM_TRAINER_INTERNAL_H
#define MM_TRAINER_INTERNAL_H

#include <stdio.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../model/diffusion.h"
#include "config.h"
#include "gradsync.h"
#include "memory.h"
#include "tboard.h"
#include "trace.h"

typedef struct trainer trainer;

typedef struct {
    const char *kind;  // model.kind
    // Builds the network into t->net (and the family's own state in t->impl) for
    // activations of up to max_B samples. -1 with err on a config that cannot be built.
    int (*create)(trainer *t, int max_B, mm_err *err);
    // What create would allocate for the model with recomputation rc (the config's, or
    // another setting to compare), computed without allocating (model_mem_plan /
    // dit_mem_plan); *ema 1 when the family keeps an EMA of the weights. -1 with err as create.
    int (*mem_plan)(const trainer *t, int max_B, model_recompute rc, model_mem *out, int *ema,
                    mm_err *err);
    void (*destroy)(trainer *t);
    // Forward and backward of one micro-batch, loss scaled by 1 / global_batch; returns the
    // sum of the per-sample losses. Collective over tp.
    double (*micro_step)(trainer *t, const data_batch *b);
    // After every optimizer update, with t->step already counting it (EMA, sample grids).
    // May be NULL.
    void (*after_update)(trainer *t);
    // Validation at step t->step: metrics line, eval files, samples. Collective.
    void (*evaluate)(trainer *t);
    // Positions the network processes per sample (for tokens/s).
    int (*seq_len)(const trainer *t);
    // Families with state besides the parameters in the backend's memory (the diffusion EMA,
    // t->ema): sync_host fills its host view before a checkpoint is written, sync_device
    // copies it back after a checkpoint or init_from wrote it. May be NULL.
    void (*sync_host)(trainer *t);
    void (*sync_device)(trainer *t);
} train_family;

extern const train_family train_family_lm, train_family_dit;

// The generator config c describes for data of schema sc, tp 1 (family_dit.c): the trainer
// and `train sample` build their network from this one reading of the keys.
dit_config train_dit_config(const mm_config *c, const data_schema *sc);

struct trainer {
    const mm_config *cfg;       // = &cfg_own once trainer_init copied it
    mm_config cfg_own;          // the run's config, data.* shape keys resolved from the data
    comm_group *world;
    int rank, world_size;
    comm_layout lay;            // owned: dp and tp groups
    const mm_backend *be;       // owned: what the run computes on (backend.h)
    train_mem mem;              // the memory estimate made before the model (memory.h)
    data_audio_cfg audio;
    data_schema schema;         // of the training set
    data_loader *loader;        // owned
    data_dataset *val;          // owned, NULL without data.val
    data_featurizer *val_feat;  // owned
    data_batch val_batch;       // owned
    const train_family *fam;
    void *impl;                 // the family's network and state, owned by the family
    train_net net;              // view of the network's parameters
    float *ema;                 // (n_params) host view of the EMA of the parameters, NULL when
                                // not kept; owned by the family
    gsync sync;                 // owned: gradient reduction + AdamW state
    int sync_ready;             // sync initialized
    FILE *trace;                // data.trace: sample ids of this rank, owned
    trace_timeline *timeline;   // run.trace: the step timeline (trace.h), owned; NULL when off
    int64_t step;               // optimizer steps completed
    mm_rng rng;                 // training RNG (checkpointed)
    char *config_yaml;          // resolved config text, owned
    FILE *metrics;              // rank 0 only, owned
    char metrics_path[MM_STR + 32];
    tb_writer tb;                 // rank 0, run.tensorboard: the event file (closed: tb.f NULL)
    int64_t tb_mirrored;          // bytes of metrics.jsonl already in tb
    char data_id[64];             // the training set's identity by content (ckpt_data_id)
    struct train_run_lock *lock;  // rank 0: the run directory's LOCK, owned (trainer.c)
};

// finetune.c. Loads checkpoint.init_from's weights into t->net (and t->ema) as that file's
// header describes: mismatches listed, checkpoint.reinit honoured. -1 with err (alike on
// every rank: every rank reads the same tensor list).
int train_init_from(trainer *t, mm_err *err);
// Applies optim.freeze and optim.lr_mult_* to t->sync's optimizer. -1 with err when a frozen
// group has no tensor in this model kind.
int train_apply_groups(trainer *t, mm_err *err);

// Opens <out_dir>/<sub>/step_XXXXXXXX.<ext> for writing on rank 0 (creating <sub>); ends
// the job with a message when it cannot.
FILE *train_open_output(trainer *t, const char *sub, const char *ext, char *path, size_t n);
// Rank 0's output files (metrics.jsonl, eval/step_*.jsonl): rc < 0 (a write's result) or a
// failed flush or stream error ends the job with one line naming path and the reason, "disk
// full" on ENOSPC/EDQUOT, rather than dropping lines and exiting 0. NULL f: nothing to check.
void train_check_write(trainer *t, FILE *f, const char *path, int rc);
// Checks, then closes f (train_open_output's files) the same way.
void train_close_output(trainer *t, FILE *f, const char *path);
// Rank 0: the PNG file at png_path (h x w pixels, c channels) as TensorBoard image tag at
// t->step, and Markdown text as text tag; nothing without run.tensorboard. A failed write
// ends the job as train_check_write does, naming the event file.
void train_tb_image(trainer *t, const char *tag, const char *png_path, int h, int w, int c);
void train_tb_text(trainer *t, const char *tag, const char *markdown);
// Ends the whole job with "error: <msg>" (a failure only this rank can see).
noreturn void train_die(trainer *t, const char *msg);

#endif  // MM_TRAINER_INTERNAL_H
