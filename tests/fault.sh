#!/usr/bin/env bash
# fault.sh: runs the fault-injection scripts of tests/fault/ (tests/run.sh runs only the
# top-level tests/*.sh) and adds their "N passed, N failed" lines into one. A script that
# crashes or prints no count counts as one failure; "skipped" scripts count 0 and 0.
set -u
here=$(cd "$(dirname "$0")" && pwd)
p=0; f=0
for s in "$here"/fault/*.sh; do
    out=$(bash "$s" 2>&1); rc=$?
    echo "$out" | sed "s|^|$(basename "$s" .sh): |"
    line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed' | tail -n 1)
    if [ -z "$line" ]; then f=$((f + 1)); continue; fi
    p=$((p + $(echo "$line" | awk '{print $1}')))
    ff=$(echo "$line" | awk '{print $3}')
    [ "$rc" -ne 0 ] && [ "$ff" -eq 0 ] && ff=1
    f=$((f + ff))
done
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
