# Makefile: builds mmtrain's binaries and tests with plain make; no generator needed.
#   make          build/train, build/mmdata and the tests
#   make deps     install the Debian packages it needs when they are missing
#   make test     the whole test suite (ASAN=1 for AddressSanitizer + UBSan)
#   make demo     synthesize a dataset, train the tiny config with mpirun, print the result
#   make demo-diffusion   the same for the diffusion model: sample grid + conditional accuracy
#   make bench    throughput benchmarks (see README "Performance")
#   make real-data  build the project's own real paired set (data/real/README.md)
#   make cuda     + the CUDA backend and NCCL into build-cuda/ (see the CUDA section below)

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
  # no -march: the binaries run on any x86-64. The CPU backend's hot loops are compiled once
  # per x86-64 level and take the machine's at load time (model/cpu/cpu_isa.h); OpenBLAS
  # picks its own kernels. OPT="-O3 -march=native" builds for the build machine alone.
  OPT ?= -O3
endif
# CPU_ISA=x86-64-v3 (or x86-64, x86-64-v4): those loops for that level only, not cloned;
# tests/cpu_isa.sh builds each level and checks that they compute the same bits
CPU_ISA ?=
# -fno-math-errno: a loop calling sqrtf (AdamW) vectorizes only when sqrtf need not set errno;
# no result changes (nothing reads errno after a math function).
CFLAGS := -std=c11 -Wall -Wextra -Werror -g $(OPT) -fno-math-errno -fopenmp -D_GNU_SOURCE $(MPI_DEFS) \
          $(if $(CPU_ISA),-DMM_CPU_ISA='"arch=$(CPU_ISA)"') -I. -I$(BLAS_INC) $(PKG_CFLAGS)
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
MODEL_SRC := $(wildcard model/*.c model/cpu/*.c)
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

# --- CUDA (make cuda, make cuda-emu) ---------------------------------------------------
# `make cuda`: the build above plus the CUDA backend (model/*.cu by nvcc, SASS for sm_80 and
# sm_90 plus sm_90 PTX) and NCCL (comm/comm_nccl.c with -DMM_HAVE_NCCL=1), linked against
# cudart, cuBLAS(Lt) and NCCL into build-cuda/: train, mmdata and the GPU programs
# tests/gpu/*.c. Compiles and links without a GPU. `make cuda-emu`: the CUDA backend built by
# the host C++ compiler against the CPU emulation of tests/gpu/cuda_emu.h, and
# tests/gpu/test_ops_cuda and test_act16_cuda with it, into build-cuda-emu/ (no toolkit
# needed; ASAN=1 works).
# Both re-enter make with CUDA=1 / CUDA_EMU=1; without them this section adds nothing, so the
# plain build never compiles a .cu file nor references a CUDA symbol.
# (the targets below come before `all`: keep `all` the default goal)
.DEFAULT_GOAL := all
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v nvcc 2>/dev/null || echo /usr/local/cuda/bin/nvcc))
NVCC ?= $(CUDA_HOME)/bin/nvcc
CUDA_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
CU_SRC := $(wildcard model/cuda/*.cu)
CU_HDR := $(wildcard model/*.h model/cuda/*.h core/*.h comm/*.h)
GPU_SRC := $(wildcard tests/gpu/*.c)

.PHONY: cuda cuda-ops cuda-emu cuda-all cuda-ops-all cuda-emu-all
cuda:
ifeq ($(ASAN),1)
	@echo "make cuda: not with ASAN=1 (ASan and the CUDA driver clash); try make cuda-emu ASAN=1"; exit 1
endif
ifeq ($(HAVE_NVCC),1)
	@$(MAKE) --no-print-directory BUILD=build-cuda CUDA=1 cuda-all
else
	@echo "make cuda: nvcc not found (PATH, /usr/local/cuda/bin): install the CUDA toolkit"; exit 1
endif

# the GPU op test and benchmark alone (core, the CPU ops, train/optim.c, the CUDA backend):
# no HDF5/libyaml/... needed, for a GPU machine that lacks them (tests/gpu/run.sh)
cuda-ops:
ifeq ($(HAVE_NVCC),1)
	@$(MAKE) --no-print-directory BUILD=build-cuda-ops CUDA=1 CUDA_MIN=1 cuda-ops-all
else
	@echo "make cuda-ops: nvcc not found (PATH, /usr/local/cuda/bin): install the CUDA toolkit"; exit 1
endif

cuda-emu:
	@$(MAKE) --no-print-directory BUILD=build-cuda-emu$(if $(filter 1,$(ASAN)),-asan) CUDA_EMU=1 \
	    cuda-emu-all

ifeq ($(CUDA),1)
  NCCL_DEFS := $(if $(filter 1,$(HAVE_NCCL)),-DMM_HAVE_NCCL=1)
  CFLAGS += -I$(CUDA_HOME)/include $(NCCL_DEFS) -DMM_HAVE_CUDA=1
  # no FMA contraction: AdamW/EMA then match train/optim.c's float arithmetic bit for bit
  NVFLAGS := -std=c++20 -O3 --fmad=false -lineinfo $(CUDA_ARCH) -I. -I$(CUDA_HOME)/include \
             -D_GNU_SOURCE $(NCCL_DEFS) -Xcompiler -Wall,-Wextra,-Werror
  LIB_OBJ += $(CU_SRC:%.cu=$(OBJ)/%.o)
  ifeq ($(CUDA_MIN),1)
    LIB_OBJ := $(patsubst %,$(OBJ)/%.o,core/core comm/comm comm/comm_nccl model/layout \
               model/backend model/cpu/backend_cpu model/cpu/ops_cpu model/cpu/ops_conv_cpu model/cpu/ops_glue_cpu \
               model/cpu/ops_dit_cpu model/block model/dit_block model/diffusion model/diffusion_sched \
               train/optim) $(CU_SRC:%.cu=$(OBJ)/%.o)
  endif
  LDLIBS += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcublasLt -lcudart \
            $(if $(filter 1,$(HAVE_NCCL)),-lnccl) -lstdc++
  GPU_BIN := $(GPU_SRC:tests/gpu/%.c=$(BUILD)/tests/gpu/%)
  ifneq ($(HAVE_NCCL),1)
    GPU_BIN := $(filter-out %/test_comm_nccl,$(GPU_BIN))
  endif
cuda-all: info $(BUILD)/train $(BUILD)/mmdata $(GPU_BIN)
	@$(if $(filter 1,$(HAVE_NCCL)),true,echo "make cuda: NCCL not found: built without it (no test_comm_nccl)")
cuda-ops-all: $(BUILD)/tests/gpu/test_ops_cuda $(BUILD)/tests/gpu/test_act16_cuda \
              $(BUILD)/tests/gpu/bench_ops_cuda

$(OBJ)/%.o: %.cu $(CU_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@
endif

ifeq ($(CUDA_EMU),1)
  EMU_DEFS := -DMM_CUDA_EMU -include tests/gpu/cuda_emu.h
  EMU_CXXFLAGS := -std=c++20 -Wall -Wextra -Werror -g $(if $(filter 1,$(ASAN)),-O1,-O2) \
                  -ffp-contract=off -D_GNU_SOURCE -I. -I$(BLAS_INC) $(EMU_DEFS)
  ifeq ($(ASAN),1)
    EMU_CXXFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer \
                    -fno-sanitize-recover=undefined
  endif
  # only what the op tests need: the CPU reference ops, train/optim.c, core
  EMU_OBJ := $(patsubst %,$(OBJ)/%.o,core/core comm/comm comm/comm_nccl model/layout \
             model/backend model/cpu/backend_cpu model/cpu/ops_cpu model/cpu/ops_conv_cpu model/cpu/ops_glue_cpu \
             model/cpu/ops_dit_cpu model/block model/dit_block model/diffusion model/diffusion_sched \
             train/optim) \
             $(CU_SRC:%.cu=$(OBJ)/%.o) $(OBJ)/tests/gpu/cuda_emu.o
  # and the whole trainer on the emulated GPU (backend: cuda runs here, slowly: tiny configs)
  CFLAGS += $(EMU_DEFS) -DMM_HAVE_CUDA=1
  LIB_OBJ += $(CU_SRC:%.cu=$(OBJ)/%.o) $(OBJ)/tests/gpu/cuda_emu.o
  LDLIBS += -lstdc++
cuda-emu-all: $(BUILD)/tests/gpu/test_ops_cuda $(BUILD)/tests/gpu/test_act16_cuda $(BUILD)/train \
              $(BUILD)/mmdata

$(BUILD)/tests/gpu/test_%_cuda: $(OBJ)/tests/gpu/test_%_cuda.o $(EMU_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS) -lstdc++

$(OBJ)/tests/gpu/%.o: CFLAGS += $(EMU_DEFS)
$(OBJ)/%.o: %.cu $(CU_HDR) tests/gpu/cuda_emu.h
	@mkdir -p $(dir $@)
	$(CXX) -x c++ $(EMU_CXXFLAGS) -c $< -o $@
$(OBJ)/tests/gpu/cuda_emu.o: tests/gpu/cuda_emu.cc tests/gpu/cuda_emu.h
	@mkdir -p $(dir $@)
	$(CXX) $(EMU_CXXFLAGS) -c $< -o $@
endif

BINS := $(BUILD)/train $(BUILD)/mmdata

.PHONY: all deps test demo demo-diffusion bench clean info real-data
# keep test and bench objects (they are intermediate files of pattern chains)
.SECONDARY:
all: info $(BINS) $(TEST_BIN) $(BENCH_BIN)

info:
	@echo "mmtrain: MPI=$(HAVE_MPI) CUDA(nvcc)=$(HAVE_NVCC) NCCL=$(HAVE_NCCL) ASAN=$(if $(ASAN),$(ASAN),0)"
	@pkg-config --exists $(PKGS) || { echo "missing libraries: run 'make deps' (Debian) or see README 'Dependencies'"; exit 1; }

$(OBJ)/%.o: %.c $(wildcard */*.h */*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(OBJ64)/%.o: %.c $(wildcard */*.h */*/*.h)
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

real-data: $(BUILD)/mmdata
	@bash data/real/fashion_speech.sh --mmdata $(BUILD)/mmdata

clean:
	rm -rf $(BUILD)

# --- fuzzing (make fuzz) ---------------------------------------------------------------
# libFuzzer harnesses (tests/fuzz/fuzz_*.c) for the readers of files someone else wrote:
# the YAML config loader, the dataset reader (index + shard), the checkpoint reader, the
# manifest parser and the image decoders. Built by clang with ASan + UBSan into build-fuzz/
# (the readers compiled without MPI: a single-rank comm layer). `make fuzz` runs each harness for FUZZ_SECONDS
# (default 60) from its seed corpus tests/fuzz/corpus/<name>/ and replays the crashes found
# so far (tests/fuzz/regress/<name>/); tests/fuzz.sh is the short pass `make test` runs.
FUZZ_DIR := build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_NAMES := config shard ckpt manifest image
FUZZ_CFLAGS := -std=c11 -Wall -Wextra -Werror -Wno-unknown-pragmas -g -O1 -D_GNU_SOURCE \
               -fno-omit-frame-pointer -fsanitize=address,undefined \
               -fno-sanitize-recover=undefined -I. -I$(BLAS_INC) $(PKG_CFLAGS)
FUZZ_LIB_SRC := $(CORE_SRC) comm/comm.c $(DATA_SRC) train/config.c train/ckpt.c
FUZZ_LIB_OBJ := $(FUZZ_LIB_SRC:%.c=$(FUZZ_DIR)/obj/%.o)
FUZZ_BIN := $(FUZZ_NAMES:%=$(FUZZ_DIR)/fuzz_%)

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BIN)
fuzz: fuzz-build
	@bash tests/fuzz/run.sh $(FUZZ_DIR) $(FUZZ_SECONDS)

$(FUZZ_DIR)/obj/%.o: %.c $(wildcard */*.h) tests/fuzz/fuzz.h
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/fuzz_%: $(FUZZ_DIR)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined $^ -o $@ $(PKG_LIBS) -lz -lpthread -lm
