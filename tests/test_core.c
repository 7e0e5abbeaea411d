// test_core.c: the shared rules of core/ that every module leans on, checked on their own so
// that a module's test failing points at the module: the one UTF-8 rule (mm_utf8_check)
// accepts every well-formed sequence up to U+10FFFF and refuses, at the right byte and with
// the right reason, every form the other readers of text must never see (overlong, surrogate,
// beyond U+10FFFF, cut short); HDF5's quiet scopes (core/h5err.h) keep HDF5's stack off
// stderr, capture the innermost reason, nest, and give the caller's handler back.
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/core.h"
#include "../core/h5err.h"
#include "test.h"

// ---------------------------------------------------------------------------------------
// UTF-8.
static void test_utf8(test_counts *tc) {
    static const struct {
        const char *s;
        int n;
        const char *why;  // NULL = valid; else a word of the reason
        int at;           // offset of the first bad byte
    } cases[] = {
        {"", 0, NULL, 0},
        {"plain ascii", 11, NULL, 0},
        {"a\0b", 3, NULL, 0},          // NUL is a character; callers refuse it themselves
        {"\x7F", 1, NULL, 0},          // U+007F, the last one-byte form
        {"\xC2\x80", 2, NULL, 0},      // U+0080, the first two-byte form
        {"caf\xC3\xA9", 5, NULL, 0},   // U+00E9
        {"\xDF\xBF", 2, NULL, 0},      // U+07FF, the last two-byte form
        {"\xE0\xA0\x80", 3, NULL, 0},  // U+0800, the first three-byte form
        {"\xE4\xB8\xAD\xE6\x96\x87", 6, NULL, 0},
        {"\xED\x9F\xBF", 3, NULL, 0},      // U+D7FF, just below the surrogates
        {"\xEE\x80\x80", 3, NULL, 0},      // U+E000, just above
        {"\xEF\xBF\xBF", 3, NULL, 0},      // U+FFFF, the last three-byte form
        {"\xF0\x90\x80\x80", 4, NULL, 0},  // U+10000, the first four-byte form
        {"\xF0\x9F\x98\x80", 4, NULL, 0},  // U+1F600
        {"\xF4\x8F\xBF\xBF", 4, NULL, 0},  // U+10FFFF, the last code point
        // overlong: a shorter form exists for the same code point
        {"a\xC0\x80", 3, "overlong", 1},         // U+0000 in two bytes
        {"\xC0\xAF", 2, "overlong", 0},          // '/' in two bytes
        {"\xC1\xBF", 2, "overlong", 0},          // U+007F in two bytes
        {"\xE0\x80\xAF", 3, "overlong", 0},      // '/' in three bytes
        {"ab\xE0\x9F\xBF", 5, "overlong", 2},    // U+07FF in three bytes
        {"\xF0\x80\x80\xAF", 4, "overlong", 0},  // '/' in four bytes
        {"\xF0\x8F\xBF\xBF", 4, "overlong", 0},  // U+FFFF in four bytes
        // UTF-16 surrogates
        {"ab\xED\xA0\x80", 5, "surrogate", 2},            // U+D800
        {"\xED\xBF\xBF", 3, "surrogate", 0},              // U+DFFF
        {"\xED\xA0\xBD\xED\xB8\x80", 6, "surrogate", 0},  // a pair, CESU-8 style
        // beyond U+10FFFF
        {"\xF4\x90\x80\x80", 4, "U+10FFFF", 0},  // U+110000
        {"x\xF5\x80\x80\x80", 5, "0xF5", 1},
        {"\xF7\xBF\xBF\xBF", 4, "0xF5", 0},      // U+1FFFFF
        {"\xF8\x88\x80\x80\x80", 5, "0xF5", 0},  // old five-byte form
        {"\xFF", 1, "0xF5", 0},
        // cut short or stray
        {"x\x80", 2, "continuation", 1},
        {"\xBF\xBF", 2, "continuation", 0},
        {"caf\xC3", 4, "cut short", 3},
        {"\xE2\x82", 2, "cut short", 0},
        {"\xF0\x9F\x98", 3, "cut short", 0},
        {"\xE2\x28\xA1", 3, "cut short", 0},  // continuation missing in the middle
        {"\xC3\xA9\xF0\x9F\x98x", 6, "cut short", 2},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t at = 99;
        const char *why = mm_utf8_check((const uint8_t *)cases[i].s, (size_t)cases[i].n, &at);
        if (!cases[i].why)
            TEST_CHECK(tc, !why, "case %zu: valid text refused: %s at %zu", i, why, at);
        else
            TEST_CHECK(tc, why && strstr(why, cases[i].why) && at == (size_t)cases[i].at,
                       "case %zu: want '%s' at %d, got '%s' at %zu", i, cases[i].why, cases[i].at,
                       why ? why : "(valid)", at);
    }
    // every code point once, encoded the standard way, is valid; each surrogate is not
    int bad = 0, sur = 0;
    for (uint32_t cp = 1; cp <= 0x10FFFF; cp++) {
        uint8_t u[4];
        size_t k;
        if (cp < 0x80) {
            u[0] = (uint8_t)cp, k = 1;
        } else if (cp < 0x800) {
            u[0] = (uint8_t)(0xC0 | cp >> 6), u[1] = (uint8_t)(0x80 | (cp & 0x3F)), k = 2;
        } else if (cp < 0x10000) {
            u[0] = (uint8_t)(0xE0 | cp >> 12), u[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
            u[2] = (uint8_t)(0x80 | (cp & 0x3F)), k = 3;
        } else {
            u[0] = (uint8_t)(0xF0 | cp >> 18), u[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
            u[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F)), u[3] = (uint8_t)(0x80 | (cp & 0x3F));
            k = 4;
        }
        size_t at;
        const char *why = mm_utf8_check(u, k, &at);
        if (cp >= 0xD800 && cp <= 0xDFFF)
            sur += why != NULL && strstr(why, "surrogate") != NULL;
        else
            bad += why != NULL;
    }
    TEST_CHECK(tc, bad == 0, "%d code points refused in their standard form", bad);
    TEST_CHECK(tc, sur == 0x800, "%d of 2048 surrogates refused", sur);
}

// ---------------------------------------------------------------------------------------
// HDF5 quiet scopes.
static herr_t count_calls(hid_t estack, void *data) {
    (void)estack;
    (*(int *)data)++;
    return 0;
}

static int fails_to_open(const char *path) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f >= 0) H5Fclose(f);
    return f < 0;
}

static void test_h5err(test_counts *tc) {
    char why[MM_H5_WHY_LEN];
    H5E_auto2_t f0, f1;
    void *d0, *d1;
    H5Eget_auto2(H5E_DEFAULT, &f0, &d0);  // HDF5's default: print the stack to stderr
    TEST_CHECK(tc, strcmp(mm_h5_why(why), "unknown HDF5 error") == 0, "outside a scope: '%s'", why);

    // catch fd 2 in a file for the scopes: nothing may reach it
    char cap_path[] = "/tmp/mm_test_core_XXXXXX";
    int cap = mkstemp(cap_path);
    MM_CHECK(cap >= 0, "mkstemp failed");
    fflush(stderr);
    int saved = dup(2);
    dup2(cap, 2);

    mm_h5_quiet outer;
    mm_h5_quiet_begin(&outer);
    TEST_CHECK(tc, strcmp(mm_h5_why(why), "unknown HDF5 error") == 0, "before any failure: '%s'",
               why);
    int failed = fails_to_open("/nonexistent_mm_dir/a.h5");
    char first[MM_H5_WHY_LEN];
    mm_h5_why(first);
    TEST_CHECK(tc, failed && first[0] && strcmp(first, "unknown HDF5 error") != 0,
               "a failed H5Fopen is captured: '%s'", first);
    // a successful call afterwards clears HDF5's stack, not the captured reason
    hid_t sp = H5Screate(H5S_SCALAR);
    TEST_CHECK(tc, sp >= 0 && strcmp(mm_h5_why(why), first) == 0,
               "the reason outlives a later successful call: '%s'", why);
    mm_h5_close(&sp, H5Sclose);
    TEST_CHECK(tc, sp == H5I_INVALID_HID, "mm_h5_close marks the id closed");
    mm_h5_close(&sp, H5Sclose);  // and a second close is a no-op

    mm_h5_quiet inner;  // nested: its own record, the outer one back at its end
    mm_h5_quiet_begin(&inner);
    TEST_CHECK(tc, strcmp(mm_h5_why(why), "unknown HDF5 error") == 0,
               "an inner scope starts clean: '%s'", why);
    hid_t bad = H5Dopen2(H5I_INVALID_HID, "x", H5P_DEFAULT);
    TEST_CHECK(
        tc, bad < 0 && strcmp(mm_h5_why(why), "unknown HDF5 error") != 0 && strcmp(why, first) != 0,
        "inner failure captured on its own: '%s'", why);
    mm_h5_quiet_end(&inner);
    TEST_CHECK(tc, strcmp(mm_h5_why(why), first) == 0, "outer reason back: '%s'", why);
    mm_h5_quiet_end(&outer);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    off_t printed = lseek(cap, 0, SEEK_END);
    close(cap);
    unlink(cap_path);
    TEST_CHECK(tc, printed == 0, "HDF5 printed %lld bytes to stderr inside quiet scopes",
               (long long)printed);
    H5Eget_auto2(H5E_DEFAULT, &f1, &d1);
    TEST_CHECK(tc, f1 == f0 && d1 == d0, "HDF5's default handler is restored");
    TEST_CHECK(tc, strcmp(mm_h5_why(why), "unknown HDF5 error") == 0, "after the scope: '%s'", why);

    // a caller's own handler: it must not run inside a scope, and must work again after it
    int calls = 0;
    H5Eset_auto2(H5E_DEFAULT, count_calls, &calls);
    mm_h5_quiet q;
    mm_h5_quiet_begin(&q);
    fails_to_open("/nonexistent_mm_dir/b.h5");
    mm_h5_quiet_end(&q);
    TEST_CHECK(tc, calls == 0, "the caller's handler ran %d times inside a scope", calls);
    H5Eget_auto2(H5E_DEFAULT, &f1, &d1);
    TEST_CHECK(tc, f1 == count_calls && d1 == &calls, "the caller's handler is restored");
    fails_to_open("/nonexistent_mm_dir/c.h5");
    TEST_CHECK(tc, calls == 1, "the caller's handler runs again after the scope (%d)", calls);
    H5Eset_auto2(H5E_DEFAULT, f0, d0);
}

int main(void) {
    test_counts tc = {0, 0};
    test_utf8(&tc);
    test_h5err(&tc);
    return test_finish(&tc);
}
