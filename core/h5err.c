// h5err.c: the quiet scopes of h5err.h: HDF5's error stack printing replaced, per thread, by
// a handler that keeps the innermost message for the mm_err the caller writes.
#include "h5err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define UNKNOWN "unknown HDF5 error"

// What the walk collects: the innermost message, and the system error of a failed read or
// write when HDF5's sec2 driver names one ("..., errno = 28, error message = 'No space left
// on device', ...").
typedef struct {
    char inner[MM_H5_WHY_LEN];
    int sys_errno;  // 0 when no entry names one
    char sys_msg[96];
    int fclose_failed;  // the failed call is an H5Fclose
} walk_state;

// Walked upward, entry 0 is the innermost failure: the most specific reason, rather than the
// generic one of the API call the caller made.
static herr_t walk_innermost(unsigned n, const H5E_error2_t *e, void *data) {
    walk_state *w = data;
    // HDF5's stack holds 32 entries: a full disk's close overflows it before H5Fclose's own
    // entry, so the file's destructor (H5F__dest) and close paths count as well.
    if (e->func_name &&
        (strcmp(e->func_name, "H5Fclose") == 0 || strcmp(e->func_name, "H5F__dest") == 0 ||
         strcmp(e->func_name, "H5F_try_close") == 0 || strcmp(e->func_name, "H5F__close_cb") == 0))
        w->fclose_failed = 1;
    if (!e->desc || !e->desc[0]) return 0;
    if (n == 0) snprintf(w->inner, sizeof(w->inner), "%s", e->desc);
    const char *en = strstr(e->desc, "errno = ");
    if (en && !w->sys_errno) {
        w->sys_errno = atoi(en + 8);
        const char *m = strstr(e->desc, "error message = '");
        if (m) {
            m += strlen("error message = '");
            const char *q = strchr(m, '\'');
            int len = q ? (int)(q - m) : (int)strlen(m);
            if (len > (int)sizeof(w->sys_msg) - 1) len = (int)sizeof(w->sys_msg) - 1;
            snprintf(w->sys_msg, sizeof(w->sys_msg), "%.*s", len, m);
        }
    }
    return 0;
}

// Writes into out (MM_H5_WHY_LEN bytes) the reason an mm_err quotes: "disk full (No space
// left on device)" for ENOSPC and EDQUOT, the system's message for another system error,
// else HDF5's innermost message, cut at a word boundary with "..." when it is too long.
static void summarize(const walk_state *w, char *out) {
    if (w->sys_errno == 28 /* ENOSPC */ || w->sys_errno == 122 /* EDQUOT */) {
        snprintf(out, MM_H5_WHY_LEN, "disk full (%s)",
                 w->sys_msg[0] ? w->sys_msg : "No space left on device");
        return;
    }
    if (w->sys_errno && w->sys_msg[0]) {
        snprintf(out, MM_H5_WHY_LEN, "%s", w->sys_msg);
        return;
    }
    const size_t max = MM_H5_WHY_LEN - 4;
    size_t n = strlen(w->inner);
    if (n <= max) {
        snprintf(out, MM_H5_WHY_LEN, "%s", w->inner);
        return;
    }
    size_t cut = max;
    while (cut > max / 2 && w->inner[cut] != ' ') cut--;
    while (cut > 0 && (w->inner[cut - 1] == ' ' || w->inner[cut - 1] == ',')) cut--;
    snprintf(out, MM_H5_WHY_LEN, "%.*s...", (int)cut, w->inner);
}

static herr_t record(hid_t estack, void *data) {  // the quiet scopes' handler
    walk_state w;
    memset(&w, 0, sizeof(w));
    snprintf(w.inner, sizeof(w.inner), UNKNOWN);
    H5Ewalk2(estack, H5E_WALK_UPWARD, walk_innermost, &w);
    summarize(&w, (char *)data);
    // An H5Fclose that failed inside a quiet scope, whoever called it (mm_h5_fclose or not)
    if (w.fclose_failed) mm_h5_file_close_failed();
    return 0;
}

void mm_h5_quiet_begin(mm_h5_quiet *q) {
    H5Eget_auto2(H5E_DEFAULT, &q->func, &q->data);
    snprintf(q->last, sizeof(q->last), UNKNOWN);
    H5Eset_auto2(H5E_DEFAULT, record, q->last);
}

void mm_h5_quiet_end(mm_h5_quiet *q) {
    H5Eset_auto2(H5E_DEFAULT, q->func, q->data);
}

const char *mm_h5_why(char buf[MM_H5_WHY_LEN]) {
    H5E_auto2_t f;
    void *d;
    snprintf(buf, MM_H5_WHY_LEN, UNKNOWN);
    if (H5Eget_auto2(H5E_DEFAULT, &f, &d) >= 0 && f == record && d)
        snprintf(buf, MM_H5_WHY_LEN, "%s", (const char *)d);
    return buf;
}

// After a failed H5Fclose, HDF5 (1.10) keeps the file's ID with a half-freed file struct;
// its exit-time cleanup (H5_term_library, an atexit handler registered at the first HDF5
// call) then dereferences it (SIGSEGV in H5F__close_cb) or prints "HDF5: infinite loop
// closing library". A failed file close is always an error the program reports and stops
// on, so from then on the exit skips HDF5's cleanup: a handler registered after HDF5's runs
// first, flushes stdio and leaves with the exit's own status. Files still open then are not
// flushed; in an error exit nothing the program wrote is committed through them.
static int poisoned;

static void exit_past_hdf5(int status, void *arg) {
    (void)arg;
    fflush(NULL);
    _exit(status);
}

void mm_h5_file_close_failed(void) {
    if (__atomic_exchange_n(&poisoned, 1, __ATOMIC_SEQ_CST)) return;
    on_exit(exit_past_hdf5, NULL);
}

herr_t mm_h5_fclose(hid_t *id) {
    herr_t rc = 0;
    if (*id >= 0) {
        rc = H5Fclose(*id);
        if (rc < 0) mm_h5_file_close_failed();
    }
    *id = H5I_INVALID_HID;
    return rc;
}

void mm_h5_close(hid_t *id, herr_t (*close)(hid_t)) {
    if (close == H5Fclose) {
        mm_h5_fclose(id);
        return;
    }
    if (*id >= 0) close(*id);
    *id = H5I_INVALID_HID;
}
