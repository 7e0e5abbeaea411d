// cuda.h: the CUDA backend's public header: a device context (GPU, streams, cuBLAS handle,
// scratch memory, matmul precision) with init/free, device memory helpers, the two ops tables
// (model_ops_cuda, dit_ops_cuda) and the kernels the trainer needs on the device (AdamW, EMA,
// gradient sum of squares, scale). Compiled only by `make cuda`; nothing in the CPU build
// includes it. Implementation: cuda.cu (context, optimizer kernels), ops_cuda.cu,
// ops_glue_cuda.cu and ops_dit_cuda.cu (ops), backend_cuda.cu (the backend object),
// cuda_internal.h (what the .cu files share).
//
// How the ops reach the context: every op takes the backend object first (backend.h); the
// CUDA backend's object carries this cuda_ctx as be->ctx (model/cuda/backend_cuda.cu), so an
// op reads its stream, cuBLAS handle and scratch from the backend it was called with. There
// is no global or thread-local context. Every op runs on the context's compute stream, in
// order, so the scratch memory and the cuBLAS handle are never used by two ops at once; none
// of them synchronizes the host.
//
// Pointers given to the ops and to the cuda_ kernels are DEVICE pointers (cuda_alloc), with
// the shapes of the CPU ops (row-major, accumulate (+=) semantics of backward ops). Results
// are deterministic: same inputs, same outputs, run after run (no float atomics; every
// cross-row reduction sums fixed chunks in a fixed order; cuBLAS is deterministic on one
// stream). They match the CPU backend to rounding (tests/gpu/test_ops_cuda.c: relative error
// <= 1e-5 in fp32); AdamW and EMA follow train/optim.c's float arithmetic step by step
// (compiled without FMA contraction, like the CPU's -std=c11).
//
// Precision (cuda_ctx.precision): CUDA_FP32 runs every matmul in cuBLAS SGEMM (no TF32).
// CUDA_BF16 converts the two inputs of each matmul (activations, weights, gradients) to
// bf16 copies in scratch memory and multiplies with fp32 accumulation and fp32 outputs
// (cublasGemmEx, CUBLAS_COMPUTE_32F); master weights, gradients, optimizer state, attention
// and every other op stay fp32.
//
// bf16 activations (cuda_ctx.act16; bf16 end to end, issue 15): the activations and their
// gradients are bf16 in memory, so a matmul reads its operands in place and writes bf16
// (cuBLASLt with bf16 bias and GELU input, from the parameters' bf16 copy), and every other
// kernel loads bf16, computes in fp32 and rounds its outputs once (cuda_internal.h CU_ACT);
// a path without bf16 kernels (attention under dropout, say) runs on fp32 copies.
// Parameters, their gradients, optimizer state, LayerNorm statistics and losses stay fp32.
// tests/gpu/test_act16_cuda.c checks the ops that take it: every op of both model kinds,
// which run with it in precision bf16 (mm_backend_create's act16).
//
// Failure: every CUDA/cuBLAS call is checked; a failure aborts with file:line, the call, the
// error string and a hint (a bug or a broken device is not recoverable). Bad configuration
// (no GPU for this rank, a bad precision name, a bad local-rank variable) returns -1 with a
// one-line mm_err instead. A kernel that finds bad data (a cross-entropy target outside
// [-1, V)) records it in the context; cuda_ctx_sync aborts naming it.
#ifndef MM_CUDA_H
#define MM_CUDA_H

#include <stddef.h>
#include <stdint.h>

// MM_CUDA_EMU: the CPU emulation build of these sources (tests/gpu/cuda_emu.h, included
// first by the compiler command line, provides the CUDA types); otherwise the real toolkit.
#ifndef MM_CUDA_EMU
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>
#ifdef __cplusplus
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#ifdef MM_HAVE_NCCL
#include <nccl.h>  // before the C-linkage block below: it pulls in C++ headers
#endif
#endif
#endif

#ifdef __cplusplus
// The project headers are C11: C linkage, and C++'s spelling of C11's noreturn (core.h).
#define noreturn __attribute__((noreturn))
extern "C" {
#endif

#include "../backend.h"
#include "../diffusion.h"

#ifdef MM_F64
#error "the CUDA backend is float only; MM_F64 is for the CPU gradient checks"
#endif

typedef enum { CUDA_FP32 = 0, CUDA_BF16 = 1 } cuda_precision;

// Parses "fp32" or "bf16". Returns 0, or -1 with err naming the value.
int cuda_precision_parse(const char *s, cuda_precision *out, mm_err *err);
const char *cuda_precision_name(cuda_precision p);

// cuBLASLt's workspace per context: what NVIDIA recommends for Hopper
#define CUDA_LT_WORKSPACE ((size_t)32 << 20)
// The cuBLASLt epilogues the ops use (cuda_internal.h cu_gemm_lt, cu_gemm_dgelu_lt)
typedef enum { CU_LT_BIAS, CU_LT_GELU_BIAS, CU_LT_DGELU, CU_LT_KINDS } cu_lt_kind;

// One process's GPU and what its ops run on. Owned by whoever calls cuda_ctx_init.
typedef struct cuda_ctx {
    int device;                // CUDA device index (= the local rank)
    int world_rank;            // for messages
    cuda_precision precision;  // matmul input precision (see the file comment); read by
                               // each matmul call, so it may change between calls
    cudaStream_t stream;       // every op and kernel of this context, in order
    cudaStream_t comm_stream;  // NCCL collectives: their own stream, so they overlap compute
    cublasHandle_t blas;       // bound to stream
    cublasLtHandle_t lt;       // cuBLASLt (matmuls with a fused bias), on stream per call
    void *lt_ws;               // (lt_ws_bytes) its workspace, allocated on first use
    size_t lt_ws_bytes;
    size_t lt_matmuls[CU_LT_KINDS];  // calls that took it, by epilogue (so a test can see
                                     // each path run)
    void *scratch;             // (scratch_bytes) device work memory of the ops, grown on demand
    size_t scratch_bytes;
    void *act_scratch;         // (act_scratch_bytes) act16: fp32 copies of bf16 activations for
    size_t act_scratch_bytes;  // the paths without bf16 kernels (cuda_internal.h)
    int *flag;                 // (4) device: first bad input a kernel saw (0 = none), op, a, b
    char device_name[256];
    int sm_count, cc_major, cc_minor;
    size_t mem_bytes;          // device memory
    size_t attn_core_bytes;    // self-attention materialises its (B, NH, T, T) probabilities
                               // in scratch (cuBLAS) up to this size, flash beyond; init: 1 GiB
    // precision bf16: one model's parameters in bf16 for the matmuls' weight operands (fp32
    // stays the master copy). The ops table's params_ready makes it before a forward; any
    // write of the backend into those parameters (upload, copy, zero, copy_rows, AdamW,
    // all-gather) invalidates it; a matmul whose weight is not in a valid copy converts its own.
    const float *p16_src;      // the parameters it copies (not owned), p16_n floats
    size_t p16_n;
    void *p16;                 // (p16_cap) bf16, owned
    size_t p16_cap;
    int p16_valid;
    size_t matmul_chunk_bytes; // a bf16 matmul backward converts the rows of dout and inp in
                               // passes of at most this many bytes of bf16 (bounds its
                               // scratch); init 256 MiB
    int act16;                 // 1: the ops' activations and activation gradients are bf16
                               // in memory (see the file comment); 0: fp32 (init)
    int flash_tc;              // 1: in precision bf16, self-attention without dropout runs on
                               // the tensor-core flash kernels where the head width allows,
                               // whatever attn_core_bytes says; 0: the paths above (init 1)
} cuda_ctx;

// This process's rank within its node, from the launcher's environment: Open MPI
// (OMPI_COMM_WORLD_LOCAL_RANK), MPICH/Intel MPI (MPI_LOCALRANKID), Slurm (SLURM_LOCALID),
// else 0. *var names the variable used (a static string, "" for the fallback). -1 with err
// when a variable is set but not a non-negative integer.
int cuda_local_rank(int *out, const char **var, mm_err *err);

// Selects the GPU of this rank (device = local rank: one rank per GPU; CUDA_VISIBLE_DEVICES
// may narrow the list) as the process's current device, creates the streams, the cuBLAS
// handle and scratch. Returns 0, or -1 with err naming the rank, the host and
// the number of visible devices when this rank cannot have its GPU.
int cuda_ctx_init(cuda_ctx *c, int world_rank, cuda_precision precision, mm_err *err);
// Waits for the streams and frees everything.
void cuda_ctx_free(cuda_ctx *c);
// Waits for c's compute stream; aborts when a kernel recorded bad input (see the flag).
void cuda_ctx_sync(cuda_ctx *c);

// Device memory. cuda_alloc returns zeroed device memory (never NULL; aborts when out of
// memory with the size and a hint); the caller owns it and frees it with cuda_free (NULL is
// a no-op). The copies run on c's compute stream, after the work queued there, and return
// when the copy is done (the host buffer may be reused at once).
void *cuda_alloc(cuda_ctx *c, size_t bytes);
void cuda_free(void *p);
void cuda_upload(cuda_ctx *c, void *dev, const void *host, size_t bytes);
void cuda_download(cuda_ctx *c, void *host, const void *dev, size_t bytes);
void cuda_copy(cuda_ctx *c, void *dst, const void *src, size_t bytes);  // device to device
void cuda_zero(cuda_ctx *c, void *dev, size_t bytes);                  // async on the stream
// Marks the context's bf16 parameter copy stale when [dst, dst + bytes) overlaps what it
// copies (every write of the backend into device memory calls it).
void cuda_params16_touch(cuda_ctx *c, const void *dst, size_t bytes);

// Input staging: host batches copied asynchronously so the copy overlaps compute.
// Two slots, used alternately; each has a pinned host buffer and a device buffer of `bytes`.
// cuda_stage_put copies host regions into the next slot's pinned buffer (after that slot's
// previous copy has finished), starts ONE pinned -> device copy on the copy stream once the
// compute stream is done with that slot's device buffer, and makes the compute stream wait
// for the copy: the host returns at once, and the copy runs while the compute stream still
// works on the previous batch. cuda_stage_done marks the slot's device buffer free again
// (after the work that reads it was queued). Owned by the caller; free with cuda_stage_free.
typedef struct {
    size_t bytes;              // per slot
    cudaStream_t copy;         // the copy stream
    void *pinned[2];           // (bytes) page-locked host buffers
    void *dev[2];              // (bytes) device buffers
    cudaEvent_t copied[2];     // recorded on the copy stream after a slot's copy
    cudaEvent_t used[2];       // recorded on the compute stream after the slot's last reader
    int next;                  // the slot the next put fills
} cuda_stage;

void cuda_stage_init(cuda_stage *s, cuda_ctx *c, size_t bytes);
void cuda_stage_free(cuda_stage *s);
// Copies the n regions src[i] (len[i] bytes, packed at 256-byte aligned offsets) and returns
// the slot's device buffer; dst[i] = where region i lands in it. Aborts when they exceed bytes.
void *cuda_stage_put(cuda_stage *s, cuda_ctx *c, int n, const void *const *src,
                     const size_t *len, void **dst);
// After queueing the work that reads the last put's device buffer.
void cuda_stage_done(cuda_stage *s, cuda_ctx *c);

// The CUDA backend (backend_cuda.cu): a context for this rank's GPU (cuda_ctx_init's
// errors) behind the backend object, with model_ops_cuda and its iface. Free it with
// mm_backend_free.
int cuda_backend_create(const mm_backend **out, const char *precision, int act16, int world_rank,
                        mm_err *err);
// The generic ops table (each op runs on the cuda_ctx of the backend it is given).
extern const model_ops model_ops_cuda;

// ---------------------------------------------------------------------------------------
// The optimizer side of a step on the device (train/optim.c is the reference).

// One tensor's part of the optimizer range (backend.h).
typedef mm_opt_seg cuda_seg;

// The segments of a range [lo, hi) of the parameter buffer cut into chunks of at most
// CUDA_CHUNK elements, each inside one segment: the unit of work of the AdamW and sum-of-
// squares kernels, so that a sum's order depends only on the layout. Device copies owned.
enum { CUDA_CHUNK = 16384 };
typedef struct {
    size_t lo, hi;   // the range; grads, m and v are indexed from lo
    int n_seg;
    cuda_seg *seg;   // (n_seg) host copy, owned
    int n_chunk;
    void *dchunk;    // (n_chunk) device chunk table, owned
    double *dpart;   // (n_chunk + 2) device partial sums, owned
} cuda_plan;

// segs must be sorted by offset, disjoint and inside [lo, hi) (aborts otherwise).
void cuda_plan_init(cuda_plan *p, cuda_ctx *c, const cuda_seg *segs, int n_seg, size_t lo,
                    size_t hi);
void cuda_plan_free(cuda_plan *p);

// AdamW of optim_adamw: params[lo, hi) (indexed absolutely) from grads, m, v (indexed from
// lo); step is 1-based; grad_scale multiplies every gradient first. Asynchronous.
void cuda_adamw(cuda_ctx *c, const cuda_plan *p, float *params, const float *grads, float *m,
                float *v, int64_t step, double lr, double beta1, double beta2, double eps,
                double weight_decay, double grad_scale);
// Sums of squares of grads (indexed from lo) over the segments, in double, split into
// sharded and replicated tensors. Deterministic for a given plan; waits for the result.
void cuda_sumsq(cuda_ctx *c, const cuda_plan *p, const float *grads, double *sharded,
                double *replicated);
// ema (n) = decay * ema + (1 - decay) * params, elementwise in float. Asynchronous.
void cuda_ema(cuda_ctx *c, float *ema, const float *params, size_t n, float decay);
// x (n) *= s. Asynchronous.
void cuda_scale(cuda_ctx *c, float *x, size_t n, float s);

#ifdef __cplusplus
}
#undef noreturn
#endif

#endif  // MM_CUDA_H
