// data.h: the data module's one public header: the shard dataset (format v1, data/FORMAT.md),
// the byte tokenizer, audio features, the sampler that keeps the loader's promise, and the
// prefetching loader that turns shard bytes into model-ready micro-batches.
//
// The loader's promise (../shared/DESIGN.md): one global permutation of sample indices per
// (seed, epoch); the global batch of a step is a fixed slice of it; each dp rank takes a fixed
// part of that slice; so the sample order does not depend on the number of ranks, and a
// resumed run continues the same order. A final partial global batch of an epoch is DROPPED
// (never padded, never duplicated): steps_per_epoch = floor(n / global_batch).
#ifndef MM_DATA_H
#define MM_DATA_H

#include <stdint.h>

#include "../core/core.h"

// ---------------------------------------------------------------------------------------
// Tokenizer "bytes-v1": a caption's UTF-8 bytes are the tokens 0..255; three specials follow.
enum { DATA_TOK_BOS = 256, DATA_TOK_EOS = 257, DATA_TOK_PAD = 258, DATA_VOCAB = 259 };
#define DATA_TOKENIZER_NAME "bytes-v1"

// ---------------------------------------------------------------------------------------
// Dataset schema: what every sample of a dataset looks like (shard attributes, FORMAT.md).
typedef struct {
    uint64_t n_samples;     // samples in the whole dataset (all shards)
    int img_h, img_w, img_c;  // image shape per sample (uint8 HWC)
    int audio_rate;         // PCM sample rate in Hz
    int audio_len;          // max PCM samples per clip (int16, mono)
    int text_max;           // max caption bytes (UTF-8, no terminator)
    char tokenizer[32];     // DATA_TOKENIZER_NAME
} data_schema;

// Audio feature settings: PCM -> log-mel (FFTW r2c, Hann window, HTK mel filterbank).
typedef struct {
    int n_fft;     // window and FFT size, e.g. 256
    int hop;       // hop length, e.g. 128
    int n_mels;    // mel bands, e.g. 32
} data_audio_cfg;

// Frames produced for a clip of audio_len samples: 1 + (audio_len - n_fft) / hop.
int data_audio_frames(const data_schema *s, const data_audio_cfg *a);

// ---------------------------------------------------------------------------------------
// Shard writing (used by `mmdata synth` now, `mmdata pack` later). One sample in host form.
typedef struct {
    uint64_t sample_id;
    const uint8_t *image;   // (img_h, img_w, img_c) or NULL when the sample has no image
    const int16_t *audio;   // (audio_len_used) or NULL when the sample has no audio
    int audio_n;            // PCM samples used, <= schema.audio_len
    const char *text;       // UTF-8 caption, <= schema.text_max bytes
    int text_n;
} data_sample;

typedef struct data_writer data_writer;  // opaque
// Opens a dataset directory for writing (creates it; refuses a non-empty one). Shards of at
// most samples_per_shard samples are written; index.json with per-shard checksums at close.
int data_writer_open(data_writer **out, const char *dir, const data_schema *schema,
                     int samples_per_shard, mm_err *err);
int data_writer_add(data_writer *w, const data_sample *s, mm_err *err);
// Finishes the last shard, writes the index. Frees w whatever the result.
int data_writer_close(data_writer *w, mm_err *err);

// ---------------------------------------------------------------------------------------
// Reading. A dataset is a directory of shards plus index.json. Opening validates the index
// and every shard's attributes, dataset shapes, offsets and (when verify) the checksum; any
// problem is a -1 with an error naming file, dataset and sample.
typedef struct data_dataset data_dataset;  // opaque; thread-safe for concurrent reads
int data_dataset_open(data_dataset **out, const char *dir, int verify_checksums, mm_err *err);
void data_dataset_close(data_dataset *ds);
const data_schema *data_dataset_schema(const data_dataset *ds);

// One decoded micro-batch: model-ready arrays. Owned by whoever allocated it with
// data_batch_alloc (free with data_batch_free).
typedef struct {
    int cap;              // allocated samples
    int B;                // samples filled
    int text_T;           // token positions per sample = text_max + 1
    int audio_F, n_mels;  // log-mel frames and bands
    int img_h, img_w, img_c;
    uint64_t *sample_id;  // (B)   global sample id as stored in the shard
    uint64_t *index;      // (B)   dataset position (0..n_samples-1) the sampler chose
    uint8_t *has_image;   // (B)
    uint8_t *has_audio;   // (B)
    float *image;         // (B, H, W, C) pixels mapped to [-1, 1]; zeros when absent
    float *audio;         // (B, F, n_mels) normalized log-mel; zeros when absent
    int32_t *tokens;      // (B, text_T) BOS, caption bytes, then PAD
    int32_t *targets;     // (B, text_T) caption bytes, EOS, then -1 (ignored)
    char *text;           // (B, text_max + 1) raw caption, NUL-terminated (for eval)
} data_batch;

void data_batch_alloc(data_batch *b, int cap, const data_schema *s, const data_audio_cfg *a);
void data_batch_free(data_batch *b);

// Audio featurizer: holds the FFTW plan and mel filterbank. Create in the main thread (FFTW
// planning is not thread-safe); each thread that decodes needs its own featurizer. Settings
// that data_loader_open would refuse (n_fft < 4 or > audio_len, hop < 1, n_mels outside
// 1..n_fft/2+1) abort here. Features and their fixed normalization: data/FORMAT.md.
typedef struct data_featurizer data_featurizer;
data_featurizer *data_featurizer_new(const data_schema *s, const data_audio_cfg *a);
void data_featurizer_free(data_featurizer *f);
// PCM (n samples, zero-padded to audio_len) -> (F, n_mels) normalized log-mel.
void data_featurize_audio(data_featurizer *f, const int16_t *pcm, int n, float *out);

// Reads and decodes the samples at dataset positions idx[0..n) into b (b->B = n).
int data_dataset_read(data_dataset *ds, const uint64_t *idx, int n, data_featurizer *f,
                      data_batch *b, mm_err *err);

// ---------------------------------------------------------------------------------------
// Sampler: position in the stream of global batches; plain data, saved in checkpoints.
typedef struct {
    int64_t epoch;     // current epoch
    uint64_t offset;   // samples of this epoch's permutation already consumed
} data_pos;

// The permutation of 0..n-1 for (seed, epoch): a Fisher-Yates shuffle driven by
// mm_rng(seed, stream = epoch). perm must hold n entries.
void data_permutation(uint64_t n, uint64_t seed, int64_t epoch, uint64_t *perm);
// Moves pos to the start of the next global batch of size G (wrapping to the next epoch
// when fewer than G samples remain: the partial batch is dropped).
data_pos data_pos_advance(data_pos pos, uint64_t n, uint64_t G);

// ---------------------------------------------------------------------------------------
// Loader: a background thread that reads and decodes the micro-batches of this rank, in
// order, `depth` batches ahead of the training loop.
typedef struct {
    const char *dir;
    uint64_t seed;
    int global_batch;     // samples per optimizer step over all ranks
    int micro_batch;      // samples per rank per micro-step
    int dp_rank, dp_size; // this rank's data-parallel coordinates
    int depth;            // batches prefetched ahead (>= 1), besides the one the caller holds
    int verify;           // verify shard checksums at open
    data_pos start;       // where to start (from a checkpoint, or {0, 0})
    data_audio_cfg audio;
} data_loader_cfg;

typedef struct data_loader data_loader;  // opaque
// Opens the dataset and starts the thread. accum = global_batch / (micro_batch * dp_size)
// micro-batches are produced per step; micro-step k of rank r in the global batch at
// position p holds perm[p.offset + (k * dp_size + r) * micro_batch + j], j < micro_batch.
int data_loader_open(data_loader **out, const data_loader_cfg *cfg, mm_err *err);
// Blocks until the next micro-batch is ready and returns it (valid until the next call).
// Returns NULL and fills err if the thread hit a read error.
const data_batch *data_loader_next(data_loader *l, mm_err *err);
// Position of the first global batch not yet fully handed out (what a checkpoint saves).
data_pos data_loader_pos(const data_loader *l);
const data_schema *data_loader_schema(const data_loader *l);
// Seconds the caller spent blocked in data_loader_next since the last call to this.
double data_loader_take_wait(data_loader *l);
void data_loader_close(data_loader *l);

// ---------------------------------------------------------------------------------------
// Synthetic paired set (mmdata synth): each sample is a coloured shape of some size and
// position; the caption says it in one of several phrasings; the audio encodes it
// (pitch = colour, beat count = shape, beat length = size, low drone = position).
enum { DATA_N_ATTR = 4 };  // colour, shape, size, position
typedef struct {
    int synth_h, synth_w;   // image size (default 32 x 32 x 3)
    int audio_rate;         // default 8000
    int audio_len;          // default 4000 (0.5 s)
    int text_max;           // default 48
    double p_no_image;      // share of samples without an image (default 0.1)
    double p_no_audio;      // share of samples without audio (default 0.1)
} data_synth_cfg;
void data_synth_default(data_synth_cfg *c);
// Writes dir/train (n samples) and dir/val (max(64, n/10) samples) with disjoint seeds.
int data_synth_write(const char *dir, uint64_t n, uint64_t seed, const data_synth_cfg *c,
                     mm_err *err);
// Scores a generated caption against the reference: correct[a] = 1 when the generated text
// names attribute a exactly as the reference does (one word of that attribute, the right one).
// Returns 1 when all attributes are right.
int data_synth_score(const char *reference, const char *generated, int correct[DATA_N_ATTR]);
extern const char *const data_synth_attr_names[DATA_N_ATTR];
// Parses a caption into attribute indices (the scorer's parser): attr[a] = the index of the
// one vocabulary word of attribute a it names (colour: red green blue yellow purple white;
// shape: circle square triangle cross; size: small large; position: left right top bottom),
// or -1 when it names none or several. Returns 0 when every attribute is named once, else -1.
int data_synth_attrs(const char *caption, int attr[DATA_N_ATTR]);
// The pixel rule: reads colour and shape off an image drawn like the synthetic set's (a bright
// shape on a dark background), with no model, so generated images can be scored like captions.
// img (h, w, c) uint8, c >= 3 (channels past the third ignored). Foreground = pixels whose
// brightest channel is >= 100 (the background stays <= 40, every colour's brightest channel
// >= 188), largest 4-connected part of it only; colour = palette colour nearest its mean;
// shape from its bounding box (data/synth.c). Returns 0, or -1 when there is no foreground
// (or c < 3); colour and shape are then -1.
int data_synth_classify(const uint8_t *img, int h, int w, int c, int *colour, int *shape);

// ---------------------------------------------------------------------------------------
// Images out (data/image.c): model images back to bytes and PNG files.
// [-1, 1] floats to 0..255 with rounding (the inverse of the loader's u8 / 127.5 - 1;
// out-of-range values and NaN clip). n values.
void data_image_to_u8(const float *img, int n, uint8_t *out);
// Tiles n images (n, h, w, c) into a grid of min(cols, n) columns, with pad grey (128) pixels
// between cells and around the border; empty cells are grey. Sets *out_h, *out_w =
// rows * h + (rows + 1) * pad, cols * w + (cols + 1) * pad; out (out_h, out_w, c) is written
// unless NULL (a size query). Bad arguments abort.
void data_image_grid(const uint8_t *imgs, int n, int h, int w, int c, int cols, int pad,
                     uint8_t *out, int *out_h, int *out_w);
// Writes rgb (h, w, c), c = 1 (grey), 3 (RGB) or 4 (RGBA), 8-bit, as a PNG at path atomically
// (encoded in memory, then mm_write_file_atomic: path.tmp, fsync, rename). Returns 0, or -1
// with err naming the path.
int data_png_write(const char *path, const uint8_t *rgb, int h, int w, int c, mm_err *err);

#endif  // MM_DATA_H
