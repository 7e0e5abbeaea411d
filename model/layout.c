// layout.c: the parameter-layout rules both model families follow (model.h: one contiguous
// buffer of named tensors, GLOBAL shapes, tp slices, initial values drawn over the full
// tensor and sliced) and the small host helpers they share: activation carving, the tp
// allreduce, parallel zeroing, patchify and audio grouping, the tp part of config checks.
// It exists so transformer.c and diffusion.c state only their own structure and policy
// (which tensors, which init law), not the mechanics. See model_internal.h.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "model_internal.h"

int model_ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

int model_starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

// ---------------------------------------------------------------------------------------
// parameter table

void model_table_init(model_table *tb, int cap, int tp, int rank) {
    *tb = (model_table){mm_calloc((size_t)cap, sizeof(model_tensor)), 0, cap, 0, tp, rank};
}

void model_table_add(model_table *tb, const char *name, int ndim, const int64_t *shape,
                     int split_dim, int group) {
    MM_CHECK(tb->n < tb->cap, "tensor table overflow at %s (count tensors in build_table)", name);
    model_tensor *t = &tb->t[tb->n++];
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ndim = ndim;
    t->split_dim = split_dim;
    t->size = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->local[i] = shape[i];
        if (i == split_dim) {
            MM_CHECK(shape[i] % tb->tp == 0, "%s: dim %d (%lld) not divisible by tp %d", name, i,
                     (long long)shape[i], tb->tp);
            t->local[i] = shape[i] / tb->tp;
            t->start = t->local[i] * tb->rank;
        }
        t->size *= (size_t)t->local[i];
    }
    t->offset = tb->off;
    tb->off += t->size;
    t->decay = ndim >= 2 && !model_ends_with(name, ".b");  // qkv.b (3, d), kv.b (2, d): biases
    t->group = group;
}

void model_table_done(const model_table *tb) {
    MM_CHECK(tb->n == tb->cap, "tensor count %d != %d (update build_table)", tb->n, tb->cap);
}

size_t model_table_max(const model_tensor *t, int n) {
    size_t m = 0;
    for (int i = 0; i < n; i++) m = t[i].size > m ? t[i].size : m;
    return m;
}

void model_init_draw(mm_real *p, const model_tensor *t, uint64_t seed, uint64_t stream,
                     double scale, int uniform) {
    mm_rng r;
    mm_rng_init(&r, seed, stream);
    size_t total = 1, inner = 1;
    for (int i = 0; i < t->ndim; i++) total *= (size_t)t->shape[i];
    int sd = t->split_dim;
    if (sd >= 0)
        for (int i = sd + 1; i < t->ndim; i++) inner *= (size_t)t->shape[i];
    for (size_t gi = 0; gi < total; gi++) {
        // every rank draws every element, so the stream stays in step with the global index
        mm_real v = uniform ? (mm_real)(scale * (2.0 * mm_rng_uniform(&r) - 1.0))
                            : (mm_real)(scale * mm_rng_normal(&r));
        if (sd < 0) {
            p[gi] = v;
            continue;
        }
        size_t coord = (gi / inner) % (size_t)t->shape[sd];
        size_t outer = gi / (inner * (size_t)t->shape[sd]);
        if (coord < (size_t)t->start || coord >= (size_t)(t->start + t->local[sd])) continue;
        p[outer * (size_t)t->local[sd] * inner + (coord - (size_t)t->start) * inner + gi % inner] =
            v;
    }
}

// ---------------------------------------------------------------------------------------
// activations and helpers

void model_carver_init(model_carver *cv, const mm_backend *be, void *base) {
    *cv = (model_carver){.base = (char *)base, .off = 0, .act_bytes = be->act_bytes};
}

static mm_real *carve_bytes(model_carver *cv, size_t bytes) {
    mm_real *p = cv->base ? (mm_real *)(cv->base + cv->off) : NULL;
    cv->off += (bytes + 63) / 64 * 64;  // 64-byte aligned slices for the vector loops
    return p;
}

mm_real *model_carve(model_carver *cv, size_t n) {
    return carve_bytes(cv, n * cv->act_bytes);
}

mm_real *model_carve_real(model_carver *cv, size_t n) {
    return carve_bytes(cv, n * sizeof(mm_real));
}

void model_tp_allreduce(const mm_backend *be, const mm_coll *tp, mm_real *x, size_t n) {
    if (tp) be->iface->allreduce_acts(be, tp, x, n);
}

void model_zero_bufs(int n, mm_real *const *p, const size_t *len) {
#pragma omp parallel
    {
        size_t nt = (size_t)omp_get_num_threads(), id = (size_t)omp_get_thread_num();
        for (int k = 0; k < n; k++) {
            size_t chunk = (len[k] + nt - 1) / nt, s = id * chunk;
            if (s < len[k])
                memset(p[k] + s, 0, (len[k] - s < chunk ? len[k] - s : chunk) * sizeof(mm_real));
        }
    }
}

void model_zero_ops(const mm_backend *be, int n, mm_real *const *p, const size_t *len) {
    if (be->caps.host_memory) {
        model_zero_bufs(n, p, len);
        return;
    }
    for (int k = 0; k < n; k++) be->ops->mem_zero(be, p[k], len[k] * sizeof(mm_real));
}

void model_zero_acts(const mm_backend *be, int n, mm_real *const *p, const size_t *len) {
    if (be->act_bytes == sizeof(mm_real)) {
        model_zero_ops(be, n, p, len);
        return;
    }
    for (int k = 0; k < n; k++) be->ops->mem_zero(be, p[k], len[k] * be->act_bytes);
}

void model_patchify(const mm_backend *be MM_UNUSED, mm_real *patches, const mm_real *img, int B,
                    int H, int W, int c, int p) {
    const int gw = W / p, n = (H / p) * gw, pdim = p * p * c;
#pragma omp parallel for schedule(static)
    for (int bp = 0; bp < B * n; bp++) {
        int b = bp / n, py = (bp % n) / gw, px = bp % gw;
        const mm_real *src = img + (size_t)b * H * W * c;
        for (int dy = 0; dy < p; dy++)
            memcpy(patches + (size_t)bp * pdim + (size_t)dy * p * c,
                   src + ((size_t)(py * p + dy) * W + (size_t)px * p) * c,
                   (size_t)p * c * sizeof(mm_real));
    }
}

void model_unpatchify(const mm_backend *be MM_UNUSED, mm_real *img, const mm_real *patches, int B,
                      int H, int W, int c, int p) {
    const int gw = W / p, n = (H / p) * gw, pdim = p * p * c;
#pragma omp parallel for schedule(static)
    for (int bp = 0; bp < B * n; bp++) {
        int b = bp / n, py = (bp % n) / gw, px = bp % gw;
        mm_real *dst = img + (size_t)b * H * W * c;
        for (int dy = 0; dy < p; dy++)
            memcpy(dst + ((size_t)(py * p + dy) * W + (size_t)px * p) * c,
                   patches + (size_t)bp * pdim + (size_t)dy * p * c,
                   (size_t)p * c * sizeof(mm_real));
    }
}

const mm_real *model_group_audio(mm_real *scratch, const mm_real *audio, int B, int F, int n_mels,
                                 int group) {
    const int n_tok = F / group;
    const size_t row = (size_t)n_tok * group * n_mels;  // one sample's kept frames
    if (F == n_tok * group) return audio;
    for (int b = 0; b < B; b++)
        memcpy(scratch + (size_t)b * row, audio + (size_t)b * F * n_mels, row * sizeof(mm_real));
    return scratch;
}

int model_check_tp(const char *who, int n_heads, int d_ff, int tp, int tp_rank,
                   comm_group *tp_group, mm_err *err) {
    if (tp_rank < 0 || tp_rank >= tp)
        return mm_fail(err, "%s: tp_rank %d outside [0, tp=%d)", who, tp_rank, tp);
    if (n_heads % tp || d_ff % tp)
        return mm_fail(err, "%s: tp %d must divide n_heads %d and d_ff %d", who, tp, n_heads,
                       d_ff);
    if (tp_group && (comm_size(tp_group) != tp || comm_rank(tp_group) != tp_rank))
        return mm_fail(err, "%s: tp_group is rank %d of %d but the config says tp_rank %d of tp %d",
                       who, comm_rank(tp_group), comm_size(tp_group), tp_rank, tp);
    return 0;
}

model_recompute model_recompute_named(const char *name) {
    static const char *const names[] = {"none", "attention", "block"};  // model_recompute order
    for (int i = 0; i < 3; i++)
        if (strcmp(name, names[i]) == 0) return (model_recompute)i;
    MM_CHECK(0, "model.recompute '%s' is none of none|attention|block (the config checks it)",
             name);
    return MODEL_RECOMPUTE_NONE;
}
