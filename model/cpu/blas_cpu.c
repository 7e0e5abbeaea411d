// blas_cpu.c: why a program of ours may start itself a second time before it does anything.
// OpenBLAS (Debian's DYNAMIC_ARCH build) picks its GEMM kernels by the CPU's model number
// when the library loads; a CPU newer than the library gets its fallback, the SSE3 "Prescott"
// kernels, and says nothing. OpenBLAS 0.3.21 (Debian 12) does so on Emerald Rapids (family 6,
// model 207), where those kernels run sgemm at well under half the speed of its AVX-512 ones
// (make bench names the kernels each run used). The library reads OPENBLAS_CORETYPE only
// while it loads, so the remedy is that variable and a fresh process image: this sets it to
// the kernels the CPU's features allow and execs the same program with the same arguments,
// before MPI or anything else starts (the launcher sees one process, as before). A variable
// the user set is always left alone, and so is any other choice OpenBLAS made.
//
// Determinism: a given machine and build still give the same bits run after run (the choice
// depends on the CPU and the environment only); tests that compare bits across machines pin
// OPENBLAS_CORETYPE themselves (tests/ref/cases.sh).
#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../backend.h"

// The OpenBLAS kernels for this CPU's vector features (its names; NULL: none better than the
// fallback). Cooperlake = SkylakeX's plus AVX512-BF16, which OpenBLAS' own feature test picks
// for such CPUs (the same kernels for sgemm).
static const char *kernels_for_cpu(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                       __builtin_cpu_supports("avx512cd");
    if (avx512) return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

void mm_blas_pick_kernels(char **argv) {
    if (getenv("OPENBLAS_CORETYPE")) return;  // the user's (or our first image's) choice
    const char *got = openblas_get_corename(), *want = kernels_for_cpu();
    // test hook (tests/blas_pick.sh): take these as the kernels OpenBLAS loaded, so that the
    // restart is exercised on any CPU
    if (getenv("MM_TEST_BLAS_LOADED")) got = getenv("MM_TEST_BLAS_LOADED");
    if (!want || !got || strcmp(got, "Prescott") != 0) return;
    // under valgrind the new image would run outside it (no --trace-children by default)
    const char *pre = getenv("LD_PRELOAD");
    if (pre && strstr(pre, "vgpreload")) return;
    // silent here (stdout and stderr belong to the program: one-line errors stay one line);
    // the second image's mm_blas_fallback tells the trainer what happened
    if (setenv("OPENBLAS_CORETYPE", want, 1) != 0 || setenv("MM_BLAS_FALLBACK", got, 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE");  // exec failed (no /proc?): the slow kernels, as before
    unsetenv("MM_BLAS_FALLBACK");
}

const char *mm_blas_fallback(void) {
    return getenv("MM_BLAS_FALLBACK");
}
