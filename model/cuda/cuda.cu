// cuda.cu: the CUDA backend's context and plumbing (model/cuda.h): device selection by local
// rank, streams, the cuBLAS handle, scratch memory, device memory helpers, the row-major
// GEMM wrappers and the shared layout kernels the ops use (model/cuda_internal.h), and the
// optimizer-side kernels of a training step (AdamW, EMA, gradient sum of squares, scale),
// which follow train/optim.c operation for operation so that a GPU step updates weights as
// the CPU reference does.
#include "cuda_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------
// hints for the check macros

const char *cuda_hint(cudaError_t e) {
    switch (e) {
    case cudaErrorMemoryAllocation:
        return "out of GPU memory: lower data.micro_batch or the model size";
    case cudaErrorNoDevice:
    case cudaErrorInvalidDevice:
        return "no such GPU: check nvidia-smi and CUDA_VISIBLE_DEVICES, one rank per GPU";
    case cudaErrorInsufficientDriver:
        return "no NVIDIA driver, or one older than this CUDA toolkit: check nvidia-smi";
    case cudaErrorInvalidConfiguration:
    case cudaErrorInvalidValue:
        return "a bad launch or argument: a bug in the CUDA backend (shapes?)";
    default:
        return "a kernel may have failed earlier, asynchronously: rerun with "
               "CUDA_LAUNCH_BLOCKING=1 to see where";
    }
}

const char *cublas_hint(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
        return "cuBLAS could not start: is the GPU usable (nvidia-smi)?";
    case CUBLAS_STATUS_ALLOC_FAILED:
        return "out of GPU memory inside cuBLAS";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "bad GEMM sizes or leading dimensions: a bug in the CUDA backend";
    case CUBLAS_STATUS_ARCH_MISMATCH:
        return "this GPU lacks a feature the call needs (bf16 needs compute capability 8.0)";
    default:
        return "check the CUDA/cuBLAS installation and the driver";
    }
}

// ---------------------------------------------------------------------------------------
// precision, local rank

int cuda_precision_parse(const char *s, cuda_precision *out, mm_err *err) {
    if (strcmp(s, "fp32") == 0) *out = CUDA_FP32;
    else if (strcmp(s, "bf16") == 0) *out = CUDA_BF16;
    else return mm_fail(err, "precision: '%s' is not one of fp32, bf16", s);
    return 0;
}

const char *cuda_precision_name(cuda_precision p) { return p == CUDA_BF16 ? "bf16" : "fp32"; }

int cuda_local_rank(int *out, const char **var, mm_err *err) {
    // the launcher's own variable before Slurm's: MPICH's Hydra started inside a Slurm job
    // leaves every rank the SLURM_LOCALID of the one task that started it
    static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID",
                                       "SLURM_LOCALID"};
    *out = 0;
    *var = "";
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        const char *s = getenv(vars[i]);
        if (!s) continue;
        char *end = NULL;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || *end != '\0' || errno != 0 || v < 0 || v > 1 << 20)
            return mm_fail(err, "environment: %s='%s' is not a local rank (a non-negative "
                           "integer)", vars[i], s);
        *out = (int)v;
        *var = vars[i];
        return 0;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// context

int cuda_ctx_init(cuda_ctx *c, int world_rank, cuda_precision precision, mm_err *err) {
    memset(c, 0, sizeof(*c));
    c->world_rank = world_rank;
    c->precision = precision;
    char host[256] = "?";
    gethostname(host, sizeof(host) - 1);
    int local = 0;
    const char *var = "";
    if (cuda_local_rank(&local, &var, err) != 0) return -1;
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();  // not sticky: clear it
        return mm_fail(err, "rank %d on host %s: no usable CUDA device: %s (%s)", world_rank,
                       host, cudaGetErrorString(e), cuda_hint(e));
    }
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    if (local >= n)
        return mm_fail(err, "rank %d on host %s: local rank %d (%s) needs GPU %d, but %d GPU(s) "
                       "are visible (CUDA_VISIBLE_DEVICES=%s); start at most %d rank(s) per node",
                       world_rank, host, local, var[0] ? var : "no launcher variable: 0", local,
                       n, vis ? vis : "unset", n);
    e = cudaSetDevice(local);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mm_fail(err, "rank %d on host %s: cannot use GPU %d of %d: %s (%s)", world_rank,
                       host, local, n, cudaGetErrorString(e), cuda_hint(e));
    }
    c->device = local;
    cudaDeviceProp prop;
    CU_CHECK(cudaGetDeviceProperties(&prop, local));
    snprintf(c->device_name, sizeof(c->device_name), "%s", prop.name);
    c->sm_count = prop.multiProcessorCount;
    c->cc_major = prop.major;
    c->cc_minor = prop.minor;
    c->mem_bytes = prop.totalGlobalMem;
    c->attn_core_bytes = (size_t)1 << 30;
    c->flash_tc = 1;
    c->matmul_chunk_bytes = (size_t)256 << 20;
    if (precision == CUDA_BF16 && c->cc_major < 8)
        return mm_fail(err, "rank %d on host %s: precision bf16 needs compute capability 8.0 "
                       "or newer; GPU %d (%s) has %d.%d", world_rank, host, local,
                       c->device_name, c->cc_major, c->cc_minor);
    CU_CHECK(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CU_CHECK(cudaStreamCreateWithFlags(&c->comm_stream, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&c->blas));
    CUBLAS_CHECK(cublasSetStream(c->blas, c->stream));
    // no TF32: fp32 matmuls stay fp32 (the bf16 path is the explicit fast one)
    CUBLAS_CHECK(cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    CUBLAS_CHECK(cublasLtCreate(&c->lt));
    CU_CHECK(cudaMalloc((void **)&c->flag, 4 * sizeof(int)));
    CU_CHECK(cudaMemsetAsync(c->flag, 0, 4 * sizeof(int), c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
    return 0;
}

void cuda_ctx_free(cuda_ctx *c) {
    if (!c->stream) {  // never initialized (or init failed before the streams)
        memset(c, 0, sizeof(*c));
        return;
    }
    CU_CHECK(cudaSetDevice(c->device));
    CU_CHECK(cudaStreamSynchronize(c->stream));
    CU_CHECK(cudaStreamSynchronize(c->comm_stream));
    CUBLAS_CHECK(cublasDestroy(c->blas));
    CUBLAS_CHECK(cublasLtDestroy(c->lt));
    CU_CHECK(cudaFree(c->lt_ws));
    CU_CHECK(cudaFree(c->p16));
    CU_CHECK(cudaFree(c->scratch));
    CU_CHECK(cudaFree(c->act_scratch));
    CU_CHECK(cudaFree(c->flag));
    CU_CHECK(cudaStreamDestroy(c->stream));
    CU_CHECK(cudaStreamDestroy(c->comm_stream));
    memset(c, 0, sizeof(*c));
}

void cuda_ctx_sync(cuda_ctx *c) {
    CU_CHECK(cudaStreamSynchronize(c->stream));
    int f[4] = {0, 0, 0, 0};
    CU_CHECK(cudaMemcpyAsync(f, c->flag, sizeof(f), cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
    if (f[0] == CU_FLAG_XENT_TARGET)
        mm_fatal(__FILE__, __LINE__, "cross-entropy (CUDA): target %d of row %d is outside "
                 "[-1, vocab): the batch's targets are corrupt", f[1], f[2]);
    if (f[0] == CU_FLAG_TOKEN)
        mm_fatal(__FILE__, __LINE__, "embedding (CUDA): token %d of sample %d is outside "
                 "[0, vocab): the batch's tokens are corrupt", f[1], f[2]);
    MM_CHECK(f[0] == 0, "CUDA: a kernel recorded unknown error code %d", f[0]);
}

// *p (*have bytes) grown to at least bytes (a quarter more, whole MiB)
static void *scratch_grow(cuda_ctx *c, void **p, size_t *have, size_t bytes, const char *what) {
    if (bytes <= *have) return *p;
    CU_CHECK(cudaStreamSynchronize(c->stream));  // earlier ops may still use the old one
    CU_CHECK(cudaFree(*p));
    *p = NULL;
    size_t n = cu_round_up(bytes + bytes / 4, (size_t)1 << 20);
    cudaError_t e = cudaMalloc(p, n);
    if (e != cudaSuccess)
        mm_fatal(__FILE__, __LINE__, "CUDA: cudaMalloc of %zu bytes of %s failed: %s (%s)", n,
                 what, cudaGetErrorString(e), cuda_hint(e));
    *have = n;
    return *p;
}

void *cuda_scratch(cuda_ctx *c, size_t bytes) {
    return scratch_grow(c, &c->scratch, &c->scratch_bytes, bytes, "op scratch");
}

void *cuda_act_scratch(cuda_ctx *c, size_t bytes) {
    return scratch_grow(c, &c->act_scratch, &c->act_scratch_bytes, bytes,
                        "fp32 copies of bf16 activations");
}

// ---------------------------------------------------------------------------------------
// memory

void *cuda_alloc(cuda_ctx *c, size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 1;  // a valid, distinct pointer for empty tensors
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess)
        mm_fatal(__FILE__, __LINE__, "CUDA: cudaMalloc of %zu bytes failed: %s (%s)", bytes,
                 cudaGetErrorString(e), cuda_hint(e));
    CU_CHECK(cudaMemsetAsync(p, 0, bytes, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
    return p;
}

void cuda_free(void *p) {
    if (p) CU_CHECK(cudaFree(p));
}

void cuda_params16_touch(cuda_ctx *c, const void *dst, size_t bytes) {
    if (!c->p16_valid || bytes == 0) return;
    const char *a = (const char *)dst, *lo = (const char *)c->p16_src;
    if (a < lo + c->p16_n * sizeof(float) && lo < a + bytes) c->p16_valid = 0;
}

void cuda_upload(cuda_ctx *c, void *dev, const void *host, size_t bytes) {
    if (bytes == 0) return;
    cuda_params16_touch(c, dev, bytes);
    CU_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
}

void cuda_download(cuda_ctx *c, void *host, const void *dev, size_t bytes) {
    if (bytes == 0) return;
    CU_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
}

void cuda_copy(cuda_ctx *c, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return;
    cuda_params16_touch(c, dst, bytes);
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
    CU_CHECK(cudaStreamSynchronize(c->stream));
}

void cuda_zero(cuda_ctx *c, void *dev, size_t bytes) {
    if (bytes == 0) return;
    cuda_params16_touch(c, dev, bytes);
    CU_CHECK(cudaMemsetAsync(dev, 0, bytes, c->stream));
}

// ---------------------------------------------------------------------------------------
// input staging (cuda.h)

void cuda_stage_init(cuda_stage *s, cuda_ctx *c, size_t bytes) {
    memset(s, 0, sizeof(*s));
    s->bytes = bytes ? bytes : 256;
    CU_CHECK(cudaStreamCreateWithFlags(&s->copy, cudaStreamNonBlocking));
    for (int i = 0; i < 2; i++) {
        CU_CHECK(cudaMallocHost(&s->pinned[i], s->bytes));
        s->dev[i] = cuda_alloc(c, s->bytes);
        CU_CHECK(cudaEventCreateWithFlags(&s->copied[i], cudaEventDisableTiming));
        CU_CHECK(cudaEventCreateWithFlags(&s->used[i], cudaEventDisableTiming));
        CU_CHECK(cudaEventRecord(s->copied[i], s->copy));
        CU_CHECK(cudaEventRecord(s->used[i], c->stream));
    }
}

void cuda_stage_free(cuda_stage *s) {
    if (!s->copy) return;
    CU_CHECK(cudaStreamSynchronize(s->copy));
    for (int i = 0; i < 2; i++) {
        CU_CHECK(cudaEventSynchronize(s->used[i]));
        CU_CHECK(cudaFreeHost(s->pinned[i]));
        cuda_free(s->dev[i]);
        CU_CHECK(cudaEventDestroy(s->copied[i]));
        CU_CHECK(cudaEventDestroy(s->used[i]));
    }
    CU_CHECK(cudaStreamDestroy(s->copy));
    memset(s, 0, sizeof(*s));
}

void *cuda_stage_put(cuda_stage *s, cuda_ctx *c, int n, const void *const *src,
                     const size_t *len, void **dst) {
    const int k = s->next;
    s->next ^= 1;
    CU_CHECK(cudaEventSynchronize(s->copied[k]));  // the pinned buffer is free again
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        MM_CHECK(off + len[i] <= s->bytes, "cuda_stage_put: %zu bytes exceed the slot's %zu",
                 off + len[i], s->bytes);
        if (len[i]) memcpy((char *)s->pinned[k] + off, src[i], len[i]);
        dst[i] = (char *)s->dev[k] + off;
        off = cu_round_up(off + len[i], 256);
    }
    if (off > s->bytes) off = s->bytes;
    CU_CHECK(cudaStreamWaitEvent(s->copy, s->used[k], 0));  // compute is done reading it
    CU_CHECK(cudaMemcpyAsync(s->dev[k], s->pinned[k], off, cudaMemcpyHostToDevice, s->copy));
    CU_CHECK(cudaEventRecord(s->copied[k], s->copy));
    CU_CHECK(cudaStreamWaitEvent(c->stream, s->copied[k], 0));
    return s->dev[k];
}

void cuda_stage_done(cuda_stage *s, cuda_ctx *c) {
    CU_CHECK(cudaEventRecord(s->used[s->next ^ 1], c->stream));
}

// ---------------------------------------------------------------------------------------
// GEMM (row-major over column-major cuBLAS; see cuda_internal.h)

static inline cublasOperation_t op(int t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

void cu_gemm(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha, const float *A,
             int lda, long long sA, const float *B, int ldb, long long sB, float beta, float *C,
             int ldc, long long sC, int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    MM_CHECK(K > 0, "gemm: inner dimension %d", K);
    if (batch == 1)
        CUBLAS_CHECK(cublasSgemm(c->blas, op(tb), op(ta), N, M, K, &alpha, B, ldb, A, lda, &beta,
                                 C, ldc));
    else
        CUBLAS_CHECK(cublasSgemmStridedBatched(c->blas, op(tb), op(ta), N, M, K, &alpha, B, ldb,
                                               sB, A, lda, sA, &beta, C, ldc, sC, batch));
}

// bf16 A and B, C of type ct (fp32 or bf16), fp32 accumulation: the two overloads below
static void gemm_ex(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha, const cu_bf16 *A,
                    int lda, long long sA, const cu_bf16 *B, int ldb, long long sB, float beta,
                    void *C, cudaDataType ct, int ldc, long long sC, int batch) {
    if (M <= 0 || N <= 0 || batch <= 0) return;
    MM_CHECK(K > 0, "gemm: inner dimension %d", K);
    if (batch == 1)
        CUBLAS_CHECK(cublasGemmEx(c->blas, op(tb), op(ta), N, M, K, &alpha, B, CUDA_R_16BF, ldb,
                                  A, CUDA_R_16BF, lda, &beta, C, ct, ldc, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
    else
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(
            c->blas, op(tb), op(ta), N, M, K, &alpha, B, CUDA_R_16BF, ldb, sB, A, CUDA_R_16BF,
            lda, sA, &beta, C, ct, ldc, sC, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

void cu_gemm(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha, const cu_bf16 *A,
             int lda, long long sA, const cu_bf16 *B, int ldb, long long sB, float beta, float *C,
             int ldc, long long sC, int batch) {
    gemm_ex(c, ta, tb, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, CUDA_R_32F, ldc, sC,
            batch);
}

void cu_gemm(cuda_ctx *c, int ta, int tb, int M, int N, int K, float alpha, const cu_bf16 *A,
             int lda, long long sA, const cu_bf16 *B, int ldb, long long sB, float beta,
             cu_bf16 *C, int ldc, long long sC, int batch) {
    gemm_ex(c, ta, tb, M, N, K, alpha, A, lda, sA, B, ldb, sB, beta, C, CUDA_R_16BF, ldc, sC,
            batch);
}

// One cuBLASLt matmul, column-major: D (m x n, ld m, of type dt) = op(A) B with bf16 A
// (stored k x m and transposed when ta, else m x k) and B (k x n), then the epilogue: bias
// (m) for the bias kinds, aux (m x n, ld m) the GELU's input (written by GELU_AUX_BIAS, read
// by DGELU), both of D's type (cuBLASLt's default). cuBLASLt wants the algorithm of each call
// looked up (a host call of microseconds, as llm.c does it, while the GPU runs ahead).
// Returns -1, launching nothing, when it has none for these shapes.
static int lt_matmul(cuda_ctx *c, cu_lt_kind kind, int ta_, int m, int n, int k,
                     const cu_bf16 *A, int lda, const cu_bf16 *B, int ldb, void *D,
                     cudaDataType dt, const void *bias, void *aux) {
    static const uint32_t epilogue[CU_LT_KINDS] = {
        CUBLASLT_EPILOGUE_BIAS, CUBLASLT_EPILOGUE_GELU_AUX_BIAS, CUBLASLT_EPILOGUE_DGELU};
    const cublasOperation_t ta = ta_ ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
    const uint32_t epi = epilogue[kind];
    const int64_t aux_ld = m;
    if (!c->lt_ws) {  // on first use: fp32 runs never take this path
        CU_CHECK(cudaMalloc(&c->lt_ws, CUDA_LT_WORKSPACE));
        c->lt_ws_bytes = CUDA_LT_WORKSPACE;
    }
    const uint64_t ws = c->lt_ws_bytes;
    cublasLtMatmulDesc_t d;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    if (bias)
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                    sizeof(bias)));
    if (aux) {
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                                    &aux, sizeof(aux)));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD,
                                                    &aux_ld, sizeof(aux_ld)));
    }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta_ ? k : m, ta_ ? m : k, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, n, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, dt, m, n, m));
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    // the operands' actual alignments (the default promises 256 bytes: an activation is
    // carved at 64, a weight's place in the parameters' copy at 2), as PyTorch passes them
    const void *ptr[3] = {A, B, D};
    static const cublasLtMatmulPreferenceAttributes_t align_attr[3] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (int i = 0; i < 3; i++) {
        uint32_t al = 256;
        while (al > 1 && (uintptr_t)ptr[i] % al) al /= 2;
        CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &al, sizeof(al)));
        if (i == 2)  // C is D
            CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
                pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof(al)));
    }
    cublasLtMatmulHeuristicResult_t h;
    int got = 0;
    const int ok = cublasLtMatmulAlgoGetHeuristic(c->lt, d, la, lb, ld, ld, pref, 1, &h, &got) ==
                       CUBLAS_STATUS_SUCCESS &&
                   got > 0;
    if (ok) {
        const float one = 1, zero = 0;
        CUBLAS_CHECK(cublasLtMatmul(c->lt, d, &one, A, la, B, lb, &zero, D, ld, D, ld, &h.algo,
                                    c->lt_ws, c->lt_ws_bytes, c->stream));
        c->lt_matmuls[kind]++;
    }
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(ld));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(d));
    return ok ? 0 : -1;
}

// D (OC x N) = w^T-as-stored (w is (IC x OC) column-major, transposed) times inp (IC x N)
int cu_gemm_lt(cuda_ctx *c, int N, int OC, int IC, const cu_bf16 *inp, const cu_bf16 *w,
               const float *bias, float *gelu_pre, float *out) {
    return lt_matmul(c, gelu_pre ? CU_LT_GELU_BIAS : CU_LT_BIAS, 1, OC, N, IC, w, IC, inp, IC, out,
                     CUDA_R_32F, bias, gelu_pre);
}
int cu_gemm_lt(cuda_ctx *c, int N, int OC, int IC, const cu_bf16 *inp, const cu_bf16 *w,
               const cu_bf16 *bias, cu_bf16 *gelu_pre, cu_bf16 *out) {
    return lt_matmul(c, gelu_pre ? CU_LT_GELU_BIAS : CU_LT_BIAS, 1, OC, N, IC, w, IC, inp, IC, out,
                     CUDA_R_16BF, bias, gelu_pre);
}

// D (IC x N) = w (IC x OC column-major) times dout (OC x N), then times GELU'(pre)
int cu_gemm_dgelu_lt(cuda_ctx *c, int N, int IC, int OC, const cu_bf16 *dout, const cu_bf16 *w,
                     const float *pre, float *dpre) {
    return lt_matmul(c, CU_LT_DGELU, 0, IC, N, OC, w, IC, dout, OC, dpre, CUDA_R_32F, NULL,
                     (void *)pre);
}
int cu_gemm_dgelu_lt(cuda_ctx *c, int N, int IC, int OC, const cu_bf16 *dout, const cu_bf16 *w,
                     const cu_bf16 *pre, cu_bf16 *dpre) {
    return lt_matmul(c, CU_LT_DGELU, 0, IC, N, OC, w, IC, dout, OC, dpre, CUDA_R_16BF, NULL,
                     (void *)pre);
}

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

void cu_to_bf16(cuda_ctx *c, __nv_bfloat16 *dst, const float *src, size_t n) {
    if (n == 0) return;
    CU_LAUNCH(k_to_bf16, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, dst, src, n);
    CU_CHECK_LAUNCH("to_bf16");
}

__global__ void k_from_bf16(float *dst, const cu_bf16 *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

void cu_from_bf16(cuda_ctx *c, float *dst, const cu_bf16 *src, size_t n) {
    if (n == 0) return;
    CU_LAUNCH(k_from_bf16, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, dst, src, n);
    CU_CHECK_LAUNCH("from_bf16");
}

// ---------------------------------------------------------------------------------------
// column sums, pass 2 (cuda_internal.h)

template <typename A>
__global__ void k_colsum_final(const float *part, int S, int nch, int K, int C, A *dst0, A *dst1,
                               int sc) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x, s = blockIdx.y;
    if (c >= C || s >= S) return;
    for (int k = 0; k < K; k++) {
        const float *p = part + ((size_t)s * nch * K + k) * C + c;
        float acc = 0;
        for (int ch = 0; ch < nch; ch++) acc += p[(size_t)ch * K * C];
        A *d = k == 0 ? dst0 : dst1;
        d[(size_t)s * sc + c] = cu_a<A>(cu_f(d[(size_t)s * sc + c]) + acc);
    }
}

void cu_colsum_final(cuda_ctx *c, const float *part, int S, int nch, int K, int C, float *dst0,
                     float *dst1, int sc, int dst16) {
    dim3 g((C + CU_THREADS - 1) / CU_THREADS, S);
    CU_AS(dst16, CU_LAUNCH(k_colsum_final<A>, g, CU_THREADS, c->stream, part, S, nch, K, C,
                           (A *)dst0, (A *)dst1, sc));
    CU_CHECK_LAUNCH("colsum final");
}

// ---------------------------------------------------------------------------------------
// heads layout (cuda_internal.h). One grid row per (b, h) (looping when there are more than
// the grid allows), grid-stride over the head's T * HD elements.

__device__ __forceinline__ void heads_store(float *p, float v) { *p = v; }
__device__ __forceinline__ void heads_store(__nv_bfloat16 *p, float v) {
    *p = __float2bfloat16(v);
}

template <typename D>
__global__ void k_heads_split(D *dst, const float *src, int BNH, int NH, int T, int HD, int rs,
                              int off) {
    const int n = T * HD;
    for (int bh = blockIdx.y; bh < BNH; bh += gridDim.y) {
        const int b = bh / NH, h = bh % NH;
        const float *s = src + (size_t)b * T * rs + off + (size_t)h * HD;
        D *d = dst + (size_t)bh * n;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
            heads_store(&d[i], s[(size_t)(i / HD) * rs + i % HD]);
    }
}

__global__ void k_heads_merge(float *dst, const float *src, int BNH, int NH, int T, int HD, int rs,
                              int off, int acc) {
    const int n = T * HD;
    for (int bh = blockIdx.y; bh < BNH; bh += gridDim.y) {
        const int b = bh / NH, h = bh % NH;
        float *d = dst + (size_t)b * T * rs + off + (size_t)h * HD;
        const float *s = src + (size_t)bh * n;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
            float *di = d + (size_t)(i / HD) * rs + i % HD;
            *di = acc ? *di + s[i] : s[i];
        }
    }
}

static dim3 heads_grid(int BNH, int n) {
    unsigned x = cu_blocks((size_t)n, CU_THREADS);
    if (x > 1024) x = 1024;
    return dim3(x, BNH < 65535 ? BNH : 65535);
}

template <typename D>
static void heads_split(cuda_ctx *c, D *dst, const float *src, int B, int T, int NH, int HD,
                        int rs, int off) {
    if (B <= 0 || T <= 0) return;
    MM_CHECK((size_t)T * HD < (size_t)1 << 31, "heads: T*HD %d*%d too large", T, HD);
    CU_LAUNCH(k_heads_split<D>, heads_grid(B * NH, T * HD), CU_THREADS, c->stream, dst, src,
              B * NH, NH, T, HD, rs, off);
    CU_CHECK_LAUNCH("heads_split");
}
void cu_heads_split(cuda_ctx *c, float *dst, const float *src, int B, int T, int NH, int HD,
                    int rs, int off) {
    heads_split(c, dst, src, B, T, NH, HD, rs, off);
}
void cu_heads_split(cuda_ctx *c, __nv_bfloat16 *dst, const float *src, int B, int T, int NH,
                    int HD, int rs, int off) {
    heads_split(c, dst, src, B, T, NH, HD, rs, off);
}

void cu_heads_merge(cuda_ctx *c, float *dst, const float *src, int B, int T, int NH, int HD,
                    int rs, int off, int acc) {
    if (B <= 0 || T <= 0) return;
    MM_CHECK((size_t)T * HD < (size_t)1 << 31, "heads: T*HD %d*%d too large", T, HD);
    CU_LAUNCH(k_heads_merge, heads_grid(B * NH, T * HD), CU_THREADS, c->stream, dst, src,
              B * NH, NH, T, HD, rs, off, acc);
    CU_CHECK_LAUNCH("heads_merge");
}

// ---------------------------------------------------------------------------------------
// optimizer kernels

// One chunk: a piece of one segment, the unit of the AdamW and sum-of-squares grids.
typedef struct {
    size_t start;     // absolute element index in the parameter buffer
    int len;          // <= CUDA_CHUNK
    int sharded;
    float decay, lr_mult;
} cu_chunk;

void cuda_plan_init(cuda_plan *p, cuda_ctx *c, const cuda_seg *segs, int n_seg, size_t lo,
                    size_t hi) {
    memset(p, 0, sizeof(*p));
    MM_CHECK(lo <= hi && n_seg >= 0, "cuda_plan_init: bad range [%zu, %zu)", lo, hi);
    p->lo = lo;
    p->hi = hi;
    p->n_seg = n_seg;
    p->seg = (cuda_seg *)mm_calloc(n_seg > 0 ? n_seg : 1, sizeof(cuda_seg));
    size_t prev = lo, nch = 0;
    for (int s = 0; s < n_seg; s++) {
        MM_CHECK(segs[s].offset >= prev && segs[s].offset + segs[s].size <= hi,
                 "cuda_plan_init: segment %d [%zu, +%zu) unsorted or outside [%zu, %zu)", s,
                 segs[s].offset, segs[s].size, lo, hi);
        prev = segs[s].offset + segs[s].size;
        p->seg[s] = segs[s];
        nch += (segs[s].size + CUDA_CHUNK - 1) / CUDA_CHUNK;
    }
    MM_CHECK(nch < (size_t)1 << 30, "cuda_plan_init: %zu chunks", nch);
    p->n_chunk = (int)nch;
    cu_chunk *ch = (cu_chunk *)mm_calloc(nch > 0 ? nch : 1, sizeof(cu_chunk));
    size_t k = 0;
    for (int s = 0; s < n_seg; s++)
        for (size_t o = 0; o < segs[s].size; o += CUDA_CHUNK) {
            const size_t left = segs[s].size - o;
            const size_t len = left < (size_t)CUDA_CHUNK ? left : (size_t)CUDA_CHUNK;
            cu_chunk x = {segs[s].offset + o, (int)len, segs[s].sharded, segs[s].decay,
                          segs[s].lr_mult};
            ch[k++] = x;
        }
    p->dchunk = cuda_alloc(c, (nch > 0 ? nch : 1) * sizeof(cu_chunk));
    cuda_upload(c, p->dchunk, ch, nch * sizeof(cu_chunk));
    p->dpart = (double *)cuda_alloc(c, (nch + 2) * sizeof(double));
    free(ch);
}

void cuda_plan_free(cuda_plan *p) {
    free(p->seg);
    cuda_free(p->dchunk);
    cuda_free(p->dpart);
    memset(p, 0, sizeof(*p));
}

// optim_adamw's loop body, float for float (this file is compiled without FMA contraction).
__global__ void k_adamw(const cu_chunk *chunks, size_t base, float *params, const float *grads,
                        float *m, float *v, float b1, float b2, float eps, float ibc1, float ibc2,
                        float flr, float wd, float gs) {
    const cu_chunk ch = chunks[blockIdx.x];
    const float lri = flr * ch.lr_mult, wdi = wd * ch.decay;
    for (int t = threadIdx.x; t < ch.len; t += blockDim.x) {
        const size_t i = ch.start + t, j = i - base;
        float gi = grads[j] * gs;
        float mi = b1 * m[j] + (1.0f - b1) * gi;
        float vi = b2 * v[j] + (1.0f - b2) * gi * gi;
        m[j] = mi;
        v[j] = vi;
        float mhat = mi * ibc1, vhat = vi * ibc2;
        params[i] -= lri * (mhat / (sqrtf(vhat) + eps) + wdi * params[i]);
    }
}

void cuda_adamw(cuda_ctx *c, const cuda_plan *p, float *params, const float *grads, float *m,
                float *v, int64_t step, double lr, double beta1, double beta2, double eps,
                double weight_decay, double grad_scale) {
    if (p->n_chunk == 0) return;
    MM_CHECK(step >= 1, "cuda_adamw: step %lld is not 1-based", (long long)step);
    // the same double-to-float roundings as optim_adamw
    const float b1 = (float)beta1, b2 = (float)beta2, feps = (float)eps;
    const float ibc1 = (float)(1.0 / (1.0 - pow(beta1, (double)step)));
    const float ibc2 = (float)(1.0 / (1.0 - pow(beta2, (double)step)));
    cuda_params16_touch(c, params + p->lo, (p->hi - p->lo) * sizeof(float));
    CU_LAUNCH(k_adamw, (unsigned)p->n_chunk, CU_THREADS, c->stream,
              (const cu_chunk *)p->dchunk, p->lo, params, grads, m, v, b1, b2, feps, ibc1, ibc2,
              (float)lr, (float)weight_decay, (float)grad_scale);
    CU_CHECK_LAUNCH("adamw");
}

// part[chunk] = sum of squares of the chunk in double (products of floats are exact in double)
__global__ void k_sumsq_chunks(const cu_chunk *chunks, size_t base, const float *g,
                               double *part) {
    const cu_chunk ch = chunks[blockIdx.x];
    double s = 0;
    for (int t = threadIdx.x; t < ch.len; t += blockDim.x) {
        const double x = g[ch.start + t - base];
        s += x * x;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// out[0] = sharded sum, out[1] = replicated sum over the n chunk partials (one block)
__global__ void k_sumsq_final(const cu_chunk *chunks, const double *part, int n, double *out) {
    double sh = 0, rep = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (chunks[i].sharded) sh += part[i];
        else rep += part[i];
    }
    sh = block_sum(sh);
    rep = block_sum(rep);
    if (threadIdx.x == 0) {
        out[0] = sh;
        out[1] = rep;
    }
}

void cuda_sumsq(cuda_ctx *c, const cuda_plan *p, const float *grads, double *sharded,
                double *replicated) {
    *sharded = *replicated = 0;
    if (p->n_chunk == 0) return;
    const cu_chunk *ch = (const cu_chunk *)p->dchunk;
    CU_LAUNCH(k_sumsq_chunks, (unsigned)p->n_chunk, CU_THREADS, c->stream, ch, p->lo, grads,
              p->dpart);
    CU_CHECK_LAUNCH("sumsq chunks");
    CU_LAUNCH(k_sumsq_final, 1, 1024, c->stream, ch, p->dpart, p->n_chunk,
              p->dpart + p->n_chunk);
    CU_CHECK_LAUNCH("sumsq final");
    double r[2];
    cuda_download(c, r, p->dpart + p->n_chunk, sizeof(r));
    *sharded = r[0];
    *replicated = r[1];
}

__global__ void k_ema(float *ema, const float *p, size_t n, float d) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        ema[i] = d * ema[i] + (1.0f - d) * p[i];
}

void cuda_ema(cuda_ctx *c, float *ema, const float *params, size_t n, float decay) {
    if (n == 0) return;
    CU_LAUNCH(k_ema, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, ema, params, n, decay);
    CU_CHECK_LAUNCH("ema");
}

__global__ void k_scale(float *x, size_t n, float s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

void cuda_scale(cuda_ctx *c, float *x, size_t n, float s) {
    if (n == 0) return;
    CU_LAUNCH(k_scale, cu_blocks(n, CU_THREADS), CU_THREADS, c->stream, x, n, s);
    CU_CHECK_LAUNCH("scale");
}
