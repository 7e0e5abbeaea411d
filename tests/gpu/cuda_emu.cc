// cuda_emu.cc: the CPU emulation of CUDA and cuBLAS declared in cuda_emu.h (why it exists:
// see there). Blocks run one after another; the threads of a block are coroutines on the
// calling thread, each resumed until it reaches a barrier (__syncthreads: the whole
// block; a shuffle: its warp) or ends. A barrier opens when every live thread of its block
// (warp) waits at it; a thread that ended while others wait at a barrier, or a state in which
// nothing can move, is a bug in the kernel and aborts with what every thread was doing.
// Device memory is host memory registered in a table, so copies and GEMMs can check that
// their device arguments lie inside one allocation.
//
// Switching coroutines: on x86-64 a few instructions of our own (emu_switch), because glibc's
// swapcontext sets the signal mask with a system call on every switch, which was most of an
// emulated training step's time (perf: 80% in swapcontext and the kernel) and made the
// multi-rank layout tests minutes long. ucontext stays for other machines and for ASan builds
// (ASan follows ucontext switches through its fiber annotations).
#include "cuda_emu.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>

#include <map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
extern "C" {
void __sanitizer_start_switch_fiber(void **fake_stack_save, const void *bottom, size_t size);
void __sanitizer_finish_switch_fiber(void *fake_stack_save, const void **bottom_old,
                                     size_t *size_old);
}
#else
#define EMU_ASAN 0
#endif

#if defined(__x86_64__) && !EMU_ASAN
#define EMU_FAST_SWITCH 1
// emu_switch(save, to): pushes the callee-saved registers (System V ABI) on the current
// stack, stores its stack pointer in *save, and continues on the stack `to`: one saved by an
// earlier emu_switch, or a new one fiber_init laid out as if emu_switch had saved it.
extern "C" void emu_switch(void **save, void *to);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#else
#define EMU_FAST_SWITCH 0
#endif

dim3 threadIdx, blockIdx, blockDim, gridDim;

[[noreturn]] static void emu_die(const char *what) {
    fprintf(stderr, "cuda_emu: %s\n", what);
    abort();
}

// ---------------------------------------------------------------------------------------
// the scheduler's state: one emulated block at a time (all of it belongs to the single
// emulation thread; a program that launched from two threads at once would be a misuse)

enum { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };
enum { MAX_THREADS = 1024, STACK_BYTES = 256 << 10 };

namespace {
struct fiber {
#if EMU_FAST_SWITCH
    void *sp = nullptr;  // where emu_switch left it
#else
    ucontext_t ctx;
#endif
    char *stack = nullptr;
    int state = DONE;
    unsigned char slot[32];  // this lane's value in a warp exchange or gather
};

struct emu_state {
#if EMU_FAST_SWITCH
    void *sched_sp = nullptr;
#else
    ucontext_t sched;
#endif
    fiber fibers[MAX_THREADS];
    int n = 0, cur = -1;
    const std::function<void()> *body = nullptr;
    cudaError_t last = cudaSuccess;
    std::map<uintptr_t, size_t> allocs;  // device allocations: base -> bytes
    // CUEMU_ORDER and CUEMU_LAUNCHES, read at the first launch: blocks and threads run last
    // first (reverse), and a block's warps one at a time instead of side by side (serial); see
    // run_block
    int reverse = 0, serial = 0, env_read = 0;
    unsigned long long launches = 0;  // kernel launches so far (CUEMU_LAUNCHES=1 prints them)
#if EMU_ASAN
    void *fake_sched = nullptr;          // the scheduler's fake stack while a fiber runs
    const void *sched_bottom = nullptr;  // the scheduler's stack, learnt on the first switch
    size_t sched_size = 0;
#endif
};
emu_state S;
}  // namespace

static void thread_index(int t) {
    threadIdx.x = (unsigned)t % blockDim.x;
    threadIdx.y = ((unsigned)t / blockDim.x) % blockDim.y;
    threadIdx.z = (unsigned)t / (blockDim.x * blockDim.y);
}

// fiber -> scheduler (final = the fiber has ended and is never resumed)
static void to_sched(bool final) {
    fiber &f = S.fibers[S.cur];
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(final ? nullptr : &fake, S.sched_bottom, S.sched_size);
    swapcontext(&f.ctx, &S.sched);
    __sanitizer_finish_switch_fiber(fake, &S.sched_bottom, &S.sched_size);
#elif EMU_FAST_SWITCH
    (void)final;
    emu_switch(&f.sp, S.sched_sp);
#else
    (void)final;
    swapcontext(&f.ctx, &S.sched);
#endif
}

static void fiber_main() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &S.sched_bottom, &S.sched_size);
#endif
    (*S.body)();
    S.fibers[S.cur].state = DONE;
    to_sched(true);
    emu_die("a finished thread was resumed");
}

// scheduler -> fiber t
static void resume(int t) {
    S.cur = t;
    thread_index(t);
    fiber &f = S.fibers[t];
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&S.fake_sched, f.stack, STACK_BYTES);
    swapcontext(&S.sched, &f.ctx);
    __sanitizer_finish_switch_fiber(S.fake_sched, nullptr, nullptr);
#elif EMU_FAST_SWITCH
    emu_switch(&S.sched_sp, f.sp);
#else
    swapcontext(&S.sched, &f.ctx);
#endif
}

void cuemu_syncthreads(void) {
    if (S.cur < 0) emu_die("__syncthreads outside a kernel");
    S.fibers[S.cur].state = AT_BLOCK_BARRIER;
    to_sched(false);
}

void cuemu_warp_exchange(const void *in, void *out, size_t size, int src_lane) {
    if (S.cur < 0) emu_die("warp shuffle outside a kernel");
    if (size > 8) emu_die("warp shuffle of more than 8 bytes");
    if (blockDim.x * blockDim.y * blockDim.z % 32 != 0)
        emu_die("warp shuffle in a block whose size is not a multiple of 32");
    const int me = S.cur, base = me / 32 * 32;
    memcpy(S.fibers[me].slot, in, size);
    S.fibers[me].state = AT_WARP_BARRIER;  // everyone has written
    to_sched(false);
    memcpy(out, S.fibers[base + (src_lane & 31)].slot, size);
    S.fibers[me].state = AT_WARP_BARRIER;  // everyone has read before the slots change
    to_sched(false);
}

void cuemu_warp_gather(const void *in, void *all, size_t size) {
    if (S.cur < 0) emu_die("warp gather outside a kernel");
    if (size > sizeof(S.fibers[0].slot)) emu_die("warp gather of more than 32 bytes");
    if (blockDim.x * blockDim.y * blockDim.z % 32 != 0)
        emu_die("warp gather in a block whose size is not a multiple of 32");
    const int me = S.cur, base = me / 32 * 32;
    memcpy(S.fibers[me].slot, in, size);
    S.fibers[me].state = AT_WARP_BARRIER;
    to_sched(false);
    for (int l = 0; l < 32; l++) memcpy((char *)all + l * size, S.fibers[base + l].slot, size);
    S.fibers[me].state = AT_WARP_BARRIER;
    to_sched(false);
}

// The fragments of PTX's mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (PTX ISA,
// "Matrix Fragments for mma.m16n8k16 with floating point type"): lane = 4 g + t holds
// A (16 x 16, row-major) a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9],
// a[3] = A[g+8][2t+8, 2t+9]; B (16 x 8, k by n) b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g];
// C/D (16 x 8) d[0..1] = D[g][2t, 2t+1], d[2..3] = D[g+8][2t, 2t+1]; each 32-bit register
// holds its lower-indexed element in the low half. Products are summed in double and added
// to d once (the hardware's internal order is not IEEE's either).
static float bf16_bits(uint32_t u16) {
    const uint32_t u = u16 << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
void cuemu_mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]}, all[32][6];
    cuemu_warp_gather(mine, all, sizeof mine);
    float A[16][16], B[16][8];
    for (int lane = 0; lane < 32; lane++) {
        const int g = lane / 4, t = lane % 4;
        const uint32_t *f = all[lane];
        for (int h = 0; h < 2; h++) {
            A[g][2 * t + h] = bf16_bits(f[0] >> (16 * h) & 0xffffu);
            A[g + 8][2 * t + h] = bf16_bits(f[1] >> (16 * h) & 0xffffu);
            A[g][2 * t + 8 + h] = bf16_bits(f[2] >> (16 * h) & 0xffffu);
            A[g + 8][2 * t + 8 + h] = bf16_bits(f[3] >> (16 * h) & 0xffffu);
            B[2 * t + h][g] = bf16_bits(f[4] >> (16 * h) & 0xffffu);
            B[2 * t + 8 + h][g] = bf16_bits(f[5] >> (16 * h) & 0xffffu);
        }
    }
    const int lane = S.cur % 32, g = lane / 4, t = lane % 4;
    for (int e = 0; e < 4; e++) {
        const int r = g + 8 * (e / 2), col = 2 * t + e % 2;
        double s = 0;
        for (int k = 0; k < 16; k++) s += (double)A[r][k] * B[k][col];
        d[e] = (float)((double)d[e] + s);
    }
}

void cuemu_check_aligned(const void *p, size_t align, const char *what) {
    if ((uintptr_t)p % align == 0) return;
    fprintf(stderr, "cuda_emu: %s: address %p is not a multiple of %zu bytes\n", what, p, align);
    emu_die("misaligned access");
}

static void dump_and_die(const char *why) {
    fprintf(stderr, "cuda_emu: %s in block (%u,%u,%u); thread states:", why, blockIdx.x,
            blockIdx.y, blockIdx.z);
    static const char *const names[] = {"run", "sync", "warp", "done"};
    for (int t = 0; t < S.n; t++)
        fprintf(stderr, "%s%d:%s", t % 16 ? " " : "\n  ", t, names[S.fibers[t].state]);
    fprintf(stderr, "\n");
    abort();
}

// Readies thread t to start the kernel body in fiber_main on its own stack.
static __attribute__((noinline)) void fiber_init(int t) {
    fiber &f = S.fibers[t];
    if (!f.stack) {
        void *p = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) emu_die("cannot map a thread stack");
        f.stack = (char *)p;
    }
#if EMU_FAST_SWITCH
    // what emu_switch pops: six registers, then the address it returns to (fiber_main), over
    // a null return address for fiber_main itself (which never returns), so that fiber_main
    // starts with the stack alignment of a call (rsp + 8 a multiple of 16)
    void **sp = (void **)(((uintptr_t)f.stack + STACK_BYTES) & ~(uintptr_t)15);
    *--sp = nullptr;
    *--sp = (void *)fiber_main;
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = STACK_BYTES;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
#endif
    f.state = RUNNABLE;
}

// Runs the current block to the end. Between two barriers the threads run one after another,
// in index order or (CUEMU_ORDER=reverse) the other way round: a kernel that reads what
// another thread wrote without a barrier between them gets the value in one of the two orders
// and the stale one in the other. Side by side (the default), every warp advances by one warp
// shuffle per round, so warps stay in step and a missing barrier before a tile is overwritten
// does no harm; CUEMU_ORDER=serial (or serial-reverse) runs one warp at a time up to the next
// __syncthreads, so the first warp overwrites what the later ones still had to read. A run in
// each order thus finds the races a GPU's own interleaving would show.
static void run_block() {
    for (int t = 0; t < S.n; t++) fiber_init(t);
    const int nw = (S.n + 31) / 32;
    for (;;) {
        int lo = 0, hi = S.n;  // the threads to resume: all, or one warp's
        if (S.serial) {
            for (int i = 0; i < nw; i++) {
                const int w = S.reverse ? nw - 1 - i : i;
                const int wlo = w * 32, whi = wlo + 32 < S.n ? wlo + 32 : S.n;
                bool runnable = false;
                for (int t = wlo; t < whi; t++) runnable |= S.fibers[t].state == RUNNABLE;
                if (runnable) {
                    lo = wlo, hi = whi;
                    break;
                }
            }
        }
        for (int i = lo; i < hi; i++) {
            const int t = S.reverse ? hi - 1 - (i - lo) : i;
            if (S.fibers[t].state == RUNNABLE) resume(t);
        }
        int done = 0, at_block = 0, runnable = 0;
        for (int t = 0; t < S.n; t++) {
            done += S.fibers[t].state == DONE;
            at_block += S.fibers[t].state == AT_BLOCK_BARRIER;
            runnable += S.fibers[t].state == RUNNABLE;
        }
        if (done == S.n) break;
        bool moved = runnable > 0;  // serial: other warps have yet to run
        for (int w = 0; w < nw; w++) {
            int wlo = w * 32, whi = wlo + 32 < S.n ? wlo + 32 : S.n, waiting = 0, ended = 0;
            for (int t = wlo; t < whi; t++) {
                waiting += S.fibers[t].state == AT_WARP_BARRIER;
                ended += S.fibers[t].state == DONE;
            }
            if (waiting == 0) continue;
            if (ended) dump_and_die("a warp shuffle with lanes that have exited");
            if (waiting == whi - wlo) {
                for (int t = wlo; t < whi; t++) S.fibers[t].state = RUNNABLE;
                moved = true;
            }
        }
        if (at_block > 0 && at_block + done == S.n) {
            if (done) dump_and_die("__syncthreads with threads that have exited");
            for (int t = 0; t < S.n; t++) S.fibers[t].state = RUNNABLE;
            moved = true;
        }
        if (!moved) dump_and_die("deadlock (threads wait at different barriers)");
    }
}

// CUEMU_LAUNCHES=1: the process's kernel launches, printed at exit (one line on stderr), so
// that a fusion's effect on a model's launch count can be measured on this machine: run the
// emulated trainer at 1 and 2 layers and take the difference per step.
static void print_launches() {
    fprintf(stderr, "cuda_emu: %llu kernel launches\n", S.launches);
}

void cuemu_launch(dim3 grid, dim3 block, const std::function<void()> &body) {
    const unsigned long long nt = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nt == 0 || nt > MAX_THREADS ||
        block.z > 64 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535) {
        fprintf(stderr, "cuda_emu: invalid launch grid (%u,%u,%u) block (%u,%u,%u)\n", grid.x,
                grid.y, grid.z, block.x, block.y, block.z);
        S.last = cudaErrorInvalidConfiguration;
        return;
    }
    if (S.cur >= 0) emu_die("a launch from inside a kernel");
    gridDim = grid;
    blockDim = block;
    S.n = (int)nt;
    S.body = &body;
    S.launches++;
    if (!S.env_read) {
        const char *l = getenv("CUEMU_LAUNCHES");
        if (l && !strcmp(l, "1")) atexit(print_launches);
        const char *o = getenv("CUEMU_ORDER");
        if (!o) o = "forward";
        if (strcmp(o, "forward") && strcmp(o, "reverse") && strcmp(o, "serial") &&
            strcmp(o, "serial-reverse"))
            emu_die("CUEMU_ORDER must be forward, reverse, serial or serial-reverse");
        S.reverse = !strcmp(o, "reverse") || !strcmp(o, "serial-reverse");
        S.serial = !strncmp(o, "serial", 6);
        S.env_read = 1;
    }
    // blocks in the same order as threads: one block reading what another wrote in the same
    // launch is a race as well
    const unsigned long long nb = (unsigned long long)grid.z * grid.y * grid.x;
    for (unsigned long long i = 0; i < nb; i++) {
        const unsigned long long b = S.reverse ? nb - 1 - i : i;
        blockIdx = dim3((unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y),
                        (unsigned)(b / ((unsigned long long)grid.x * grid.y)));
        run_block();
    }
    S.cur = -1;
    S.body = nullptr;
}

// ---------------------------------------------------------------------------------------
// runtime API

// Does [p, p + n) lie inside one device allocation?
static bool on_device(const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    auto it = S.allocs.upper_bound(a);
    if (it == S.allocs.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

static cudaError_t fail(cudaError_t e, const char *what) {
    fprintf(stderr, "cuda_emu: %s\n", what);
    S.last = e;
    return e;
}

extern "C" {

// Devices the emulation presents: MM_EMU_DEVICES (default 1), so that emulated ranks take
// one device per local rank as on a real node, and a node with fewer devices than ranks is
// refused as it would be. The devices share this process's memory; a process uses one.
static int emu_devices(void) {
    const char *s = getenv("MM_EMU_DEVICES");
    if (!s || !*s) return 1;
    char *end = NULL;
    long n = strtol(s, &end, 10);
    return *end == '\0' && n >= 0 && n <= 1024 ? (int)n : -1;
}

cudaError_t cudaGetDeviceCount(int *n) {
    *n = emu_devices();
    if (*n < 0) {
        *n = 0;
        return fail(cudaErrorInvalidValue, "MM_EMU_DEVICES is not a count of devices (0..1024)");
    }
    return *n ? cudaSuccess : cudaErrorNoDevice;
}

cudaError_t cudaSetDevice(int d) {
    return d >= 0 && d < emu_devices() ? cudaSuccess
                                       : fail(cudaErrorInvalidDevice, "cudaSetDevice: no such device");
}

// Memory of each emulated device: MM_EMU_DEVICE_MIB (default 4096), so that a test can make
// a run too big for its device without allocating that much. Allocations count against it
// (cudaMemGetInfo) but are not refused: the host is the limit.
static size_t emu_device_bytes(void) {
    const char *s = getenv("MM_EMU_DEVICE_MIB");
    char *end = NULL;
    long long mib = s && *s ? strtoll(s, &end, 10) : 4096;
    if (s && *s && (*end != '\0' || mib <= 0)) emu_die("MM_EMU_DEVICE_MIB is not a count of MiB");
    return (size_t)mib << 20;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total) {
    size_t used = 0;
    for (const auto &a : S.allocs) used += a.second;
    *total = emu_device_bytes();
    *free_bytes = used < *total ? *total - used : 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    if (d < 0 || d >= emu_devices())
        return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties: no such device");
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "cuda_emu %d (CPU emulation)", d);
    p->multiProcessorCount = 1;
    p->major = 9;
    p->totalGlobalMem = emu_device_bytes();
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned) {
    *s = (cudaStream_t)malloc(1);
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t s) {
    free(s);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// an event is the time of its last record (the work before it ran already), on mm_now()'s
// clock
struct cuemu_event {
    double t;
};
static double emu_now() {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned) {
    *e = (cudaEvent_t)calloc(1, sizeof(cuemu_event));
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    free(e);
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    if (!e) return fail(cudaErrorInvalidValue, "cudaEventRecord: no event");
    e->t = emu_now();
    return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!a || !b) return fail(cudaErrorInvalidValue, "cudaEventElapsedTime: no event");
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    return e ? cudaSuccess : fail(cudaErrorInvalidValue, "cudaEventSynchronize: no event");
}
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned) {
    return e ? cudaSuccess : fail(cudaErrorInvalidValue, "cudaStreamWaitEvent: no event");
}
cudaError_t cudaMallocHost(void **p, size_t n) {
    *p = malloc(n ? n : 1);
    return *p ? cudaSuccess : fail(cudaErrorMemoryAllocation, "cudaMallocHost");
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t n) {
    if (n == 0) return fail(cudaErrorInvalidValue, "cudaMalloc of 0 bytes");
    // poison-free but not zeroed: as on a GPU, nobody may rely on fresh memory being zero
    void *q = nullptr;
    if (posix_memalign(&q, 256, n) != 0) return fail(cudaErrorMemoryAllocation, "cudaMalloc");
    memset(q, 0xff, n);  // NaN patterns: a kernel reading memory nobody wrote shows up
    S.allocs[(uintptr_t)q] = n;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    auto it = S.allocs.find((uintptr_t)p);
    if (it == S.allocs.end())
        return fail(cudaErrorInvalidValue, "cudaFree of a non-device pointer");
    S.allocs.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k,
                            cudaStream_t) {
    bool dd = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
    bool sd = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
    if (dd != on_device(dst, n) || sd != on_device(src, n))
        return fail(cudaErrorInvalidValue, "cudaMemcpyAsync: pointers do not match the kind");
    memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) {
    if (!on_device(p, n)) return fail(cudaErrorInvalidValue, "cudaMemsetAsync: not device memory");
    memset(p, v, n);
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = S.last;
    S.last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return S.last; }

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return "emulated error";
    }
}

// ---------------------------------------------------------------------------------------
// cuBLAS over OpenBLAS (column-major, the same arguments)

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = (cublasHandle_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

const char *cublasGetStatusString(cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS"
           : s == CUBLAS_STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE"
                                              : "CUBLAS_STATUS_(emulated error)";
}

// Elements a column-major operand spans: rows x cols at leading dimension ld.
static size_t extent(int rows, int cols, int ld) {
    return rows == 0 || cols == 0 ? 0 : (size_t)ld * (cols - 1) + rows;
}

// cuBLAS's argument rules, and every operand inside one device allocation.
static bool gemm_ok(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void *A,
                    int lda, const void *B, int ldb, const void *C, int ldc, size_t ea,
                    size_t eb, size_t ec = sizeof(float)) {
    const int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    if (m < 0 || n < 0 || k < 0 || lda < (ar > 1 ? ar : 1) || ldb < (br > 1 ? br : 1) ||
        ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "cuda_emu: gemm m=%d n=%d k=%d lda=%d ldb=%d ldc=%d: bad sizes\n", m, n, k,
                lda, ldb, ldc);
        return false;
    }
    if (!on_device(A, extent(ar, ac, lda) * ea) || !on_device(B, extent(br, bc, ldb) * eb) ||
        !on_device(C, extent(m, n, ldc) * ec)) {
        fprintf(stderr, "cuda_emu: gemm m=%d n=%d k=%d: an operand is outside device memory\n", m,
                n, k);
        return false;
    }
    return true;
}

static CBLAS_TRANSPOSE tr(cublasOperation_t t) {
    return t == CUBLAS_OP_N ? CblasNoTrans : CblasTrans;
}

cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc) {
    if (!gemm_ok(ta, tb, m, n, k, A, lda, B, ldb, C, ldc, 4, 4)) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    cblas_sgemm(CblasColMajor, tr(ta), tr(tb), m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc);
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long sA, const float *B, int ldb, long long sB,
                                         const float *beta, float *C, int ldc, long long sC,
                                         int batch) {
    if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    for (int i = 0; i < batch; i++) {
        cublasStatus_t s = cublasSgemm(h, ta, tb, m, n, k, alpha, A + i * sA, lda, B + i * sB, ldb,
                                       beta, C + i * sC, ldc);
        if (s != CUBLAS_STATUS_SUCCESS) return s;
    }
    return CUBLAS_STATUS_SUCCESS;
}

// C (fp32, host or device) = alpha op(A) op(B) + beta C for bf16 A and B, in fp32
static void gemm16(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                   const void *A, int lda, const void *B, int ldb, float beta, float *C, int ldc) {
    const size_t na = extent(ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m, lda);
    const size_t nb = extent(tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k, ldb);
    std::vector<float> fa(na), fb(nb);
    for (size_t i = 0; i < na; i++) fa[i] = __bfloat162float(((const __nv_bfloat16 *)A)[i]);
    for (size_t i = 0; i < nb; i++) fb[i] = __bfloat162float(((const __nv_bfloat16 *)B)[i]);
    cblas_sgemm(CblasColMajor, tr(ta), tr(tb), m, n, k, alpha, fa.data(), lda, fb.data(), ldb,
                beta, C, ldc);
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
    if (at != CUDA_R_16BF || bt != CUDA_R_16BF || (ct != CUDA_R_32F && ct != CUDA_R_16BF) ||
        compute != CUBLAS_COMPUTE_32F) {
        fprintf(stderr, "cuda_emu: cublasGemmEx: only bf16 x bf16 -> fp32 or bf16 is emulated\n");
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    const bool c16 = ct == CUDA_R_16BF;
    if (!gemm_ok(ta, tb, m, n, k, A, lda, B, ldb, C, ldc, 2, 2, c16 ? 2 : 4))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    if (!c16) {
        gemm16(ta, tb, m, n, k, *(const float *)alpha, A, lda, B, ldb, *(const float *)beta,
               (float *)C, ldc);
        return CUBLAS_STATUS_SUCCESS;
    }
    // bf16 C: alpha op(A) op(B) + beta C in fp32, rounded once
    std::vector<float> fc(extent(m, n, ldc));
    __nv_bfloat16 *c = (__nv_bfloat16 *)C;
    for (size_t i = 0; i < fc.size(); i++) fc[i] = __bfloat162float(c[i]);
    gemm16(ta, tb, m, n, k, *(const float *)alpha, A, lda, B, ldb, *(const float *)beta,
           fc.data(), ldc);
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++)
            c[(size_t)j * ldc + i] = __float2bfloat16(fc[(size_t)j * ldc + i]);
    return CUBLAS_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------
// cuBLASLt: descriptors are plain structs; the matmul checks what cuBLASLt would (types,
// layouts against op(A) op(B), the workspace, device pointers, the GELU input's leading
// dimension a multiple of 8, each operand aligned as the preference promised: 256 bytes
// unless told less) and runs the product, then the epilogue: bias[i] added to row i
// of D (i < D's rows); for GELU_AUX_BIAS that sum also stored to aux and D = its tanh GELU;
// for DGELU D times the tanh GELU's derivative at aux.

struct cuemu_lt {
    int unused;
};
struct cuemu_lt_desc {
    cublasComputeType_t compute;
    cudaDataType scale;
    cublasOperation_t ta, tb;
    cublasLtEpilogue_t epilogue;
    const float *bias;
    float *aux;
    int64_t aux_ld;
};
struct cuemu_lt_layout {
    cudaDataType type;
    uint64_t rows, cols;
    int64_t ld;
};
struct cuemu_lt_pref {
    size_t ws;
    uint32_t align[4];  // the least alignment of A, B, C, D the caller promises (default 256)
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    *h = new cuemu_lt();
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t compute,
                                        cudaDataType scale) {
    *d = new cuemu_lt_desc{compute, scale, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT,
                           NULL, NULL, 0};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete d;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d,
                                              cublasLtMatmulDescAttributes_t a, const void *v,
                                              size_t n) {
    // each attribute's documented type and size
    switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
    case CUBLASLT_MATMUL_DESC_TRANSB:
        if (n != sizeof(int32_t)) break;
        (a == CUBLASLT_MATMUL_DESC_TRANSA ? d->ta : d->tb) = *(const cublasOperation_t *)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        if (n != sizeof(uint32_t)) break;
        d->epilogue = *(const cublasLtEpilogue_t *)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        if (n != sizeof(void *)) break;
        d->bias = *(const float *const *)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER:
        if (n != sizeof(void *)) break;
        d->aux = *(float *const *)v;
        return CUBLAS_STATUS_SUCCESS;
    case CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD:
        if (n != sizeof(int64_t)) break;
        d->aux_ld = *(const int64_t *)v;
        return CUBLAS_STATUS_SUCCESS;
    }
    fprintf(stderr, "cuda_emu: cublasLtMatmulDescSetAttribute %d: size %zu is not its type's\n",
            (int)a, n);
    return CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType t,
                                          uint64_t rows, uint64_t cols, int64_t ld) {
    *l = new cuemu_lt_layout{t, rows, cols, ld};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete l;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    *p = new cuemu_lt_pref{0, {256, 256, 256, 256}};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete p;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a,
                                                    const void *v, size_t n) {
    if (a == CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES && n == sizeof(uint64_t)) {
        p->ws = *(const uint64_t *)v;
        return CUBLAS_STATUS_SUCCESS;
    }
    const uint32_t x = n == sizeof(uint32_t) ? *(const uint32_t *)v : 0;
    if (a >= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES &&
        a <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES && x && (x & (x - 1)) == 0) {
        p->align[a - CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES] = x;
        return CUBLAS_STATUS_SUCCESS;
    }
    fprintf(stderr, "cuda_emu: cublasLtMatmulPreferenceSetAttribute %d: not emulated, or a bad "
            "value\n", (int)a);
    return CUBLAS_STATUS_INVALID_VALUE;
}

// The (m, n, k) of D = op(A) op(B) when the layouts agree, else false.
static bool lt_shape(const cuemu_lt_desc *d, const cuemu_lt_layout *a, const cuemu_lt_layout *b,
                     const cuemu_lt_layout *c, const cuemu_lt_layout *dl, int *m, int *n, int *k) {
    const uint64_t am = d->ta == CUBLAS_OP_N ? a->rows : a->cols,
                   ak = d->ta == CUBLAS_OP_N ? a->cols : a->rows,
                   bk = d->tb == CUBLAS_OP_N ? b->rows : b->cols,
                   bn = d->tb == CUBLAS_OP_N ? b->cols : b->rows;
    if (ak != bk || dl->rows != am || dl->cols != bn || c->rows != dl->rows ||
        c->cols != dl->cols || c->ld != dl->ld)
        return false;
    *m = (int)am, *n = (int)bn, *k = (int)ak;
    return true;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t d,
                                              cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                              cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dl,
                                              cublasLtMatmulPreference_t pref, int want,
                                              cublasLtMatmulHeuristicResult_t *res, int *got) {
    int m, n, k;
    *got = 0;
    if (want < 1 || !lt_shape(d, a, b, c, dl, &m, &n, &k)) return CUBLAS_STATUS_INVALID_VALUE;
    if (d->compute != CUBLAS_COMPUTE_32F || d->scale != CUDA_R_32F || a->type != CUDA_R_16BF ||
        b->type != CUDA_R_16BF || c->type != dl->type ||
        (dl->type != CUDA_R_32F && dl->type != CUDA_R_16BF) ||
        (d->epilogue != CUBLASLT_EPILOGUE_DEFAULT && d->epilogue != CUBLASLT_EPILOGUE_BIAS &&
         d->epilogue != CUBLASLT_EPILOGUE_GELU_AUX_BIAS && d->epilogue != CUBLASLT_EPILOGUE_DGELU))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    // the documented rule for the GELU input's leading dimension
    const bool aux = d->epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS ||
                     d->epilogue == CUBLASLT_EPILOGUE_DGELU;
    if (aux && (d->aux_ld % 8 != 0 || d->aux_ld < (int64_t)dl->rows))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    memset(res, 0, sizeof(*res));
    res->state = CUBLAS_STATUS_SUCCESS;
    // the algorithm may need the alignments the preference allows (data[0..3]: A, B, C, D)
    for (int i = 0; i < 4; i++) res->algo.data[i] = pref ? pref->align[i] : 256;
    *got = 1;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha,
                              const void *A, cublasLtMatrixLayout_t la, const void *B,
                              cublasLtMatrixLayout_t lb, const void *beta, const void *C,
                              cublasLtMatrixLayout_t lc, void *D, cublasLtMatrixLayout_t ld,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes,
                              cudaStream_t) {
    cublasLtMatmulHeuristicResult_t r;
    int got = 0, m, n, k;
    cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(h, d, la, lb, lc, ld, NULL, 1, &r, &got);
    if (s != CUBLAS_STATUS_SUCCESS || !got || !algo || !lt_shape(d, la, lb, lc, ld, &m, &n, &k))
        return s != CUBLAS_STATUS_SUCCESS ? s : CUBLAS_STATUS_INVALID_VALUE;
    if (C != D) {  // in place only, which is all ops_cuda.cu asks for
        fprintf(stderr, "cuda_emu: cublasLtMatmul: C must be D here\n");
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    // an algorithm chosen for the preference's alignments faults on less aligned operands
    const void *ops[4] = {A, B, C, D};
    for (int i = 0; i < 4; i++)
        if ((uintptr_t)ops[i] % algo->data[i] != 0) {
            fprintf(stderr, "cuda_emu: cublasLtMatmul: matrix %c at %p is not %llu-byte aligned "
                    "(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_%c_BYTES promised it)\n", "ABCD"[i],
                    ops[i], (unsigned long long)algo->data[i], "ABCD"[i]);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    if (ws_bytes && !on_device(ws, ws_bytes)) {
        fprintf(stderr, "cuda_emu: cublasLtMatmul: the workspace is not device memory\n");
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    const bool gelu = d->epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
               dgelu = d->epilogue == CUBLASLT_EPILOGUE_DGELU, bias = !dgelu;
    // D bf16: the bias and the GELU input are bf16 too (their default type is D's)
    const bool d16 = ld->type == CUDA_R_16BF;
    const size_t es = d16 ? 2 : 4;
    if (d->epilogue != CUBLASLT_EPILOGUE_DEFAULT && bias && !on_device(d->bias, (size_t)m * es)) {
        fprintf(stderr, "cuda_emu: cublasLtMatmul: the bias (%d elements) is not device memory\n",
                m);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if ((gelu || dgelu) && !on_device(d->aux, extent(m, n, (int)d->aux_ld) * es)) {
        fprintf(stderr, "cuda_emu: cublasLtMatmul: the GELU input (%d x %d, ld %lld) is not "
                "device memory\n", m, n, (long long)d->aux_ld);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    // the product in fp32 (D's values for beta when D is bf16), the epilogue on it, and a bf16
    // D, bias and GELU input read and written through rounding, as cuBLASLt converts them
    const size_t nd = extent(m, n, (int)ld->ld);
    std::vector<float> f16(d16 ? nd : 0);
    float *out = d16 ? f16.data() : (float *)D;
    for (size_t i = 0; i < f16.size(); i++) f16[i] = __bfloat162float(((__nv_bfloat16 *)D)[i]);
    if (!gemm_ok(d->ta, d->tb, m, n, k, A, (int)la->ld, B, (int)lb->ld, D, (int)ld->ld, 2, 2, es))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    gemm16(d->ta, d->tb, m, n, k, *(const float *)alpha, A, (int)la->ld, B, (int)lb->ld,
           *(const float *)beta, out, (int)ld->ld);
    auto get = [d16](const void *p, size_t i) {
        return d16 ? __bfloat162float(((const __nv_bfloat16 *)p)[i]) : ((const float *)p)[i];
    };
    auto put = [d16](void *p, size_t i, float v) {
        if (d16) ((__nv_bfloat16 *)p)[i] = __float2bfloat16(v);
        else ((float *)p)[i] = v;
    };
    for (int j = 0; d->epilogue != CUBLASLT_EPILOGUE_DEFAULT && j < n; j++)
        for (int i = 0; i < m; i++) {
            float *o = &out[(size_t)j * ld->ld + i];
            const size_t ai = (size_t)j * d->aux_ld + i;
            if (dgelu) {  // d/dx of the GELU below at x = aux
                const float x = get(d->aux, ai), u = 0.7978845608f * (x + 0.044715f * x * x * x),
                            th = tanhf(u);
                *o *= 0.5f * (1 + th) +
                      0.5f * x * (1 - th * th) * 0.7978845608f * (1 + 3 * 0.044715f * x * x);
                continue;
            }
            *o += get(d->bias, (size_t)i);
            if (gelu) {  // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
                put(d->aux, ai, *o);
                const float x = *o, u = 0.7978845608f * (x + 0.044715f * x * x * x);
                *o = 0.5f * x * (1 + tanhf(u));
            }
        }
    for (size_t i = 0; i < f16.size(); i++) put(D, i, f16[i]);
    return CUBLAS_STATUS_SUCCESS;
}

// one cublasGemmEx per matrix (element strides; bf16 inputs, fp32 or bf16 output as there)
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta,
                                          cublasOperation_t tb, int m, int n, int k,
                                          const void *alpha, const void *A, cudaDataType at,
                                          int lda, long long sA, const void *B, cudaDataType bt,
                                          int ldb, long long sB, const void *beta, void *C,
                                          cudaDataType ct, int ldc, long long sC, int batch,
                                          cublasComputeType_t compute, cublasGemmAlgo_t algo) {
    if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
    for (int i = 0; i < batch; i++) {
        cublasStatus_t s = cublasGemmEx(h, ta, tb, m, n, k, alpha,
                                        (const __nv_bfloat16 *)A + i * sA, at, lda,
                                        (const __nv_bfloat16 *)B + i * sB, bt, ldb, beta,
                                        ct == CUDA_R_16BF ? (void *)((__nv_bfloat16 *)C + i * sC)
                                                          : (void *)((float *)C + i * sC),
                                        ct, ldc, compute, algo);
        if (s != CUBLAS_STATUS_SUCCESS) return s;
    }
    return CUBLAS_STATUS_SUCCESS;
}

}  // extern "C"
