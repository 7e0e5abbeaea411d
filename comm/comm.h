// comm.h: the only door to other ranks. Model and training code never call MPI (or, later,
// NCCL) directly; they call these, so that the transport can change under them.
//
// A comm_group is a set of ranks (world now; dp and tp groups come from comm_split). Host
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

void comm_barrier(comm_group *g);
// In-place sum over the group.
void comm_allreduce_sum(comm_group *g, void *buf, size_t count, comm_dtype t);
// In-place max over the group.
void comm_allreduce_max(comm_group *g, void *buf, size_t count, comm_dtype t);
void comm_bcast(comm_group *g, void *buf, size_t count, comm_dtype t, int root);

// Ends the whole job from any rank after printing msg (MPI_Abort), so that a failure on one
// rank never leaves the others hanging in a collective.
noreturn void comm_abort(comm_group *g, int code, const char *msg);

#endif  // MM_COMM_H
