// comm.h: the only door to other ranks. Model and training code never call MPI (or, later,
// NCCL) directly; they call these, so that the transport can change under them.
//
// A comm_group is a set of ranks (the world, or dp and tp groups from comm_layout_init). Host
// buffers go through MPI; built without MPI, the world is a single rank and every
// collective is the identity, so the same training code runs serially.
#ifndef MM_COMM_H
#define MM_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"

typedef struct comm_group comm_group;  // opaque; owned by whoever created it

typedef enum { COMM_F32, COMM_F64, COMM_I64, COMM_U8 } comm_dtype;

// Initializes the transport (MPI_Init_thread with MPI_THREAD_FUNNELED) and returns the world
// group. Call once per process before anything else; comm_finalize at the end.
comm_group *comm_init(int *argc, char ***argv);
void comm_finalize(comm_group *world);

int comm_rank(const comm_group *g);
int comm_size(const comm_group *g);

// Splits g into groups of ranks with equal color, ordered by key (MPI_Comm_split).
comm_group *comm_split(comm_group *g, int color, int key);
void comm_group_free(comm_group *g);

// The most elements one MPI call on g moves (default and upper bound INT32_MAX, MPI's int
// counts); longer collectives are split into chunks of at most this many. Groups made by
// comm_split inherit it. Tests lower it to exercise the chunked path with small buffers.
void comm_set_max_count(comm_group *g, size_t max_count);

// Seconds any collective on g (blocking, or a non-blocking one in comm_wait) may take before
// this rank ends the job with a message naming the ranks of g that did not arrive (comm.c
// says how it knows). 0 (the default) waits forever. Groups made by comm_split afterwards
// inherit it. Set it alike on every rank.
void comm_set_timeout(comm_group *g, double seconds);

void comm_barrier(comm_group *g);
// In-place sum over the group.
void comm_allreduce_sum(comm_group *g, void *buf, size_t count, comm_dtype t);
// In-place max over the group.
void comm_allreduce_max(comm_group *g, void *buf, size_t count, comm_dtype t);
void comm_bcast(comm_group *g, void *buf, size_t count, comm_dtype t, int root);

// In-place average over the group (sum / size).
void comm_allreduce_avg(comm_group *g, float *buf, size_t count);
// recv (count) = the sum over the group of block `rank` of send (size * count): the block of
// rank r is send[r * count .. (r + 1) * count). send and recv must not overlap.
void comm_reduce_scatter_sum(comm_group *g, const float *send, float *recv, size_t count);
// recv (size * count) = the concatenation of every rank's send (count), in rank order.
// send may be recv + rank * count (in place).
void comm_all_gather(comm_group *g, const void *send, void *recv, size_t count, comm_dtype t);

// Non-blocking collectives: start now, complete in comm_wait. The buffer must stay untouched
// until then. Progress is driven by comm_test / comm_wait calls (no progress thread).
typedef struct comm_request comm_request;  // opaque; freed by comm_wait
comm_request *comm_iallreduce_sum(comm_group *g, void *buf, size_t count, comm_dtype t);
comm_request *comm_ireduce_scatter_sum(comm_group *g, const float *send, float *recv,
                                       size_t count);
comm_request *comm_iall_gather(comm_group *g, const void *send, void *recv, size_t count,
                               comm_dtype t);
// 1 when complete (the request stays valid until comm_wait), 0 otherwise; drives progress.
int comm_test(comm_request *r);
// Blocks until complete and frees r. NULL is a no-op.
void comm_wait(comm_request *r);

// The process groups of the parallel layout: world = dp x tp, tp ranks contiguous
// (rank = dp_index * tp + tp_index), so a tp group sits inside one node.
typedef struct {
    comm_group *world;  // not owned
    comm_group *dp;     // ranks with the same tp_index (owned)
    comm_group *tp;     // ranks with the same dp_index (owned)
    int tp_size, tp_rank, dp_size, dp_rank;
} comm_layout;

// Builds the layout for tp; -1 with err when tp does not divide the world size. Collective.
int comm_layout_init(comm_layout *l, comm_group *world, int tp, mm_err *err);
void comm_layout_free(comm_layout *l);

#ifdef MM_HAVE_NCCL
#include <nccl.h>
// Creates an NCCL communicator over the ranks of g (same ranks, same order): group rank 0
// draws the ncclUniqueId and broadcasts it over g's MPI communicator. Collective over g; the
// caller has selected this rank's GPU (cudaSetDevice) first. *out belongs to the caller
// (ncclCommDestroy). Returns 0, or -1 with err: on every rank when rank 0 could not draw the
// id; otherwise on the ranks whose ncclCommInitRank failed (the others may then block in
// NCCL, so treat -1 as fatal: comm_abort).
int comm_nccl_init(comm_group *g, ncclComm_t *out, mm_err *err);

// Device collectives: an in-place allreduce of count floats at the DEVICE pointer
// buf over the communicator nc, queued on stream (a cudaStream_t; nccl.h brings the CUDA
// runtime types) and returning at once: whatever runs on stream afterwards sees the sums;
// other streams order themselves after it with events. avg 0 sums, 1 averages (ncclAvg).
// Every rank of nc calls it with the same count, in the same order. An NCCL error aborts
// with file:line (a lost peer or device is not recoverable).
void comm_nccl_allreduce(ncclComm_t nc, float *buf, size_t count, int avg, cudaStream_t stream);
// The sum of count bf16 values (bf16 activations' tp sums) in place.
void comm_nccl_allreduce_bf16(ncclComm_t nc, void *buf, size_t count, cudaStream_t stream);
// The same for ZeRO-1: recv (count) = the sum over nc of block `rank` of send (size * count),
// send and recv not overlapping; and the in-place all-gather of buf (size * count) whose
// block `rank` is this rank's.
void comm_nccl_reduce_scatter(ncclComm_t nc, const float *send, float *recv, size_t count,
                              cudaStream_t stream);
void comm_nccl_all_gather(ncclComm_t nc, float *buf, size_t count, int rank, cudaStream_t stream);
#endif

// Ends the whole job from any rank after printing msg (MPI_Abort), so that a failure on one
// rank never leaves the others hanging in a collective.
noreturn void comm_abort(comm_group *g, int code, const char *msg);

#endif  // MM_COMM_H
