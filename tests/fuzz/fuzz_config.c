// fuzz_config.c: libFuzzer harness for the YAML config loader (train/config.c): any text
// must give a config or a one-line error, never a crash; and a config that loads must
// survive its own round trip (mm_config_to_yaml, loaded again, gives the same YAML).
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../train/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    mm_config c, again;
    mm_err err;
    if (mm_config_load_string(&c, text, "fuzz.yaml", &err) == 0) {
        mm_config_validate(&c, &err);
        char *yaml = mm_config_to_yaml(&c);
        if (mm_config_load_string(&again, yaml, "round trip", &err) != 0) abort();
        char *yaml2 = mm_config_to_yaml(&again);
        if (strcmp(yaml, yaml2) != 0) abort();
        free(yaml2);
        free(yaml);
    } else if (!err.msg[0] || strchr(err.msg, '\n')) {
        abort();  // an error is one non-empty line
    }
    free(text);
    return 0;
}
