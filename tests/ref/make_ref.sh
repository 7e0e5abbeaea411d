#!/usr/bin/env bash
# make_ref.sh: exists so that the provenance of the reference files of tests/backend_ref.sh
# is reproducible: it is the script that made them. The stored references (steps_*.txt,
# evals_*.txt, sums.txt, cmdlines.txt, made_with.txt) and the fixture checkpoints
# (ckpt_lm/, ckpt_dit/) were made with it from main at commit
# 370de5501ab8f592cae0e222ac72f71b6a3cb3e5, built with `make` on the project's 2-core CPU VM.
# History: first made from a8ef475 (before the backend refactor) with -march=native; remade
# from 370de55 on purpose, when the sums of the CPU loops got an order of their own instead
# of the vector width's (model/cpu/cpu_isa.h) and the BLAS kernels were pinned (cases.sh):
# the step lines moved by at most 4e-7 relative, and since then the references hold on any
# x86-64 with AVX2, at every level the build clones (checked at x86-64-v3, at the baseline
# and at AVX-512 on the machine that remade them).
#
# They pin the CPU numbers of that commit bit for bit. Do NOT regenerate them to make a
# failing comparison pass: a failure means the build under test computes something else than
# the baseline did. Regenerate only on purpose (a deliberate change of the numbers, or another
# machine whose BLAS kernels round differently), from a build of a commit whose numbers are
# known to be right, say so in the commit, and update the commit named above.
#
#   bash tests/ref/make_ref.sh BUILD_DIR [--force]
#
# It runs everything twice (tests/ref/cases.sh, ref_produce) and refuses to write unless both
# passes agree byte for byte, so the references cannot capture a nondeterministic result.
# Without --force it refuses to overwrite existing references.
set -u
BUILD=${1:?usage: make_ref.sh BUILD_DIR [--force]}
force=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
REF_B=$(cd "$BUILD" && pwd) || exit 2
REF_HERE=$here
REF_MPI_ROOT=(); [ "$(id -u)" -ne 0 ] || REF_MPI_ROOT=(--allow-run-as-root)
# shellcheck source=cases.sh
. "$here/cases.sh"
if [ -e "$here/sums.txt" ] && [ "$force" != --force ]; then
    echo "make_ref.sh: $here already holds references; they must not be regenerated to make a" >&2
    echo "failing comparison pass (see the top of this script). Pass --force to overwrite." >&2
    exit 2
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
REF_H5CANON=$tmp/h5canon
# shellcheck disable=SC2046
cc -std=c11 -O1 -o "$REF_H5CANON" "$here/h5canon.c" \
    $(pkg-config --cflags --libs hdf5-serial 2>/dev/null || pkg-config --cflags --libs hdf5) ||
    { echo "make_ref.sh: cannot compile h5canon.c" >&2; exit 1; }

for pass in 1 2; do
    mkdir -p "$tmp/w$pass" && (cd "$tmp/w$pass" && ref_produce "$tmp/out$pass" fresh)
    if awk '$2 != 0 { bad = 1; print "make_ref.sh: " $1 " failed (rc " $2 ")" } END { exit !bad }' \
        "$tmp/out$pass/status.txt" >&2; then
        for n in $(awk '$2 != 0 { print $1 }' "$tmp/out$pass/status.txt"); do
            tail -n 5 "$tmp/w$pass/logs/$n.txt" >&2
        done
        exit 1
    fi
done
if ! diff -r "$tmp/out1" "$tmp/out2" >&2; then
    echo "make_ref.sh: two passes disagree: the results are not deterministic; nothing written" >&2
    exit 1
fi
out=$tmp/out1
for f in "$out"/steps_*.txt; do  # 20 steps per case, 10 before and 10 after the resume
    n=$(wc -l <"$f"); case $(basename "$f") in steps_fix_*|steps_res_*) want=10;; *) want=20;; esac
    [ "$n" -eq "$want" ] || { echo "make_ref.sh: $f has $n step lines, want $want" >&2; exit 1; }
done

src=$(cd "$REF_B/.." && pwd)
commit=$(git -C "$src" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$src" status --porcelain --untracked-files=no 2>/dev/null | head -c 1)
[ -z "$dirty" ] || commit="$commit (with uncommitted changes)"
what() {  # the comment line that heads each reference file
    echo "# $1 Made by tests/ref/make_ref.sh from the build of $commit; read by tests/backend_ref.sh. Do not edit or regenerate to make a test pass."
}
for f in "$out"/steps_*.txt "$out"/evals_*.txt; do
    b=$(basename "$f" .txt); run=${b#*_}
    case $b in
        steps_*) w="Step lines (step, loss, lr, grad_norm as metrics.jsonl writes them, %.9g) of run $run.";;
        evals_*) w="Evaluation lines of run $run (empty when it evaluates nothing).";;
    esac
    { what "$w"; cat "$f"; } >"$here/$b.txt"
done
{ what "SHA-256 of the data, of every rank file of the final checkpoints (canonical content, tests/ref/h5canon.c), of the fixtures as the build makes them, of the evaluation outputs, exports (canonical; (tensors): tensors only) and sampled images."
  cat "$out/sums.txt"; } >"$here/sums.txt"
{ what "The command lines the references were made with (tests/ref/cases.sh)."
  cat "$out/cmdlines.txt"; } >"$here/cmdlines.txt"
{ what "Where the references were made: numbers are bit-exact only for the same BLAS kernels."
  echo "commit: $commit"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
  echo "openblas: $(ldd "$REF_B/train" | grep -o 'libopenblas[^ ]* => [^ ]*' | head -n 1), kernels OPENBLAS_CORETYPE=$REF_BLAS_CORE"
  echo "compiler: $(cc --version | head -n 1)"
  echo "date: $(date -u +%Y-%m-%d)"; } >"$here/made_with.txt"
for kind in lm dit; do
    rm -rf "$here/ckpt_$kind"
    mkdir -p "$here/ckpt_$kind"
    cp -r "$tmp/w1/fix/ckpt_$kind/$REF_CKPT_STEP" "$here/ckpt_$kind/"
done
echo "make_ref.sh: references written to $here from $commit"
du -sh "$here"
