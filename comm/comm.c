// comm.c: collectives over MPI for host buffers; a single-rank identity when built without
// MPI. Errors inside MPI abort the job (MPI_ERRORS_ARE_FATAL): a broken transport is not
// something a training step can recover from.
//
// MPI counts are ints, so every collective goes through a chunk loop that hands MPI at most
// g->max_count elements per call; below that (every realistic call) it is exactly one MPI
// call, so the wrappers cost nothing next to plain MPI. Chunks of an all-gather or a
// reduce-scatter are not contiguous in the rank-blocked buffer: the all-gather describes a
// chunk of every block with one resized datatype; the reduce-scatter cannot (MPI defines its
// predefined ops on predefined datatypes only), so it reduces each chunk of each block to
// the rank that owns it (MPI_Reduce per root): slower, but taken only past 2^31 elements.
//
// Only the main thread calls MPI (MPI_THREAD_FUNNELED): non-blocking collectives progress
// inside comm_test / comm_wait, never in the background.
//
// Timeouts (comm_set_timeout, the trainer's run.collective_timeout). A rank that stalls (a
// hung file system, a GPU fault, a stopped process) would otherwise keep every other rank
// in a blocking collective until the allocation ends. With a timeout set, a blocking
// collective first waits for a non-blocking barrier (every rank has arrived), and a
// non-blocking one is completed in comm_wait, both by polling MPI_Testall against a deadline
// (spinning for the first 100 ms, as MPI_Wait does, then sleeping 50 us between polls so
// that a long wait, e.g. for a checkpoint write, does not burn a core). When the deadline passes, the rank finds out who is
// missing over a side channel: a duplicate of MPI_COMM_WORLD on which every rank that is
// itself waiting inside a collective answers "who is there?" queries (it polls for them
// while it waits). The timed-out rank asks the other ranks of the group, waits
// COMM_GRACE_S for answers, names those that did not answer (stalled outside any
// collective, or dead) and those that answered (with the collective they wait in, which
// tells a mismatched-collective bug apart), and ends the job with comm_abort. No rank
// needs to make progress for the diagnosis except those that answer. The cost on the fast
// path is the barrier of a blocking collective (`bench_comm 900` against `bench_comm`). A
// dead rank is normally reported by mpirun itself, which ends the job as soon as a rank
// exits without MPI_Finalize.
#include "comm.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef MM_HAVE_MPI
#include <mpi.h>
#endif

#define COMM_GRACE_S 2.0  // how long a timed-out rank waits for answers to "who is there?"
#define COMM_WHAT_LEN 60

#ifdef MM_HAVE_MPI
enum { TAG_QUERY = 1, TAG_ANSWER = 2 };

// What a waiting rank answers: its world rank and the collective it waits in.
typedef struct {
    int32_t world_rank;
    char what[COMM_WHAT_LEN];
} diag_answer;

// The side channel of the timeout diagnosis; one per process, owned by the world group.
typedef struct {
    MPI_Comm comm;      // duplicate of MPI_COMM_WORLD, errors return (a dead peer is normal)
    diag_answer me;     // this rank's answer; me.what is "" while not waiting
    int32_t query;      // payload of the queries this rank sends (its world rank)
} comm_diag;
#endif

struct comm_group {
#ifdef MM_HAVE_MPI
    MPI_Comm comm;
    int owned;  // 1 when comm_group_free must MPI_Comm_free it
    comm_diag *diag;  // the world's (owned by the world group only)
    int *world_of;    // (size) world rank of each group rank, owned; NULL for the world
#endif
    int rank, size;
    size_t max_count;  // elements per MPI call, 1 .. INT32_MAX
    double timeout;    // seconds a collective may take, 0 = no limit
    long long seq;     // collectives issued on this group (for messages)
};

struct comm_request {
#ifdef MM_HAVE_MPI
    MPI_Request *reqs;  // n requests: &one, or malloc'd (owned) when the call was chunked
    MPI_Request one;
    comm_group *g;      // not owned: the group whose timeout applies
    const char *op;     // for messages
#endif
    int n;  // 0 when the collective completed at once (a single rank)
};

static size_t dtype_size(comm_dtype t) {
    switch (t) {
    case COMM_F32: return 4;
    case COMM_F64: return 8;
    case COMM_I64: return 8;
    case COMM_U8: return 1;
    }
    MM_CHECK(0, "unknown comm_dtype %d", (int)t);
}

// A request of n MPI requests, all MPI_REQUEST_NULL until started. Freed by comm_wait.
static comm_request *request_new(size_t n) {
    MM_CHECK(n <= INT_MAX, "a collective split into %zu MPI calls: raise the chunk size", n);
    comm_request *r = mm_calloc(1, sizeof(*r));
    r->n = (int)n;
#ifdef MM_HAVE_MPI
    r->reqs = n <= 1 ? &r->one : mm_malloc(n * sizeof(MPI_Request));
    for (size_t i = 0; i < n; i++) r->reqs[i] = MPI_REQUEST_NULL;
#endif
    return r;
}

#ifdef MM_HAVE_MPI
// Chunks of at most max elements that cover count (0 for an empty buffer).
static size_t n_chunks(size_t count, size_t max) { return (count + max - 1) / max; }

// Elements in the chunk that starts at off.
static int chunk_len(size_t count, size_t off, size_t max) {
    return (int)(count - off < max ? count - off : max);
}

// Answers every pending "who is there?" query with this rank's state.
static void diag_answer_queries(comm_diag *d) {
    for (;;) {
        int flag = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, TAG_QUERY, d->comm, &flag, &st) != MPI_SUCCESS || !flag)
            return;
        int32_t who;
        if (MPI_Recv(&who, 1, MPI_INT32_T, st.MPI_SOURCE, TAG_QUERY, d->comm,
                     MPI_STATUS_IGNORE) != MPI_SUCCESS)
            return;
        MPI_Request r;  // small: sent eagerly; freed at once (d->me outlives it)
        if (MPI_Isend(&d->me, sizeof(d->me), MPI_BYTE, st.MPI_SOURCE, TAG_ANSWER, d->comm, &r) ==
            MPI_SUCCESS)
            MPI_Request_free(&r);
    }
}

static int world_rank_of(const comm_group *g, int r) { return g->world_of ? g->world_of[r] : r; }

static void sleep_us(long us) {
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

// The deadline of a collective passed: asks the group's other ranks who is waiting too,
// names the ones that are not, and ends the job.
static noreturn void diag_timeout(comm_group *g, const char *op, double waited) {
    comm_diag *d = g->diag;
    int n = g->size;
    char *answered = mm_calloc((size_t)n, 1);
    diag_answer *ans = mm_calloc((size_t)n, sizeof(diag_answer));
    d->query = d->me.world_rank;
    for (int r = 0; r < n; r++) {
        if (r == g->rank) continue;
        MPI_Request q;
        if (MPI_Isend(&d->query, 1, MPI_INT32_T, world_rank_of(g, r), TAG_QUERY, d->comm, &q) ==
            MPI_SUCCESS)
            MPI_Request_free(&q);
    }
    int missing = n - 1;
    for (double until = mm_now() + COMM_GRACE_S; missing > 0 && mm_now() < until;) {
        diag_answer_queries(d);  // another timed-out rank may be asking this one
        int flag = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, TAG_ANSWER, d->comm, &flag, &st) == MPI_SUCCESS && flag) {
            diag_answer a;
            if (MPI_Recv(&a, sizeof(a), MPI_BYTE, st.MPI_SOURCE, TAG_ANSWER, d->comm,
                         MPI_STATUS_IGNORE) != MPI_SUCCESS)
                continue;
            a.what[COMM_WHAT_LEN - 1] = '\0';
            for (int r = 0; r < n; r++)
                if (r != g->rank && world_rank_of(g, r) == st.MPI_SOURCE && !answered[r]) {
                    answered[r] = 1;
                    ans[r] = a;
                    missing--;
                }
        } else {
            sleep_us(1000);
        }
    }
    char msg[MM_ERR_LEN];
    size_t k = (size_t)snprintf(msg, sizeof(msg),
                                "error: rank %d: %s did not complete within the collective "
                                "timeout (%g s, run.collective_timeout; waited %.1f s): ",
                                d->me.world_rank, op, g->timeout, waited);
    if (missing > 0) {
        k += (size_t)snprintf(msg + k, k < sizeof(msg) ? sizeof(msg) - k : 0, "rank%s",
                              missing > 1 ? "s" : "");
        for (int r = 0, i = 0; r < n; r++)
            if (r != g->rank && !answered[r])
                k += (size_t)snprintf(msg + k, k < sizeof(msg) ? sizeof(msg) - k : 0, "%s %d",
                                      i++ ? "," : "", world_rank_of(g, r));
        k += (size_t)snprintf(msg + k, k < sizeof(msg) ? sizeof(msg) - k : 0,
                              " did not arrive (stalled outside communication, or dead)");
    } else {
        k += (size_t)snprintf(msg + k, k < sizeof(msg) ? sizeof(msg) - k : 0,
                              "every rank of the group is waiting (mismatched collectives?)");
    }
    for (int r = 0; r < n; r++)
        if (answered[r] && ans[r].what[0])
            k += (size_t)snprintf(msg + k, k < sizeof(msg) ? sizeof(msg) - k : 0,
                                  "; rank %d waits in %s", world_rank_of(g, r), ans[r].what);
    free(answered);
    free(ans);
    comm_abort(g, 1, msg);
}

// Completes n requests of a collective on g: MPI_Waitall without a timeout; otherwise polls
// against the deadline, answering diagnosis queries while it waits.
static void wait_reqs(comm_group *g, int n, MPI_Request *reqs, const char *op) {
    if (n == 0) return;
    if (g->timeout <= 0) {
        MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE);
        return;
    }
    int done = 0;
    MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
    if (done) return;
    comm_diag *d = g->diag;
    snprintf(d->me.what, sizeof(d->me.what), "%.24s #%lld of a group of %d", op, g->seq, g->size);
    double t0 = mm_now();
    for (;;) {
        MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
        if (done) break;
        double waited = mm_now() - t0;
        // spin like MPI_Wait: a non-blocking collective advances one round per test, so
        // sleeping between tests would slow every multi-round algorithm down
        if (waited < 0.1) continue;
        diag_answer_queries(d);
        if (waited > g->timeout) diag_timeout(g, op, waited);
        sleep_us(50);
    }
    d->me.what[0] = '\0';
}

static MPI_Datatype mpi_type(comm_dtype t) {
    switch (t) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_I64: return MPI_INT64_T;
    case COMM_U8: return MPI_UINT8_T;
    }
    MM_CHECK(0, "unknown comm_dtype %d", (int)t);
}

// In-place allreduce of buf in chunks. reqs NULL: blocking; otherwise chunk i is started
// into reqs[i] (n_chunks of them).
static void allreduce_chunks(comm_group *g, void *buf, size_t count, comm_dtype t, MPI_Op op,
                             MPI_Request *reqs) {
    size_t es = dtype_size(t), max = g->max_count;
    char *p = buf;
    for (size_t off = 0, i = 0; off < count; off += max, i++) {
        int c = chunk_len(count, off, max);
        if (reqs)
            MPI_Iallreduce(MPI_IN_PLACE, p + off * es, c, mpi_type(t), op, g->comm, &reqs[i]);
        else
            MPI_Allreduce(MPI_IN_PLACE, p + off * es, c, mpi_type(t), op, g->comm);
    }
}

// Requests reduce_scatter_chunks starts for count.
static size_t reduce_scatter_nreq(const comm_group *g, size_t count) {
    if (count <= g->max_count) return 1;
    return n_chunks(count, g->max_count) * (size_t)g->size;
}

static void reduce_scatter_chunks(comm_group *g, const float *send, float *recv, size_t count,
                                  MPI_Request *reqs) {
    size_t max = g->max_count;
    if (count <= max) {
        if (reqs)
            MPI_Ireduce_scatter_block(send, recv, (int)count, MPI_FLOAT, MPI_SUM, g->comm, reqs);
        else
            MPI_Reduce_scatter_block(send, recv, (int)count, MPI_FLOAT, MPI_SUM, g->comm);
        return;
    }
    size_t i = 0;
    for (size_t off = 0; off < count; off += max) {
        int c = chunk_len(count, off, max);
        for (int root = 0; root < g->size; root++) {
            const float *s = send + (size_t)root * count + off;
            float *r = root == g->rank ? recv + off : NULL;  // significant at the root only
            if (reqs)
                MPI_Ireduce(s, r, c, MPI_FLOAT, MPI_SUM, root, g->comm, &reqs[i++]);
            else
                MPI_Reduce(s, r, c, MPI_FLOAT, MPI_SUM, root, g->comm);
        }
    }
}

static void all_gather_chunks(comm_group *g, const void *send, void *recv, size_t count,
                              comm_dtype t, MPI_Request *reqs) {
    size_t es = dtype_size(t), max = g->max_count;
    MPI_Datatype dt = mpi_type(t);
    int in_place = (const char *)send == (char *)recv + (size_t)g->rank * count * es;
    if (count <= max) {
        const void *s = in_place ? MPI_IN_PLACE : send;
        if (reqs)
            MPI_Iallgather(s, (int)count, dt, recv, (int)count, dt, g->comm, reqs);
        else
            MPI_Allgather(s, (int)count, dt, recv, (int)count, dt, g->comm);
        return;
    }
    for (size_t off = 0, i = 0; off < count; off += max, i++) {
        int c = chunk_len(count, off, max);
        // one element of blk = this chunk of one rank's block; the next element (the next
        // rank's chunk) starts one whole block later
        MPI_Datatype tmp, blk;
        MPI_Type_contiguous(c, dt, &tmp);
        MPI_Type_create_resized(tmp, 0, (MPI_Aint)(count * es), &blk);
        MPI_Type_commit(&blk);
        MPI_Type_free(&tmp);
        // in place, MPI reads this rank's chunk from recv at rank * extent(blk) + off
        const void *s = in_place ? MPI_IN_PLACE : (const char *)send + off * es;
        char *r = (char *)recv + off * es;
        if (reqs)
            MPI_Iallgather(s, c, dt, r, 1, blk, g->comm, &reqs[i]);
        else
            MPI_Allgather(s, c, dt, r, 1, blk, g->comm);
        MPI_Type_free(&blk);  // a started operation keeps its own reference
    }
}

// With a timeout, a blocking collective first waits (polled, with the deadline) for a
// non-blocking barrier: once it completes every rank has arrived, and the plain blocking MPI
// call follows. Issuing the collective itself non-blocking would time its data movement too,
// but Open MPI's non-blocking algorithms (libnbc) reach only 40-50% of the blocking ones'
// bandwidth at 1-4 MiB (bench_comm), which would slow tensor-parallel activations; the
// barrier costs a few microseconds. A rank that stalls inside the data movement itself is
// not caught; one that dies there is ended by mpirun.
static void arrival(comm_group *g, const char *op) {
    MPI_Request r = MPI_REQUEST_NULL;
    MPI_Ibarrier(g->comm, &r);
    wait_reqs(g, 1, &r, op);
}

enum { OP_ALLREDUCE, OP_REDUCE_SCATTER, OP_ALL_GATHER };

static void blocking(comm_group *g, int kind, const void *send, void *buf, size_t count,
                     comm_dtype t, MPI_Op op) {
    g->seq++;
    if (g->timeout > 0)
        arrival(g, kind == OP_REDUCE_SCATTER ? "reduce-scatter"
                   : kind == OP_ALL_GATHER   ? "all-gather"
                   : op == MPI_SUM           ? "allreduce-sum"
                                             : "allreduce-max");
    if (kind == OP_ALLREDUCE) allreduce_chunks(g, buf, count, t, op, NULL);
    else if (kind == OP_REDUCE_SCATTER) reduce_scatter_chunks(g, send, buf, count, NULL);
    else all_gather_chunks(g, send, buf, count, t, NULL);
}
#endif

comm_group *comm_init(int *argc, char ***argv) {
    comm_group *g = mm_calloc(1, sizeof(*g));
    g->max_count = INT32_MAX;
#ifdef MM_HAVE_MPI
    int provided = 0;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    MM_CHECK(provided >= MPI_THREAD_FUNNELED, "MPI lacks MPI_THREAD_FUNNELED support");
    g->comm = MPI_COMM_WORLD;
    MPI_Comm_rank(g->comm, &g->rank);
    MPI_Comm_size(g->comm, &g->size);
    g->diag = mm_calloc(1, sizeof(comm_diag));
    MPI_Comm_dup(MPI_COMM_WORLD, &g->diag->comm);
    MPI_Comm_set_errhandler(g->diag->comm, MPI_ERRORS_RETURN);
    g->diag->me.world_rank = g->rank;
#else
    (void)argc;
    (void)argv;
    g->rank = 0;
    g->size = 1;
#endif
    return g;
}

void comm_finalize(comm_group *world) {
#ifdef MM_HAVE_MPI
    MPI_Comm_free(&world->diag->comm);
    free(world->diag);
    MPI_Finalize();
#endif
    free(world);
}

int comm_rank(const comm_group *g) { return g->rank; }
int comm_size(const comm_group *g) { return g->size; }

comm_group *comm_split(comm_group *g, int color, int key) {
    comm_group *s = mm_calloc(1, sizeof(*s));
    s->max_count = g->max_count;
    s->timeout = g->timeout;
#ifdef MM_HAVE_MPI
    MPI_Comm_split(g->comm, color, key, &s->comm);
    s->owned = 1;
    s->diag = g->diag;
    MPI_Comm_rank(s->comm, &s->rank);
    MPI_Comm_size(s->comm, &s->size);
    // world ranks of the members, for naming the ones a timed-out collective misses
    MPI_Group mine, world;
    MPI_Comm_group(s->comm, &mine);
    MPI_Comm_group(MPI_COMM_WORLD, &world);
    int *idx = mm_malloc(sizeof(int) * (size_t)s->size);
    for (int i = 0; i < s->size; i++) idx[i] = i;
    s->world_of = mm_malloc(sizeof(int) * (size_t)s->size);
    MPI_Group_translate_ranks(mine, s->size, idx, world, s->world_of);
    free(idx);
    MPI_Group_free(&mine);
    MPI_Group_free(&world);
#else
    (void)color;
    (void)key;
    s->rank = 0;
    s->size = 1;
#endif
    return s;
}

void comm_group_free(comm_group *g) {
    if (!g) return;
#ifdef MM_HAVE_MPI
    if (g->owned) MPI_Comm_free(&g->comm);
    free(g->world_of);
#endif
    free(g);
}

void comm_set_max_count(comm_group *g, size_t max_count) {
    MM_CHECK(max_count >= 1 && max_count <= INT32_MAX,
             "max_count %zu: MPI counts are ints, use 1 .. INT32_MAX", max_count);
    g->max_count = max_count;
}

void comm_set_timeout(comm_group *g, double seconds) {
    MM_CHECK(seconds >= 0, "collective timeout %g s: must be >= 0", seconds);
    g->timeout = seconds;
}

void comm_barrier(comm_group *g) {
#ifdef MM_HAVE_MPI
    g->seq++;
    if (g->timeout > 0) arrival(g, "barrier");
    else MPI_Barrier(g->comm);
#else
    (void)g;
#endif
}

void comm_allreduce_sum(comm_group *g, void *buf, size_t count, comm_dtype t) {
#ifdef MM_HAVE_MPI
    if (g->size > 1) blocking(g, OP_ALLREDUCE, NULL, buf, count, t, MPI_SUM);
#else
    (void)g;
    (void)buf;
    (void)count;
    (void)t;
#endif
}

void comm_allreduce_max(comm_group *g, void *buf, size_t count, comm_dtype t) {
#ifdef MM_HAVE_MPI
    if (g->size > 1) blocking(g, OP_ALLREDUCE, NULL, buf, count, t, MPI_MAX);
#else
    (void)g;
    (void)buf;
    (void)count;
    (void)t;
#endif
}

void comm_bcast(comm_group *g, void *buf, size_t count, comm_dtype t, int root) {
#ifdef MM_HAVE_MPI
    if (g->size == 1) return;
    size_t es = dtype_size(t), max = g->max_count;
    g->seq++;
    if (g->timeout > 0) arrival(g, "broadcast");
    for (size_t off = 0; off < count; off += max)
        MPI_Bcast((char *)buf + off * es, chunk_len(count, off, max), mpi_type(t), root, g->comm);
#else
    (void)g;
    (void)buf;
    (void)count;
    (void)t;
    (void)root;
#endif
}

void comm_allreduce_avg(comm_group *g, float *buf, size_t count) {
    if (g->size == 1) return;
    comm_allreduce_sum(g, buf, count, COMM_F32);
    // divide rather than multiply by 1/size: the average of equal values stays exact
    float n = (float)g->size;
    for (size_t i = 0; i < count; i++) buf[i] /= n;
}

void comm_reduce_scatter_sum(comm_group *g, const float *send, float *recv, size_t count) {
    if (count == 0) return;
    if (g->size == 1) {
        memcpy(recv, send, count * sizeof(float));
        return;
    }
#ifdef MM_HAVE_MPI
    blocking(g, OP_REDUCE_SCATTER, send, recv, count, COMM_F32, MPI_SUM);
#endif
}

void comm_all_gather(comm_group *g, const void *send, void *recv, size_t count, comm_dtype t) {
    if (count == 0) return;
    if (g->size == 1) {
        if (send != recv) memmove(recv, send, count * dtype_size(t));
        return;
    }
#ifdef MM_HAVE_MPI
    blocking(g, OP_ALL_GATHER, send, recv, count, t, MPI_OP_NULL);
#endif
}

comm_request *comm_iallreduce_sum(comm_group *g, void *buf, size_t count, comm_dtype t) {
    if (g->size == 1 || count == 0) return request_new(0);
#ifdef MM_HAVE_MPI
    comm_request *r = request_new(n_chunks(count, g->max_count));
    r->g = g, r->op = "allreduce-sum (non-blocking)";
    g->seq++;
    allreduce_chunks(g, buf, count, t, MPI_SUM, r->reqs);
    return r;
#else
    (void)buf;
    (void)t;
    MM_CHECK(0, "unreachable: a group has one rank without MPI");
#endif
}

comm_request *comm_ireduce_scatter_sum(comm_group *g, const float *send, float *recv,
                                       size_t count) {
    if (count == 0) return request_new(0);
    if (g->size == 1) {
        memcpy(recv, send, count * sizeof(float));
        return request_new(0);
    }
#ifdef MM_HAVE_MPI
    comm_request *r = request_new(reduce_scatter_nreq(g, count));
    r->g = g, r->op = "reduce-scatter (non-blocking)";
    g->seq++;
    reduce_scatter_chunks(g, send, recv, count, r->reqs);
    return r;
#else
    MM_CHECK(0, "unreachable: a group has one rank without MPI");
#endif
}

comm_request *comm_iall_gather(comm_group *g, const void *send, void *recv, size_t count,
                               comm_dtype t) {
    if (count == 0) return request_new(0);
    if (g->size == 1) {
        if (send != recv) memmove(recv, send, count * dtype_size(t));
        return request_new(0);
    }
#ifdef MM_HAVE_MPI
    comm_request *r = request_new(n_chunks(count, g->max_count));
    r->g = g, r->op = "all-gather (non-blocking)";
    g->seq++;
    all_gather_chunks(g, send, recv, count, t, r->reqs);
    return r;
#else
    MM_CHECK(0, "unreachable: a group has one rank without MPI");
#endif
}

int comm_test(comm_request *r) {
    if (!r || r->n == 0) return 1;
#ifdef MM_HAVE_MPI
    int done = 0;  // completed requests become MPI_REQUEST_NULL, so testing again is fine
    MPI_Testall(r->n, r->reqs, &done, MPI_STATUSES_IGNORE);
    return done;
#else
    return 1;
#endif
}

void comm_wait(comm_request *r) {
    if (!r) return;
#ifdef MM_HAVE_MPI
    if (r->n > 0) wait_reqs(r->g, r->n, r->reqs, r->op);
    if (r->reqs != &r->one) free(r->reqs);
#endif
    free(r);
}

int comm_layout_init(comm_layout *l, comm_group *world, int tp, mm_err *err) {
    memset(l, 0, sizeof(*l));
    int n = comm_size(world), rank = comm_rank(world);
    // every rank sees the same tp and world size, so all fail together: no rank is left
    // waiting in the splits below
    if (tp < 1) return mm_fail(err, "parallel.tp = %d: must be at least 1", tp);
    if (n % tp != 0)
        return mm_fail(err, "parallel.tp = %d does not divide the %d ranks of the job", tp, n);
    l->world = world;
    l->tp_size = tp;
    l->tp_rank = rank % tp;
    l->dp_size = n / tp;
    l->dp_rank = rank / tp;
    l->tp = comm_split(world, l->dp_rank, l->tp_rank);
    l->dp = comm_split(world, l->tp_rank, l->dp_rank);
    return 0;
}

void comm_layout_free(comm_layout *l) {
    comm_group_free(l->tp);
    comm_group_free(l->dp);
    memset(l, 0, sizeof(*l));
}

void comm_abort(comm_group *g, int code, const char *msg) {
    if (msg && *msg) fprintf(stderr, "%s\n", msg);
    fflush(stderr);
    fflush(stdout);
#ifdef MM_HAVE_MPI
    if (g && g->size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#else
    (void)g;
#endif
    exit(code);
}
