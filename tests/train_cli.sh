#!/usr/bin/env bash
# train_cli.sh: the `train` command line under mpirun: bad input of every kind gives ONE
# "error:" line naming the file/place/reason and a non-zero exit, never a crash or a hang;
# --help works (once under several ranks); a tiny run prints the resolved config and writes config.yaml + metrics.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
run() { timeout 120 mpirun "${root[@]}" --oversubscribe -np "${NP:-1}" "$B/train" "$@"; }
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
# expect_error NAME PATTERN ARGS...: non-zero exit and an error line matching PATTERN
expect_error() {
    local name=$1 pat=$2; shift 2
    run "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
    ok "$name: exit non-zero (got $rc)" '[ $rc -ne 0 ]'
    ok "$name: message matches '$pat': $(head -c 300 "$tmp/err")" 'grep -Eq "^error: .*$pat" "$tmp/err"'
    ok "$name: no crash" '! grep -Eqi "segmentation|sanitizer|core dumped|fatal:" "$tmp/err"'
}

"$B/mmdata" synth --out "$tmp/d" --samples 200 --seed 3 >/dev/null || { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/good.yaml" <<YAML
run:
  out_dir: $tmp/run
  steps: 3
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
eval:
  samples: 8
  batch: 8
YAML
run "$tmp/good.yaml" >"$tmp/out" 2>&1; rc=$?
ok "good run exits 0 (rc $rc): $(tail -n 5 "$tmp/out")" '[ $rc -eq 0 ]'
ok "resolved config printed" 'grep -q "resolved config" "$tmp/out"'
ok "config.yaml saved" '[ -s "$tmp/run/config.yaml" ]'
ok "metrics.jsonl has 3 step lines" '[ "$(grep -c "\"loss\"" "$tmp/run/metrics.jsonl")" -eq 3 ]'
ok "eval file written" '[ -s "$tmp/run/eval/step_00000003.jsonl" ]'
ok "latest checkpoint" 'grep -q step_00000003 "$tmp/run/ckpt/latest"'
run --help >"$tmp/out" 2>&1; ok "--help exits 0" '[ $? -eq 0 ] && grep -q usage "$tmp/out"'
# under several ranks the usage is printed once (rank 0), every command's as the program's
for args in "--help" "sample --help" "export -h" "$tmp/good.yaml run.steps=x --help"; do
    NP=2 run $args >"$tmp/out" 2>&1; rc=$?
    ok "2 ranks, $args: exit 0 (got $rc), one usage: $(head -c 200 "$tmp/out")" \
        '[ $rc -eq 0 ] && [ "$(grep -c "^usage: train" "$tmp/out")" -eq 1 ]'
done

expect_error "no config" "no config file"
expect_error "missing file" "nope.yaml.*(No such file|cannot open)" "$tmp/nope.yaml"
printf 'run:\n  stepz: 3\n' >"$tmp/unknown.yaml"
expect_error "unknown key" "unknown.yaml:2:3:.*stepz" "$tmp/unknown.yaml"
printf 'run:\n  steps: many\n' >"$tmp/type.yaml"
expect_error "bad type" "type.yaml:2:10:.*many" "$tmp/type.yaml"
printf 'run: [1, 2\n' >"$tmp/broken.yaml"
expect_error "broken yaml" "broken.yaml" "$tmp/broken.yaml"
expect_error "bad override" "override 'run.steps=-5'" "$tmp/good.yaml" run.steps=-5
expect_error "unknown override" "override 'model.size=3'" "$tmp/good.yaml" model.size=3
expect_error "batch not divisible" "global_batch" "$tmp/good.yaml" data.global_batch=5 data.micro_batch=2
expect_error "missing dataset" "$tmp/nodata" "$tmp/good.yaml" data.train=$tmp/nodata run.out_dir=$tmp/r2
expect_error "resume not a checkpoint" "$tmp/d" "$tmp/good.yaml" checkpoint.resume=$tmp/d run.out_dir=$tmp/r3
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
