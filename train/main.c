// main.c: the `train` entry point. Parses the command line, resolves the config, sets the
// thread counts, and turns every failure into one "error: ..." line and a non-zero exit on
// every rank (never a hang: a failure seen by one rank only ends the job via comm_abort).
#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "config.h"
#include "memory.h"
#include "train.h"

static const char *usage =
    "usage: train CONFIG.yaml [section.key=value ...]\n"
    "  Trains (or resumes, with checkpoint.resume: auto) the run CONFIG describes;\n"
    "  each section.key=value overrides one config key. Keys: train/CONFIG.md.\n"
    "usage: train sample --ckpt DIR --out DIR [--text \"...\"] [--audio FILE] [--n K]\n"
    "                    [--steps S] [--guidance G] [--seed S] [--backend cpu|cuda]\n"
    "  Generates images from a diffusion checkpoint (EMA weights) into DIR.\n"
    "usage: train export --ckpt DIR --out FILE [--format hdf5|safetensors]\n"
    "  Writes the weights (and the EMA, if kept) of a checkpoint of any tp x dp layout as\n"
    "  full-shape float32 tensors into one HDF5 (default) or safetensors file\n"
    "  (train/EXPORT.md). DIR may be a checkpoint, a ckpt/ directory or a run directory\n"
    "  (its latest checkpoint).\n";

// Exits every rank with status 2 after rank 0 printed msg: used for errors that all ranks
// detect alike (command line, config), so the message is printed once.
static void fail_all(comm_group *world, const char *msg) {
    if (comm_rank(world) == 0) {
        fprintf(stderr, "error: %s\n", msg);
        fflush(stderr);
    }
    comm_finalize(world);
    exit(2);
}

// Errors about the resolved config start "config: "; on the command line the user knows it
// as the file they named (plus overrides), so the message names that file instead.
static const char *name_config(mm_err *err, const char *path) {
    if (strncmp(err->msg, "config: ", 8) == 0) {
        char msg[MM_ERR_LEN];
        snprintf(msg, sizeof(msg), "%s: %s", path, err->msg + 8);
        memcpy(err->msg, msg, sizeof(msg));
    }
    return err->msg;
}

// OpenMP (and the OpenMP build of OpenBLAS) threads per rank: run.threads, or the cores of
// this node shared evenly among the ranks on it.
static int pick_threads(const mm_config *c) {
    if (c->run.threads > 0) return c->run.threads;
    int n = omp_get_num_procs() / train_local_ranks();
    return n > 0 ? n : 1;
}

int main(int argc, char **argv) {
    comm_group *world = comm_init(&argc, &argv);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        if (comm_rank(world) == 0) fputs(usage, stdout);
        comm_finalize(world);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "sample") == 0) {
        mm_err err;
        if (train_sample_main(argc - 2, argv + 2, world, &err) != 0) fail_all(world, err.msg);
        comm_finalize(world);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "export") == 0) {
        mm_err err;
        if (train_export_main(argc - 2, argv + 2, world, &err) != 0) fail_all(world, err.msg);
        comm_finalize(world);
        return 0;
    }
    if (argc < 2 || argv[1][0] == '-') {
        if (comm_rank(world) == 0) fputs(usage, stderr);
        fail_all(world, argc < 2 ? "no config file given" : "unknown option (see --help)");
    }
    mm_config cfg;
    mm_err err;
    if (mm_config_load(&cfg, argv[1], argc - 2, argv + 2, &err) != 0)
        fail_all(world, err.msg);
    if (mm_config_validate(&cfg, &err) != 0) fail_all(world, name_config(&err, argv[1]));
    int threads = pick_threads(&cfg);
    omp_set_num_threads(threads);
    openblas_set_num_threads(threads);

    int rc = train_run(&cfg, world, &err);
    if (rc != 0) fail_all(world, name_config(&err, argv[1]));
    comm_finalize(world);
    return 0;
}
