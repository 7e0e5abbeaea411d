// diffusion.h: the second model family: a DiT-style image generator over patches,
// conditioned on caption bytes and log-mel audio through cross-attention, trained with
// rectified flow (default) or epsilon-prediction DDPM, sampled with Euler / DDIM steps and
// classifier-free guidance. It shares the transformer's parameter layout rules (model.h:
// one contiguous buffer of named tensors with global shapes and tp splits), the ops table
// for the common ops, and the trainer, loader and checkpoints.
//
// Architecture (DiT with cross-attention, adaLN-Zero):
//   x_t (B,H,W,C) -patchify-> (B,N,p*p*C) -linear-> + fixed 2D sin-cos position -> tokens
//   t -> sinusoidal features -> MLP (SiLU) -> c (B,d)                 [timestep embedding]
//   caption bytes -> embedding + pos -> text encoder blocks -> text tokens   \  cond tokens
//   log-mel frames (grouped) -> linear + pos -> audio encoder blocks -> audio tokens | + null
//   each block: x += gate1 * selfattn(modulate(LN(x), shift1, scale1))
//               x += crossattn(LN(x), cond tokens)           (heads split under tp)
//               x += gate2 * mlp(modulate(LN(x), shift2, scale2))
//               (shift, scale, gate) x 2 = linear(SiLU(c)), zero-initialized (adaLN-Zero)
//   final: modulate(LN(x), shift, scale) -> linear (zero-init) -> unpatchify -> (B,H,W,C)
//          (x_pred: that is an estimate of x0, returned as the velocity it implies)
// A learned null token is always a valid key of the cross-attention, so a sample whose
// conditioning is absent or dropped (classifier-free guidance) attends to it alone.
#ifndef MM_DIFFUSION_H
#define MM_DIFFUSION_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

// ---------------------------------------------------------------------------------------
// The DiT's own kernels, beside the backend's generic ones (model/cpu/ops_dit_cpu.c,
// model/cuda/ops_dit_cuda.cu): adaLN modulation, gated residuals, cross-attention, the loss,
// the conditioning layout and the samplers' steps. The model owns this table; dit_ops_for
// picks the one of a backend.
typedef struct dit_ops {
    const char *name;
    // SiLU elementwise; backward accumulates dx
    void (*silu_fwd)(const mm_backend *be, mm_real *out, const mm_real *x, size_t n);
    void (*silu_bwd)(const mm_backend *be, mm_real *dx, const mm_real *x, const mm_real *dout,
                     size_t n);
    // out (B,N,C) = x * (1 + scale[b]) + shift[b]; shift, scale (B, C) (stride sc between
    // samples, so they can point into a packed modulation buffer)
    void (*modulate_fwd)(const mm_backend *be, mm_real *out, const mm_real *x, const mm_real *shift,
                         const mm_real *scale, int sc, int B, int N, int C);
    // A residual, the LayerNorm after it and the adaLN modulation in one pass over the rows.
    // With b, res (B,N,C) = a + b, or a + gate[b] * b with gate, and the LayerNorm reads res;
    // without (b NULL; res, gate unused) it reads a. h = LayerNorm with gain g, bias beta
    // (mean, rstd (B*N) kept for layernorm_bwd); with shift, out = h * (1 + scale[b]) +
    // shift[b] (else out unused). gate, shift, scale: rows at stride sc. The bits of
    // gated_add_fwd or add_layernorm_fwd, layernorm_fwd, modulate_fwd; one launch on a GPU.
    void (*ln_modulate_fwd)(const mm_backend *be, mm_real *res, mm_real *h, mm_real *out,
                            mm_real *mean, mm_real *rstd, const mm_real *a, const mm_real *b,
                            const mm_real *gate, const mm_real *g, const mm_real *beta,
                            const mm_real *shift, const mm_real *scale, int sc, int B, int N,
                            int C);
    // accumulates dx, dshift, dscale
    void (*modulate_bwd)(const mm_backend *be, mm_real *dx, mm_real *dshift, mm_real *dscale,
                         const mm_real *dout, const mm_real *x, const mm_real *scale, int sc, int B,
                         int N, int C);
    // The backward of ln_modulate_fwd without the add, as the DiT's gainless LayerNorms need it:
    // dshift[b] += sum_n dout, dscale[b] += sum_n dout * h, and through dh = dout * (1 +
    // scale[b]) the LayerNorm's input gradient dx (B,N,C) += (gain g; no gain or bias
    // gradients). dh (B,N,C) is scratch (the CPU computes dh in it; a GPU never writes it).
    // The bits of modulate_bwd into a zeroed dh, then layernorm_bwd with dg = db = NULL.
    void (*modulate_ln_bwd)(const mm_backend *be, mm_real *dx, mm_real *dshift, mm_real *dscale,
                            mm_real *dh, const mm_real *dout, const mm_real *h,
                            const mm_real *scale, int sc, const mm_real *x, const mm_real *g,
                            const mm_real *mean, const mm_real *rstd, int B, int N, int C);
    // out (B,N,C) = x + gate[b] * y ; gate (B, C) with stride sc; out may be x. The gated
    // residual writes the block's next residual from its input in one pass, no copy first.
    void (*gated_add_fwd)(const mm_backend *be, mm_real *out, const mm_real *x, const mm_real *y,
                          const mm_real *gate, int sc, int B, int N, int C);
    // accumulates dy, dgate (dx passes through unchanged)
    void (*gated_add_bwd)(const mm_backend *be, mm_real *dy, mm_real *dgate, const mm_real *dx,
                          const mm_real *y, const mm_real *gate, int sc, int B, int N, int C);
    // Cross-attention: q (B, Tq, NH, HD), kv (B, Tk, 2, NH, HD) -> out (B, Tq, NH, HD);
    // key j of sample b is attended iff key_valid[b*Tk + j]. att (B, NH, Tq, Tk) is what the
    // backend keeps for the backward: the CPU the probabilities; the CUDA backend on its
    // tensor-core flash path only each row's log-sum-exp and the mask.
    void (*xattn_fwd)(const mm_backend *be, mm_real *out, mm_real *att, const mm_real *q,
                      const mm_real *kv, const uint8_t *key_valid, int B, int Tq, int Tk, int NH,
                      int HD);
    // accumulates dq, dkv; out is the forward's
    void (*xattn_bwd)(const mm_backend *be, mm_real *dq, mm_real *dkv, const mm_real *dout,
                      const mm_real *q, const mm_real *kv, const mm_real *out,
                      const mm_real *att, int B, int Tq, int Tk, int NH, int HD);
    // Per-sample mean squared error: loss[b] = mean over n of (pred - target)^2;
    // dpred (B, n) = 2 (pred - target) / n * dloss[b] (overwrites)
    void (*mse_fwd)(const mm_backend *be, mm_real *loss, const mm_real *pred, const mm_real *target,
                    int B, size_t n);
    void (*mse_bwd)(const mm_backend *be, mm_real *dpred, const mm_real *pred,
                    const mm_real *target, const mm_real *dloss, int B, size_t n);

    // --- glue: the loops diffusion.c and diffusion_sched.c would run on the model's
    // buffers, as ops so that those buffers may live on a device. The CPU versions are those
    // loops, arithmetic unchanged. Every pointer is backend memory.
    // out (B, C): features of t[b] * 1000 (max period 10000), [cos | sin] halves, in double
    void (*time_embed)(const mm_backend *be, mm_real *out, const mm_real *t, int B, int C);
    // tok (B, T) = tokens, or PAD everywhere for a sample with has_text[b] == 0; key_valid
    // (B, T) = has_text[b] && tok != PAD. A token outside [0, V) is the caller's bug: aborts
    // (CUDA: recorded for cuda_ctx_sync).
    void (*text_tokens)(const mm_backend *be, int32_t *tok, uint8_t *key_valid,
                        const int32_t *tokens, const uint8_t *has_text, int B, int T, int V);
    // x (B, T, C) += pos (T, C)
    void (*add_pos)(const mm_backend *be, mm_real *x, const mm_real *pos, int B, int T, int C);
    // key_valid (B, T) = has[b] != 0
    void (*sample_keys)(const mm_backend *be, uint8_t *key_valid, const uint8_t *has, int B, int T);
    // kv (B, Tt + na + 1) = [text (B, Tt) | audio (B, na) | 1]
    void (*cond_keys)(const mm_backend *be, uint8_t *kv, const uint8_t *text, const uint8_t *audio,
                      int B, int Tt, int na);
    // pool (B, C) = the mean of the rows j of cond (B, Tc, C) with kv[b, j], in j order
    void (*pool_fwd)(const mm_backend *be, mm_real *pool, const mm_real *cond, const uint8_t *kv,
                     int B, int Tc, int C);
    // dcond[b, j] += dpool[b] / (valid keys of b) for every valid key j
    void (*pool_bwd)(const mm_backend *be, mm_real *dcond, const mm_real *dpool, const uint8_t *kv,
                     int B, int Tc, int C);
    // g (T, C) += sum over b, in order, of dx[b * stride + t * C + c] (position gradients)
    void (*pos_bwd)(const mm_backend *be, mm_real *g, const mm_real *dx, size_t stride, int B,
                    int T, int C);
    // Training pairs (dit_make_pair) from coef (B, 2) = (a, s) in double: x_t = a x0 + s eps
    // (in double), target = eps - x0 (flow != 0) or eps. All (B, n).
    void (*make_pair)(const mm_backend *be, mm_real *x_t, mm_real *target, const mm_real *x0,
                      const mm_real *eps, const double *coef, int flow, int B, size_t n);
    // The sampler's steps over n elements: guidance pred = upred + g (pred - upred); Euler
    // x += dt * v; DDIM (eta 0) x0 = clip(((double)x - s1 eps) inv_sa), x = sp x0 + sp1 eps in
    // double; clip to [-1, 1].
    void (*guide)(const mm_backend *be, mm_real *pred, const mm_real *upred, mm_real g, size_t n);
    void (*euler)(const mm_backend *be, mm_real *x, const mm_real *v, mm_real dt, size_t n);
    void (*ddim)(const mm_backend *be, mm_real *x, const mm_real *eps, double inv_sa, double s1,
                 double sp, double sp1, size_t n);
    void (*clip)(const mm_backend *be, mm_real *x, size_t n);
    // x-prediction (dit_config.x_pred), in place on y (B, n): forward turns the network's
    // clean-image estimate into the velocity y = (x_t - y) / max(t[b], DIT_XPRED_TMIN);
    // backward (bwd != 0) turns d(velocity) into d(estimate): y = -y / max(t[b], TMIN).
    void (*xpred)(const mm_backend *be, mm_real *y, const mm_real *x_t, const mm_real *t, int bwd,
                  int B, size_t n);
    // The caption encoder's input rows: x0 (B, T, C) = wte[tokens[b * T + t]] + tpos[t];
    // key_valid (B, T) is written (1 everywhere) and not read back (text_tokens decides the
    // keys). The backward ACCUMULATES g_wte and g_tpos from dx0 (B, T, C) in (sample,
    // position) order, as the transformer's embedding does: both are its token rows without
    // the image and audio prefix, and share its implementation.
    void (*text_embed_fwd)(const mm_backend *be, mm_real *x0, uint8_t *key_valid,
                           const mm_real *wte, const mm_real *tpos, const int32_t *tokens, int B,
                           int T, int C, int V);
    void (*text_embed_bwd)(const mm_backend *be, mm_real *g_wte, mm_real *g_tpos,
                           const mm_real *dx0, const int32_t *tokens, int B, int T, int C, int V);
} dit_ops;

// The smallest time x-prediction divides by: the velocity (x_t - x0) / t would grow without
// bound near the data end (JiT, Li & He 2025, clip the same way).
#define DIT_XPRED_TMIN ((mm_real)0.05)

extern const dit_ops dit_ops_cpu;
extern const dit_ops dit_ops_cuda;  // model/cuda/, in CUDA builds only

// ---------------------------------------------------------------------------------------
typedef struct {
    int d_model, n_layers, n_heads, d_ff;  // the generator
    int img_h, img_w, img_c, patch;        // N = (img_h/patch) * (img_w/patch) tokens
    int vocab, text_T;                     // caption tokens (BOS + bytes, PAD masked)
    int audio_F, n_mels, audio_group;      // audio tokens = audio_F / audio_group
    int enc_layers;                        // blocks of each conditioning encoder
    int pool_cond;                         // 1: c += MLP(mean of the valid cond tokens)
    int x_pred;                            // 1: the network estimates x0 (flow only)
    int tp, tp_rank;
    comm_group *tp_group;                  // NULL when tp == 1; not owned
    model_recompute recompute;             // model.h; the encoders are never recomputed
} dit_config;

// One micro-batch. Training fills target; sampling passes target = NULL. Every pointer is the
// ops table's memory (host for the CPU, device for CUDA), as model_input; so are dit_params,
// dit_grads and dit_predict's / dit_sample's out.
typedef struct {
    int B;
    const mm_real *x_t;        // (B, H, W, C) noisy images
    const mm_real *t;          // (B) time in [0, 1]: flow time, or DDPM step / 1000
    const int32_t *tokens;     // (B, text_T) caption tokens (data.h: BOS, bytes, PAD)
    const uint8_t *has_text;   // (B) 0 = no caption (absent or dropped for guidance)
    const mm_real *audio;      // (B, audio_F, n_mels) log-mel
    const uint8_t *has_audio;  // (B) 0 = no audio (absent or dropped)
    const mm_real *target;     // (B, H, W, C) velocity (flow) or noise (DDPM); NULL to predict
} dit_input;

typedef struct dit dit;  // opaque; model/diffusion.c

int dit_create(dit **out, const dit_config *cfg, const mm_backend *be, int max_B, uint64_t seed,
               mm_err *err);
void dit_free(dit *m);
// What a model of cfg needs on one rank (model.h model_mem), without allocating, by the
// carving dit_create does. -1 with err for a cfg dit_create refuses.
int dit_mem_plan(const dit_config *cfg, const mm_backend *be, int max_B, model_mem *out,
                 mm_err *err);
const dit_config *dit_cfg(const dit *m);  // the config it was created with
int dit_n_tensors(const dit *m);
const model_tensor *dit_tensors(const dit *m);
size_t dit_n_params(const dit *m);
mm_real *dit_params(dit *m);
mm_real *dit_grads(dit *m);
void dit_zero_grad(dit *m);
void dit_set_grad_hook(dit *m, model_grad_hook fn, void *ctx);
// Forward with loss: returns the SUM over samples of each sample's mean squared error.
double dit_forward(dit *m, const dit_input *in);
// Backward of loss_scale * that sum; accumulates into grads; reports via the grad hook.
void dit_backward(dit *m, const dit_input *in, mm_real loss_scale);
// Model output for in (target ignored) into out (B, H, W, C). Invalidates saved activations.
void dit_predict(dit *m, const dit_input *in, mm_real *out);
double dit_flops_per_sample(const dit *m);

// ---------------------------------------------------------------------------------------
// Objectives and samplers (model/diffusion_sched.c): pure functions of their inputs.
typedef enum { DIT_FLOW = 0, DIT_DDPM = 1 } dit_objective;
enum { DIT_DDPM_STEPS = 1000 };

// DDPM cosine schedule (Nichol & Dhariwal 2021, s = 0.008), the improved-diffusion /
// diffusers convention: with f(u) = cos^2((u + s) / (1 + s) * pi / 2) and T = 1000,
//   beta_i = min(1 - f((i+1)/T) / f(i/T), 0.999),  alpha_bar(k) = prod_{i<=k} (1 - beta_i),
// k in [0, T): alpha_bar(0) = 0.99996, alpha_bar(999) = 2.4e-9 (the clip binds only at 999),
// mean over k 0.4956. A k outside [0, T) aborts.
double dit_alpha_bar(int k);
// Training pairs: for each sample b with time t[b] (flow: t in [0,1]; DDPM: t = k/1000),
// x_t = (1-t) x0 + t eps and target = eps - x0 (flow), or
// x_t = sqrt(ab) x0 + sqrt(1-ab) eps and target = eps (DDPM). n = pixels per sample.
void dit_make_pair(dit_objective obj, int B, size_t n, const mm_real *x0, const mm_real *eps,
                   const mm_real *t, mm_real *x_t, mm_real *target);
// Its per-sample coefficients, host side: coef (B, 2) = (a, s) with x_t = a x0 + s eps.
// dit_make_pair is this and dit_ops.make_pair; a device caller stages coef and runs the op.
void dit_pair_coefs(dit_objective obj, int B, const mm_real *t, double *coef);
// Draws training times: flow uniform (logit_normal = 0) or logit-normal(0, 1); DDPM a
// uniform step k in [0, 1000) returned as k / 1000.
void dit_draw_t(dit_objective obj, int logit_normal, int B, mm_rng *rng, mm_real *t);

// Generates B images from noise drawn from rng: flow with `steps` Euler steps from t = 1 to
// 0, DDPM with `steps` DDIM (eta = 0) steps; guidance g: out = u + g (c - u) with u the
// unconditional prediction (no text, no audio), skipped when g == 1. cond's x_t, t and
// target are ignored; cond->B = B. Writes (B, H, W, C) in [-1, 1] (clipped) to out.
// Deterministic for a given rng state and layout. Collective over tp like dit_predict.
void dit_sample(dit *m, dit_objective obj, const dit_input *cond, int steps, double guidance,
                mm_rng *rng, mm_real *out);

// The sampler over any predictor (tests use exact oracles): fn(ctx, in, out) must write the
// model output for in (x_t, t, conditioning; target NULL) into out (in->B, n). n = pixels per
// sample. dit_sample is this with dit_predict. DDPM needs 1 <= steps <= 1000, flow steps >= 1.
typedef void (*dit_predict_fn)(void *ctx, const dit_input *in, mm_real *out);
void dit_sample_with(dit_predict_fn fn, void *ctx, size_t n, dit_objective obj,
                     const dit_input *cond, int steps, double guidance, mm_rng *rng,
                     mm_real *out);
// The same over a backend's memory (dit_sample with a CUDA model): cond's pointers and out
// are ops memory; the noise is drawn on the host from rng exactly as above and uploaded,
// the arithmetic runs as dops' guide / euler / ddim / clip. The host version is this with
// model_ops_cpu and dit_ops_cpu.
void dit_sample_ops(const mm_backend *be, const dit_ops *dops, dit_predict_fn fn, void *ctx,
                    size_t n, dit_objective obj, const dit_input *cond, int steps, double guidance,
                    mm_rng *rng, mm_real *out);
// The backend a model runs on (dit_create's) and the DiT's own kernels on it.
const mm_backend *dit_backend(const dit *m);
const dit_ops *dit_dit_ops(const dit *m);
// The DiT's kernels for a backend (the one place they are registered per backend); NULL
// when the backend has none.
const dit_ops *dit_ops_for(const mm_backend *be);

#endif  // MM_DIFFUSION_H
