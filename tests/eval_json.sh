#!/usr/bin/env bash
# eval_json.sh: every line of a run's eval/step_*.jsonl is valid JSON in valid UTF-8 (issue 16,
# item 5), with each caption's exact match and CER (issue 17). An early model generates arbitrary bytes (>= 0x80, controls, NUL); they must be
# escaped (U+FFFD for bytes that are not UTF-8, counted in "generated_invalid_bytes"; \u00xx
# for controls), and the printed examples must carry no raw control byte.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
"$B/mmdata" synth --out "$tmp/d" --samples 64 --seed 5 >/dev/null || { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/cfg.yaml" <<YAML
run:
  out_dir: $tmp/run
  steps: 2
  threads: 1
data:
  train: $tmp/d/train
  val: $tmp/d/val
  global_batch: 4
  micro_batch: 2
model:
  d_model: 32
  n_layers: 1
  n_heads: 2
optim:
  lr: 0.05
eval:
  every: 1
  samples: 32
  batch: 8
checkpoint:
  every: 0
YAML
timeout 300 mpirun "${root[@]}" --oversubscribe -np 1 "$B/train" "$tmp/cfg.yaml" >"$tmp/out" 2>&1; rc=$?
ok "run exits 0 (rc $rc): $(tail -n 3 "$tmp/out")" '[ $rc -eq 0 ]'
n=$(cat "$tmp"/run/eval/step_*.jsonl 2>/dev/null | wc -l)
ok "eval lines written ($n)" '[ "$n" -ge 32 ]'
cat >"$tmp/check.py" <<'PY'
import json, sys
bad = 0; n = 0; replaced = 0
for path in sys.argv[1:]:
    for i, raw in enumerate(open(path, "rb").read().split(b"\n")[:-1]):
        n += 1
        try:
            o = json.loads(raw.decode("utf-8", errors="strict"))
            assert isinstance(o["generated"], str) and isinstance(o["reference"], str)
            assert o["exact"] in (0, 1) and (o["cer"] is None or o["cer"] >= 0)
            if "generated_image" in o:  # the caption with the audio left out, scored alike
                assert isinstance(o["generated_image"], str) and o["exact_image"] in (0, 1)
                replaced += o.get("generated_image_invalid_bytes", 0)
            replaced += o.get("generated_invalid_bytes", 0)
        except Exception as e:
            bad += 1
            if bad <= 3: print(f"{path}:{i+1}: {e}: {raw[:120]!r}")
print(f"{n} lines, {bad} invalid, {replaced} bytes replaced")
sys.exit(1 if bad or n == 0 else 0)
PY
python3 "$tmp/check.py" "$tmp"/run/eval/step_*.jsonl >"$tmp/py" 2>&1; rc=$?; echo "eval files: $(tail -n 1 "$tmp/py")"
ok "every eval line is valid JSON in UTF-8: $(cat "$tmp/py")" '[ $rc -eq 0 ]'
ok "printed output has no raw control byte but newline" \
    '! LC_ALL=C grep -q "[[:cntrl:]]" <(tr -d "\n" <"$tmp/out")'
ok "printed output is valid UTF-8" 'python3 -c "open(\"$tmp/out\", encoding=\"utf-8\").read()"'
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
