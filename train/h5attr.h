// h5attr.h: the HDF5 attribute writers the train/ files share (checkpoints in ckpt.c, the
// exported weights in export.c), so both formats spell attributes the same way: numbers with
// an explicit little-endian file type, strings fixed-length and NUL-padded (no variable-length
// types anywhere in our files). Internal to train/; defined in ckpt.c.
#ifndef MM_TRAIN_H5ATTR_H
#define MM_TRAIN_H5ATTR_H

#include <hdf5.h>

// n values of mem_type (n == 0: one scalar) stored as file_type. 0, or -1 on HDF5 failure.
int h5attr_write(hid_t loc, const char *name, hid_t file_type, hid_t mem_type, int n,
                 const void *buf);
// A fixed-length string attribute. 0, or -1 on HDF5 failure.
int h5attr_write_str(hid_t loc, const char *name, const char *s);

#endif
