// data.h: the data module's one public header: the shard dataset (format v1, data/FORMAT.md),
// the byte tokenizer, audio features, the sampler that keeps the loader's promise, and the
// prefetching loader that turns shard bytes into model-ready micro-batches.
//
// The loader's promise: one global permutation of sample indices per (seed, epoch); the
// global batch of a step is a fixed slice of it; each dp rank takes a fixed part of that
// slice; so the sample order does not depend on the number of ranks, and a resumed run
// continues the same order. A final partial global batch of an epoch is DROPPED
// (never padded, never duplicated): steps_per_epoch = floor(n / global_batch).
#ifndef MM_DATA_H
#define MM_DATA_H

#include <signal.h>
#include <stdint.h>
#include <stdio.h>

#include "../core/core.h"

// ---------------------------------------------------------------------------------------
// Tokenizer "bytes-v1": a caption's UTF-8 bytes are the tokens 0..255; three specials follow.
enum {
    DATA_N_BYTES = 256,  // tokens below it are bytes
    DATA_TOK_BOS = 256,
    DATA_TOK_EOS = 257,
    DATA_TOK_PAD = 258,
    DATA_VOCAB = 259
};
#define DATA_TOKENIZER_NAME "bytes-v1"

// The one layout of a caption, shared by the loader, `train sample` and the model's greedy
// generation, so that what a model is trained on and what it is prompted with cannot drift
// apart. Header-only because the model uses it and is also built without data/ (the float64
// gradient checks, the CUDA op tests); it is plain C that also compiles as C++ (.cu files
// include this header).
//
// A token with no byte form (BOS, EOS, PAD): generation stops at one.
static inline int data_tok_is_special(int32_t t) { return t >= DATA_N_BYTES; }

// Lays text[0..len) out in T positions: tok = BOS, the bytes, PAD up to T. tgt (NULL when
// not wanted) is what each position predicts: the bytes, EOS after the last one, then -1
// (no loss). len = 0 gives the prompt that generation starts from. Needs 0 <= len < T: the
// callers refuse longer captions (shard open, `train sample --text`), as T = text_max + 1.
static inline void data_tokens_encode(const char *text, int len, int T, int32_t *tok,
                                      int32_t *tgt) {
    tok[0] = DATA_TOK_BOS;
    for (int t = 0; t < len; t++) tok[t + 1] = (unsigned char)text[t];
    for (int t = len + 1; t < T; t++) tok[t] = DATA_TOK_PAD;
    if (!tgt) return;
    for (int t = 0; t < len; t++) tgt[t] = (unsigned char)text[t];
    tgt[len] = DATA_TOK_EOS;
    for (int t = len + 1; t < T; t++) tgt[t] = -1;
}

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
// Shard writing (used by `mmdata synth` and `mmdata pack`). One sample in host form.
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
//
// mode (the old verify_checksums flag keeps its meaning for 0 and 1):
//  DATA_OPEN_VERIFY (1): each shard's crc32 is checked against index.json BEFORE HDF5 parses
//    a byte of it, so a damaged shard is "checksum mismatch" naming it, never an HDF5 error.
//  DATA_OPEN_NO_VERIFY (0): no checksum pass (data.verify: false). Permissions and the file
//    type are still checked first ("permission denied", "not a regular file"); what HDF5
//    returns is bounds-checked before use; and when HDF5 refuses a shard, its checksum is
//    computed then, so a damaged file still reads "checksum mismatch" rather than a
//    misleading HDF5 reason. (HDF5 1.10 itself is not hardened against every damaged file:
//    only verify keeps damaged bytes away from it.)
//  DATA_OPEN_SCHEMA (2): reads and checks index.json only, opening no shard: for callers
//    that want the schema before the real open (the trainer's probe). Such a dataset gives
//    its schema; data_dataset_read and _read_raw refuse it with an error.
enum { DATA_OPEN_NO_VERIFY = 0, DATA_OPEN_VERIFY = 1, DATA_OPEN_SCHEMA = 2 };
typedef struct data_dataset data_dataset;  // opaque; thread-safe for concurrent reads
int data_dataset_open(data_dataset **out, const char *dir, int mode, mm_err *err);
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
    double load_t0, load_t1;  // mm_now() when the loader thread began and finished making it
                              // (the step timeline, train/trace.h); 0 when not from a loader
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
// Augmentation (data/augment.c): random changes to training samples, applied by the loader
// thread to the decoded batch (evaluation reads the validation set without the loader, so it
// never sees them). Every draw comes from a stream of (seed, sample_id, epoch) alone, so a
// sample is changed the same way whatever the rank count, the micro-batch split or a resume,
// and differently in each epoch. A zero-initialised cfg changes nothing; each transform has
// its own sub-stream, so turning one on does not change what the others draw.
typedef struct {
    // images (pixels in [-1, 1], HWC); applied in this order
    double crop_scale;  // random resized crop: min share of the area kept, (0, 1]; 0 or 1
                        // with crop_ratio 0 or 1 = no crop
    double crop_ratio;  // max aspect stretch of the crop against the image's, >= 1
    int flip;           // mirror left-right with probability 1/2 (0/1)
    int translate;      // max shift in pixels along each axis; the border pixels fill in
    double brightness;  // colour jitter strengths in [0, 1]: factors drawn in [1-s, 1+s]
    double contrast;
    double saturation;  // colour images only (3 or more channels)
    // audio (normalised log-mel, (F, n_mels)); applied in this order
    int audio_shift;                  // max shift in frames, either way; silence fills in
    double audio_gain_db;             // max gain in dB, either way
    int time_masks, time_mask_width;  // SpecAugment: masks of up to width frames, set to 0
    int freq_masks, freq_mask_width;  // SpecAugment: masks of up to width mel bands, set to 0
} data_augment_cfg;

// 1 when cfg changes anything at all.
int data_augment_on(const data_augment_cfg *a);
// Checks cfg against what it will be applied to: images (h, w, c) and features (frames,
// n_mels). Returns 0, or -1 with err naming the augment.* key, its value and the limit.
int data_augment_check(const data_augment_cfg *a, int h, int w, int c, int frames, int n_mels,
                       mm_err *err);

// What augmentation drew for one sample: plain data, so that tests can check that a
// transform changed exactly what its draw says.
enum { DATA_AUG_MAX_MASKS = 64 };
typedef struct {
    int crop;  // 0: no crop; else the box, in pixels of the source image:
    double crop_y, crop_x, crop_h, crop_w;
    int flip;
    int dy, dx;  // translation: the content moves down by dy and right by dx pixels
    float brightness, contrast, saturation;  // jitter factors (1 = unchanged)
    int shift;  // frames the features move later in time (< 0: earlier)
    float gain_db;
    int n_time, n_freq;  // masks drawn (time_masks, freq_masks), each a first frame (band)
    int time_at[DATA_AUG_MAX_MASKS], time_w[DATA_AUG_MAX_MASKS];  // and a width
    int freq_at[DATA_AUG_MAX_MASKS], freq_w[DATA_AUG_MAX_MASKS];
} data_aug_draw;
// Draws sample sample_id's changes for epoch from (seed, sample_id, epoch) alone.
void data_augment_draw(const data_augment_cfg *a, uint64_t seed, uint64_t sample_id, int64_t epoch,
                       int h, int w, int frames, int n_mels, data_aug_draw *d);

// The augmenter the loader thread owns: cfg, seed and scratch. Not thread-safe (one per
// thread). init copies cfg; free releases the scratch.
typedef struct {
    data_augment_cfg cfg;
    uint64_t seed;
    int on;          // data_augment_on(&cfg)
    float *scratch;  // (h * w * c) for the image transforms that move pixels; owned
    size_t scratch_n;
} data_augmenter;
void data_augmenter_init(data_augmenter *g, const data_augment_cfg *cfg, uint64_t seed);
void data_augmenter_free(data_augmenter *g);
// Changes every sample of b (a training micro-batch of epoch) in place; samples without an
// image (audio) keep their zero image (features).
void data_augment_batch(data_augmenter *g, data_batch *b, int64_t epoch);

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
    data_augment_cfg augment;  // training-time changes (zero = none), seeded from seed
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
    // Per attribute, the words it may take as a bitmask over its vocabulary (bit v = word v
    // of data_synth_attrs' lists); 0 = all. A restricted set is differently distributed
    // from the full one (a fine-tuning split); with every mask 0 the draws are unchanged.
    unsigned allow[DATA_N_ATTR];
    FILE *progress;                     // a progress line every few seconds (NULL = silent)
    const volatile sig_atomic_t *stop;  // when set to non-zero (a signal), writing stops
} data_synth_cfg;
void data_synth_default(data_synth_cfg *c);
// Restricts c from a spec "ATTR=WORD[,WORD...]" (e.g. "colour=red,blue", "position=left");
// repeating an attribute replaces its words. -1 with err naming the unknown attribute/word.
int data_synth_restrict(data_synth_cfg *c, const char *spec, mm_err *err);
// Writes dir/train (n samples) and dir/val (max(64, n/10) samples) with disjoint seeds.
// n is at most DATA_SYNTH_MAX_SAMPLES, and the estimated size must fit in the free space of
// dir's file system. Both splits are written into temporary folders beside them
// (dir/.train.synth-PID, dir/.val.synth-PID) and renamed into place at the end, so a
// failure, a stop or a kill never leaves a partial dir/train or dir/val (a kill -9 leaves
// the hidden temporary folder, which a later synth into dir removes).
#define DATA_SYNTH_MAX_SAMPLES 100000000ULL
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

// =======================================================================================
// Packing a user's own files into a dataset: `mmdata pack` and `mmdata inspect`
// (data/manifest.c, data/media.c, data/pack.c; the rules are in data/FORMAT.md "Packing").
// Functions that judge one sample (manifest records, media, captions) fail with an mm_err
// holding only the reason; the packer adds "FILE:LINE: PATH: " in front.
// =======================================================================================
#include <stdio.h>  // FILE, for the packer's log and inspect's output

// The caption rule of format v1 (data/caption.c), which the writer, the packer and the
// reader all apply: strict UTF-8 (core's mm_utf8_check) and no NUL byte (it would end
// data_batch.text early). Returns NULL when s[0..n) is valid, otherwise a short reason
// ("overlong encoding", "UTF-16 surrogate encoded in UTF-8", "code point above U+10FFFF",
// "NUL byte", ...) and *at = the offset of the first bad byte.
const char *data_utf8_why(const uint8_t *s, size_t n, size_t *at);

// --- Manifest (data/manifest.c) --------------------------------------------------------
// One flat JSON object, as found on one line of a .jsonl manifest.
enum { DATA_JSON_MAX_MEMBERS = 32 };
typedef struct {
    int n;                                // members
    char *key[DATA_JSON_MAX_MEMBERS];     // malloc'd, NUL-terminated
    char *val[DATA_JSON_MAX_MEMBERS];     // malloc'd decoded bytes + NUL; NULL for a JSON null
    size_t val_n[DATA_JSON_MAX_MEMBERS];  // bytes of val (never holds a NUL: \u0000 is refused)
    int col[DATA_JSON_MAX_MEMBERS];       // 1-based byte column of the member's key
} data_json_obj;
// Parses s[0..n) as one object whose values are strings or null: escapes \" \\ \/ \b \f \n
// \r \t \uXXXX (surrogate pairs combined; lone surrogates and \u0000 refused) decoded to
// UTF-8; raw bytes >= 0x80 are copied as they are. Refuses duplicate keys, other value types,
// trailing commas and any text after the object. Returns 0 (obj owned by the caller:
// data_json_obj_free), or -1 with *col (1-based byte column) and err (the reason); obj then
// holds nothing.
int data_json_parse_line(const char *s, size_t n, data_json_obj *obj, int *col, mm_err *err);
void data_json_obj_free(data_json_obj *o);

// One CSV record (RFC 4180).
typedef struct {
    int n;          // fields
    char **cell;    // (n) malloc'd, NUL-terminated (a cell may also hold NUL bytes: cell_n)
    size_t *cell_n; // (n) bytes of each cell
    int line;       // 1-based line where the record starts
} data_csv_row;
// Reads the record starting at buf[*pos] (fields split by ',', records ended by LF or CRLF;
// a field in double quotes may hold ',', line breaks and "" for one quote; empty lines are
// skipped). *line is the 1-based line number at *pos; both advance past the record. Returns
// 1 with row filled (caller frees: data_csv_row_free), 0 at the end of buf, or -1 on a
// malformed record with *err_line, *err_col and err (the reason); *pos then skips to the
// next line so the caller may go on.
int data_csv_next(const char *buf, size_t n, size_t *pos, int *line, data_csv_row *row,
                  int *err_line, int *err_col, mm_err *err);
void data_csv_row_free(data_csv_row *r);

// The fields a manifest names (JSON keys, CSV header columns).
enum { DATA_MF_IMAGE, DATA_MF_AUDIO, DATA_MF_CAPTION, DATA_MF_CAPTION_FILE, DATA_MF_N };
extern const char *const data_manifest_fields[DATA_MF_N];  // "image", "audio", ...

typedef struct {
    int line;               // 1-based line where the record starts: it becomes the sample_id
    char *field[DATA_MF_N]; // malloc'd or NULL when absent (an empty value is absent). Paths
                            // (image, audio, caption_file) are resolved against the
                            // manifest's folder; [DATA_MF_CAPTION] is the inline caption
    size_t caption_n;       // bytes of the inline caption
    char *error;            // malloc'd reason when the record is malformed (fields all NULL)
    int col;                // 1-based column of that error
    int file_name;          // 1 when a field came from the key 'file_name' (Hugging Face)
} data_manifest_rec;

typedef struct {
    char *path;              // the manifest as named by the caller (for messages)
    int n;                   // records (blank lines are not records)
    data_manifest_rec *rec;  // (n) in file order
} data_manifest;
// Which keys (JSON) or columns (CSV) give which field. key[f] (NULL: the defaults) is the
// only name field f answers to; by default image is "image" or "file_name", audio "audio",
// caption "caption" or "text", caption_file "caption_file". ignore is a comma-separated list
// of keys that are read past (NULL: none). Strings are borrowed.
typedef struct {
    const char *key[DATA_MF_N];
    const char *ignore;
} data_manifest_keys;
extern const char *const data_manifest_key_opts[DATA_MF_N];  // "--image-key", ...
// A map names each key once and does not ignore a key it maps. 0 or -1 with err.
int data_manifest_keys_check(const data_manifest_keys *k, mm_err *err);

// Reads a .jsonl or .csv manifest (decided by the name's ending) under the key map keys (NULL:
// the defaults). A malformed record (an unknown key, one field given twice, a missing
// file_name when other records have one) does not stop the reading: it is kept with its
// error, so that --on-error skip can report it. Returns -1 (with "FILE..." in err) only when
// the whole file is unusable: unreadable, an unknown type, a CSV without a valid header, a
// key mapped by keys that no record has. On success the caller frees m with
// data_manifest_free; on failure m holds nothing.
int data_manifest_read(const char *path, const data_manifest_keys *keys, data_manifest *m,
                       mm_err *err);
void data_manifest_free(data_manifest *m);

// --- Media (data/media.c) --------------------------------------------------------------
// State the decoders share between threads (a lock around libsndfile's open). Owned by the
// caller of data_media_new, freed with data_media_free; thread-safe.
typedef struct data_media data_media;
data_media *data_media_new(void);
void data_media_free(data_media *m);

// A decoded source image, before conversion to the schema.
typedef struct {
    int h, w;
    int c;     // 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    int depth; // 8 or 16 bits per sample
    void *px;  // (h, w, c) uint8_t or (depth 16) native-endian uint16_t; malloc'd, owned
} data_image_src;
// Decodes a PNG (any colour type and bit depth; palette and < 8-bit grey expand to 8 bits,
// tRNS to alpha) or a JPEG (grey or colour; CMYK refused), chosen by the first bytes. Values
// are taken as stored (no gamma or colour-profile conversion). Returns 0 (free with
// data_image_src_free) or -1 with the reason in err.
int data_image_decode(const uint8_t *buf, size_t n, data_image_src *out, mm_err *err);
void data_image_src_free(data_image_src *s);
// Converts src to out (H, W, C) uint8, C = 1, 3 or 4, by the packing rule (FORMAT.md
// "Packing"): scale to cover H x W, centre-crop, box filter when shrinking, linear when
// enlarging, premultiplied alpha (so 1 or 3 channels composite over black). Exact when no
// resizing is needed (src h == H and w == W) and the layout is kept.
void data_image_fit(const data_image_src *src, int H, int W, int C, uint8_t *out);
// Reads, decodes and fits the image file at path into out (H, W, C). 0, or -1 with reason.
int data_image_load(const char *path, int H, int W, int C, uint8_t *out, mm_err *err);

typedef struct {
    int n;              // PCM samples written to pcm (1..max_len)
    int trimmed;        // 1 when the clip was longer than max_len and its end was cut
    int src_rate;       // the file's sample rate, channels and frames
    int src_channels;
    int64_t src_frames;
} data_audio_info;
// Decodes an audio file (anything libsndfile reads: WAV, FLAC, OGG/Vorbis, AIFF, ...), mixes
// its channels down to their mean, resamples it to rate with libsoxr (high quality) unless
// the rates match, and writes its first (at most) max_len samples to pcm as int16 (x * 32768
// rounded, clipped). Same rate and int16 mono input comes back exactly. Returns 0 with info,
// or -1 with the reason (missing, unreadable, not audio, zero length, truncated).
int data_audio_load(data_media *m, const char *path, int rate, int max_len, int16_t *pcm,
                    data_audio_info *info, mm_err *err);

// The length an audio file will have at rate (at most ceil(frames * rate / file rate), what
// data_audio_load gives before cutting), from its header alone. 0, or -1 with the reason.
int data_audio_probe(data_media *m, const char *path, int rate, int64_t *n, mm_err *err);

// A caption must be strict UTF-8 (data_utf8_why) of at most text_max bytes. 0 or -1 + reason.
int data_caption_check(const char *s, size_t n, int text_max, mm_err *err);
// The longest prefix of the valid UTF-8 caption s[0..n) that has at most max bytes and ends
// at a character boundary (a cut never splits a character).
size_t data_caption_cut(const char *s, size_t n, size_t max);
// Reads a caption file: its bytes, less a leading UTF-8 BOM and one final line ending (LF or
// CRLF) that editors add, into *out (malloc'd, NUL-terminated, owned by the caller), *n its
// length. Not checked. 0, or -1 with the reason.
int data_caption_read(const char *path, char **out, size_t *n, mm_err *err);
// data_caption_read, then checked like data_caption_check, into out (text_max + 1 bytes,
// NUL-terminated); *n = its length. 0, or -1 with the reason.
int data_caption_load(const char *path, int text_max, char *out, int *n, mm_err *err);

// --- Packing and inspecting (data/pack.c) ----------------------------------------------
enum { DATA_PACK_FAIL = 0, DATA_PACK_SKIP = 1, DATA_PACK_PATH = 4200 };
// What the schema takes from the data when not given (FORMAT.md "Packing"): text_max is the
// longest caption, at most DATA_PACK_TEXT_CAP bytes (longer ones are cut at a character
// boundary); audio_len is the longest clip rounded up to a multiple of DATA_PACK_AUDIO_ROUND
// samples (so the trainer's default STFT frames, n_fft 256 and hop 128, reach the clip's
// end), at least 256, at most DATA_PACK_AUDIO_CAP_S seconds.
#define DATA_PACK_TEXT_CAP 256
#define DATA_PACK_AUDIO_CAP_S 10
#define DATA_PACK_AUDIO_ROUND 128
enum { DATA_PACK_N_PCT = 5 };
extern const int data_pack_pcts[DATA_PACK_N_PCT];  // the clip-length percentiles reported
typedef struct {
    const char *manifest;      // .jsonl or .csv; or NULL when folder is given
    const char *folder;        // a Hugging Face-style folder: DIR/metadata.{jsonl,csv}, or
                               // DIR/<train_split>/metadata.* and a val split beside it
    const char *train_split;   // folder's training subfolder (NULL: DIR itself when it holds
                               // metadata, else "train")
    const char *val_split;     // folder's val subfolder (NULL: the first of validation, valid,
                               // val, dev, test that exists; "none": no pre-split val)
    const char *val_manifest;  // val records from this file, not split off (NULL: none)
    data_manifest_keys keys;   // key / column names (zeroed: the defaults)
    const char *out;       // dataset folder to create: out/train, out/val (must not exist or be empty)
    int img_h, img_w;      // image size (default 32 x 32, as mmdata synth)
    int img_c;             // 1 grey, 3 RGB (default), 4 RGBA
    int audio_rate;        // Hz (default 8000)
    int audio_len;         // max PCM samples per clip; 0 (default): from the clips
    int text_max;          // max caption bytes; 0 (default): from the captions
    int cut_captions;      // a caption over text_max: 1 cut, 0 a bad sample; -1 (default):
                           // cut when text_max comes from the data, bad when it is given
    int shard_size;        // samples per shard (default 500)
    double val_fraction;   // share of the records that go to out/val, in [0, 1); -1 (default):
                           // 0.1, or 0 when val comes from its own manifest
    uint64_t seed;         // of the split permutation (default 1)
    int threads;           // decoding threads (default: the online CPUs, at most 16)
    int on_error;          // DATA_PACK_FAIL (default) or DATA_PACK_SKIP
    int progress;          // draw a progress bar on log (the CLI sets it when stderr is a tty)
    FILE *log;             // warnings and the progress bar; NULL = silent
} data_pack_cfg;
void data_pack_default(data_pack_cfg *c);

typedef struct {
    char train_manifest[DATA_PACK_PATH], val_manifest[DATA_PACK_PATH];  // what was read ("" none)
    uint64_t records;          // samples in the manifests (malformed records included)
    uint64_t packed, skipped;  // packed = train + val
    uint64_t train, val;
    int train_shards, val_shards;
    int text_max, audio_len;             // the schema written
    int text_auto, audio_auto;           // 1 when taken from the data
    int text_longest;                    // longest valid caption in bytes (when text_auto)
    uint64_t captions_cut;               // captions cut to text_max
    uint64_t clips;                      // audio files whose length was read (when audio_auto)
    int64_t clip_pct[DATA_PACK_N_PCT];   // their lengths at audio_rate at data_pack_pcts
    uint64_t clip_cut[DATA_PACK_N_PCT];  // clips longer than each of those
    uint64_t trimmed;          // clips longer than audio_len, cut to it
    uint64_t bytes;            // bytes of the finished dataset's files
    double seconds;
} data_pack_stats;
// Packs the manifests' samples into c->out (FORMAT.md "Packing"): written into a temporary
// folder next to it and renamed at the end, so that a failure leaves no partial dataset.
// With DATA_PACK_FAIL the first bad sample in manifest order stops it: -1 with err
// "FILE:LINE: PATH: reason". With DATA_PACK_SKIP bad samples are left out and listed in
// c->out/skipped.tsv; -1 only for failures of the whole job (bad options, unreadable
// manifest, a split left empty, disk errors).
int data_pack(const data_pack_cfg *c, data_pack_stats *st, mm_err *err);

// One stored sample as bytes (what `mmdata inspect` writes out). Reads dataset position
// index: image (img_h * img_w * img_c bytes), audio (audio_len int16, zero after audio_n),
// text (text_max + 1 bytes, NUL-terminated); any of them may be NULL to skip it, and then
// nothing is read from the file for it.
typedef struct {
    int shard;           // index of the shard in index.json
    uint64_t sample_id;
    int has_image, has_audio;
    int audio_n;         // PCM samples used
    int text_n;          // caption bytes
} data_raw_info;
int data_dataset_read_raw(data_dataset *ds, uint64_t index, uint8_t *image, int16_t *audio,
                          char *text, data_raw_info *info, mm_err *err);

// Prints what dir holds (a packed folder with train/ and val/, or one dataset): schema,
// counts per split and shard, modalities present. 0 or -1 with err.
int data_inspect(const char *dir, FILE *out, mm_err *err);
// Writes sample `index` of a dataset (split: "train", "val", or NULL when dir is itself a
// dataset, or to take train/ when it has one) to out_dir as sample_<index>.png (when it has
// an image), .wav (16-bit PCM mono, its audio_n samples, when it has audio) and .txt (the
// caption's bytes exactly), and prints what it wrote. 0 or -1 with err.
int data_inspect_sample(const char *dir, const char *split, uint64_t index, const char *out_dir,
                        FILE *out, mm_err *err);

#endif  // MM_DATA_H
