// utf8.c: the one UTF-8 rule of mmtrain. Captions in shards, captions being packed and text in
// configs all pass through here, so that a byte sequence one reader accepts is never refused
// (or, worse, read differently) by another. The rule is the strict one of RFC 3629: an
// overlong form or an encoded surrogate is how a filter on "/" or "\0" gets bypassed, and a
// code point above U+10FFFF is no character at all.
#include "core.h"

const char *mm_utf8_check(const uint8_t *s, size_t n, size_t *at) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        *at = i;
        size_t len;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2, cp = c & 0x1F;
        } else if (c == 0xC0 || c == 0xC1) {  // could only encode U+0000..U+007F
            return "overlong encoding";
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4, cp = c & 0x07;
        } else if (c >= 0xF5) {
            return "byte 0xF5..0xFF never occurs in UTF-8";
        } else {
            return "continuation byte without a lead byte";
        }
        for (size_t k = 1; k < len; k++) {
            if (i + k >= n) return "sequence cut short by the end of the text";
            if ((s[i + k] & 0xC0) != 0x80) return "sequence cut short (missing continuation byte)";
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return "overlong encoding";
        if (cp >= 0xD800 && cp <= 0xDFFF) return "UTF-16 surrogate encoded in UTF-8";
        if (cp > 0x10FFFF) return "code point above U+10FFFF";
        i += len;
    }
    return NULL;
}
