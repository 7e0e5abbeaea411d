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

// The reason recorded for a failed write names the system error where HDF5's driver reports
// one: "disk full (No space left on device)" for ENOSPC/EDQUOT, else the system's message;
// HDF5's own messages longer than the buffer are cut at a word boundary and end in "...".

// Closes *id with close (H5Dclose, H5Fclose, ...) when it is open, and marks it closed, so
// that error paths can close everything they may hold without tracking what got opened.
// With H5Fclose it is mm_h5_fclose.
void mm_h5_close(hid_t *id, herr_t (*close)(hid_t));

// Every H5Fclose goes through this: closes *id when open, marks it closed (never closed
// twice), and returns H5Fclose's result. A failed close (a full disk flushing the file)
// leaves HDF5 unable to shut down: its exit-time cleanup would crash (SIGSEGV) or print
// "HDF5: infinite loop closing library". So after one, the process's exit skips HDF5's
// cleanup (mm_h5_file_close_failed), keeping the caller's exit status and its one error line.
herr_t mm_h5_fclose(hid_t *id);
// What mm_h5_fclose does after a failed close, for a caller that closed a file itself.
void mm_h5_file_close_failed(void);

#endif  // MM_H5ERR_H
