#!/usr/bin/env bash
# data_cli.sh: checks build/mmdata the way a user meets it: synth writes a dataset that
# verify accepts (and the same seed writes the same bytes); a corrupted or truncated copy is
# refused with one line naming the file; bad command lines exit 2 with a one-line error.
# Ends with "N passed, N failed" (tests/run.sh adds these up) and fails if anything failed.
set -u
BUILD=${MM_BUILD:-build}
MMDATA="$BUILD/mmdata"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

# run CMD...: runs it, keeping its status in $rc, stdout in $tmp/out, stderr in $tmp/err.
run() {
    "$@" >"$tmp/out" 2>"$tmp/err"
    rc=$?
}
expect() {  # description, condition...
    local what=$1
    shift
    if "$@"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL: $what (rc=$rc)"
        sed 's/^/    stderr| /' "$tmp/err" | head -5
    fi
}
one_line_error() {  # stderr is exactly one line starting with "error:" and holding $1
    [ "$(wc -l <"$tmp/err")" -eq 1 ] && head -n 1 "$tmp/err" | grep -q '^error: ' &&
        grep -qF -- "$1" "$tmp/err"
}
flip_byte() {  # file, offset: xor one byte with 0x5a
    local v
    v=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    printf "\\$(printf '%03o' $((v ^ 90)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

if [ ! -x "$MMDATA" ]; then
    echo "FAIL: $MMDATA not built"
    echo "0 passed, 1 failed"
    exit 1
fi

run "$MMDATA" --help
expect "--help exits 0 with usage" test "$rc" -eq 0
expect "--help lists the commands" grep -Eq '^  synth +write the synthetic' "$tmp/out"
run "$MMDATA" synth --help
expect "synth --help prints its options" grep -q 'usage: mmdata synth --out DIR --samples N' "$tmp/out"

run "$MMDATA"
expect "no command: exit 2" test "$rc" -eq 2
expect "no command: one-line error" one_line_error "missing command"

run "$MMDATA" frobnicate
expect "unknown command: exit 2" test "$rc" -eq 2
expect "unknown command: one-line error naming it" one_line_error "unknown command 'frobnicate'"

run "$MMDATA" synth --samples 10
expect "synth without --out: exit 2" test "$rc" -eq 2
expect "synth without --out: one-line error" one_line_error "missing --out"

run "$MMDATA" synth --out "$tmp/x" --samples abc
expect "non-numeric --samples: exit 2" test "$rc" -eq 2
expect "non-numeric --samples: one-line error" one_line_error "'abc'"

run "$MMDATA" synth --out "$tmp/x" --samples -5
expect "negative --samples: exit 2" test "$rc" -eq 2

run "$MMDATA" synth --out "$tmp/x" --samples 10 --seed 1x
expect "bad --seed: exit 2" test "$rc" -eq 2

run "$MMDATA" synth --out "$tmp/x" --samples 10 --colour red
expect "unknown option: exit 2" test "$rc" -eq 2
expect "unknown option: one-line error" one_line_error "unknown option '--colour'"

run "$MMDATA" synth --out "$tmp/x" --samples
expect "option without value: exit 2" test "$rc" -eq 2
expect "nothing written after bad command lines" test ! -e "$tmp/x"

run "$MMDATA" synth --out "$tmp/ds" --samples 300 --seed 3
expect "synth succeeds" test "$rc" -eq 0
expect "synth writes train and val" test -f "$tmp/ds/train/index.json" -a -f "$tmp/ds/val/index.json"

run "$MMDATA" verify "$tmp/ds/train"
expect "verify train succeeds" test "$rc" -eq 0
expect "verify train reports 300 samples" grep -q 'ok: 300 samples' "$tmp/out"
run "$MMDATA" verify "$tmp/ds/val"
expect "verify val succeeds with 64 samples" grep -q 'ok: 64 samples' "$tmp/out"

sleep 1.1  # a second later: no timestamps may leak into the shards
run "$MMDATA" synth --out "$tmp/ds2" --samples 300 --seed 3
expect "same seed, same bytes" cmp -s "$tmp/ds/train/shard_00000.h5" "$tmp/ds2/train/shard_00000.h5"
run "$MMDATA" synth --out "$tmp/ds3" --samples 300 --seed 4
expect "other seed, other bytes" test "$(cmp -s "$tmp/ds/train/shard_00000.h5" "$tmp/ds3/train/shard_00000.h5"; echo $?)" -ne 0

run "$MMDATA" synth --out "$tmp/ds" --samples 300 --seed 3
expect "synth refuses a used directory: exit 1" test "$rc" -eq 1
expect "synth refuses a used directory: one-line error" one_line_error "not empty"

cp -r "$tmp/ds/train" "$tmp/flipped"
flip_byte "$tmp/flipped/shard_00000.h5" 5000
run "$MMDATA" verify "$tmp/flipped"
expect "verify of a flipped byte fails" test "$rc" -eq 1
expect "verify of a flipped byte names the file" one_line_error "shard_00000.h5: checksum mismatch"

cp -r "$tmp/ds/train" "$tmp/truncated"
truncate -s 100000 "$tmp/truncated/shard_00000.h5"
run "$MMDATA" verify "$tmp/truncated"
expect "verify of a truncated shard fails" test "$rc" -eq 1
expect "verify of a truncated shard names the file" one_line_error "shard_00000.h5"

cp -r "$tmp/ds/train" "$tmp/noindex"
rm "$tmp/noindex/index.json"
run "$MMDATA" verify "$tmp/noindex"
expect "verify without index.json fails" test "$rc" -eq 1
expect "verify without index.json names it" one_line_error "index.json"

run "$MMDATA" verify
expect "verify without a directory: exit 2" test "$rc" -eq 2
run "$MMDATA" verify "$tmp/ds/train" extra
expect "verify with two directories: exit 2" test "$rc" -eq 2
expect "verify with two directories: one-line error" one_line_error "unexpected argument 'extra'"


# Issue 16, item 15: a bounded sample count, and a stopped or killed synth leaves no partial
# DIR/train: it writes hidden temporary folders and renames them at the end.
run timeout 20 "$MMDATA" synth --out "$tmp/huge" --samples 99999999999
expect "synth --samples 99999999999: exit 2" test "$rc" -eq 2
expect "synth --samples 99999999999: one line naming the limit" one_line_error "1..100000000"
expect "synth --samples 99999999999: nothing written" test ! -e "$tmp/huge"
"$MMDATA" synth --out "$tmp/stopped" --samples 100000 >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 1 100); do
    ls "$tmp/stopped"/.train.synth-* >/dev/null 2>&1 && break
    sleep 0.1
done
sleep 0.5
kill -TERM "$pid"
wait "$pid"
rc=$?
expect "synth stopped by SIGTERM: exit 1, not 143" test "$rc" -eq 1
expect "synth stopped by SIGTERM: one error line saying so" \
    test "$(grep -c '^error: .*/stopped/train: stopped by a signal' "$tmp/err")" -eq 1
expect "synth stopped by SIGTERM: no DIR/train, no temporary folder" \
    test -z "$(ls -A "$tmp/stopped" 2>/dev/null)"
"$MMDATA" synth --out "$tmp/killed" --samples 100000 >"$tmp/out" 2>"$tmp/err" &
pid=$!
for _ in $(seq 1 100); do
    ls "$tmp/killed"/.train.synth-* >/dev/null 2>&1 && break
    sleep 0.1
done
sleep 0.5
kill -KILL "$pid"
wait "$pid" 2>/dev/null
expect "synth killed by SIGKILL: no DIR/train" test ! -e "$tmp/killed/train"
run "$MMDATA" synth --out "$tmp/killed" --samples 100 --seed 3
expect "synth after a kill: succeeds" test "$rc" -eq 0
expect "synth after a kill: the stale temporary folder is removed" \
    test "$(ls -A "$tmp/killed")" = "$(printf 'train\nval')"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
