# runs.sh: sourced (not run) by the script tests that train small runs from one config and
# check command-line errors (finetune_cli.sh, safetensors.sh). Needs $B, $tmp, $root and the
# script's ok(); the config is $tmp/c.yaml.

# train NP NAME ARGS...: the trainer under mpirun into $tmp/NAME, log in $tmp/NAME.log
train() {
    local np=$1 name=$2; shift 2
    OMP_NUM_THREADS=1 timeout 300 mpirun "${root[@]}" --oversubscribe -np "$np" "$B/train" \
        "$tmp/c.yaml" run.out_dir="$tmp/$name" "$@" >"$tmp/$name.log" 2>&1
}

# trained NP NAME ARGS...: train and count success
trained() {
    train "$@"; local rc=$?
    ok "$2 exits 0 (rc $rc): $(tail -n 3 "$tmp/$2.log")" '[ $rc -eq 0 ]'
}

# expect_error NAME PATTERN CMD...: non-zero exit, exactly one error line matching PATTERN
expect_error() {
    local name=$1 pat=$2; shift 2
    "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
    ok "$name: exit non-zero (got $rc)" '[ $rc -ne 0 ]'
    ok "$name: one error line matching '$pat': $(grep error: "$tmp/err" | head -c 400)" \
        '[ "$(grep -c "^error:" "$tmp/err")" -eq 1 ] && grep -Eq "^error: .*$pat" "$tmp/err"'
    ok "$name: no crash" '! grep -Eqi "segmentation|sanitizer|core dumped|fatal:" "$tmp/err"'
}
