// model.h: the model module's public header: parameter layout (one contiguous buffer of
// named tensors), the backend ops table, and the multimodal prefix-LM transformer.
//
// Precision: `mm_real` is float in every shipped binary. The same sources are compiled a
// second time with -DMM_F64 (mm_real = double, BLAS d-routines) for the gradient-check tests,
// so that backward passes are checked against central finite differences in float64.
//
// Tensor parallelism (Megatron-LM's column/row splits): every tensor records its
// GLOBAL shape and the dimension it is split along under tp (-1 = replicated). The buffer
// holds only this rank's slice; initial values are drawn for the full tensor from the seed
// and sliced, so they do not depend on tp. Forward/backward/generate allreduce over
// cfg.tp_group (see model/transformer.c). Invariant the trainer relies on: the gradients of
// replicated tensors come out bitwise identical on every tp rank, so they are never reduced
// over tp (and count once in the global grad norm).
#ifndef MM_MODEL_H
#define MM_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../comm/comm.h"
#include "../core/core.h"

#ifdef MM_F64
typedef double mm_real;
#else
typedef float mm_real;
#endif

// The backend every op runs on (model/backend.h); passed first to each op, so that an op
// reaches its device context through it and never through a global.
typedef struct mm_backend mm_backend;

// A parameter a backend's implementation of an op may not need (the CPU ops ignore the
// backend); C11 has no unnamed parameters in definitions.
#define MM_UNUSED __attribute__((unused))

// A dropout as an op applies it (model_drop.h says how the draws are made): which elements of
// each sample survive is a hash of the sample's key, the site and the element's index in the
// sample's FULL tensor, so the mask does not depend on the layout and needs no buffer.
typedef struct {
    const uint64_t *keys;  // (B) ops memory: each sample's model_drop_sample_key
    int layer, place;      // the site (model_drop.h MODEL_DROP_*)
    uint32_t thr;          // an element is dropped iff its 24-bit draw < thr; 0: none is
    mm_real scale;         // 1 / (1 - p): the factor of the kept elements (inverted dropout)
    int head0;             // attention: the global index of this rank's first head (tp)
} model_drop;

// ---------------------------------------------------------------------------------------
// Ops table: the generic kernels and memory functions of one backend (model/cpu/ops_cpu.c,
// model/cuda/ops_cuda.cu); a backend object (backend.h) points to its table. All pointers
// are backend memory; shapes in the comments; row-major throughout.
//
// Activations: the element type of the buffers between the ops is the backend's
// (be->act_bytes: mm_real, or bf16 on CUDA in precision bf16, for either model kind). Every
// mm_real * of an op is an activation or its gradient except the parameters and their
// gradients (w, bias, g, b, beta, positions, the token table and their d*/g_* twins),
// LayerNorm's mean and rstd, what attention_saved and xent_saved size, the cross-entropy's
// losses and dloss, which are mm_real whatever the activations are. The models carve
// activations at be->act_bytes (model_internal.h model_carve), move them through
// act_from_real / act_to_real where they meet mm_real data, and never index them as mm_real.
typedef struct model_ops {
    const char *name;
    // out (N, OC) = inp (N, IC) @ w^T (OC, IC) + bias (OC) [bias may be NULL]
    void (*matmul_fwd)(const mm_backend *be, mm_real *out, const mm_real *inp, const mm_real *w,
                       const mm_real *bias, int N, int IC, int OC);
    // accumulates: dinp += dout @ w ; dw += dout^T @ inp ; dbias += sum_rows(dout).
    // dinp, dbias may be NULL.
    void (*matmul_bwd)(const mm_backend *be, mm_real *dinp, mm_real *dw, mm_real *dbias,
                       const mm_real *dout, const mm_real *inp, const mm_real *w, int N, int IC,
                       int OC);
    // out (N, C) = (x - mean) * rstd * g + b ; saves mean, rstd (N)
    void (*layernorm_fwd)(const mm_backend *be, mm_real *out, mm_real *mean, mm_real *rstd,
                          const mm_real *x, const mm_real *g, const mm_real *b, int N, int C);
    // accumulates dx, dg, db; dg and db NULL (together): no gain and bias gradients (a
    // LayerNorm without affine parameters, such as the DiT's before adaLN)
    void (*layernorm_bwd)(const mm_backend *be, mm_real *dx, mm_real *dg, mm_real *db,
                          const mm_real *dout, const mm_real *x, const mm_real *g,
                          const mm_real *mean, const mm_real *rstd, int N, int C);
    // tanh-approximation GELU, elementwise over n
    void (*gelu_fwd)(const mm_backend *be, mm_real *out, const mm_real *x, size_t n);
    void (*gelu_bwd)(const mm_backend *be, mm_real *dx, const mm_real *x, const mm_real *dout,
                     size_t n);  // dx +=
    // pre (N, OC) = inp @ w^T + bias (not NULL), out = GELU(pre): matmul_fwd then gelu_fwd
    // in one call, so that a backend may fuse them (CUDA bf16: cuBLASLt's GELU epilogue);
    // pre is what gelu_bwd reads later. The CPU's bits are those of the two calls.
    void (*matmul_gelu_fwd)(const mm_backend *be, mm_real *pre, mm_real *out, const mm_real *inp,
                            const mm_real *w, const mm_real *bias, int N, int IC, int OC);
    // The backward of a matmul_fwd whose input was act = GELU(pre) (N, IC), through the GELU:
    // dpre (N, IC) = (dout @ w) * GELU'(pre) (overwritten), dw += dout^T act, dbias +=
    // column sums of dout (may be NULL). dact (N, IC) is scratch (the CPU keeps dout @ w in
    // it). The CPU's bits are those of matmul_bwd into a zeroed dact, then gelu_bwd into a
    // zeroed dpre; CUDA bf16 fuses the GELU into the GEMM (cuBLASLt's DGELU epilogue).
    void (*matmul_gelu_bwd)(const mm_backend *be, mm_real *dpre, mm_real *dact, mm_real *dw,
                            mm_real *dbias, const mm_real *dout, const mm_real *act,
                            const mm_real *pre, const mm_real *w, int N, int IC, int OC);
    // out = a + b (n elements); out may alias a or b (residual adds are done in place)
    void (*add)(const mm_backend *be, mm_real *out, const mm_real *a, const mm_real *b, size_t n);
    // The residual add and the LayerNorm after it in one pass over the rows: res (N, C) =
    // a + b, then out, mean, rstd = layernorm_fwd of res, with the same bits as add followed
    // by layernorm_fwd. res may alias a or b.
    void (*add_layernorm_fwd)(const mm_backend *be, mm_real *res, mm_real *out, mm_real *mean,
                              mm_real *rstd, const mm_real *a, const mm_real *b,
                              const mm_real *g, const mm_real *beta, int N, int C);
    // Inverted dropout of B samples of n elements: out[b * n + e] = x[b * n + e] * d->scale
    // where element e of sample b survives under d, else 0. out may be x. Being linear with
    // the mask fixed, the same call is its own backward (on the output's gradient).
    void (*dropout)(const mm_backend *be, mm_real *out, const mm_real *x, const model_drop *d,
                    int B, size_t n);
    // Multi-head attention on packed qkv (B, T, 3, NH, HD) -> out (B, T, NH, HD).
    // Query i may attend key j iff key_valid[b*T + j] && (j < P || j <= i): the first P
    // positions form a bidirectional prefix, the rest is causal. A query with no allowed key
    // (e.g. a prefix token of a sample lacking both modalities) gets a zero output and zero
    // gradients. att (attention_saved(B, NH, T) elements) is what the backend keeps for the
    // backward pass: the CPU keeps the softmax probabilities (B, NH, T, T) (0 where masked,
    // zero rows for queries without a key); the CUDA backend (flash attention) keeps only each
    // row's log-sum-exp of the scaled scores (B, NH, T) (-inf for a row without a key) and a
    // copy of key_valid, and recomputes the probabilities tile by tile in the backward pass.
    // drop (NULL or thr 0: none) is dropout on the probabilities after the softmax: out =
    // (p * mask * scale) v, the mask of element (head0 + h, i, j) of sample b at index
    // ((head0 + h) * T + i) * T + j; att keeps the probabilities before it, and the backward
    // takes the same drop and redraws the mask.
    void (*attention_fwd)(const mm_backend *be, mm_real *out, mm_real *att, const mm_real *qkv,
                          const uint8_t *key_valid, int B, int T, int P, int NH, int HD,
                          const model_drop *drop);
    // accumulates dqkv; out is attention_fwd's output for these inputs and att what it saved
    // (the CUDA backward needs out for the row terms sum_j p_ij dp_ij = dout_i . out_i)
    void (*attention_bwd)(const mm_backend *be, mm_real *dqkv, const mm_real *dout,
                          const mm_real *qkv, const mm_real *out, const mm_real *att, int B, int T,
                          int P, int NH, int HD, const model_drop *drop);
    // elements of attention_fwd's att buffer for these sizes
    size_t (*attention_saved)(const mm_backend *be, int B, int NH, int T);
    // Softmax cross-entropy per row: logits (N, V), targets (N) (-1 = ignored), with label
    // smoothing eps in [0, 1) (Szegedy et al. 2016): the target distribution is
    // q = (1 - eps) onehot(t) + eps / V, loss[i] = -sum_j q_j log softmax(logits_i)_j
    // (eps 0: -log softmax(logits_i)[t_i]; 0 when ignored). saved (xent_saved(N, V)
    // elements) is what the backend keeps for the backward pass: the CPU keeps the
    // probabilities (N, V); the CUDA backend only each row's log-sum-exp (N), so that the
    // forward reads the logits once and writes nothing per logit.
    void (*xent_fwd)(const mm_backend *be, mm_real *loss, mm_real *saved, const mm_real *logits,
                     const int32_t *targets, int N, int V, mm_real eps);
    // dlogits (N, V) = (softmax(logits) - q) * dloss[i] (overwrites; 0 rows when
    // ignored), from the forward's logits and saved. dlogits may be logits itself (the
    // gradient then replaces the logits in place, one pass over them).
    void (*xent_bwd)(const mm_backend *be, mm_real *dlogits, const mm_real *logits,
                     const mm_real *saved, const int32_t *targets, const mm_real *dloss, int N,
                     int V, mm_real eps);
    // xent_fwd and xent_bwd in one pass, for training, where dloss is known before the
    // forward ends (llm.c's fused classifier): loss as xent_fwd, then logits overwritten by
    // the dlogits xent_bwd would write (the same bits), nothing saved.
    void (*xent_fwd_bwd)(const mm_backend *be, mm_real *loss, mm_real *logits,
                         const int32_t *targets, const mm_real *dloss, int N, int V, mm_real eps);
    // elements of xent_fwd's saved buffer for these sizes
    size_t (*xent_saved)(const mm_backend *be, int N, int V);

    // The model's parameters (n) as the forward about to run reads them (and the backward
    // after it): a backend may keep a copy in its compute precision, valid until it writes
    // into them (the CUDA backend in bf16: one conversion per forward instead of one per
    // matmul and direction). The CPU does nothing.
    void (*params_ready)(const mm_backend *be, const mm_real *params, size_t n);

    // --- memory and the models' glue: so that a model's buffers may live on a device, every
    // loop a model would run on its buffers is an op here. Sizes in bytes for the mem_* ops.
    // Zeroed buffer; the caller owns it and frees it with mem_free (NULL: no-op).
    void *(*mem_alloc)(const mm_backend *be, size_t bytes);
    void (*mem_free)(const mm_backend *be, void *p);
    // Copies between host memory and this backend's memory; they return when done.
    void (*mem_upload)(const mm_backend *be, void *dst, const void *host, size_t bytes);
    void (*mem_download)(const mm_backend *be, void *host, const void *src, size_t bytes);
    void (*mem_zero)(const mm_backend *be, void *p, size_t bytes);
    // within the backend's memory, queued in order with the ops; regions do not overlap
    void (*mem_copy)(const mm_backend *be, void *dst, const void *src, size_t bytes);
    // rows rows of width activations: dst[r * dst_stride + i] = src[r * src_stride + i]
    void (*copy_rows)(const mm_backend *be, mm_real *dst, size_t dst_stride, const mm_real *src,
                      size_t src_stride, size_t width, int rows);
    // n activations (dst) from n mm_real values (src: a model's input), and back (the logits
    // a generation reads): a copy where activations are mm_real, else rounded to nearest
    // (and back exactly)
    void (*act_from_real)(const mm_backend *be, mm_real *dst, const mm_real *src, size_t n);
    void (*act_to_real)(const mm_backend *be, mm_real *dst, const mm_real *src, size_t n);
    // layout.c's model_patchify / model_unpatchify (model_internal.h)
    void (*patchify)(const mm_backend *be, mm_real *patches, const mm_real *img, int B, int H,
                     int W, int c, int p);
    void (*unpatchify)(const mm_backend *be, mm_real *img, const mm_real *patches, int B, int H,
                       int W, int c, int p);
    // --- the convolutional image stem (model.stem: conv; transformer.c "stem"). Images and
    // feature maps are (B, H, W, c), channels last, like the input images.
    // The gather of a 3x3 convolution, stride 1, zero padding 1: cols (B*H*W, 9c), row
    // (b, y, x) = img[b, y + dy - 1, x + dx - 1, :] for dy, dx in 0..2 (0 outside the
    // image), inner order (dy, dx, c); a matmul_fwd of cols by w (OC, 9c) is the convolution.
    void (*im2col3)(const mm_backend *be, mm_real *cols, const mm_real *img, int B, int H, int W,
                    int c);
    // Its adjoint: dimg (B, H, W, c) += the sum over the cols entries each pixel was copied
    // to, added in (dy, dx) order per pixel (a gather, no atomics: deterministic).
    void (*col2im3)(const mm_backend *be, mm_real *dimg, const mm_real *dcols, int B, int H,
                    int W, int c);
    // 2x2 max pooling, stride 2: out (B, H/2, W/2, c) = the max of each 2x2 window of x (H, W
    // even). NaN-free inputs assumed.
    void (*maxpool2_fwd)(const mm_backend *be, mm_real *out, const mm_real *x, int B, int H, int W,
                         int c);
    // dx (B, H, W, c) += dout routed to the first maximum of each window in (dy, dx) order,
    // found again from x (the forward's input): no index buffer to keep.
    void (*maxpool2_bwd)(const mm_backend *be, mm_real *dx, const mm_real *dout, const mm_real *x,
                         int B, int H, int W, int c);
} model_ops;

extern const model_ops model_ops_cpu;  // the CPU backend's (backend.h mm_backend_cpu)

// The transformer's own kernels: its input rows (the image and audio prefix, then the
// caption's tokens) and its per-sample loss, which no other model shares. One table per
// backend (model/cpu/ops_glue_cpu.c, model/cuda/ops_glue_cuda.cu); lm_ops_for picks it.
typedef struct lm_ops {
    const char *name;
    // The LM's input rows (transformer.c): for the sequence [n_img | n_aud | T - P text],
    // P = n_img + n_aud, x0 (B, T, C) = emb_img (B, n_img, C) + img_pos / emb_aud (B, n_aud, C)
    // + aud_pos / wte[tokens[b * tok_stride + t - P]] + tpos; key_valid (B, T) from has_image,
    // has_audio (B) (text: 1). A token outside [0, V) is a bug of the caller: aborts (the CUDA
    // version records it for cuda_ctx_sync).
    void (*embed_fwd)(const mm_backend *be, mm_real *x0, uint8_t *key_valid, const mm_real *emb_img,
                      const mm_real *emb_aud, const mm_real *img_pos, const mm_real *aud_pos,
                      const mm_real *wte, const mm_real *tpos, const int32_t *tokens,
                      int tok_stride, const uint8_t *has_image, const uint8_t *has_audio, int B,
                      int T, int n_img, int n_aud, int C, int V);
    // Its backward from dx0 (B, T, C): ACCUMULATES g_img_pos, g_aud_pos, g_tpos and g_wte,
    // every row's sum taken in (sample, position) order, so repeated tokens add up the same
    // way run after run (no float atomics).
    void (*embed_bwd)(const mm_backend *be, mm_real *g_img_pos, mm_real *g_aud_pos, mm_real *g_wte,
                      mm_real *g_tpos, const mm_real *dx0, const int32_t *tokens, int B, int T,
                      int n_img, int n_aud, int C, int V);
    // Per sample b of B (Tt positions): out[2b] = the mean of losses[b, t] over targets >= 0,
    // summed in double in t order (0 without targets), out[2b + 1] = their count.
    void (*seq_loss)(const mm_backend *be, double *out, const mm_real *losses,
                     const int32_t *targets, int B, int Tt);
    // dloss (B, Tt) = scale / n_targets(b) for every position of sample b (0 without targets)
    void (*seq_dloss)(const mm_backend *be, mm_real *dloss, const int32_t *targets, mm_real scale,
                      int B, int Tt);
} lm_ops;

extern const lm_ops lm_ops_cpu;
extern const lm_ops lm_ops_cuda;  // model/cuda/, in CUDA builds only
// The transformer's kernels for a backend (the one place they are registered per backend);
// NULL when the backend has none.
const lm_ops *lm_ops_for(const mm_backend *be);

// ---------------------------------------------------------------------------------------
// Parameter tensors.
typedef struct {
    char name[64];       // e.g. "blocks.3.attn.qkv.w"
    int ndim;
    int64_t shape[4];    // GLOBAL shape
    int split_dim;       // dimension split under tp, -1 when replicated
    int64_t local[4];    // this rank's shape
    int64_t start;       // this rank's first index along split_dim
    size_t offset;       // element offset into model.params / model.grads
    size_t size;         // local element count
    int decay;           // 1 when AdamW applies weight decay (matrices), 0 for norms/biases
    int group;           // parameter group: MODEL_GROUP_*
} model_tensor;

enum { MODEL_GROUP_TEXT, MODEL_GROUP_IMAGE, MODEL_GROUP_AUDIO, MODEL_GROUP_TRUNK,
       MODEL_N_GROUPS };

// Activation recomputation (config model.recompute), for both model kinds: what backward
// recomputes instead of keeping from forward, trading one extra forward of that part per
// step for activation memory. Losses and gradients do not change: the recomputation runs the
// same ops on the same saved inputs (bitwise on a deterministic backend).
typedef enum {
    MODEL_RECOMPUTE_NONE = 0,   // keep every activation backward needs
    // keep all but each attention's internals (ops->attention_saved and the attention output;
    // the DiT's cross-attention too), which share one buffer and are recomputed per layer
    MODEL_RECOMPUTE_ATTENTION,
    // keep only each block's input (the residual stream between blocks); backward reruns a
    // block's forward into one set of block activations shared by every layer. The DiT's
    // small conditioning encoders are not recomputed.
    MODEL_RECOMPUTE_BLOCK
} model_recompute;
// The mode of a config value ("none", "attention", "block": train/config.c's model.recompute,
// validated there); aborts on any other name.
model_recompute model_recompute_named(const char *name);

enum { MODEL_STEM_PATCH, MODEL_STEM_CONV };

// ---------------------------------------------------------------------------------------
// Architecture. Sequence layout per sample: [image patches | audio tokens | text tokens];
// the image and audio tokens form the bidirectional prefix (P = n_img + n_aud), text is
// causal. A missing modality's tokens are masked out as keys.
typedef struct {
    int d_model, n_layers, n_heads, d_ff;
    int vocab;                        // DATA_VOCAB
    int text_T;                       // text positions (BOS + text_max)
    int img_h, img_w, img_c, patch;   // n_img = (img_h/patch) * (img_w/patch)
    // The image stem: 0 (MODEL_STEM_PATCH, every existing caller's zeroed config) projects
    // each patch; MODEL_STEM_CONV runs two 3x3 convolution + GELU + 2x2 max-pool stages of
    // stem_width and 2 * stem_width channels first, then patches of patch / 4 (transformer.c
    // "stem"; train/MODEL.md).
    int stem, stem_width;
    int audio_F, n_mels, audio_group; // n_aud = audio_F / audio_group (frames per token)
    int tp, tp_rank;                  // tensor parallel size and this rank in it
    // the tp ranks (NULL when tp == 1); not owned. May also be NULL under tp > 1 for a model
    // that only lays out and initializes slices (resharding, table tests): forward, backward
    // and generate then abort with a hint.
    comm_group *tp_group;
    model_recompute recompute;        // 0 (none) unless set
    // Regularisation, applied only to a model_input with train set (all 0: none; the zeroed
    // config of every existing caller). Inverted dropout with these probabilities in [0, 1):
    double dropout;          // on the block-0 input and each block's attention and MLP
                             // branch before its residual add (GPT-2's embd and resid pdrop)
    double attn_dropout;     // on the attention probabilities (GPT-2's attn_pdrop)
    double label_smoothing;  // eps of the training cross-entropy (ops xent_fwd)
} model_config;

// Model inputs for one micro-batch (host or device memory as the backend requires).
typedef struct {
    int B;
    const mm_real *image;        // (B, img_h, img_w, img_c) in [-1, 1]
    const uint8_t *has_image;    // (B)
    const mm_real *audio;        // (B, audio_F, n_mels)
    const uint8_t *has_audio;    // (B)
    const int32_t *tokens;       // (B, text_T)
    const int32_t *targets;      // (B, text_T), -1 = ignored
    // 1 for a training micro-batch: the config's dropout and label smoothing apply, drawn
    // from (model_create's seed, step, sample_id) (model_drop.h); 0 for evaluation (plain
    // cross-entropy, no dropout). sample_id is host memory, needed only when train is 1.
    int train;
    int64_t step;               // the optimizer step this micro-batch belongs to
    const uint64_t *sample_id;  // (B) global sample ids (data_batch.sample_id)
    // Nonzero: the model_backward that follows will take this loss_scale, so model_forward
    // computes the classifier's gradient in the same pass as its loss (ops xent_fwd_bwd: the
    // same bits as computing it in model_backward, one pass over the logits fewer). 0: the
    // backward computes it, from what the forward saved.
    mm_real loss_scale;
} model_input;

typedef struct model model;  // opaque; see model/transformer.c

// Modality dropout of one training sample (model.modality_drop, model.audio_drop): with both
// an image and audio, its audio is left out with probability modality_drop and otherwise its
// image with probability modality_drop (never both: modality_drop <= 0.5); then, while it
// still has both, its audio is left out with probability audio_drop. The draws are
// model_drop.h's for (seed, step, sample id), so they do not depend on the layout. Updates
// *has_image, *has_audio (host).
void model_modality_drop(uint64_t seed, int64_t step, uint64_t sample_id, double modality_drop,
                         double audio_drop, uint8_t *has_image, uint8_t *has_audio);

// Builds the parameter table for cfg, allocates params and grads (one buffer each, owned
// by the model) and activations for up to max_B samples; draws initial weights from seed.
// Returns -1 with err filled when cfg is inconsistent (e.g. heads do not divide d_model, tp
// does not divide n_heads or d_ff, tp_group's size/rank differ from tp/tp_rank).
//
// Table order: [img.*, audio.*, text.wte, text.pos, blocks.0 .. blocks.L-1, ln_f, lm_head],
// i.e. the order in which backward completes, reversed (see model_set_grad_hook). Tensor
// NAMES are the stable interface (checkpoints are by name); do not rely on positions.
int model_create(model **out, const model_config *cfg, const mm_backend *be, int max_B,
                 uint64_t seed, mm_err *err);
void model_free(model *m);

// What a model of cfg needs on one rank for batches of up to max_B samples, computed without
// allocating, by the same carving model_create does (the trainer's memory estimate,
// train/memory.h). diffusion.h's dit_mem_plan fills the same.
typedef struct {
    size_t n_params;       // this tp rank's parameters (floats of params, and of grads)
    size_t act_bytes;      // the activation buffer, total
    size_t act_per_layer;  // of it, what each block keeps for itself: all of its activations
                           // (recompute none), all but the attention's (attention), its output
                           // only (block); the set the blocks share is counted once, in act_bytes
    size_t attn_probs;     // one self-attention's (max_B, heads, T, T) fp32 probabilities, which
                           // a backend may materialise in its scratch (not in act_bytes)
    int attn_hd;           // that attention's head width
    size_t attn_rows;      // its (max_B, T) rows times its heads' width: the elements of its
                           // output (a backend may copy its operands, a few times that)
    int attn_dropout;      // 1 when dropout applies to its probabilities
    size_t max_tensor;     // elements of the largest tensor (a weight a matmul may copy)
    int n_layers;
} model_mem;
// -1 with err for a cfg model_create refuses.
int model_mem_plan(const model_config *cfg, const mm_backend *be, int max_B, model_mem *out,
                   mm_err *err);

const model_config *model_cfg(const model *m);
int model_n_tensors(const model *m);
const model_tensor *model_tensors(const model *m);
size_t model_n_params(const model *m);     // local element count of params (and grads)
mm_real *model_params(model *m);           // (n_params) contiguous
mm_real *model_grads(model *m);            // (n_params) contiguous
int model_seq_len(const model *m);         // n_img + n_aud + text_T

// Under tp > 1, model_forward, model_backward and model_generate are collective over
// cfg.tp_group: every tp rank calls them in the same order with the same input.
//
// Forward pass. Returns the SUM over the B samples of each sample's mean token loss
// (samples without a target contribute 0) and stores the count of samples with targets in
// *n_scored (may be NULL). Keeps activations for model_backward.
double model_forward(model *m, const model_input *in, int *n_scored);
// Backward of loss_scale * (that sum): ACCUMULATES into the grads buffer (call
// model_zero_grad before the first micro-step). Training passes loss_scale = 1/global_batch;
// a forward given a nonzero in->loss_scale needs the same one here.
void model_backward(model *m, const model_input *in, mm_real loss_scale);
void model_zero_grad(model *m);

// Gradient-ready hook for data-parallel overlap: during model_backward, fn(ctx, lo) is called
// each time the gradients of every parameter at element offset >= lo (of model_grads) are
// complete for this backward pass: after the head (ln_f, lm_head), after each block (L-1 down
// to 0) and at the end with lo = 0. lo strictly decreases within one pass. fn runs on the
// calling thread between model ops; it may start non-blocking collectives on grads[lo..] but
// must not write below lo. fn NULL removes the hook. ctx is not owned.
typedef void (*model_grad_hook)(void *ctx, size_t lo);
void model_set_grad_hook(model *m, model_grad_hook fn, void *ctx);

// Greedy decoding: for each sample, starts from BOS and appends the argmax token until EOS
// (or another special token, which has no byte form) or text_T - 1 tokens; writes the generated bytes NUL-terminated to out + b * out_stride.
// Uses in->image/audio/has_*; in->tokens/targets are ignored. Reuses the activation buffers:
// run model_forward again before a model_backward (grads and params are not touched).
void model_generate(model *m, const model_input *in, char *out, int out_stride);

// FLOPs of one forward+backward per sample (matmuls and attention) of the WHOLE model, not of
// this rank's share under tp, for throughput reports.
double model_flops_per_sample(const model *m);

#endif  // MM_MODEL_H
