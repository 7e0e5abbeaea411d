// trainer.c: the main loop (ARCHITECTURE.md): loader -> forward -> backward ->
// gradient reduction -> clip -> AdamW -> metrics -> evaluation -> checkpoint, plus resume.
//
// Loss definition, chosen so that it does not depend on how a global batch is split over
// ranks and micro-steps: the mean over the global batch of each sample's mean token loss.
// Each micro-step's backward is scaled by 1/global_batch, so summing gradients over
// micro-steps and dp ranks gives exactly the global gradient.
//
// Parallel layout (comm.h): world = dp x tp. Every rank of a tp group sees the same
// samples and computes the same loss; dp ranks see disjoint parts of the global batch.
// Only world rank 0 prints and writes metrics. What a step computes and how a run is
// evaluated belong to the model family (family_lm.c, family_dit.c; trainer_internal.h).
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../data/data.h"
#include "ckpt.h"
#include "memory.h"
#include "optim.h"
#include "survive.h"
#include "train.h"
#include "trainer_internal.h"

// --------------------------------------------------------------------------------------
// The run directory's owner: <out_dir>/LOCK (CHECKPOINT.md, "One job per run directory").
// Taken by rank 0 at start with O_CREAT|O_EXCL (atomic on local disks, NFSv3+ and Lustre)
// plus flock(LOCK_EX) where the filesystem has it; the file says who holds it and its
// mtime is refreshed every LOCK_BEAT_S by a thread. A LOCK is stale, and taken over with
// a note, when flock shows nobody holds it AND (same host: flock works there, so its holder
// has exited, or its pid no longer runs (not a zombie); another host: not refreshed for
// LOCK_STALE_S).

#define LOCK_BEAT_S 30
#define LOCK_STALE_S 300

struct train_run_lock {
    int fd;
    dev_t dev;
    ino_t ino;
    char path[MM_STR + 16];
    pthread_t beat;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, beating;
};

static void *lock_beat(void *arg) {
    struct train_run_lock *l = arg;
    pthread_mutex_lock(&l->mu);
    while (!l->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += LOCK_BEAT_S;
        pthread_cond_timedwait(&l->cv, &l->mu, &until);
        if (!l->stop) futimens(l->fd, NULL);  // mtime = now: "still running"
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

static void run_unlock(struct train_run_lock *l) {
    if (!l) return;
    if (l->beating) {
        pthread_mutex_lock(&l->mu);
        l->stop = 1;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->beat, NULL);
    }
    struct stat sb;
    // only our own file: never one another job created after taking over
    if (stat(l->path, &sb) == 0 && sb.st_dev == l->dev && sb.st_ino == l->ino) unlink(l->path);
    close(l->fd);
    free(l);
}

// The holder as the file says: "host H pid P started T (date)"; 0 when it does not parse.
static int lock_holder(int fd, char *host, size_t host_len, long *pid, long long *started,
                       char *text, size_t text_len) {
    ssize_t n = pread(fd, text, text_len - 1, 0);
    text[n > 0 ? n : 0] = '\0';
    char *nl = strchr(text, '\n');
    if (nl) *nl = '\0';
    char h[256];
    if (sscanf(text, "host %255s pid %ld started %lld", h, pid, started) != 3) return 0;
    snprintf(host, host_len, "%s", h);
    return 1;
}

// 1 when process pid runs on this host: exists and is not a zombie (a job killed with -9 is
// a zombie until its parent reaps it, and kill(pid, 0) still succeeds on it).
static int pid_runs(long pid) {
    if (pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno == ESRCH)) return 0;
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return 1;  // no /proc: believe kill
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *end = strrchr(buf, ')');  // "pid (comm) S ...": comm may hold spaces
    return !(end && end[1] == ' ' && (end[2] == 'Z' || end[2] == 'X'));
}

static int run_lock(trainer *t, mm_err *err) {
    struct train_run_lock *l = mm_malloc(sizeof(*l));
    memset(l, 0, sizeof(*l));
    l->fd = -1;
    snprintf(l->path, sizeof(l->path), "%s/LOCK", t->cfg->run.out_dir);
    char me[256] = "?";
    gethostname(me, sizeof(me) - 1);
    int stale_fd = -1;  // a stale LOCK we hold flock'd while replacing it
    for (int attempt = 0; attempt < 4 && l->fd < 0; attempt++) {
        int fd = open(l->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0) {
            (void)flock(fd, LOCK_EX | LOCK_NB);  // a new inode: nobody else can hold it
            char text[512];
            time_t now = time(NULL);
            char when[64];
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", localtime(&now));
            int n = snprintf(text, sizeof(text), "host %s pid %ld started %lld (%s)\n", me,
                             (long)getpid(), (long long)now, when);
            struct stat sb;
            if (write(fd, text, (size_t)n) != n || fsync(fd) != 0 || fstat(fd, &sb) != 0) {
                int e = errno;
                unlink(l->path);
                close(fd);
                mm_fail(err, "%s: cannot write the run lock: %s", l->path, strerror(e));
                free(l);
                if (stale_fd >= 0) close(stale_fd);
                return -1;
            }
            l->fd = fd, l->dev = sb.st_dev, l->ino = sb.st_ino;
            break;
        }
        if (errno != EEXIST) {
            int e = errno;
            free(l);
            if (stale_fd >= 0) close(stale_fd);
            return mm_fail(err,
                           "%s: cannot create the run lock: %s (run.out_dir must be "
                           "writable)",
                           t->cfg->run.out_dir, strerror(e));
        }
        fd = open(l->path, O_RDWR | O_CLOEXEC);
        if (fd < 0) continue;  // removed meanwhile (its job ended): try again
        errno = 0;
        const int fl = flock(fd, LOCK_EX | LOCK_NB);
        const int held = fl != 0 && errno == EWOULDBLOCK;
        // the holder keeps its LOCK flock'd for its whole life, so on its own host a free
        // flock means it has exited, whatever its pid shows (a zombie, or a reused pid)
        const int flock_free = fl == 0;
        struct stat fsb, psb;
        if (fstat(fd, &fsb) != 0 || stat(l->path, &psb) != 0 || fsb.st_ino != psb.st_ino ||
            fsb.st_dev != psb.st_dev) {
            close(fd);  // replaced meanwhile: look again
            continue;
        }
        char host[256] = "?", text[512];
        long pid = 0;
        long long started = 0;
        int parsed = lock_holder(fd, host, sizeof(host), &pid, &started, text, sizeof(text));
        double age = difftime(time(NULL), fsb.st_mtime);
        const char *why = NULL;
        char whybuf[320];  // room for the host name (up to 255 bytes)
        if (!held) {
            if (!parsed && age > 60) {
                why = "it names no holder (a job that died while writing it)";
            } else if (parsed && strcmp(host, me) == 0 && (flock_free || !pid_runs(pid))) {
                snprintf(whybuf, sizeof(whybuf), "process %ld no longer runs on %s", pid, host);
                why = whybuf;
            } else if (parsed && strcmp(host, me) != 0 && age > LOCK_STALE_S) {
                snprintf(whybuf, sizeof(whybuf),
                         "not refreshed for %.0f s (a live job "
                         "refreshes it every %d s)",
                         age, LOCK_BEAT_S);
                why = whybuf;
            }
        }
        if (!why) {
            close(fd);
            mm_fail(err,
                    "%s: run directory in use by another job (%s); a second job would "
                    "train the same steps into it; wait for it, use another run.out_dir, "
                    "or remove LOCK if that job is surely gone",
                    l->path, parsed ? text : "holder unknown");
            free(l);
            if (stale_fd >= 0) close(stale_fd);
            return -1;
        }
        if (t->rank == 0)
            printf("note: %s: taking over a stale run lock (%s): %s\n", l->path,
                   parsed ? text : "no holder", why);
        // keep the stale inode flock'd while replacing it, so that a concurrent job sees it
        // held rather than deciding it is stale too
        if (stale_fd >= 0) close(stale_fd);
        stale_fd = fd;
        unlink(l->path);
    }
    if (stale_fd >= 0) close(stale_fd);
    if (l->fd < 0) {
        free(l);
        return mm_fail(err, "%s: could not take the run lock (other jobs keep changing it)",
                       t->cfg->run.out_dir);
    }
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    l->beating = pthread_create(&l->beat, NULL, lock_beat, l) == 0;
    t->lock = l;
    return 0;
}

// Rank 0 at start, before anything is read or written: the run directory exists, this job
// owns it, and it and ckpt/ take files (an unwritable directory found now, not at the first
// checkpoint after hours of training).
static int claim_run_dir(trainer *t, mm_err *err) {
    const char *out = t->cfg->run.out_dir;
    if (mm_mkdirs(out, err) != 0) return -1;
    if (run_lock(t, err) != 0) return -1;
    char dir[MM_STR + 16], probe[MM_STR + 64];
    snprintf(dir, sizeof(dir), "%s/ckpt", out);
    if (mm_mkdirs(dir, err) != 0) return -1;
    const char *dirs[2] = {out, dir};
    for (int i = 0; i < 2; i++) {
        snprintf(probe, sizeof(probe), "%s/.write-probe-%ld", dirs[i], (long)getpid());
        int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        int e = errno;
        if (fd >= 0) {
            int ok = write(fd, "x", 1) == 1;
            e = errno;
            ok = close(fd) == 0 && ok;
            unlink(probe);
            if (ok) continue;
        }
        return mm_fail(err, "%s: not writable: %s (found at start, before training)", dirs[i],
                       strerror(e));
    }
    return 0;
}

// Ends the job: the write to path failed with errno e ("disk full" on ENOSPC/EDQUOT).
static noreturn void write_failed(trainer *t, const char *path, int e) {
    char msg[MM_ERR_LEN];
    snprintf(msg, sizeof(msg), "%s: cannot write: %s%s", path, e ? strerror(e) : "write error",
             e == ENOSPC || e == EDQUOT ? " (disk full: the run stops; the last committed "
                                          "checkpoint is intact)"
                                        : "");
    train_die(t, msg);
}

void train_check_write(trainer *t, FILE *f, const char *path, int rc) {
    if (!f) return;
    int e = errno;
    if (rc >= 0) {
        rc = fflush(f) == 0 && !ferror(f) ? 0 : -1;
        e = errno;
    }
    if (rc < 0) write_failed(t, path, e);
}

void train_close_output(trainer *t, FILE *f, const char *path) {
    if (!f) return;
    train_check_write(t, f, path, 0);
    if (fclose(f) != 0) write_failed(t, path, errno);
}

// The lines metrics.jsonl got since the last call, into the TensorBoard file (tboard.h).
// Mirroring the file, rather than hooking each of its writers (trainer.c, eval.c,
// survive.c), keeps the two equal by construction.
static void tb_mirror(trainer *t) {
    struct stat st;
    const int fd = fileno(t->metrics);
    if (fstat(fd, &st) != 0 || st.st_size <= t->tb_mirrored) return;
    const size_t n = (size_t)(st.st_size - t->tb_mirrored);
    char *buf = mm_malloc(n);
    if (pread(fd, buf, n, t->tb_mirrored) != (ssize_t)n) {
        char msg[MM_ERR_LEN];
        snprintf(msg, sizeof(msg), "%s: cannot read back for TensorBoard: %s", t->metrics_path,
                 strerror(errno));
        train_die(t, msg);
    }
    size_t at = 0;
    for (char *nl; (nl = memchr(buf + at, '\n', n - at));) {  // whole lines only
        if (tb_metrics_line(&t->tb, buf + at, (size_t)(nl - buf) - at) != 0)
            write_failed(t, t->tb.path, errno);
        at = (size_t)(nl - buf) + 1;
    }
    t->tb_mirrored += (int64_t)at;
    free(buf);
}

// metrics.jsonl: every line flushed and checked, so that a full disk stops the run here
// (exit 1, naming the file) instead of dropping lines and exiting 0; then into TensorBoard.
static void metrics_check(trainer *t, int rc) {
    train_check_write(t, t->metrics, t->metrics_path, rc);
    if (t->tb.f) tb_mirror(t);
}

void train_tb_image(trainer *t, const char *tag, const char *png_path, int h, int w, int c) {
    if (!t->tb.f) return;
    char *png = NULL;
    size_t n = 0;
    mm_err e;
    if (mm_read_file(png_path, &png, &n, &e) != 0) train_die(t, e.msg);
    if (tb_image_png(&t->tb, tag, t->step, png, n, h, w, c) != 0)
        write_failed(t, t->tb.path, errno);
    free(png);
}

void train_tb_text(trainer *t, const char *tag, const char *markdown) {
    if (t->tb.f && tb_text(&t->tb, tag, t->step, markdown) != 0) write_failed(t, t->tb.path, errno);
}

// The step timeline to its file (trace.h); a failed write ends the job naming the file, as
// a failed metrics line does.
static void trace_flush_or_die(trainer *t) {
    mm_err e;
    trace_begin(t->timeline, "trace flush", NULL, 0);
    int rc = trace_flush(t->timeline, &e);
    trace_end(t->timeline);  // written at the next flush
    if (rc != 0) train_die(t, e.msg);
}

void train_die(trainer *t, const char *msg) {
    char line[MM_ERR_LEN + 16];
    if (t->lock) {  // the process ends now: free the run directory for the next job
        run_unlock(t->lock);
        t->lock = NULL;
    }
    snprintf(line, sizeof(line), "error: %s", msg);
    comm_abort(t->world, 1, line);
}

FILE *train_open_output(trainer *t, const char *sub, const char *ext, char *path, size_t n) {
    mm_err e;
    snprintf(path, n, "%s/%s", t->cfg->run.out_dir, sub);
    if (mm_mkdirs(path, &e) != 0) train_die(t, e.msg);
    snprintf(path, n, "%s/%s/step_%08lld.%s", t->cfg->run.out_dir, sub, (long long)t->step, ext);
    FILE *f = fopen(path, "w");
    if (!f) {
        char msg[MM_ERR_LEN];
        snprintf(msg, sizeof(msg), "%s: cannot write: %s", path, strerror(errno));
        train_die(t, msg);
    }
    return f;
}

static void fmt_eta(char *buf, size_t n, double s) {
    if (!(s >= 0) || s > 1e7) s = 0;
    int h = (int)(s / 3600), m = (int)(fmod(s, 3600) / 60), sec = (int)fmod(s, 60);
    if (h) snprintf(buf, n, "%dh%02dm", h, m);
    else snprintf(buf, n, "%dm%02ds", m, sec);
}

// --------------------------------------------------------------------------------------
// checkpoints

static void save_checkpoint(trainer *t) {
    const mm_config *c = t->cfg;
    metrics_check(t, 0);  // a kill after the commit must not lose its lines; a full disk
                          // stops the run before a checkpoint newer than the metrics
    ckpt_meta meta = {.step = t->step,
                      .pos = data_loader_pos(t->loader),
                      .rng = t->rng,
                      .world = t->world_size,
                      .tp = c->parallel.tp,
                      .dp = t->lay.dp_size};
    snprintf(meta.data_id, sizeof(meta.data_id), "%s", t->data_id);
    float *mom1, *mom2;
    int owned;
    gsync_full_state(&t->sync, &mom1, &mom2, &owned);
    if (t->fam->sync_host) t->fam->sync_host(t);  // the EMA's host view
    ckpt_state st = {.tensors = t->net.tensors,
                     .n_tensors = t->net.n_tensors,
                     .n_params = t->net.n_params,
                     .params = t->net.params,
                     .m = mom1,
                     .v = mom2,
                     .ema = t->ema};
    mm_err e;
    double t0 = mm_now();
    // dp replicas hold the same state: the ranks of dp index 0 (one per tp slice) write it.
    int rc = ckpt_save(t->world, c->run.out_dir, &meta, t->config_yaml, &st,
                       t->lay.dp_rank == 0, c->checkpoint.keep_last, &e);
    if (owned) {
        free(mom1);
        free(mom2);
    }
    if (rc != 0) train_die(t, e.msg);
    if (t->rank == 0) {
        printf("checkpoint step %lld saved to %s/ckpt/step_%08lld (%.2fs)\n", (long long)t->step,
               c->run.out_dir, (long long)t->step, mm_now() - t0);
        fflush(stdout);
    }
}

// Architecture keys must match between a checkpoint and the run that resumes it.
static int check_same_arch(const mm_config *now, const mm_config *saved, const char *dir,
                           mm_err *err) {
#define SAME(field)                                                                         \
    if (now->field != saved->field)                                                         \
        return mm_fail(err, "%s: checkpoint has " #field " = %lld, the config says %lld", dir, \
                       (long long)saved->field, (long long)now->field);
    SAME(model.d_model)
    SAME(model.n_layers) SAME(model.n_heads) SAME(model.patch) SAME(model.audio_group)
        SAME(data.n_mels) SAME(data.n_fft) SAME(data.hop)
#undef SAME
        // resolved: 0 means 4 * d_model
        long long ff_now = now->model.d_ff ? now->model.d_ff : 4LL * now->model.d_model;
    long long ff_saved = saved->model.d_ff ? saved->model.d_ff : 4LL * saved->model.d_model;
    if (ff_now != ff_saved)
        return mm_fail(err, "%s: checkpoint has model.d_ff = %lld, the config says %lld", dir,
                       ff_saved, ff_now);
        // the data's shapes (saved resolved since they became config keys; 0 in older checkpoints)
#define SAME_DATA(field)                                                                     \
    if (saved->field && now->field != saved->field)                                         \
        return mm_fail(err, "%s: checkpoint was trained with " #field " = %lld, the data gives " \
                       "%lld", dir, (long long)saved->field, (long long)now->field);
    SAME_DATA(data.img_h) SAME_DATA(data.img_w) SAME_DATA(data.img_c) SAME_DATA(data.audio_len)
    SAME_DATA(data.audio_rate) SAME_DATA(data.text_max)
#undef SAME_DATA
    if (strcmp(now->model.kind, saved->model.kind) != 0)
        return mm_fail(err, "%s: checkpoint is a %s model, the config asks for %s", dir,
                       saved->model.kind, now->model.kind);
    return 0;
}

// What exact resume depends on besides the architecture (CHECKPOINT.md, "Resuming exactly"):
// the data by content, the seed, the global batch, the learning-rate schedule, and the random
// changes that training draws (regularization, augmentation). A change is
// refused with one line naming the key, unless checkpoint.allow_changes names its group; an
// allowed change is logged (rank 0, verbose). A checkpoint without a data identity (written
// before it was recorded) is said to be unchecked.
static int allowed(const mm_config *c, const char *group) {
    for (int i = 0; i < c->checkpoint.allow_changes.n; i++)
        if (strcmp(c->checkpoint.allow_changes.item[i], group) == 0) return 1;
    return 0;
}

// v in the fewest digits that read back as v (0.7, not 0.69999999999999996).
static void shortest(char *buf, size_t n, double v) {
    for (int digits = 15; digits <= 17; digits++) {
        snprintf(buf, n, "%.*g", digits, v);
        if (strtod(buf, NULL) == v) return;
    }
}

static int check_exact(const trainer *t, const mm_config *saved, const ckpt_meta *meta,
                       const char *dir, int verbose, mm_err *err) {
    const mm_config *now = t->cfg;
    struct {
        const char *key, *group;
        int differs;
        char was[96], is[96];
    } k[32];
    int n = 0;
#define NUM(name, grp, field, fmt, type)                                          \
    k[n].key = name, k[n].group = grp, k[n].differs = now->field != saved->field; \
    snprintf(k[n].was, sizeof(k[n].was), fmt, (type)saved->field);                \
    snprintf(k[n].is, sizeof(k[n].is), fmt, (type)now->field), n++;
#define DBL(name, grp, field)                                                     \
    k[n].key = name, k[n].group = grp, k[n].differs = now->field != saved->field; \
    shortest(k[n].was, sizeof(k[n].was), saved->field);                           \
    shortest(k[n].is, sizeof(k[n].is), now->field), n++;
    NUM("run.seed", "seed", run.seed, "%llu", unsigned long long)
    NUM("data.global_batch", "batch", data.global_batch, "%lld", long long)
    DBL("optim.lr", "lr", optim.lr)
    DBL("optim.min_lr", "lr", optim.min_lr)
    NUM("optim.warmup", "lr", optim.warmup, "%lld", long long)
    NUM("run.steps", "steps", run.steps, "%lld", long long)
    DBL("model.dropout", "regularization", model.dropout)
    DBL("model.attn_dropout", "regularization", model.attn_dropout)
    DBL("model.modality_drop", "regularization", model.modality_drop)
    DBL("model.audio_drop", "regularization", model.audio_drop)
    DBL("optim.label_smoothing", "regularization", optim.label_smoothing)
    DBL("augment.crop_scale", "augment", augment.crop_scale)
    DBL("augment.crop_ratio", "augment", augment.crop_ratio)
    NUM("augment.flip", "augment", augment.flip, "%d", int)
    NUM("augment.translate", "augment", augment.translate, "%d", int)
    DBL("augment.brightness", "augment", augment.brightness)
    DBL("augment.contrast", "augment", augment.contrast)
    DBL("augment.saturation", "augment", augment.saturation)
    NUM("augment.audio_shift", "augment", augment.audio_shift, "%d", int)
    DBL("augment.audio_gain_db", "augment", augment.audio_gain_db)
    NUM("augment.time_masks", "augment", augment.time_masks, "%d", int)
    NUM("augment.time_mask_width", "augment", augment.time_mask_width, "%d", int)
    NUM("augment.freq_masks", "augment", augment.freq_masks, "%d", int)
    NUM("augment.freq_mask_width", "augment", augment.freq_mask_width, "%d", int)
    DBL("optim.ema_decay", "ema", optim.ema_decay)
    DBL("diffusion.ema_decay", "ema", diffusion.ema_decay)
#undef NUM
#undef DBL
    int data_known = meta->data_id[0] != 0;
    k[n].key = "data.train", k[n].group = "data";
    k[n].differs = data_known && strcmp(meta->data_id, t->data_id) != 0;
    snprintf(k[n].was, sizeof(k[n].was), "%.40s (%.50s)", meta->data_id, saved->data.train);
    snprintf(k[n].is, sizeof(k[n].is), "%.40s (%.50s)", t->data_id, now->data.train);
    n++;
    for (int i = 0; i < n; i++) {
        if (!k[i].differs) continue;
        if (!allowed(now, k[i].group))
            return mm_fail(err,
                           "%s: resume would change %s from %s to %s, so it would not continue "
                           "the same run exactly (put %s in checkpoint.allow_changes to accept "
                           "it, or use another run.out_dir)",
                           dir, k[i].key, k[i].was, k[i].is, k[i].group);
        if (verbose)
            printf(
                "note: resume changes %s from %s to %s (allowed by "
                "checkpoint.allow_changes: %s)\n",
                k[i].key, k[i].was, k[i].is, k[i].group);
    }
    if (verbose && !data_known)
        printf(
            "note: %s records no dataset identity (saved by an older version): the training "
            "data could not be checked against it\n",
            dir);
    return 0;
}

// Resolves checkpoint.resume: fills *found = 1 and dir when there is something to resume.
static int resume_target(const trainer *t, char *dir, size_t n, int *found, mm_err *err) {
    const char *r = t->cfg->checkpoint.resume;
    *found = 0;
    if (strcmp(r, "none") == 0) return 0;
    if (strcmp(r, "auto") == 0) {
        int rc = ckpt_find_latest(t->cfg->run.out_dir, dir, n, err);
        if (rc < 0) return -1;
        if (rc == 0 && ckpt_find_previous(t->cfg->run.out_dir, NULL, dir, n) == 1) {
            // committed checkpoints but no `latest` (deleted, or lost with a crash): never
            // start over on top of them
            if (t->rank == 0)
                fprintf(stderr,
                        "warning: %s/ckpt/latest is missing but committed checkpoints "
                        "exist; resuming from the newest committed one, %s\n",
                        t->cfg->run.out_dir, dir);
            rc = 1;
        }
        *found = rc;
        return 0;
    }
    snprintf(dir, n, "%s", r);
    *found = 1;
    return 0;
}

static int agree(comm_group *w, int rc, mm_err *err);

static int load_checkpoint(trainer *t, data_pos *pos, mm_err *err) {
    char dir[MM_STR + 64];
    int found = 0;
    const int auto_mode = strcmp(t->cfg->checkpoint.resume, "auto") == 0;
    if (resume_target(t, dir, sizeof(dir), &found, err) != 0) {
        // resume: auto and `latest` unusable: the newest committed checkpoint, saying so
        if (!auto_mode || ckpt_find_previous(t->cfg->run.out_dir, NULL, dir, sizeof(dir)) != 1)
            return -1;
        if (t->rank == 0) fprintf(stderr, "warning: %s; resuming from %s instead\n", err->msg, dir);
        found = 1;
    }
    ckpt_state st = {.tensors = t->net.tensors,
                     .n_tensors = t->net.n_tensors,
                     .n_params = t->net.n_params,
                     .params = t->net.params,
                     .ema = t->ema};
    if (found) {
        ckpt_meta meta;
        for (;;) {  // a damaged checkpoint: resume: auto falls back to the previous committed one
            // a config that does not parse is a config error like another architecture
            mm_config saved;
            int rc = ckpt_read_config(dir, &meta, &saved, NULL, err);
            int64_t other_arch =
                rc == -2 ||
                (rc == 0 && (check_same_arch(t->cfg, &saved, dir, err) != 0 ||
                             check_exact(t, &saved, &meta, dir, t->rank == 0, err) != 0));
            if (rc == 0 && !other_arch) {
                // the moments are loaded full-size and this rank keeps its part (ZeRO shards)
                st.m = mm_alloc_aligned(st.n_params * sizeof(float));
                st.v = mm_alloc_aligned(st.n_params * sizeof(float));
                // a run that starts keeping an EMA (allowed by allow_changes: ema) starts it
                // at the checkpoint's weights
                ckpt_tensor_info *ema_inv = NULL;
                int n_ema = 0;
                rc = t->ema ? ckpt_list_tensors(dir, "ema", &ema_inv, &n_ema, err) : 0;
                free(ema_inv);
                st.ema = n_ema > 0 ? t->ema : NULL;
                if (rc == 0) rc = ckpt_load_state(dir, &st, err);
                if (rc == 0 && t->ema && !st.ema) {
                    memcpy(t->ema, t->net.params, t->net.n_params * sizeof(float));
                    if (t->rank == 0)
                        printf("note: %s has no EMA of the weights: the EMA starts at its "
                               "weights\n", dir);
                }
                if (rc == 0) gsync_load_state(&t->sync, st.m, st.v);
                free(st.m);
                free(st.v);
            }
            comm_allreduce_max(t->world, &other_arch, 1, COMM_I64);  // a config error: no fallback
            if (agree(t->world, rc != 0 || other_arch ? -1 : 0, err) == 0) break;
            char prev[MM_STR + 64];
            if (other_arch || !auto_mode ||
                ckpt_find_previous(t->cfg->run.out_dir, dir, prev, sizeof(prev)) != 1)
                return -1;
            if (t->rank == 0)
                fprintf(stderr, "warning: %s; resume: auto falls back to %s\n", err->msg, prev);
            memcpy(dir, prev, sizeof(dir));
        }
        t->step = meta.step;
        t->rng = meta.rng;
        *pos = meta.pos;
        if (t->rank == 0) {
            printf("resumed from %s at step %lld (epoch %lld, offset %llu)%s\n", dir,
                   (long long)meta.step, (long long)meta.pos.epoch,
                   (unsigned long long)meta.pos.offset,
                   t->cfg->checkpoint.init_from[0]
                       ? "; checkpoint.init_from is not used (the run has its own state)"
                       : "");
        }
        return 0;
    }
    // starting fresh: a fine-tune takes its weights (only) from init_from
    if (t->cfg->checkpoint.init_from[0]) return train_init_from(t, err);
    return 0;
}

// --------------------------------------------------------------------------------------
// set-up and tear-down

static void trainer_free(trainer *t) {
    if (t->loader) data_loader_close(t->loader);
    if (t->val) data_dataset_close(t->val);
    if (t->val_feat) data_featurizer_free(t->val_feat);
    data_batch_free(&t->val_batch);
    if (t->sync_ready) gsync_free(&t->sync);  // unhooks from the network: free it first
    if (t->fam) t->fam->destroy(t);
    mm_backend_free(t->be);
    comm_layout_free(&t->lay);
    if (t->trace) fclose(t->trace);
    if (t->timeline) trace_free(t->timeline);
    free(t->timeline);
    free(t->config_yaml);
    if (t->metrics) fclose(t->metrics);
    tb_close(&t->tb);
    run_unlock(t->lock);
    t->lock = NULL;
}

// All ranks agree on success: when any rank failed, every rank returns -1 with the message
// of the lowest failing rank, so no rank is left waiting in a collective.
static int agree(comm_group *w, int rc, mm_err *err) {
    int64_t v = rc != 0 ? -(int64_t)comm_rank(w) : INT64_MIN;
    comm_allreduce_max(w, &v, 1, COMM_I64);
    if (v == INT64_MIN) return 0;
    comm_bcast(w, err->msg, sizeof(err->msg), COMM_U8, (int)-v);
    return -1;
}

// The data.* shape keys: 0 takes the training set's value (so the saved config records what
// the model was built for); a value the config sets must be the data's.
static int resolve_schema(mm_config *c, const data_schema *s, mm_err *err) {
    const struct {
        const char *key;
        int *field, have;
    } f[] = {{"data.img_h", &c->data.img_h, s->img_h},
             {"data.img_w", &c->data.img_w, s->img_w},
             {"data.img_c", &c->data.img_c, s->img_c},
             {"data.audio_rate", &c->data.audio_rate, s->audio_rate},
             {"data.audio_len", &c->data.audio_len, s->audio_len},
             {"data.text_max", &c->data.text_max, s->text_max}};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (*f[i].field == 0) {
            *f[i].field = f[i].have;
            continue;
        }
        if (*f[i].field == f[i].have) continue;
        char has[96];
        if (i < 3)
            snprintf(has, sizeof(has), "%dx%dx%d images", s->img_h, s->img_w, s->img_c);
        else if (i == 3)
            snprintf(has, sizeof(has), "%d Hz audio", s->audio_rate);
        else if (i == 4)
            snprintf(has, sizeof(has), "audio clips of %d samples", s->audio_len);
        else
            snprintf(has, sizeof(has), "captions of up to %d bytes", s->text_max);
        return mm_fail(err,
                       "config: %s=%d but dataset %s has %s (leave it out or 0 to take the "
                       "data's)",
                       f[i].key, *f[i].field, c->data.train, has);
    }
    return 0;
}

// The per-rank memory estimate (memory.h), printed by rank 0 with the activations per
// block under each recompute setting, and checked before the model allocates anything.
static int estimate_memory(trainer *t, int max_B, mm_err *err) {
    const mm_config *c = t->cfg;
    static const char *const names[3] = {"none", "attention", "block"};
    const model_recompute mine = model_recompute_named(c->model.recompute);
    model_mem per[3];
    int ema = 0;
    for (int i = 0; i < 3; i++)
        if (t->fam->mem_plan(t, max_B, model_recompute_named(names[i]), &per[i], &ema, err) != 0)
            return -1;
    const model_mem *mm = &per[mine];
    train_mem_estimate(&t->mem, t->be, mm, ema, t->lay.dp_size, c->parallel.zero);
    if (t->rank == 0) {
        char line[400];
        train_mem_format(&t->mem, line, sizeof(line));
        printf("memory: %s (%lld parameters on this rank, batches of up to %d)\n", line,
               (long long)mm->n_params, max_B);
        printf(
            "activations per block at %d samples (%d blocks), by model.recompute: none %.1f "
            "MiB, attention %.1f MiB, block %.1f MiB (this run: %s, %.1f MiB in all)\n",
            max_B, mm->n_layers, per[0].act_per_layer / 1048576.0, per[1].act_per_layer / 1048576.0,
            per[2].act_per_layer / 1048576.0, c->model.recompute, mm->act_bytes / 1048576.0);
        fflush(stdout);
    }
    return train_mem_check(&t->mem, t->be, max_B, mine != MODEL_RECOMPUTE_BLOCK, err);
}

// Stage 1: everything that depends on the config and the data's schema alone.
static int init_model(trainer *t, mm_err *err) {
    const mm_config *c = t->cfg;
    if (c->data.global_batch % (c->data.micro_batch * t->lay.dp_size) != 0)
        return mm_fail(err,
                       "data.global_batch = %d is not a multiple of data.micro_batch (%d) x "
                       "data-parallel ranks (%d = %d ranks / parallel.tp %d)",
                       c->data.global_batch, c->data.micro_batch, t->lay.dp_size,
                       t->world_size, t->lay.tp_size);
    // Model first (its shapes come from the training set's schema), then the checkpoint,
    // then the loader at the checkpoint's position.
    data_dataset *probe = NULL;
    if (data_dataset_open(&probe, c->data.train, DATA_OPEN_SCHEMA, err) != 0) return -1;
    t->schema = *data_dataset_schema(probe);
    data_dataset_close(probe);
    if (ckpt_data_id(c->data.train, t->data_id, sizeof(t->data_id), err) != 0) return -1;
    if (resolve_schema(&t->cfg_own, &t->schema, err) != 0) return -1;
    t->config_yaml = mm_config_to_yaml(c);
    if (data_audio_frames(&t->schema, &t->audio) < c->model.audio_group)
        return mm_fail(err, "%s: clips of %d samples give fewer than model.audio_group = %d "
                       "frames with data.n_fft = %d, data.hop = %d",
                       c->data.train, t->schema.audio_len, c->model.audio_group, c->data.n_fft,
                       c->data.hop);
    // the backend: one clear error for a layout it cannot run, whatever the model kind
    // bf16 activations wherever the precision says bf16 (both model kinds' ops take them)
    if (mm_backend_create(&t->be, c->backend, c->precision, 1, t->rank, err) != 0) return -1;
    if (mm_backend_check_layout(t->be, t->lay.dp_size, t->lay.tp_size, c->parallel.zero, err) != 0)
        return -1;
    if (t->be->desc[0]) {
        printf("%s\n", t->be->desc);
        fflush(stdout);
    }
    if (t->rank == 0 && mm_blas_fallback())
        printf("note: OpenBLAS does not know this CPU and loaded its %s kernels; this run uses its "
               "%s kernels, which the CPU supports (OPENBLAS_CORETYPE; set it to choose)\n",
               mm_blas_fallback(), getenv("OPENBLAS_CORETYPE"));
    int max_B = c->data.micro_batch > c->eval.batch ? c->data.micro_batch : c->eval.batch;
    if (estimate_memory(t, max_B, err) != 0) return -1;
    if (t->fam->create(t, max_B, err) != 0) return -1;
    optim_cfg oc = {.lr = c->optim.lr,
                    .min_lr = c->optim.min_lr,
                    .warmup = c->optim.warmup,
                    .total = c->run.steps,
                    .beta1 = c->optim.beta1,
                    .beta2 = c->optim.beta2,
                    .eps = c->optim.eps,
                    .weight_decay = c->optim.weight_decay,
                    .grad_clip = c->optim.grad_clip};
    gsync_init(&t->sync, &t->net, &t->lay, &oc, c->parallel.zero, c->parallel.bucket_mb);
    t->sync_ready = 1;
    if (train_apply_groups(t, err) != 0) return -1;
    if (t->rank == 0) {
        if (mm_mkdirs(c->run.out_dir, err) != 0) return -1;
        if (strcmp(c->checkpoint.resume, "auto") == 0) ckpt_clean_partial(c->run.out_dir);
    }
    return 0;
}

// Rank 0: run.tensorboard's event file, cut back to the resumed step as metrics.jsonl is.
// The lines metrics.jsonl already holds are in it from the earlier runs; a file started
// now (a first run, or a resumed one that had no TensorBoard) gets them all.
static int open_tensorboard(trainer *t, mm_err *err) {
    const mm_config *c = t->cfg;
    char dir[2 * MM_STR + 2];
    if (c->run.tensorboard[0] == '/')
        snprintf(dir, sizeof(dir), "%s", c->run.tensorboard);
    else
        snprintf(dir, sizeof(dir), "%s/%s", c->run.out_dir, c->run.tensorboard);
    mm_err e;
    if (tb_open(&t->tb, dir, t->step, &e) != 0) return mm_fail(err, "run.tensorboard: %s", e.msg);
    struct stat st;
    if (fstat(fileno(t->metrics), &st) != 0)
        return mm_fail(err, "%s: %s", t->metrics_path, strerror(errno));
    t->tb_mirrored = t->tb.created ? 0 : st.st_size;
    return 0;
}

// Stage 2: state (checkpoint), data and outputs.
static int init_state(trainer *t, mm_err *err) {
    const mm_config *c = t->cfg;
    data_pos pos = {0, 0};
    if (load_checkpoint(t, &pos, err) != 0) return -1;
    data_loader_cfg lc = {.dir = c->data.train,
                          .seed = c->run.seed,
                          .global_batch = c->data.global_batch,
                          .micro_batch = c->data.micro_batch,
                          .dp_rank = t->lay.dp_rank,
                          .dp_size = t->lay.dp_size,
                          .depth = c->data.prefetch,
                          .verify = c->data.verify,
                          .start = pos,
                          .audio = t->audio,
                          .augment = c->augment};
    if (data_loader_open(&t->loader, &lc, err) != 0) return -1;
    if (c->data.val[0]) {
        if (data_dataset_open(&t->val, c->data.val, c->data.verify, err) != 0) return -1;
        const data_schema *vs = data_dataset_schema(t->val);
        if (vs->img_h != t->schema.img_h || vs->img_w != t->schema.img_w ||
            vs->img_c != t->schema.img_c || vs->audio_len != t->schema.audio_len ||
            vs->audio_rate != t->schema.audio_rate || vs->text_max != t->schema.text_max)
            return mm_fail(err, "%s: validation schema differs from the training set %s",
                           c->data.val, c->data.train);
        t->val_feat = data_featurizer_new(vs, &t->audio);
        data_batch_alloc(&t->val_batch, c->eval.batch, vs, &t->audio);
    }
    if (c->data.trace && t->lay.tp_rank == 0) {  // tp ranks of a dp group read the same
        char path[MM_STR + 64];
        snprintf(path, sizeof(path), "%s/trace", c->run.out_dir);
        if (mm_mkdirs(path, err) != 0) return -1;
        snprintf(path, sizeof(path), "%s/trace/rank_%05d.txt", c->run.out_dir, t->rank);
        if (train_log_truncate(path, t->step, NULL, err) != 0) return -1;
        t->trace = fopen(path, "a");
        if (!t->trace) return mm_fail(err, "%s: cannot write: %s", path, strerror(errno));
    }
    if (c->run.trace) {
        t->timeline = mm_malloc(sizeof(trace_timeline));
        if (trace_init(t->timeline, c->run.out_dir, t->rank, t->be, err) != 0) {
            free(t->timeline);
            t->timeline = NULL;
            return -1;
        }
        gsync_trace(&t->sync, t->timeline);
    }
    if (t->rank == 0) {
        char path[MM_STR + 32];
        snprintf(path, sizeof(path), "%s/config.yaml", c->run.out_dir);
        if (mm_write_file_atomic(path, t->config_yaml, strlen(t->config_yaml), err) != 0)
            return -1;
        snprintf(path, sizeof(path), "%s/metrics.jsonl", c->run.out_dir);
        if (train_log_truncate(path, t->step, "\"step\":", err) != 0) return -1;
        snprintf(t->metrics_path, sizeof(t->metrics_path), "%s", path);
        t->metrics = fopen(path, "a+");  // + : tb_mirror reads the new lines back
        if (!t->metrics) return mm_fail(err, "%s: cannot write: %s", path, strerror(errno));
        if (c->run.tensorboard[0] && open_tensorboard(t, err) != 0) return -1;
        printf("--- resolved config (saved to %s/config.yaml) ---\n%s---\n", c->run.out_dir,
               t->config_yaml);
        printf("model: %zu parameters per rank, sequence %d tokens; %d rank(s) = dp %d x tp %d, "
               "%d thread(s) each; train %llu samples\n",
               t->net.n_params, t->fam->seq_len(t), t->world_size,
               t->lay.dp_size, t->lay.tp_size, omp_get_max_threads(),
               (unsigned long long)t->schema.n_samples);
        fflush(stdout);
    }
    return 0;
}

static int trainer_init(trainer *t, const mm_config *c, comm_group *world, mm_err *err) {
    memset(t, 0, sizeof(*t));
    t->cfg_own = *c;
    t->cfg = &t->cfg_own;
    c = t->cfg;
    t->world = world;
    t->rank = comm_rank(world);
    t->world_size = comm_size(world);
    t->audio = (data_audio_cfg){.n_fft = c->data.n_fft, .hop = c->data.hop,
                                .n_mels = c->data.n_mels};
    mm_rng_init(&t->rng, c->run.seed, 0x7472616eULL);  // "tran"
    t->fam = strcmp(c->model.kind, "diffusion") == 0 ? &train_family_dit : &train_family_lm;
    comm_set_timeout(world, c->run.collective_timeout);  // the groups below inherit it
    // the layout is collective and fails alike on every rank
    if (comm_layout_init(&t->lay, world, c->parallel.tp, err) != 0) return -1;
    // one job per run directory, and a writable one, before anything is read or written
    if (agree(world, t->rank == 0 ? claim_run_dir(t, err) : 0, err) != 0) return -1;
    if (agree(world, init_model(t, err), err) != 0) return -1;
    if (agree(world, init_state(t, err), err) != 0) return -1;
    gsync_upload_params(&t->sync);  // the checkpoint's / init_from's weights (if any)
    if (t->fam->sync_device) t->fam->sync_device(t);  // and the EMA's
    return 0;
}

// --------------------------------------------------------------------------------------
// the loop

int train_run(const mm_config *c, comm_group *world, mm_err *err) {
    trainer t;
    train_signals sigs;
    train_guard guard;
    train_signals_install(&sigs);  // early: a preemption during set-up still stops cleanly
    if (train_guard_init(&guard, c->optim.max_skips, err) != 0) {
        train_signals_restore(&sigs);
        return -1;
    }
    if (trainer_init(&t, c, world, err) != 0) {
        trainer_free(&t);
        train_guard_free(&guard);
        train_signals_restore(&sigs);
        return -1;
    }
    c = t.cfg;  // resolved
    const int G = c->data.global_batch;
    const int accum = G / (c->data.micro_batch * t.lay.dp_size);
    const double tokens_per_step = (double)G * t.fam->seq_len(&t);
    const int64_t first = t.step;
    double t_start = mm_now();
    trace_timeline *tl = t.timeline;  // NULL: tracing off (trace.h)
    while (t.step < c->run.steps) {
        double t0 = mm_now();
        trace_begin(tl, "zero grads", NULL, 0);
        gsync_zero_grads(&t.sync);
        trace_end(tl);
        train_guard_inject(&guard, t.step + 1, &t.net);
        double loss_sum = 0.0;
        for (int k = 0; k < accum; k++) {
            mm_err e;
            trace_begin(tl, "data wait", "micro_step", k);
            const data_batch *b = data_loader_next(t.loader, &e);
            trace_end(tl);
            if (!b) train_die(&t, e.msg);
            trace_event_at(tl, "load batch", TRACE_LOADER, "micro_step", k, b->load_t0,
                           b->load_t1 - b->load_t0);
            if (t.trace) {
                fprintf(t.trace, "%lld %d %d", (long long)t.step + 1, k, t.lay.dp_rank);
                for (int i = 0; i < b->B; i++)
                    fprintf(t.trace, " %llu", (unsigned long long)b->sample_id[i]);
                fputc('\n', t.trace);
                fflush(t.trace);  // a kill loses no line of a step before a checkpoint
            }
            if (k == accum - 1) gsync_arm(&t.sync);  // accumulation reduces once, at the end
            trace_begin(tl, "micro-step", "micro_step", k);
            trace_dev_begin(tl, "forward", "micro_step", k);  // the family begins "backward"
            loss_sum += t.fam->micro_step(&t, b);
            trace_dev_end(tl);
            trace_end(tl);
        }
        train_guard_fail_point(&guard, t.step + 1, t.rank);
        trace_begin(tl, "grad sync", NULL, 0);
        double gnorm = gsync_finish(&t.sync);
        // tp ranks hold the same loss; dp ranks hold parts of the global batch
        comm_allreduce_sum(t.lay.dp, &loss_sum, 1, COMM_F64);
        trace_end(tl);
        trace_begin(tl, "update", NULL, 0);
        double loss = loss_sum / G;
        double scale = 1.0;
        if (c->optim.grad_clip > 0 && gnorm > c->optim.grad_clip)
            scale = c->optim.grad_clip / (gnorm + 1e-6);
        double lr = optim_lr(&t.sync.opt.cfg, t.step);
        // a non-finite loss or gradient norm applies nothing (survive.h); alike on all ranks
        int skip = train_guard_check(&guard, t.world, t.step + 1, loss, gnorm, &t.net, err);
        if (skip < 0) {
            trainer_free(&t);
            train_guard_free(&guard);
            train_signals_restore(&sigs);
            return -1;
        }
        trace_dev_begin(tl, "optimizer", NULL, 0);
        if (!skip) gsync_update(&t.sync, t.step + 1, lr, scale);
        trace_dev_end(tl);
        trace_end(tl);
        double dt = mm_now() - t0;
        trace_step(tl, t.step + 1, t0, dt);
        if (tl && trace_full(tl)) trace_flush_or_die(&t);
        double wait = data_loader_take_wait(t.loader);
        const int64_t done = ++t.step;
        if (t.fam->after_update && !skip) t.fam->after_update(&t);

        if (t.rank == 0 && skip) {
            train_guard_log(&guard, t.metrics, done, loss, gnorm, lr);
            metrics_check(&t, 0);
        } else if (t.rank == 0) {
            double tps = tokens_per_step / dt;
            int wrc =
                fprintf(t.metrics,
                        "{\"step\":%lld,\"loss\":%.9g,\"lr\":%.9g,\"grad_norm\":%.9g,"
                        "\"tokens_per_s\":%.9g,\"data_wait\":%.9g,\"comm_exposed\":%.9g,"
                        "\"step_time\":%.9g}\n",
                        (long long)done, loss, lr, gnorm, tps, wait / dt, t.sync.exposed / dt, dt);
            metrics_check(&t, wrc);
            if (done == first + 1 && !t.be->caps.host_memory) {
                // every device buffer exists by now (scratch grows to its largest at the
                // first step and is kept): what the estimate must cover
                size_t avail = 0, total = 0;
                t.be->iface->mem_avail(t.be, &avail, &total);
                printf("memory: %.1f MiB in use on the device after step %lld (estimate %.1f "
                       "MiB)\n",
                       (total - avail) / 1048576.0, (long long)done, t.mem.total / 1048576.0);
            }
            if (done % c->run.log_every == 0 || done == c->run.steps || done == first + 1) {
                char eta[32];
                double per = (mm_now() - t_start) / (double)(done - first);
                fmt_eta(eta, sizeof(eta), per * (double)(c->run.steps - done));
                printf("step %6lld/%lld | loss %.6f | lr %.3e | grad_norm %.4f | %.0f tok/s | "
                       "data-wait %.1f%% | eta %s\n",
                       (long long)done, (long long)c->run.steps, loss, lr, gnorm, tps,
                       100.0 * wait / dt, eta);
                fflush(stdout);
                fflush(t.metrics);
            }
        }
        // stop_after ends the run early as a preemption would, keeping the schedule of
        // run.steps, so that a later resume continues the same run.
        int stop = c->run.stop_after > 0 && done == c->run.stop_after;
        // preemption: every rank stops after the same step, with a checkpoint (survive.h)
        int sig = train_signals_agree(t.world);
        if (sig) stop = 1;
        int last = done == c->run.steps;
        if (t.val && ((c->eval.every > 0 && done % c->eval.every == 0) || last)) {
            trace_begin(tl, "evaluation", "step", done);
            t.fam->evaluate(&t);
            if (t.rank == 0) metrics_check(&t, 0);  // its val line
            trace_end(tl);
        }
        if ((c->checkpoint.every > 0 && done % c->checkpoint.every == 0) || last || stop) {
            trace_begin(tl, "checkpoint", "step", done);
            save_checkpoint(&t);
            trace_end(tl);
            if (tl) trace_flush_or_die(&t);
        }
        if (stop && !last) {
            if (t.rank == 0 && sig)
                printf("%s received: stopped after step %lld with a checkpoint; run again "
                       "(checkpoint.resume: auto) to continue\n",
                       train_signal_name(sig), (long long)done);
            else if (t.rank == 0)
                printf("stopping after step %lld (run.stop_after)\n", (long long)done);
            break;
        }
    }
    if (t.rank == 0) metrics_check(&t, 0);  // the skip lines too (survive.c)
    if (tl) trace_flush_or_die(&t);
    if (tb_close(&t.tb) != 0) write_failed(&t, t.tb.path, errno);
    if (t.metrics) {
        int rc = fclose(t.metrics);
        t.metrics = NULL;
        if (rc != 0) {
            int e = errno;
            mm_fail(err, "%s: cannot write: %s%s", t.metrics_path, strerror(e),
                    e == ENOSPC ? " (disk full)" : "");
            trainer_free(&t);
            train_guard_free(&guard);
            train_signals_restore(&sigs);
            return -1;
        }
    }
    if (t.rank == 0 && t.step == first)
        printf("nothing to do: the checkpoint is already at run.steps = %lld\n",
               (long long)c->run.steps);
    trainer_free(&t);
    train_guard_free(&guard);
    train_signals_restore(&sigs);
    return 0;
}
