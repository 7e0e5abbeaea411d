// json.c: the one JSON string decoder of mmtrain. Manifests (data/manifest.c) and safetensors
// headers (train/safetensors.c) both read strings that other programs wrote; with one decoder
// a name one reader accepts is read byte for byte the same by the other, and the escape and
// surrogate rules (RFC 8259 section 7) are written, tested and fuzzed once.
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core.h"

static int hex4(const char *s, uint32_t *out) {
    uint32_t v = 0;
    for (int k = 0; k < 4; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v << 4 | (uint32_t)d;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *u, uint32_t cp) {
    if (cp < 0x80) {
        u[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    u[2] = (char)(0x80 | (cp >> 6 & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

// The failure of mm_json_string: the reason into why, *i to the byte it concerns.
static int fail_at(size_t *i, size_t at, char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail_at(size_t *i, size_t at, char *why, size_t why_len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
    *i = at;
    return -1;
}

int mm_json_string(const char *s, size_t n, size_t *i, char *out, size_t *len, char *why,
                   size_t why_len) {
    const size_t start = *i;
    size_t p = start + 1, k = 0;
    for (;;) {
        if (p >= n) return fail_at(i, start, why, why_len, "string is not closed");
        const size_t at = p;
        unsigned char c = (unsigned char)s[p++];
        if (c == '"') break;
        if (c < 0x20)
            return fail_at(i, at, why, why_len, "control character 0x%02X inside a string", c);
        if (c != '\\') {
            out[k++] = (char)c;
            continue;
        }
        if (p >= n) return fail_at(i, start, why, why_len, "string is not closed");
        char e = s[p++];
        const char *simple = e ? strchr("\"\\/bfnrt", e) : NULL;
        if (simple) {
            out[k++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            continue;
        }
        if (e != 'u') return fail_at(i, at, why, why_len, "unknown escape '\\%c'", e);
        uint32_t cp, lo;
        if (p + 4 > n || hex4(s + p, &cp))
            return fail_at(i, at, why, why_len, "\\u must be followed by 4 hex digits");
        p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return fail_at(i, at, why, why_len,
                           "\\u%04X is a low surrogate without a high surrogate before it", cp);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (p + 6 > n || s[p] != '\\' || s[p + 1] != 'u' || hex4(s + p + 2, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return fail_at(i, at, why, why_len,
                               "\\u%04X is a high surrogate not followed by a low surrogate "
                               "\\uDC00..\\uDFFF",
                               cp);
            p += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        if (cp == 0)
            return fail_at(i, at, why, why_len, "\\u0000 is not allowed (no NUL characters)");
        k += put_utf8(out + k, cp);  // at most 4 bytes for the 6 or 12 read
    }
    out[k] = '\0';
    *len = k;
    *i = p;
    return 0;
}
