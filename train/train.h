// train.h: the training run as one object: it owns the loader, the model, the optimizer
// state, the metrics file and the checkpoints of a run, so that the entry point (main.c)
// only parses the command line and reports errors.
#ifndef MM_TRAIN_H
#define MM_TRAIN_H

#include "../comm/comm.h"
#include "../core/cli.h"
#include "../core/core.h"
#include "config.h"

// Runs (or resumes) the training described by cfg on the ranks of world. Returns 0 on
// success; -1 with err filled on bad input that every rank detects alike (a config that
// does not fit the data, a checkpoint of another architecture). Failures that only one rank
// can see end the whole job through comm_abort.
int train_run(const mm_config *cfg, comm_group *world, mm_err *err);

// `train sample ARGS...` (train/sample.c): images from a diffusion checkpoint. argv holds
// the options after "sample". Returns 0, or -1 with err filled. train_sample_cli: its
// usage and options (main.c answers --help with it).
int train_sample_main(int argc, char **argv, comm_group *world, mm_err *err);
extern const mm_cli_cmd train_sample_cli;

// `train export ARGS...` (train/export.c): one consolidated HDF5 file of full-shape float32
// tensors from a checkpoint of any layout (train/EXPORT.md). Returns 0, or -1 with err.
int train_export_main(int argc, char **argv, comm_group *world, mm_err *err);
extern const mm_cli_cmd train_export_cli;

#endif  // MM_TRAIN_H
