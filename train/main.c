// main.c: the `train` entry point. Parses the command line, resolves the config, sets the
// thread counts, and turns every failure into one "error: ..." line and a non-zero exit on
// every rank (never a hang: a failure seen by one rank only ends the job via comm_abort).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../core/cli.h"
#include "../model/backend.h"
#include "config.h"
#include "memory.h"
#include "train.h"

static const mm_cli_cmd *const train_subs[] = {&train_sample_cli, &train_export_cli, NULL};
static const mm_cli_cmd train_cli = {
    .prog = "train",
    .synopsis = "CONFIG.yaml [section.key=value ...]\nCOMMAND [options]",
    .about =
        "  Trains (or resumes, with checkpoint.resume: auto) the run CONFIG describes; each\n"
        "  section.key=value overrides one config key (keys: train/CONFIG.md). Run it under\n"
        "  mpirun for several ranks (launch/mpirun.sh --help).\n",
    .subs = train_subs,
    .notes = "exit status: 0 ok, non-zero on any error (one \"error: ...\" line)\n"};

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

// Prints c's usage on rank 0 and ends the process with status 0.
static void help_and_exit(comm_group *world, const mm_cli_cmd *c) {
    if (comm_rank(world) == 0) mm_cli_usage(c, stdout);
    fflush(stdout);
    comm_finalize(world);
    exit(0);
}

int main(int argc, char **argv) {
    mm_blas_pick_kernels(argv);  // may exec this program again (model/cpu/blas_cpu.c)
    comm_group *world = comm_init(&argc, &argv);
    const mm_cli_cmd *sub = argc >= 2 ? mm_cli_sub(&train_cli, argv[1]) : NULL;
    if (sub) {
        if (mm_cli_wants_help(sub, argc - 2, argv + 2)) help_and_exit(world, sub);
        int (*run)(int, char **, comm_group *, mm_err *) =
            sub == &train_sample_cli   ? train_sample_main
            : sub == &train_export_cli ? train_export_main
                                       : NULL;
        MM_CHECK(run, "train: command '%s' is listed but not dispatched", sub->name);
        mm_err err;
        if (run(argc - 2, argv + 2, world, &err) != 0) fail_all(world, err.msg);
        comm_finalize(world);
        return 0;
    }
    if (mm_cli_wants_help(&train_cli, argc - 1, argv + 1)) help_and_exit(world, &train_cli);
    if (argc < 2 || argv[1][0] == '-') {
        mm_err err;
        if (argc < 2)
            mm_cli_fail(&train_cli, &err, "no config file given");
        else
            mm_cli_fail(&train_cli, &err, "unknown option '%s'", argv[1]);
        fail_all(world, err.msg);
    }
    mm_config cfg;
    mm_err err;
    if (mm_config_load(&cfg, argv[1], argc - 2, argv + 2, &err) != 0)
        fail_all(world, err.msg);
    if (mm_config_validate(&cfg, &err) != 0) fail_all(world, name_config(&err, argv[1]));
    train_set_threads(cfg.run.threads);

    int rc = train_run(&cfg, world, &err);
    if (rc != 0) fail_all(world, name_config(&err, argv[1]));
    comm_finalize(world);
    return 0;
}
