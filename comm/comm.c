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
#include "comm.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MM_HAVE_MPI
#include <mpi.h>
#endif

struct comm_group {
#ifdef MM_HAVE_MPI
    MPI_Comm comm;
    int owned;  // 1 when comm_group_free must MPI_Comm_free it
#endif
    int rank, size;
    size_t max_count;  // elements per MPI call, 1 .. INT32_MAX
};

struct comm_request {
#ifdef MM_HAVE_MPI
    MPI_Request *reqs;  // n requests: &one, or malloc'd (owned) when the call was chunked
    MPI_Request one;
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
    MPI_Finalize();
#endif
    free(world);
}

int comm_rank(const comm_group *g) { return g->rank; }
int comm_size(const comm_group *g) { return g->size; }

comm_group *comm_split(comm_group *g, int color, int key) {
    comm_group *s = mm_calloc(1, sizeof(*s));
    s->max_count = g->max_count;
#ifdef MM_HAVE_MPI
    MPI_Comm_split(g->comm, color, key, &s->comm);
    s->owned = 1;
    MPI_Comm_rank(s->comm, &s->rank);
    MPI_Comm_size(s->comm, &s->size);
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
#endif
    free(g);
}

void comm_set_max_count(comm_group *g, size_t max_count) {
    MM_CHECK(max_count >= 1 && max_count <= INT32_MAX,
             "max_count %zu: MPI counts are ints, use 1 .. INT32_MAX", max_count);
    g->max_count = max_count;
}

void comm_barrier(comm_group *g) {
#ifdef MM_HAVE_MPI
    MPI_Barrier(g->comm);
#else
    (void)g;
#endif
}

void comm_allreduce_sum(comm_group *g, void *buf, size_t count, comm_dtype t) {
#ifdef MM_HAVE_MPI
    if (g->size > 1) allreduce_chunks(g, buf, count, t, MPI_SUM, NULL);
#else
    (void)g;
    (void)buf;
    (void)count;
    (void)t;
#endif
}

void comm_allreduce_max(comm_group *g, void *buf, size_t count, comm_dtype t) {
#ifdef MM_HAVE_MPI
    if (g->size > 1) allreduce_chunks(g, buf, count, t, MPI_MAX, NULL);
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
    reduce_scatter_chunks(g, send, recv, count, NULL);
#endif
}

void comm_all_gather(comm_group *g, const void *send, void *recv, size_t count, comm_dtype t) {
    if (count == 0) return;
    if (g->size == 1) {
        if (send != recv) memmove(recv, send, count * dtype_size(t));
        return;
    }
#ifdef MM_HAVE_MPI
    all_gather_chunks(g, send, recv, count, t, NULL);
#endif
}

comm_request *comm_iallreduce_sum(comm_group *g, void *buf, size_t count, comm_dtype t) {
    if (g->size == 1 || count == 0) return request_new(0);
#ifdef MM_HAVE_MPI
    comm_request *r = request_new(n_chunks(count, g->max_count));
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
    if (r->n > 0) MPI_Waitall(r->n, r->reqs, MPI_STATUSES_IGNORE);
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
