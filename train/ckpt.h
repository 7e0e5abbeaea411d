// ckpt.h: checkpoints as train/CHECKPOINT.md describes them.
//
//   <out_dir>/ckpt/step_XXXXXXXX/        a committed checkpoint (directory renamed into place)
//       rank_XXXXX.h5                    this rank's slices: /params, /adam_m, /adam_v (/ema)
//                                        one dataset per tensor (float32, local shape) with
//                                        attributes global_shape, split_dim, start
//       meta.h5                          attributes: format, version, step, world layout,
//                                        rng state, loader position, config (YAML text)
//       COMMITTED                        written by rank 0 after every rank finished
//   <out_dir>/ckpt/latest                text: the directory name of the newest committed one
//
// A checkpoint is written into step_XXXXXXXX.tmp/, fsync'd, committed, then renamed; a
// directory without COMMITTED (or still named .tmp) is never loaded: *.tmp is removed by the
// next save, a step_XXXXXXXX without COMMITTED is moved aside (kept) as
// step_XXXXXXXX.uncommitted-<unix time>. Loading reads each tensor by global offset, so a
// checkpoint saved at one tp layout loads at another (resharding).
#ifndef MM_CKPT_H
#define MM_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "../comm/comm.h"
#include "../core/core.h"
#include "../data/data.h"
#include "../model/model.h"
#include "config.h"

#define CKPT_FORMAT "mmtrain-checkpoint"
#define CKPT_VERSION 1

typedef struct {
    int64_t step;      // optimizer steps completed
    data_pos pos;      // loader position of the next step
    mm_rng rng;        // the training loop's RNG state
    int world, tp, dp; // layout it was saved with
    char data_id[64];  // the training set's identity by content ("index-crc32:XXXXXXXX", of
                       // its index.json, which lists every shard's checksum); "" = unknown
                       // (checkpoints written before it existed)
} ckpt_meta;

// What a rank saves or loads: its tensor table and local buffers (n_params floats each).
// m and v may be NULL when loading weights only.
typedef struct {
    const model_tensor *tensors;
    int n_tensors;
    size_t n_params;
    float *params;  // (n_params)
    float *m;       // (n_params) AdamW first moment
    float *v;       // (n_params) AdamW second moment
    float *ema;     // (n_params) exponential moving average of params, NULL when the model
                    // keeps none
} ckpt_state;

// Collective over `world`: every rank writes its file, rank 0 writes meta and commits, then
// updates `latest` and keeps only the newest keep_last committed checkpoints.
// write_state = 0 on ranks whose state another rank already writes (dp replicas).
// Returns 0 on every rank, or -1 on every rank (with err) if any rank failed.
int ckpt_save(comm_group *world, const char *out_dir, const ckpt_meta *meta,
              const char *config_yaml, const ckpt_state *st, int write_state, int keep_last,
              mm_err *err);

// The per-rank part of ckpt_save: writes <dir>/rank_<world_rank>.h5 (%05d) with st's
// tensors (groups for m and v only when they are not NULL) and fsyncs it. Not collective and
// commits nothing; exposed for tests and tools that assemble a checkpoint (e.g. a second
// tp slice written by a single process). -1 with err naming the file and tensor.
int ckpt_write_rank_file(const char *dir, int world_rank, const ckpt_state *st, mm_err *err);

// Finds <out_dir>/ckpt/latest and checks that it names a committed checkpoint.
// Returns 1 and the directory in path when found, 0 when there is none yet, -1 on error
// (e.g. `latest` names something that is not a committed checkpoint).
int ckpt_find_latest(const char *out_dir, char *path, size_t path_len, mm_err *err);

// The fallback of `resume: auto` when a checkpoint is damaged: the newest committed
// checkpoint under <out_dir>/ckpt whose step is below the one of the step directory `than`
// (NULL: any step). Returns 1 with its directory in path, 0 when there is none.
int ckpt_find_previous(const char *out_dir, const char *than, char *path, size_t path_len);

// Resolves what a user may name as a checkpoint: a committed step directory itself, a ckpt/
// directory (follows its `latest`), or a run directory (follows <path>/ckpt/latest). Writes
// the step directory into out. -1 with err saying what path is and why it is not usable
// (missing, an unfinished save, a run without a committed checkpoint, not a checkpoint).
int ckpt_resolve(const char *path, char *out, size_t out_len, mm_err *err);

// Tidies <out_dir>/ckpt (rank 0): removes leftovers of interrupted saves (*.tmp), moves a
// step_XXXXXXXX directory without COMMITTED aside to step_XXXXXXXX.uncommitted-<time>
// (kept, never deleted: it may hold the only copy of something), and renames a committed
// step_XXXXXXXX.old back when step_XXXXXXXX is missing (a fallback swap cut short). Says
// what it did in one line on stderr per directory.
void ckpt_clean_partial(const char *out_dir);

// The identity by content of the dataset in dir: "index-crc32:XXXXXXXX" of its index.json
// (which holds every shard's CRC-32 and sample count, so it changes with any shard's
// content and not with the directory's path). -1 with err when it cannot be read.
int ckpt_data_id(const char *dir, char *out, size_t out_len, mm_err *err);

// Reads meta.h5 of a committed checkpoint; *config_yaml gets a malloc'd copy of the saved
// config (caller frees; may pass NULL to skip).
int ckpt_load_meta(const char *dir, ckpt_meta *meta, char **config_yaml, mm_err *err);

// What a committed checkpoint was trained with: meta.h5's metadata (meta may be NULL) and its
// saved config parsed over the defaults into *cfg. config_yaml (may be NULL) gets the saved
// text, malloc'd, owned by the caller. Returns 0; -1 when the checkpoint cannot be read (err
// as ckpt_load_meta's: damage, an unfinished save); -2 when it reads but its config does
// not parse ("DIR: saved config does not parse: ..."), a config error rather than damage.
// Nothing is written to meta, cfg or config_yaml on failure.
int ckpt_read_config(const char *dir, ckpt_meta *meta, mm_config *cfg, char **config_yaml,
                     mm_err *err);

// ckpt_read_config of a checkpoint a user names (ckpt_resolve: a step, a ckpt/ or a run
// directory); dir (dir_len bytes) gets the step directory. `what` says where path came from
// and starts a resolving error ("export: --ckpt" -> "export: --ckpt PATH: not a ...").
// Returns as ckpt_read_config, -1 also when path does not resolve.
int ckpt_open_config(const char *path, const char *what, char *dir, size_t dir_len,
                     ckpt_meta *meta, mm_config *cfg, char **config_yaml, mm_err *err);

// A tensor as a checkpoint stores it: name and GLOBAL shape (whatever slices hold it).
typedef struct {
    char name[64];
    int ndim;
    int64_t shape[4];
} ckpt_tensor_info;

// Lists the tensors of one group of a committed checkpoint ("params", "adam_m", "adam_v" or
// "ema"), each once, sorted by name, with global shapes checked to agree across rank files.
// *out is malloc'd (caller frees; NULL when *n = 0, e.g. a checkpoint without /ema).
int ckpt_list_tensors(const char *dir, const char *group, ckpt_tensor_info **out, int *n,
                      mm_err *err);

// Fills st->params (and st->m, st->v when not NULL) for every tensor of st->tensors from the
// checkpoint, whatever layout it was saved with. A tensor missing from the checkpoint, or with
// another global shape, is an error naming the tensor.
int ckpt_load_state(const char *dir, const ckpt_state *st, mm_err *err);

#endif  // MM_CKPT_H
