// test.h: the smallest harness that fits the project's rule: each check counts, a failing
// check prints file:line and why, and each test binary ends with "N passed, N failed" and a
// non-zero exit status when anything failed. tests/run.sh adds the counts up.
#ifndef MM_TEST_H
#define MM_TEST_H

#include <stdio.h>

typedef struct {
    int passed, failed;
} test_counts;

#define TEST_CHECK(tc, cond, ...)                                          \
    do {                                                                   \
        if (cond) {                                                        \
            (tc)->passed++;                                                \
        } else {                                                           \
            (tc)->failed++;                                                \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
        }                                                                  \
    } while (0)

// Prints the closing line and returns the process exit status.
static inline int test_finish(const test_counts *tc) {
    printf("%d passed, %d failed\n", tc->passed, tc->failed);
    return tc->failed ? 1 : 0;
}

#endif  // MM_TEST_H
