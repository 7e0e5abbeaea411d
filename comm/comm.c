// comm.c: collectives over MPI for host buffers; a single-rank identity when built without
// MPI. Errors inside MPI abort the job (MPI_ERRORS_ARE_FATAL): a broken transport is not
// something a training step can recover from.
#include "comm.h"

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
};

#ifdef MM_HAVE_MPI
static MPI_Datatype mpi_type(comm_dtype t) {
    switch (t) {
    case COMM_F32: return MPI_FLOAT;
    case COMM_F64: return MPI_DOUBLE;
    case COMM_I64: return MPI_INT64_T;
    case COMM_U8: return MPI_UINT8_T;
    }
    MM_CHECK(0, "unknown comm_dtype %d", (int)t);
}
#endif

comm_group *comm_init(int *argc, char ***argv) {
    comm_group *g = mm_calloc(1, sizeof(*g));
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
#ifdef MM_HAVE_MPI
    MPI_Comm_split(g->comm, color, key, &s->comm);
    s->owned = 1;
    MPI_Comm_rank(s->comm, &s->rank);
    MPI_Comm_size(s->comm, &s->size);
#else
    (void)g;
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

void comm_barrier(comm_group *g) {
#ifdef MM_HAVE_MPI
    MPI_Barrier(g->comm);
#else
    (void)g;
#endif
}

void comm_allreduce_sum(comm_group *g, void *buf, size_t count, comm_dtype t) {
#ifdef MM_HAVE_MPI
    if (g->size == 1) return;
    MM_CHECK(count <= (size_t)INT32_MAX, "allreduce of %zu elements: split it", count);
    MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, mpi_type(t), MPI_SUM, g->comm);
#else
    (void)g;
    (void)buf;
    (void)count;
    (void)t;
#endif
}

void comm_allreduce_max(comm_group *g, void *buf, size_t count, comm_dtype t) {
#ifdef MM_HAVE_MPI
    if (g->size == 1) return;
    MM_CHECK(count <= (size_t)INT32_MAX, "allreduce of %zu elements: split it", count);
    MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, mpi_type(t), MPI_MAX, g->comm);
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
    MM_CHECK(count <= (size_t)INT32_MAX, "bcast of %zu elements: split it", count);
    MPI_Bcast(buf, (int)count, mpi_type(t), root, g->comm);
#else
    (void)g;
    (void)buf;
    (void)count;
    (void)t;
    (void)root;
#endif
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
