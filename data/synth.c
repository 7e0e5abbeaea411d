// synth.c: a paired image/audio/text set that a tiny model can learn in minutes on a laptop,
// so the demo shows learning and the tests have data without any download. Each sample is a
// tuple of four attributes (colour, shape, size, position); the image draws it, the audio
// encodes it, and the caption says it in one of several phrasings. Image alone and audio
// alone each determine all four attributes, so a model can caption from either modality.
//
//   image (default 32x32x3): dark noisy background; the shape filled in its colour (+-12 per
//       channel) at the position's centre (+-2 px at 32x32) with size radius 4-5 or 8-9 px.
//   audio (default 8 kHz, 4000 samples): 1-4 beeps (count = shape) at the colour's pitch,
//       short or long (= size: 23 or 62 ms), over a continuous low drone whose pitch is the
//       position, plus light noise.
//   caption: DATA_SYNTH_N_PHRASINGS templates, each naming every attribute with exactly one
//       word of its vocabulary; no vocabulary word occurs inside another word of a template.
//
// Everything is drawn from mm_rng(seed-derived, stream = sample index), so a sample depends
// only on (seed, split, index). data_synth_cfg.allow restricts attributes to some of their
// words (`mmdata synth --only colour=yellow,white`): a set distributed differently from the
// full one, for fine-tuning tests and demos.
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "data.h"
#include "data_internal.h"

enum { ATTR_COLOUR, ATTR_SHAPE, ATTR_SIZE, ATTR_POS };
enum { SHAPE_CIRCLE, SHAPE_SQUARE, SHAPE_TRIANGLE, SHAPE_CROSS };
enum { POS_LEFT, POS_RIGHT, POS_TOP, POS_BOTTOM };

const char *const data_synth_attr_names[DATA_N_ATTR] = {"colour", "shape", "size", "position"};
const int data_synth_vocab_n[DATA_N_ATTR] = {6, 4, 2, 4};
const char *const data_synth_vocab[DATA_N_ATTR][DATA_SYNTH_MAX_WORDS] = {
    {"red", "green", "blue", "yellow", "purple", "white"},
    {"circle", "square", "triangle", "cross"},
    {"small", "large"},
    {"left", "right", "top", "bottom"},
};

// RGB per colour: saturated and bright, far from the dark background and from each other.
static const uint8_t colour_rgb[6][3] = {
    {225, 40, 40}, {40, 200, 60}, {50, 90, 240}, {235, 220, 40}, {165, 60, 215}, {235, 235, 235},
};
// Beep pitch per colour (Hz): a ratio of >= 1.25 between neighbours, several mel bands apart.
static const double colour_hz[6] = {500, 700, 950, 1250, 1600, 2000};
// Drone pitch per position (Hz), below every beep.
static const double drone_hz[4] = {120, 200, 300, 400};

void data_synth_default(data_synth_cfg *c) {
    c->synth_h = 32;
    c->synth_w = 32;
    c->audio_rate = 8000;
    c->audio_len = 4000;
    c->text_max = 48;
    c->p_no_image = 0.1;
    c->p_no_audio = 0.1;
    for (int a = 0; a < DATA_N_ATTR; a++) c->allow[a] = 0;
    c->progress = NULL;
    c->stop = NULL;
}

int data_synth_restrict(data_synth_cfg *c, const char *spec, mm_err *err) {
    const char *eq = strchr(spec, '=');
    int a = -1;
    for (int i = 0; eq && i < DATA_N_ATTR; i++)
        if (strlen(data_synth_attr_names[i]) == (size_t)(eq - spec) &&
            strncmp(spec, data_synth_attr_names[i], (size_t)(eq - spec)) == 0)
            a = i;
    if (a < 0)
        return mm_fail(err, "synth restriction '%s': expected ATTR=WORD[,WORD...] with ATTR one "
                       "of colour, shape, size, position", spec);
    unsigned mask = 0;
    for (const char *w = eq + 1;;) {
        size_t len = strcspn(w, ",");
        int v = -1;
        for (int k = 0; k < data_synth_vocab_n[a]; k++)
            if (strlen(data_synth_vocab[a][k]) == len && strncmp(w, data_synth_vocab[a][k], len) == 0)
                v = k;
        if (v < 0) {
            char words[128] = "";
            for (int k = 0; k < data_synth_vocab_n[a]; k++)
                snprintf(words + strlen(words), sizeof(words) - strlen(words), "%s%s", k ? " " : "",
                         data_synth_vocab[a][k]);
            return mm_fail(err, "synth restriction '%s': '%.*s' is not a %s (one of: %s)", spec,
                           (int)len, w, data_synth_attr_names[a], words);
        }
        mask |= 1u << v;
        if (!w[len]) break;
        w += len + 1;
    }
    c->allow[a] = mask;
    return 0;
}

// Attribute a's word: uniform over the allowed ones. With every word allowed this is the one
// draw it always was, so unrestricted sets stay bit-identical to earlier versions.
static int draw_attr(mm_rng *r, int a, unsigned allow) {
    const int n = data_synth_vocab_n[a];
    unsigned mask = allow ? allow : (1u << n) - 1;
    int count = 0;
    for (int v = 0; v < n; v++) count += (int)(mask >> v & 1u);
    int k = (int)mm_rng_below(r, (uint64_t)count);
    for (int v = 0; v < n; v++)
        if ((mask >> v & 1u) && k-- == 0) return v;
    MM_CHECK(0, "draw_attr: empty word set for attribute %d", a);
}

// ---------------------------------------------------------------------------------------
// Captions.
int data_synth_caption(char *out, size_t cap, const int attr[DATA_N_ATTR], int p) {
    const char *col = data_synth_vocab[ATTR_COLOUR][attr[ATTR_COLOUR]];
    const char *shp = data_synth_vocab[ATTR_SHAPE][attr[ATTR_SHAPE]];
    const char *siz = data_synth_vocab[ATTR_SIZE][attr[ATTR_SIZE]];
    const char *pos = data_synth_vocab[ATTR_POS][attr[ATTR_POS]];
    int k;
    switch (p) {
        case 0:
            k = snprintf(out, cap, "a %s %s %s on the %s", siz, col, shp, pos);
            break;
        case 1:
            k = snprintf(out, cap, "%s %s %s, %s side", siz, col, shp, pos);
            break;
        case 2:
            k = snprintf(out, cap, "on the %s: a %s %s %s", pos, siz, col, shp);
            break;
        case 3:
            k = snprintf(out, cap, "%s %s (%s) at the %s", col, shp, siz, pos);
            break;
        case 4:
            k = snprintf(out, cap, "%s: %s %s, %s", pos, col, shp, siz);
            break;
        default:
            MM_CHECK(0, "data_synth_caption: no phrasing %d", p);
    }
    return k < (int)cap ? k : (int)cap - 1;
}

static int is_alpha(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

void data_synth_parse(const char *text, int count[DATA_N_ATTR], int word[DATA_N_ATTR]) {
    for (int a = 0; a < DATA_N_ATTR; a++) count[a] = 0, word[a] = -1;
    if (!text) return;
    const char *p = text;
    while (*p) {
        if (!is_alpha(*p)) {
            p++;
            continue;
        }
        const char *w0 = p;
        while (is_alpha(*p)) p++;
        size_t len = (size_t)(p - w0);
        for (int a = 0; a < DATA_N_ATTR; a++)
            for (int v = 0; v < data_synth_vocab_n[a]; v++) {
                const char *vw = data_synth_vocab[a][v];
                if (strlen(vw) == len && strncasecmp(vw, w0, len) == 0) {
                    count[a]++;
                    word[a] = v;
                }
            }
    }
}

// An attribute is right when the generated text names it with exactly one word of its
// vocabulary and that word is the reference's (which itself names it exactly once).
int data_synth_score(const char *reference, const char *generated, int correct[DATA_N_ATTR]) {
    int rc[DATA_N_ATTR], rw[DATA_N_ATTR], gc[DATA_N_ATTR], gw[DATA_N_ATTR];
    data_synth_parse(reference, rc, rw);
    data_synth_parse(generated, gc, gw);
    int all = 1;
    for (int a = 0; a < DATA_N_ATTR; a++) {
        correct[a] = rc[a] == 1 && gc[a] == 1 && rw[a] == gw[a];
        all &= correct[a];
    }
    return all;
}

// ---------------------------------------------------------------------------------------
// Rendering.
static int inside(int shape, float dx, float dy, float r) {
    float ax = fabsf(dx), ay = fabsf(dy);
    switch (shape) {
        case SHAPE_CIRCLE:
            return dx * dx + dy * dy <= r * r;
        case SHAPE_SQUARE:
            return ax <= 0.8f * r && ay <= 0.8f * r;
        case SHAPE_TRIANGLE:  // apex up, base 0.7 r below the centre, base half-width 0.95 r
            return dy >= -r && dy <= 0.7f * r && ax <= 0.56f * (dy + r);
        default:  // cross: two bars 0.6 r thick
            return (ax <= 0.3f * r && ay <= r) || (ay <= 0.3f * r && ax <= r);
    }
}

// img is (H, W, 3).
static void draw_image(uint8_t *img, int H, int W, const int attr[DATA_N_ATTR], mm_rng *r) {
    for (int i = 0; i < H * W * 3; i++) img[i] = (uint8_t)(8 + mm_rng_below(r, 33));
    float m = (float)(H < W ? H : W);
    float fx[4] = {0.28f, 0.72f, 0.5f, 0.5f}, fy[4] = {0.5f, 0.5f, 0.28f, 0.72f};
    float jit = m / 16.0f;  // +-2 px at 32
    float cx = fx[attr[ATTR_POS]] * W + (2.0f * mm_rng_uniform(r) - 1.0f) * jit;
    float cy = fy[attr[ATTR_POS]] * H + (2.0f * mm_rng_uniform(r) - 1.0f) * jit;
    // radius 4-5 px (small) or 8-9 px (large) at 32
    float rad = m * ((attr[ATTR_SIZE] ? 0.25f : 0.125f) + 0.03125f * mm_rng_uniform(r));
    uint8_t rgb[3];
    for (int c = 0; c < 3; c++) {
        int v = colour_rgb[attr[ATTR_COLOUR]][c] + (int)mm_rng_below(r, 25) - 12;
        rgb[c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if (inside(attr[ATTR_SHAPE], (float)x + 0.5f - cx, (float)y + 0.5f - cy, rad))
                memcpy(img + ((size_t)y * W + x) * 3, rgb, 3);
}

// pcm is (len) at rate Hz.
static void draw_audio(int16_t *pcm, int len, int rate, const int attr[DATA_N_ATTR], mm_rng *r) {
    double beep_hz = colour_hz[attr[ATTR_COLOUR]] * (1.0 + 0.01 * (2.0 * mm_rng_uniform(r) - 1.0));
    double drone = drone_hz[attr[ATTR_POS]];
    double phase0 = 2.0 * M_PI * mm_rng_uniform(r);
    int n_beeps = attr[ATTR_SHAPE] + 1;
    // 940-sample slots at 4000: beeps of 188 (short) or 498 (long) samples leave gaps of
    // >= 420 samples, longer than a 256-point FFT frame plus a hop, so that every gap
    // shows up as at least one quiet frame and the beeps can be counted.
    double slot = 0.235 * len;
    int beep_len = (int)(slot * (attr[ATTR_SIZE] ? 0.53 : 0.2));
    int fade = beep_len / 8;
    int starts[4];
    for (int b = 0; b < n_beeps; b++)
        starts[b] = (int)(0.03 * len + b * slot) + (int)mm_rng_below(r, 41) - 20;
    for (int i = 0; i < len; i++) {
        double t = (double)i / rate;
        double x = 0.12 * sin(2.0 * M_PI * drone * t + phase0) + 0.01 * mm_rng_normal(r);
        for (int b = 0; b < n_beeps; b++) {
            int k = i - starts[b];
            if (k < 0 || k >= beep_len) continue;
            double env = 1.0;  // raised-cosine edges: no clicks spreading over every band
            if (k < fade)
                env = 0.5 - 0.5 * cos(M_PI * k / fade);
            else if (k >= beep_len - fade)
                env = 0.5 - 0.5 * cos(M_PI * (beep_len - 1 - k) / fade);
            x += 0.3 * env * sin(2.0 * M_PI * beep_hz * (double)k / rate);
        }
        double v = x * 32767.0;
        pcm[i] = (int16_t)(v > 32767.0 ? 32767 : v < -32768.0 ? -32768 : lrint(v));
    }
}

static int write_split(const char *dir, const char *name, uint64_t n, uint64_t seed,
                       const data_synth_cfg *c, mm_err *err) {
    double t0 = mm_now(), t_last = t0;
    data_schema s = {0};
    s.img_h = c->synth_h;
    s.img_w = c->synth_w;
    s.img_c = 3;
    s.audio_rate = c->audio_rate;
    s.audio_len = c->audio_len;
    s.text_max = c->text_max;
    snprintf(s.tokenizer, sizeof(s.tokenizer), "%s", DATA_TOKENIZER_NAME);
    data_writer *w;
    if (data_writer_open(&w, dir, &s, 500, err)) return -1;
    uint8_t *img = mm_malloc((size_t)s.img_h * s.img_w * 3);          // (H, W, 3)
    int16_t *pcm = mm_malloc(sizeof(int16_t) * (size_t)s.audio_len);  // (audio_len)
    char text[256];
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        mm_rng r;
        mm_rng_init(&r, seed, i);
        int attr[DATA_N_ATTR];
        for (int a = 0; a < DATA_N_ATTR; a++) attr[a] = draw_attr(&r, a, c->allow[a]);
        int phrasing = (int)mm_rng_below(&r, DATA_SYNTH_N_PHRASINGS);
        float u = mm_rng_uniform(&r);
        int has_img = u >= c->p_no_image;
        int has_aud = !has_img || u >= c->p_no_image + c->p_no_audio;  // never both missing
        draw_image(img, s.img_h, s.img_w, attr, &r);
        draw_audio(pcm, s.audio_len, s.audio_rate, attr, &r);
        data_sample smp = {0};
        smp.sample_id = i;
        smp.image = has_img ? img : NULL;
        smp.audio = has_aud ? pcm : NULL;
        smp.audio_n = has_aud ? s.audio_len : 0;
        smp.text = text;
        smp.text_n = data_synth_caption(text, sizeof(text), attr, phrasing);
        rc = data_writer_add(w, &smp, err);
        if (rc == 0 && c->stop && *c->stop)
            rc = mm_fail(err, "%s: stopped by a signal after %llu of %llu samples; nothing kept",
                         name, (unsigned long long)i + 1, (unsigned long long)n);
        if (rc == 0 && c->progress && (i & 1023) == 1023 && mm_now() - t_last >= 5.0) {
            t_last = mm_now();
            fprintf(c->progress, "synth: %s: %llu / %llu samples (%.0f%%), %.0f samples/s\n", name,
                    (unsigned long long)i + 1, (unsigned long long)n, 100.0 * (double)(i + 1) / n,
                    (double)(i + 1) / (t_last - t0));
            fflush(c->progress);
        }
    }
    free(img);
    free(pcm);
    if (rc) {
        mm_err ignored;
        data_writer_close(w, &ignored);
        return -1;
    }
    return data_writer_close(w, err);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void remove_tree(const char *path) {
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static int dir_missing_or_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return errno == ENOENT;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) empty = 0;
    closedir(d);
    return empty;
}

// Temporary folders a killed synth left in dir (.train.synth-PID of a PID that is gone).
static void remove_stale_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *at = strstr(e->d_name, ".synth-");
        if (e->d_name[0] != '.' || !at) continue;
        long pid = strtol(at + 7, NULL, 10);
        if (pid <= 0 || (kill((pid_t)pid, 0) == 0 || errno == EPERM)) continue;
        char p[4200];
        if (snprintf(p, sizeof(p), "%s/%s", dir, e->d_name) < (int)sizeof(p)) remove_tree(p);
    }
    closedir(d);
}

// Checks c, then writes dir/train and dir/val (each refused if it exists with files).
int data_synth_write(const char *dir, uint64_t n, uint64_t seed, const data_synth_cfg *c,
                     mm_err *err) {
    if (n < 1) return mm_fail(err, "%s: the synthetic set needs at least 1 sample", dir);
    if (n > DATA_SYNTH_MAX_SAMPLES)
        return mm_fail(err, "%s: %llu samples is over the limit of %llu", dir,
                       (unsigned long long)n, DATA_SYNTH_MAX_SAMPLES);
    if (c->synth_h < 16 || c->synth_w < 16 || c->synth_h > 1024 || c->synth_w > 1024)
        return mm_fail(err, "%s: synthetic image %dx%d must be between 16x16 and 1024x1024", dir,
                       c->synth_h, c->synth_w);
    if (c->audio_rate < 4400 || c->audio_rate > 192000)
        return mm_fail(err, "%s: synthetic audio_rate %d must be in 4400..192000 (2 kHz beeps)",
                       dir, c->audio_rate);
    if (c->audio_len < 256 || c->audio_len > (1 << 24))
        return mm_fail(err, "%s: synthetic audio_len %d must be in 256..%d", dir, c->audio_len,
                       1 << 24);
    if (!(c->p_no_image >= 0 && c->p_no_audio >= 0 && c->p_no_image + c->p_no_audio <= 1.0))
        return mm_fail(err, "%s: p_no_image %g and p_no_audio %g must be >= 0 with a sum <= 1", dir,
                       c->p_no_image, c->p_no_audio);
    for (int a = 0; a < DATA_N_ATTR; a++)
        if (c->allow[a] >> data_synth_vocab_n[a])
            return mm_fail(err, "%s: synthetic %s mask 0x%x names words beyond the %d there are",
                           dir, data_synth_attr_names[a], c->allow[a], data_synth_vocab_n[a]);
    int longest = 0, attr[DATA_N_ATTR];
    char text[256];
    for (int k = 0; k < 6 * 4 * 2 * 4; k++) {
        attr[0] = k % 6, attr[1] = k / 6 % 4, attr[2] = k / 24 % 2, attr[3] = k / 48;
        for (int p = 0; p < DATA_SYNTH_N_PHRASINGS; p++) {
            int len = data_synth_caption(text, sizeof(text), attr, p);
            if (len > longest) longest = len;
        }
    }
    if (c->text_max < longest)
        return mm_fail(err, "%s: text_max %d is shorter than the longest synthetic caption (%d)",
                       dir, c->text_max, longest);
    uint64_t n_val = n / 10 > 64 ? n / 10 : 64;
    char fin[2][4200], tmp[2][4200];
    static const char *const split[2] = {"train", "val"};
    for (int k = 0; k < 2; k++) {
        if (snprintf(fin[k], sizeof(fin[k]), "%s/%s", dir, split[k]) >= (int)sizeof(fin[k]) ||
            snprintf(tmp[k], sizeof(tmp[k]), "%s/.%s.synth-%ld", dir, split[k], (long)getpid()) >=
                (int)sizeof(tmp[k]))
            return mm_fail(err, "%s: path too long", dir);
        if (!dir_missing_or_empty(fin[k]))
            return mm_fail(err, "%s: exists and is not empty (synth writes new datasets only)",
                           fin[k]);
    }
    if (mm_mkdirs(dir, err)) return -1;
    remove_stale_tmp(dir);
    // Room for it: images, clips, captions, plus HDF5's overhead, against the free space.
    double per = (double)c->synth_h * c->synth_w * 3 + 2.0 * c->audio_len + c->text_max + 64;
    double need = per * (double)(n + n_val) * 1.02;
    struct statvfs vs;
    if (statvfs(dir, &vs) == 0) {
        double avail = (double)vs.f_bavail * (double)vs.f_frsize;
        if (need > avail)
            return mm_fail(err,
                           "%s: %llu + %llu samples need about %.2f GB, the file system has "
                           "%.2f GB free",
                           dir, (unsigned long long)n, (unsigned long long)n_val, need / 1e9,
                           avail / 1e9);
    }
    if (c->progress && need > 1e9) {
        fprintf(c->progress, "synth: writing %llu + %llu samples, about %.1f GB, into %s\n",
                (unsigned long long)n, (unsigned long long)n_val, need / 1e9, dir);
        fflush(c->progress);
    }
    // Distinct seeds per split: val never repeats a train sample's draws.
    int rc = write_split(tmp[0], fin[0], n, seed * 2 + 0x5eed0001ULL, c, err);
    if (rc == 0) rc = write_split(tmp[1], fin[1], n_val, seed * 2 + 0x5eed0002ULL, c, err);
    for (int k = 0; k < 2 && rc == 0; k++) {
        rmdir(fin[k]);  // an empty one is allowed above; rename needs it gone or empty
        if (rename(tmp[k], fin[k]) != 0) {
            rc = mm_fail(err, "%s: cannot rename %s to it: %s", fin[k], tmp[k], strerror(errno));
            if (k == 1) remove_tree(fin[0]);
        }
    }
    if (rc != 0)
        for (int k = 0; k < 2; k++) remove_tree(tmp[k]);
    return rc;
}

// ---------------------------------------------------------------------------------------
// Reading attributes back: from a caption (the scorer's parser) and from pixels (the rule).
int data_synth_attrs(const char *caption, int attr[DATA_N_ATTR]) {
    int count[DATA_N_ATTR], word[DATA_N_ATTR], ok = 0;
    data_synth_parse(caption, count, word);
    for (int a = 0; a < DATA_N_ATTR; a++) {
        attr[a] = count[a] == 1 ? word[a] : -1;
        if (attr[a] < 0) ok = -1;
    }
    return ok;
}

// Foreground of the pixel rule (see data.h): the brightest channel clears every background
// pixel (8..40) by far and falls short of every palette colour (>= 188 after the +-12 jitter).
enum { RULE_FG_LEVEL = 100 };

// Keeps in mask (h, w) only the largest 4-connected part of it (stray bright pixels of a
// generated image must not stretch the bounding box). Returns its size. queue is (h * w).
static int largest_part(uint8_t *mask, int h, int w, int *queue) {
    int n = h * w, best = 0, best_seed = -1;
    // label 1 = unvisited foreground, 2 = visited
    for (int s = 0; s < n; s++) {
        if (mask[s] != 1) continue;
        int head = 0, tail = 0;
        queue[tail++] = s;
        mask[s] = 2;
        while (head < tail) {
            int p = queue[head++], y = p / w, x = p % w;
            int nb[4] = {x > 0 ? p - 1 : -1, x < w - 1 ? p + 1 : -1, y > 0 ? p - w : -1,
                         y < h - 1 ? p + w : -1};
            for (int k = 0; k < 4; k++)
                if (nb[k] >= 0 && mask[nb[k]] == 1) mask[nb[k]] = 2, queue[tail++] = nb[k];
        }
        if (tail > best) best = tail, best_seed = s;
    }
    if (best_seed < 0) return 0;
    // flood the winner again as 3, then keep only 3s
    int head = 0, tail = 0;
    queue[tail++] = best_seed;
    mask[best_seed] = 3;
    while (head < tail) {
        int p = queue[head++], y = p / w, x = p % w;
        int nb[4] = {x > 0 ? p - 1 : -1, x < w - 1 ? p + 1 : -1, y > 0 ? p - w : -1,
                     y < h - 1 ? p + w : -1};
        for (int k = 0; k < 4; k++)
            if (nb[k] >= 0 && mask[nb[k]] == 2) mask[nb[k]] = 3, queue[tail++] = nb[k];
    }
    for (int p = 0; p < n; p++) mask[p] = mask[p] == 3;
    return best;
}

// Shape from the part's bounding box (bw x bh) and three numbers, each of which sets one shape
// apart from the others with a margin on the generator's geometry (inside(), including shapes
// cut by the image border; ranges measured over 2000 drawn masks at 32x32):
//   corners = fill of the four corner boxes (a quarter of the box each way): square 1, circle
//       <= 0.75, cross 0 (its bars are 0.6 r thick, the corner boxes start 0.5 r out),
//       triangle >= 0.34 (the ends of its base);
//   narrow = share of rows and columns whose run is at most half the box: cross >= 0.62 (only
//       its other bar is full), circle <= 0.25, square 0;
//   taper = pixels in the top third of the box / pixels in the bottom third: triangle (apex
//       up) <= 0.46, circle >= 0.62 (a circle cut at the bottom is the lowest), ~1 otherwise.
// Decided in that order: square by corners, cross by corners and narrow, triangle by taper,
// else circle. At 32x32 and above no drawn mask is misread; at 16x16 (radius 2-3 px) ~1% are.
static int shape_of(const uint8_t *mask, int w, int x0, int x1, int y0, int y1) {
    int bw = x1 - x0 + 1, bh = y1 - y0 + 1, top = 0, bottom = 0, corner = 0, corner_n = 0;
    int narrow = 0;
    double cw = bw / 4.0, ch = bh / 4.0;
    for (int y = y0; y <= y1; y++) {
        int run = 0;
        for (int x = x0; x <= x1; x++) {
            int in_corner = (x - x0 + 0.5 < cw || x1 - x + 0.5 < cw) &&
                            (y - y0 + 0.5 < ch || y1 - y + 0.5 < ch);
            int on = mask[y * w + x];
            corner_n += in_corner, corner += in_corner && on;
            run += on;
            if (!on) continue;
            if (3 * (y - y0) < bh) top++;
            if (3 * (y1 - y) < bh) bottom++;
        }
        narrow += 2 * run <= bw;
    }
    for (int x = x0; x <= x1; x++) {
        int run = 0;
        for (int y = y0; y <= y1; y++) run += mask[y * w + x];
        narrow += 2 * run <= bh;
    }
    double corners = corner_n ? (double)corner / corner_n : 0.0;
    double narrow_share = (double)narrow / (bw + bh);
    double taper = (double)top / (bottom ? bottom : 1);
    if (corners > 0.9) return SHAPE_SQUARE;
    if (corners < 0.17 && narrow_share > 0.45) return SHAPE_CROSS;
    if (taper < 0.54) return SHAPE_TRIANGLE;
    return SHAPE_CIRCLE;
}

int data_synth_classify(const uint8_t *img, int h, int w, int c, int *colour, int *shape) {
    MM_CHECK(h >= 1 && w >= 1, "data_synth_classify: image %dx%d", h, w);
    *colour = -1, *shape = -1;
    if (c < 3) return -1;
    size_t n = (size_t)h * w;
    uint8_t *mask = mm_malloc(n);          // (h, w)
    int *queue = mm_malloc(sizeof(int) * n);  // (h * w) flood-fill work list
    for (size_t p = 0; p < n; p++) {
        const uint8_t *px = img + p * c;
        int mx = px[0] > px[1] ? px[0] : px[1];
        mask[p] = (mx > px[2] ? mx : px[2]) >= RULE_FG_LEVEL;
    }
    int area = largest_part(mask, h, w, queue);
    int rc = -1;
    if (area > 0) {
        int x0 = w, x1 = -1, y0 = h, y1 = -1;
        double sum[3] = {0, 0, 0};
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                if (!mask[y * w + x]) continue;
                if (x < x0) x0 = x;
                if (x > x1) x1 = x;
                if (y < y0) y0 = y;
                if (y > y1) y1 = y;
                for (int k = 0; k < 3; k++) sum[k] += img[((size_t)y * w + x) * c + k];
            }
        double best = 1e30;
        for (int k = 0; k < data_synth_vocab_n[ATTR_COLOUR]; k++) {
            double d = 0;
            for (int ch = 0; ch < 3; ch++) {
                double e = sum[ch] / area - colour_rgb[k][ch];
                d += e * e;
            }
            if (d < best) best = d, *colour = k;
        }
        *shape = shape_of(mask, w, x0, x1, y0, y1);
        rc = 0;
    }
    free(mask);
    free(queue);
    return rc;
}
