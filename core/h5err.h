// h5err.h: HDF5 failures as one-line mm_err messages. HDF5 reports a failed call by printing
// its whole error stack to stderr, which would bury the one line our entry points print. Every
// module that calls HDF5 (the shard writer and reader, checkpoints, the weights export) wraps
// its calls in a quiet scope: for the scope's duration and for the calling thread only (the
// setting is per thread in HDF5's thread-safe build), a handler records the innermost message
// of each failed call instead of printing it, and the caller's handler comes back at the end.
// Recording at the failure matters: the next successful call (closing a dataspace on the way
// out, say) clears HDF5's stack, so the reason could not be fetched later.
//
// A header of its own rather than a part of core.h: it needs hdf5.h, which builds without
// HDF5 (the CUDA op tests) must not.
#ifndef MM_H5ERR_H
#define MM_H5ERR_H

#include <hdf5.h>

#define MM_H5_WHY_LEN 256

// One quiet scope. Lives on the caller's stack.
typedef struct {
    H5E_auto2_t func;  // the caller's handler and its data, restored by mm_h5_quiet_end
    void *data;
    char last[MM_H5_WHY_LEN];  // innermost message of the latest failed HDF5 call
} mm_h5_quiet;

// Starts a quiet scope for the calling thread. q must stay in place until mm_h5_quiet_end
// (the handler writes into q->last). Scopes nest: an inner one records into its own q and
// gives the outer one back at its end.
void mm_h5_quiet_begin(mm_h5_quiet *q);
void mm_h5_quiet_end(mm_h5_quiet *q);

// Copies into buf, and returns, the innermost message of the latest failed HDF5 call in the
// calling thread's current quiet scope: what goes after "file: what failed: " in an mm_err.
// "unknown HDF5 error" outside a scope or before any failure. Helpers deep in a reader use it
// without being handed the scope.
const char *mm_h5_why(char buf[MM_H5_WHY_LEN]);

// Closes *id with close (H5Dclose, H5Fclose, ...) when it is open, and marks it closed, so
// that error paths can close everything they may hold without tracking what got opened.
void mm_h5_close(hid_t *id, herr_t (*close)(hid_t));

#endif  // MM_H5ERR_H
