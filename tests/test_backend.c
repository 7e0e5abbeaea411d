// test_backend.c: the backend object (model/backend.h) as the trainer relies on it: creation
// by name with one-line errors, the completeness check of its tables (a missing kernel is an
// error at start, not a NULL call in the middle of a step), the layout check against its
// capabilities (one message whatever the model kind), the host-view copies that are no-ops
// on host memory, and the CPU backend's staging, optimizer and bucket kernels against plain
// loops computed here. Prints "N passed, N failed".
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../model/backend.h"
#include "../model/diffusion.h"
#include "../train/optim.h"
#include "test.h"

static void test_create(test_counts *tc) {
    const mm_backend *be = NULL;
    mm_err err = {{0}};
    TEST_CHECK(tc, mm_backend_create(&be, "cpu", "fp32", 0, 0, &err) == 0 && be == &mm_backend_cpu,
               "cpu: %s", err.msg);
    TEST_CHECK(tc,
               be && be->ops == &model_ops_cpu && be->caps.host_memory && be->caps.tp &&
                   be->caps.zero && be->desc[0] == '\0',
               "cpu backend fields");
    mm_backend_free(be);
    be = NULL;
    TEST_CHECK(tc,
               mm_backend_create(&be, "tpu", "fp32", 0, 0, &err) != 0 && be == NULL &&
                   strstr(err.msg, "'tpu'") && strstr(err.msg, "cpu, cuda"),
               "unknown backend: %s", err.msg);
    mm_backend_free(NULL);  // nothing
    TEST_CHECK(tc, dit_ops_for(&mm_backend_cpu) == &dit_ops_cpu, "the DiT's CPU kernels");
    TEST_CHECK(tc, lm_ops_for(&mm_backend_cpu) == &lm_ops_cpu, "the transformer's CPU kernels");
}

static void test_tables(test_counts *tc) {
    mm_err err = {{0}};
    TEST_CHECK(tc,
               mm_table_complete(&model_ops_cpu, sizeof(model_ops), sizeof(const char *),
                                 "model_ops", &err) == 0,
               "cpu ops: %s", err.msg);
    TEST_CHECK(
        tc,
        mm_table_complete(mm_backend_cpu.iface, sizeof(mm_backend_iface), 0, "iface", &err) == 0,
        "cpu iface: %s", err.msg);
    TEST_CHECK(tc,
               mm_table_complete(&dit_ops_cpu, sizeof(dit_ops), sizeof(const char *), "dit_ops",
                                 &err) == 0,
               "dit ops: %s", err.msg);
    TEST_CHECK(tc,
               mm_table_complete(&lm_ops_cpu, sizeof(lm_ops), sizeof(const char *), "lm_ops",
                                 &err) == 0,
               "lm ops: %s", err.msg);
    // each entry removed in turn is found, by its index
    const size_t n = (sizeof(model_ops) - sizeof(const char *)) / sizeof(void (*)(void));
    int found = 0;
    for (size_t i = 0; i < n; i++) {
        model_ops o = model_ops_cpu;
        memset((char *)&o + sizeof(const char *) + i * sizeof(void (*)(void)), 0,
               sizeof(void (*)(void)));
        char want[32];
        snprintf(want, sizeof(want), "entry %zu ", i);
        found += mm_table_complete(&o, sizeof(o), sizeof(const char *), "backend x: model_ops",
                                   &err) != 0 &&
                 strstr(err.msg, want) && strstr(err.msg, "backend x: model_ops");
    }
    TEST_CHECK(tc, (size_t)found == n, "%d of %zu missing ops found", found, n);
    mm_backend_iface f = *mm_backend_cpu.iface;
    f.ema = NULL;
    TEST_CHECK(tc, mm_table_complete(&f, sizeof(f), 0, "iface", &err) != 0, "iface without ema");
}

static void test_layout(test_counts *tc) {
    mm_err err = {{0}};
    const mm_backend *cpu = &mm_backend_cpu;
    TEST_CHECK(tc, mm_backend_check_layout(cpu, 2, 2, 1, &err) == 0, "cpu runs all: %s", err.msg);
    mm_backend gpu = mm_backend_cpu;  // a backend without tp and ZeRO-1
    gpu.name = "gpu";
    gpu.caps.tp = gpu.caps.zero = 0;
    TEST_CHECK(tc, mm_backend_check_layout(&gpu, 4, 1, 0, &err) == 0, "dp alone: %s", err.msg);
    // ZeRO-1 at dp 1 runs its own path (its collectives are copies), so it is refused too
    TEST_CHECK(tc, mm_backend_check_layout(&gpu, 1, 1, 1, &err) != 0 && strstr(err.msg, "ZeRO-1"),
               "zero at dp 1 refused: %s", err.msg);
    TEST_CHECK(tc,
               mm_backend_check_layout(&gpu, 2, 2, 0, &err) != 0 &&
                   strstr(err.msg, "backend gpu") && strstr(err.msg, "parallel.tp 2") &&
                   strstr(err.msg, "parallel.tp 1"),
               "tp refused: %s", err.msg);
    TEST_CHECK(tc,
               mm_backend_check_layout(&gpu, 2, 1, 1, &err) != 0 && strstr(err.msg, "ZeRO-1") &&
                   strstr(err.msg, "parallel.zero 0"),
               "zero refused: %s", err.msg);
    TEST_CHECK(tc, strchr(err.msg, '\n') == NULL, "one line");
}

static void test_cpu_iface(test_counts *tc) {
    const mm_backend *be = &mm_backend_cpu;
    // staging reads host batches where they are
    float a[3] = {1, 2, 3};
    int32_t b[2] = {4, 5};
    const void *src[2] = {a, b};
    const size_t len[2] = {sizeof(a), sizeof(b)};
    void *dst[2] = {NULL, NULL};
    void *st = be->iface->stage_new(be, 1024);
    be->iface->stage_put(be, st, 2, src, len, dst);
    be->iface->stage_done(be, st);
    be->iface->stage_free(be, st);
    TEST_CHECK(tc, dst[0] == (void *)a && dst[1] == (void *)b, "stage: in place");
    // host views: no copy where the buffer is host memory
    float x[4] = {1, 2, 3, 4}, y[4] = {0};
    mm_backend_to_host(be, x, x, sizeof(x));
    mm_backend_to_host(be, y, x, sizeof(x));
    TEST_CHECK(tc, memcmp(x, y, sizeof(x)) == 0, "to_host copies between two buffers");
    // EMA: decay * ema + (1 - decay) * p, elementwise in float
    float e[5] = {1, -2, 3, 0.5f, 0}, p[5] = {0, 1, 2, 3, 4}, want[5];
    for (int i = 0; i < 5; i++) want[i] = 0.9f * e[i] + (1.0f - 0.9f) * p[i];
    be->iface->ema(be, e, p, 5, 0.9f);
    TEST_CHECK(tc, memcmp(e, want, sizeof(e)) == 0, "ema");
    // sum of squares split into sharded and replicated segments, and AdamW on one segment
    mm_opt_seg seg[2] = {{.offset = 0, .size = 3, .decay = 1, .lr_mult = 1, .sharded = 1},
                         {.offset = 3, .size = 2, .decay = 0, .lr_mult = 0.5f, .sharded = 0}};
    float g[5] = {1, 2, 3, 4, 5}, prm[5] = {1, 1, 1, 1, 1}, m[5] = {0}, v[5] = {0};
    void *plan = be->iface->opt_plan_new(be, seg, 2, 0, 5);
    double sh = 0, rep = 0;
    be->iface->sumsq(be, plan, g, &sh, &rep);
    TEST_CHECK(tc, sh == 14.0 && rep == 41.0, "sumsq %g %g", sh, rep);
    const mm_adamw_args aa = {.step = 1,
                              .lr = 0.1,
                              .beta1 = 0.9,
                              .beta2 = 0.99,
                              .eps = 1e-8,
                              .weight_decay = 0.5,
                              .grad_scale = 1.0};
    be->iface->adamw(be, plan, prm, g, m, v, &aa);
    be->iface->opt_plan_free(be, plan);
    // step 1: mhat = g, vhat = g^2, so the step is lr * (sign(g) + wd * p) (tiny eps)
    const double want0 = 1 - 0.1 * (1 + 0.5 * 1), want4 = 1 - 0.05 * 1;
    TEST_CHECK(tc, fabs(prm[0] - want0) < 1e-6 && fabs(prm[4] - want4) < 1e-6,
               "adamw %g (want %g) %g (want %g)", prm[0], want0, prm[4], want4);
}

int main(void) {
    test_counts tc = {0, 0};
    test_create(&tc);
    test_tables(&tc);
    test_layout(&tc);
    test_cpu_iface(&tc);
    return test_finish(&tc);
}
