// bench_comm.c: answers two questions about comm/ under mpirun (tests/bench/run.sh runs it
// with 2 ranks): does the wrapper cost anything next to the MPI under it, and how does the
// DP bucket size change the throughput of the gradient allreduce?
//   1. comm_allreduce_sum against a plain MPI_Allreduce of the same bytes on the same ranks,
//      1 KiB .. 64 MiB (powers of 4), reps interleaved so drift hits both alike.
//   2. a 64 MiB gradient buffer reduced as buckets of 1, 4, 16 and 25 MiB, all started with
//      comm_iallreduce_sum and then waited (the trainer's pattern without the backward pass
//      in between), against one blocking allreduce of the whole buffer.
// Each time is the slowest rank's (a collective ends when its last rank does), best of the
// reps after warmup. Bus bandwidth as in nccl-tests: 2 (n - 1) / n * bytes / time, the
// bytes each rank's link carries in a ring, so numbers compare across rank counts.
// Prints a table and one `BENCH {json}` line per row; exits 0 unless something broke.
// `bench_comm SECONDS` sets a collective timeout first (comm_set_timeout): the polled path
// the trainer takes with run.collective_timeout > 0.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../comm/comm.h"
#include "../../core/cli.h"
#include "../../core/core.h"

#ifdef MM_HAVE_MPI
#include <mpi.h>

typedef enum { OP_COMM, OP_MPI, OP_BUCKETS } bench_op;

// One timed run of op on buf (n floats; bucket elements per bucket for OP_BUCKETS), as the
// slowest rank saw it. reqs holds room for n / bucket + 1 requests.
static double run_once(comm_group *world, bench_op op, float *buf, size_t n, size_t bucket,
                       comm_request **reqs) {
    comm_barrier(world);
    double t0 = mm_now();
    if (op == OP_COMM) {
        comm_allreduce_sum(world, buf, n, COMM_F32);
    } else if (op == OP_MPI) {
        MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    } else {
        size_t nb = 0;
        for (size_t off = 0; off < n; off += bucket)
            reqs[nb++] = comm_iallreduce_sum(world, buf + off, n - off < bucket ? n - off : bucket,
                                             COMM_F32);
        for (size_t b = 0; b < nb; b++) comm_wait(reqs[b]);
    }
    double t = mm_now() - t0;
    comm_allreduce_max(world, &t, 1, COMM_F64);
    return t;
}

static double busbw_gbs(int ranks, size_t bytes, double s) {
    return 2.0 * (ranks - 1) / ranks * (double)bytes / s / 1e9;
}

// Reps for a size: many for small (microseconds, noisy), few for large (tens of ms).
static int reps_for(size_t bytes) {
    size_t r = ((size_t)256 << 20) / bytes;
    return r < 10 ? 10 : r > 200 ? 200 : (int)r;
}

static const mm_cli_cmd bench_comm_cli = {
    .prog = "bench_comm",
    .synopsis = "[SECONDS]",
    .about =
        "  Under mpirun with 2 or more ranks: the comm layer's allreduce against MPI's, and\n"
        "  the gradient allreduce by bucket size. SECONDS: the same with a collective\n"
        "  timeout (the trainer's default path).\n"};

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    int rank = comm_rank(world), ranks = comm_size(world);
    if (mm_cli_wants_help(&bench_comm_cli, argc - 1, argv + 1)) {
        if (rank == 0) mm_cli_usage(&bench_comm_cli, stdout);
        comm_finalize(world);
        return 0;
    }
    if (argc > 1) {
        char *end;
        double t = strtod(argv[1], &end);
        if (argc > 2 || end == argv[1] || *end || !(t > 0)) {
            mm_err err;
            mm_cli_fail(&bench_comm_cli, &err, "'%s': expected one timeout in seconds > 0",
                        argv[argc > 2 ? 2 : 1]);
            if (rank == 0) fprintf(stderr, "error: %s\n", err.msg);
            comm_finalize(world);
            return 2;
        }
        comm_set_timeout(world, t);
    }
    if (ranks < 2) {
        if (rank == 0) printf("bench_comm: needs 2 or more ranks (mpirun -np 2 %s)\n", argv[0]);
        comm_finalize(world);
        return 0;
    }
    const size_t max_bytes = (size_t)64 << 20;
    size_t max_n = max_bytes / sizeof(float);
    float *buf = mm_alloc_aligned(max_bytes);
    // 1.0 doubles at most 2^210 times over the run: finite, never denormal
    for (size_t i = 0; i < max_n; i++) buf[i] = 1.0f;
    comm_request **reqs = mm_calloc(max_n + 1, sizeof(*reqs));
    const int warmup = 3;

    if (rank == 0) {
        printf("allreduce, %d ranks: comm_allreduce_sum vs MPI_Allreduce (float32, in place)\n",
               ranks);
        printf("  time = slowest rank, best of the reps after %d warmup; busbw = 2(n-1)/n * "
               "bytes / time\n",
               warmup);
        printf("%10s %6s %11s %11s %11s %11s %9s\n", "bytes", "reps", "comm us", "comm GB/s",
               "MPI us", "MPI GB/s", "comm/MPI");
    }
    for (size_t bytes = 1024; bytes <= max_bytes; bytes *= 4) {
        size_t n = bytes / sizeof(float);
        int reps = reps_for(bytes);
        double best[2] = {1e30, 1e30};
        for (int r = 0; r < warmup + reps; r++)
            for (int op = 0; op < 2; op++) {
                double t = run_once(world, (bench_op)op, buf, n, 0, reqs);
                if (r >= warmup && t < best[op]) best[op] = t;
            }
        double bw_c = busbw_gbs(ranks, bytes, best[0]), bw_m = busbw_gbs(ranks, bytes, best[1]);
        if (rank == 0) {
            printf("%10zu %6d %11.1f %11.3f %11.1f %11.3f %8.1f%%\n", bytes, reps, best[0] * 1e6,
                   bw_c, best[1] * 1e6, bw_m, 100 * bw_c / bw_m);
            printf("BENCH {\"bench\": \"comm_allreduce\", \"ranks\": %d, \"bytes\": %zu, "
                   "\"reps\": %d, \"comm_us\": %.2f, \"mpi_us\": %.2f, \"comm_busbw_gbs\": %.4f, "
                   "\"mpi_busbw_gbs\": %.4f, \"ratio\": %.4f}\n",
                   ranks, bytes, reps, best[0] * 1e6, best[1] * 1e6, bw_c, bw_m, bw_c / bw_m);
        }
    }

    // bucketed: 0 = one blocking allreduce of the whole buffer, the reference
    const size_t bucket_mib[] = {0, 1, 4, 16, 25};
    const int reps = 10;
    double ref = 0;
    if (rank == 0) {
        printf("\nDP buckets: %zu MiB of float32 gradients, every bucket started with "
               "comm_iallreduce_sum, then all waited\n",
               max_bytes >> 20);
        printf("%12s %8s %11s %11s %14s\n", "bucket", "buckets", "total us", "busbw GB/s",
               "vs 1 blocking");
    }
    for (size_t k = 0; k < sizeof(bucket_mib) / sizeof(bucket_mib[0]); k++) {
        size_t bucket = bucket_mib[k] ? (bucket_mib[k] << 20) / sizeof(float) : max_n;
        bench_op op = bucket_mib[k] ? OP_BUCKETS : OP_COMM;
        size_t nb = (max_n + bucket - 1) / bucket;
        double best = 1e30;
        for (int r = 0; r < warmup + reps; r++) {
            double t = run_once(world, op, buf, max_n, bucket, reqs);
            if (r >= warmup && t < best) best = t;
        }
        if (!bucket_mib[k]) ref = best;
        double bw = busbw_gbs(ranks, max_bytes, best);
        if (rank == 0) {
            char name[32];
            if (bucket_mib[k])
                snprintf(name, sizeof(name), "%zu MiB", bucket_mib[k]);
            else
                snprintf(name, sizeof(name), "blocking");
            printf("%12s %8zu %11.1f %11.3f %13.1f%%\n", name, nb, best * 1e6, bw,
                   100 * ref / best);
            printf("BENCH {\"bench\": \"comm_buckets\", \"ranks\": %d, \"bytes\": %zu, "
                   "\"bucket_bytes\": %zu, \"buckets\": %zu, \"blocking\": %d, \"us\": %.2f, "
                   "\"busbw_gbs\": %.4f, \"vs_blocking\": %.4f}\n",
                   ranks, max_bytes, bucket * sizeof(float), nb, bucket_mib[k] == 0, best * 1e6,
                   bw, ref / best);
        }
    }
    free(reqs);
    free(buf);
    comm_finalize(world);
    return 0;
}
#else
int main(void) {
    printf("bench_comm: built without MPI; nothing to measure\n");
    return 0;
}
#endif
