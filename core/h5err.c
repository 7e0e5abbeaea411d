// h5err.c: the quiet scopes of h5err.h: HDF5's error stack printing replaced, per thread, by
// a handler that keeps the innermost message for the mm_err the caller writes.
#include "h5err.h"

#include <stdio.h>

#define UNKNOWN "unknown HDF5 error"

// Walked upward, entry 0 is the innermost failure: the most specific reason, rather than the
// generic one of the API call the caller made.
static herr_t walk_innermost(unsigned n, const H5E_error2_t *e, void *data) {
    if (n == 0 && e->desc && e->desc[0]) snprintf((char *)data, MM_H5_WHY_LEN, "%s", e->desc);
    return 0;
}

static herr_t record(hid_t estack, void *data) {
    snprintf((char *)data, MM_H5_WHY_LEN, UNKNOWN);
    H5Ewalk2(estack, H5E_WALK_UPWARD, walk_innermost, data);
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

void mm_h5_close(hid_t *id, herr_t (*close)(hid_t)) {
    if (*id >= 0) close(*id);
    *id = H5I_INVALID_HID;
}
