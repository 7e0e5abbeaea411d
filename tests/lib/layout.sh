# layout.sh: sourced (not run) by the script tests that compare runs of different layouts
# (dist_mpi.sh, augment.sh): the per-step losses of run folders under $tmp, and the one rule
# they are held to. Needs $tmp, $STEPS and the script's ok().

# losses NAME: "step loss" lines of $tmp/NAME/metrics.jsonl
losses() { grep -o '"step":[0-9]*,"loss":[^,]*' "$tmp/$1/metrics.jsonl" | sed 's/"step":\([0-9]*\),"loss":/\1 /'; }

# same_losses A B [FROM]: steps >= FROM (default 1) of A and B agree within 1e-5 relative (only
# the reduction order may differ), and B has them all
same_losses() {
    local a=$1 b=$2 from=${3:-1}
    local res
    res=$(join <(losses "$a" | sort -k1,1) <(losses "$b" | sort -k1,1) | awk -v from="$from" -v steps=$STEPS '
        $1 >= from { n++; d = $2 - $3; if (d < 0) d = -d; r = d / ($2 < 0 ? -$2 : $2);
                     if (r > worst) worst = r }
        END { printf "%d %.3g", n, worst; exit !(n == steps - from + 1 && worst <= 1e-5) }')
    local rc=$?
    ok "losses $a vs $b from step $from: steps compared, worst relative difference = $res" '[ $rc -eq 0 ]'
}
