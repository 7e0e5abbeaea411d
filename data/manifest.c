// manifest.c: reads the list of samples a user hands to `mmdata pack`, so that a typo on line
// 9000 of their manifest is an error naming that line and column rather than a sample that
// quietly goes missing. Two formats: JSON Lines (one flat object per line) and CSV (RFC 4180,
// with a header row). Both name the same fields: image, audio, caption, caption_file. Folders
// from elsewhere name them otherwise, so the names are a map (data_manifest_keys): by default
// Hugging Face's `file_name` is also the image and `text` also the caption; the command line
// maps any other column (--caption-key ...) or leaves it out (--ignore-keys), and a key that
// is neither stays an error, so that a typo ("imgae") never drops a field silently.
//
// There is no JSON library among the project's dependencies, and the objects are flat, so
// the parser here is small and strict: one object per line, string (or null) values only,
// full string escapes including \uXXXX and surrogate pairs (decoded to UTF-8), no duplicate
// or unknown keys, nothing after the closing brace. The bytes of a string are passed through
// as they are: whether a caption is valid UTF-8 is decided later, per sample, so that it can
// be skipped like any other bad sample.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"
#include "data_internal.h"

const char *const data_manifest_fields[DATA_MF_N] = {"image", "audio", "caption",
                                                     "caption_file"};

// ---------------------------------------------------------------------------------------
// A growable byte string (values being decoded).
typedef struct {
    char *buf;  // malloc'd, NUL-terminated while non-NULL
    size_t n, cap;
} bytes;

static void bytes_reserve(bytes *b, size_t k) {
    if (b->n + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + k + 1) cap *= 2;
        char *nb = realloc(b->buf, cap);
        MM_CHECK(nb, "out of memory reading the manifest");
        b->buf = nb, b->cap = cap;
    }
}

static void bytes_put(bytes *b, const char *p, size_t k) {
    bytes_reserve(b, k);
    memcpy(b->buf + b->n, p, k);
    b->n += k;
    b->buf[b->n] = '\0';
}

static char *bytes_take(bytes *b, size_t *n) {
    if (!b->buf) bytes_put(b, "", 0);
    char *p = b->buf;
    if (n) *n = b->n;
    memset(b, 0, sizeof(*b));
    return p;
}

// ---------------------------------------------------------------------------------------
// JSON: one flat object per line.
typedef struct {
    const char *s;
    size_t n, i;
    int *col;
    mm_err *err;
} jp;

static int jp_fail(jp *p, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int jp_fail(jp *p, size_t at, const char *fmt, ...) {
    char why[MM_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    *p->col = (int)at + 1;
    return mm_fail(p->err, "%s", why);
}

static void jp_ws(jp *p) {
    while (p->i < p->n &&
           (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\r' || p->s[p->i] == '\n'))
        p->i++;
}

// A string starting at the opening quote p->s[p->i]; its decoded bytes go to out.
static int jp_string(jp *p, bytes *out) {
    char why[MM_ERR_LEN];
    size_t len;
    bytes_reserve(out, p->n - p->i);
    if (mm_json_string(p->s, p->n, &p->i, out->buf + out->n, &len, why, sizeof(why)))
        return jp_fail(p, p->i, "%s", why);
    out->n += len;
    return 0;
}

void data_json_obj_free(data_json_obj *o) {
    for (int k = 0; k < o->n; k++) free(o->key[k]), free(o->val[k]);
    memset(o, 0, sizeof(*o));
}

int data_json_parse_line(const char *s, size_t n, data_json_obj *obj, int *col, mm_err *err) {
    memset(obj, 0, sizeof(*obj));
    *col = 0;
    jp p = {s, n, 0, col, err};
    bytes kb = {0}, vb = {0};
    jp_ws(&p);
    if (p.i >= n || s[p.i] != '{') {
        jp_fail(&p, p.i, "expected '{' (one JSON object per line)");
        goto fail;
    }
    p.i++;
    jp_ws(&p);
    if (p.i < n && s[p.i] == '}') {
        p.i++;
    } else {
        for (;;) {
            jp_ws(&p);
            size_t kat = p.i;
            if (p.i >= n || s[p.i] != '"') {
                jp_fail(&p, p.i, "expected a quoted key");
                goto fail;
            }
            if (jp_string(&p, &kb)) goto fail;
            size_t kn;
            char *key = bytes_take(&kb, &kn);
            (void)kn;  // keys hold no NUL byte: \u0000 and raw control bytes are refused
            for (int k = 0; k < obj->n; k++) {
                if (strcmp(obj->key[k], key) == 0) {
                    jp_fail(&p, kat, "key '%s' appears twice", key);
                    free(key);
                    goto fail;
                }
            }
            if (obj->n == DATA_JSON_MAX_MEMBERS) {
                jp_fail(&p, kat, "more than %d keys in one object", DATA_JSON_MAX_MEMBERS);
                free(key);
                goto fail;
            }
            int m = obj->n++;
            obj->key[m] = key;
            obj->col[m] = (int)kat + 1;
            jp_ws(&p);
            if (p.i >= n || s[p.i] != ':') {
                jp_fail(&p, p.i, "expected ':' after key '%s'", key);
                goto fail;
            }
            p.i++;
            jp_ws(&p);
            if (p.i < n && s[p.i] == '"') {
                if (jp_string(&p, &vb)) goto fail;
                obj->val[m] = bytes_take(&vb, &obj->val_n[m]);
            } else if (p.i + 4 <= n && memcmp(s + p.i, "null", 4) == 0) {
                p.i += 4;
            } else {
                jp_fail(&p, p.i, "the value of '%s' must be a string or null", key);
                goto fail;
            }
            jp_ws(&p);
            if (p.i < n && s[p.i] == ',') {
                p.i++;
                jp_ws(&p);
                if (p.i < n && s[p.i] == '}') {
                    jp_fail(&p, p.i, "trailing ',' before '}'");
                    goto fail;
                }
                continue;
            }
            if (p.i < n && s[p.i] == '}') {
                p.i++;
                break;
            }
            jp_fail(&p, p.i, "expected ',' or '}'");
            goto fail;
        }
    }
    jp_ws(&p);
    if (p.i < n) {
        jp_fail(&p, p.i, "unexpected text after the object");
        goto fail;
    }
    return 0;
fail:
    free(kb.buf);
    free(vb.buf);
    data_json_obj_free(obj);
    return -1;
}

// ---------------------------------------------------------------------------------------
// CSV (RFC 4180): fields separated by ',', records by CRLF or LF; a field in double quotes
// may hold ',', line breaks and "" (one quote). A completely empty line is skipped.
void data_csv_row_free(data_csv_row *r) {
    for (int k = 0; k < r->n; k++) free(r->cell[k]);
    free(r->cell);
    free(r->cell_n);
    memset(r, 0, sizeof(*r));
}

static void row_push(data_csv_row *r, bytes *b, int *cap) {
    if (r->n == *cap) {
        *cap = *cap ? 2 * *cap : 8;
        r->cell = realloc(r->cell, sizeof(char *) * (size_t)*cap);
        r->cell_n = realloc(r->cell_n, sizeof(size_t) * (size_t)*cap);
        MM_CHECK(r->cell && r->cell_n, "out of memory reading the manifest");
    }
    r->cell[r->n] = bytes_take(b, &r->cell_n[r->n]);
    r->n++;
}

int data_csv_next(const char *buf, size_t n, size_t *pos, int *line, data_csv_row *row,
                  int *err_line, int *err_col, mm_err *err) {
    memset(row, 0, sizeof(*row));
    size_t i = *pos;
    // skip empty lines
    while (i < n && (buf[i] == '\n' || (buf[i] == '\r' && i + 1 < n && buf[i + 1] == '\n'))) {
        i += buf[i] == '\r' ? 2 : 1;
        (*line)++;
    }
    if (i >= n) {
        *pos = n;
        return 0;
    }
    size_t line_start = i;  // for columns
    int ln = *line, cap = 0;
    row->line = *line;
    bytes cell = {0};
    for (;;) {
        // one field
        if (i < n && buf[i] == '"') {
            size_t q_at = i, q_line_start = line_start;
            int q_line = ln;
            i++;
            for (;;) {
                if (i >= n) {
                    *err_line = q_line, *err_col = (int)(q_at - q_line_start) + 1;
                    mm_fail(err, "quoted field is not closed before the end of the file");
                    goto fail;
                }
                if (buf[i] == '"') {
                    if (i + 1 < n && buf[i + 1] == '"') {
                        bytes_put(&cell, "\"", 1);
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                if (buf[i] == '\n') ln++, line_start = i + 1;
                bytes_put(&cell, buf + i, 1);
                i++;
            }
            if (i < n && buf[i] != ',' && buf[i] != '\n' &&
                !(buf[i] == '\r' && i + 1 < n && buf[i + 1] == '\n')) {
                *err_line = ln, *err_col = (int)(i - line_start) + 1;
                mm_fail(err, "unexpected character after a closing quote (expected ',' or the "
                             "end of the line)");
                goto fail;
            }
        } else {
            while (i < n && buf[i] != ',' && buf[i] != '\n' &&
                   !(buf[i] == '\r' && i + 1 < n && buf[i + 1] == '\n')) {
                if (buf[i] == '"') {
                    *err_line = ln, *err_col = (int)(i - line_start) + 1;
                    mm_fail(err, "'\"' inside an unquoted field (quote the whole field and "
                                 "double the quote)");
                    goto fail;
                }
                bytes_put(&cell, buf + i, 1);
                i++;
            }
        }
        row_push(row, &cell, &cap);
        if (i < n && buf[i] == ',') {
            i++;
            continue;
        }
        // end of record
        if (i < n) i += buf[i] == '\r' ? 2 : 1;
        *pos = i;
        *line = ln + 1;
        return 1;
    }
fail:
    free(cell.buf);
    data_csv_row_free(row);
    // resynchronize at the next line break so the caller may go on with the next record
    while (i < n && buf[i] != '\n') i++;
    if (i < n) i++;
    *pos = i;
    *line = ln + 1;
    return -1;
}

// ---------------------------------------------------------------------------------------
// Manifest.
static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    if (a < b) return 0;
    for (size_t k = 0; k < b; k++) {
        char c = s[a - b + k];
        if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
        if (c != suffix[k]) return 0;
    }
    return 1;
}

// The names a field answers to when no option maps it: the project's own, then the common
// one of Hugging Face folders (imagefolder's file_name, the `text` column of captions).
static const char *const default_names[DATA_MF_N][2] = {
    {"image", "file_name"}, {"audio", NULL}, {"caption", "text"}, {"caption_file", NULL}};
static const char *const field_what[DATA_MF_N] = {"image", "audio", "caption", "caption file"};
const char *const data_manifest_key_opts[DATA_MF_N] = {"--image-key", "--audio-key",
                                                       "--caption-key", "--caption-file-key"};
enum { KEY_UNKNOWN = -1, KEY_IGNORED = DATA_MF_N };

static const char *explicit_key(const data_manifest_keys *k, int f) {
    return k && k->key[f] && k->key[f][0] ? k->key[f] : NULL;
}

// Whether name is an item of the comma-separated list (NULL: an empty list).
static int in_list(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && memcmp(p, name, n) == 0) return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

// The field a key gives, KEY_IGNORED, or KEY_UNKNOWN.
static int key_field(const data_manifest_keys *k, const char *name) {
    for (int f = 0; f < DATA_MF_N; f++)
        if (explicit_key(k, f) && strcmp(name, k->key[f]) == 0) return f;
    if (k && in_list(k->ignore, name)) return KEY_IGNORED;
    for (int f = 0; f < DATA_MF_N; f++)
        for (int j = 0; j < 2 && !explicit_key(k, f); j++)
            if (default_names[f][j] && strcmp(name, default_names[f][j]) == 0) return f;
    return KEY_UNKNOWN;
}

// "image|file_name, audio, caption|text, caption_file" under the map k, for messages.
static void known_keys(const data_manifest_keys *k, char *out, size_t cap) {
    size_t at = 0;
    out[0] = '\0';
    for (int f = 0; f < DATA_MF_N && at < cap; f++) {
        at += (size_t)snprintf(out + at, cap - at, "%s", f ? ", " : "");
        if (at >= cap) break;
        if (explicit_key(k, f))
            at += (size_t)snprintf(out + at, cap - at, "%s", k->key[f]);
        else
            at += (size_t)snprintf(out + at, cap - at, "%s%s%s", default_names[f][0],
                                   default_names[f][1] ? "|" : "",
                                   default_names[f][1] ? default_names[f][1] : "");
    }
}

int data_manifest_keys_check(const data_manifest_keys *k, mm_err *err) {
    for (int f = 0; f < DATA_MF_N; f++) {
        if (k->key[f] && !k->key[f][0])
            return mm_fail(err, "%s: the key name is empty", data_manifest_key_opts[f]);
        if (!explicit_key(k, f)) continue;
        for (int g = 0; g < f; g++)
            if (explicit_key(k, g) && strcmp(k->key[f], k->key[g]) == 0)
                return mm_fail(err, "%s and %s both name the key '%s'", data_manifest_key_opts[g],
                               data_manifest_key_opts[f], k->key[f]);
        if (in_list(k->ignore, k->key[f]))
            return mm_fail(err, "'%s' is given by %s and ignored by --ignore-keys", k->key[f],
                           data_manifest_key_opts[f]);
    }
    return 0;
}

// Relative paths resolve against the manifest's folder (dir; "" when the manifest has none).
static char *resolve(const char *dir, const char *p) {
    size_t a = strlen(dir), b = strlen(p);
    if (p[0] == '/' || a == 0) return strdup(p);
    char *out = mm_malloc(a + b + 2);
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + 1, p, b + 1);
    return out;
}

static data_manifest_rec *add_rec(data_manifest *m, int *cap, int line) {
    if (m->n == *cap) {
        *cap = *cap ? 2 * *cap : 256;
        data_manifest_rec *nr = realloc(m->rec, sizeof(*nr) * (size_t)*cap);
        MM_CHECK(nr, "out of memory reading the manifest");
        m->rec = nr;
    }
    data_manifest_rec *r = &m->rec[m->n++];
    memset(r, 0, sizeof(*r));
    r->line = line;
    return r;
}

static void rec_error(data_manifest_rec *r, int col, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rec_error(data_manifest_rec *r, int col, const char *fmt, ...) {
    char why[MM_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    for (int f = 0; f < DATA_MF_N; f++) free(r->field[f]), r->field[f] = NULL;
    r->caption_n = 0;
    r->file_name = 0;
    free(r->error);
    r->error = strdup(why);
    MM_CHECK(r->error, "out of memory");
    r->col = col;
}

// Stores value v (n bytes) of field f; empty values count as absent.
static void rec_set(data_manifest_rec *r, const char *dir, int f, const char *v, size_t n) {
    if (!v || n == 0) return;
    if (f == DATA_MF_CAPTION) {
        r->field[f] = mm_malloc(n + 1);
        memcpy(r->field[f], v, n);
        r->field[f][n] = '\0';
        r->caption_n = n;
    } else {
        r->field[f] = resolve(dir, v);
        MM_CHECK(r->field[f], "out of memory");
    }
}

// Field combinations that cannot mean one sample.
static int rec_check(data_manifest_rec *r) {
    if (r->field[DATA_MF_CAPTION] && r->field[DATA_MF_CAPTION_FILE]) {
        rec_error(r, 1, "both 'caption' and 'caption_file' are given (use one)");
        return -1;
    }
    return 0;
}

// A record that gives one field under two keys ("image" and "file_name").
static void twice_error(data_manifest_rec *r, int col, int f, const char *a, const char *b) {
    rec_error(r, col, "keys '%s' and '%s' both give the %s (keep one, or choose with %s)", a, b,
              field_what[f], data_manifest_key_opts[f]);
}

// Hugging Face folders name every sample's file with file_name: once some record does, one
// without it is a mistake (a caption-only sample is not what the row meant).
static void require_file_name(data_manifest *m) {
    int used = 0;
    for (int i = 0; i < m->n; i++) used |= m->rec[i].file_name;
    for (int i = 0; i < m->n && used; i++)
        if (!m->rec[i].error && !m->rec[i].file_name)
            rec_error(&m->rec[i], 1,
                      "'file_name' is missing or empty (the other records name their file "
                      "with it)");
}

static int read_jsonl(data_manifest *m, const data_manifest_keys *km, const char *dir,
                      const char *buf, size_t n, mm_err *err) {
    int cap = 0, line = 0, parsed = 0, used[DATA_MF_N] = {0};
    size_t i = 0;
    if (n >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) i = 3;  // a BOM some editors write
    while (i < n) {
        line++;
        size_t end = i;
        while (end < n && buf[end] != '\n') end++;
        size_t len = end - i;
        if (len > 0 && buf[i + len - 1] == '\r') len--;
        const char *s = buf + i;
        size_t k = 0;
        while (k < len && (s[k] == ' ' || s[k] == '\t')) k++;
        i = end + 1;
        if (k == len) continue;  // blank line
        data_manifest_rec *r = add_rec(m, &cap, line);
        data_json_obj o;
        int col;
        mm_err e;
        if (data_json_parse_line(s, len, &o, &col, &e)) {
            rec_error(r, col, "%s", e.msg);
            continue;
        }
        parsed++;
        int from[DATA_MF_N];  // the member that gave each field
        for (int f = 0; f < DATA_MF_N; f++) from[f] = -1;
        for (int j = 0; j < o.n && !r->error; j++) {
            int f = key_field(km, o.key[j]);
            if (f == KEY_IGNORED) continue;
            if (f == KEY_UNKNOWN) {
                char known[200];
                known_keys(km, known, sizeof(known));
                rec_error(r, o.col[j],
                          "unknown key '%s' (known: %s; map a key with --image-key, --audio-key, "
                          "--caption-key, or leave it out with --ignore-keys)",
                          o.key[j], known);
            } else if (from[f] >= 0) {
                twice_error(r, o.col[j], f, o.key[from[f]], o.key[j]);
            } else {
                from[f] = j;
                used[f] = 1;
                rec_set(r, dir, f, o.val[j], o.val_n[j]);
                if (strcmp(o.key[j], "file_name") == 0 && r->field[f]) r->file_name = 1;
            }
        }
        if (!r->error) rec_check(r);
        data_json_obj_free(&o);
    }
    for (int f = 0; f < DATA_MF_N && parsed; f++)
        if (explicit_key(km, f) && !used[f])
            return mm_fail(err, "%s: no record has the key '%s' (given by %s)", m->path, km->key[f],
                           data_manifest_key_opts[f]);
    return 0;
}

static int read_csv(data_manifest *m, const data_manifest_keys *km, const char *dir,
                    const char *buf, size_t n, mm_err *err) {
    size_t pos = 0;
    int line = 1, cap = 0, eline, ecol;
    if (n >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) pos = 3;
    data_csv_row head;
    mm_err e;
    int rc = data_csv_next(buf, n, &pos, &line, &head, &eline, &ecol, &e);
    if (rc < 0) return mm_fail(err, "%s:%d:%d: header: %s", m->path, eline, ecol, e.msg);
    if (rc == 0) return mm_fail(err, "%s: the file is empty (expected a header row)", m->path);
    int col_field[64];
    if (head.n > 64) {
        data_csv_row_free(&head);
        return mm_fail(err, "%s:%d: header: more than 64 columns", m->path, head.line);
    }
    for (int f = 0; f < DATA_MF_N; f++) {  // a mapped column that is not there, first
        int found = !explicit_key(km, f);
        for (int c = 0; c < head.n && !found; c++) found = !strcmp(head.cell[c], km->key[f]);
        if (found) continue;
        rc = mm_fail(err, "%s:%d: header: no column '%s' (given by %s)", m->path, head.line,
                     km->key[f], data_manifest_key_opts[f]);
        data_csv_row_free(&head);
        return rc;
    }
    int seen[DATA_MF_N], fn_col = -1;  // seen: the column giving each field
    for (int f = 0; f < DATA_MF_N; f++) seen[f] = -1;
    for (int c = 0; c < head.n; c++) {
        int f = key_field(km, head.cell[c]);
        col_field[c] = f;
        if (f == KEY_IGNORED) continue;
        if (f == KEY_UNKNOWN) {
            char known[200];
            known_keys(km, known, sizeof(known));
            rc = mm_fail(err,
                         "%s:%d: header: column %d '%.60s' is unknown (known: %s; map a column "
                         "with --image-key, --audio-key, --caption-key, or leave it out with "
                         "--ignore-keys)",
                         m->path, head.line, c + 1, head.cell[c], known);
        } else if (seen[f] >= 0 && strcmp(head.cell[seen[f]], head.cell[c]) == 0) {
            rc = mm_fail(err, "%s:%d: header: column %d '%.60s' is repeated", m->path, head.line,
                         c + 1, head.cell[c]);
        } else if (seen[f] >= 0) {
            rc = mm_fail(err,
                         "%s:%d: header: columns '%.60s' and '%.60s' both give the %s (keep one, "
                         "or choose with %s)",
                         m->path, head.line, head.cell[seen[f]], head.cell[c], field_what[f],
                         data_manifest_key_opts[f]);
        } else {
            seen[f] = c;
            if (strcmp(head.cell[c], "file_name") == 0) fn_col = c;
            continue;
        }
        data_csv_row_free(&head);
        return rc;
    }
    int n_cols = head.n;
    data_csv_row_free(&head);
    for (;;) {
        data_csv_row row;
        rc = data_csv_next(buf, n, &pos, &line, &row, &eline, &ecol, &e);
        if (rc == 0) break;
        if (rc < 0) {
            // reported at the line of the bad character (inside a multi-line record)
            data_manifest_rec *r = add_rec(m, &cap, eline);
            rec_error(r, ecol, "%s", e.msg);
            continue;
        }
        data_manifest_rec *r = add_rec(m, &cap, row.line);
        if (row.n != n_cols) {
            rec_error(r, 1, "the row has %d fields, the header has %d", row.n, n_cols);
        } else {
            for (int c = 0; c < n_cols && !r->error; c++) {
                int f = col_field[c];
                if (f == KEY_IGNORED) continue;
                if (f != DATA_MF_CAPTION && strlen(row.cell[c]) != row.cell_n[c])
                    rec_error(r, 1, "column '%s' holds a NUL byte", data_manifest_fields[f]);
                else
                    rec_set(r, dir, f, row.cell[c], row.cell_n[c]);
                if (c == fn_col && r->field[f]) r->file_name = 1;
            }
            if (!r->error) rec_check(r);
        }
        data_csv_row_free(&row);
    }
    return 0;
}

int data_manifest_read(const char *path, const data_manifest_keys *keys, data_manifest *m,
                       mm_err *err) {
    memset(m, 0, sizeof(*m));
    int csv = ends_with(path, ".csv");
    if (!csv && !ends_with(path, ".jsonl"))
        return mm_fail(err, "%s: unknown manifest type (the name must end in .jsonl or .csv)",
                       path);
    char *buf;
    size_t n;
    if (mm_read_file(path, &buf, &n, err)) return -1;
    m->path = strdup(path);
    MM_CHECK(m->path, "out of memory");
    const char *slash = strrchr(path, '/');
    char *dir = mm_calloc(slash ? (size_t)(slash - path) + 2 : 1, 1);
    if (slash) memcpy(dir, path, slash == path ? 1 : (size_t)(slash - path));
    int rc = 0;
    if (csv)
        rc = read_csv(m, keys, dir, buf, n, err);
    else
        rc = read_jsonl(m, keys, dir, buf, n, err);
    if (rc == 0) require_file_name(m);
    free(dir);
    free(buf);
    if (rc) {
        data_manifest_free(m);
        return -1;
    }
    return 0;
}

void data_manifest_free(data_manifest *m) {
    for (int i = 0; i < m->n; i++) {
        for (int f = 0; f < DATA_MF_N; f++) free(m->rec[i].field[f]);
        free(m->rec[i].error);
    }
    free(m->rec);
    free(m->path);
    memset(m, 0, sizeof(*m));
}
