// cli.c: usage text, --help detection and option lookup from a command's option table
// (cli.h), so that every program of the project answers its command line the same way.
#include "cli.h"

#include <stdarg.h>
#include <string.h>

// An option's name and value wider than this put its help on the next line.
enum { CLI_COL_MAX = 24 };

static const mm_cli_opt cli_help_opt = {"-h, --help", NULL, "print this help and exit"};

static int cli_head_len(const mm_cli_opt *o) {
    return (int)strlen(o->name) + (o->value ? 1 + (int)strlen(o->value) : 0);
}

// text with each line after the first indented by indent spaces, then a newline
static void cli_put_indented(const char *text, int indent, FILE *f) {
    for (const char *s = text; *s;) {
        const char *nl = strchr(s, '\n');
        int n = nl ? (int)(nl - s) : (int)strlen(s);
        fprintf(f, "%.*s\n", n, s);
        if (!nl) return;
        s = nl + 1;
        if (*s) fprintf(f, "%*s", indent, "");
    }
}

static void cli_put_opt(const mm_cli_opt *o, int col, FILE *f) {
    int n = 2 + cli_head_len(o);
    fprintf(f, "  %s%s%s", o->name, o->value ? " " : "", o->value ? o->value : "");
    if (n + 2 > col)
        fprintf(f, "\n%*s", col, "");
    else
        fprintf(f, "%*s", col - n, "");
    cli_put_indented(o->help, col, f);
}

static void cli_put_name(const mm_cli_cmd *c, FILE *f) {
    fprintf(f, "%s%s%s", c->prog, c->name ? " " : "", c->name ? c->name : "");
}

void mm_cli_usage(const mm_cli_cmd *c, FILE *f) {
    // one usage line per form the synopsis lists
    for (const char *s = c->synopsis;;) {
        const char *nl = strchr(s, '\n');
        fputs(s == c->synopsis ? "usage: " : "       ", f);
        cli_put_name(c, f);
        fprintf(f, " %.*s\n", nl ? (int)(nl - s) : (int)strlen(s), s);
        if (!nl) break;
        s = nl + 1;
    }
    if (c->about) fputs(c->about, f);
    if (c->subs) {
        int w = 0;
        for (int i = 0; c->subs[i]; i++) {
            int n = (int)strlen(c->subs[i]->name);
            if (n > w) w = n;
        }
        fprintf(f, "\ncommands (%s COMMAND --help prints its options):\n", c->prog);
        for (int i = 0; c->subs[i]; i++)
            fprintf(f, "  %-*s  %s\n", w, c->subs[i]->name, c->subs[i]->summary);
    }
    int col = cli_head_len(&cli_help_opt);
    for (const mm_cli_opt *o = c->opts; o && o->name; o++) {
        int n = cli_head_len(o);
        if (n <= CLI_COL_MAX && n > col) col = n;
    }
    col += 4;  // two spaces before, two after
    fputs("\noptions:\n", f);
    for (const mm_cli_opt *o = c->opts; o && o->name; o++) cli_put_opt(o, col, f);
    cli_put_opt(&cli_help_opt, col, f);
    if (c->notes) {
        fputc('\n', f);
        fputs(c->notes, f);
    }
}

static int cli_is_help(const char *a) {
    return strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0;
}

static const mm_cli_opt *cli_find(const mm_cli_cmd *c, const char *a) {
    for (const mm_cli_opt *o = c->opts; o && o->name; o++)
        if (strcmp(o->name, a) == 0) return o;
    return NULL;
}

int mm_cli_wants_help(const mm_cli_cmd *c, int argc, char *const *argv) {
    for (int i = 0; i < argc; i++) {
        if (cli_is_help(argv[i])) return 1;
        const mm_cli_opt *o = cli_find(c, argv[i]);
        if (o && o->value) i++;  // its value, whatever it looks like
    }
    return 0;
}

const mm_cli_cmd *mm_cli_sub(const mm_cli_cmd *c, const char *name) {
    for (int i = 0; c->subs && c->subs[i]; i++)
        if (strcmp(c->subs[i]->name, name) == 0) return c->subs[i];
    return NULL;
}

const mm_cli_opt *mm_cli_next(const mm_cli_cmd *c, int argc, char *const *argv, int *i,
                              const char **value, mm_err *err) {
    const char *a = argv[*i];
    const mm_cli_opt *o = cli_find(c, a);
    *value = NULL;
    if (!o) {
        mm_cli_fail(c, err, "unknown option '%s'", a);
        return NULL;
    }
    if (o->value) {
        if (*i + 1 >= argc) {
            mm_cli_fail(c, err, "%s needs a value (%s)", a, o->value);
            return NULL;
        }
        *value = argv[++*i];
    }
    return o;
}

int mm_cli_fail(const mm_cli_cmd *c, mm_err *err, const char *fmt, ...) {
    char msg[MM_ERR_LEN], name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(name, sizeof(name), "%s%s%s", c->prog, c->name ? " " : "", c->name ? c->name : "");
    return mm_fail(err, "%s: %s (see %s --help)", name, msg, name);
}
