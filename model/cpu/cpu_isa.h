// cpu_isa.h: why the CPU backend's hot loops carry CPU_ISA_CLONES, and why their sums are
// written with MM_LANE_SUM. The build targets any x86-64 (Makefile OPT has no -march), so
// that a binary built here runs on every x86-64 machine; the ops that are loops of our own
// (LayerNorm, GELU, attention, cross-entropy, AdamW, ...) still want the machine's widest
// vectors and its FMA. CPU_ISA_CLONES has GCC compile a function, with the OpenMP bodies
// outlined from it and everything inlined into it, once per x86-64 level (v4: AVX-512, v3:
// AVX2 + FMA, and the baseline) and pick one when the program loads, from the CPU it runs on.
//
// Determinism: every level computes the same bits, so a run resumed on another kind of node,
// or a data-parallel job over mixed nodes, is the run it would have been on one machine
// (given the same BLAS kernels: OpenBLAS picks its own per CPU). Elementwise loops round the
// same at any vector width (-std=c11 turns off FMA contraction; fast_expf's fmaf calls are
// explicit). Sums are where the width would show: `#pragma omp simd reduction(+ : s)` gives
// s one partial sum per vector lane, 16 on AVX-512, 8 on AVX2, 4 on SSE2, hence three
// answers. MM_LANE_SUM fixes the order in the source instead. tests/cpu_isa.sh builds the
// backend at each level (make CPU_ISA=...) and checks they agree bit for bit.
#ifndef MM_CPU_ISA_H
#define MM_CPU_ISA_H

#if defined(MM_CPU_ISA)  // one level only, e.g. "arch=x86-64-v3": make CPU_ISA=x86-64-v3
#define CPU_ISA_CLONES __attribute__((target(MM_CPU_ISA)))
#elif defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CPU_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_ISA_CLONES
#endif

// A helper of CPU_ISA_CLONES functions: always inlined, so that it is compiled at each clone's
// level (GCC may leave a larger static inline function out of line, compiled for the baseline
// only: the cross-entropy's row functions ran 30 times slower so).
#define CPU_ISA_INLINE static inline __attribute__((always_inline))

// s += the sum of term over the int j in [0, n), in an order that does not depend on the
// vector width: partial sum l of MM_LANES takes the terms j = l, l + 16, l + 32, ... of the
// whole blocks of 16, partial sum 0 then takes the leftover terms one by one, and the
// partials are added to s from 0 to 15. (The order GCC's AVX-512 code for an omp simd
// reduction follows; AVX2 runs it as two vectors, SSE2 as four.) term may store, as
// softmax's p[j] = exp(...) does. s is an lvalue of type mm_real.
#define MM_LANES 16
#define MM_LANE_SUM(s, n, j, term)                                      \
    do {                                                                \
        mm_real lane_[MM_LANES] = {0};                                  \
        const int nb_ = (n) / MM_LANES * MM_LANES;                      \
        for (int b_ = 0; b_ < nb_; b_ += MM_LANES) {                    \
            _Pragma("omp simd") for (int l_ = 0; l_ < MM_LANES; l_++) { \
                const int j = b_ + l_;                                  \
                lane_[l_] += (term);                                    \
            }                                                           \
        }                                                               \
        for (int j = nb_; j < (n); j++) lane_[0] += (term);             \
        for (int l_ = 0; l_ < MM_LANES; l_++) (s) += lane_[l_];         \
    } while (0)

#endif  // MM_CPU_ISA_H
