#!/usr/bin/env bash
# mpirun.sh: start build/train under Open MPI with the flags a run needs, on this machine or
# on several nodes, on CPUs or one rank per GPU, so that nobody has to remember them:
#   launch/mpirun.sh [--dry-run] NP CONFIG.yaml [section.key=value ...]
#   launch/mpirun.sh 4 configs/tiny.yaml parallel.tp=2                  # this machine, CPU
#   launch/mpirun.sh 8 configs/gpt2_medium_gpu.yaml                     # one node, 8 GPUs
#   HOSTFILE=hosts RANKS_PER_NODE=8 launch/mpirun.sh 16 configs/dit_b2_gpu.yaml parallel.tp=2
# `launch/mpirun.sh --help` prints the usage and the environment it reads (below).
#
# Placement: ranks fill node after node (--map-by ppr:N:node when the ranks per node are
# known), and the trainer makes ranks [k*tp, (k+1)*tp) one tensor-parallel group (rank =
# dp_index * tp + tp_index). A tp group stays inside a node, where its per-layer allreduces
# are cheap, only when the ranks per node are a multiple of parallel.tp: the script reads
# parallel.tp from the config and its overrides and refuses to start otherwise.
# GPUs: with backend cuda (config or override) each rank uses the GPU numbered by its local
# rank on its node (model/cuda/cuda.cu reads OMPI_COMM_WORLD_LOCAL_RANK, which mpirun sets;
# else MPI_LOCALRANKID, SLURM_LOCALID, else 0; counted within CUDA_VISIBLE_DEVICES), so run
# exactly one rank per GPU; the binary is build-cuda/train (make cuda).
# Threads: each rank runs run.threads OpenMP threads, or by default the cores it may use
# divided by the ranks on its node (train/main.c sets this itself; OMP_NUM_THREADS does not
# change it: pass run.threads=N). Ranks are not pinned (--bind-to none) so a rank's threads
# can use every core it was given.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: launch/mpirun.sh [--dry-run] NP CONFIG.yaml [section.key=value ...]
  Runs NP ranks of the trainer under mpirun: on this machine, on the nodes of HOSTFILE, or
  on a Slurm allocation. backend: cuda (in the config or as an override) means one rank per
  GPU, each taking the GPU of its local rank, with build-cuda/train.
  --dry-run   print the mpirun command instead of running it
environment:
  HOSTFILE=FILE       Open MPI hostfile, one line per node: `host slots=N` (N = ranks there,
                      the GPUs for a GPU run). Unset: this machine (or the Slurm allocation).
  RANKS_PER_NODE=N    ranks on each node (--map-by ppr:N:node); for GPUs, the GPUs per node.
                      Default: the hostfile's slots, SLURM_NTASKS_PER_NODE, or on this machine
                      NP. Must be a multiple of parallel.tp, so a tp group stays in one node.
  BIND=none|numa|...  --bind-to (default none: a rank's threads may use every core). numa
                      keeps a rank on one NUMA domain: check with MPIRUN_ARGS=--report-bindings
                      that it is the one of its GPU (`nvidia-smi topo -m`).
  MPIRUN_ARGS="..."   more mpirun flags, e.g. "--mca btl_tcp_if_include eth0"
  TRAIN=PATH          the trainer (default build/train; build-cuda/train for backend cuda)
  OMP_NUM_THREADS     exported as (cores / ranks per node) where known; the trainer sets its
                      own count the same way: change it with run.threads=N
  NCCL (GPU runs; every NCCL_* variable set here is passed to all ranks):
  NCCL_DEBUG=WARN     (set by default) prints NCCL's errors and warnings; INFO shows the
                      transports and rings chosen at start (with NCCL_DEBUG_SUBSYS=INIT,NET)
  NCCL_SOCKET_IFNAME  network interface for NCCL's bootstrap and socket traffic, e.g. eth0 or
                      ^docker,lo: set it when nodes have several and NCCL picks a wrong one
  NCCL_IB_HCA         InfiniBand/RoCE adapters to use, e.g. mlx5_0,mlx5_1: restrict to the
                      ones cabled between the nodes (NCCL_IB_DISABLE=1: no RDMA, sockets only)
  NCCL_P2P_LEVEL      how far apart two GPUs may be and still copy peer to peer (NVL, PIX,
                      PHB, SYS): lower it where PCIe peer-to-peer hangs or is slow (ACS/IOMMU)
  NCCL_NVLS_ENABLE    NVLink SHARP on NVSwitch nodes (H100/H200 HGX); 0 turns it off when it
                      cannot allocate its buffers, or to compare
EOF
}

for a in "$@"; do  # --help anywhere wins over every other error
    case "$a" in -h | --help) usage; exit 0 ;; esac
done
die() { echo "error: mpirun.sh: $*" >&2; exit 2; }
dry=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) dry=1; shift ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || die "needs NP and CONFIG.yaml (see --help)"
np=$1; shift
cfg=$1
here=$(cd "$(dirname "$0")/.." && pwd)
is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_count "$np" || die "NP '$np' is not a positive number of ranks"

# SECTION KEY FILE: a scalar of the config file (SECTION "" = top level); the trainer's own
# reading (libyaml, train/config.c) is the authority, this only looks for what placement
# needs, in block style (`parallel:` then `  tp: 2`) or flow style (`parallel: {tp: 2}`).
cfg_value() {
    awk -v sec="$1" -v key="$2" '
        function clean(v) {
            sub(/^[^:]*:[ \t]*/, "", v); sub(/[ \t]+#.*$/, "", v); sub(/[ \t,}]*$/, "", v)
            gsub(/^["\047]|["\047]$/, "", v); return v
        }
        /^[ \t]*(#|$)/ { next }
        /^[^ \t]/ {
            cur = $0; sub(/[ \t]*:.*/, "", cur)
            if (sec == "" && cur == key) val = clean($0)
            else if (sec != "" && cur == sec &&
                     match($0, "[{, \t]" key "[ \t]*:[ \t]*[^,}]*")) val = clean(substr($0, RSTART + 1, RLENGTH - 1))
            next
        }
        sec != "" && cur == sec && $0 ~ ("^[ \t]+" key "[ \t]*:") { val = clean($0) }
        END { print val }' "$3"
}
tp=1 backend=cpu
if [ -r "$cfg" ]; then
    v=$(cfg_value parallel tp "$cfg"); [ -z "$v" ] || tp=$v
    v=$(cfg_value "" backend "$cfg"); [ -z "$v" ] || backend=$v
fi
for a in "${@:2}"; do  # overrides apply after the file, the last one winning
    case "$a" in
        parallel.tp=*) tp=${a#*=} ;;
        backend=*) backend=${a#*=} ;;
    esac
done
is_count "$tp" || tp=1  # not a number: the trainer reports it

# where the ranks go, and how many per node (0: not known here)
args=(-np "$np" --bind-to "${BIND:-none}")
[ "$(id -u)" -ne 0 ] || args+=(--allow-run-as-root)
rpn=0 where=
if [ -n "${HOSTFILE:-}" ]; then
    [ -r "$HOSTFILE" ] || die "HOSTFILE $HOSTFILE cannot be read"
    args+=(--hostfile "$HOSTFILE")
    where="the nodes of $HOSTFILE"
    # every host's slots=N; rpn only when all hosts name the same N
    slots=$(awk '!/^[ \t]*(#|$)/ { n = "?"; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) n = substr($i, 7)
                                     print n }' "$HOSTFILE" | sort -u)
    if is_count "$slots"; then rpn=$slots; fi
elif [ -n "${SLURM_JOB_ID:-}" ]; then
    where="Slurm job $SLURM_JOB_ID"  # mpirun reads the allocation
    if is_count "${SLURM_NTASKS_PER_NODE:-}"; then rpn=$SLURM_NTASKS_PER_NODE
    elif [[ "${SLURM_TASKS_PER_NODE:-}" =~ ^([1-9][0-9]*)(\(x[0-9]+\))?$ ]]; then rpn=${BASH_REMATCH[1]}
    fi
else
    where="this machine"
    args+=(--oversubscribe)  # a laptop may have fewer cores than ranks
    rpn=$np
fi
if [ -n "${RANKS_PER_NODE:-}" ]; then
    is_count "$RANKS_PER_NODE" || die "RANKS_PER_NODE '$RANKS_PER_NODE' is not a positive number"
    rpn=$RANKS_PER_NODE
fi

if [ "$backend" = cuda ]; then
    train=${TRAIN:-$here/build-cuda/train}
    if [ "$where" = "this machine" ]; then  # count the GPUs a rank here may use
        gpus=
        if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
            gpus=$(awk -F, '{ print ($0 == "" ? 0 : NF) }' <<<"$CUDA_VISIBLE_DEVICES")
        elif command -v nvidia-smi >/dev/null 2>&1; then
            gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        fi
        if [ -n "$gpus" ] && [ "$np" -gt "$gpus" ]; then
            die "$np ranks but $gpus GPU(s) on this machine, and a GPU run is one rank per GPU: use NP <= $gpus, or HOSTFILE with RANKS_PER_NODE for several nodes"
        fi
    fi
    [ "$rpn" -gt 0 ] || die "backend cuda on $where: set RANKS_PER_NODE to the GPUs per node (one rank per GPU)"
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
else
    train=${TRAIN:-$here/build/train}
fi
[ -x "$train" ] || die "$train is not built (make$([ "$backend" = cuda ] && echo " cuda"), or set TRAIN)"

if [ "$rpn" -gt 0 ]; then
    # on one node only the trainer's own check applies (parallel.tp divides the world size)
    if [ "$np" -gt "$rpn" ] && [ $((rpn % tp)) -ne 0 ]; then
        die "parallel.tp $tp does not divide the $rpn ranks per node (a tensor-parallel group would span nodes): make RANKS_PER_NODE (hostfile slots, --ntasks-per-node) a multiple of $tp, or choose a parallel.tp that divides $rpn"
    fi
    # (a CPU run without RANKS_PER_NODE keeps Open MPI's default: fill each host's slots)
    if [ -n "${RANKS_PER_NODE:-}" ] || [ "$backend" = cuda ]; then
        args+=(--map-by "ppr:$rpn:node")
    fi
elif [ -n "${HOSTFILE:-}" ]; then  # hosts of different slots: each must hold whole tp groups
    while read -r h n; do
        if is_count "$n" && [ $((n % tp)) -ne 0 ]; then
            die "parallel.tp $tp does not divide the $n slots of $h in $HOSTFILE (a tensor-parallel group would span nodes): give every host a multiple of $tp slots"
        fi
    done < <(awk '!/^[ \t]*(#|$)/ { for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) print $1, substr($i, 7) }' "$HOSTFILE")
fi
# threads (informational: train/main.c picks the same number itself; see the top)
if [ -z "${OMP_NUM_THREADS:-}" ]; then
    if is_count "${SLURM_CPUS_PER_TASK:-}"; then export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK
    elif [ "$where" = "this machine" ]; then
        t=$(( $(nproc) / np )); export OMP_NUM_THREADS=$((t > 0 ? t : 1))
    fi
fi
# environment for every rank (with a hostfile, the other nodes get only what -x names)
while read -r v; do
    [ -n "$v" ] && args+=(-x "$v")
done < <(compgen -e | grep -E '^(NCCL_[A-Z0-9_]+|OMP_NUM_THREADS)$' || true)
read -r -a extra <<<"${MPIRUN_ARGS:-}"  # split into words, no globbing
args+=("${extra[@]}")

cmd=(mpirun "${args[@]}" "$train" "$@")
if [ "$dry" = 1 ]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
exec "${cmd[@]}"
