// safetensors.h: the safetensors file format (the Hugging Face convention for moving weights
// between frameworks), read and written here without a library so that weights trained in
// PyTorch fine-tune here (checkpoint.init_from) and ours go back (train export --format
// safetensors). Layout of a file:
//
//   8 bytes      N, the header length, unsigned little-endian
//   N bytes      JSON: {"__metadata__": {string: string}, NAME: {"dtype": "F32",
//                "shape": [d0, ...], "data_offsets": [begin, end]}, ...}, padded with spaces
//   the rest     the tensors' bytes, little-endian row-major; offsets count from here
//
// The reader is strict, so a damaged or foreign file is one error line rather than garbage
// weights: it refuses a header length beyond the file, JSON that does not parse or has
// unknown or duplicate keys, any dtype but F32, more than SFT_MAX_DIM dimensions, a byte
// range that does not match the shape, ranges that overlap or leave a gap, and bytes past the
// last tensor (the reference implementation's rules). Format notes: train/EXPORT.md.
#ifndef MM_SAFETENSORS_H
#define MM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/core.h"
#include "../model/model.h"

#define SFT_MAX_DIM 4    // model_tensor's; a file tensor with more dims is refused
#define SFT_NAME_LEN 72  // "ema/" + a model tensor name (63 bytes)

// One tensor of an opened file.
typedef struct {
    char name[SFT_NAME_LEN];
    int ndim;
    int64_t shape[SFT_MAX_DIM];
    uint64_t begin, end;  // byte range in the data area
} sft_tensor;

// An opened file: its header parsed and checked; the tensors' bytes are read on demand.
// Owns every buffer; sft_close frees them and closes the file.
typedef struct {
    char *path;        // malloc'd copy, for messages
    int fd;            // -1 when closed
    uint64_t data_at;  // file offset of the data area (8 + N)
    sft_tensor *t;     // (n) sorted by name
    int n;
    char **meta_key, **meta_val;  // (n_meta) the __metadata__ strings, in file order
    int n_meta;
} sft_file;

// Opens and checks path. -1 with err "PATH: [tensor 'x': ]reason" (nothing to close then).
int sft_open(sft_file *f, const char *path, mm_err *err);
void sft_close(sft_file *f);

// The tensor called name, or NULL.
const sft_tensor *sft_find(const sft_file *f, const char *name);
// The __metadata__ value of key, or NULL.
const char *sft_meta(const sft_file *f, const char *key);

// Reads this rank's slice of t (t->local at t->start along t->split_dim, t->size floats) of
// the file tensor s, which must have t's global shape, into dst. -1 with err naming the file
// and tensor (a file changed or cut short since sft_open).
int sft_read(const sft_file *f, const sft_tensor *s, const model_tensor *t, float *dst,
             mm_err *err);

// A tensor to write: whole, float32, contiguous. Nothing is owned.
typedef struct {
    const char *name;
    int ndim;
    const int64_t *shape;
    const float *data;
} sft_out;

// Writes path atomically (path.tmp, fsync, rename, fsync of the directory): the tensors in
// the order given, and n_meta (key, value) string pairs as __metadata__. Strings are written
// as JSON strings (invalid UTF-8 becomes U+FFFD). -1 with err naming the file and the reason.
int sft_write(const char *path, const sft_out *t, int n, const char *const *meta_key,
              const char *const *meta_val, int n_meta, mm_err *err);

#endif  // MM_SAFETENSORS_H
