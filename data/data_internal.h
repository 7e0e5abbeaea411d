// data_internal.h: what the data module's own files (and its unit tests) share but the rest
// of mmtrain should not depend on: argument checks that several entry points repeat, the
// caption rule and tokenizer of format v1, what the shard writer and reader share, and the
// synthetic set's vocabulary and caption templates (the tests need them to prove that every
// phrasing scores 100% against itself).
#ifndef MM_DATA_INTERNAL_H
#define MM_DATA_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "data.h"

// A growable string for the small text files the data module writes (index.json,
// skipped.tsv). buf is owned by the caller (free it); data_sb_printf appends and aborts
// with file:line when out of memory.
typedef struct {
    char *buf;
    size_t n, cap;
} data_strbuf;
void data_sb_printf(data_strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// Checks that the audio settings make sense for the schema (4 <= n_fft <= audio_len,
// hop >= 1, 1 <= n_mels <= n_fft / 2 + 1). Returns 0, or -1 with err naming the bad setting.
int data_audio_check(const data_schema *s, const data_audio_cfg *a, mm_err *err);

// The fixed normalisation of the log-mel features (audio.c), shared with augment.c, whose
// gain and silence fill must invert it. Mean and standard deviation of log(mel + 1e-6) over
// the synthetic set's clips (mmdata synth, n_fft 256, hop 128, 32 mels: -7.2 and 2.4),
// rounded. Typical features then lie in [-2.5, 3.5]; digital silence maps to
// (log(1e-6) + 7) / 2.5 = -2.7 (data_logmel_silence).
#define DATA_LOGMEL_MEAN (-7.0f)
#define DATA_LOGMEL_STD 2.5f
#define DATA_LOGMEL_FLOOR 1e-6f
// The feature of a frame of digital silence, computed as the featurizer computes it.
static inline float data_logmel_silence(void) {
    return (logf(0.0f + DATA_LOGMEL_FLOOR) - DATA_LOGMEL_MEAN) / DATA_LOGMEL_STD;
}

// The (frames, mel bands) a featurizer produces per clip, so readers can check that a batch
// was allocated for the same audio settings.
void data_featurizer_dims(const data_featurizer *f, int *frames, int *n_mels);

// ---------------------------------------------------------------------------------------
// Captions (caption.c).
// The caption rule of format v1, data_utf8_why's, when only the place matters: returns -1
// when s[0..n) is valid, otherwise the offset of the first bad byte.
long data_utf8_bad_at(const uint8_t *s, size_t n);

// ---------------------------------------------------------------------------------------
// index.json (FORMAT.md): the schema and the list of shards with their checksums.
typedef struct {
    char file[64];   // shard file name inside the dataset directory (no '/')
    uint64_t n;      // samples in the shard (> 0)
    uint64_t first;  // global index of its first sample = sum of the counts before it
    uint32_t crc32;  // zlib crc32 of the whole shard file
} data_shard_info;

typedef struct {
    data_schema schema;  // schema.n_samples = sum of the shard counts
    int n_shards;
    data_shard_info *shards;  // (n_shards) malloc'd, owned by the index
} data_index;

// Checks a schema's ranges (what a writer accepts and a reader trusts). where names the
// source in the error (a file). Returns 0 or -1 with err.
int data_schema_check(const data_schema *s, const char *where, mm_err *err);
// Writes dir/index.json atomically (mm_write_file_atomic). Returns 0 or -1 with err.
int data_index_write(const char *dir, const data_index *ix, mm_err *err);
// Parses and checks dir/index.json (libyaml; JSON is YAML flow syntax): every key present,
// no unknown or repeated key, right types and ranges, consistent counts. On success the
// caller owns ix->shards (data_index_free). On failure ix holds nothing to free.
int data_index_read(const char *dir, data_index *ix, mm_err *err);
void data_index_free(data_index *ix);

// ---------------------------------------------------------------------------------------
// Shard files (FORMAT.md), what the writer (shard_write.c) and the reader (shard_read.c)
// must agree on; the two helpers are defined in index.c, next to the checksums they serve.
#define DATA_SHARD_FORMAT "mmtrain-shard"
#define DATA_SHARD_VERSION 1
#define DATA_PATH_CAP 4200  // a shard's path: the dataset directory (up to PATH_MAX) + name

// Bytes of one sample's image, (img_h, img_w, img_c) uint8.
static inline size_t data_img_bytes(const data_schema *s) {
    return (size_t)s->img_h * s->img_w * s->img_c;
}
// out (DATA_PATH_CAP bytes) = dir/name. 0, or -1 with err naming dir when it does not fit.
int data_path_join(char *out, const char *dir, const char *name, mm_err *err);
// zlib crc32 of the whole file at path (what index.json records for a shard). 0 or -1 + err.
int data_file_crc32(const char *path, uint32_t *out, mm_err *err);

// ---------------------------------------------------------------------------------------
// Synthetic set vocabulary. Attribute a has data_synth_vocab_n[a] words; a sample is the
// tuple attr[a] in [0, data_synth_vocab_n[a]).
enum { DATA_SYNTH_N_PHRASINGS = 5, DATA_SYNTH_MAX_WORDS = 6 };
extern const int data_synth_vocab_n[DATA_N_ATTR];
extern const char *const data_synth_vocab[DATA_N_ATTR][DATA_SYNTH_MAX_WORDS];

// Writes the caption of attributes attr in phrasing p (0 <= p < DATA_SYNTH_N_PHRASINGS) into
// out (NUL-terminated, truncated to cap - 1 bytes). Returns the caption length.
int data_synth_caption(char *out, size_t cap, const int attr[DATA_N_ATTR], int p);

// Finds attribute words in text (whole words, ASCII case-insensitive). For each attribute,
// count[a] = how many words of its vocabulary occur and word[a] = the last one (-1 if none).
void data_synth_parse(const char *text, int count[DATA_N_ATTR], int word[DATA_N_ATTR]);

// ---------------------------------------------------------------------------------------
// Augmentation's transforms (augment.c), one by one with explicit parameters, so that the
// tests can check each one's property (data_augment_batch draws the parameters).
// Images are (h, w, c) floats in [-1, 1]; features are (F, M) normalised log-mel.

// Resamples the box (y0, x0, bh, bw) of src (pixel units, inside the image) to the whole
// of dst bilinearly; pixel centres map to pixel centres, outside samples take the border.
// The whole box (0, 0, h, w) copies src exactly. src and dst must not overlap.
void data_aug_crop(const float *src, int h, int w, int c, double y0, double x0, double bh,
                   double bw, float *dst);
// Mirrors img left-right in place.
void data_aug_flip(float *img, int h, int w, int c);
// dst = src moved down by dy and right by dx pixels; the uncovered part repeats the nearest
// border pixel of src. src and dst must not overlap.
void data_aug_translate(const float *src, int h, int w, int c, int dy, int dx, float *dst);
// Colour jitter in place by factors (1 = unchanged): brightness scales the intensity
// (x + 1), contrast moves every pixel from the image's mean grey, saturation (c >= 3) from
// its own grey (ITU-R 601 weights); the result is clipped to [-1, 1] after each. Only the
// first three channels of c >= 3 (the first one otherwise) are colour; others (alpha) stay.
void data_aug_jitter(float *img, int h, int w, int c, float brightness, float contrast,
                     float saturation);
// Moves the frames of feat later by k (earlier when k < 0); frames that come in are silence.
void data_aug_shift(float *feat, int F, int M, int k);
// Gain of db decibels on the signal under the features, inverted through the fixed
// normalisation and the floor: mel' = g^2 mel with g = 10^(db/20). 0 dB is exactly the
// identity; silence stays silence.
void data_aug_gain(float *feat, size_t n, float db);
// Sets frames [at, at + width) (time) or bands [at, at + width) (freq) of every frame to 0,
// the mean of the normalised features.
void data_aug_mask_time(float *feat, int F, int M, int at, int width);
void data_aug_mask_freq(float *feat, int F, int M, int at, int width);

#endif  // MM_DATA_INTERNAL_H
