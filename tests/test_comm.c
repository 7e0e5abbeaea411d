// test_comm.c: comm/ checked against values computed without it. Every rank contributes
// integers that depend on its world rank (exact in float, so sums and averages compare
// exactly); the expected result is built from the layout formula of comm.h's process
// groups (rank = dp_index * tp + tp_index), never from comm itself, so a group holding the
// wrong ranks fails as surely as a wrong sum. Runs under any number of ranks (tests/mpi_ranks.sh
// runs 1, 2 and 4); rank 0 prints the counts summed over all ranks.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "test.h"

#define MAX_RANKS 64

typedef enum { G_WORLD, G_TP, G_DP } group_kind;
static const comm_dtype all_types[] = {COMM_F32, COMM_F64, COMM_I64, COMM_U8};
static const char *const type_name[] = {"f32", "f64", "i64", "u8"};  // by comm_dtype
#define N_TYPES 4
static const size_t counts[] = {1, 1000, 4099};  // 4099: prime, never a chunk multiple
#define N_COUNTS 3

// What a check runs on: a group and, from the layout formula, who should be in it.
typedef struct {
    comm_group *g;  // not owned
    char what[96];  // e.g. "tp=2 dp group, max_count 7", for failure messages
    int n, rank;    // expected group size and this rank's place in it
    int world_rank;
    int members[MAX_RANKS];  // expected world ranks of the group, in group-rank order
} grp;

static void grp_init(grp *gr, comm_group *g, group_kind k, int world_size, int world_rank, int tp) {
    memset(gr, 0, sizeof(*gr));
    gr->g = g;
    gr->world_rank = world_rank;
    int tp_index = world_rank % tp, dp_index = world_rank / tp;
    if (k == G_WORLD) {
        gr->n = world_size;
        gr->rank = world_rank;
        for (int i = 0; i < gr->n; i++) gr->members[i] = i;
    } else if (k == G_TP) {
        gr->n = tp;
        gr->rank = tp_index;
        for (int i = 0; i < gr->n; i++) gr->members[i] = dp_index * tp + i;
    } else {
        gr->n = world_size / tp;
        gr->rank = dp_index;
        for (int i = 0; i < gr->n; i++) gr->members[i] = i * tp + tp_index;
    }
}

static size_t tsize(comm_dtype t) {
    return t == COMM_U8 ? 1 : t == COMM_F32 ? 4 : 8;
}

static void put(void *buf, comm_dtype t, size_t i, double v) {
    switch (t) {
        case COMM_F32:
            ((float *)buf)[i] = (float)v;
            break;
        case COMM_F64:
            ((double *)buf)[i] = v;
            break;
        case COMM_I64:
            ((int64_t *)buf)[i] = (int64_t)v;
            break;
        case COMM_U8:
            ((uint8_t *)buf)[i] = (uint8_t)v;
            break;
    }
}

static double get(const void *buf, comm_dtype t, size_t i) {
    switch (t) {
        case COMM_F32:
            return ((const float *)buf)[i];
        case COMM_F64:
            return ((const double *)buf)[i];
        case COMM_I64:
            return (double)((const int64_t *)buf)[i];
        case COMM_U8:
            return ((const uint8_t *)buf)[i];
    }
    return 0;
}

// Rank wr's element i: distinct per rank and element; u8 sums of 4 ranks stay below 256 and
// every float sum below 2^24, so results compare exactly.
static double val(int wr, size_t i, comm_dtype t) {
    if (t == COMM_U8) return (double)((wr * 7 + (int)(i % 43)) % 50);
    return (double)((wr + 1) * 1000 + (int)(i % 997));
}
// Signed, with the maximum on a different rank for different elements.
static double val_max(int wr, size_t i) {
    return (double)((wr * 37 + (int)(i % 101) * 11) % 101 - 50);
}
// Element j of block b of rank wr's reduce-scatter input.
static double val_rs(int wr, int b, size_t j) {
    return (wr + 1) * 100 + b * 10 + (int)(j % 97);
}
// What a rank writes where a collective must overwrite (or must not touch).
#define GARBAGE (-7.0)

// One check: all n elements of buf equal want; names the first mismatch.
static void check_buf(test_counts *tc, const void *buf, comm_dtype t, const double *want, size_t n,
                      const grp *gr, const char *op) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (get(buf, t, i) != want[i] && bad++ == 0) first = i;
    TEST_CHECK(tc, bad == 0, "rank %d, %s: %s %s n=%zu: %zu wrong, first [%zu] = %.9g, want %.9g",
               gr->world_rank, gr->what, op, type_name[t], n, bad, first,
               bad ? get(buf, t, first) : 0.0, bad ? want[first] : 0.0);
}

// Every blocking collective on gr for count elements, each dtype it takes.
static void test_blocking(test_counts *tc, const grp *gr, size_t count) {
    size_t n = (size_t)gr->n;
    // n * count + 1: the reduce-scatter checks that the element after its block is untouched
    double *want = mm_malloc((n * count + 1) * sizeof(double));
    void *buf = mm_malloc((n * count + 1) * 8);
    void *send = mm_malloc(n * count * 8);
    for (int k = 0; k < N_TYPES; k++) {
        comm_dtype t = all_types[k];
        // sum
        for (size_t i = 0; i < count; i++) {
            put(buf, t, i, val(gr->world_rank, i, t));
            want[i] = 0;
            for (int m = 0; m < gr->n; m++) want[i] += val(gr->members[m], i, t);
        }
        comm_allreduce_sum(gr->g, buf, count, t);
        check_buf(tc, buf, t, want, count, gr, "allreduce_sum");
        // bcast from every root
        for (int root = 0; root < gr->n; root++) {
            for (size_t i = 0; i < count; i++) {
                put(buf, t, i, root == gr->rank ? val(gr->members[root], i, t) : 99);
                want[i] = val(gr->members[root], i, t);
            }
            comm_bcast(gr->g, buf, count, t, root);
            check_buf(tc, buf, t, want, count, gr, "bcast");
        }
        // all-gather: out of place, then in place
        for (int in_place = 0; in_place < 2; in_place++) {
            for (size_t i = 0; i < n * count; i++) {
                put(buf, t, i, in_place ? 99 : 98);
                want[i] = val(gr->members[i / count], i % count, t);
            }
            void *mine = in_place ? (char *)buf + (size_t)gr->rank * count * tsize(t) : send;
            for (size_t i = 0; i < count; i++) put(mine, t, i, val(gr->world_rank, i, t));
            comm_all_gather(gr->g, mine, buf, count, t);
            check_buf(tc, buf, t, want, n * count, gr,
                      in_place ? "all_gather in place" : "all_gather");
        }
    }
    // max (signed types)
    comm_dtype signed_types[] = {COMM_F32, COMM_F64, COMM_I64};
    for (int k = 0; k < 3; k++) {
        comm_dtype t = signed_types[k];
        for (size_t i = 0; i < count; i++) {
            put(buf, t, i, val_max(gr->world_rank, i));
            want[i] = -1e9;
            for (int m = 0; m < gr->n; m++)
                if (val_max(gr->members[m], i) > want[i]) want[i] = val_max(gr->members[m], i);
        }
        comm_allreduce_max(gr->g, buf, count, t);
        check_buf(tc, buf, t, want, count, gr, "allreduce_max");
    }
    // average: the group size is 1, 2 or 4, so sum / size is exact in float
    for (size_t i = 0; i < count; i++) {
        put(buf, COMM_F32, i, val(gr->world_rank, i, COMM_F32));
        double s = 0;
        for (int m = 0; m < gr->n; m++) s += val(gr->members[m], i, COMM_F32);
        want[i] = (float)s / (float)gr->n;
    }
    comm_allreduce_avg(gr->g, buf, count);
    check_buf(tc, buf, COMM_F32, want, count, gr, "allreduce_avg");
    // reduce-scatter: recv must be exactly block `rank` summed; the rest of recv untouched
    float *send_f = send, *recv_f = buf;
    for (size_t i = 0; i < n * count; i++)
        send_f[i] = (float)val_rs(gr->world_rank, (int)(i / count), i % count);
    for (size_t j = 0; j < count + 1; j++) {
        recv_f[j] = (float)GARBAGE;
        want[j] = GARBAGE;
        if (j == count) break;
        want[j] = 0;
        for (int m = 0; m < gr->n; m++) want[j] += val_rs(gr->members[m], gr->rank, j);
    }
    comm_reduce_scatter_sum(gr->g, send_f, recv_f, count);
    check_buf(tc, recv_f, COMM_F32, want, count + 1, gr, "reduce_scatter_sum");
    // count 0 is a no-op on every collective, buffers untouched
    recv_f[0] = (float)GARBAGE;
    comm_allreduce_sum(gr->g, recv_f, 0, COMM_F32);
    comm_allreduce_max(gr->g, recv_f, 0, COMM_F32);
    comm_allreduce_avg(gr->g, recv_f, 0);
    comm_bcast(gr->g, recv_f, 0, COMM_F32, 0);
    comm_reduce_scatter_sum(gr->g, send_f, recv_f, 0);
    comm_all_gather(gr->g, send_f, recv_f, 0, COMM_F32);
    TEST_CHECK(tc, recv_f[0] == (float)GARBAGE, "rank %d, %s: a count-0 collective wrote",
               gr->world_rank, gr->what);
    free(want);
    free(buf);
    free(send);
}

// Polls r until complete (bounded only by the test's time limit), then checks that it stays
// complete and frees it.
static void finish(test_counts *tc, const grp *gr, comm_request *r, const char *op) {
    TEST_CHECK(tc, r != NULL, "rank %d, %s: %s returned NULL", gr->world_rank, gr->what, op);
    while (!comm_test(r)) {
    }
    TEST_CHECK(tc, comm_test(r) == 1, "rank %d, %s: %s: comm_test went back to 0", gr->world_rank,
               gr->what, op);
    comm_wait(r);
}

// The non-blocking collectives, several in flight at once on one group (as DP buckets are):
// three allreduce buckets of one buffer, a reduce-scatter and two all-gathers, started in
// one order and completed in another.
static void test_nonblocking(test_counts *tc, const grp *gr, size_t count, comm_dtype t) {
    size_t n = (size_t)gr->n, es = tsize(t);
    // allreduce buffer: three buckets of count elements
    void *ar = mm_malloc(3 * count * es);
    double *want_ar = mm_malloc(3 * count * sizeof(double));
    for (size_t i = 0; i < 3 * count; i++) {
        put(ar, t, i, val(gr->world_rank, i, t));
        want_ar[i] = 0;
        for (int m = 0; m < gr->n; m++) want_ar[i] += val(gr->members[m], i, t);
    }
    float *rs_send = mm_malloc(n * count * sizeof(float));
    float *rs_recv = mm_malloc(count * sizeof(float));
    double *want_rs = mm_malloc(count * sizeof(double));
    for (size_t i = 0; i < n * count; i++)
        rs_send[i] = (float)val_rs(gr->world_rank, (int)(i / count), i % count);
    for (size_t j = 0; j < count; j++) {
        rs_recv[j] = (float)GARBAGE;
        want_rs[j] = 0;
        for (int m = 0; m < gr->n; m++) want_rs[j] += val_rs(gr->members[m], gr->rank, j);
    }
    void *ag_send = mm_malloc(count * es), *ag = mm_malloc(n * count * es);
    void *ag_ip = mm_malloc(n * count * es);
    double *want_ag = mm_malloc(n * count * sizeof(double));
    for (size_t i = 0; i < n * count; i++) {
        put(ag, t, i, 98);
        put(ag_ip, t, i, 99);
        want_ag[i] = val(gr->members[i / count], i % count, t);
    }
    void *mine = (char *)ag_ip + (size_t)gr->rank * count * es;
    for (size_t i = 0; i < count; i++) {
        put(ag_send, t, i, val(gr->world_rank, i, t));
        put(mine, t, i, val(gr->world_rank, i, t));
    }

    comm_request *b[3];
    for (int k = 0; k < 3; k++)
        b[k] = comm_iallreduce_sum(gr->g, (char *)ar + k * count * es, count, t);
    comm_request *rs = comm_ireduce_scatter_sum(gr->g, rs_send, rs_recv, count);
    comm_request *g1 = comm_iall_gather(gr->g, ag_send, ag, count, t);
    comm_request *g2 = comm_iall_gather(gr->g, mine, ag_ip, count, t);
    finish(tc, gr, g2, "iall_gather in place");
    finish(tc, gr, rs, "ireduce_scatter_sum");
    for (int k = 2; k >= 0; k--) finish(tc, gr, b[k], "iallreduce_sum");
    comm_wait(g1);  // without comm_test first

    check_buf(tc, ar, t, want_ar, 3 * count, gr, "iallreduce_sum");
    check_buf(tc, rs_recv, COMM_F32, want_rs, count, gr, "ireduce_scatter_sum");
    check_buf(tc, ag, t, want_ag, n * count, gr, "iall_gather");
    check_buf(tc, ag_ip, t, want_ag, n * count, gr, "iall_gather in place");
    // empty requests complete at once
    comm_request *e = comm_iallreduce_sum(gr->g, ar, 0, t);
    TEST_CHECK(tc, comm_test(e) == 1, "rank %d, %s: empty request not complete", gr->world_rank,
               gr->what);
    comm_wait(e);
    comm_wait(NULL);
    free(ar), free(want_ar), free(rs_send), free(rs_recv), free(want_rs);
    free(ag_send), free(ag), free(ag_ip), free(want_ag);
}

// Everything on one group: MPI's own path, then the chunked path with a tiny chunk (7
// elements: 1000 and 4099 split into many uneven chunks, 1 does not split).
static void test_group(test_counts *tc, grp *gr, const char *name) {
    const size_t max_counts[] = {INT32_MAX, 7};
    for (int c = 0; c < 2; c++) {
        comm_set_max_count(gr->g, max_counts[c]);
        snprintf(gr->what, sizeof(gr->what), "%s, max_count %zu", name, max_counts[c]);
        for (int k = 0; k < N_COUNTS; k++) {
            test_blocking(tc, gr, counts[k]);
            test_nonblocking(tc, gr, counts[k], COMM_F32);
            test_nonblocking(tc, gr, counts[k], COMM_I64);
            test_nonblocking(tc, gr, counts[k], COMM_U8);
        }
    }
    comm_set_max_count(gr->g, INT32_MAX);
}

// The layout for tp, its groups' sizes and ranks, which world ranks share them, and every
// collective on its tp and dp groups.
static void test_layout(test_counts *tc, comm_group *world, int tp) {
    int n = comm_size(world), rank = comm_rank(world);
    comm_layout l;
    mm_err err = {{0}};
    int rc = comm_layout_init(&l, world, tp, &err);
    TEST_CHECK(tc, rc == 0, "tp=%d on %d ranks: %s", tp, n, err.msg);
    if (rc != 0) return;
    TEST_CHECK(tc, l.world == world, "tp=%d: layout world", tp);
    TEST_CHECK(tc, l.tp_size == tp && l.dp_size == n / tp, "tp=%d: sizes tp %d dp %d", tp,
               l.tp_size, l.dp_size);
    TEST_CHECK(tc, l.tp_rank == rank % tp && l.dp_rank == rank / tp,
               "tp=%d rank %d: tp_rank %d dp_rank %d", tp, rank, l.tp_rank, l.dp_rank);
    TEST_CHECK(tc, comm_size(l.tp) == tp && comm_rank(l.tp) == rank % tp,
               "tp=%d rank %d: tp group size %d rank %d", tp, rank, comm_size(l.tp),
               comm_rank(l.tp));
    TEST_CHECK(tc, comm_size(l.dp) == n / tp && comm_rank(l.dp) == rank / tp,
               "tp=%d rank %d: dp group size %d rank %d", tp, rank, comm_size(l.dp),
               comm_rank(l.dp));
    grp gt, gd;
    grp_init(&gt, l.tp, G_TP, n, rank, tp);
    grp_init(&gd, l.dp, G_DP, n, rank, tp);
    // who shares my groups: each member reports its world rank
    const grp *gs[2] = {&gt, &gd};
    for (int k = 0; k < 2; k++) {
        int64_t ranks[MAX_RANKS], me = rank;
        comm_all_gather(gs[k]->g, &me, ranks, 1, COMM_I64);
        int same = 1;
        for (int i = 0; i < gs[k]->n; i++) same &= ranks[i] == gs[k]->members[i];
        TEST_CHECK(tc, same, "tp=%d rank %d: the %s group holds the wrong world ranks", tp, rank,
                   k ? "dp" : "tp");
    }
    char name[64];
    snprintf(name, sizeof(name), "tp=%d tp group", tp);
    test_group(tc, &gt, name);
    snprintf(name, sizeof(name), "tp=%d dp group", tp);
    test_group(tc, &gd, name);
    comm_layout_free(&l);
    TEST_CHECK(tc, l.tp == NULL && l.dp == NULL, "comm_layout_free leaves dangling groups");
}

// tp that does not fit the job: -1 and one line naming the key and the numbers.
static void test_layout_errors(test_counts *tc, comm_group *world) {
    int n = comm_size(world);
    int bad[] = {3, 2 * n, 0, -2};
    for (int k = 0; k < 4; k++) {
        int tp = bad[k];
        if (tp == 3 && n % 3 == 0) continue;
        comm_layout l;
        mm_err err = {{0}};
        int rc = comm_layout_init(&l, world, tp, &err);
        char want[128];
        if (tp >= 1)
            snprintf(want, sizeof(want), "parallel.tp = %d does not divide the %d ranks of the job",
                     tp, n);
        else
            snprintf(want, sizeof(want), "parallel.tp = %d: must be at least 1", tp);
        TEST_CHECK(tc, rc == -1, "tp=%d on %d ranks: accepted", tp, n);
        TEST_CHECK(tc, strcmp(err.msg, want) == 0, "tp=%d: message '%s', want '%s'", tp, err.msg,
                   want);
        TEST_CHECK(tc, l.tp == NULL && l.dp == NULL, "tp=%d: failed layout holds groups", tp);
        comm_layout_free(&l);  // safe on a failed layout
    }
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    test_counts tc = {0, 0};
    int n = comm_size(world), rank = comm_rank(world);
    MM_CHECK(n <= MAX_RANKS, "test_comm supports up to %d ranks", MAX_RANKS);
    grp gw;
    grp_init(&gw, world, G_WORLD, n, rank, 1);
    test_group(&tc, &gw, "world");
    for (int tp = 1; tp <= 4; tp *= 2)
        if (n % tp == 0) test_layout(&tc, world, tp);
    test_layout_errors(&tc, world);
    // every rank's counts: a failure on any rank fails the run, on every rank
    int64_t sum[2] = {tc.passed, tc.failed};
    comm_allreduce_sum(world, sum, 2, COMM_I64);
    comm_finalize(world);
    tc.passed = (int)sum[0], tc.failed = (int)sum[1];
    if (rank != 0) return tc.failed ? 1 : 0;
    printf("test_comm: %d rank(s)\n", n);
    return test_finish(&tc);
}
