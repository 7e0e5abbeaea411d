// cpu_isa.h: why the CPU backend's hot loops carry CPU_ISA_CLONES. The build targets any
// x86-64 (Makefile OPT has no -march), so that a binary built here runs on every x86-64
// machine; the ops that are loops of our own (LayerNorm, GELU, attention, cross-entropy,
// AdamW, ...) still want the machine's widest vectors and its FMA. CPU_ISA_CLONES has GCC
// compile a function, with the OpenMP bodies outlined from it and everything inlined into it,
// once per x86-64 level (v4: AVX-512, v3: AVX2 + FMA, and the baseline) and pick one when
// the program loads, from the CPU it runs on.
//
// Determinism: the pick depends on the CPU only, so a given build on a given machine always
// runs the same code and computes the same bits, whatever the thread count. Two machines of
// different levels may differ in the last bits of reductions (their vector widths differ),
// as two -march=native builds did before.
#ifndef MM_CPU_ISA_H
#define MM_CPU_ISA_H

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CPU_ISA_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_ISA_CLONES
#endif

#endif  // MM_CPU_ISA_H
