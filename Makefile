# Makefile: builds mmtrain's binaries and tests with plain make; no generator needed.
#   make          build/train, build/mmdata and the tests
#   make deps     install the Debian packages it needs when they are missing
#   make test     the whole test suite (ASAN=1 for AddressSanitizer + UBSan)
#   make demo     synthesize a dataset, train the tiny config with mpirun, print the result
#   make demo-diffusion   the same for the diffusion model: sample grid + conditional accuracy
#   make bench    throughput benchmarks (see README "Performance")

SHELL := /bin/bash
# sanitizer objects must not mix with optimized ones
ifeq ($(ASAN),1)
  BUILD ?= build-asan
else
  BUILD ?= build
endif
OBJ := $(BUILD)/obj
OBJ64 := $(BUILD)/obj64

# --- optional parts -------------------------------------------------------------------
HAVE_MPI := $(shell command -v mpicc >/dev/null 2>&1 && echo 1 || echo 0)
HAVE_NVCC := $(shell command -v nvcc >/dev/null 2>&1 && echo 1 || { test -x /usr/local/cuda/bin/nvcc && echo 1; } || echo 0)
HAVE_NCCL := $(shell test -f /usr/include/nccl.h -o -f /usr/local/cuda/include/nccl.h && echo 1 || echo 0)

ifeq ($(HAVE_MPI),1)
  CC := mpicc
  MPI_DEFS := -DMM_HAVE_MPI=1
else
  CC ?= cc
  MPI_DEFS :=
endif

BLAS_INC := /usr/include/x86_64-linux-gnu/openblas-openmp
BLAS_LIB := /usr/lib/x86_64-linux-gnu/openblas-openmp
PKGS := hdf5-serial yaml-0.1 fftw3f fftw3 libpng sndfile libturbojpeg soxr
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

ifeq ($(ASAN),1)
  OPT ?= -O1
else
  OPT ?= -O3 -march=native
endif
CFLAGS := -std=c11 -Wall -Wextra -Werror -g $(OPT) -fopenmp -D_GNU_SOURCE $(MPI_DEFS) \
          -I. -I$(BLAS_INC) $(PKG_CFLAGS)
LDLIBS := $(PKG_LIBS) -L$(BLAS_LIB) -Wl,-rpath,$(BLAS_LIB) -lopenblas -lz -lpthread -lm
LDFLAGS := -fopenmp

ifeq ($(ASAN),1)
  CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif

# --- sources --------------------------------------------------------------------------
CORE_SRC := $(wildcard core/*.c)
COMM_SRC := $(wildcard comm/*.c)
DATA_SRC := $(filter-out data/mmdata.c,$(wildcard data/*.c))
MODEL_SRC := $(wildcard model/*.c)
TRAIN_SRC := $(filter-out train/main.c,$(wildcard train/*.c))
LIB_SRC := $(CORE_SRC) $(COMM_SRC) $(DATA_SRC) $(MODEL_SRC) $(TRAIN_SRC)
LIB_OBJ := $(LIB_SRC:%.c=$(OBJ)/%.o)
# the model compiled in float64 for gradient checks
LIB64_SRC := $(CORE_SRC) $(COMM_SRC) $(MODEL_SRC)
LIB64_OBJ := $(LIB64_SRC:%.c=$(OBJ64)/%.o)

TEST_SRC := $(wildcard tests/test_*.c)
TEST64_SRC := $(wildcard tests/test64_*.c)
TEST_SRC := $(filter-out $(TEST64_SRC),$(TEST_SRC))
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%) $(TEST64_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_SRC := $(wildcard tests/bench/*.c)
BENCH_BIN := $(BENCH_SRC:tests/bench/%.c=$(BUILD)/bench/%)

BINS := $(BUILD)/train $(BUILD)/mmdata

.PHONY: all deps test demo demo-diffusion bench clean info
# keep test and bench objects (they are intermediate files of pattern chains)
.SECONDARY:
all: info $(BINS) $(TEST_BIN) $(BENCH_BIN)

info:
	@echo "mmtrain: MPI=$(HAVE_MPI) CUDA(nvcc)=$(HAVE_NVCC) NCCL=$(HAVE_NCCL) ASAN=$(if $(ASAN),$(ASAN),0)"
	@pkg-config --exists $(PKGS) || { echo "missing libraries: run 'make deps' (Debian) or see README 'Dependencies'"; exit 1; }

$(OBJ)/%.o: %.c $(wildcard */*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(OBJ64)/%.o: %.c $(wildcard */*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -DMM_F64 -c $< -o $@

$(BUILD)/train: $(OBJ)/train/main.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/mmdata: $(OBJ)/data/mmdata.o $(LIB_OBJ)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/test64_%: $(OBJ64)/tests/test64_%.o $(LIB64_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: $(OBJ)/tests/%.o $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/bench/%: $(OBJ)/tests/bench/%.o $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

deps:
	@bash launch/deps.sh

test: all
	@bash tests/run.sh $(BUILD)

demo:
	@bash launch/demo.sh

demo-diffusion:
	@bash launch/demo.sh diffusion

bench: all
	@bash tests/bench/run.sh $(BUILD)

clean:
	rm -rf $(BUILD)
