#!/usr/bin/env bash
# demo.sh: `make demo` on a fresh machine: install what is missing, build, synthesize a
# paired image/audio/caption dataset, train the tiny config through mpirun (the same path a
# cluster job takes), and end with the validation caption accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${NP:-2}
DATA=${DATA:-demo_data}
OUT=${OUT:-runs/demo}
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
mpirun "${root[@]}" --oversubscribe --bind-to none -np "$NP" build/train configs/tiny.yaml \
    run.out_dir="$OUT" data.train="$DATA/train" data.val="$DATA/val"
echo
echo "demo: trained in $((SECONDS - t0))s on $NP rank(s); run directory $OUT"
acc=$(grep caption_acc "$OUT/metrics.jsonl" | tail -n 1 | sed 's/.*"caption_acc":\([^,}]*\).*/\1/')
awk -v a="$acc" 'BEGIN { printf "demo: validation caption accuracy %.1f%% (generated captions: '"$OUT"'/eval/)\n", 100 * a }'
