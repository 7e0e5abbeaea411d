// core.h: the few things every module needs and none should re-invent: fatal checks that
// name file:line and a hint, recoverable errors carried in an mm_err, checked allocation,
// a small splittable RNG whose state can be saved in a checkpoint, a wall clock and the UTF-8
// rule (core/utf8.c). HDF5's errors have their own header, core/h5err.h, so that the modules
// that never touch HDF5 (the CUDA op tests among them) do not need it.
//
// Two ways to fail, chosen by who is at fault:
//   - a broken invariant (a bug, an allocation failure): MM_CHECK aborts with file:line.
//   - bad input (a config, a shard, a checkpoint, a command line): the function returns -1
//     and fills an mm_err with one line naming the file, the place and the reason; the
//     entry point prints it as "error: ..." and exits non-zero.
#ifndef MM_CORE_H
#define MM_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdnoreturn.h>

#define MM_ERR_LEN 1024

// One recoverable error: a human-readable line (no trailing newline).
typedef struct {
    char msg[MM_ERR_LEN];
} mm_err;

// Fills err (if not NULL) with a printf-formatted message and returns -1, so that
// recoverable code can write `return mm_fail(err, "%s: ...", path);`. Control characters
// (newlines included) become spaces, so the message stays one line whatever it quotes.
int mm_fail(mm_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

noreturn void mm_fatal(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

// Abort with file:line and a hint when an invariant does not hold.
#define MM_CHECK(cond, ...)                                       \
    do {                                                          \
        if (!(cond)) mm_fatal(__FILE__, __LINE__, __VA_ARGS__);   \
    } while (0)

// Checked allocation: never returns NULL. Caller owns the memory and frees it with free().
void *mm_malloc_at(size_t n, const char *file, int line);
void *mm_calloc_at(size_t n, size_t size, const char *file, int line);
#define mm_malloc(n) mm_malloc_at((n), __FILE__, __LINE__)
#define mm_calloc(n, size) mm_calloc_at((n), (size), __FILE__, __LINE__)
// 64-byte aligned, zeroed; free() with free().
void *mm_alloc_aligned_at(size_t n, const char *file, int line);
#define mm_alloc_aligned(n) mm_alloc_aligned_at((n), __FILE__, __LINE__)

// xoshiro256** generator. The state is plain data so it can be checkpointed byte for byte.
typedef struct {
    uint64_t s[4];
} mm_rng;

// Seeds from (seed, stream) through splitmix64: distinct streams give independent sequences,
// which is how per-purpose generators (init, sampler, eval) are derived from run.seed.
void mm_rng_init(mm_rng *r, uint64_t seed, uint64_t stream);
uint64_t mm_rng_u64(mm_rng *r);
// Uniform in [0, 1) with 24 random bits (exactly representable as float).
float mm_rng_uniform(mm_rng *r);
// Standard normal (Box-Muller, no cached second value so the state alone defines the stream).
float mm_rng_normal(mm_rng *r);
// Uniform integer in [0, n) without modulo bias.
uint64_t mm_rng_below(mm_rng *r, uint64_t n);

// Strict UTF-8 (RFC 3629), the one rule every module applies to text: no overlong forms, no
// UTF-16 surrogates, nothing above U+10FFFF, no sequence cut short. Returns NULL when s[0..n)
// is valid; otherwise a short reason ("overlong encoding", "UTF-16 surrogate encoded in
// UTF-8", "code point above U+10FFFF", "sequence cut short ...", ...) with *at = the offset
// of the first byte of the first bad sequence. A NUL byte is valid UTF-8: callers that cannot
// hold one refuse it themselves.
const char *mm_utf8_check(const uint8_t *s, size_t n, size_t *at);

// Decodes the JSON string (RFC 8259) whose opening quote is s[*i], s[0..n) not necessarily
// NUL-terminated, into out: NUL-terminated, *len bytes, UTF-8; out needs room for n - *i
// bytes, as decoding never lengthens. Escapes and surrogate pairs are checked and \u0000 is
// refused (callers hold C strings); the bytes are not checked for UTF-8 (mm_utf8_check).
// Returns 0 with *i after the closing quote, or -1 with the reason in why and *i at the byte
// it concerns (the opening quote for a string not closed).
int mm_json_string(const char *s, size_t n, size_t *i, char *out, size_t *len, char *why,
                   size_t why_len);

// Monotonic wall clock in seconds.
double mm_now(void);

// Creates a directory and its parents (like mkdir -p). Returns 0 or -1 with err filled.
int mm_mkdirs(const char *path, mm_err *err);

// Writes all of buf to path atomically: path.tmp, fsync, rename, fsync of the directory.
int mm_write_file_atomic(const char *path, const void *buf, size_t n, mm_err *err);

// Reads a whole file into a NUL-terminated malloc'd buffer (caller frees). -1 on failure.
int mm_read_file(const char *path, char **out, size_t *n, mm_err *err);

#endif  // MM_CORE_H
