// memory.h: the memory a run needs on each rank, estimated from its config before anything
// large is allocated, printed at start, and checked against what the backend has: a run
// that cannot fit stops before training with the estimate and what to change (a smaller
// micro-batch, recomputation, more tp, ZeRO-1), not with an allocation abort and a
// backtrace. The model's part comes from the model's own carving plan (model_mem_plan,
// dit_mem_plan), so the estimate cannot drift from what model_create allocates. The
// threads of a rank come from the same share of the node (train_set_threads).
#ifndef MM_TRAIN_MEMORY_H
#define MM_TRAIN_MEMORY_H

#include <stddef.h>

#include "../model/backend.h"
#include "../model/model.h"

// Bytes on one rank. All but host are in the backend's memory (the host's on the CPU).
typedef struct {
    size_t params, grads;  // fp32 master weights and their gradients (this tp rank's)
    size_t optim;          // AdamW m and v: this dp rank's shard under ZeRO-1
    size_t zero;           // ZeRO-1's reduced gradient shard
    size_t ema;            // the EMA of the weights and evaluation's swap buffer (diffusion)
    size_t acts;           // the model's activation buffer for the largest batch
    size_t scratch;        // the backend's work memory beyond the model's buffers
    size_t total;
    size_t host;  // host mirrors and staging of a device backend; 0 on the CPU
} train_mem;

// The estimate for a model of mm on be, dp ranks with ZeRO stage zero, with an EMA or not.
void train_mem_estimate(train_mem *e, const mm_backend *be, const model_mem *mm, int ema, int dp,
                        int zero);

// The ranks on this node, from the launcher (1 when it does not say): they share the host's
// memory and cores.
int train_local_ranks(void);

// Sets this process's OpenMP threads (and OpenBLAS's, its OpenMP build) and returns how
// many: n when n > 0 (run.threads, `train sample --threads`), else the cores this process
// may run on divided by the ranks on its node.
int train_set_threads(int n);

// 0 when e fits in what be has left (on the CPU: the host's available memory shared by the
// node's ranks); else -1 with err: the estimate by part, what there is, and what to change.
// max_B: the largest batch the activations are sized for; can_recompute: 1 when
// model.recompute block would save activations (it is not already set).
int train_mem_check(const train_mem *e, const mm_backend *be, int max_B, int can_recompute,
                    mm_err *err);

// One line: the estimate by part, in MiB or GiB.
void train_mem_format(const train_mem *e, char *buf, size_t len);

#endif  // MM_TRAIN_MEMORY_H
