// index.c: a dataset's table of contents, dir/index.json (data/FORMAT.md). It is the one
// place a reader learns which shard files exist, how many samples each holds and what their
// bytes must checksum to, so it is parsed strictly: a typo, a missing key or an unknown key
// is an error with file:line:column, never a silently different dataset.
//
// The file is JSON written by hand (it is tiny and flat) and read back with libyaml, whose
// flow syntax is a superset of JSON; the checks below restrict it to what we write.
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>
#include <zlib.h>

#include "data.h"
#include "data_internal.h"

#define INDEX_FORMAT "mmtrain-dataset"
#define INDEX_VERSION 1

int data_schema_check(const data_schema *s, const char *where, mm_err *err) {
    if (s->img_h < 1 || s->img_h > 16384 || s->img_w < 1 || s->img_w > 16384 || s->img_c < 1 ||
        s->img_c > 16)
        return mm_fail(err,
                       "%s: image shape %dx%dx%d is out of range (1..16384 x 1..16384 x 1..16)",
                       where, s->img_h, s->img_w, s->img_c);
    if ((int64_t)s->img_h * s->img_w * s->img_c > (1 << 28))
        return mm_fail(err, "%s: image of %dx%dx%d bytes is too large", where, s->img_h, s->img_w,
                       s->img_c);
    if (s->audio_rate < 1 || s->audio_rate > 1000000)
        return mm_fail(err, "%s: audio_rate %d is out of range 1..1000000", where, s->audio_rate);
    if (s->audio_len < 64 || s->audio_len > (1 << 26))
        return mm_fail(err, "%s: audio_len %d is out of range 64..%d", where, s->audio_len,
                       1 << 26);
    if (s->text_max < 1 || s->text_max > (1 << 20))
        return mm_fail(err, "%s: text_max %d is out of range 1..%d", where, s->text_max, 1 << 20);
    if (strcmp(s->tokenizer, DATA_TOKENIZER_NAME) != 0)
        return mm_fail(err, "%s: tokenizer '%.31s' is not supported (this build knows '%s')", where,
                       s->tokenizer, DATA_TOKENIZER_NAME);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Writing (the index is a few hundred bytes per shard, built in a data_strbuf).
void data_sb_printf(data_strbuf *sb, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(sb->buf + sb->n, sb->cap - sb->n, fmt, ap);
        va_end(ap);
        MM_CHECK(k >= 0, "vsnprintf failed");
        if ((size_t)k < sb->cap - sb->n) {
            sb->n += (size_t)k;
            return;
        }
        sb->cap = 2 * sb->cap + (size_t)k + 1;
        char *nb = realloc(sb->buf, sb->cap);
        MM_CHECK(nb, "out of memory");
        sb->buf = nb;
    }
}

int data_index_write(const char *dir, const data_index *ix, mm_err *err) {
    const data_schema *s = &ix->schema;
    data_strbuf sb = {mm_malloc(4096), 0, 4096};
    sb.buf[0] = '\0';
    // File names and the tokenizer are plain ASCII without quotes (the writer makes the
    // names; data_schema_check pins the tokenizer), so no JSON escaping is needed.
    data_sb_printf(&sb, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n", INDEX_FORMAT, INDEX_VERSION);
    data_sb_printf(&sb,
              "  \"schema\": {\"n_samples\": %llu, \"img_h\": %d, \"img_w\": %d, \"img_c\": %d, "
              "\"audio_rate\": %d, \"audio_len\": %d, \"text_max\": %d, \"tokenizer\": \"%s\"},\n",
              (unsigned long long)s->n_samples, s->img_h, s->img_w, s->img_c, s->audio_rate,
              s->audio_len, s->text_max, s->tokenizer);
    data_sb_printf(&sb, "  \"shards\": [\n");
    for (int i = 0; i < ix->n_shards; i++) {
        const data_shard_info *sh = &ix->shards[i];
        data_sb_printf(
            &sb, "    {\"file\": \"%s\", \"n_samples\": %llu, \"first\": %llu, \"crc32\": %lu}%s\n",
            sh->file, (unsigned long long)sh->n, (unsigned long long)sh->first,
            (unsigned long)sh->crc32, i + 1 < ix->n_shards ? "," : "");
    }
    data_sb_printf(&sb, "  ]\n}\n");
    char path[4200];
    snprintf(path, sizeof(path), "%s/index.json", dir);
    int rc = mm_write_file_atomic(path, sb.buf, sb.n, err);
    free(sb.buf);
    return rc;
}

// ---------------------------------------------------------------------------------------
// Reading.
typedef struct {
    yaml_document_t *doc;
    const char *path;
    mm_err *err;
} ictx;

// One error line: "dir/index.json:LINE:COL: key 'k': reason".
static int node_fail(ictx *c, const yaml_node_t *n, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int node_fail(ictx *c, const yaml_node_t *n, const char *key, const char *fmt, ...) {
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    return mm_fail(c->err, "%s:%lu:%lu: key '%s': %s", c->path,
                   (unsigned long)n->start_mark.line + 1, (unsigned long)n->start_mark.column + 1,
                   key, why);
}

// Looks up exactly the keys in names (each must appear once; nothing else may appear) in a
// mapping node and stores their value nodes in out. where names the mapping in errors.
static int map_fields(ictx *c, yaml_node_t *map, const char *where, const char *const *names,
                      int n_names, yaml_node_t **out) {
    if (map->type != YAML_MAPPING_NODE)
        return node_fail(c, map, where, "expected an object { ... }");
    for (int i = 0; i < n_names; i++) out[i] = NULL;
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(c->doc, p->value);
        if (k->type != YAML_SCALAR_NODE) return node_fail(c, k, where, "keys must be strings");
        const char *ks = (const char *)k->data.scalar.value;
        int hit = -1;
        for (int i = 0; i < n_names; i++)
            if (strcmp(ks, names[i]) == 0) hit = i;
        if (hit < 0) return node_fail(c, k, where, "unknown key '%.64s'", ks);
        if (out[hit]) return node_fail(c, k, where, "key '%s' appears twice", ks);
        out[hit] = v;
    }
    for (int i = 0; i < n_names; i++)
        if (!out[i]) return node_fail(c, map, where, "missing key '%s'", names[i]);
    return 0;
}

// A JSON number: a plain scalar of decimal digits that fits in [0, max].
static int get_uint(ictx *c, yaml_node_t *n, const char *key, uint64_t max, uint64_t *out) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return node_fail(c, n, key, "expected a non-negative integer");
    const char *s = (const char *)n->data.scalar.value;
    uint64_t v = 0;
    if (!*s) return node_fail(c, n, key, "expected a non-negative integer");
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > (UINT64_MAX - 9) / 10)
            return node_fail(c, n, key, "expected a non-negative integer, got '%.64s'", s);
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v > max)
        return node_fail(c, n, key, "%llu is out of range 0..%llu", (unsigned long long)v,
                         (unsigned long long)max);
    *out = v;
    return 0;
}

static int get_int(ictx *c, yaml_node_t *n, const char *key, int *out) {
    uint64_t v;
    if (get_uint(c, n, key, INT32_MAX, &v)) return -1;
    *out = (int)v;
    return 0;
}

// A JSON string: a quoted scalar shorter than cap bytes.
static int get_str(ictx *c, yaml_node_t *n, const char *key, char *out, size_t cap) {
    if (n->type != YAML_SCALAR_NODE || (n->data.scalar.style != YAML_DOUBLE_QUOTED_SCALAR_STYLE &&
                                        n->data.scalar.style != YAML_SINGLE_QUOTED_SCALAR_STYLE))
        return node_fail(c, n, key, "expected a string \"...\"");
    if (n->data.scalar.length >= cap)
        return node_fail(c, n, key, "string longer than %zu bytes", cap - 1);
    memcpy(out, n->data.scalar.value, n->data.scalar.length);
    out[n->data.scalar.length] = '\0';
    return 0;
}

static int parse_index(ictx *c, yaml_node_t *root, data_index *ix) {
    static const char *const top_keys[] = {"format", "version", "schema", "shards"};
    static const char *const schema_keys[] = {"n_samples",  "img_h",     "img_w",    "img_c",
                                              "audio_rate", "audio_len", "text_max", "tokenizer"};
    static const char *const shard_keys[] = {"file", "n_samples", "first", "crc32"};
    yaml_node_t *top[4], *sc[8];
    if (map_fields(c, root, "(top level)", top_keys, 4, top)) return -1;
    char fmt[64];
    uint64_t version;
    if (get_str(c, top[0], "format", fmt, sizeof(fmt))) return -1;
    if (strcmp(fmt, INDEX_FORMAT) != 0)
        return node_fail(c, top[0], "format", "is '%s', expected '%s'", fmt, INDEX_FORMAT);
    if (get_uint(c, top[1], "version", UINT32_MAX, &version)) return -1;
    if (version != INDEX_VERSION)
        return node_fail(c, top[1], "version", "is %llu, this reader knows version %d",
                         (unsigned long long)version, INDEX_VERSION);

    if (map_fields(c, top[2], "schema", schema_keys, 8, sc)) return -1;
    data_schema *s = &ix->schema;
    if (get_uint(c, sc[0], "schema.n_samples", (uint64_t)1 << 48, &s->n_samples) ||
        get_int(c, sc[1], "schema.img_h", &s->img_h) ||
        get_int(c, sc[2], "schema.img_w", &s->img_w) ||
        get_int(c, sc[3], "schema.img_c", &s->img_c) ||
        get_int(c, sc[4], "schema.audio_rate", &s->audio_rate) ||
        get_int(c, sc[5], "schema.audio_len", &s->audio_len) ||
        get_int(c, sc[6], "schema.text_max", &s->text_max) ||
        get_str(c, sc[7], "schema.tokenizer", s->tokenizer, sizeof(s->tokenizer)))
        return -1;
    if (data_schema_check(s, c->path, c->err)) return -1;

    yaml_node_t *list = top[3];
    if (list->type != YAML_SEQUENCE_NODE)
        return node_fail(c, list, "shards", "expected a list [ ... ]");
    long n_shards = list->data.sequence.items.top - list->data.sequence.items.start;
    if (n_shards < 1) return node_fail(c, list, "shards", "the dataset has no shards");
    if (n_shards > 1000000) return node_fail(c, list, "shards", "too many shards (%ld)", n_shards);
    ix->shards = mm_calloc((size_t)n_shards, sizeof(data_shard_info));
    ix->n_shards = (int)n_shards;
    uint64_t total = 0;
    for (long i = 0; i < n_shards; i++) {
        yaml_node_t *item = yaml_document_get_node(c->doc, list->data.sequence.items.start[i]);
        yaml_node_t *f[4];
        char where[64];
        snprintf(where, sizeof(where), "shards[%ld]", i);
        if (map_fields(c, item, where, shard_keys, 4, f)) return -1;
        data_shard_info *sh = &ix->shards[i];
        uint64_t crc;
        char k_file[80], k_n[80], k_first[80], k_crc[80];
        snprintf(k_file, sizeof(k_file), "%s.file", where);
        snprintf(k_n, sizeof(k_n), "%s.n_samples", where);
        snprintf(k_first, sizeof(k_first), "%s.first", where);
        snprintf(k_crc, sizeof(k_crc), "%s.crc32", where);
        if (get_str(c, f[0], k_file, sh->file, sizeof(sh->file)) ||
            get_uint(c, f[1], k_n, (uint64_t)1 << 48, &sh->n) ||
            get_uint(c, f[2], k_first, (uint64_t)1 << 48, &sh->first) ||
            get_uint(c, f[3], k_crc, UINT32_MAX, &crc))
            return -1;
        sh->crc32 = (uint32_t)crc;
        // A shard name is a plain file inside the dataset directory: no path tricks.
        if (!sh->file[0] || strchr(sh->file, '/') || sh->file[0] == '.')
            return node_fail(c, f[0], k_file, "'%s' is not a plain file name", sh->file);
        for (long j = 0; j < i; j++)
            if (strcmp(ix->shards[j].file, sh->file) == 0)
                return node_fail(c, f[0], k_file, "'%s' is listed twice", sh->file);
        if (sh->n == 0) return node_fail(c, f[1], k_n, "a shard must hold at least one sample");
        if (sh->first != total)
            return node_fail(c, f[2], k_first,
                             "is %llu, but the shards before it hold %llu samples",
                             (unsigned long long)sh->first, (unsigned long long)total);
        total += sh->n;
    }
    if (total != s->n_samples)
        return node_fail(c, sc[0], "schema.n_samples", "is %llu, but the shards hold %llu samples",
                         (unsigned long long)s->n_samples, (unsigned long long)total);
    return 0;
}

int data_index_read(const char *dir, data_index *ix, mm_err *err) {
    char path[4200];
    snprintf(path, sizeof(path), "%s/index.json", dir);
    memset(ix, 0, sizeof(*ix));
    char *text = NULL;
    size_t n = 0;
    if (mm_read_file(path, &text, &n, err)) return -1;
    yaml_parser_t parser;
    yaml_document_t doc;
    int have_doc = 0, rc = -1;
    MM_CHECK(yaml_parser_initialize(&parser), "libyaml: cannot initialize a parser");
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, n);
    if (!yaml_parser_load(&parser, &doc)) {
        mm_fail(err, "%s:%lu:%lu: not valid JSON: %s", path,
                (unsigned long)parser.problem_mark.line + 1,
                (unsigned long)parser.problem_mark.column + 1,
                parser.problem ? parser.problem : "parse error");
        goto done;
    }
    have_doc = 1;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        mm_fail(err, "%s: empty file, expected a JSON object", path);
        goto done;
    }
    ictx c = {&doc, path, err};
    rc = parse_index(&c, root, ix);
done:
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(text);
    if (rc) data_index_free(ix);
    return rc;
}

void data_index_free(data_index *ix) {
    free(ix->shards);
    ix->shards = NULL;
    ix->n_shards = 0;
}

// ---------------------------------------------------------------------------------------
// Shard files: where they are and what they checksum to.
// Read in 1 MiB blocks: shards are far larger than is worth holding whole.
// Opened without blocking and refused unless a regular file: a FIFO would wait forever.
int data_file_crc32(const char *path, uint32_t *out, mm_err *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        if (errno == EACCES || errno == EPERM)
            return mm_fail(err, "%s: permission denied: this user may not read it", path);
        return mm_fail(err, "%s: cannot open: %s", path, strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return mm_fail(err, "%s: not a regular file", path);
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        return mm_fail(err, "%s: cannot open: %s", path, strerror(errno));
    }
    unsigned char *buf = mm_malloc(1 << 20);
    uLong crc = crc32(0L, Z_NULL, 0);
    size_t r;
    while ((r = fread(buf, 1, 1 << 20, f)) > 0) crc = crc32(crc, buf, (uInt)r);
    int bad = ferror(f);
    fclose(f);
    free(buf);
    if (bad) return mm_fail(err, "%s: read error while checksumming", path);
    *out = (uint32_t)crc;
    return 0;
}

int data_path_join(char *out, const char *dir, const char *name, mm_err *err) {
    int k = snprintf(out, DATA_PATH_CAP, "%s/%s", dir, name);
    if (k < 0 || k >= DATA_PATH_CAP) return mm_fail(err, "%s: path too long", dir);
    return 0;
}
