// safetensors.c: reads and writes safetensors files (safetensors.h says why and what).
// The JSON of the header has a fixed shape (an object of objects whose values are strings,
// one string and arrays of integers), so the parser below reads exactly that shape and
// nothing more; every refusal names the file, the tensor or the byte of the file where it
// happened, and the reason.
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eval.h"

// The data are copied between the file and float arrays as they are.
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "safetensors data are little-endian: a big-endian host would need byte swaps");

// The reference implementation refuses larger headers (a guard against a hostile length).
#define SFT_MAX_HEADER 100000000ull

// ---------------------------------------------------------------------------------------
// The header's JSON.
typedef struct {
    const char *s;  // the header (not NUL-terminated)
    size_t n, i;
    const char *path;
    mm_err *err;
} jr;

// "PATH: byte K of the file (JSON header): reason"; K counts from 0 like the header length.
static int jr_fail(jr *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int jr_fail(jr *p, const char *fmt, ...) {
    char why[MM_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return mm_fail(p->err, "%s: byte %zu of the file (JSON header): %s", p->path, 8 + p->i, why);
}

static void jr_ws(jr *p) {
    while (p->i < p->n && strchr(" \t\r\n", p->s[p->i]) && p->s[p->i]) p->i++;
}

static int jr_expect(jr *p, char c, const char *what) {
    jr_ws(p);
    if (p->i >= p->n) return jr_fail(p, "the header ends where %s was expected (cut short?)", what);
    if (p->s[p->i] != c) return jr_fail(p, "expected %s, found '%c'", what, p->s[p->i]);
    p->i++;
    return 0;
}

// A JSON string into *out (malloc'd, NUL-terminated; its decoded length never exceeds the
// escaped one, so one allocation suffices). No NUL characters: names and values are C strings.
static int jr_string(jr *p, char **out, const char *what) {
    if (jr_expect(p, '"', what)) return -1;
    p->i--;  // mm_json_string starts at the quote
    char why[MM_ERR_LEN], *buf = mm_malloc(p->n - p->i + 1);
    size_t len;
    if (mm_json_string(p->s, p->n, &p->i, buf, &len, why, sizeof(why))) {
        free(buf);
        return jr_fail(p, "%s", why);
    }
    *out = buf;
    return 0;
}

// A JSON number that is a non-negative integer below 2^62 (no sign, fraction or exponent).
static int jr_uint(jr *p, uint64_t *v, const char *what) {
    jr_ws(p);
    size_t at = p->i;
    uint64_t x = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        if (x >= (1ull << 62) / 10) return jr_fail(p, "%s: number too large", what);
        x = x * 10 + (uint64_t)(p->s[p->i++] - '0');
    }
    if (p->i == at || (p->i < p->n && strchr(".eE-+", p->s[p->i]) && p->s[p->i]))
        return jr_fail(p, "%s: expected a non-negative integer", what);
    if (p->s[at] == '0' && p->i - at > 1) {
        p->i = at;
        return jr_fail(p, "%s: a number with a leading zero is not JSON", what);
    }
    *v = x;
    return 0;
}

// [u, u, ...] with at most max items into v; *n gets the count.
static int jr_uints(jr *p, uint64_t *v, int max, int *n, const char *what) {
    char open[64];
    snprintf(open, sizeof(open), "'[' (%s)", what);
    if (jr_expect(p, '[', open)) return -1;
    *n = 0;
    jr_ws(p);
    if (p->i < p->n && p->s[p->i] == ']') {
        p->i++;
        return 0;
    }
    for (;;) {
        if (*n == max) return jr_fail(p, "%s: more than %d numbers", what, max);
        if (jr_uint(p, &v[(*n)++], what)) return -1;
        jr_ws(p);
        if (p->i < p->n && p->s[p->i] == ',') {
            p->i++;
            continue;
        }
        return jr_expect(p, ']', "',' or ']'");
    }
}

// After a member: ',' (1, another follows) or '}' (0, the object ends); -1 otherwise.
static int jr_next(jr *p) {
    jr_ws(p);
    if (p->i < p->n && p->s[p->i] == ',') {
        p->i++;
        return 1;
    }
    return jr_expect(p, '}', "',' or '}'") ? -1 : 0;
}

// {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}, each key once.
static int jr_tensor(jr *p, sft_tensor *t) {
    char where[SFT_NAME_LEN + 32];
    snprintf(where, sizeof(where), "tensor '%s'", t->name);
    if (jr_expect(p, '{', "'{' (a tensor's entry)")) return -1;
    int seen[3] = {0};
    jr_ws(p);
    if (p->i < p->n && p->s[p->i] == '}') return jr_fail(p, "%s: empty entry", where);
    int more = 1;
    while (more == 1) {
        char *key = NULL;
        if (jr_string(p, &key, "a quoted key")) return -1;
        int k = strcmp(key, "dtype") == 0          ? 0
                : strcmp(key, "shape") == 0        ? 1
                : strcmp(key, "data_offsets") == 0 ? 2
                                                   : -1;
        int rc = 0;
        if (k < 0)
            rc = jr_fail(p, "%s: unknown key '%.64s' (dtype, shape, data_offsets)", where, key);
        else if (seen[k]++)
            rc = jr_fail(p, "%s: key '%s' appears twice", where, key);
        free(key);
        if (rc || jr_expect(p, ':', "':'")) return -1;
        if (k == 0) {
            char *dtype = NULL;
            if (jr_string(p, &dtype, "a quoted dtype")) return -1;
            if (strcmp(dtype, "F32") != 0)
                rc = mm_fail(p->err,
                             "%s: %s: dtype %.32s; only F32 is read (in PyTorch: "
                             "{k: v.float() for k, v in state_dict.items()})",
                             p->path, where, dtype);
            free(dtype);
            if (rc) return -1;
        } else if (k == 1) {
            uint64_t d[SFT_MAX_DIM + 1];
            char what[SFT_NAME_LEN + 48];
            snprintf(what, sizeof(what), "%s: shape", where);
            if (jr_uints(p, d, SFT_MAX_DIM + 1, &t->ndim, what)) return -1;
            if (t->ndim > SFT_MAX_DIM)
                return mm_fail(p->err,
                               "%s: %s: more than %d dimensions (mmtrain's tensors have "
                               "at most %d)",
                               p->path, where, SFT_MAX_DIM, SFT_MAX_DIM);
            for (int i = 0; i < t->ndim; i++) t->shape[i] = (int64_t)d[i];
        } else {
            uint64_t o[2];
            int n;
            char what[SFT_NAME_LEN + 48];
            snprintf(what, sizeof(what), "%s: data_offsets", where);
            if (jr_uints(p, o, 2, &n, what)) return -1;
            if (n != 2) return jr_fail(p, "%s: data_offsets needs [begin, end]", where);
            t->begin = o[0], t->end = o[1];
        }
        more = jr_next(p);
        if (more < 0) return -1;
    }
    for (int k = 0; k < 3; k++)
        if (!seen[k])
            return jr_fail(p, "%s: no '%s'", where,
                           (const char *[]){"dtype", "shape", "data_offsets"}[k]);
    return 0;
}

// {"key": "value", ...} into f->meta_*.
static int jr_metadata(jr *p, sft_file *f) {
    if (jr_expect(p, '{', "'{' (__metadata__)")) return -1;
    jr_ws(p);
    if (p->i < p->n && p->s[p->i] == '}') {
        p->i++;
        return 0;
    }
    int more = 1;
    while (more == 1) {
        char *key = NULL, *val = NULL;
        if (jr_string(p, &key, "a quoted key")) return -1;
        for (int i = 0; i < f->n_meta; i++)
            if (strcmp(f->meta_key[i], key) == 0) {
                jr_fail(p, "__metadata__: key '%.64s' appears twice", key);
                free(key);
                return -1;
            }
        if (jr_expect(p, ':', "':'") ||
            jr_string(p, &val, "a quoted string (__metadata__ values are strings)")) {
            free(key);
            return -1;
        }
        f->meta_key = realloc(f->meta_key, sizeof(char *) * (size_t)(f->n_meta + 1));
        f->meta_val = realloc(f->meta_val, sizeof(char *) * (size_t)(f->n_meta + 1));
        MM_CHECK(f->meta_key && f->meta_val, "out of memory reading %s", f->path);
        f->meta_key[f->n_meta] = key;
        f->meta_val[f->n_meta++] = val;
        more = jr_next(p);
        if (more < 0) return -1;
    }
    return 0;
}

static int jr_header(jr *p, sft_file *f) {
    if (jr_expect(p, '{', "'{' (the header is a JSON object)")) return -1;
    int cap = 0, have_meta = 0;
    jr_ws(p);
    int more = p->i < p->n && p->s[p->i] == '}' ? (p->i++, 0) : 1;
    while (more == 1) {
        char *name = NULL;
        if (jr_string(p, &name, "a quoted tensor name")) return -1;
        int rc = 0;
        if (strcmp(name, "__metadata__") == 0) {
            rc = have_meta++ ? jr_fail(p, "__metadata__ appears twice")
                             : jr_expect(p, ':', "':'") || jr_metadata(p, f);
        } else if (strlen(name) >= SFT_NAME_LEN) {
            rc = jr_fail(p, "tensor '%.80s...': name longer than %d bytes", name, SFT_NAME_LEN - 1);
        } else {
            if (f->n == cap) {
                cap = cap ? 2 * cap : 64;
                f->t = realloc(f->t, sizeof(sft_tensor) * (size_t)cap);
                MM_CHECK(f->t, "out of memory reading %s", f->path);
            }
            sft_tensor *t = &f->t[f->n++];
            memset(t, 0, sizeof(*t));
            snprintf(t->name, sizeof(t->name), "%s", name);
            rc = jr_expect(p, ':', "':'") || jr_tensor(p, t);
        }
        free(name);
        if (rc) return -1;
        more = jr_next(p);
        if (more < 0) return -1;
    }
    jr_ws(p);  // the padding
    if (p->i < p->n) return jr_fail(p, "unexpected text after the header's object");
    return 0;
}

// ---------------------------------------------------------------------------------------
// Opening: the header, then the byte ranges.

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const sft_tensor *)a)->name, ((const sft_tensor *)b)->name);
}

static int cmp_range(const void *a, const void *b) {
    const sft_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

// Every range matches its shape, lies in the data area, and together they tile it.
static int check_ranges(sft_file *f, uint64_t data_len, mm_err *err) {
    for (int i = 0; i < f->n; i++) {
        const sft_tensor *t = &f->t[i];
        uint64_t bytes = 4;
        for (int d = 0; d < t->ndim; d++) {
            uint64_t s = (uint64_t)t->shape[d];
            if (s && bytes > UINT64_MAX / s)
                return mm_fail(err, "%s: tensor '%s': shape too large", f->path, t->name);
            bytes *= s;
        }
        if (t->end < t->begin)
            return mm_fail(err,
                           "%s: tensor '%s': data_offsets [%llu, %llu] end before they "
                           "begin",
                           f->path, t->name, (unsigned long long)t->begin,
                           (unsigned long long)t->end);
        if (t->end - t->begin != bytes)
            return mm_fail(err,
                           "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, "
                           "its shape needs %llu (F32)",
                           f->path, t->name, (unsigned long long)t->begin,
                           (unsigned long long)t->end, (unsigned long long)(t->end - t->begin),
                           (unsigned long long)bytes);
        if (t->end > data_len)
            return mm_fail(err,
                           "%s: tensor '%s': data_offsets [%llu, %llu] end beyond the "
                           "%llu bytes of data the file holds (file truncated?)",
                           f->path, t->name, (unsigned long long)t->begin,
                           (unsigned long long)t->end, (unsigned long long)data_len);
    }
    if (f->n) qsort(f->t, (size_t)f->n, sizeof(sft_tensor), cmp_range);
    uint64_t at = 0;
    for (int i = 0; i < f->n; i++) {
        const sft_tensor *t = &f->t[i];
        if (t->begin < at)
            return mm_fail(err,
                           "%s: tensor '%s': data_offsets [%llu, %llu] overlap tensor "
                           "'%s' [%llu, %llu]",
                           f->path, t->name, (unsigned long long)t->begin,
                           (unsigned long long)t->end, f->t[i - 1].name,
                           (unsigned long long)f->t[i - 1].begin,
                           (unsigned long long)f->t[i - 1].end);
        if (t->begin > at)
            return mm_fail(err,
                           "%s: bytes [%llu, %llu) of the data belong to no tensor (a gap "
                           "before tensor '%s')",
                           f->path, (unsigned long long)at, (unsigned long long)t->begin, t->name);
        at = t->end;
    }
    if (at != data_len)
        return mm_fail(err, "%s: %llu bytes after the last tensor's data belong to no tensor",
                       f->path, (unsigned long long)(data_len - at));
    if (f->n) qsort(f->t, (size_t)f->n, sizeof(sft_tensor), cmp_name);
    for (int i = 1; i < f->n; i++)
        if (strcmp(f->t[i].name, f->t[i - 1].name) == 0)
            return mm_fail(err, "%s: tensor '%s' appears twice", f->path, f->t[i].name);
    return 0;
}

// Reads n bytes at off; -1 with errno (0: the file ends first).
static int pread_all(int fd, void *buf, size_t n, uint64_t off) {
    char *p = buf;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            if (r == 0) errno = 0;
            return -1;
        }
        p += r, n -= (size_t)r, off += (uint64_t)r;
    }
    return 0;
}

int sft_open(sft_file *f, const char *path, mm_err *err) {
    memset(f, 0, sizeof(*f));
    f->fd = open(path, O_RDONLY);
    if (f->fd < 0) return mm_fail(err, "%s: cannot open: %s", path, strerror(errno));
    f->path = mm_malloc(strlen(path) + 1);
    strcpy(f->path, path);
    struct stat sb;
    unsigned char len8[8];
    char *header = NULL;
    int rc = -1;
    if (fstat(f->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        mm_fail(err, "%s: not a regular file", path);
        goto done;
    }
    const uint64_t size = (uint64_t)sb.st_size;
    if (size < 8 || pread_all(f->fd, len8, 8, 0) != 0) {
        mm_fail(err,
                "%s: %llu bytes, shorter than the 8-byte header length of a safetensors "
                "file",
                path, (unsigned long long)size);
        goto done;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | len8[i];
    if (n > size - 8) {
        mm_fail(err,
                "%s: header length %llu reaches beyond the file's %llu bytes (truncated, "
                "or not a safetensors file)",
                path, (unsigned long long)n, (unsigned long long)size);
        goto done;
    }
    if (n < 2 || n > SFT_MAX_HEADER) {
        mm_fail(err, "%s: header length %llu is not in 2..%llu (not a safetensors file?)", path,
                (unsigned long long)n, SFT_MAX_HEADER);
        goto done;
    }
    header = mm_malloc((size_t)n);
    if (pread_all(f->fd, header, (size_t)n, 8) != 0) {
        mm_fail(err, "%s: cannot read the header: %s", path, errno ? strerror(errno) : "cut short");
        goto done;
    }
    jr p = {header, (size_t)n, 0, path, err};
    if (jr_header(&p, f) || check_ranges(f, size - 8 - n, err)) goto done;
    f->data_at = 8 + n;
    rc = 0;
done:
    free(header);
    if (rc) sft_close(f);
    return rc;
}

void sft_close(sft_file *f) {
    if (f->fd >= 0) close(f->fd);
    for (int i = 0; i < f->n_meta; i++) free(f->meta_key[i]), free(f->meta_val[i]);
    free(f->meta_key);
    free(f->meta_val);
    free(f->t);
    free(f->path);
    memset(f, 0, sizeof(*f));
    f->fd = -1;
}

const sft_tensor *sft_find(const sft_file *f, const char *name) {
    int lo = 0, hi = f->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2, c = strcmp(f->t[mid].name, name);
        if (c == 0) return &f->t[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *sft_meta(const sft_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], key) == 0) return f->meta_val[i];
    return NULL;
}

int sft_read(const sft_file *f, const sft_tensor *s, const model_tensor *t, float *dst,
             mm_err *err) {
    int same = s->ndim == t->ndim;
    for (int d = 0; same && d < t->ndim; d++) same = s->shape[d] == t->shape[d];
    MM_CHECK(same, "sft_read: %s has another shape in %s than the model's (match them first)",
             t->name, f->path);
    size_t whole = (s->end - s->begin) / sizeof(float);
    // a slice along split_dim: rows of `inner` floats, `outer` times, from the whole tensor
    float *buf = whole == t->size ? dst : mm_malloc(whole * sizeof(float));
    int rc = 0;
    if (pread_all(f->fd, buf, whole * sizeof(float), f->data_at + s->begin) != 0)
        rc = mm_fail(err, "%s: tensor '%s': cannot read its %zu bytes: %s", f->path, s->name,
                     whole * sizeof(float), errno ? strerror(errno) : "the file is cut short");
    if (rc == 0 && buf != dst) {
        const int sd = t->split_dim;
        size_t outer = 1, inner = 1;
        for (int d = 0; d < sd; d++) outer *= (size_t)t->shape[d];
        for (int d = sd + 1; d < t->ndim; d++) inner *= (size_t)t->shape[d];
        const size_t run = (size_t)t->local[sd] * inner;
        for (size_t o = 0; o < outer; o++)
            memcpy(dst + o * run, buf + (o * (size_t)t->shape[sd] + (size_t)t->start) * inner,
                   run * sizeof(float));
    }
    if (buf != dst) free(buf);
    return rc;
}

// ---------------------------------------------------------------------------------------
// Writing.

static void json_string(FILE *h, const char *s) {
    size_t n = strlen(s), cap = 6 * n + 1;  // the longest escape, \u00XX, is 6 bytes for 1
    char *buf = mm_malloc(cap);
    size_t k = eval_escape(buf, cap, s, n, EVAL_ESC_JSON, NULL);
    fputc('"', h);
    fwrite(buf, 1, k, h);
    fputc('"', h);
    free(buf);
}

// The header JSON, padded with spaces to a multiple of 8 bytes (so the data start aligned).
static char *make_header(const sft_out *t, int n, const char *const *mk, const char *const *mv,
                         int n_meta, size_t *len) {
    char *buf = NULL;
    size_t sz = 0;
    FILE *h = open_memstream(&buf, &sz);
    MM_CHECK(h, "open_memstream failed: out of memory");
    fputc('{', h);
    if (n_meta) {
        fputs("\"__metadata__\":{", h);
        for (int i = 0; i < n_meta; i++) {
            if (i) fputc(',', h);
            json_string(h, mk[i]);
            fputc(':', h);
            json_string(h, mv[i]);
        }
        fputc('}', h);
    }
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        uint64_t bytes = sizeof(float);
        for (int d = 0; d < t[i].ndim; d++) bytes *= (uint64_t)t[i].shape[d];
        if (i || n_meta) fputc(',', h);
        json_string(h, t[i].name);
        fputs(":{\"dtype\":\"F32\",\"shape\":[", h);
        for (int d = 0; d < t[i].ndim; d++)
            fprintf(h, "%s%lld", d ? "," : "", (long long)t[i].shape[d]);
        fprintf(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)at,
                (unsigned long long)(at + bytes));
        at += bytes;
    }
    fputc('}', h);
    while (ftell(h) % 8) fputc(' ', h);
    MM_CHECK(fclose(h) == 0, "writing a safetensors header in memory failed");
    *len = sz;
    return buf;
}

int sft_write(const char *path, const sft_out *t, int n, const char *const *meta_key,
              const char *const *meta_val, int n_meta, mm_err *err) {
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp))
        return mm_fail(err, "%s: path too long", path);
    size_t hlen;
    char *header = make_header(t, n, meta_key, meta_val, n_meta, &hlen);
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int rc = -1;
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        mm_fail(err, "%s: cannot create file (directory missing or not writable?)", path);
        goto done;
    }
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(header, 1, hlen, f) == hlen;
    for (int i = 0; ok && i < n; i++) {
        size_t count = 1;
        for (int d = 0; d < t[i].ndim; d++) count *= (size_t)t[i].shape[d];
        ok = fwrite(t[i].data, sizeof(float), count, f) == count;
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int e = errno;
    if (fclose(f) != 0 && ok) ok = 0, e = errno;
    if (!ok) {
        mm_fail(err, "%s: write failed: %s", tmp, strerror(e));
        remove(tmp);
        goto done;
    }
    if (rename(tmp, path) != 0) {
        mm_fail(err, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
        remove(tmp);
        goto done;
    }
    rc = 0;
done:
    free(header);
    return rc;
}
