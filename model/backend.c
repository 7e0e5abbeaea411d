// backend.c: creating a backend from its name, and what every backend shares: the layout
// check against its capabilities and the completeness check of its tables. This is the one
// place that knows which backends this binary was built with, so the rest of the code (the
// trainer above all) has no backend conditionals.
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MM_HAVE_CUDA
#include "cuda/cuda.h"
#endif

int mm_table_complete(const void *table, size_t bytes, size_t skip, const char *what, mm_err *err) {
    typedef void (*fn)(void);
    for (size_t off = skip, i = 0; off + sizeof(fn) <= bytes; off += sizeof(fn), i++) {
        fn f;
        memcpy(&f, (const char *)table + off, sizeof(f));
        if (!f)
            return mm_fail(err,
                           "%s: entry %zu of the table is missing (NULL): the op was added "
                           "to the table's type but not to this backend",
                           what, i);
    }
    return 0;
}

int mm_backend_create(const mm_backend **out, const char *name, const char *precision, int act16,
                      int rank, mm_err *err) {
    *out = NULL;
    const mm_backend *be = NULL;
    if (strcmp(name, "cpu") == 0) {
        be = &mm_backend_cpu;  // fp32 whatever precision says (a GPU run's checkpoint samples)
    } else if (strcmp(name, "cuda") == 0) {
#ifdef MM_HAVE_CUDA
        if (cuda_backend_create(&be, precision, act16, rank, err) != 0) return -1;
#else
        (void)rank;
        (void)act16;
        (void)precision;
        return mm_fail(err,
                       "backend: cuda, but this binary was built without CUDA (build it with "
                       "make cuda: build-cuda/train)");
#endif
    } else {
        return mm_fail(err, "backend: '%s' is not one of cpu, cuda", name);
    }
    mm_err e;
    char what[96];
    snprintf(what, sizeof(what), "backend %s: model_ops", be->name);
    int bad = mm_table_complete(be->ops, sizeof(*be->ops), sizeof(const char *), what, &e);
    snprintf(what, sizeof(what), "backend %s: iface", be->name);
    if (!bad) bad = mm_table_complete(be->iface, sizeof(*be->iface), 0, what, &e);
    if (bad) {
        mm_backend_free(be);
        return mm_fail(err, "%s", e.msg);
    }
    *out = be;
    return 0;
}

void mm_backend_free(const mm_backend *be) {
    if (be && be->iface->destroy) be->iface->destroy(be);
}

int mm_backend_check_layout(const mm_backend *be, int dp, int tp, int zero, mm_err *err) {
    if (tp > 1 && !be->caps.tp)
        return mm_fail(err,
                       "backend %s does not run tensor parallelism yet (parallel.tp %d): "
                       "use parallel.tp 1 with more data-parallel ranks, or backend cpu",
                       be->name, tp);
    if (zero && !be->caps.zero)
        return mm_fail(err,
                       "backend %s does not run ZeRO-1 yet (parallel.zero %d with %d "
                       "data-parallel ranks): use parallel.zero 0, or backend cpu",
                       be->name, zero, dp);
    return 0;
}

mm_coll *mm_coll_new(const mm_backend *be, comm_group *g) {
    if (!g) return NULL;
    mm_coll *c = mm_calloc(1, sizeof(*c));
    c->group = g;
    c->impl = be->iface->coll_init(be, g);
    return c;
}

void mm_coll_free(const mm_backend *be, mm_coll *c) {
    if (!c) return;
    be->iface->coll_free(be, c->impl);
    free(c);
}

void mm_backend_to_host(const mm_backend *be, void *host, const void *buf, size_t bytes) {
    if (host != buf) be->ops->mem_download(be, host, buf, bytes);
}

void mm_backend_from_host(const mm_backend *be, void *buf, const void *host, size_t bytes) {
    if (host != buf) be->ops->mem_upload(be, buf, host, bytes);
}
