// bench_ops_cuda.c: how long each CUDA op takes at real model shapes, next to the matmuls it
// feeds (or is fed by), so that a kernel of ours that costs more than the cuBLAS work around
// it stands out; plus the matmuls' own fp32 and bf16 throughput (TFLOP/s) and the optimizer
// kernels' bandwidth. Shapes: GPT-2 small (B x T = B x 1024 tokens, C 768, 12 heads,
// vocabulary 50257 padded to 50304, 124M parameters) and DiT-S/2 (256 tokens of C 384, 6
// heads, 80 condition tokens, 32x32x4 latents). Not a test: it prints tables and exits 0
// unless CUDA fails.
//   build-cuda/tests/gpu/bench_ops_cuda [B (GPT-2, default 8)] [B (DiT, default 64)]
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../model/cuda/cuda.h"

enum { REPS = 10 };

typedef struct {
    const mm_backend *be;  // the CUDA backend: every op is called with it
    cuda_ctx *c;           // its context (be->ctx): stream, precision, attention path
    cudaEvent_t a, b;
    mm_rng rng;
    float *pattern;  // (PATTERN) random values uploaded into every buffer
} bench;
enum { PATTERN = 1 << 22 };

static void ck(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        fprintf(stderr, "bench_ops_cuda: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

// A device buffer of n floats filled with random values in [-scale, scale) (owned by caller).
static float *buf(bench *b, size_t n, float scale) {
    float *d = cuda_alloc(b->c, n * sizeof(float));
    for (size_t o = 0; o < n; o += PATTERN) {
        size_t k = n - o < PATTERN ? n - o : PATTERN;
        cuda_upload(b->c, d + o, b->pattern, k * sizeof(float));
    }
    if (scale != 1) cuda_scale(b->c, d, n, scale);
    return d;
}

static void tstart(bench *b) { ck(cudaEventRecord(b->a, b->c->stream), "event"); }
static double tstop(bench *b, int reps) {
    float ms = 0;
    ck(cudaEventRecord(b->b, b->c->stream), "event");
    ck(cudaEventSynchronize(b->b), "event sync");
    ck(cudaEventElapsedTime(&ms, b->a, b->b), "event time");
    cuda_ctx_sync(b->c);
    return ms / reps;
}

// Milliseconds per call of stmt: one warm-up call, then REPS timed calls.
#define TIME_MS(b, out, stmt)                                  \
    do {                                                       \
        stmt;                                                  \
        tstart(b);                                             \
        for (int r_ = 0; r_ < REPS; r_++) {                    \
            stmt;                                              \
        }                                                      \
        (out) = tstop(b, REPS);                                \
    } while (0)

// A linear layer N x IC -> OC: its forward and backward times in fp32 and bf16.
typedef struct {
    const char *name;
    int N, IC, OC;
    double f32, b16, bf32, bb16;  // ms: forward fp32/bf16, backward fp32/bf16
} linear;

static void bench_linear(bench *b, linear *l) {
    const size_t ni = (size_t)l->N * l->IC, nw = (size_t)l->OC * l->IC, no = (size_t)l->N * l->OC;
    float *inp = buf(b, ni, 1), *w = buf(b, nw, 0.02f), *bias = buf(b, l->OC, 0.1f);
    float *out = buf(b, no, 1), *din = buf(b, ni, 0), *dw = buf(b, nw, 0), *db = buf(b, l->OC, 0);
    for (int p = 0; p < 2; p++) {
        b->c->precision = p ? CUDA_BF16 : CUDA_FP32;
        double f, bw;
        TIME_MS(b, f, model_ops_cuda.matmul_fwd(b->be, out, inp, w, bias, l->N, l->IC, l->OC));
        TIME_MS(b, bw,
                model_ops_cuda.matmul_bwd(b->be, din, dw, db, out, inp, w, l->N, l->IC, l->OC));
        if (p) l->b16 = f, l->bb16 = bw;
        else l->f32 = f, l->bf32 = bw;
    }
    b->c->precision = CUDA_FP32;
    double fl = 2.0 * l->N * l->IC * l->OC;
    printf("%-12s %6d x %5d -> %5d  fwd %8.3f ms %6.1f TF/s | %8.3f ms %6.1f TF/s   "
           "bwd %8.3f ms %6.1f | %8.3f ms %6.1f\n",
           l->name, l->N, l->IC, l->OC, l->f32, fl / l->f32 / 1e9, l->b16, fl / l->b16 / 1e9,
           l->bf32, 2 * fl / l->bf32 / 1e9, l->bb16, 2 * fl / l->bb16 / 1e9);
    float *all[] = {inp, w, bias, out, din, dw, db};
    for (int i = 0; i < 7; i++) cuda_free(all[i]);
}

static void op_row(const char *op, double ms, const linear *l, int bwd) {
    double mm32 = bwd ? l->bf32 : l->f32, mm16 = bwd ? l->bb16 : l->b16;
    printf("%-24s %9.3f ms   %-14s %s fp32 %8.3f ms  bf16 %8.3f ms   op/bf16 %5.2f%s\n", op, ms,
           l->name, bwd ? "bwd" : "fwd", mm32, mm16, ms / mm16, ms > mm16 ? "  <-- slower" : "");
}

static void gpt2(bench *b, int B) {
    // V: the vocabulary padded to a multiple of 64 as every GPU config does (llm.c's 50304);
    // lm_head@50257 shows what the unpadded one costs (cuBLAS picks slower kernels)
    const int T = 1024, C = 768, NH = 12, HD = 64, V = 50304, N = B * T;
    printf("\n== GPT-2 small: B %d, T %d, C %d, NH %d, V %d ==\n", B, T, C, NH, V);
    printf("-- matmuls (cuBLAS; TF/s of fwd 2NIO and bwd 4NIO flops; fp32 | bf16)\n");
    linear qkv = {"qkv", N, C, 3 * C, 0, 0, 0, 0}, proj = {"attn.proj", N, C, C, 0, 0, 0, 0},
           fc = {"mlp.fc", N, C, 4 * C, 0, 0, 0, 0}, mproj = {"mlp.proj", N, 4 * C, C, 0, 0, 0, 0},
           lm = {"lm_head", N, C, V, 0, 0, 0, 0},
           lm_odd = {"lm_head@50257", N, C, 50257, 0, 0, 0, 0};
    linear *ls[] = {&qkv, &proj, &fc, &mproj, &lm, &lm_odd};
    for (int i = 0; i < 6; i++) bench_linear(b, ls[i]);

    printf("-- our kernels next to the matmul they feed or are fed by\n");
    const size_t nc = (size_t)N * C;
    float *x = buf(b, nc, 1), *y = buf(b, nc, 1), *g = buf(b, C, 1), *bb = buf(b, C, 0.1f);
    float *mean = buf(b, N, 0), *rstd = buf(b, N, 1), *dx = buf(b, nc, 0), *dg = buf(b, C, 0),
          *db = buf(b, C, 0);
    double ms;
    TIME_MS(b, ms, model_ops_cuda.layernorm_fwd(b->be, y, mean, rstd, x, g, bb, N, C));
    op_row("layernorm_fwd", ms, &qkv, 0);
    TIME_MS(b, ms, model_ops_cuda.layernorm_bwd(b->be, dx, dg, db, y, x, g, mean, rstd, N, C));
    op_row("layernorm_bwd", ms, &qkv, 1);
    TIME_MS(b, ms, model_ops_cuda.add(b->be, y, y, x, nc));
    op_row("add (residual)", ms, &proj, 0);
    float *h = buf(b, 4 * nc, 1), *hg = buf(b, 4 * nc, 1), *dh = buf(b, 4 * nc, 0);
    TIME_MS(b, ms, model_ops_cuda.gelu_fwd(b->be, hg, h, 4 * nc));
    op_row("gelu_fwd", ms, &mproj, 0);
    TIME_MS(b, ms, model_ops_cuda.gelu_bwd(b->be, dh, h, hg, 4 * nc));
    op_row("gelu_bwd", ms, &fc, 1);
    cuda_free(h);
    cuda_free(hg);
    cuda_free(dh);
    float *qkvb = buf(b, 3 * nc, 1), *dqkv = buf(b, 3 * nc, 0);
    float *att = buf(b, model_ops_cuda.attention_saved(b->be, B, NH, T), 0);  // flash: lse + mask
    uint8_t *valid = cuda_alloc(b->c, (size_t)N);
    uint8_t *ones = mm_malloc((size_t)N);
    memset(ones, 1, (size_t)N);
    cuda_upload(b->c, valid, ones, (size_t)N);
    free(ones);
    // the self-attention paths (ops_cuda.cu): SIMT flash, the cuBLAS core in fp32 and in bf16
    // (tensor cores), then flash on tensor cores (bf16, ops_flash_tc_cuda.cu: the default
    // where the heads allow)
    const size_t core_bytes = b->c->attn_core_bytes;
    const int flash_tc = b->c->flash_tc;
    static const char *const fwd_name[4] = {"attention_fwd (flash)", "attention_fwd (cuBLAS)",
                                            "attention_fwd (bf16 TC)", "attention_fwd (flash TC)"};
    static const char *const bwd_name[4] = {"attention_bwd (flash)", "attention_bwd (cuBLAS)",
                                            "attention_bwd (bf16 TC)", "attention_bwd (flash TC)"};
    for (int path = 0; path < 4; path++) {
        b->c->attn_core_bytes = path == 1 || path == 2 ? SIZE_MAX : 0;
        b->c->flash_tc = path == 3;
        b->c->precision = path >= 2 ? CUDA_BF16 : CUDA_FP32;
        TIME_MS(b, ms,
                model_ops_cuda.attention_fwd(b->be, y, att, qkvb, valid, B, T, 64, NH, HD, NULL));
        op_row(fwd_name[path], ms, &proj, 0);
        TIME_MS(b, ms,
                model_ops_cuda.attention_bwd(b->be, dqkv, x, qkvb, y, att, B, T, 64, NH, HD, NULL));
        op_row(bwd_name[path], ms, &qkv, 1);
    }
    b->c->attn_core_bytes = core_bytes;
    b->c->flash_tc = flash_tc;
    b->c->precision = CUDA_FP32;
    cuda_free(att);
    cuda_free(qkvb);
    cuda_free(dqkv);
    float *logits = buf(b, (size_t)N * V, 3),
          *probs = buf(b, model_ops_cuda.xent_saved(b->be, N, V), 0);
    float *loss = buf(b, N, 0), *dloss = buf(b, N, 1.0f / N);
    int32_t *tg = mm_malloc((size_t)N * sizeof(int32_t));
    for (int i = 0; i < N; i++) tg[i] = i % 7 == 0 ? -1 : (int32_t)mm_rng_below(&b->rng, V);
    int32_t *dtg = cuda_alloc(b->c, (size_t)N * sizeof(int32_t));
    cuda_upload(b->c, dtg, tg, (size_t)N * sizeof(int32_t));
    free(tg);
    TIME_MS(b, ms, model_ops_cuda.xent_fwd(b->be, loss, probs, logits, dtg, N, V, 0));
    op_row("xent_fwd", ms, &lm, 0);
    // in place over the logits, as the transformer runs it
    TIME_MS(b, ms, model_ops_cuda.xent_bwd(b->be, logits, logits, probs, dtg, dloss, N, V, 0));
    op_row("xent_bwd", ms, &lm, 1);
    float *all[] = {x, y, g, bb, mean, rstd, dx, dg, db, logits, probs, loss, dloss};
    for (int i = 0; i < 13; i++) cuda_free(all[i]);
    cuda_free(valid);
    cuda_free(dtg);
}

static void dit_s2(bench *b, int B) {
    const int N = 256, C = 384, NH = 6, HD = 64, Tc = 80, pix = 32 * 32 * 4, BN = B * N;
    printf("\n== DiT-S/2: B %d, %d tokens, C %d, NH %d, %d condition tokens ==\n", B, N, C, NH, Tc);
    linear qkv = {"qkv", BN, C, 3 * C, 0, 0, 0, 0}, proj = {"attn.proj", BN, C, C, 0, 0, 0, 0},
           q = {"xattn.q", BN, C, C, 0, 0, 0, 0}, fin = {"final", BN, C, 16, 0, 0, 0, 0},
           ada = {"adaLN", B, C, 6 * C, 0, 0, 0, 0};
    linear *ls[] = {&qkv, &proj, &q, &fin, &ada};
    for (int i = 0; i < 5; i++) bench_linear(b, ls[i]);
    const size_t n = (size_t)BN * C;
    float *x = buf(b, n, 1), *y = buf(b, n, 1), *mod = buf(b, (size_t)B * 6 * C, 0.1f),
          *dx = buf(b, n, 0), *dmod = buf(b, (size_t)B * 6 * C, 0);
    double ms;
    TIME_MS(b, ms, dit_ops_cuda.modulate_fwd(b->be, y, x, mod, mod + C, 6 * C, B, N, C));
    op_row("modulate_fwd", ms, &qkv, 0);
    {  // LayerNorm + modulation as the block runs it (h and out written)
        float *h = buf(b, n, 0), *st = buf(b, 2 * (size_t)BN, 0), *g = buf(b, C, 1),
              *beta = buf(b, C, 0);
        TIME_MS(b, ms, dit_ops_cuda.ln_modulate_fwd(b->be, NULL, h, y, st, st + BN, x, NULL, NULL,
                                                     g, beta, mod, mod + C, 6 * C, B, N, C));
        op_row("ln_modulate_fwd", ms, &qkv, 0);
        float *all[] = {h, st, g, beta};
        for (int i = 0; i < 4; i++) cuda_free(all[i]);
    }
    TIME_MS(b, ms,
            dit_ops_cuda.modulate_bwd(b->be, dx, dmod, dmod + C, y, x, mod + C, 6 * C, B, N, C));
    op_row("modulate_bwd", ms, &qkv, 1);
    TIME_MS(b, ms, dit_ops_cuda.gated_add_fwd(b->be, x, x, y, mod + 2 * C, 6 * C, B, N, C));
    op_row("gated_add_fwd", ms, &proj, 0);
    TIME_MS(b, ms,
            dit_ops_cuda.gated_add_bwd(b->be, dx, dmod + 2 * C, y, x, mod + 2 * C, 6 * C, B, N, C));
    op_row("gated_add_bwd", ms, &proj, 1);
    TIME_MS(b, ms, dit_ops_cuda.silu_fwd(b->be, dmod, mod, (size_t)B * 6 * C));
    op_row("silu_fwd", ms, &ada, 0);
    float *kv = buf(b, (size_t)B * Tc * 2 * C, 1), *dkv = buf(b, (size_t)B * Tc * 2 * C, 0);
    float *att = buf(b, (size_t)B * NH * N * Tc, 0);
    uint8_t *valid = cuda_alloc(b->c, (size_t)B * Tc);
    uint8_t *ones = mm_malloc((size_t)B * Tc);
    memset(ones, 1, (size_t)B * Tc);
    cuda_upload(b->c, valid, ones, (size_t)B * Tc);
    free(ones);
    TIME_MS(b, ms, dit_ops_cuda.xattn_fwd(b->be, y, att, x, kv, valid, B, N, Tc, NH, HD));
    op_row("xattn_fwd", ms, &proj, 0);
    TIME_MS(b, ms, dit_ops_cuda.xattn_bwd(b->be, dx, dkv, y, x, kv, y, att, B, N, Tc, NH, HD));
    op_row("xattn_bwd", ms, &q, 1);
    float *pred = buf(b, (size_t)B * pix, 1), *tgt = buf(b, (size_t)B * pix, 1),
          *loss = buf(b, B, 0), *dp = buf(b, (size_t)B * pix, 0);
    TIME_MS(b, ms, dit_ops_cuda.mse_fwd(b->be, loss, pred, tgt, B, pix));
    op_row("mse_fwd", ms, &fin, 0);
    TIME_MS(b, ms, dit_ops_cuda.mse_bwd(b->be, dp, pred, tgt, loss, B, pix));
    op_row("mse_bwd", ms, &fin, 1);
    float *all[] = {x, y, mod, dx, dmod, kv, dkv, att, pred, tgt, loss, dp};
    for (int i = 0; i < 12; i++) cuda_free(all[i]);
    cuda_free(valid);
}

// AdamW, sum of squares and EMA over GPT-2 small's 124M parameters (one segment per 2M).
static void optimizer(bench *b) {
    const size_t n = 124439808, per = 2 << 20;
    int ns = (int)((n + per - 1) / per);
    cuda_seg *segs = mm_calloc(ns, sizeof(cuda_seg));
    for (int s = 0; s < ns; s++) {
        size_t o = (size_t)s * per;
        segs[s] = (cuda_seg){.offset = o,
                             .size = n - o < per ? n - o : per,
                             .decay = (float)(s % 2),
                             .lr_mult = 1.0f,
                             .sharded = s % 3 == 0};
    }
    cuda_plan p;
    cuda_plan_init(&p, b->c, segs, ns, 0, n);
    free(segs);
    float *params = buf(b, n, 1), *grads = buf(b, n, 1), *m = buf(b, n, 0), *v = buf(b, n, 0),
          *ema = buf(b, n, 1);
    printf("\n== optimizer kernels, %zu parameters ==\n", n);
    double ms, sh, rep;
    int64_t step = 1;
    TIME_MS(b, ms,
            cuda_adamw(b->c, &p, params, grads, m, v, step++, 1e-4, 0.9, 0.95, 1e-8, 0.1, 1));
    printf("%-12s %8.3f ms  %7.1f GB/s\n", "adamw", ms, 7.0 * 4 * n / ms / 1e6);
    TIME_MS(b, ms, cuda_sumsq(b->c, &p, grads, &sh, &rep));
    printf("%-12s %8.3f ms  %7.1f GB/s (includes the host wait)\n", "sumsq", ms,
           4.0 * n / ms / 1e6);
    TIME_MS(b, ms, cuda_ema(b->c, ema, params, n, 0.999f));
    printf("%-12s %8.3f ms  %7.1f GB/s\n", "ema", ms, 3.0 * 4 * n / ms / 1e6);
    float *all[] = {params, grads, m, v, ema};
    for (int i = 0; i < 5; i++) cuda_free(all[i]);
    cuda_plan_free(&p);
}

int main(int argc, char **argv) {
    int B = argc > 1 ? atoi(argv[1]) : 8, Bd = argc > 2 ? atoi(argv[2]) : 64;
    if (B < 1 || Bd < 1) {
        fprintf(stderr, "usage: bench_ops_cuda [GPT-2 batch >= 1] [DiT batch >= 1]\n");
        return 2;
    }
    const mm_backend *be = NULL;
    mm_err err = {{0}};
    if (mm_backend_create(&be, "cuda", "fp32", 0, 0, &err) != 0) {
        fprintf(stderr, "bench_ops_cuda: %s\n", err.msg);
        return 1;
    }
    cuda_ctx *ctx = (cuda_ctx *)be->ctx;
    bench b = {.be = be, .c = ctx};
    mm_rng_init(&b.rng, 1, 0);
    b.pattern = mm_malloc(PATTERN * sizeof(float));
    for (int i = 0; i < PATTERN; i++) b.pattern[i] = 2 * mm_rng_uniform(&b.rng) - 1;
    ck(cudaEventCreate(&b.a), "event");
    ck(cudaEventCreate(&b.b), "event");
    printf("device: %s (%d SMs, compute %d.%d, %.1f GiB); %d timed calls per row\n",
           ctx->device_name, ctx->sm_count, ctx->cc_major, ctx->cc_minor,
           (double)ctx->mem_bytes / (1 << 30), REPS);
    gpt2(&b, B);
    dit_s2(&b, Bd);
    optimizer(&b);
    cudaEventDestroy(b.a);
    cudaEventDestroy(b.b);
    free(b.pattern);
    mm_backend_free(be);
    return 0;
}
