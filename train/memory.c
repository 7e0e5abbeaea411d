// memory.c: the per-rank memory estimate of a run (memory.h) and its check against the
// backend's memory before the first large allocation; and the thread count, since the
// node's ranks share its cores as they share its memory.
#include "memory.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

void train_mem_estimate(train_mem *e, const mm_backend *be, const model_mem *mm, int ema, int dp,
                        int zero) {
    const size_t n = mm->n_params, f = sizeof(float);
    // gradsync.c: ZeRO-1 keeps this rank's part of m and v and of the reduced gradient: the
    // last rank's is the largest, n / dp + up to dp - 1 (ZeRO runs at dp 1 too)
    const size_t shard = zero ? n / (size_t)dp + (size_t)dp - 1 : n;
    *e = (train_mem){.params = n * f,
                     .grads = n * f,
                     .optim = 2 * shard * f,
                     .zero = zero ? shard * f : 0,
                     .ema = ema ? 2 * n * f : 0,  // and the swap buffer evaluation uses
                     .acts = mm->act_bytes,
                     .scratch = be->iface->scratch_bound(be, mm)};
    e->total = e->params + e->grads + e->optim + e->zero + e->ema + e->acts + e->scratch;
    // train_net's host mirror of the weights, the optimizer's host staging of m and v (for
    // checkpoints), the EMA's host copy
    if (!be->caps.host_memory) e->host = e->params + e->optim + e->ema;
}

int train_local_ranks(void) {
    const char *s = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!s) s = getenv("MPI_LOCALNRANKS");
    if (!s) s = getenv("SLURM_NTASKS_PER_NODE");
    int n = s ? atoi(s) : 0;
    return n > 0 ? n : 1;
}

int train_set_threads(int n) {
    if (n <= 0) n = omp_get_num_procs() / train_local_ranks();
    if (n < 1) n = 1;
    omp_set_num_threads(n);
    openblas_set_num_threads(n);
    return n;
}

static double gib(size_t b) {
    return (double)b / (1024.0 * 1024.0 * 1024.0);
}

void train_mem_format(const train_mem *e, char *buf, size_t len) {
    // one unit for the whole line: GiB from 10 GiB on, MiB below (a tiny run reads 0.00 GiB)
    const int big = e->total >= ((size_t)10 << 30);
    const double u = big ? 1024.0 * 1024.0 * 1024.0 : 1024.0 * 1024.0;
    snprintf(buf, len,
             "%.1f %s per rank = weights %.1f + grads %.1f + AdamW %.1f + ZeRO buffers %.1f + "
             "EMA %.1f + activations %.1f + backend scratch %.1f",
             e->total / u, big ? "GiB" : "MiB", e->params / u, e->grads / u, e->optim / u,
             e->zero / u, e->ema / u, e->acts / u, e->scratch / u);
}

int train_mem_check(const train_mem *e, const mm_backend *be, int max_B, int can_recompute,
                    mm_err *err) {
    size_t avail = 0, total = 0;
    be->iface->mem_avail(be, &avail, &total);
    const char *where = "of its GPU";
    size_t need = e->total;
    if (be->caps.host_memory) {
        avail /= (size_t)train_local_ranks();  // the node's ranks share the host
        where = "of the host's available memory (shared by this node's ranks)";
    }
    if (avail == 0 || need <= avail) return 0;  // 0: the system did not say
    char line[400];
    train_mem_format(e, line, sizeof(line));
    return mm_fail(err,
                   "memory: this run needs about %s, but this rank has %.2f GiB %s: lower "
                   "data.micro_batch and eval.batch (activations are sized for the larger, %d "
                   "samples), %sraise parallel.tp (splits weights and activations), or set "
                   "parallel.zero: 1 (shards AdamW state over data-parallel ranks)",
                   line, gib(avail), where, max_B,
                   can_recompute ? "set model.recompute: block (keeps one block's input per "
                                   "block), "
                                 : "");
}
