#!/usr/bin/env bash
# mpirun.sh: run training on this machine (or on the hosts of a hostfile) with the right
# mpirun flags, so users do not have to remember them:
#   launch/mpirun.sh NP CONFIG.yaml [section.key=value ...]
#   HOSTFILE=launch/hostfile.example launch/mpirun.sh 16 configs/x.yaml
# Threads: each rank gets (cores of its node / ranks on that node) OpenMP threads unless
# run.threads or OMP_NUM_THREADS says otherwise. Ranks are not pinned (--bind-to none) so
# a rank's OpenMP threads can use every core it was given.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 NP CONFIG.yaml [section.key=value ...]" >&2
    exit 2
fi
np=$1; shift
here=$(cd "$(dirname "$0")/.." && pwd)
args=(--bind-to none -np "$np")
[ "$(id -u)" -ne 0 ] || args+=(--allow-run-as-root)
if [ -n "${HOSTFILE:-}" ]; then
    args+=(--hostfile "$HOSTFILE")
else
    args+=(--oversubscribe)  # a laptop may have fewer cores than ranks
fi
exec mpirun "${args[@]}" "$here/build/train" "$@"
