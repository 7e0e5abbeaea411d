// backend.h: the one object through which a run computes: the CPU (OpenBLAS + OpenMP) or a
// GPU (CUDA, cuBLAS, NCCL). The trainer creates it once from the config's `backend:` and
// `precision:` and passes it explicitly to the model families, the gradient sync and
// sampling (export only moves host arrays between files and needs none); nothing finds it
// through a global or a thread-local binding.
//
// A backend is three things (ggml's ggml_backend_t and llm.c's explicit stream are the
// models):
//   - ops: the generic kernels and memory functions the models compute with (model.h
//     model_ops). Every op takes the backend as its first argument, so a CUDA op reaches its
//     device context, stream and scratch through it.
//   - iface: what the trainer needs around a step: waiting for queued work, input staging,
//     the optimizer kernels (AdamW, EMA, sum of squares, scale) and the data-parallel
//     gradient-bucket reduction (MPI on host memory, NCCL on device memory).
//   - caps: what it can run. The trainer checks the run's layout against them once at start
//     (mm_backend_check_layout), so an unsupported layout is one clear error whatever the
//     model kind.
// A model kind's own kernels (the DiT's adaLN, cross-attention, samplers) are the model's
// table, not the backend's: model/diffusion.c picks its dit_ops for a backend in one place.
//
// Files: model/backend.c (creation: the only place that knows which backends were built),
// model/cpu/ (the CPU backend), model/cuda/ (the CUDA backend). ARCHITECTURE.md says how to
// add an op or a backend.
#ifndef MM_BACKEND_H
#define MM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../comm/comm.h"
#include "../core/core.h"
#include "model.h"

typedef enum { MM_BACKEND_CPU = 0, MM_BACKEND_CUDA = 1 } mm_backend_kind;

// What a backend can run (1 = yes).
typedef struct {
    int host_memory;  // its buffers are host memory: the trainer reads parameters, gradients
                      // and the EMA in place; otherwise it keeps host mirrors (train_net)
    int tp;           // tensor parallelism: the models' tp collectives on its buffers
    int zero;         // ZeRO-1: gradients reduce-scattered, sharded AdamW, params gathered
} mm_backend_caps;

// One tensor's part of the range an optimizer updates (the parameter buffer is one
// contiguous array; train/optim.c cuts it into these).
typedef struct {
    size_t offset, size;  // element range in the parameter buffer
    float decay;          // 1 where weight decay applies, 0 elsewhere
    float lr_mult;        // learning-rate multiplier (parameter groups)
    int sharded;          // 1 when split over tp (its sum of squares sums over tp)
    int group;            // the tensor's parameter group (MODEL_GROUP_*)
} mm_opt_seg;

// A group of ranks as a backend reduces over it: the comm_group (host collectives, and MPI to
// set up) and what the backend needs to run collectives on its own memory: an NCCL
// communicator on a GPU, nothing on the CPU. Whoever uses a group on a backend makes its
// mm_coll once (mm_coll_new: the model for tp, train/gradsync for dp) and frees it.
typedef struct {
    comm_group *group;  // not owned
    void *impl;         // the backend's communicator (iface coll_init), owned; NULL on the CPU
} mm_coll;

// AdamW's hyper-parameters for one update.
typedef struct {
    int64_t step;  // 1-based, for bias correction
    double lr, beta1, beta2, eps, weight_decay;
    double grad_scale;  // multiplies every gradient first (clipping)
} mm_adamw_args;

typedef struct mm_backend_iface {
    // Frees what create made; NULL for a backend without state.
    void (*destroy)(const mm_backend *be);
    // Waits for the work queued so far; aborts naming the bad value when a kernel recorded
    // bad input (a token or target outside the vocabulary).
    void (*sync)(const mm_backend *be);

    // Input staging: host batches reach the backend's memory through a stage. put copies
    // the n regions src[i] (len[i] bytes) and sets dst[i] to where each can be read by ops;
    // done marks the stage free again after the work reading it was queued. On the CPU the
    // regions are used where they are (dst = src); on a GPU the copy of the next batch
    // overlaps the current one's compute. A stage holds bytes in all (regions 256-aligned).
    void *(*stage_new)(const mm_backend *be, size_t bytes);
    void (*stage_put)(const mm_backend *be, void *stage, int n, const void *const *src,
                      const size_t *len, void **dst);
    void (*stage_done)(const mm_backend *be, void *stage);
    void (*stage_free)(const mm_backend *be, void *stage);

    // Optimizer kernels over a plan: the segments of [lo, hi) prepared for this backend.
    // grads, m and v are indexed from lo, params absolutely. Arithmetic of AdamW and EMA is
    // float, step for step the same on every backend; sum of squares is double over fixed
    // chunks, so its order depends on the layout only.
    void *(*opt_plan_new)(const mm_backend *be, const mm_opt_seg *seg, int n_seg, size_t lo,
                          size_t hi);
    void (*opt_plan_free)(const mm_backend *be, void *plan);
    void (*adamw)(const mm_backend *be, const void *plan, float *params, const float *grads,
                  float *m, float *v, const mm_adamw_args *a);
    // sharded / replicated: sums over the tensors split over tp and the replicated ones.
    // Waits for the result.
    void (*sumsq)(const mm_backend *be, const void *plan, const float *grads, double *sharded,
                  double *replicated);
    // ema (n) = decay * ema + (1 - decay) * params
    void (*ema)(const mm_backend *be, float *ema, const float *params, size_t n, float decay);

    // Data-parallel gradient buckets: grads (n) of the backend's memory cut at bucket_lo
    // (n_buckets + 1 ascending offsets). start(b) begins the sum over dp of bucket b once
    // the work queued so far is done (backward reports it final), progress lets
    // non-blocking reductions move, finish waits until every started bucket is summed into
    // grads, so that the next work queued sees the sums.
    void *(*reducer_new)(const mm_backend *be, const mm_coll *dp, float *grads, size_t n,
                         int n_buckets, const size_t *bucket_lo);
    void (*reducer_start)(const mm_backend *be, void *r, int b);
    void (*reducer_progress)(const mm_backend *be, void *r);
    void (*reducer_finish)(const mm_backend *be, void *r);
    void (*reducer_free)(const mm_backend *be, void *r);
    // The step timeline (train/trace.h): start and end (n_buckets each) receive when each
    // bucket of the reduction the last finish completed began and ended, on mm_now()'s clock
    // (the host's view on the CPU: started, and seen complete; CUDA events on a GPU). Off
    // until the first call with start = end = NULL turns it on, so that a run without the
    // timeline pays nothing; reading may wait for the reduction.
    void (*reducer_times)(const mm_backend *be, void *r, double *start, double *end);

    // Marks on the backend's queue for the step timeline: timer_new makes room for n marks,
    // timer_mark(i) records when the work queued so far is done (the CPU, which runs each
    // op as it is called: now), timer_read waits for marks 0..n-1 and gives their times on
    // mm_now()'s clock.
    void *(*timer_new)(const mm_backend *be, int n);
    void (*timer_mark)(const mm_backend *be, void *tm, int i);
    void (*timer_read)(const mm_backend *be, void *tm, int n, double *t);
    void (*timer_free)(const mm_backend *be, void *tm);

    // Collectives on the backend's memory over a group, queued in order with the ops
    // (ordered after the work queued so far; whatever is queued next sees the result), the
    // same ranks in the same order as comm/'s host collectives. Every rank of the group calls
    // them in the same order with the same counts. coll_init is collective over g; it
    // returns the mm_coll's impl (NULL where the backend needs none).
    void *(*coll_init)(const mm_backend *be, comm_group *g);
    void (*coll_free)(const mm_backend *be, void *impl);
    // buf (n) = its sum over the group (parameters and their gradients)
    void (*allreduce)(const mm_backend *be, const mm_coll *c, mm_real *buf, size_t n);
    // The same over n activations of the backend's storage (act_bytes; the models' tp sums)
    void (*allreduce_acts)(const mm_backend *be, const mm_coll *c, mm_real *buf, size_t n);
    // recv (count) = the sum over the group of block `rank` of send (size * count); send and
    // recv do not overlap (ZeRO-1's gradients)
    void (*reduce_scatter)(const mm_backend *be, const mm_coll *c, const float *send, float *recv,
                           size_t count);
    // buf (size * count): every rank's block `rank` to every rank, in place (ZeRO-1's
    // updated parameters)
    void (*all_gather)(const mm_backend *be, const mm_coll *c, float *buf, size_t count);

    // Memory, for the trainer's estimate before the first step (train/memory.h): *avail
    // bytes this rank can still allocate and *total, of the device (a GPU's), or of the host
    // (what the OS reports available, shared by every rank of the node) on the CPU.
    void (*mem_avail)(const mm_backend *be, size_t *avail, size_t *total);
    // An estimate (meant as an upper bound) of the work memory the backend's ops take beyond
    // the buffers of a model planned as m (0 on the CPU, whose ops work in the model's own
    // scratch).
    size_t (*scratch_bound)(const mm_backend *be, const model_mem *m);
} mm_backend_iface;

struct mm_backend {
    const char *name;  // "cpu", "cuda"
    mm_backend_kind kind;
    mm_backend_caps caps;
    size_t act_bytes;  // of one activation element in the ops' buffers (model.h "activations"):
                       // sizeof(mm_real), or 2 for bf16 activations (CUDA, precision bf16,
                       // where mm_backend_create was asked for them)
    const model_ops *ops;  // generic kernels and memory (model.h)
    const mm_backend_iface *iface;
    void *ctx;       // the backend's own state (cuda_ctx), owned; NULL on CPU
    char desc[320];  // a line saying where this rank computes ("" on the CPU)
};

// The CPU backend: stateless, so one immutable object serves every caller (tests and
// host-side helpers pass it directly).
extern const mm_backend mm_backend_cpu;
// OpenBLAS's kernels for this CPU (model/cpu/blas_cpu.c): where the library fell back to its
// slowest (SSE3) ones on a CPU it does not know and OPENBLAS_CORETYPE is unset, sets that
// variable to what the CPU supports and execs the program again with argv; else returns.
// The first call of main, before MPI starts.
void mm_blas_pick_kernels(char **argv);
// In the program so restarted, the kernels OpenBLAS had fallen back to ("Prescott"); NULL
// when mm_blas_pick_kernels changed nothing. For a note in the program's own output.
const char *mm_blas_fallback(void);

// Creates the backend `name` ("cpu" or "cuda") for world rank `rank` with matmul precision
// `precision` ("fp32" or "bf16"; the CPU computes in fp32 whatever it says): on CUDA it
// picks the GPU of the local rank. act16 1: in precision bf16 the activations are bf16 too
// (act_bytes 2) on a backend that has them (CUDA; both model kinds' ops take them); 0 keeps
// fp32 activations under bf16 matmuls (what the tests hold the bf16 kernels to).
// Checks that its tables are complete. Returns 0, or -1 with err naming the problem (an
// unknown name, a binary built without CUDA, no GPU for this rank, a bad precision).
int mm_backend_create(const mm_backend **out, const char *name, const char *precision, int act16,
                      int rank, mm_err *err);
// NULL: nothing.
void mm_backend_free(const mm_backend *be);

// -1 with err when the backend cannot run dp x tp with ZeRO stage `zero` (what it lacks and
// what to change), for either model kind.
int mm_backend_check_layout(const mm_backend *be, int dp, int tp, int zero, mm_err *err);

// -1 with err naming the first NULL entry of a function table of `bytes` bytes whose first
// `skip` bytes are not function pointers (a name). Backends check their tables at creation
// and models their own tables, so a missing kernel is an error at start, not a NULL call.
int mm_table_complete(const void *table, size_t bytes, size_t skip, const char *what, mm_err *err);

// A backend's communicator over g (NULL for a NULL g). Collective over g. Free with
// mm_coll_free (NULL: nothing).
mm_coll *mm_coll_new(const mm_backend *be, comm_group *g);
void mm_coll_free(const mm_backend *be, mm_coll *c);

// Host views of backend memory: a copy between host and backend memory that does nothing
// where the two are the same buffer (a host-memory backend's mirror is the buffer itself).
void mm_backend_to_host(const mm_backend *be, void *host, const void *buf, size_t bytes);
void mm_backend_from_host(const mm_backend *be, void *buf, const void *host, size_t bytes);

#endif  // MM_BACKEND_H
