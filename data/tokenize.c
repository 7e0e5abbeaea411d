// tokenize.c: captions as the model sees them. Format v1 stores a caption as raw bytes, the
// tokenizer "bytes-v1" (data.h) makes each byte a token, and data_batch.text hands the
// caption back as a C string; so a caption must be text every reader agrees on (strict UTF-8,
// core's rule) and hold no NUL byte (it would end that string early). The writer, the packer
// and the reader all judge captions with the functions here, and the reader turns them into
// token rows with the one tokenizer.
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

void data_tokenize_caption(const uint8_t *cap, int len, int T, int32_t *tokens, int32_t *targets) {
    MM_CHECK(len >= 0 && len < T, "data_tokenize_caption: %d bytes into rows of %d tokens", len, T);
    tokens[0] = DATA_TOK_BOS;
    for (int t = 0; t < len; t++) {
        tokens[t + 1] = cap[t];
        targets[t] = cap[t];
    }
    for (int t = len + 1; t < T; t++) tokens[t] = DATA_TOK_PAD;
    targets[len] = DATA_TOK_EOS;
    for (int t = len + 1; t < T; t++) targets[t] = -1;
}
