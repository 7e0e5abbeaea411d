// h5canon.c: exists so that tests/backend_ref.sh can hash an HDF5 file (an export, a
// checkpoint's rank file) by its content alone. The files themselves differ between two
// writes of the same tensors, because HDF5 stores each object's creation time in its header
// (and a checksum over it), so `sha256sum FILE.h5` cannot pin them. This prints a canonical
// byte stream instead: every group and dataset by path in name order, each with its
// attributes in name order (name, type class, size, shape, raw bytes as stored), and each
// dataset's type, shape and raw bytes. Equal streams mean equal names, shapes, attribute
// values and tensor bits. With --tensors: dataset paths, shapes and bits only (no attributes),
// to tell "the numbers differ" from "only the metadata differs". Not part of the build (the Makefile does not see tests/ref/);
// backend_ref.sh compiles it on the fly against the same HDF5 the project links.
//
//   h5canon [--tensors] FILE.h5 | sha256sum
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failed, tensors_only;

static void put_u64(uint64_t v) { fwrite(&v, sizeof(v), 1, stdout); }
static void put_str(const char *s) {
    put_u64(strlen(s));
    fwrite(s, 1, strlen(s), stdout);
}

// type class, size and shape, then the raw bytes (read in the stored type: no conversion)
static void put_data(hid_t type, hid_t space, int is_attr, hid_t obj) {
    put_u64((uint64_t)H5Tget_class(type));
    size_t tsize = H5Tget_size(type);
    put_u64(tsize);
    int nd = H5Sget_simple_extent_ndims(space);
    if (nd < 0) {
        failed = 1;
        return;
    }
    hsize_t dims[32] = {0};
    if (nd > 32) nd = 32;
    H5Sget_simple_extent_dims(space, dims, NULL);
    put_u64((uint64_t)nd);
    size_t n = 1;
    for (int d = 0; d < nd; d++) {
        put_u64(dims[d]);
        n *= dims[d];
    }
    if (H5Tis_variable_str(type) > 0) {  // the project writes none; refuse rather than guess
        fprintf(stderr, "h5canon: variable-length string found\n");
        failed = 1;
        return;
    }
    size_t bytes = n * tsize;
    unsigned char *buf = calloc(bytes ? bytes : 1, 1);
    herr_t rc = is_attr ? H5Aread(obj, type, buf) : H5Dread(obj, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf);
    if (rc < 0) failed = 1;
    put_u64(bytes);
    fwrite(buf, 1, bytes, stdout);
    free(buf);
}

static herr_t on_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op) {
    (void)info;
    (void)op;
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    if (a < 0) {
        failed = 1;
        return 0;
    }
    hid_t t = H5Aget_type(a), s = H5Aget_space(a);
    put_str("attr");
    put_str(name);
    put_data(t, s, 1, a);
    H5Sclose(s);
    H5Tclose(t);
    H5Aclose(a);
    return 0;
}

static void walk(hid_t o, const char *path);

#if H5_VERSION_GE(1, 12, 0)
typedef H5L_info2_t link_info;
#else
typedef H5L_info_t link_info;
#endif

// one link of a group, in name order: the object it names, then (for a group) its members
static herr_t on_link(hid_t g, const char *name, const link_info *info, void *op) {
    (void)info;
    const char *parent = op;
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", strcmp(parent, "/") == 0 ? "" : parent, name);
    hid_t o = H5Oopen(g, name, H5P_DEFAULT);
    if (o < 0) {
        failed = 1;
        return 0;
    }
    walk(o, path);
    H5Oclose(o);
    return 0;
}

static void walk(hid_t o, const char *path) {
    H5I_type_t kind = H5Iget_type(o);
    if (kind != H5I_GROUP && kind != H5I_DATASET) {
        fprintf(stderr, "h5canon: %s: unexpected object type\n", path);
        failed = 1;
        return;
    }
    hsize_t idx = 0;
    if (!tensors_only) {
        put_str(kind == H5I_GROUP ? "group" : "dataset");
        put_str(path);
        if (H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_INC, &idx, on_attr, NULL) < 0) failed = 1;
    } else if (kind == H5I_DATASET) {
        put_str(path);
    }
    if (kind == H5I_DATASET) {
        hid_t t = H5Dget_type(o), s = H5Dget_space(o);
        put_data(t, s, 0, o);
        H5Sclose(s);
        H5Tclose(t);
        return;
    }
    idx = 0;
    if (H5Literate(o, H5_INDEX_NAME, H5_ITER_INC, &idx, on_link, (void *)path) < 0) failed = 1;
}

int main(int argc, char **argv) {
    tensors_only = argc == 3 && strcmp(argv[1], "--tensors") == 0;
    if (argc != 2 + tensors_only) {
        fprintf(stderr, "usage: h5canon [--tensors] FILE.h5 (canonical content on stdout)\n");
        return 2;
    }
    const char *path = argv[argc - 1];
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        fprintf(stderr, "h5canon: cannot open %s\n", path);
        return 1;
    }
    put_str("mmtrain-h5canon 1");
    hid_t root = H5Gopen2(f, "/", H5P_DEFAULT);
    if (root < 0) failed = 1;
    else {
        walk(root, "/");
        H5Gclose(root);
    }
    H5Fclose(f);
    fflush(stdout);
    if (failed) fprintf(stderr, "h5canon: %s: could not read everything\n", path);
    return failed ? 1 : 0;
}
