// bench_train_cuda.c: training throughput of the transformer on the GPU through the model
// API directly: full steps (zero grads, forward with loss, backward, gradient norm, AdamW)
// on random tokens at GPT-2-small size (12 layers, d 768, 12 heads, d_ff 3072, vocabulary
// padded to 50304 as llm.c does, 1024 positions = 1 image patch + 1 audio token + 1022 text
// tokens). It exists because the synthetic dataset's captions are 48 bytes long, far from
// T = 1024; the trainer's own overhead per step (loader, staging, metrics) is measured by
// tests/gpu/run.sh's tiny runs instead. Prints tokens/s and MFU = model FLOPs/s / the card's
// bf16 dense peak (989.4 TFLOP/s for H100 SXM and H200; other cards: MFU not printed), with
// model FLOPs = model_flops_per_sample (6 * matmul MACs per token + 12 * L * T^2 * d
// attention, the PaLM / llm.c convention).
//
// Where the time goes: every timed step brackets forward, backward and the
// optimizer (gradient norm + AdamW) with cudaEvents on the compute stream; one more step runs
// with every op bracketed by events too and sums them by kind (matmul, attention,
// cross-entropy, the rest), printed as a table after the result line.
// Memory: the device memory the run allocated (cudaMemGetInfo before model_create and after
// the steps: nothing is freed in between, so it is the peak of our buffers, cuBLAS's workspace
// included) next to train/memory.c's estimate of the same parts, for a recompute setting.
//   build-cuda/tests/gpu/bench_train_cuda [fp32|bf16 (bf16)] [B (8)] [steps (10)]
//       [none|attention|block (none): model.recompute]
//   build-cuda/tests/gpu/bench_train_cuda dit [fp32|bf16 (bf16)] [B (32)] [steps (10)]: the
//   DiT-S/2-sized diffusion model (bench_dit below)
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../model/cuda/cuda.h"
#include "../../model/model.h"
#include "../../train/memory.h"

// ---------------------------------------------------------------------------------------
// per-op profile: the model runs on a timed copy of the CUDA backend object whose ops table
// is model_ops_cuda with wrappers that, while the profiler is on, record an event pair around
// the real op on the compute stream. The copy is the first member of the profiler, so a
// wrapper casts the backend it is called with back to its profiler; the real op gets that
// same backend (its ctx is the CUDA backend's context, so it runs on the same stream).

enum { K_MATMUL, K_ATTN, K_XENT, K_OTHER, K_N };
static const char *const kind_name[K_N] = {"matmul (cuBLAS)", "attention", "cross-entropy",
                                           "other ops"};
enum { PROF_MAX = 4096 };  // op calls of one step (GPT-2 small: ~300)

typedef struct {
    mm_backend be;  // first: the CUDA backend's object, .ops = the wrapped table
    int on;
    int n;                       // calls recorded this step
    cudaStream_t stream;
    cudaEvent_t ev[2 * PROF_MAX];  // (start, end) per call, created once
    int kind[PROF_MAX];
} profiler;

// The profiler whose timed backend the model called an op with.
static profiler *prof_of(const mm_backend *be) {
    return (profiler *)be;
}

static void ck(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        fprintf(stderr, "bench_train_cuda: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

static int prof_begin(profiler *p, int kind) {
    if (!p->on || p->n >= PROF_MAX) return -1;
    const int i = p->n++;
    p->kind[i] = kind;
    ck(cudaEventRecord(p->ev[2 * i], p->stream), "event");
    return i;
}
static void prof_end(profiler *p, int i) {
    if (i >= 0) ck(cudaEventRecord(p->ev[2 * i + 1], p->stream), "event");
}
#define TIMED(be, kind, call)                \
    do {                                     \
        profiler *p_ = prof_of(be);          \
        const int i_ = prof_begin(p_, kind); \
        call;                                \
        prof_end(p_, i_);                    \
    } while (0)

static void p_matmul_fwd(const mm_backend *be, float *out, const float *inp, const float *w,
                         const float *bias, int N, int IC, int OC) {
    TIMED(be, K_MATMUL, model_ops_cuda.matmul_fwd(be, out, inp, w, bias, N, IC, OC));
}
static void p_matmul_bwd(const mm_backend *be, float *dinp, float *dw, float *dbias,
                         const float *dout, const float *inp, const float *w, int N, int IC,
                         int OC) {
    TIMED(be, K_MATMUL, model_ops_cuda.matmul_bwd(be, dinp, dw, dbias, dout, inp, w, N, IC, OC));
}
static void p_layernorm_fwd(const mm_backend *be, float *out, float *mean, float *rstd,
                            const float *x, const float *g, const float *b, int N, int C) {
    TIMED(be, K_OTHER, model_ops_cuda.layernorm_fwd(be, out, mean, rstd, x, g, b, N, C));
}
static void p_layernorm_bwd(const mm_backend *be, float *dx, float *dg, float *db,
                            const float *dout, const float *x, const float *g, const float *mean,
                            const float *rstd, int N, int C) {
    TIMED(be, K_OTHER, model_ops_cuda.layernorm_bwd(be, dx, dg, db, dout, x, g, mean, rstd, N, C));
}
// counted as a matmul: in bf16 the GELU is the GEMM's epilogue
static void p_matmul_gelu_fwd(const mm_backend *be, float *pre, float *out, const float *inp,
                              const float *w, const float *bias, int N, int IC, int OC) {
    TIMED(be, K_MATMUL, model_ops_cuda.matmul_gelu_fwd(be, pre, out, inp, w, bias, N, IC, OC));
}
static void p_matmul_gelu_bwd(const mm_backend *be, float *dpre, float *dact, float *dw,
                              float *dbias, const float *dout, const float *act, const float *pre,
                              const float *w, int N, int IC, int OC) {
    TIMED(be, K_MATMUL, model_ops_cuda.matmul_gelu_bwd(be, dpre, dact, dw, dbias, dout, act, pre,
                                                       w, N, IC, OC));
}
static void p_gelu_fwd(const mm_backend *be, float *out, const float *x, size_t n) {
    TIMED(be, K_OTHER, model_ops_cuda.gelu_fwd(be, out, x, n));
}
static void p_gelu_bwd(const mm_backend *be, float *dx, const float *x, const float *dout,
                       size_t n) {
    TIMED(be, K_OTHER, model_ops_cuda.gelu_bwd(be, dx, x, dout, n));
}
static void p_add_layernorm_fwd(const mm_backend *be, float *res, float *out, float *mean,
                                float *rstd, const float *a, const float *b, const float *g,
                                const float *beta, int N, int C) {
    TIMED(be, K_OTHER,
          model_ops_cuda.add_layernorm_fwd(be, res, out, mean, rstd, a, b, g, beta, N, C));
}
static void p_add(const mm_backend *be, float *out, const float *a, const float *b, size_t n) {
    TIMED(be, K_OTHER, model_ops_cuda.add(be, out, a, b, n));
}
static void p_attention_fwd(const mm_backend *be, float *out, float *att, const float *qkv,
                            const uint8_t *key_valid, int B, int T, int P, int NH, int HD,
                            const model_drop *drop) {
    TIMED(be, K_ATTN,
          model_ops_cuda.attention_fwd(be, out, att, qkv, key_valid, B, T, P, NH, HD, drop));
}
static void p_attention_bwd(const mm_backend *be, float *dqkv, const float *dout, const float *qkv,
                            const float *out, const float *att, int B, int T, int P, int NH, int HD,
                            const model_drop *drop) {
    TIMED(be, K_ATTN,
          model_ops_cuda.attention_bwd(be, dqkv, dout, qkv, out, att, B, T, P, NH, HD, drop));
}
static void p_xent_fwd(const mm_backend *be, float *loss, float *saved, const float *logits,
                       const int32_t *targets, int N, int V, mm_real eps) {
    TIMED(be, K_XENT, model_ops_cuda.xent_fwd(be, loss, saved, logits, targets, N, V, eps));
}
static void p_xent_fwd_bwd(const mm_backend *be, float *loss, float *logits,
                           const int32_t *targets, const float *dloss, int N, int V, float eps) {
    TIMED(be, K_XENT, model_ops_cuda.xent_fwd_bwd(be, loss, logits, targets, dloss, N, V, eps));
}
static void p_xent_bwd(const mm_backend *be, float *dlogits, const float *logits,
                       const float *saved, const int32_t *targets, const float *dloss, int N, int V,
                       mm_real eps) {
    TIMED(be, K_XENT,
          model_ops_cuda.xent_bwd(be, dlogits, logits, saved, targets, dloss, N, V, eps));
}

// Sums the recorded calls by kind (ms); waits for them.
static void prof_collect(const profiler *p, double ms[K_N], int *calls) {
    for (int k = 0; k < K_N; k++) ms[k] = 0;
    ck(cudaStreamSynchronize(p->stream), "sync");
    for (int i = 0; i < p->n; i++) {
        float t = 0;
        ck(cudaEventElapsedTime(&t, p->ev[2 * i], p->ev[2 * i + 1]), "event time");
        ms[p->kind[i]] += t;
    }
    *calls = p->n;
}

// One training step; ev (4) when not NULL: recorded before forward, before backward, before
// the optimizer and at the end. Returns the loss.
static double step(model *m, const model_input *in, cuda_ctx *ctx, cuda_plan *plan, float *mom,
                   float *vel, int s, int B, cudaEvent_t *ev) {
    if (ev) ck(cudaEventRecord(ev[0], ctx->stream), "event");
    model_zero_grad(m);
    const double loss = model_forward(m, in, NULL) / B;
    if (ev) ck(cudaEventRecord(ev[1], ctx->stream), "event");
    model_backward(m, in, in->loss_scale);
    if (ev) ck(cudaEventRecord(ev[2], ctx->stream), "event");
    double ss[2];
    cuda_sumsq(ctx, plan, model_grads(m), &ss[0], &ss[1]);
    cuda_adamw(ctx, plan, model_params(m), model_grads(m), mom, vel, s + 1, 6e-4, 0.9, 0.95, 1e-8,
               0.1, 1.0);
    if (ev) ck(cudaEventRecord(ev[3], ctx->stream), "event");
    cuda_ctx_sync(ctx);
    return loss;
}

// ---------------------------------------------------------------------------------------
// the diffusion model: `bench_train_cuda dit [fp32|bf16 (bf16)] [B (32)] [steps (10)]`.
// DiT-S/2-sized: d 384, 12 blocks, 6 heads, d_ff 1536, 2x2 patches over a 32x32x4 latent-sized
// input (N = 256 tokens, as DiT-S/2 on 256px images through the SD VAE), conditioned through
// cross-attention on 49 caption tokens and 30 audio tokens (61 log-mel frames of 32 bands in
// pairs) with 4-block encoders, as configs/dit_s2_gpu.yaml. A step = zero grads, forward with
// the MSE loss, backward, gradient norm, AdamW and the EMA update, on fixed random pairs
// (uploaded once). images/s and MFU against the bf16 dense peak with model FLOPs =
// dit_flops_per_sample (model/diffusion.c: 6 * matmul MACs of every trained matmul, 4 * for
// the three without an input gradient, 12 * Tq * Tk * d per attention, encoders included).
static int bench_dit(int argc, char **argv) {
    const char *prec_s = argc > 1 ? argv[1] : "bf16";
    const int B = argc > 2 ? atoi(argv[2]) : 32, steps = argc > 3 ? atoi(argv[3]) : 10;
    mm_err err;
    const mm_backend *be = NULL;
    if (B < 1 || steps < 1 || mm_backend_create(&be, "cuda", prec_s, 1, 0, &err) != 0) {
        fprintf(stderr, "bench_train_cuda dit: %s\n",
                B < 1 || steps < 1 ? "bad B or steps" : err.msg);
        return 1;
    }
    cuda_ctx *ctx = (cuda_ctx *)be->ctx;
    const dit_config dc = {.d_model = 384, .n_layers = 12, .n_heads = 6, .d_ff = 1536,
                           .img_h = 32, .img_w = 32, .img_c = 4, .patch = 2, .vocab = 259,
                           .text_T = 49, .audio_F = 61, .n_mels = 32, .audio_group = 2,
                           .enc_layers = 4, .pool_cond = 0, .tp = 1, .tp_rank = 0};
    dit *m = NULL;
    if (dit_create(&m, &dc, be, B, 1, &err) != 0) {
        fprintf(stderr, "bench_train_cuda dit: %s\n", err.msg);
        mm_backend_free(be);
        return 1;
    }
    mm_rng rng;
    mm_rng_init(&rng, 7, 0);
    const size_t npix = (size_t)B * 32 * 32 * 4, na = (size_t)B * 61 * 32, nt = (size_t)B * 49;
    float *hx = malloc(npix * 4), *hy = malloc(npix * 4), *ha = malloc(na * 4),
          *ht = malloc((size_t)B * 4);
    int32_t *htok = malloc(nt * 4);
    uint8_t *hones = malloc((size_t)B);
    for (size_t i = 0; i < npix; i++) hx[i] = mm_rng_normal(&rng), hy[i] = mm_rng_normal(&rng);
    for (size_t i = 0; i < na; i++) ha[i] = (float)(2 * mm_rng_uniform(&rng) - 1);
    for (size_t i = 0; i < nt; i++) htok[i] = (int32_t)mm_rng_below(&rng, 256);
    for (int b = 0; b < B; b++) ht[b] = mm_rng_uniform(&rng);
    memset(hones, 1, (size_t)B);
    float *x = cuda_alloc(ctx, npix * 4), *y = cuda_alloc(ctx, npix * 4),
          *aud = cuda_alloc(ctx, na * 4), *tt = cuda_alloc(ctx, (size_t)B * 4);
    int32_t *tok = cuda_alloc(ctx, nt * 4);
    uint8_t *ones = cuda_alloc(ctx, (size_t)B);
    cuda_upload(ctx, x, hx, npix * 4);
    cuda_upload(ctx, y, hy, npix * 4);
    cuda_upload(ctx, aud, ha, na * 4);
    cuda_upload(ctx, tt, ht, (size_t)B * 4);
    cuda_upload(ctx, tok, htok, nt * 4);
    cuda_upload(ctx, ones, hones, (size_t)B);
    dit_input in = {.B = B, .x_t = x, .t = tt, .tokens = tok, .has_text = ones, .audio = aud,
                    .has_audio = ones, .target = y};
    const int nts = dit_n_tensors(m);
    const model_tensor *ts = dit_tensors(m);
    cuda_seg *seg = calloc((size_t)nts, sizeof(cuda_seg));
    for (int i = 0; i < nts; i++)
        seg[i] = (cuda_seg){.offset = ts[i].offset,
                            .size = ts[i].size,
                            .decay = ts[i].decay ? 1.0f : 0.0f,
                            .lr_mult = 1.0f,
                            .group = ts[i].group};
    const size_t np = dit_n_params(m);
    cuda_plan plan;
    cuda_plan_init(&plan, ctx, seg, nts, 0, np);
    float *mom = cuda_alloc(ctx, np * 4), *vel = cuda_alloc(ctx, np * 4),
          *ema = cuda_alloc(ctx, np * 4);
    cuda_copy(ctx, ema, dit_params(m), np * 4);
    printf(
        "bench_train_cuda: %s, DiT-S/2-sized generator: %zu parameters, B %d x N 256 "
        "(32x32x4, patch 2), %s\n",
        ctx->device_name, np, B, cuda_precision_name(ctx->precision));
    double t_sum = 0;
    int timed = 0;
    for (int s = 0; s < steps + 2; s++) {  // 2 warm-up steps
        double t0 = mm_now();
        dit_zero_grad(m);
        const double loss = dit_forward(m, &in) / B;
        dit_backward(m, &in, (mm_real)(1.0 / B));
        double ss[2];
        cuda_sumsq(ctx, &plan, dit_grads(m), &ss[0], &ss[1]);
        cuda_adamw(ctx, &plan, dit_params(m), dit_grads(m), mom, vel, s + 1, 1e-4, 0.9, 0.999, 1e-8,
                   0.0, 1.0);
        cuda_ema(ctx, ema, dit_params(m), np, 0.9999f);
        cuda_ctx_sync(ctx);
        double dt = mm_now() - t0;
        if (s >= 2) t_sum += dt, timed++;
        printf("step %2d: loss %.4f, %.1f ms\n", s + 1, loss, 1e3 * dt);
    }
    const double per = t_sum / timed, flops = dit_flops_per_sample(m) * B / per;
    const int known = strstr(ctx->device_name, "H100") || strstr(ctx->device_name, "H200");
    printf("RESULT diffusion %s: %.1f images/s, %.1f ms/step, %.1f TFLOP/s model "
           "(%.2f GFLOP/image fwd+bwd)", prec_s, B / per, 1e3 * per, flops / 1e12,
           dit_flops_per_sample(m) / 1e9);
    if (known) printf(", MFU %.1f%% of 989.4 TFLOP/s bf16 dense peak", 100 * flops / 989.4e12);
    else printf(", MFU: peak of this card unknown");
    printf("\n");
    cuda_plan_free(&plan);
    void *d[] = {mom, vel, ema, x, y, aud, tt, tok, ones};
    for (int i = 0; i < 9; i++) cuda_free(d[i]);
    dit_free(m);
    mm_backend_free(be);
    free(seg);
    free(hx);
    free(hy);
    free(ha);
    free(ht);
    free(htok);
    free(hones);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "dit") == 0) return bench_dit(argc - 1, argv + 1);
    const char *prec_s = argc > 1 ? argv[1] : "bf16";
    const int B = argc > 2 ? atoi(argv[2]) : 8, steps = argc > 3 ? atoi(argv[3]) : 10;
    const char *rc_s = argc > 4 ? argv[4] : "none";
    if (strcmp(rc_s, "none") && strcmp(rc_s, "attention") && strcmp(rc_s, "block")) {
        fprintf(stderr, "bench_train_cuda: recompute '%s' is not none, attention or block\n", rc_s);
        return 1;
    }
    mm_err err;
    const mm_backend *be = NULL;
    if (B < 1 || steps < 1 || mm_backend_create(&be, "cuda", prec_s, 1, 0, &err) != 0) {
        fprintf(stderr, "bench_train_cuda: %s\n", B < 1 || steps < 1 ? "bad B or steps" : err.msg);
        return 1;
    }
    cuda_ctx *ctx = (cuda_ctx *)be->ctx;
    size_t free0 = 0, total = 0;
    ck(cudaMemGetInfo(&free0, &total), "cudaMemGetInfo");
    const int Tt = 1022, V = 50304;
    model_config mc = {.d_model = 768,
                       .n_layers = 12,
                       .n_heads = 12,
                       .d_ff = 3072,
                       .vocab = V,
                       .text_T = Tt,
                       .img_h = 8,
                       .img_w = 8,
                       .img_c = 3,
                       .patch = 8,
                       .audio_F = 1,
                       .n_mels = 8,
                       .audio_group = 1,
                       .tp = 1,
                       .tp_rank = 0,
                       .recompute = model_recompute_named(rc_s)};
    // the CUDA ops with the profiling wrappers (off until the profiled step), behind a timed
    // copy of the backend: the profiler's first member
    model_ops ops = model_ops_cuda;
    ops.matmul_fwd = p_matmul_fwd;
    ops.matmul_bwd = p_matmul_bwd;
    ops.layernorm_fwd = p_layernorm_fwd;
    ops.layernorm_bwd = p_layernorm_bwd;
    ops.gelu_fwd = p_gelu_fwd;
    ops.gelu_bwd = p_gelu_bwd;
    ops.matmul_gelu_fwd = p_matmul_gelu_fwd;
    ops.matmul_gelu_bwd = p_matmul_gelu_bwd;
    ops.add = p_add;
    ops.add_layernorm_fwd = p_add_layernorm_fwd;
    ops.attention_fwd = p_attention_fwd;
    ops.attention_bwd = p_attention_bwd;
    ops.xent_fwd = p_xent_fwd;
    ops.xent_bwd = p_xent_bwd;
    ops.xent_fwd_bwd = p_xent_fwd_bwd;
    profiler *prof = mm_calloc(1, sizeof(profiler));
    prof->be = *be;
    prof->be.ops = &ops;
    prof->stream = ctx->stream;
    for (int i = 0; i < 2 * PROF_MAX; i++) ck(cudaEventCreate(&prof->ev[i]), "event create");
    model *m = NULL;
    if (model_create(&m, &mc, &prof->be, B, 1, &err) != 0) {
        fprintf(stderr, "bench_train_cuda: %s\n", err.msg);
        for (int i = 0; i < 2 * PROF_MAX; i++) cudaEventDestroy(prof->ev[i]);
        free(prof);
        mm_backend_free(be);
        return 1;
    }
    // random inputs (uploaded once: the loader's cost is not what this measures)
    mm_rng rng;
    mm_rng_init(&rng, 7, 0);
    const size_t ni = (size_t)B * 8 * 8 * 3, na = (size_t)B * 8, nt = (size_t)B * Tt;
    float *himg = malloc(ni * sizeof(float)), *haud = malloc(na * sizeof(float));
    int32_t *htok = malloc(nt * sizeof(int32_t)), *htgt = malloc(nt * sizeof(int32_t));
    uint8_t *hones = malloc((size_t)B);
    for (size_t i = 0; i < ni; i++) himg[i] = (float)(2 * mm_rng_uniform(&rng) - 1);
    for (size_t i = 0; i < na; i++) haud[i] = (float)(2 * mm_rng_uniform(&rng) - 1);
    for (size_t i = 0; i < nt; i++) htok[i] = (int32_t)mm_rng_below(&rng, 50257);
    for (size_t i = 0; i < nt; i++) htgt[i] = (i + 1) % Tt ? htok[i + 1] : -1;
    memset(hones, 1, (size_t)B);
    float *img = cuda_alloc(ctx, ni * 4), *aud = cuda_alloc(ctx, na * 4);
    int32_t *tok = cuda_alloc(ctx, nt * 4), *tgt = cuda_alloc(ctx, nt * 4);
    uint8_t *ones = cuda_alloc(ctx, (size_t)B);
    cuda_upload(ctx, img, himg, ni * 4);
    cuda_upload(ctx, aud, haud, na * 4);
    cuda_upload(ctx, tok, htok, nt * 4);
    cuda_upload(ctx, tgt, htgt, nt * 4);
    cuda_upload(ctx, ones, hones, (size_t)B);
    // the classifier's gradient in the forward, as the trainer computes it (loss_scale 1/B)
    model_input in = {.B = B, .image = img, .has_image = ones, .audio = aud,
                      .has_audio = ones, .tokens = tok, .targets = tgt,
                      .loss_scale = (float)(1.0 / B)};
    // AdamW over every tensor (train/optim.c's segments)
    const int nts = model_n_tensors(m);
    const model_tensor *ts = model_tensors(m);
    cuda_seg *seg = calloc((size_t)nts, sizeof(cuda_seg));
    for (int i = 0; i < nts; i++)
        seg[i] = (cuda_seg){.offset = ts[i].offset,
                            .size = ts[i].size,
                            .decay = ts[i].decay ? 1.0f : 0.0f,
                            .lr_mult = 1.0f,
                            .group = ts[i].group};
    const size_t np = model_n_params(m);
    cuda_plan plan;
    cuda_plan_init(&plan, ctx, seg, nts, 0, np);
    float *mom = cuda_alloc(ctx, np * 4), *vel = cuda_alloc(ctx, np * 4);

    printf(
        "bench_train_cuda: %s, GPT-2-small-sized transformer: %zu parameters, B %d x T %d, "
        "%s\n",
        ctx->device_name, np, B, model_seq_len(m), cuda_precision_name(ctx->precision));
    double t_sum = 0, loss = 0, phase[3] = {0, 0, 0};
    int timed = 0;
    cudaEvent_t ev[4];
    for (int i = 0; i < 4; i++) ck(cudaEventCreate(&ev[i]), "event create");
    for (int s = 0; s < steps + 2; s++) {  // 2 warm-up steps
        double t0 = mm_now();
        loss = step(m, &in, ctx, &plan, mom, vel, s, B, ev);
        double dt = mm_now() - t0;
        if (s >= 2) {
            t_sum += dt;
            timed++;
            for (int k = 0; k < 3; k++) {
                float ms = 0;
                ck(cudaEventElapsedTime(&ms, ev[k], ev[k + 1]), "event time");
                phase[k] += ms;
            }
        }
        printf("step %2d: loss %.4f, %.1f ms\n", s + 1, loss, 1e3 * dt);
    }
    // one more step with every op timed
    prof->on = 1;
    prof->n = 0;
    step(m, &in, ctx, &plan, mom, vel, steps + 2, B, NULL);
    prof->on = 0;
    double kms[K_N];
    int calls;
    prof_collect(prof, kms, &calls);
    const double per = t_sum / timed, tokens = (double)B * model_seq_len(m);
    const double flops = model_flops_per_sample(m) * B / per;
    const int known = strstr(ctx->device_name, "H100") || strstr(ctx->device_name, "H200");
    printf("RESULT transformer %s: %.0f tokens/s, %.1f ms/step, %.1f TFLOP/s model", prec_s,
           tokens / per, 1e3 * per, flops / 1e12);
    if (known) printf(", MFU %.1f%% of 989.4 TFLOP/s bf16 dense peak", 100 * flops / 989.4e12);
    else printf(", MFU: peak of this card unknown");
    printf("\n");
    {
        size_t free1 = 0;
        ck(cudaMemGetInfo(&free1, &total), "cudaMemGetInfo");
        model_mem mm;
        train_mem est;
        if (model_mem_plan(&mc, be, B, &mm, &err) != 0) mm_fatal(__FILE__, __LINE__, "%s", err.msg);
        train_mem_estimate(&est, be, &mm, 0, 1, 0);
        printf(
            "MEMORY transformer %s B %d recompute %s: %.1f MiB allocated by the run, estimate "
            "%.1f MiB (activations %.1f MiB, %.1f MiB per block)\n",
            prec_s, B, rc_s, (double)(free0 - free1) / 1048576.0, est.total / 1048576.0,
            mm.act_bytes / 1048576.0, mm.act_per_layer / 1048576.0);
    }
    // the breakdown: phases from the timed steps, op kinds from the profiled one (its event
    // pairs add a little time between ops, not inside them)
    const double wall = 1e3 * per;
    printf("time per step (ms)             %9s %7s\n", "ms", "share");
    const char *const ph[3] = {"forward (incl. loss download)", "backward", "optimizer"};
    double in_phases = 0;
    for (int k = 0; k < 3; k++) {
        printf("  %-28s %9.2f %6.1f%%\n", ph[k], phase[k] / timed,
               100 * phase[k] / timed / wall);
        in_phases += phase[k] / timed;
    }
    printf("  %-28s %9.2f %6.1f%%\n", "host gaps (wall - phases)", wall - in_phases,
           100 * (wall - in_phases) / wall);
    double in_ops = 0;
    // per layer: the kind's time over the n_layers blocks (matmul includes the lm_head's and
    // cross-entropy is not in a layer at all: there it says what one layer's share would be)
    printf("ops of one profiled step (%d calls)  %9s %7s %9s\n", calls, "ms", "share",
           "ms/layer");
    for (int k = 0; k < K_N; k++) {
        printf("  %-28s %9.2f %6.1f%% %9.3f\n", kind_name[k], kms[k], 100 * kms[k] / wall,
               kms[k] / mc.n_layers);
        in_ops += kms[k];
    }
    printf("  %-28s %9.2f %6.1f%%\n", "optimizer, glue ops, gaps", wall - in_ops,
           100 * (wall - in_ops) / wall);
    for (int i = 0; i < 4; i++) cudaEventDestroy(ev[i]);
    for (int i = 0; i < 2 * PROF_MAX; i++) cudaEventDestroy(prof->ev[i]);
    cuda_plan_free(&plan);
    cuda_free(mom);
    cuda_free(vel);
    cuda_free(img);
    cuda_free(aud);
    cuda_free(tok);
    cuda_free(tgt);
    cuda_free(ones);
    model_free(m);
    free(prof);  // after the model: it held the timed backend
    mm_backend_free(be);
    free(seg);
    free(himg);
    free(haud);
    free(htok);
    free(htgt);
    free(hones);
    return 0;
}
