// tboard.h: TensorBoard event files written directly, so that `tensorboard --logdir runs/`
// shows a run (its scalars, the diffusion sample grids, the generated captions) without
// TensorFlow or a protobuf library. Rank 0 writes one file per run directory; the trainer
// (trainer.c) mirrors every metrics.jsonl line into it and adds images and text.
//
// The file: TFRecord framing, each record = uint64 length (little-endian), masked CRC-32C of
// those 8 bytes, the data, masked CRC-32C of the data; each record's data is one Event
// protobuf. The first Event holds file_version "brain.Event:2". Field numbers used, from
// tensorflow/core/util/event.proto, tensorflow/core/framework/summary.proto and tensor.proto
// (the copies under tensorboard/compat/proto in the tensorboard package agree):
//   Event          wall_time 1 (double), step 2 (int64), file_version 3 (string),
//                  summary 5 (Summary)
//   Summary        value 1 (repeated Value)
//   Value          tag 1 (string), simple_value 2 (float), image 4 (Image), tensor 8
//                  (TensorProto), metadata 9 (SummaryMetadata)
//   Image          height 1, width 2, colorspace 3 (int32: 1 grey, 3 RGB, 4 RGBA),
//                  encoded_image_string 4 (bytes, PNG here)
//   SummaryMetadata  plugin_data 1 (PluginData: plugin_name 1 (string), content 2 (bytes))
//   TensorProto    dtype 1 (DT_STRING = 7), tensor_shape 2 (empty: a scalar), string_val 8
// Text goes as a string tensor whose metadata names the "text" plugin, which is what
// TensorBoard's text tab reads (it renders the string as Markdown).
//
// Resume: tb_open keeps, in every event file already in the directory, only the events of
// steps <= the step the run resumes from (and drops a record a kill cut short), then appends
// to the newest file: each step is in the files once, as metrics.jsonl's cut-back does.
#ifndef MM_TRAIN_TBOARD_H
#define MM_TRAIN_TBOARD_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../core/core.h"

// One event file open for appending. Every tb_* write flushes: a kill after it loses
// nothing, and a write error shows at once. The writes return 0, or -1 with errno set (the
// caller names tb_writer.path, as it does for metrics.jsonl).
typedef struct {
    FILE *f;          // owned; NULL when closed (or never opened)
    char path[4096];  // the event file
    int created;      // tb_open started the file (it holds no earlier step)
} tb_writer;

// Opens an event file in dir (created with its parents) for steps after keep_step: cuts the
// files already there back to steps <= keep_step, then appends to the newest of them, or
// starts events.out.tfevents.<unix time>.<host> with the file_version record. -1 with err
// naming the path on failure.
int tb_open(tb_writer *w, const char *dir, int64_t keep_step, mm_err *err);
// Closes the file; -1 with errno when the last bytes could not be written. Safe on a closed
// or zeroed writer.
int tb_close(tb_writer *w);

// One metrics.jsonl line (a flat JSON object of numbers and nulls with an integer "step",
// as trainer.c, eval.c and survive.c write them; n bytes, the newline optional) as one
// event: each numeric key but "step" becomes a scalar of that tag (float32, as TensorBoard
// keeps them); nulls are left out. A line of another shape is a bug (MM_CHECK).
int tb_metrics_line(tb_writer *w, const char *line, size_t n);
// An encoded PNG of h x w pixels and c channels (1, 3 or 4) as an image at step.
int tb_image_png(tb_writer *w, const char *tag, int64_t step, const void *png, size_t n, int h,
                 int width, int c);
// Text (UTF-8 Markdown, NUL-terminated) for TensorBoard's text tab at step.
int tb_text(tb_writer *w, const char *tag, int64_t step, const char *text);

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of p[0..n); exposed for the tests.
uint32_t tb_crc32c(const void *p, size_t n);

#endif  // MM_TRAIN_TBOARD_H
