// test_comm_nccl.c: comm_nccl_init on real GPUs: the NCCL communicator of a group has the
// group's ranks in the group's order, and a device allreduce over it (comm_nccl_allreduce,
// sum and average) gives the sums a host allreduce over comm/ gives. Needs the CUDA build and
// a GPU, so it is not part of `make test` (no GPU in CI); one rank per GPU, since NCCL
// refuses two ranks of one communicator on one device. Builds with or without MPI (without:
// one rank, comm/'s identity world).
//   make cuda                 (builds build-cuda/tests/gpu/test_comm_nccl when NCCL is found)
//   mpirun -np <number of GPUs> build-cuda/tests/gpu/test_comm_nccl
// tests/gpu/run.sh runs it with one rank.
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "../../comm/comm.h"
#include "../test.h"

#define N_ELEMS ((size_t)1 << 20)

// Rank wr's element i: integers, so every sum is exact in float.
static float val(int wr, size_t i) { return (float)((wr + 1) * 1000 + (int)(i % 997)); }

// Sums a device buffer over g's NCCL communicator and checks it against the host sum of
// the same data through comm/ (the reference: MPI, checked by tests/test_comm.c).
static void check_group(test_counts *tc, comm_group *g, int world_rank, const char *name) {
    ncclComm_t nc = NULL;
    mm_err err = {{0}};
    int rc = comm_nccl_init(g, &nc, &err);
    TEST_CHECK(tc, rc == 0, "%s: comm_nccl_init: %s", name, err.msg);
    if (rc != 0) return;
    int n = -1, r = -1;
    ncclCommCount(nc, &n);
    ncclCommUserRank(nc, &r);
    TEST_CHECK(tc, n == comm_size(g) && r == comm_rank(g),
               "%s: NCCL has rank %d of %d, comm rank %d of %d", name, r, n, comm_rank(g),
               comm_size(g));
    float *host = mm_malloc(N_ELEMS * sizeof(float)), *want = mm_malloc(N_ELEMS * sizeof(float));
    for (size_t i = 0; i < N_ELEMS; i++) host[i] = want[i] = val(world_rank, i);
    comm_allreduce_sum(g, want, N_ELEMS, COMM_F32);
    float *dev = NULL;
    cudaStream_t s;
    int ok = cudaStreamCreate(&s) == cudaSuccess &&
             cudaMalloc((void **)&dev, N_ELEMS * sizeof(float)) == cudaSuccess &&
             cudaMemcpy(dev, host, N_ELEMS * sizeof(float), cudaMemcpyHostToDevice) ==
                 cudaSuccess &&
             cudaStreamSynchronize(s) == cudaSuccess;
    if (ok) comm_nccl_allreduce(nc, dev, N_ELEMS, 0, s);  // comm.h's device allreduce (sum)
    ok = ok && cudaStreamSynchronize(s) == cudaSuccess &&
         cudaMemcpy(host, dev, N_ELEMS * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess;
    TEST_CHECK(tc, ok, "%s: CUDA/NCCL allreduce failed: %s", name,
               cudaGetErrorString(cudaGetLastError()));
    size_t bad = 0;
    for (size_t i = 0; ok && i < N_ELEMS; i++) bad += host[i] != want[i];
    TEST_CHECK(tc, ok && bad == 0, "%s: %zu of %zu device sums differ from comm/'s", name, bad,
               N_ELEMS);
    // the average of the sums (equal on every rank) is the sum again, to float rounding
    if (ok) comm_nccl_allreduce(nc, dev, N_ELEMS, 1, s);
    ok = ok && cudaStreamSynchronize(s) == cudaSuccess &&
         cudaMemcpy(host, dev, N_ELEMS * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess;
    bad = 0;
    for (size_t i = 0; ok && i < N_ELEMS; i++)
        bad += fabsf(host[i] - want[i]) > 1e-6f * fabsf(want[i]);
    TEST_CHECK(tc, ok && bad == 0, "%s: %zu of %zu device averages differ from the sums", name,
               bad, N_ELEMS);
    cudaFree(dev);
    cudaStreamDestroy(s);
    ncclCommDestroy(nc);
    free(host);
    free(want);
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    int rank = comm_rank(world), size = comm_size(world);
    test_counts tc = {0, 0};
    int ngpu = 0;
    if (cudaGetDeviceCount(&ngpu) != cudaSuccess) ngpu = 0;
    // agree on skipping, so that no rank waits in a collective the others never enter
    int64_t need = ngpu >= 1 ? 0 : 1;
    comm_allreduce_max(world, &need, 1, COMM_I64);
    if (need || size > ngpu) {
        if (rank == 0)
            printf("test_comm_nccl: skipped: %d rank(s), %d GPU(s) here; needs one GPU per rank\n",
                   size, ngpu);
    } else {
        const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");  // one GPU per rank of a node
        int dev = (lr ? atoi(lr) : rank) % ngpu;
        TEST_CHECK(&tc, cudaSetDevice(dev) == cudaSuccess, "cudaSetDevice(%d)", dev);
        check_group(&tc, world, rank, "world");
        for (int tp = 1; tp <= size; tp *= 2) {
            if (size % tp) continue;
            comm_layout l;
            mm_err err = {{0}};
            if (comm_layout_init(&l, world, tp, &err) != 0) comm_abort(world, 1, err.msg);
            char name[64];
            snprintf(name, sizeof(name), "tp=%d tp group", tp);
            check_group(&tc, l.tp, rank, name);
            snprintf(name, sizeof(name), "tp=%d dp group", tp);
            check_group(&tc, l.dp, rank, name);
            comm_layout_free(&l);
        }
    }
    int64_t sum[2] = {tc.passed, tc.failed};
    comm_allreduce_sum(world, sum, 2, COMM_I64);
    comm_finalize(world);
    tc.passed = (int)sum[0], tc.failed = (int)sum[1];
    if (rank != 0) return tc.failed ? 1 : 0;
    return test_finish(&tc);
}
