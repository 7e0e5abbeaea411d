# emu.sh: sourced (not run) by the script tests that use the CUDA emulation build
# (tests/gpu/cuda_emu.h). emu_build LOG makes it (make cuda-emu; its ASan flavour when $B is
# an ASan build) under a lock, since several tests may ask for it at once, and sets $emu to
# its folder. Returns non-zero, printing the log's tail, when the build fails.
emu_build() {
    local log=$1 flags=()
    case "$B" in *-asan) emu=build-cuda-emu-asan; flags=(ASAN=1) ;; *) emu=build-cuda-emu ;; esac
    mkdir -p "$emu"
    if ! flock "$emu/.lock" env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
        make --no-print-directory -j2 cuda-emu "${flags[@]}" >"$log" 2>&1; then
        echo "make cuda-emu failed:"; tail -n 20 "$log"; return 1
    fi
}
