// test_tp.c: Megatron tensor parallelism (model/transformer.c) against the serial model. Runs
// under mpirun with world = tp (tests/mpi_ranks.sh: 1, 2 and 4 ranks) and also as one plain
// process (tests/run.sh). Every rank builds the tp = 1 model locally as well (no group), from
// the same seed and batch, and checks that its tp model
//   - starts from exactly its slices of the tp = 1 weights;
//   - gives the tp = 1 loss (relative 1e-5) and its slices of the tp = 1 gradients;
//   - gives replicated tensors bitwise identical gradients on every tp rank (the trainer
//     never reduces them over tp);
//   - is bitwise deterministic, and generates the tp = 1 text;
//   - does all of the above again with dropout, attention dropout and label smoothing on (a
//     training batch): the masks index the full tensors, so a rank's heads draw the tp = 1
//     model's bits for them;
//   - calls the gradient-ready hook with decreasing lo ending at 0, each time when every
//     gradient at >= lo already holds its final value;
// and that bad layouts are refused by model_create with a message. The counts of all ranks
// are summed into the one closing "N passed, N failed" line, printed by rank 0.
//
// Gradient tolerance, per tensor: max|g_tp - g_1| / max|g_1| <= 1e-4. The tp model sums the
// same terms in another order (each row-parallel contraction as tp partial sums of C/tp or
// d_ff/tp terms, then across ranks; the column-parallel input gradients likewise), so each
// such sum may differ by ~K * 6e-8 relative (K <= 64 here: ~4e-6 at worst, far less in
// practice); those differences pass through two blocks of layernorm, softmax and GELU
// backward. Measured: <= ~1e-6 at tp 2 and 4, ~100x below the tolerance, while a real mistake
// (a wrong slice, a missing or doubled allreduce or bias) shows as an error of order 1e-2 .. 1.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../data/data.h"
#include "../model/backend.h"
#include "../model/model.h"
#include "test.h"
#include "tp_check.h"

static const double LOSS_TOL = 1e-5;
static const double GRAD_TOL = 1e-4;

enum { SB = 4, GEN_STRIDE = 16 };

typedef struct {
    mm_real *image, *audio;
    uint8_t hi[SB], ha[SB];
    int32_t *tok, *tg;
    uint64_t ids[SB];
    model_input in;
} batch;

// Sample 1 lacks its image, sample 2 its audio, sample 3 has no target. Same r state on every
// rank gives the same batch everywhere, as the loader promises TP ranks.
static void make_batch(batch *b, const model_config *c, mm_rng *r) {
    size_t ni = (size_t)SB * c->img_h * c->img_w * c->img_c,
           na = (size_t)SB * c->audio_F * c->n_mels;
    b->image = malloc(ni * sizeof(mm_real));
    b->audio = malloc(na * sizeof(mm_real));
    for (size_t i = 0; i < ni; i++) b->image[i] = 2 * mm_rng_uniform(r) - 1;
    for (size_t i = 0; i < na; i++) b->audio[i] = mm_rng_normal(r);
    b->tok = malloc((size_t)SB * c->text_T * sizeof(int32_t));
    b->tg = malloc((size_t)SB * c->text_T * sizeof(int32_t));
    for (int s = 0; s < SB; s++) {
        b->hi[s] = s != 1;
        b->ha[s] = s != 2;
        for (int t = 0; t < c->text_T; t++) {
            b->tok[s * c->text_T + t] = t == 0 ? DATA_TOK_BOS : 'a' + (int)mm_rng_below(r, 26);
            b->tg[s * c->text_T + t] =
                s < 3 && t < c->text_T - 1 - s ? 'a' + (int)mm_rng_below(r, 26) : -1;
        }
    }
    for (int s = 0; s < SB; s++) b->ids[s] = 40 + 3 * (uint64_t)s;
    b->in = (model_input){SB, b->image, b->hi, b->audio, b->ha, b->tok, b->tg, 0, 0, NULL, 0};
}

static void free_batch(batch *b) {
    free(b->image), free(b->audio), free(b->tok), free(b->tg);
}

// Checks one recorded backward pass of m against its final gradients.
static void check_hook_pass(test_counts *tc, hook_rec *h, model *m, const char *what) {
    int n_layers = model_cfg(m)->n_layers;
    TEST_CHECK(tc, h->calls == n_layers + 2, "%s: %d hook calls, want %d (head, each block, end)",
               what, h->calls, n_layers + 2);
    check_hook_lo(tc, h, model_tensors(m), model_n_tensors(m), model_grads(m), what);
}

// ---------------------------------------------------------------------------------------

// The tp model against the serial one; tp = world, this rank = tp_rank.
// reg: with the regularisation of model_config on, fed as a training batch; stem: with the
// conv image stem (replicated tensors whose gradients every tp rank must agree on)
static void test_equivalence(test_counts *tc, comm_group *world, comm_group *tpg, int reg,
                             int stem) {
    const int tp = comm_size(tpg), rank = comm_rank(tpg), root = rank == 0;
    model_config c1, ct;
    small_model_config(&c1);
    if (stem) {
        c1.stem = MODEL_STEM_CONV;
        c1.stem_width = 3;
        if (root) printf("with the conv image stem\n");
    }
    if (reg) {
        c1.dropout = 0.2;
        c1.attn_dropout = 0.3;
        c1.label_smoothing = 0.1;
        if (root) printf("with dropout 0.2, attn_dropout 0.3, label smoothing 0.1\n");
    }
    ct = c1;
    ct.tp = tp;
    ct.tp_rank = rank;
    ct.tp_group = tpg;
    mm_err err = {{0}};
    model *ref, *m;
    int ok1 = model_create(&ref, &c1, &mm_backend_cpu, SB, 11, &err) == 0;
    TEST_CHECK(tc, ok1, "create tp=1: %s", err.msg);
    int okt = model_create(&m, &ct, &mm_backend_cpu, SB, 11, &err) == 0;
    TEST_CHECK(tc, okt, "create tp=%d: %s", tp, err.msg);
    if (!ok1 || !okt) comm_abort(world, 1, "test_tp: model_create failed");
    const model_tensor *t1 = model_tensors(ref), *tt = model_tensors(m);
    const int nt = model_n_tensors(m);
    TEST_CHECK(tc, nt == model_n_tensors(ref), "tensor count differs under tp");

    // initial values do not depend on tp
    size_t np = model_n_params(m);
    mm_real *slice = malloc(np * sizeof(mm_real));
    int init_bad = tp_slices_differ(t1, model_params(ref), tt, model_params(m), nt, slice);
    TEST_CHECK(tc, init_bad == 0, "tp=%d rank %d: %d tensors' init is not the tp=1 slice", tp, rank,
               init_bad);

    // Weights well away from init, so that attention, GELU and layernorm are far from linear
    // and every path carries a sizeable gradient; the tp model gets its slices of them.
    mm_rng r;
    mm_rng_init(&r, 99, 0);
    for (size_t i = 0; i < model_n_params(ref); i++)
        model_params(ref)[i] += 0.1f * mm_rng_normal(&r);
    tp_copy_slices(model_params(m), tt, model_params(ref), t1, nt);

    batch b;
    make_batch(&b, &c1, &r);
    if (reg) b.in.train = 1, b.in.step = 12, b.in.sample_id = b.ids;
    const mm_real scale = 1.0f / 3;
    int s1 = -1, st = -1;
    double l1 = model_forward(ref, &b.in, &s1);
    model_zero_grad(ref);
    model_backward(ref, &b.in, scale);
    double lt = model_forward(m, &b.in, &st);
    model_zero_grad(m);
    model_backward(m, &b.in, scale);
    TEST_CHECK(tc, st == s1, "n_scored %d vs %d", st, s1);
    tp_check_loss(tc, tpg, lt, l1, LOSS_TOL);

    // each rank's gradient slices against the tp = 1 gradients; worst over ranks printed
    tp_check_grads(tc, tpg, t1, model_grads(ref), tt, model_grads(m), nt, slice, 24, NULL,
                   GRAD_TOL);

    // replicated gradients: bitwise the same on every tp rank
    int n_rep;
    int rep_bad = tp_replicated_differ(tpg, tt, model_grads(m), nt, slice, &n_rep);
    TEST_CHECK(tc, rep_bad == 0, "tp=%d rank %d: %d of %d replicated grads differ across ranks", tp,
               rank, rep_bad, n_rep);

    // determinism at a fixed layout: a second pass gives the same bits
    mm_real *g_first = malloc(np * sizeof(mm_real));
    memcpy(g_first, model_grads(m), np * sizeof(mm_real));
    double lt2 = model_forward(m, &b.in, NULL);
    model_zero_grad(m);
    model_backward(m, &b.in, scale);
    TEST_CHECK(tc, lt2 == lt, "tp=%d: forward not bit-identical across runs", tp);
    TEST_CHECK(tc, memcmp(g_first, model_grads(m), np * sizeof(mm_real)) == 0,
               "tp=%d: backward not bit-identical across runs", tp);

    // grad hook: a fresh pass, then an accumulating one (grads no longer start at zero)
    hook_rec h = {.grads = model_grads(m), .n = np};
    model_set_grad_hook(m, record_hook, &h);
    model_zero_grad(m);
    for (int pass = 0; pass < 2; pass++) {
        model_forward(m, &b.in, NULL);
        model_backward(m, &b.in, scale);
        check_hook_pass(tc, &h, m, pass ? "accumulating pass" : "first pass");
        if (!pass)
            TEST_CHECK(tc, memcmp(g_first, model_grads(m), np * sizeof(mm_real)) == 0,
                       "a grad hook changed the gradients");
        if (root && !pass) print_hook_lo(&h, np);
        free_hook_rec(&h);
    }
    model_set_grad_hook(m, NULL, NULL);
    model_forward(m, &b.in, NULL);
    model_backward(m, &b.in, scale);
    TEST_CHECK(tc, h.calls == 0, "a removed grad hook was still called");

    // generation: the tp = 1 text, on every rank
    char g1[SB][GEN_STRIDE], gt[SB][GEN_STRIDE];
    model_generate(ref, &b.in, &g1[0][0], GEN_STRIDE);
    model_generate(m, &b.in, &gt[0][0], GEN_STRIDE);
    for (int s = 0; s < SB; s++) {
        TEST_CHECK(tc, strcmp(g1[s], gt[s]) == 0,
                   "tp=%d rank %d sample %d generates %zu bytes, tp=1 %zu", tp, rank, s,
                   strlen(gt[s]), strlen(g1[s]));
        if (root) {
            printf("  generated[%d] (%zu bytes) = \"", s, strlen(gt[s]));
            for (const char *p = gt[s]; *p; p++)
                printf(*p >= 32 && *p < 127 ? "%c" : "\\x%02x", (unsigned char)*p);
            printf("\"\n");
        }
    }

    free(g_first);
    free(slice);
    free_batch(&b);
    model_free(ref);
    model_free(m);
}

// Layouts model_create must refuse, with a message naming the cause. Local: no collectives.
static void test_bad_layouts(test_counts *tc, comm_group *self) {
    struct {
        const char *what, *expect;
    } cases[] = {
        {"heads not divisible by tp", "n_heads"},
        {"d_ff not divisible by tp", "d_ff"},
        {"tp_group size differs from tp", "tp_group"},
    };
    for (int i = 0; i < 3; i++) {
        model_config c;
        small_model_config(&c);
        c.tp = 4;
        if (i == 0) c.n_heads = 2;  // d_model 32 = 2 heads of 16, not splittable 4 ways
        if (i == 1) c.d_ff = 66;
        if (i == 2) c.tp = 2, c.tp_group = self;  // a group of one rank for a tp of 2
        mm_err err = {{0}};
        model *m = (model *)&c;  // must be reset to NULL on failure
        int rc = model_create(&m, &c, &mm_backend_cpu, 2, 1, &err);
        TEST_CHECK(tc, rc == -1 && m == NULL && strstr(err.msg, cases[i].expect),
                   "%s: rc %d, message \"%s\" should mention \"%s\"", cases[i].what, rc, err.msg,
                   cases[i].expect);
        if (rc == 0) model_free(m);
    }
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    const int size = comm_size(world), rank = comm_rank(world);
    test_counts tc = {0, 0};
    // world = one tp group: tp ranks are contiguous (comm.h), here with dp = 1
    comm_group *tpg = comm_split(world, 0, rank);
    comm_group *self = comm_split(world, rank, 0);
    if (size == 1 || size == 2 || size == 4) {
        test_equivalence(&tc, world, tpg, 0, 0);
        test_equivalence(&tc, world, tpg, 1, 0);
        test_equivalence(&tc, world, tpg, 0, 1);
    } else {
        TEST_CHECK(&tc, 0, "test_tp runs with 1, 2 or 4 ranks (n_heads = 4), not %d", size);
    }
    test_bad_layouts(&tc, self);
    int status = tp_finish(world, &tc);
    comm_group_free(self);
    comm_group_free(tpg);
    comm_finalize(world);
    return status;
}
