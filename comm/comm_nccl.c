// comm_nccl.c: NCCL communicators for the groups comm/ already has, so that device buffers
// (CUDA build) reduce over the same ranks, in the same order, as host buffers over MPI. NCCL
// needs its unique id on every rank before anyone calls ncclCommInitRank; MPI is already up,
// so the group's rank 0 draws the id and broadcasts it over the group (comm.h's groups). The
// device collectives the CUDA backend runs (dp gradient buckets, tp activations, ZeRO-1's
// reduce-scatter and all-gather) are here too. Compiled to nothing unless the build defines
// MM_HAVE_NCCL (make cuda).
#ifdef MM_HAVE_NCCL
#include <string.h>

#include "comm.h"

int comm_nccl_init(comm_group *g, ncclComm_t *out, mm_err *err) {
    *out = NULL;
    // rank 0's status travels with the id, so that when it cannot draw one every rank
    // returns instead of waiting in ncclCommInitRank for a peer that never comes
    struct {
        int64_t status;  // ncclResult_t of ncclGetUniqueId on group rank 0
        ncclUniqueId id;
    } boot;
    memset(&boot, 0, sizeof(boot));
    if (comm_rank(g) == 0) boot.status = (int64_t)ncclGetUniqueId(&boot.id);
    comm_bcast(g, &boot, sizeof(boot), COMM_U8, 0);
    if (boot.status != (int64_t)ncclSuccess)
        return mm_fail(err, "NCCL: ncclGetUniqueId failed on group rank 0: %s",
                       ncclGetErrorString((ncclResult_t)boot.status));
    ncclResult_t rc = ncclCommInitRank(out, comm_size(g), boot.id, comm_rank(g));
    if (rc != ncclSuccess) {
        *out = NULL;
        return mm_fail(err, "NCCL: ncclCommInitRank (rank %d of %d) failed: %s (is a GPU "
                       "selected for this rank and visible?)",
                       comm_rank(g), comm_size(g), ncclGetErrorString(rc));
    }
    return 0;
}

// a failed NCCL call: a lost peer or device is not recoverable
#define NCCL_CHECK(call, what, count)                                                    \
    do {                                                                                 \
        ncclResult_t rc_ = (call);                                                       \
        if (rc_ != ncclSuccess)                                                          \
            mm_fatal(__FILE__, __LINE__, "NCCL: %s of %zu floats failed: %s (%s)", what, \
                     (size_t)(count), ncclGetErrorString(rc_), ncclGetLastError(nc));    \
    } while (0)

void comm_nccl_allreduce(ncclComm_t nc, float *buf, size_t count, int avg, cudaStream_t stream) {
    if (count == 0) return;
    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat32, avg ? ncclAvg : ncclSum, nc, stream),
               "ncclAllReduce", count);
}

void comm_nccl_allreduce_bf16(ncclComm_t nc, void *buf, size_t count, cudaStream_t stream) {
    if (count == 0) return;
    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclBfloat16, ncclSum, nc, stream), "ncclAllReduce",
               count);
}

void comm_nccl_reduce_scatter(ncclComm_t nc, const float *send, float *recv, size_t count,
                              cudaStream_t stream) {
    if (count == 0) return;
    NCCL_CHECK(ncclReduceScatter(send, recv, count, ncclFloat32, ncclSum, nc, stream),
               "ncclReduceScatter", count);
}

void comm_nccl_all_gather(ncclComm_t nc, float *buf, size_t count, int rank, cudaStream_t stream) {
    if (count == 0) return;
    NCCL_CHECK(ncclAllGather(buf + (size_t)rank * count, buf, count, ncclFloat32, nc, stream),
               "ncclAllGather", count);
}
#endif  // MM_HAVE_NCCL
