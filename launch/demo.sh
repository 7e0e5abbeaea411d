#!/usr/bin/env bash
# demo.sh: `make demo` (and `make demo-diffusion`, as `demo.sh diffusion`) on a fresh machine:
# install what is missing, build, synthesize a paired image/audio/caption dataset, train
# through mpirun (the same path a cluster job takes), and end with the result:
#   transformer (default): configs/tiny.yaml, validation caption accuracy
#   diffusion:             configs/diffusion_tiny.yaml, sample grid + conditional accuracy
#                          (about 15 minutes on 2 cores)
set -euo pipefail
usage() {
    cat <<'EOF'
usage: launch/demo.sh [transformer|diffusion]
  Installs what is missing (launch/deps.sh), builds, synthesizes DATA (when it does not
  verify) and trains the tiny transformer (default) or diffusion config on NP ranks.
environment: NP (2), DATA (demo_data), OUT (runs/demo or runs/demo_diffusion)
EOF
}
for a in "$@"; do  # --help anywhere wins over every other error
    case "$a" in -h | --help) usage; exit 0 ;; esac
done
die() { echo "error: demo.sh: $1 (see --help)" >&2; exit 2; }
[ $# -le 1 ] || die "one model kind at most, got $#"
KIND=${1:-transformer}
case "$KIND" in
    transformer) CONFIG=configs/tiny.yaml; OUT=${OUT:-runs/demo} ;;
    diffusion) CONFIG=configs/diffusion_tiny.yaml; OUT=${OUT:-runs/demo_diffusion} ;;
    *) die "unknown model kind '$KIND'" ;;
esac
cd "$(dirname "$0")/.."
NP=${NP:-2}
DATA=${DATA:-demo_data}
bash launch/deps.sh
make -j2 build/train build/mmdata
if ! build/mmdata verify "$DATA/train" >/dev/null 2>&1 || ! build/mmdata verify "$DATA/val" >/dev/null 2>&1; then
    rm -rf "$DATA"
    build/mmdata synth --out "$DATA" --samples 8000 --seed 1
fi
rm -rf "$OUT"
root=()
[ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
t0=$SECONDS
# --bind-to none: each rank's OpenMP threads may use every core it was given
mpirun "${root[@]}" --oversubscribe --bind-to none -np "$NP" build/train "$CONFIG" \
    run.out_dir="$OUT" data.train="$DATA/train" data.val="$DATA/val"
echo
echo "demo: trained in $((SECONDS - t0))s on $NP rank(s); run directory $OUT"
last=$(grep '"val_loss"' "$OUT/metrics.jsonl" | tail -n 1)
get() { echo "$last" | sed "s/.*\"$1\":\([^,}]*\).*/\1/"; }
if [ "$KIND" = transformer ]; then
    awk -v a="$(get caption_acc)" -v o="$OUT" 'BEGIN {
        printf "demo: validation caption accuracy %.1f%% (generated captions: %s/eval/)\n", 100 * a, o }'
else
    awk -v t="$(get cond_acc_text)" -v a="$(get cond_acc_audio)" -v b="$(get cond_acc_both)" \
        -v c="$(get colour_acc_both)" -v s="$(get shape_acc_both)" \
        -v g="$(ls "$OUT"/samples/step_*.png | tail -n 1)" 'BEGIN {
        printf "demo: sample grid %s (rows: caption only, audio only, both)\n", g
        printf "demo: conditional accuracy (colour and shape read from the pixels): caption %.1f%%, audio %.1f%%, both %.1f%% (both: colour %.1f%%, shape %.1f%%)\n", 100 * t, 100 * a, 100 * b, 100 * c, 100 * s }'
fi
