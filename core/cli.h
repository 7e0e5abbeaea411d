// cli.h: the command-line conventions every mmtrain program keeps, in one place. A command
// describes its options once, in a table; the parser's checks and the --help text both come
// from that table, so the help cannot list an option the parser refuses nor miss one it
// takes. The conventions (as GNU tools have them):
//   - `--help` or `-h` anywhere among a command's arguments prints its usage on stdout and
//     exits 0, whatever else is wrong with the line (but `--text --help` is a caption: an
//     option's value is never taken for a request for help);
//   - an unknown option, a missing value or a bad one is one "error:" line naming the
//     command and pointing to its --help, and exit status 2.
#ifndef MM_CORE_CLI_H
#define MM_CORE_CLI_H

#include <stdio.h>

#include "core.h"

// One option. The table of a command ends with an entry whose name is NULL.
typedef struct {
    const char *name;   // "--ckpt"
    const char *value;  // the value's name in the usage ("DIR"); NULL: a flag without one
    const char *help;   // what it does and its default; '\n' starts another line
} mm_cli_opt;

// A program (name NULL) or one of its commands; static data, owned by whoever defines it.
typedef struct mm_cli_cmd {
    const char *prog;        // "train", "mmdata"
    const char *name;        // the command ("sample"), or NULL for the program itself
    const char *synopsis;    // what follows "usage: PROG [NAME] " ('\n' between forms)
    const char *summary;     // one line, for the program's list of commands
    const char *about;       // paragraphs after the usage line, or NULL
    const mm_cli_opt *opts;  // or NULL: no options but --help
    const struct mm_cli_cmd *const *subs;  // a program's commands, NULL-terminated, or NULL
    const char *notes;                     // text after the options, or NULL
} mm_cli_cmd;

// The usage of c: the usage line, about, the commands (a program's) or the options (with
// -h, --help added), then the notes.
void mm_cli_usage(const mm_cli_cmd *c, FILE *f);

// 1 when argv[0..argc) (the arguments after the command's name) holds --help or -h other
// than as the value of an option that takes one; else 0.
int mm_cli_wants_help(const mm_cli_cmd *c, int argc, char *const *argv);

// The command of program c named name, or NULL.
const mm_cli_cmd *mm_cli_sub(const mm_cli_cmd *c, const char *name);

// Reads the option at argv[*i]: returns its table entry with *value its value (NULL for a
// flag) and *i on the last argument used. NULL with err (mm_cli_fail's form) when the option
// is unknown or its value is missing.
const mm_cli_opt *mm_cli_next(const mm_cli_cmd *c, int argc, char *const *argv, int *i,
                              const char **value, mm_err *err);

// Fills err with "PROG [NAME]: <message> (see PROG [NAME] --help)", the one form of a
// command-line error, and returns -1.
int mm_cli_fail(const mm_cli_cmd *c, mm_err *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif  // MM_CORE_CLI_H
