// ops_flash_tc_cuda.cu: attention on tensor cores for precision bf16 — FlashAttention-2's
// schedule with its products on mma.sync (m16n8k16, bf16 operands, fp32 accumulation), so
// that the (B, NH, Tq, Tk) probabilities are never written to memory and the products run at
// tensor-core rate. ops_cuda.cu's self-attention and ops_dit_cuda.cu's cross-attention call
// it where the heads allow (HD a multiple of 16, at most 64) and there is no attention
// dropout; the SIMT flash kernels and the cuBLAS core remain the paths for everything else
// (precision fp32, dropout, other head widths). q, k and v are read in place at their row
// strides (packed qkv for self-attention, q and packed kv for cross-attention).
//
// Kernels (grid: 64-row tiles of queries or keys x B * NH; 4 warps, 16 rows each; the mask
// and the layout in cu_flash, cuda_internal.h):
//   fwd: a query tile streams past the key tiles it can see with an online softmax; writes
//        out and the row's log-sum-exp, which is all the backward needs (as the SIMT kernel).
//   dq:  a query tile loops over key tiles, recomputing p = exp(s - lse), dp = dout v^T,
//        ds = scale p (dp - D), dq += ds k.
//   dkv: a key tile loops over the query tiles that can see it: dv += p^T dout, dk += ds^T q.
// Each gradient element is owned by one thread and summed in a fixed order (no atomics), so
// a rerun gives the same bits; the hardware's order inside one mma is fixed for a device.
//
// Numbers: q, k, v and dout are rounded to bf16 when their tiles are loaded (fp32 activations
// are read directly: no conversion pass; bf16 ones, cu_flash.bf16, as they are), as are p and
// ds before the products after them (FlashAttention-2 does the same); scores, the softmax,
// its row sums and every accumulation are fp32; bf16 outputs are rounded once at the store.
// Against the fp32 CPU op: about bf16's precision (test_ops_cuda: 1e-2); bf16 activations
// give the fp32 activations' results rounded (test_act16_cuda: bitwise).
//
// Fragments follow the PTX ISA's layout for mma.m16n8k16 (lane = 4 g + t): an A fragment
// (16 x 16, row-major) is rows g and g + 8, columns 2t, 2t + 1 and 2t + 8, 2t + 9; a B
// fragment (16 x 8) is column g, rows 2t, 2t + 1 and 2t + 8, 2t + 9; a C fragment (16 x 8)
// is rows g and g + 8, columns 2t, 2t + 1. So the operand whose contraction index is not the
// contiguous one is kept transposed in shared memory (V for p v, K for ds k, q and dout for
// the key-side products), and a C fragment of scores becomes the A fragment of the next
// product in registers. The CPU emulator (tests/gpu/cuda_emu.cc) runs the same instruction
// from the same fragments.
#include "cuda_internal.h"

enum { TC_ROWS = 64, TC_THREADS = 128, TC_PAD = 8 };
typedef uint16_t tc_bits;  // a bf16 in shared memory

__device__ __forceinline__ uint32_t tc_pack(float lo, float hi) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16(lo)) |
           (uint32_t)__bfloat16_as_ushort(__float2bfloat16(hi)) << 16;
}
__device__ __forceinline__ uint32_t tc_ld(const tc_bits *p) {  // two bf16, 4-byte aligned
#ifdef MM_CUDA_EMU
    uint32_t v;
    cuemu_check_aligned(p, 4, "tc_ld");
    memcpy(&v, p, 4);
    return v;
#else
    return *reinterpret_cast<const uint32_t *>(p);
#endif
}
__device__ __forceinline__ void tc_st(tc_bits *p, uint32_t v) {
#ifdef MM_CUDA_EMU
    cuemu_check_aligned(p, 4, "tc_st");
    memcpy(p, &v, 4);
#else
    *reinterpret_cast<uint32_t *>(p) = v;
#endif
}

// d += a b for one warp (every lane calls it)
__device__ __forceinline__ void tc_mma(float d[4], const uint32_t a[4], const uint32_t b[2]) {
#ifdef MM_CUDA_EMU
    cuemu_mma_bf16_16816(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// A fragment of the 16 x 16 block at (r0, k0) of S, k contiguous
template <int LD>
__device__ __forceinline__ void tc_frag_a(uint32_t a[4], const tc_bits (*S)[LD], int r0, int k0,
                                          int g, int t) {
    a[0] = tc_ld(&S[r0 + g][k0 + 2 * t]);
    a[1] = tc_ld(&S[r0 + g + 8][k0 + 2 * t]);
    a[2] = tc_ld(&S[r0 + g][k0 + 2 * t + 8]);
    a[3] = tc_ld(&S[r0 + g + 8][k0 + 2 * t + 8]);
}
// B fragment of the 16 (k) x 8 (n) block at (k0, n0) of an operand stored n-major: S[n][k]
template <int LD>
__device__ __forceinline__ void tc_frag_b(uint32_t b[2], const tc_bits (*S)[LD], int n0, int k0,
                                          int g, int t) {
    b[0] = tc_ld(&S[n0 + g][k0 + 2 * t]);
    b[1] = tc_ld(&S[n0 + g][k0 + 2 * t + 8]);
}
// The A fragment (16 x 16) made of two C fragments side by side (columns 0-7, 8-15)
__device__ __forceinline__ void tc_c_to_a(uint32_t a[4], const float c0[4], const float c1[4]) {
    a[0] = tc_pack(c0[0], c0[1]);
    a[1] = tc_pack(c0[2], c0[3]);
    a[2] = tc_pack(c1[0], c1[1]);
    a[3] = tc_pack(c1[2], c1[3]);
}

// s (16 x TC_ROWS, C fragments) += A (16 x 16 KD, its A fragments a) @ the operand that S
// holds n-major (S[n][k]: TC_ROWS rows of 16 KD): the first product of every kernel (q k^T,
// dout v^T, k q^T, v dout^T)
template <int KD, int LD>
__device__ __forceinline__ void tc_rows(float (*s)[4], const uint32_t (*a)[4],
                                        const tc_bits (*S)[LD], int g, int t) {
    for (int kk = 0; kk < KD; kk++)
        for (int n = 0; n < TC_ROWS / 8; n++) {
            uint32_t bf[2];
            tc_frag_b(bf, S, 8 * n, 16 * kk, g, t);
            tc_mma(s[n], a[kk], bf);
        }
}

// acc (16 x 8 ND, C fragments) += X (16 x TC_ROWS, given as its C fragments x, rounded to
// bf16 here) @ the operand that S holds n-major (S[n][k]: 8 ND rows of TC_ROWS): the second
// product of every kernel (p v, ds k, p^T dout, ds^T q)
template <int ND, int LD>
__device__ __forceinline__ void tc_acc(float (*acc)[4], const float (*x)[4], const tc_bits (*S)[LD],
                                       int g, int t) {
    for (int kk = 0; kk < TC_ROWS / 16; kk++) {
        uint32_t xa[4];
        tc_c_to_a(xa, x[2 * kk], x[2 * kk + 1]);
        for (int n = 0; n < ND; n++) {
            uint32_t bf[2];
            tc_frag_b(bf, S, 8 * n, 16 * kk, g, t);
            tc_mma(acc[n], xa, bf);
        }
    }
}

// Rows r0 .. r0 + TC_ROWS - 1 (HD wide) of a (T, rs) matrix of A (fp32 or bf16) into bf16
// tiles: rows (TC_ROWS, HD + TC_PAD) and/or cols, its transpose (HD, TC_ROWS + TC_PAD); zeros
// past T.
template <int HD, typename A>
__device__ void tc_load(tc_bits (*rows)[HD + TC_PAD], tc_bits (*cols)[TC_ROWS + TC_PAD],
                        const A *src, size_t rs, int r0, int T) {
    for (int e = threadIdx.x; e < TC_ROWS * HD / 2; e += blockDim.x) {
        const int r = e / (HD / 2), d = 2 * (e % (HD / 2)), i = r0 + r;
        float x0 = 0, x1 = 0;
        if (i < T) {
            x0 = cu_f(src[(size_t)i * rs + d]);
            x1 = cu_f(src[(size_t)i * rs + d + 1]);
        }
        const uint32_t v = tc_pack(x0, x1);
        if (rows) tc_st(&rows[r][d], v);
        if (cols) {
            cols[d][r] = (tc_bits)(v & 0xffffu);
            cols[d + 1][r] = (tc_bits)(v >> 16);
        }
    }
}

// the keys of a tile: 1 where valid (0 past T)
__device__ __forceinline__ void tc_load_valid(uint8_t *kval, const uint8_t *key_valid, int k0,
                                              int T) {
    if (threadIdx.x < TC_ROWS)
        kval[threadIdx.x] = k0 + (int)threadIdx.x < T ? key_valid[k0 + threadIdx.x] != 0 : 0;
}

// the max / sum of a row over the 4 lanes that hold it (the same bits in each)
__device__ __forceinline__ float tc_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float tc_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// One past the last key the queries of the tile at q0 may see
__device__ __forceinline__ int tc_key_end(const cu_flash &a, int q0) {
    const int last = (q0 + TC_ROWS < a.Tq ? q0 + TC_ROWS : a.Tq) - 1, e = cu_attn_lim(last, a.P);
    return e < a.Tk ? e : a.Tk;
}

// out (B, Tq, NH, HD), lse (B, NH, Tq). Thread: query rows g and g + 8 of its warp's 16, their
// running max m and sum l, score columns 8n + 2t (+1) of a key tile, output columns likewise.
template <int HD, typename A>
__global__ void __launch_bounds__(TC_THREADS) k_flash_tc_fwd(cu_flash a, A *out, float *lse) {
    constexpr int KD = HD / 16, ND = HD / 8, NK = TC_ROWS / 8;
    alignas(16) __shared__ tc_bits Qs[TC_ROWS][HD + TC_PAD], Ks[TC_ROWS][HD + TC_PAD],
        Vt[HD][TC_ROWS + TC_PAD];
    __shared__ uint8_t kval[TC_ROWS];
    const int bh = blockIdx.y, b = bh / a.NH, h = bh % a.NH, C = a.NH * HD;
    const int q0 = blockIdx.x * TC_ROWS, w = threadIdx.x / 32, g = threadIdx.x % 32 / 4,
              t = threadIdx.x % 4;
    const A *qb = (const A *)a.q + (size_t)b * a.Tq * a.sq + (size_t)h * HD;
    const A *kb = (const A *)a.k + (size_t)b * a.Tk * a.skv + (size_t)h * HD;
    const A *vb = (const A *)a.v + (size_t)b * a.Tk * a.skv + (size_t)h * HD;
    tc_load<HD>(Qs, nullptr, qb, a.sq, q0, a.Tq);
    __syncthreads();
    uint32_t qa[KD][4];
    for (int kk = 0; kk < KD; kk++) tc_frag_a(qa[kk], Qs, 16 * w, 16 * kk, g, t);
    int lim[2];
    float m[2], l[2], o[ND][4] = {};
    for (int r = 0; r < 2; r++) {
        const int i = q0 + 16 * w + g + 8 * r;
        lim[r] = i < a.Tq ? cu_attn_lim(i, a.P) : 0;
        m[r] = -INFINITY;
        l[r] = 0;
    }
    const int kend = tc_key_end(a, q0);
    for (int k0 = 0; k0 < kend; k0 += TC_ROWS) {
        __syncthreads();  // the previous tile's readers are done
        tc_load<HD>(Ks, nullptr, kb, a.skv, k0, a.Tk);
        tc_load<HD>(nullptr, Vt, vb, a.skv, k0, a.Tk);
        tc_load_valid(kval, a.key_valid + (size_t)b * a.Tk, k0, a.Tk);
        __syncthreads();
        float s[NK][4] = {};
        tc_rows<KD>(s, qa, Ks, g, t);
        float mx[2] = {-INFINITY, -INFINITY}, ps[2] = {0, 0}, mn[2];
        for (int n = 0; n < NK; n++)
            for (int e = 0; e < 4; e++) {
                const int r = e / 2, j = 8 * n + 2 * t + e % 2;
                s[n][e] = k0 + j < lim[r] && kval[j] ? s[n][e] * a.scale : -INFINITY;
                mx[r] = fmaxf(mx[r], s[n][e]);
            }
        for (int r = 0; r < 2; r++) mn[r] = fmaxf(m[r], tc_quad_max(mx[r]));
        for (int n = 0; n < NK; n++)
            for (int e = 0; e < 4; e++) {
                const int r = e / 2;
                s[n][e] = s[n][e] == -INFINITY ? 0.0f : expf(s[n][e] - mn[r]);
                ps[r] += s[n][e];
            }
        for (int r = 0; r < 2; r++) {
            ps[r] = tc_quad_sum(ps[r]);
            if (mn[r] == -INFINITY) continue;  // nothing allowed yet: o, l stay 0
            const float alpha = expf(m[r] - mn[r]);  // 0 when m was -inf
            l[r] = l[r] * alpha + ps[r];
            for (int n = 0; n < ND; n++) {
                o[n][2 * r] *= alpha;
                o[n][2 * r + 1] *= alpha;
            }
            m[r] = mn[r];
        }
        tc_acc<ND>(o, s, Vt, g, t);
    }
    for (int r = 0; r < 2; r++) {
        const int i = q0 + 16 * w + g + 8 * r;
        if (i >= a.Tq) continue;
        const float inv = l[r] > 0 ? 1 / l[r] : 0.0f;  // no allowed key: a zero output
        A *orow = out + (size_t)(b * a.Tq + i) * C + (size_t)h * HD;
        for (int n = 0; n < ND; n++) {
            orow[8 * n + 2 * t] = cu_a<A>(o[n][2 * r] * inv);
            orow[8 * n + 2 * t + 1] = cu_a<A>(o[n][2 * r + 1] * inv);
        }
        if (t == 0) lse[(size_t)bh * a.Tq + i] = l[r] > 0 ? m[r] + logf(l[r]) : -INFINITY;
    }
}

// dq (row stride sdq) +=. Thread: query rows g, g + 8 of its warp's, their dq columns 8n + 2t
// (+1).
template <int HD, typename A>
__global__ void __launch_bounds__(TC_THREADS)
    k_flash_tc_dq(cu_flash a, A *dq, int sdq, const A *dout, const float *lse, const float *D) {
    constexpr int KD = HD / 16, ND = HD / 8, NK = TC_ROWS / 8;
    alignas(16) __shared__ tc_bits Ks[TC_ROWS][HD + TC_PAD], Vs[TC_ROWS][HD + TC_PAD],
        Kt[HD][TC_ROWS + TC_PAD];
    __shared__ uint8_t kval[TC_ROWS];
    const int bh = blockIdx.y, b = bh / a.NH, h = bh % a.NH, C = a.NH * HD;
    const int q0 = blockIdx.x * TC_ROWS, w = threadIdx.x / 32, g = threadIdx.x % 32 / 4,
              t = threadIdx.x % 4;
    const A *kb = (const A *)a.k + (size_t)b * a.Tk * a.skv + (size_t)h * HD;
    const A *vb = (const A *)a.v + (size_t)b * a.Tk * a.skv + (size_t)h * HD;
    // q and dout pass through Ks and Vs on their way into registers
    tc_load<HD>(Ks, nullptr, (const A *)a.q + (size_t)b * a.Tq * a.sq + (size_t)h * HD, a.sq, q0,
                a.Tq);
    tc_load<HD>(Vs, nullptr, dout + (size_t)b * a.Tq * C + (size_t)h * HD, C, q0, a.Tq);
    __syncthreads();
    uint32_t qa[KD][4], da[KD][4];
    for (int kk = 0; kk < KD; kk++) {
        tc_frag_a(qa[kk], Ks, 16 * w, 16 * kk, g, t);
        tc_frag_a(da[kk], Vs, 16 * w, 16 * kk, g, t);
    }
    int lim[2];
    float lse_r[2], D_r[2], acc[ND][4] = {};
    for (int r = 0; r < 2; r++) {
        const int i = q0 + 16 * w + g + 8 * r;
        lim[r] = i < a.Tq ? cu_attn_lim(i, a.P) : 0;
        lse_r[r] = i < a.Tq ? lse[(size_t)bh * a.Tq + i] : 0.0f;
        D_r[r] = i < a.Tq ? D[(size_t)bh * a.Tq + i] : 0.0f;
    }
    const int kend = tc_key_end(a, q0);
    for (int k0 = 0; k0 < kend; k0 += TC_ROWS) {
        __syncthreads();
        tc_load<HD>(Ks, Kt, kb, a.skv, k0, a.Tk);
        tc_load<HD>(Vs, nullptr, vb, a.skv, k0, a.Tk);
        tc_load_valid(kval, a.key_valid + (size_t)b * a.Tk, k0, a.Tk);
        __syncthreads();
        float s[NK][4] = {}, dp[NK][4] = {};
        tc_rows<KD>(s, qa, Ks, g, t);
        tc_rows<KD>(dp, da, Vs, g, t);
        for (int n = 0; n < NK; n++)
            for (int e = 0; e < 4; e++) {  // s becomes ds
                const int r = e / 2, j = 8 * n + 2 * t + e % 2;
                const float p =
                    k0 + j < lim[r] && kval[j] ? expf(s[n][e] * a.scale - lse_r[r]) : 0.0f;
                s[n][e] = a.scale * p * (dp[n][e] - D_r[r]);
            }
        tc_acc<ND>(acc, s, Kt, g, t);
    }
    for (int r = 0; r < 2; r++) {
        const int i = q0 + 16 * w + g + 8 * r;
        if (i >= a.Tq) continue;
        A *dst = dq + (size_t)(b * a.Tq + i) * sdq + (size_t)h * HD;
        for (int n = 0; n < ND; n++)
            for (int e = 0; e < 2; e++)
                dst[8 * n + 2 * t + e] = cu_a<A>(cu_f(dst[8 * n + 2 * t + e]) + acc[n][2 * r + e]);
    }
}

// dk, dv (row stride sdkv) +=. Thread: key rows g, g + 8 of its warp's, their scores against
// the queries 8n + 2t (+1) of a query tile (the transposed scores: k q^T), their dk, dv
// columns. Only the query tiles that can see a key of the tile are visited: every one for a
// prefix key, those from k0 on for causal keys.
template <int HD, typename A>
__global__ void __launch_bounds__(TC_THREADS)
    k_flash_tc_dkv(cu_flash a, A *dk, A *dv, int sdkv, const A *dout, const float *lse,
                   const float *D) {
    constexpr int KD = HD / 16, ND = HD / 8, NQ = TC_ROWS / 8;
    alignas(16) __shared__ tc_bits Qs[TC_ROWS][HD + TC_PAD], dOs[TC_ROWS][HD + TC_PAD],
        Qt[HD][TC_ROWS + TC_PAD], dOt[HD][TC_ROWS + TC_PAD];
    __shared__ float lse_s[TC_ROWS], D_s[TC_ROWS];
    const int bh = blockIdx.y, b = bh / a.NH, h = bh % a.NH, C = a.NH * HD;
    const int k0 = blockIdx.x * TC_ROWS, w = threadIdx.x / 32, g = threadIdx.x % 32 / 4,
              t = threadIdx.x % 4;
    const A *qb = (const A *)a.q + (size_t)b * a.Tq * a.sq + (size_t)h * HD;
    const A *ob = dout + (size_t)b * a.Tq * C + (size_t)h * HD;
    // k and v pass through Qs and dOs on their way into registers
    tc_load<HD>(Qs, nullptr, (const A *)a.k + (size_t)b * a.Tk * a.skv + (size_t)h * HD, a.skv,
                k0, a.Tk);
    tc_load<HD>(dOs, nullptr, (const A *)a.v + (size_t)b * a.Tk * a.skv + (size_t)h * HD, a.skv,
                k0, a.Tk);
    __syncthreads();
    uint32_t ka[KD][4], va[KD][4];
    for (int kk = 0; kk < KD; kk++) {
        tc_frag_a(ka[kk], Qs, 16 * w, 16 * kk, g, t);
        tc_frag_a(va[kk], dOs, 16 * w, 16 * kk, g, t);
    }
    int j[2], ok[2];
    for (int r = 0; r < 2; r++) {
        j[r] = k0 + 16 * w + g + 8 * r;
        ok[r] = j[r] < a.Tk && a.key_valid[(size_t)b * a.Tk + j[r]];
    }
    float ak[ND][4] = {}, av[ND][4] = {};
    for (int q0 = k0 < a.P ? 0 : k0; q0 < a.Tq; q0 += TC_ROWS) {
        __syncthreads();
        tc_load<HD>(Qs, Qt, qb, a.sq, q0, a.Tq);
        tc_load<HD>(dOs, dOt, ob, C, q0, a.Tq);
        if (threadIdx.x < TC_ROWS) {
            const int i = q0 + threadIdx.x;
            lse_s[threadIdx.x] = i < a.Tq ? lse[(size_t)bh * a.Tq + i] : 0.0f;
            D_s[threadIdx.x] = i < a.Tq ? D[(size_t)bh * a.Tq + i] : 0.0f;
        }
        __syncthreads();
        float s[NQ][4] = {}, dp[NQ][4] = {};
        tc_rows<KD>(s, ka, Qs, g, t);
        tc_rows<KD>(dp, va, dOs, g, t);
        for (int n = 0; n < NQ; n++)
            for (int e = 0; e < 4; e++) {  // s becomes p, dp becomes ds
                const int r = e / 2, il = 8 * n + 2 * t + e % 2, i = q0 + il;
                const float p = i < a.Tq && ok[r] && j[r] < cu_attn_lim(i, a.P)
                                    ? expf(s[n][e] * a.scale - lse_s[il])
                                    : 0.0f;
                s[n][e] = p;
                dp[n][e] = a.scale * p * (dp[n][e] - D_s[il]);
            }
        tc_acc<ND>(av, s, dOt, g, t);
        tc_acc<ND>(ak, dp, Qt, g, t);
    }
    for (int r = 0; r < 2; r++) {
        if (j[r] >= a.Tk) continue;
        const size_t row = (size_t)(b * a.Tk + j[r]) * sdkv + (size_t)h * HD;
        for (int n = 0; n < ND; n++)
            for (int e = 0; e < 2; e++) {
                const size_t x = row + 8 * n + 2 * t + e;
                dk[x] = cu_a<A>(cu_f(dk[x]) + ak[n][2 * r + e]);
                dv[x] = cu_a<A>(cu_f(dv[x]) + av[n][2 * r + e]);
            }
    }
}

int cu_flash_tc_ok(int HD) { return HD > 0 && HD % 16 == 0 && HD <= 64; }

static dim3 tc_grid(int B, int rows, int NH) {
    MM_CHECK(B * NH <= 65535, "attention: B * NH = %d above the grid's 65535", B * NH);
    return dim3((unsigned)((rows + TC_ROWS - 1) / TC_ROWS), (unsigned)(B * NH));
}

// one instance per head width the kernels take (cu_flash_tc_ok), of storage type A
#define TC_K(kern, HD) kern<HD, A>
#define TC_BY_HD(HD, kern, ...)                                                        \
    switch (HD) {                                                                      \
        case 16: CU_LAUNCH(TC_K(kern, 16), __VA_ARGS__); break;                        \
        case 32: CU_LAUNCH(TC_K(kern, 32), __VA_ARGS__); break;                        \
        case 48: CU_LAUNCH(TC_K(kern, 48), __VA_ARGS__); break;                        \
        case 64: CU_LAUNCH(TC_K(kern, 64), __VA_ARGS__); break;                        \
        default: MM_CHECK(0, "flash attention on tensor cores: head width %d", HD);    \
    }

void cu_flash_tc_fwd(cuda_ctx *c, const cu_flash *a, int B, int HD, float *out, float *lse) {
    if (B <= 0 || a->Tq <= 0) return;
    CU_AS(a->bf16, TC_BY_HD(HD, k_flash_tc_fwd, tc_grid(B, a->Tq, a->NH), TC_THREADS, c->stream,
                            *a, (A *)out, lse));
    CU_CHECK_LAUNCH("attention forward (flash, tensor cores)");
}

void cu_flash_tc_bwd(cuda_ctx *c, const cu_flash *a, int B, int HD, float *dq, int sdq, float *dk,
                     float *dv, int sdkv, const float *dout, const float *lse, const float *D) {
    if (B <= 0 || a->Tq <= 0 || a->Tk <= 0) return;
    CU_AS(a->bf16, TC_BY_HD(HD, k_flash_tc_dq, tc_grid(B, a->Tq, a->NH), TC_THREADS, c->stream,
                            *a, (A *)dq, sdq, (const A *)dout, lse, D));
    CU_CHECK_LAUNCH("attention backward (flash dq, tensor cores)");
    CU_AS(a->bf16, TC_BY_HD(HD, k_flash_tc_dkv, tc_grid(B, a->Tk, a->NH), TC_THREADS, c->stream,
                            *a, (A *)dk, (A *)dv, sdkv, (const A *)dout, lse, D));
    CU_CHECK_LAUNCH("attention backward (flash dk, dv, tensor cores)");
}
