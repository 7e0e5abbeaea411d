// fuzz_manifest.c: libFuzzer harness for the manifest parser (data/manifest.c). The first
// byte picks the type (even: .jsonl, odd: .csv), the rest is the file. Any content must give
// records or a one-line error naming the file, never a crash.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../data/data.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char path[512];
    snprintf(path, sizeof(path), "%s/m.%s", fuzz_scratch(), data[0] % 2 ? "csv" : "jsonl");
    fuzz_write(path, data + 1, size - 1);
    data_manifest m;
    mm_err err;
    if (data_manifest_read(path, NULL, &m, &err) == 0)
        data_manifest_free(&m);
    else if (!err.msg[0] || strchr(err.msg, '\n')) abort();
    return 0;
}
