#!/usr/bin/env bash
# help_cli.sh: the command-line conventions of every program and script a user runs
# (core/cli.h): `--help` and `-h` print the usage on stdout, nothing on stderr, exit 0, also
# after other arguments and even after a bad one; an unknown option is one "error:" line
# pointing to --help, exit 2. The commands are read from each program's own --help, so a
# command added without help (or left out of the list, which also leaves it undispatched)
# fails here. Also `train sample --threads`: bad values are one-line errors.
set -u
B=${MM_BUILD:-build}
here=$(cd "$(dirname "$0")/.." && pwd)
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
run() { timeout 60 "$@" >"$tmp/out" 2>"$tmp/err" </dev/null; rc=$?; }

# expect_help NAME USAGE CMD...: CMD prints a usage starting "usage: USAGE" and nothing else
expect_help() {
    local name=$1 usage=$2; shift 2
    run "$@"
    ok "$name: exit 0 (got $rc; $(head -c 200 "$tmp/err"))" '[ $rc -eq 0 ]'
    ok "$name: stdout starts with 'usage: $usage': $(head -n 1 "$tmp/out")" \
        '[ "$(head -n 1 "$tmp/out" | cut -c 1-$((7 + ${#usage})))" = "usage: $usage" ]'
    ok "$name: nothing on stderr: $(head -c 200 "$tmp/err")" '[ ! -s "$tmp/err" ]'
}
# expect_usage_error NAME PATTERN CMD...: exit 2 and one "error:" line matching PATTERN
expect_usage_error() {
    local name=$1 pat=$2; shift 2
    run "$@"
    ok "$name: exit 2 (got $rc)" '[ $rc -eq 2 ]'
    ok "$name: one error line matching '$pat': $(head -c 300 "$tmp/err")" \
        '[ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -Eq -- "^error: .*$pat" "$tmp/err"'
}
# the commands a program's --help lists: the first word of each line under "commands"
commands_of() {
    "$@" --help 2>/dev/null | awk '/^commands/ { on = 1; next } on && /^$/ { exit } on { print $1 }'
}

programs=("$B/train" "$B/mmdata" "$B/bench/bench_model" "$B/bench/bench_comm")
for p in "${programs[@]}"; do
    [ -x "$p" ] || { echo "FAIL: $p not built"; echo "0 passed, 1 failed"; exit 1; }
done
ok "train lists sample and export" '[ "$(commands_of "$B/train" | tr "\n" " ")" = "sample export " ]'
ok "mmdata lists synth, verify, pack, inspect" \
    '[ "$(commands_of "$B/mmdata" | tr "\n" " ")" = "synth verify pack inspect " ]'

for p in "${programs[@]}"; do
    prog=$(basename "$p")
    for h in --help -h; do
        expect_help "$prog $h" "$prog " "$p" "$h"
        expect_help "$prog --bogus $h (help wins over a bad argument)" "$prog " "$p" --bogus "$h"
    done
    expect_usage_error "$prog --bogus" "--bogus.*\\(see $prog --help\\)" "$p" --bogus
    for sub in $(commands_of "$p"); do
        for h in --help -h; do
            expect_help "$prog $sub $h" "$prog $sub " "$p" "$sub" "$h"
            expect_help "$prog $sub --bogus x $h" "$prog $sub " "$p" "$sub" --bogus x "$h"
        done
        ok "$prog $sub --help lists -h, --help" 'grep -q "^  -h, --help" "$tmp/out"'
        expect_usage_error "$prog $sub --bogus" \
            "$prog $sub: unknown option '--bogus' \\(see $prog $sub --help\\)" "$p" "$sub" --bogus
    done
done
ok "mmdata help" '"$B/mmdata" help | grep -q "^usage: mmdata COMMAND"'
expect_usage_error "mmdata without a command" "missing command" "$B/mmdata"
expect_usage_error "train without a config" "no config file given" "$B/train"
# an option's value is never a request for help: here --text's, so --ckpt is missing
expect_usage_error "train sample --text -h is a caption" "--ckpt DIR is required" \
    "$B/train" sample --out "$tmp/x" --text -h
expect_usage_error "mmdata pack --text-max without a value" "--text-max needs a value" \
    "$B/mmdata" pack --manifest m.jsonl --out "$tmp/x" --text-max

for v in 0 -1 4097 two 1.5 ""; do
    expect_usage_error "train sample --threads '$v'" \
        "--threads '$v': expected an integer in \\[1, 4096\\]" \
        "$B/train" sample --ckpt "$tmp/none" --out "$tmp/x" --threads "$v"
done
expect_usage_error "train sample --threads without a value" "--threads needs a value" \
    "$B/train" sample --ckpt "$tmp/none" --out "$tmp/x" --threads

# scripts that take arguments; one without a --help branch fails before being run
for s in "$here"/launch/*.sh "$here"/launch/*.sbatch "$here"/data/real/*.sh; do
    name=${s#"$here"/}
    if ! grep -q -- '--help' "$s"; then ok "$name handles --help" false; continue; fi
    for h in --help -h; do
        expect_help "$name $h" "" bash "$s" "$h"
        expect_help "$name --bogus $h" "" bash "$s" --bogus "$h"
    done
    expect_usage_error "$name --bogus" "--bogus.*\\(see --help\\)" bash "$s" --bogus
done
if command -v python3 >/dev/null 2>&1; then
    for s in "$here"/data/real/*.py; do
        expect_help "${s#"$here"/} --help" "" python3 "$s" --help
    done
else
    echo "note: no python3: data/real/*.py not checked"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
