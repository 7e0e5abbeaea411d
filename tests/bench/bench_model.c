// bench_model.c: measures how fast the CPU backend trains one model config, and how that
// compares with the best the machine's BLAS can do on the same matrix shapes. `make bench`
// (tests/bench/run.sh) runs it per config and thread count; it exists so that performance
// claims in the README are numbers anyone can reproduce, not impressions.
//
//   bench_model CONFIG.yaml [--threads N] [--warmup N] [--steps N] [--schema NAME]
//               [--shapes-only] [section.key=value ...]      (bench_model --help)
//
// One timed step is what train/ does per step on one rank: model_zero_grad, model_forward,
// model_backward (loss_scale 1/B), the global grad norm (clipping when optim.grad_clip > 0)
// and train/optim's AdamW at a constant lr, on one micro-batch of data.micro_batch samples;
// no data loading (inputs are synthesized once: images uniform in [-1, 1], log-mel features
// N(0, 1), random bytes filling the whole caption, every sample has image and audio).
//
// The data schema (image size, audio frames, caption length) belongs to a dataset, not to
// the config, so it comes from the small table below, picked by the config's file name
// (or --schema); the bench configs repeat it in a comment.
//
// Measurements:
//   - step time  = the best of the timed steps (the mean is printed too): on a shared
//                  machine interference only ever adds time, so the minimum reproduces best.
//   - tokens/s   = B * seq_len / step time (every position counts: image, audio, text).
//   - op shares  = time inside each op of the ops table (wrapped with mm_now timers) over the
//                  step time. "sgemm" is matmul_fwd + matmul_bwd as the model sees them, so
//                  it includes their bias add / bias-gradient reduction; attention's internal
//                  per-head products are counted under attention, not sgemm; "fc+gelu" is the
//                  MLP's first layer with its GELU, fused ops both ways (GEMM and GELU inside).
//   - step GFLOP/s = model_flops_per_sample * B / step time (matmuls AND attention FLOPs).
//   - sgemm-alone GFLOP/s: the linear-layer GEMMs of one step are recorded from the ops
//                  calls (forward out = inp @ W^T, backward dinp = dout @ W and
//                  dW += dout^T @ inp, at exactly the (N, IC, OC) the model used), then
//                  replayed with cblas_sgemm alone at the same thread count, once after
//                  every step (so both meet the same background load), best replay;
//                  their FLOPs / that time. Attention's QK^T and PV products are not replayed.
//   - ratio     = step GFLOP/s / sgemm-alone GFLOP/s: 1.0 would mean the whole step ran at
//                  the rate of its own GEMMs. The numerator also counts attention's FLOPs
//                  (the whole T x T, masked or not), the denominator does not replay them; the
//                  stricter "sgemm-alone time / step time" (linear GEMMs only on both sides)
//                  is printed beside it and is the lower of the two.
//   - paired ratio = the same ratio from each timed step and the replay right after it,
//                  median over the steps: steadier than best over best on a shared machine.
//   - ops' GEMMs = the same recorded GEMMs replayed through the CPU ops table (no bias),
//                  so each split among the threads the way the ops split it, which beats
//                  OpenBLAS's own threading at small shapes (model/cpu/ops_cpu.c). The step
//                  against that rate is the stricter ratio; at 1 thread both are one call.
//   - matmul calls = each plain matmul op's best time in a step against its GEMMs' best
//                  cblas_sgemm replay, summed: below 1 where the ops' splitting wins more
//                  than the step's colder operands, bias pass and bias gradient cost.
//   - ceiling    = the ratio (against the cblas_sgemm replay) of a step made of its GEMMs
//                  at the faster replay's rate and its attention, GELU and LayerNorm calls,
//                  each as fast as alone: those calls are recorded too and replayed on warm
//                  buffers after every GEMM replay (best replay). No change outside those
//                  kernels and the GEMMs' threading can take the ratio past it.
// Output: a human-readable block and one `BENCH {json}` line (plus `SHAPES {json}` first,
// which tests/bench/torch_ref.py reads to build the same model in PyTorch).
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/cli.h"
#include "../../core/core.h"
#include "../../data/data.h"
#include "../../model/backend.h"
#include "../../model/model.h"
#include "../../train/config.h"
#include "../../train/optim.h"

_Static_assert(sizeof(mm_real) == sizeof(float), "the bench replays GEMMs with cblas_sgemm");

// Dataset shapes per bench config (see configs/bench_*.yaml). small: the synthetic set of
// `mmdata synth` (32x32 RGB, 0.5 s at 8 kHz -> 30 frames with n_fft 256 / hop 128, 48-byte
// captions + BOS). large: chosen so that seq_len = 64 patches + 16 audio tokens + 48 = 128.
typedef struct {
    const char *name;
    int img_h, img_w, img_c;
    int audio_F;
    int text_T;
} bench_schema;

static const bench_schema schemas[] = {
    {"bench_small", 32, 32, 3, 30, 49},
    {"bench_large", 64, 64, 3, 32, 48},
};

// ---------------------------------------------------------------------------------------
// Op timing. The ops table's functions take no context pointer, so the timing wrappers can
// only find their counters at file scope: this is the bench's one mutable global. It is
// touched only from the thread that calls the model (ops parallelise inside themselves).
enum { OP_MATMUL, OP_FCGELU, OP_ATTN, OP_NORM, OP_GELU, OP_ADD, OP_XENT, OP_N };
static const char *const op_names[OP_N] = {"sgemm", "fc+gelu", "attention", "layernorm",
                                           "gelu", "add", "xent"};

typedef struct {
    int N, IC, OC;
    int fwd;        // 1: matmul_fwd, 0: matmul_bwd
    int has_dinp;   // matmul_bwd computed dinp
    int fused;      // a matmul_gelu op: its step time includes the GELU
    double best_step;   // best seconds of the op in a timed step (bias, bias gradient included)
    double best_alone;  // best seconds of its GEMMs in a replay
} gemm_call;

// One call of attention, LayerNorm or GELU, recorded for the replay of the other ops below.
enum { K_ATTN_FWD, K_ATTN_BWD, K_NORM_FWD, K_ADD_NORM_FWD, K_NORM_BWD, K_GELU_FWD, K_GELU_BWD };
typedef struct {
    int op;                // K_*
    int B, T, P, NH, HD;   // attention
    int N, C;              // LayerNorm
    size_t n;              // GELU elements
} kern_call;

typedef struct {
    double t[OP_N];
    int recording;  // record matmul shapes (one step's worth) while set
    int timing;     // a timed step: keep each call's best time
    int next;       // index of the step's next matmul call
    int n_calls, cap_calls;
    gemm_call *calls;
    int n_kern, cap_kern;
    kern_call *kern;  // the step's attention, LayerNorm and GELU calls, in order
} op_probe;

static op_probe probe;

// *arr (*cap elements of size sz) with room for element n: doubled when full.
static void *room_for(void *arr, int n, int *cap, size_t sz) {
    if (n < *cap) return arr;
    *cap = *cap ? 2 * *cap : 64;
    arr = realloc(arr, (size_t)*cap * sz);
    MM_CHECK(arr, "out of memory recording the step's op calls");
    return arr;
}

// One matmul op call of dt seconds: recorded in the first step, timed in the timed ones.
static void probe_call(gemm_call c, double dt) {
    if (probe.recording) {
        probe.calls = room_for(probe.calls, probe.n_calls, &probe.cap_calls, sizeof(gemm_call));
        c.best_step = c.best_alone = INFINITY;
        probe.calls[probe.n_calls++] = c;
    }
    if (probe.timing && probe.next < probe.n_calls) {
        gemm_call *k = &probe.calls[probe.next];
        if (dt < k->best_step) k->best_step = dt;
    }
    probe.next++;
}

static void kern_record(kern_call k) {
    if (!probe.recording) return;
    probe.kern = room_for(probe.kern, probe.n_kern, &probe.cap_kern, sizeof(kern_call));
    probe.kern[probe.n_kern++] = k;
}

static void t_matmul_fwd(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *inp,
                         const mm_real *w, const mm_real *bias, int N, int IC, int OC) {
    double t0 = mm_now();
    model_ops_cpu.matmul_fwd(&mm_backend_cpu, out, inp, w, bias, N, IC, OC);
    const double dt = mm_now() - t0;
    probe.t[OP_MATMUL] += dt;
    probe_call((gemm_call){N, IC, OC, 1, 0, 0, 0, 0}, dt);
}
static void t_matmul_bwd(const mm_backend *be MM_UNUSED, mm_real *dinp, mm_real *dw, mm_real *dbias,
                         const mm_real *dout, const mm_real *inp, const mm_real *w, int N, int IC,
                         int OC) {
    double t0 = mm_now();
    model_ops_cpu.matmul_bwd(&mm_backend_cpu, dinp, dw, dbias, dout, inp, w, N, IC, OC);
    const double dt = mm_now() - t0;
    probe.t[OP_MATMUL] += dt;
    probe_call((gemm_call){N, IC, OC, 0, dinp != NULL, 0, 0, 0}, dt);
}
static void t_layernorm_fwd(const mm_backend *be MM_UNUSED, mm_real *out, mm_real *mean,
                            mm_real *rstd, const mm_real *x, const mm_real *g, const mm_real *b,
                            int N, int C) {
    double t0 = mm_now();
    model_ops_cpu.layernorm_fwd(&mm_backend_cpu, out, mean, rstd, x, g, b, N, C);
    probe.t[OP_NORM] += mm_now() - t0;
    kern_record((kern_call){.op = K_NORM_FWD, .N = N, .C = C});
}
static void t_layernorm_bwd(const mm_backend *be MM_UNUSED, mm_real *dx, mm_real *dg, mm_real *db,
                            const mm_real *dout, const mm_real *x, const mm_real *g,
                            const mm_real *mean, const mm_real *rstd, int N, int C) {
    double t0 = mm_now();
    model_ops_cpu.layernorm_bwd(&mm_backend_cpu, dx, dg, db, dout, x, g, mean, rstd, N, C);
    probe.t[OP_NORM] += mm_now() - t0;
    kern_record((kern_call){.op = K_NORM_BWD, .N = N, .C = C});
}
static void t_gelu_fwd(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *x, size_t n) {
    double t0 = mm_now();
    model_ops_cpu.gelu_fwd(&mm_backend_cpu, out, x, n);
    probe.t[OP_GELU] += mm_now() - t0;
    kern_record((kern_call){.op = K_GELU_FWD, .n = n});
}
// The fused MLP ops are timed whole, under "fc+gelu" (their GEMM recorded for the replay):
// the backward writes its GELU gradient in the pass that computes it, which no pair of the
// table's ops can reproduce.
static void t_matmul_gelu_fwd(const mm_backend *be MM_UNUSED, mm_real *pre, mm_real *out,
                              const mm_real *inp, const mm_real *w, const mm_real *bias, int N,
                              int IC, int OC) {
    double t0 = mm_now();
    model_ops_cpu.matmul_gelu_fwd(&mm_backend_cpu, pre, out, inp, w, bias, N, IC, OC);
    const double dt = mm_now() - t0;
    probe.t[OP_FCGELU] += dt;
    probe_call((gemm_call){N, IC, OC, 1, 0, 1, 0, 0}, dt);
    kern_record((kern_call){.op = K_GELU_FWD, .n = (size_t)N * OC});
}
static void t_gelu_bwd(const mm_backend *be MM_UNUSED, mm_real *dx, const mm_real *x,
                       const mm_real *dout, size_t n) {
    double t0 = mm_now();
    model_ops_cpu.gelu_bwd(&mm_backend_cpu, dx, x, dout, n);
    probe.t[OP_GELU] += mm_now() - t0;
    kern_record((kern_call){.op = K_GELU_BWD, .n = n});
}
static void t_matmul_gelu_bwd(const mm_backend *be MM_UNUSED, mm_real *dpre, mm_real *dact,
                              mm_real *dw, mm_real *dbias, const mm_real *dout, const mm_real *act,
                              const mm_real *pre, const mm_real *w, int N, int IC, int OC) {
    double t0 = mm_now();
    model_ops_cpu.matmul_gelu_bwd(&mm_backend_cpu, dpre, dact, dw, dbias, dout, act, pre, w, N,
                                  IC, OC);
    const double dt = mm_now() - t0;
    probe.t[OP_FCGELU] += dt;
    probe_call((gemm_call){N, IC, OC, 0, 1, 1, 0, 0}, dt);
    kern_record((kern_call){.op = K_GELU_BWD, .n = (size_t)N * IC});
}
static void t_add(const mm_backend *be MM_UNUSED, mm_real *out, const mm_real *a, const mm_real *b,
                  size_t n) {
    double t0 = mm_now();
    model_ops_cpu.add(&mm_backend_cpu, out, a, b, n);
    probe.t[OP_ADD] += mm_now() - t0;
}
// counted as layernorm: the add rides along in the same pass
static void t_add_layernorm_fwd(const mm_backend *be MM_UNUSED, mm_real *res, mm_real *out,
                                mm_real *mean, mm_real *rstd, const mm_real *a, const mm_real *b,
                                const mm_real *g, const mm_real *beta, int N, int C) {
    double t0 = mm_now();
    model_ops_cpu.add_layernorm_fwd(&mm_backend_cpu, res, out, mean, rstd, a, b, g, beta, N, C);
    probe.t[OP_NORM] += mm_now() - t0;
    kern_record((kern_call){.op = K_ADD_NORM_FWD, .N = N, .C = C});
}
static void t_attention_fwd(const mm_backend *be MM_UNUSED, mm_real *out, mm_real *att,
                            const mm_real *qkv, const uint8_t *key_valid, int B, int T, int P,
                            int NH, int HD, const model_drop *drop) {
    double t0 = mm_now();
    model_ops_cpu.attention_fwd(&mm_backend_cpu, out, att, qkv, key_valid, B, T, P, NH, HD, drop);
    probe.t[OP_ATTN] += mm_now() - t0;
    kern_record((kern_call){.op = K_ATTN_FWD, .B = B, .T = T, .P = P, .NH = NH, .HD = HD});
}
static void t_attention_bwd(const mm_backend *be MM_UNUSED, mm_real *dqkv, const mm_real *dout,
                            const mm_real *qkv, const mm_real *out, const mm_real *att, int B,
                            int T, int P, int NH, int HD, const model_drop *drop) {
    double t0 = mm_now();
    model_ops_cpu.attention_bwd(&mm_backend_cpu, dqkv, dout, qkv, out, att, B, T, P, NH, HD, drop);
    probe.t[OP_ATTN] += mm_now() - t0;
    kern_record((kern_call){.op = K_ATTN_BWD, .B = B, .T = T, .P = P, .NH = NH, .HD = HD});
}
static void t_xent_fwd(const mm_backend *be MM_UNUSED, mm_real *loss, mm_real *probs,
                       const mm_real *logits, const int32_t *targets, int N, int V, mm_real eps) {
    double t0 = mm_now();
    model_ops_cpu.xent_fwd(&mm_backend_cpu, loss, probs, logits, targets, N, V, eps);
    probe.t[OP_XENT] += mm_now() - t0;
}
static void t_xent_bwd(const mm_backend *be MM_UNUSED, mm_real *dlogits, const mm_real *logits,
                       const mm_real *probs, const int32_t *targets, const mm_real *dloss, int N,
                       int V, mm_real eps) {
    double t0 = mm_now();
    model_ops_cpu.xent_bwd(&mm_backend_cpu, dlogits, logits, probs, targets, dloss, N, V, eps);
    probe.t[OP_XENT] += mm_now() - t0;
}
static void t_xent_fwd_bwd(const mm_backend *be MM_UNUSED, mm_real *loss, mm_real *logits,
                           const int32_t *targets, const mm_real *dloss, int N, int V,
                           mm_real eps) {
    double t0 = mm_now();
    model_ops_cpu.xent_fwd_bwd(&mm_backend_cpu, loss, logits, targets, dloss, N, V, eps);
    probe.t[OP_XENT] += mm_now() - t0;
}

// The CPU table with the compute ops wrapped in timers; everything else (memory, glue)
// stays the CPU's own, so the table is complete whatever ops model.h gains.
static model_ops timed_ops_make(void) {
    model_ops o = model_ops_cpu;
    o.name = "cpu+timers";
    o.matmul_fwd = t_matmul_fwd;
    o.matmul_bwd = t_matmul_bwd;
    o.layernorm_fwd = t_layernorm_fwd;
    o.layernorm_bwd = t_layernorm_bwd;
    o.gelu_fwd = t_gelu_fwd;
    o.gelu_bwd = t_gelu_bwd;
    o.matmul_gelu_fwd = t_matmul_gelu_fwd;
    o.matmul_gelu_bwd = t_matmul_gelu_bwd;
    o.add = t_add;
    o.add_layernorm_fwd = t_add_layernorm_fwd;
    o.attention_fwd = t_attention_fwd;
    o.attention_bwd = t_attention_bwd;
    o.xent_fwd = t_xent_fwd;
    o.xent_bwd = t_xent_bwd;
    o.xent_fwd_bwd = t_xent_fwd_bwd;
    return o;
}

// ---------------------------------------------------------------------------------------
// Replays the recorded GEMMs with cblas_sgemm alone (no bias, no model around them). One set
// of buffers serves every call, so operands are somewhat warmer in cache than in the real
// step: if anything that flatters the baseline and makes the step/sgemm ratio conservative.
typedef struct {
    gemm_call *calls;  // the probe's: a timed replay keeps each call's best time in it
    int n;
    double flops;             // FLOPs of one replay
    float *x, *dx, *y, *w, *dw;
} gemm_replay;

static void replay_init(gemm_replay *g, gemm_call *calls, int n) {
    size_t nx = 1, ny = 1, nw = 1;
    g->calls = calls;
    g->n = n;
    g->flops = 0;
    for (int i = 0; i < n; i++) {
        const gemm_call *c = &calls[i];
        size_t N = (size_t)c->N, IC = (size_t)c->IC, OC = (size_t)c->OC;
        if (N * IC > nx) nx = N * IC;
        if (N * OC > ny) ny = N * OC;
        if (OC * IC > nw) nw = OC * IC;
        g->flops += (c->fwd ? 2.0 : (c->has_dinp ? 4.0 : 2.0)) * (double)N * IC * OC;
    }
    g->x = mm_alloc_aligned(nx * sizeof(float));   // inp (N, IC)
    g->dx = mm_alloc_aligned(nx * sizeof(float));  // dinp (N, IC)
    g->y = mm_alloc_aligned(ny * sizeof(float));   // out / dout (N, OC)
    g->w = mm_alloc_aligned(nw * sizeof(float));   // W (OC, IC)
    g->dw = mm_alloc_aligned(nw * sizeof(float));  // dW (OC, IC)
    mm_rng r;
    mm_rng_init(&r, 7, 0);
    for (size_t i = 0; i < nx; i++) g->x[i] = mm_rng_uniform(&r) - 0.5f;
    for (size_t i = 0; i < ny; i++) g->y[i] = mm_rng_uniform(&r) - 0.5f;
    for (size_t i = 0; i < nw; i++) g->w[i] = (mm_rng_uniform(&r) - 0.5f) * 0.05f;
}

// One replay of every recorded call in order; returns its seconds. A timed replay keeps
// each call's best time. ops != 0 replays through the CPU ops table instead of cblas_sgemm
// (no bias, no bias gradient: the same GEMMs), so with the ops' own splitting of each gemm
// among the threads (model/cpu/ops_cpu.c); identical to cblas_sgemm at 1 thread.
static double replay_run(gemm_replay *g, int timed, int ops) {
    const model_ops *o = &model_ops_cpu;
    const mm_backend *be = &mm_backend_cpu;
    double t0 = mm_now();
    for (int i = 0; i < g->n; i++) {
        gemm_call *c = &g->calls[i];
        const double tc = mm_now();
        if (ops && c->fwd) {
            o->matmul_fwd(be, g->y, g->x, g->w, NULL, c->N, c->IC, c->OC);
        } else if (ops) {
            o->matmul_bwd(be, c->has_dinp ? g->dx : NULL, g->dw, NULL, g->y, g->x, g->w, c->N,
                          c->IC, c->OC);
        } else if (c->fwd) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->N, c->OC, c->IC, 1.0f, g->x,
                        c->IC, g->w, c->IC, 0.0f, g->y, c->OC);
        } else {
            if (c->has_dinp)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->N, c->IC, c->OC, 1.0f,
                            g->y, c->OC, g->w, c->IC, 1.0f, g->dx, c->IC);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, c->OC, c->IC, c->N, 1.0f, g->y,
                        c->OC, g->x, c->IC, 1.0f, g->dw, c->IC);
        }
        const double dt = mm_now() - tc;
        if (timed && !ops && dt < c->best_alone) c->best_alone = dt;
    }
    return mm_now() - t0;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void replay_free(gemm_replay *g) {
    free(g->x);
    free(g->dx);
    free(g->y);
    free(g->w);
    free(g->dw);
}

// ---------------------------------------------------------------------------------------
// The other ops alone: the step's attention, LayerNorm and GELU calls (the MLP's GELU inside
// the fused ops included; its backward replayed as gelu_bwd, the same arithmetic) replayed
// with the CPU's own functions on warm buffers right after each GEMM replay. A step made of
// nothing but its GEMMs and these ops, each as fast as alone, would reach
//     ceiling = (step FLOPs / linear FLOPs) * GEMM replay / (GEMM replay + these ops' replay):
// the most the ratio can be with these kernels on this machine. Whatever a change to the
// rest (glue, passes, memory traffic, AdamW) gains, it cannot pass that.
enum { KR_ATTN, KR_GELU, KR_NORM, KR_N };

typedef struct {
    const kern_call *calls;  // the probe's
    int n;
    float *big[5];    // (n_big) each: inputs, outputs and gradients, by role below
    float *small[6];  // (n_small) each: mean, rstd, g, b, dg, db
    uint8_t *valid;   // (n_valid) every key valid, as the bench's inputs have every modality
} kern_replay;

static void kern_replay_init(kern_replay *k, const kern_call *calls, int n) {
    size_t n_big = 1, n_small = 1, n_valid = 1;
    k->calls = calls;
    k->n = n;
    for (int i = 0; i < n; i++) {
        const kern_call *c = &calls[i];
        size_t need = c->n, bt = (size_t)c->B * c->T;
        if (c->op == K_ATTN_FWD || c->op == K_ATTN_BWD) {
            const size_t att = model_ops_cpu.attention_saved(&mm_backend_cpu, c->B, c->NH, c->T);
            need = bt * 3 * c->NH * c->HD > att ? bt * 3 * c->NH * c->HD : att;
            if (bt > n_valid) n_valid = bt;
        } else if (c->op != K_GELU_FWD && c->op != K_GELU_BWD) {
            need = (size_t)c->N * c->C;
            const size_t m = (size_t)(c->N > c->C ? c->N : c->C);
            if (m > n_small) n_small = m;
        }
        if (need > n_big) n_big = need;
    }
    mm_rng r;
    mm_rng_init(&r, 11, 0);
    for (int b = 0; b < 5; b++) {
        k->big[b] = mm_alloc_aligned(n_big * sizeof(float));
        for (size_t i = 0; i < n_big; i++) k->big[b][i] = 2 * mm_rng_uniform(&r) - 1;
    }
    for (int b = 0; b < 6; b++) {
        k->small[b] = mm_alloc_aligned(n_small * sizeof(float));
        for (size_t i = 0; i < n_small; i++) k->small[b][i] = b == 1 ? 1 : 0.5f;  // rstd 1
    }
    k->valid = mm_malloc(n_valid);
    memset(k->valid, 1, n_valid);
}

// One replay of every recorded call in order; t[KR_*] gets each kind's seconds. Outputs
// and accumulated gradients land in buffers nobody reads back; the forward calls write the
// saved statistics and probabilities that the backward calls after them read.
static void kern_replay_run(const kern_replay *k, double t[KR_N]) {
    const model_ops *o = &model_ops_cpu;
    const mm_backend *be = &mm_backend_cpu;
    const model_drop none = {0};
    float *out = k->big[0], *saved = k->big[1], *in = k->big[2], *grad = k->big[3],
          *dout = k->big[4];
    float *mean = k->small[0], *rstd = k->small[1], *g = k->small[2], *b = k->small[3],
          *dg = k->small[4], *db = k->small[5];
    for (int j = 0; j < KR_N; j++) t[j] = 0;
    for (int i = 0; i < k->n; i++) {
        const kern_call *c = &k->calls[i];
        const double t0 = mm_now();
        int kind = KR_NORM;
        switch (c->op) {
            case K_ATTN_FWD:
                o->attention_fwd(be, out, saved, in, k->valid, c->B, c->T, c->P, c->NH, c->HD,
                                 &none);
                kind = KR_ATTN;
                break;
            case K_ATTN_BWD:
                o->attention_bwd(be, grad, dout, in, out, saved, c->B, c->T, c->P, c->NH, c->HD,
                                 &none);
                kind = KR_ATTN;
                break;
            case K_NORM_FWD:
                o->layernorm_fwd(be, out, mean, rstd, in, g, b, c->N, c->C);
                break;
            case K_ADD_NORM_FWD:
                o->add_layernorm_fwd(be, grad, out, mean, rstd, in, dout, g, b, c->N, c->C);
                break;
            case K_NORM_BWD:
                o->layernorm_bwd(be, grad, dg, db, dout, in, g, mean, rstd, c->N, c->C);
                break;
            case K_GELU_FWD:
                o->gelu_fwd(be, out, in, c->n);
                kind = KR_GELU;
                break;
            case K_GELU_BWD:
                o->gelu_bwd(be, grad, in, dout, c->n);
                kind = KR_GELU;
                break;
        }
        t[kind] += mm_now() - t0;
    }
}

static void kern_replay_free(kern_replay *k) {
    for (int b = 0; b < 5; b++) free(k->big[b]);
    for (int b = 0; b < 6; b++) free(k->small[b]);
    free(k->valid);
}

// ---------------------------------------------------------------------------------------
static const char *base_name(const char *path, char *buf, size_t n) {
    const char *s = strrchr(path, '/');
    snprintf(buf, n, "%s", s ? s + 1 : path);
    char *dot = strrchr(buf, '.');
    if (dot && (strcmp(dot, ".yaml") == 0 || strcmp(dot, ".yml") == 0)) *dot = '\0';
    return buf;
}

static const mm_cli_opt bench_opts[] = {
    {"--threads", "N", "OpenMP/OpenBLAS threads, 1..4096 (run.threads, else the cores)"},
    {"--warmup", "N", "untimed steps first, 1..100000 (2)"},
    {"--steps", "N", "timed steps, 1..100000 (10)"},
    {"--schema", "NAME", "the data shapes of this table entry (default: the config's name)"},
    {"--shapes-only", NULL, "print the SHAPES line and stop"},
    {NULL, NULL, NULL}};
static const mm_cli_cmd bench_cli = {
    .prog = "bench_model",
    .synopsis = "CONFIG.yaml [options] [section.key=value ...]",
    .about =
        "  Times the CPU backend's training step for CONFIG against the BLAS alone on the\n"
        "  same matrix shapes (make bench; tests/bench/run.sh).\n",
    .opts = bench_opts};

static int bench_usage_error(const mm_err *err) {
    fprintf(stderr, "error: %s\n", err->msg);
    return 2;
}

int main(int argc, char **argv) {
    mm_blas_pick_kernels(argv);  // the kernels the trainer runs (model/cpu/blas_cpu.c)
    int threads = 0, warmup = 2, steps = 10, shapes_only = 0;
    const char *schema_name = NULL;
    int n_pos = 0;  // CONFIG.yaml and the overrides, moved to argv[1 ..] as getopt would
    mm_err err;
    if (mm_cli_wants_help(&bench_cli, argc - 1, argv + 1)) {
        mm_cli_usage(&bench_cli, stdout);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        if (argv[i][0] != '-') {
            argv[1 + n_pos++] = argv[i];
            continue;
        }
        const char *v;
        const mm_cli_opt *o = mm_cli_next(&bench_cli, argc, argv, &i, &v, &err);
        if (!o) return bench_usage_error(&err);
        if (strcmp(o->name, "--schema") == 0)
            schema_name = v;
        else if (strcmp(o->name, "--shapes-only") == 0)
            shapes_only = 1;
        else {
            char *end;
            long x = strtol(v, &end, 10);
            long hi = o->name[2] == 't' ? 4096 : 100000;
            if (end == v || *end || x < 1 || x > hi) {
                mm_cli_fail(&bench_cli, &err, "%s '%s': expected an integer in [1, %ld]", o->name,
                            v, hi);
                return bench_usage_error(&err);
            }
            if (o->name[2] == 't')
                threads = (int)x;
            else if (o->name[2] == 'w')
                warmup = (int)x;
            else
                steps = (int)x;
        }
    }
    if (n_pos == 0) {
        mm_cli_fail(&bench_cli, &err, "no config file given");
        return bench_usage_error(&err);
    }
    mm_config c;
    mm_config_default(&c);
    const char *cfg_path = argv[1];
    if (mm_config_load(&c, cfg_path, n_pos - 1, argv + 2, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    char nbuf[256];
    const char *name = base_name(cfg_path, nbuf, sizeof(nbuf));
    if (!schema_name) schema_name = name;
    const bench_schema *sc = NULL;
    for (size_t i = 0; i < sizeof(schemas) / sizeof(schemas[0]); i++)
        if (strcmp(schemas[i].name, schema_name) == 0) sc = &schemas[i];
    if (!sc) {
        fprintf(stderr, "error: no bench schema named '%s' (known: bench_small, bench_large; "
                        "pass --schema)\n", schema_name);
        return 1;
    }
    if (threads == 0) threads = c.run.threads > 0 ? c.run.threads : omp_get_num_procs();
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);

    const int B = c.data.micro_batch;
    model_config mc = {
        .d_model = c.model.d_model, .n_layers = c.model.n_layers, .n_heads = c.model.n_heads,
        .d_ff = c.model.d_ff ? c.model.d_ff : 4 * c.model.d_model, .vocab = DATA_VOCAB,
        .text_T = sc->text_T, .img_h = sc->img_h, .img_w = sc->img_w, .img_c = sc->img_c,
        .patch = c.model.patch, .audio_F = sc->audio_F, .n_mels = c.data.n_mels,
        .audio_group = c.model.audio_group, .tp = 1, .tp_rank = 0};
    const int n_img = (mc.img_h / mc.patch) * (mc.img_w / mc.patch);
    const int n_aud = mc.audio_F / mc.audio_group;
    const int T = n_img + n_aud + mc.text_T;

    // Everything torch_ref.py needs to build the same model and batch.
    printf("SHAPES {\"config\": \"%s\", \"B\": %d, \"T\": %d, \"d_model\": %d, \"n_layers\": %d, "
           "\"n_heads\": %d, \"d_ff\": %d, \"vocab\": %d, \"text_T\": %d, \"img_h\": %d, "
           "\"img_w\": %d, \"img_c\": %d, \"patch\": %d, \"audio_F\": %d, \"n_mels\": %d, "
           "\"audio_group\": %d, \"lr\": %g, \"weight_decay\": %g, \"beta1\": %g, "
           "\"beta2\": %g, \"eps\": %g, \"grad_clip\": %g}\n",
           name, B, T, mc.d_model, mc.n_layers, mc.n_heads, mc.d_ff, mc.vocab, mc.text_T,
           mc.img_h, mc.img_w, mc.img_c, mc.patch, mc.audio_F, mc.n_mels, mc.audio_group,
           c.optim.lr, c.optim.weight_decay, c.optim.beta1, c.optim.beta2, c.optim.eps,
           c.optim.grad_clip);
    fflush(stdout);
    if (shapes_only) return 0;

    model *md;
    const model_ops timed_ops = timed_ops_make();  // outlives md: freed below, in this scope
    mm_backend timed = mm_backend_cpu;             // the CPU backend with those ops
    timed.ops = &timed_ops;
    if (model_create(&md, &mc, &timed, B, c.run.seed, &err) != 0) {
        fprintf(stderr, "error: %s: %s\n", cfg_path, err.msg);
        return 1;
    }
    MM_CHECK(model_seq_len(md) == T, "seq_len %d, expected %d", model_seq_len(md), T);

    // Synthetic micro-batch: the model sees realistic value ranges, no dataset is needed.
    mm_rng r;
    mm_rng_init(&r, c.run.seed, 99);
    const size_t n_image = (size_t)B * mc.img_h * mc.img_w * mc.img_c;
    const size_t n_audio = (size_t)B * mc.audio_F * mc.n_mels;
    const size_t n_text = (size_t)B * mc.text_T;
    float *image = mm_malloc(n_image * sizeof(float));
    float *audio = mm_malloc(n_audio * sizeof(float));
    int32_t *tokens = mm_malloc(n_text * sizeof(int32_t));
    int32_t *targets = mm_malloc(n_text * sizeof(int32_t));
    uint8_t *has = mm_malloc((size_t)B);
    for (size_t i = 0; i < n_image; i++) image[i] = 2.0f * mm_rng_uniform(&r) - 1.0f;
    for (size_t i = 0; i < n_audio; i++) audio[i] = mm_rng_normal(&r);
    for (int b = 0; b < B; b++) {
        has[b] = 1;
        int32_t *tk = tokens + (size_t)b * mc.text_T, *tg = targets + (size_t)b * mc.text_T;
        tk[0] = DATA_TOK_BOS;
        for (int j = 1; j < mc.text_T; j++) tk[j] = tg[j - 1] = (int32_t)mm_rng_below(&r, 256);
        tg[mc.text_T - 1] = DATA_TOK_EOS;
    }
    // the classifier's gradient in the forward, as train/ computes it (loss_scale 1/B)
    model_input in = {.B = B, .image = image, .has_image = has, .audio = audio,
                      .has_audio = has, .tokens = tokens, .targets = targets,
                      .loss_scale = (mm_real)(1.0 / B)};

    const size_t np = model_n_params(md);
    const optim_cfg oc = {.lr = c.optim.lr, .min_lr = c.optim.lr, .warmup = 0, .total = 1,
                          .beta1 = c.optim.beta1, .beta2 = c.optim.beta2, .eps = c.optim.eps,
                          .weight_decay = c.optim.weight_decay, .grad_clip = c.optim.grad_clip};
    optim opt;
    optim_init(&opt, &oc, model_tensors(md), model_n_tensors(md), 0, np);
    // Timed steps and sgemm replays alternate, so that whatever else the machine is doing
    // meets both alike. Interference only ever slows a run down, so the best step and the
    // best replay are the reproducible numbers; the mean step time is reported too.
    gemm_replay rp = {0};
    kern_replay kr = {0};
    double t_kern = INFINITY, t_kern_kind[KR_N] = {0};  // the best replay of the other ops
    double first_loss = NAN, last_loss = NAN, t_steps = 0, t_best = INFINITY;
    double t_gemm = INFINITY, t_gemm_ops = INFINITY, t_op[OP_N] = {0};
    double *pair = mm_malloc((size_t)steps * sizeof(double));  // replay / step, per timed step
    int n_pair = 0;
    for (int s = 0; s < warmup + steps; s++) {
        const int timed = s >= warmup;
        probe.recording = s == 0;
        probe.timing = timed;
        probe.next = 0;
        memset(probe.t, 0, sizeof(probe.t));
        double t0 = mm_now();
        model_zero_grad(md);
        int n_scored = 0;
        double loss = model_forward(md, &in, &n_scored) / B;
        model_backward(md, &in, in.loss_scale);
        double scale = 1.0;
        if (oc.grad_clip > 0) {
            double sh, rep;
            optim_sumsq(&opt, model_grads(md), &sh, &rep);
            double norm = sqrt(sh + rep);
            if (norm > oc.grad_clip) scale = oc.grad_clip / norm;
        }
        optim_adamw(&opt, model_params(md), model_grads(md), s + 1, oc.lr, scale);
        double dt = mm_now() - t0;
        MM_CHECK(isfinite(loss), "loss is %g at step %d", loss, s);
        if (s == 0) {
            first_loss = loss;
            probe.recording = 0;
            replay_init(&rp, probe.calls, probe.n_calls);
            kern_replay_init(&kr, probe.kern, probe.n_kern);
        }
        last_loss = loss;
        double dg = replay_run(&rp, timed, 0);  // warmup replays only warm up
        // at 1 thread the ops make the same single call: no second replay (its noise alone
        // would move the ceiling)
        double dg_ops = threads > 1 ? replay_run(&rp, 0, 1) : dg;
        double tk[KR_N];
        kern_replay_run(&kr, tk);
        if (timed && tk[KR_ATTN] + tk[KR_GELU] + tk[KR_NORM] < t_kern) {
            t_kern = tk[KR_ATTN] + tk[KR_GELU] + tk[KR_NORM];
            memcpy(t_kern_kind, tk, sizeof(tk));
        }
        if (timed) {
            t_steps += dt;
            if (dt < t_best) t_best = dt;
            if (dg < t_gemm) t_gemm = dg;
            if (dg_ops < t_gemm_ops) t_gemm_ops = dg_ops;
            pair[n_pair++] = dg / dt;
            for (int k = 0; k < OP_N; k++) t_op[k] += probe.t[k];
        }
    }
    const double lin_flops = rp.flops;
    const double step = t_best, step_mean = t_steps / steps;
    const double step_flops = model_flops_per_sample(md) * B;
    const double tok_s = (double)B * T / step;
    const double step_gflops = step_flops / step * 1e-9;
    const double gemm_gflops = lin_flops / t_gemm * 1e-9;
    // The same ratio step by step: each step against the replay that ran right after it, so
    // that both met the same machine; the median over the timed steps. Best step over best
    // replay takes two extremes that may come from different minutes of a shared machine's
    // load (their ratio moved by 0.1 between runs on the 2-core VM); adjacent pairs do not.
    qsort(pair, (size_t)n_pair, sizeof(double), cmp_double);
    const double to_ratio = step_flops / lin_flops;  // replay time / step time -> the ratio
    const double pair_med =
        (n_pair % 2 ? pair[n_pair / 2] : (pair[n_pair / 2 - 1] + pair[n_pair / 2]) / 2) * to_ratio;
    double t_ops = 0;
    for (int k = 0; k < OP_N; k++) t_ops += t_op[k];
    const double gemm_ops_gflops = lin_flops / t_gemm_ops * 1e-9;
    const double t_gemm_fast = t_gemm_ops < t_gemm ? t_gemm_ops : t_gemm;
    // the ratio (against the cblas_sgemm replay) of a step of the faster GEMMs and the kernels
    const double ceiling = to_ratio * t_gemm / (t_gemm_fast + t_kern);
    // The plain matmul ops (not the GELU-fused ones) call by call: best time in a step
    // against the same call's best replay. What the step's GEMMs lose to colder operands
    // (and the bias pass, the bias gradient) shows here, apart from the other ops' time.
    double mm_step = 0, mm_alone = 0;
    for (int i = 0; i < probe.n_calls; i++)
        if (!probe.calls[i].fused) {
            mm_step += probe.calls[i].best_step;
            mm_alone += probe.calls[i].best_alone;
        }

    printf("%s: %d threads, B=%d T=%d d_model=%d layers=%d heads=%d, %zu params, "
           "%d GEMM calls/step, OpenBLAS %s kernels\n", name, threads, B, T, mc.d_model,
           mc.n_layers, mc.n_heads, np, probe.n_calls, openblas_get_corename());
    printf("  loss %.4f -> %.4f over %d steps\n", first_loss, last_loss, warmup + steps);
    printf("  best of %d steps: %.0f tokens/s, %.2f ms/step (mean %.2f), step %.1f GFLOP/s "
           "(%.3f GFLOP)\n", steps, tok_s, step * 1e3, step_mean * 1e3, step_gflops,
           step_flops * 1e-9);
    printf("  sgemm alone: %.1f GFLOP/s on the step's %.3f GFLOP of linear GEMMs (%.2f ms = "
           "%.0f%% of the step) -> step/sgemm ratio %.2f\n", gemm_gflops, lin_flops * 1e-9,
           t_gemm * 1e3, 100 * t_gemm / step, step_gflops / gemm_gflops);
    printf("  paired: step/sgemm ratio %.2f, the median over %d steps of each step against the "
           "replay right after it (quartiles %.2f, %.2f)\n", pair_med, n_pair,
           pair[n_pair / 4] * to_ratio, pair[3 * n_pair / 4] * to_ratio);
    if (threads > 1)
        printf("  the same GEMMs through the ops, each split among the threads as the ops split "
               "it: %.1f GFLOP/s (%.2f ms) -> step/that ratio %.2f\n", gemm_ops_gflops,
               t_gemm_ops * 1e3, step_gflops / gemm_ops_gflops);
    printf("  plain matmul ops, best per call: %.2f ms in the step, %.2f ms replayed alone "
           "(x%.2f: bias pass, bias gradient, colder operands, and the ops' gemm splitting)\n",
           mm_step * 1e3, mm_alone * 1e3, mm_step / mm_alone);
    printf("  other ops alone on warm buffers (best replay): attention %.2f ms, GELU %.2f ms, "
           "LayerNorm %.2f ms -> with only these and the GEMMs (the faster replay), each as fast "
           "as alone, the ratio could reach %.2f at most\n", t_kern_kind[KR_ATTN] * 1e3,
           t_kern_kind[KR_GELU] * 1e3, t_kern_kind[KR_NORM] * 1e3, ceiling);
    printf("  time share:");
    for (int k = 0; k < OP_N; k++) printf(" %s %.1f%%", op_names[k], 100 * t_op[k] / t_steps);
    printf(" | outside ops (glue + AdamW) %.1f%%\n", 100 * (t_steps - t_ops) / t_steps);
    printf("BENCH {\"config\": \"%s\", \"threads\": %d, \"B\": %d, \"T\": %d, \"steps\": %d, "
           "\"tokens_per_s\": %.1f, \"ms_per_step\": %.3f, \"ms_per_step_mean\": %.3f, "
           "\"sgemm_share\": %.4f, \"fc_gelu_share\": %.4f, \"attn_share\": %.4f, "
           "\"other_ops_share\": %.4f, "
           "\"outside_ops_share\": %.4f, \"step_gflops\": %.2f, \"sgemm_gflops\": %.2f, "
           "\"ratio_vs_sgemm\": %.4f, \"sgemm_time_over_step\": %.4f, \"loss_first\": %.4f, "
           "\"loss_last\": %.4f, \"matmul_step_over_alone\": %.4f, \"ratio_paired\": %.4f, "
           "\"other_ops_alone_ms\": %.3f, \"ratio_ceiling\": %.4f, \"ops_gemm_gflops\": %.2f, "
           "\"ratio_vs_ops_gemm\": %.4f, \"blas_kernels\": \"%s\"}\n",
           name, threads, B, T, steps, tok_s, step * 1e3, step_mean * 1e3,
           t_op[OP_MATMUL] / t_steps, t_op[OP_FCGELU] / t_steps, t_op[OP_ATTN] / t_steps,
           (t_ops - t_op[OP_MATMUL] - t_op[OP_FCGELU] - t_op[OP_ATTN]) / t_steps,
           (t_steps - t_ops) / t_steps,
           step_gflops, gemm_gflops, step_gflops / gemm_gflops, t_gemm / step,
           first_loss, last_loss, mm_step / mm_alone, pair_med, t_kern * 1e3, ceiling,
           gemm_ops_gflops, step_gflops / gemm_ops_gflops, openblas_get_corename());

    free(pair);
    replay_free(&rp);
    kern_replay_free(&kr);
    free(probe.calls);
    free(probe.kern);
    optim_free(&opt);
    free(image);
    free(audio);
    free(tokens);
    free(targets);
    free(has);
    model_free(md);
    return 0;
}
