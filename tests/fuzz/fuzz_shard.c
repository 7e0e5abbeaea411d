// fuzz_shard.c: libFuzzer harness for the dataset reader (data/index.c, data/shard_read.c):
// a dataset directory whose shard file, or whose index.json, is the input. An input that
// starts with '{' is the index (next to a valid shard); anything else is the shard file
// (next to an index that matches its size and checksum, so the reader's structural checks
// run rather than only the checksum). Every sample of a dataset that opens is read. Any
// bytes must give data or a one-line error, never a crash. The valid pair is written at
// start-up with data_writer (2 samples, 4x4x3 images, 64-sample clips).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hdf5.h>
#include <zlib.h>

#include "../../data/data.h"
#include "fuzz.h"

static uint8_t *good_shard, *good_index;
static size_t good_shard_n, good_index_n;

// Writes the valid template dataset into <scratch>/tmpl and keeps its two files in memory.
static void make_template(void) {
    char dir[512], path[600];
    snprintf(dir, sizeof(dir), "%s/tmpl", fuzz_scratch());
    data_schema s = {.n_samples = 2, .img_h = 4, .img_w = 4, .img_c = 3, .audio_rate = 8000,
                     .audio_len = 64, .text_max = 8};
    snprintf(s.tokenizer, sizeof(s.tokenizer), "%s", DATA_TOKENIZER_NAME);
    uint8_t img[48];
    int16_t pcm[64];
    for (int i = 0; i < 48; i++) img[i] = (uint8_t)(i * 5);
    for (int i = 0; i < 64; i++) pcm[i] = (int16_t)(i * 300 - 9000);
    data_writer *w;
    mm_err err;
    if (data_writer_open(&w, dir, &s, 8, &err)) abort();
    data_sample a = {.sample_id = 7, .image = img, .audio = pcm, .audio_n = 64,
                     .text = "a cat", .text_n = 5};
    data_sample b = {.sample_id = 9, .image = NULL, .audio = pcm, .audio_n = 20,
                     .text = "", .text_n = 0};
    if (data_writer_add(w, &a, &err) || data_writer_add(w, &b, &err) ||
        data_writer_close(w, &err))
        abort();
    snprintf(path, sizeof(path), "%s/shard_00000.h5", dir);
    good_shard = fuzz_read(path, &good_shard_n);
    snprintf(path, sizeof(path), "%s/index.json", dir);
    good_index = fuzz_read(path, &good_index_n);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    make_template();
    // the seed corpus is written by hand: FUZZ_WRITE_SEEDS=DIR writes the template's shard
    if (getenv("FUZZ_WRITE_SEEDS")) {
        char path[600];
        snprintf(path, sizeof(path), "%s/shard.h5", getenv("FUZZ_WRITE_SEEDS"));
        fuzz_write(path, good_shard, good_shard_n);
        snprintf(path, sizeof(path), "%s/index.json", getenv("FUZZ_WRITE_SEEDS"));
        fuzz_write(path, good_index, good_index_n);
        exit(0);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char dir[512], path[600];
    snprintf(dir, sizeof(dir), "%s/ds", fuzz_scratch());
    mm_mkdirs(dir, NULL);
    snprintf(path, sizeof(path), "%s/shard_00000.h5", dir);
    if (size > 0 && data[0] == '{') {
        fuzz_write(path, good_shard, good_shard_n);
        snprintf(path, sizeof(path), "%s/index.json", dir);
        fuzz_write(path, data, size);
    } else {
        fuzz_write(path, data, size);
        char index[1024];
        uLong crc = crc32(crc32(0L, Z_NULL, 0), data, (uInt)size);
        int n = snprintf(index, sizeof(index),
                         "{\"format\": \"mmtrain-dataset\", \"version\": 1, \"schema\": "
                         "{\"n_samples\": 2, \"img_h\": 4, \"img_w\": 4, \"img_c\": 3, "
                         "\"audio_rate\": 8000, \"audio_len\": 64, \"text_max\": 8, "
                         "\"tokenizer\": \"%s\"}, \"shards\": [{\"file\": "
                         "\"shard_00000.h5\", \"n_samples\": 2, \"first\": 0, \"crc32\": %lu}]}\n",
                         DATA_TOKENIZER_NAME, (unsigned long)crc);
        snprintf(path, sizeof(path), "%s/index.json", dir);
        fuzz_write(path, index, (size_t)n);
    }
    data_dataset *ds = NULL;
    mm_err err;
    if (data_dataset_open(&ds, dir, 1, &err) != 0) {
        if (!err.msg[0] || strchr(err.msg, '\n')) abort();
        if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0) abort();  // closed on failure too
        return 0;
    }
    const data_schema *s = data_dataset_schema(ds);
    // an index may promise huge samples; read only what a test machine can hold
    size_t img = (size_t)s->img_h * (size_t)s->img_w * (size_t)s->img_c;
    if (img <= (1u << 20) && s->audio_len <= (1 << 20) && s->text_max <= (1 << 20)) {
        uint8_t *image = malloc(img + 1);
        int16_t *audio = malloc(sizeof(int16_t) * ((size_t)s->audio_len + 1));
        char *text = malloc((size_t)s->text_max + 1);
        for (uint64_t i = 0; i < s->n_samples && i < 64; i++) {
            data_raw_info info;
            if (data_dataset_read_raw(ds, i, image, audio, text, &info, &err) != 0) {
                if (!err.msg[0] || strchr(err.msg, '\n')) abort();
                break;
            }
        }
        free(text);
        free(audio);
        free(image);
    }
    data_dataset_close(ds);
    // every HDF5 object the reader opened is closed again (see fuzz_ckpt.c)
    if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0) abort();
    return 0;
}
