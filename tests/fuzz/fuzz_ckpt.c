// fuzz_ckpt.c: libFuzzer harness for the checkpoint reader (train/ckpt.c): a committed
// checkpoint directory in which one file is the input. The first byte picks it (even: the
// rank file rank_00000.h5, odd: meta.h5), the rest is its content; the other file is a
// valid one written at start-up by ckpt_save (one rank, two small tensors, AdamW state).
// Meta, the tensor list and the full state are read; any bytes must load or give a one-line
// error, never a crash.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>

#include "../../train/ckpt.h"
#include "fuzz.h"

static uint8_t *good_rank, *good_meta;
static size_t good_rank_n, good_meta_n;
static model_tensor table[2];
static float params[17], m[17], v[17];

static void make_template(void) {
    snprintf(table[0].name, sizeof(table[0].name), "a.w");
    table[0].ndim = 2;
    table[0].shape[0] = table[0].local[0] = 3;
    table[0].shape[1] = table[0].local[1] = 4;
    table[0].split_dim = -1;
    table[0].size = 12;
    snprintf(table[1].name, sizeof(table[1].name), "b");
    table[1].ndim = 1;
    table[1].shape[0] = table[1].local[0] = 5;
    table[1].split_dim = -1;
    table[1].offset = 12;
    table[1].size = 5;
    for (int i = 0; i < 17; i++) params[i] = (float)i * 0.25f, m[i] = 0.5f, v[i] = 2.0f;
    comm_group *world = comm_init(NULL, NULL);
    ckpt_meta meta = {.step = 1, .world = 1, .tp = 1, .dp = 1};
    ckpt_state st = {.tensors = table, .n_tensors = 2, .n_params = 17, .params = params,
                     .m = m, .v = v};
    char out[512], path[700];
    snprintf(out, sizeof(out), "%s/tmpl", fuzz_scratch());
    mm_err err;
    if (ckpt_save(world, out, &meta, "model:\n  d_model: 8\n", &st, 1, 3, &err)) abort();
    comm_finalize(world);
    snprintf(path, sizeof(path), "%s/ckpt/step_00000001/rank_00000.h5", out);
    good_rank = fuzz_read(path, &good_rank_n);
    snprintf(path, sizeof(path), "%s/ckpt/step_00000001/meta.h5", out);
    good_meta = fuzz_read(path, &good_meta_n);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    make_template();
    const char *seeds = getenv("FUZZ_WRITE_SEEDS");  // writes the seed corpus and exits
    if (seeds) {
        char path[600];
        uint8_t *buf = malloc(good_rank_n + good_meta_n + 1);
        buf[0] = 0;
        memcpy(buf + 1, good_rank, good_rank_n);
        snprintf(path, sizeof(path), "%s/rank", seeds);
        fuzz_write(path, buf, good_rank_n + 1);
        buf[0] = 1;
        memcpy(buf + 1, good_meta, good_meta_n);
        snprintf(path, sizeof(path), "%s/meta", seeds);
        fuzz_write(path, buf, good_meta_n + 1);
        free(buf);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char dir[512], path[600];
    snprintf(dir, sizeof(dir), "%s/ckpt/step_00000001", fuzz_scratch());
    mm_mkdirs(dir, NULL);
    int meta_is_input = data[0] % 2;
    snprintf(path, sizeof(path), "%s/rank_00000.h5", dir);
    if (meta_is_input) fuzz_write(path, good_rank, good_rank_n);
    else fuzz_write(path, data + 1, size - 1);
    snprintf(path, sizeof(path), "%s/meta.h5", dir);
    if (meta_is_input) fuzz_write(path, data + 1, size - 1);
    else fuzz_write(path, good_meta, good_meta_n);
    snprintf(path, sizeof(path), "%s/COMMITTED", dir);
    fuzz_write(path, "mmtrain-checkpoint 1 step 1\n", 28);

    mm_err err;
    ckpt_meta meta;
    char *yaml = NULL;
    if (ckpt_load_meta(dir, &meta, &yaml, &err) == 0) free(yaml);
    else if (!err.msg[0] || strchr(err.msg, '\n')) abort();
    ckpt_tensor_info *info = NULL;
    int n = 0;
    if (ckpt_list_tensors(dir, "params", &info, &n, &err) == 0) free(info);
    else if (!err.msg[0] || strchr(err.msg, '\n')) abort();
    float p[17], mm[17], vv[17];
    ckpt_state st = {.tensors = table, .n_tensors = 2, .n_params = 17, .params = p, .m = mm,
                     .v = vv};
    if (ckpt_load_state(dir, &st, &err) != 0 && (!err.msg[0] || strchr(err.msg, '\n'))) abort();
    // every file, group, dataset, attribute the reader opened is closed again, also on the
    // error paths (LeakSanitizer ignores HDF5's own leaks on damaged files: lsan.supp)
    if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0) abort();
    return 0;
}
