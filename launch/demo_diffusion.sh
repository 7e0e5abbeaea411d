#!/usr/bin/env bash
# demo_diffusion.sh: `make demo-diffusion`: like make demo, but trains the DiT of
# configs/diffusion_tiny.yaml (images from caption and/or audio) and ends by printing where
# the sample grid is and the conditional accuracy a pixel rule reads off generated images.
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${NP:-2}
DATA=${DATA:-demo_data}
OUT=${OUT:-runs/demo_diffusion}
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
mpirun "${root[@]}" --oversubscribe --bind-to none -np "$NP" build/train configs/diffusion_tiny.yaml \
    run.out_dir="$OUT" data.train="$DATA/train" data.val="$DATA/val"
echo
echo "demo-diffusion: trained in $((SECONDS - t0))s on $NP rank(s); run directory $OUT"
grid=$(ls "$OUT"/samples/step_*.png | tail -n 1)
line=$(grep cond_acc "$OUT/metrics.jsonl" | tail -n 1)
get() { echo "$line" | sed "s/.*\"$1\":\([^,}]*\).*/\1/"; }
awk -v t="$(get cond_acc_text)" -v a="$(get cond_acc_audio)" -v b="$(get cond_acc_both)" -v g="$grid" 'BEGIN {
    printf "demo-diffusion: sample grid %s (rows: caption only, audio only, both)\n", g
    printf "demo-diffusion: conditional accuracy (colour and shape read from the pixels): caption %.1f%%, audio %.1f%%, both %.1f%%\n", 100 * t, 100 * a, 100 * b }'
