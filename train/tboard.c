// tboard.c: TensorBoard event files (tboard.h): the few protobuf fields an Event needs,
// encoded by hand, in TFRecord framing. Hand-encoding keeps the project free of a protobuf
// dependency for the handful of messages used; tests/tensorboard.sh reads the result back with
// the tensorboard package's own reader, which is the check that the encoding is right.
#include "tboard.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------
// CRC-32C, bit by bit: no table, so no table to build at start (and no mutable global to
// hold it); the data is a few hundred bytes a step and a sample grid now and then.

uint32_t tb_crc32c(const void *p, size_t n) {
    const uint8_t *b = p;
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= b[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

// TFRecord stores CRCs masked, so that a CRC of data that itself holds CRCs stays strong.
static uint32_t masked_crc(const void *p, size_t n) {
    const uint32_t c = tb_crc32c(p, n);
    return ((c >> 15) | (c << 17)) + 0xA282EAD8u;
}

// ---------------------------------------------------------------------------------------
// Protobuf encoding into a growing buffer (owned by its user: free(b.p)).

typedef struct {
    uint8_t *p;
    size_t n, cap;
} pb_buf;

enum { WIRE_VARINT = 0, WIRE_I64 = 1, WIRE_LEN = 2, WIRE_I32 = 5 };

static void pb_raw(pb_buf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n) cap *= 2;
        uint8_t *q = realloc(b->p, cap);
        MM_CHECK(q, "tboard: out of memory (%zu bytes)", cap);
        b->p = q, b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void pb_varint(pb_buf *b, uint64_t v) {
    uint8_t out[10];
    int k = 0;
    do {
        out[k] = (uint8_t)(v & 0x7F);
        v >>= 7;
        if (v) out[k] |= 0x80;
        k++;
    } while (v);
    pb_raw(b, out, (size_t)k);
}

static void pb_key(pb_buf *b, int field, int wire) {
    pb_varint(b, (uint64_t)field << 3 | wire);
}

static void pb_bytes(pb_buf *b, int field, const void *p, size_t n) {
    pb_key(b, field, WIRE_LEN);
    pb_varint(b, n);
    pb_raw(b, p, n);
}

static void pb_str(pb_buf *b, int field, const char *s) {
    pb_bytes(b, field, s, strlen(s));
}

// A nested message: its bytes, then freed.
static void pb_msg(pb_buf *b, int field, pb_buf *m) {
    pb_bytes(b, field, m->p, m->n);
    free(m->p);
    *m = (pb_buf){0};
}

static void pb_int(pb_buf *b, int field, int64_t v) {
    pb_key(b, field, WIRE_VARINT);
    pb_varint(b, (uint64_t)v);  // int32/int64: two's complement, as protobuf does
}

// Protobuf's fixed-width fields are little-endian; so is every machine this builds for, which
// the MM_CHECK in tb_open confirms once.
static void pb_float(pb_buf *b, int field, float v) {
    pb_key(b, field, WIRE_I32);
    pb_raw(b, &v, 4);
}

static void pb_double(pb_buf *b, int field, double v) {
    pb_key(b, field, WIRE_I64);
    pb_raw(b, &v, 8);
}

// ---------------------------------------------------------------------------------------
// Records and events.

static double wall_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int write_record(tb_writer *w, const pb_buf *data) {
    uint8_t head[12];
    const uint64_t len = data->n;
    memcpy(head, &len, 8);
    const uint32_t hc = masked_crc(head, 8), dc = masked_crc(data->p, data->n);
    memcpy(head + 8, &hc, 4);
    errno = 0;
    if (fwrite(head, 1, 12, w->f) != 12 || fwrite(data->p, 1, data->n, w->f) != data->n ||
        fwrite(&dc, 1, 4, w->f) != 4 || fflush(w->f) != 0 || ferror(w->f)) {
        if (!errno) errno = EIO;
        return -1;
    }
    return 0;
}

// An Event {wall_time, step, summary} around the Summary values in vals (freed).
static int write_summary(tb_writer *w, int64_t step, pb_buf *vals) {
    pb_buf ev = {0};
    pb_double(&ev, 1, wall_time());
    pb_int(&ev, 2, step);
    pb_msg(&ev, 5, vals);
    int rc = write_record(w, &ev);
    free(ev.p);
    return rc;
}

int tb_image_png(tb_writer *w, const char *tag, int64_t step, const void *png, size_t n, int h,
                 int width, int c) {
    MM_CHECK(c == 1 || c == 3 || c == 4, "tb_image_png: %d channels", c);
    pb_buf img = {0}, val = {0}, sum = {0};
    pb_int(&img, 1, h);
    pb_int(&img, 2, width);
    pb_int(&img, 3, c);  // colorspace: 1 grey, 3 RGB, 4 RGBA, as the channel count
    pb_bytes(&img, 4, png, n);
    pb_str(&val, 1, tag);
    pb_msg(&val, 4, &img);
    pb_msg(&sum, 1, &val);
    return write_summary(w, step, &sum);
}

int tb_text(tb_writer *w, const char *tag, int64_t step, const char *text) {
    pb_buf plugin = {0}, meta = {0}, tensor = {0}, val = {0}, sum = {0}, shape = {0};
    pb_str(&plugin, 1, "text");
    pb_msg(&meta, 1, &plugin);
    pb_int(&tensor, 1, 7);       // DT_STRING
    pb_msg(&tensor, 2, &shape);  // no dimensions: a scalar
    pb_str(&tensor, 8, text);
    pb_str(&val, 1, tag);
    pb_msg(&val, 9, &meta);
    pb_msg(&val, 8, &tensor);
    pb_msg(&sum, 1, &val);
    return write_summary(w, step, &sum);
}

// metrics.jsonl lines are ours (see tboard.h), so the parser knows their one shape: keys
// without escapes, values that are numbers or null.
int tb_metrics_line(tb_writer *w, const char *line, size_t n) {
    char *s = mm_malloc(n + 1);  // strtod needs a terminated string
    memcpy(s, line, n);
    s[n] = '\0';
    pb_buf sum = {0};
    int64_t step = -1;
    char *p = s;
    MM_CHECK(*p == '{', "tb_metrics_line: not an object: %.80s", s);
    p++;
    while (*p == '"') {
        char *key = p + 1, *end = strchr(key, '"');
        MM_CHECK(end && end[1] == ':', "tb_metrics_line: bad key at '%.20s'", key);
        *end = '\0';
        p = end + 2;
        if (strncmp(p, "null", 4) == 0) {
            p += 4;
        } else if (strcmp(key, "step") == 0) {
            step = strtoll(p, &end, 10);
            MM_CHECK(end != p, "tb_metrics_line: bad step after %s", key);
            p = end;
        } else {
            const double v = strtod(p, &end);
            MM_CHECK(end != p, "tb_metrics_line: bad value of %s", key);
            p = end;
            pb_buf val = {0};
            pb_str(&val, 1, key);
            pb_float(&val, 2, (float)v);
            pb_msg(&sum, 1, &val);
        }
        if (*p == ',') p++;
    }
    MM_CHECK(*p == '}' && step >= 0, "tb_metrics_line: bad line (step %lld, at '%.20s')",
             (long long)step, p);
    free(s);
    return write_summary(w, step, &sum);
}

// ---------------------------------------------------------------------------------------
// Opening, and the cut-back on resume.

static uint64_t get_varint(const uint8_t **p, const uint8_t *end, int *ok) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *p < end; shift += 7) {
        const uint8_t c = *(*p)++;
        v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) return v;
    }
    *ok = 0;
    return 0;
}

// The step of an Event (0 when it has none, as file_version's); 0 in *ok when the bytes are
// not a protobuf message.
static int64_t event_step(const uint8_t *p, size_t n, int *ok) {
    const uint8_t *end = p + n;
    int64_t step = 0;
    while (*ok && p < end) {
        const uint64_t key = get_varint(&p, end, ok);
        uint64_t skip = 0;
        switch (key & 7) {
            case WIRE_VARINT: {
                const uint64_t v = get_varint(&p, end, ok);
                if (key >> 3 == 2) step = (int64_t)v;
                break;
            }
            case WIRE_I64:
                skip = 8;
                break;
            case WIRE_LEN:
                skip = get_varint(&p, end, ok);
                break;
            case WIRE_I32:
                skip = 4;
                break;
            default:
                *ok = 0;
        }
        if (skip > (uint64_t)(end - p))
            *ok = 0;
        else
            p += skip;
    }
    return step;
}

// Rewrites path keeping the records of steps <= keep_step, up to the first record that is
// cut short or fails its CRC (where a kill stopped a write: nothing after it was committed).
static int cut_back(const char *path, int64_t keep_step, mm_err *err) {
    char *text = NULL;
    size_t n = 0;
    if (mm_read_file(path, &text, &n, err) != 0) return -1;
    const uint8_t *b = (const uint8_t *)text;
    uint8_t *out = mm_malloc(n + 1);
    size_t at = 0, o = 0;
    while (n - at >= 12) {
        uint64_t len;
        uint32_t hc, dc;
        memcpy(&len, b + at, 8);
        memcpy(&hc, b + at + 8, 4);
        if (hc != masked_crc(b + at, 8) || n - at < 16 || len > n - at - 16) break;
        const uint8_t *data = b + at + 12;
        memcpy(&dc, data + len, 4);
        int ok = dc == masked_crc(data, (size_t)len);
        const int64_t step = ok ? event_step(data, (size_t)len, &ok) : 0;
        if (!ok) break;
        const size_t rec = 16 + (size_t)len;
        if (step <= keep_step) {
            memcpy(out + o, b + at, rec);
            o += rec;
        }
        at += rec;
    }
    const int rc = o == n ? 0 : mm_write_file_atomic(path, out, o, err);
    free(out);
    free(text);
    return rc;
}

int tb_open(tb_writer *w, const char *dir, int64_t keep_step, mm_err *err) {
    const uint32_t one = 1;
    MM_CHECK(*(const uint8_t *)&one == 1, "tboard: event files are written little-endian only");
    memset(w, 0, sizeof(*w));
    if (mm_mkdirs(dir, err) != 0) return -1;
    DIR *d = opendir(dir);
    if (!d) return mm_fail(err, "%s: cannot list: %s", dir, strerror(errno));
    char newest[256] = "";
    for (struct dirent *e; (e = readdir(d));) {
        if (!strstr(e->d_name, "tfevents")) continue;
        if (snprintf(w->path, sizeof(w->path), "%s/%s", dir, e->d_name) >= (int)sizeof(w->path))
            continue;
        struct stat st;
        if (stat(w->path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (cut_back(w->path, keep_step, err) != 0) {
            closedir(d);
            return -1;
        }
        if (strcmp(e->d_name, newest) > 0) snprintf(newest, sizeof(newest), "%s", e->d_name);
    }
    closedir(d);
    if (!newest[0]) {
        char host[64] = "localhost";
        gethostname(host, sizeof(host) - 1);
        snprintf(newest, sizeof(newest), "events.out.tfevents.%lld.%s", (long long)time(NULL),
                 host);
    }
    snprintf(w->path, sizeof(w->path), "%s/%s", dir, newest);
    w->f = fopen(w->path, "ab");
    if (!w->f) return mm_fail(err, "%s: cannot write: %s", w->path, strerror(errno));
    struct stat st;
    int rc = fstat(fileno(w->f), &st);
    w->created = rc == 0 && st.st_size == 0;  // new, or cut back to nothing
    if (w->created) {
        pb_buf ev = {0};
        pb_double(&ev, 1, wall_time());
        pb_str(&ev, 3, "brain.Event:2");
        rc = write_record(w, &ev);
        free(ev.p);
    }
    if (rc != 0) {
        mm_fail(err, "%s: cannot write: %s", w->path, strerror(errno));
        tb_close(w);
        return -1;
    }
    return 0;
}

int tb_close(tb_writer *w) {
    if (!w->f) return 0;
    const int rc = fclose(w->f);
    w->f = NULL;
    return rc == 0 ? 0 : -1;
}
