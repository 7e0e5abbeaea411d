// caption.c: the rule a caption must pass. Format v1 stores a caption as raw bytes, the
// tokenizer "bytes-v1" (data.h) makes each byte a token, and data_batch.text hands the
// caption back as a C string; so a caption must be text every reader agrees on (strict UTF-8,
// core's rule) and hold no NUL byte (it would end that string early). The writer, the packer
// and the reader all judge captions with the functions here; data.h's data_tokens_encode
// then lays them out as token rows.
#include <string.h>

#include "data.h"
#include "data_internal.h"

// A NUL can only sit before the first bad sequence as a character of its own (the bytes of a
// valid multi-byte sequence are >= 0x80), so the first bad byte is the earlier of the two.
const char *data_utf8_why(const uint8_t *s, size_t n, size_t *at) {
    size_t bad = n;
    const char *why = mm_utf8_check(s, n, &bad);
    const uint8_t *nul = n ? memchr(s, 0, why ? bad : n) : NULL;
    if (nul) {
        *at = (size_t)(nul - s);
        return "NUL byte";
    }
    if (why) *at = bad;
    return why;
}

long data_utf8_bad_at(const uint8_t *s, size_t n) {
    size_t at;
    return data_utf8_why(s, n, &at) ? (long)at : -1;
}
