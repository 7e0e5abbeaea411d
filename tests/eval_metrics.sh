#!/usr/bin/env bash
# eval_metrics.sh: the caption metrics of train/eval.c (exact match, CER, BLEU-4; issue 17)
# against implementations written another way: a Python reference here (str.split, Counter
# n-grams, a Levenshtein over Python characters, UTF-8 decoded with surrogateescape so that
# each invalid byte is one character), over random pairs with case and spacing changes, UTF-8,
# NULs, invalid bytes and empty sides; and, when it can be imported or pip-installed,
# sacrebleu's corpus BLEU (smooth_method none, tokenize none, lowercase) on the ASCII pairs
# (skipped otherwise: its lowercasing is Unicode's, ours ASCII's).
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
cat >"$tmp/ref.py" <<'PY'
import math, random, sys
from collections import Counter

def pairs(seed, n, ascii_only):
    r = random.Random(seed)
    words = ["a", "the", "red", "Red", "circle", "dog", "on", "left", "x", "cat"]
    extra = ["caf\u00e9", "\u20ac", "\u00c9t\u00e9"]
    out = []
    for _ in range(n):
        ref = [r.choice(words) for _ in range(r.randint(0, 9))]
        gen = [w if r.random() < 0.7 else r.choice(words) for w in ref]
        if r.random() < 0.3: gen = gen[: r.randint(0, len(gen))]
        if r.random() < 0.3: gen += [r.choice(words) for _ in range(r.randint(1, 4))]
        if r.random() < 0.2: gen = [w.upper() for w in gen]
        sep = lambda: r.choice([" ", " ", "  ", "\t", " \n "])
        rb = " ".join(ref).encode()
        lead = sep() if r.random() < 0.2 else ""
        gb = (lead + sep().join(gen)).encode()
        if not ascii_only and r.random() < 0.3:
            gb += (" " + r.choice(extra)).encode()
        if not ascii_only and r.random() < 0.2:
            i = r.randint(0, len(gb)); gb = gb[:i] + r.choice([b"\0", b"\xff", b"\xc3", b"\xe2\x82"]) + gb[i:]
        out.append((rb, gb))
    return out

def lev(a, b):
    row = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, row[0] = row[0], i
        for j in range(1, len(b) + 1):
            cur = min(prev + (a[i - 1] != b[j - 1]), row[j] + 1, row[j - 1] + 1)
            prev, row[j] = row[j], cur
    return row[-1]

def low(b): return bytes(c + 32 if 65 <= c <= 90 else c for c in b)
def words(b): return low(b).split()  # bytes.split(): ASCII whitespace only
def chars(b): return b.decode("utf-8", errors="surrogateescape")

def metrics(ps):
    exact = sum(words(r) == words(g) for r, g in ps) / len(ps)
    edits = sum(lev(chars(g), chars(r)) for r, g in ps); rc = sum(len(chars(r)) for r, g in ps)
    m = [0] * 4; t = [0] * 4; c = rl = 0
    for r, g in ps:
        rw, gw = words(r), words(g); c += len(gw); rl += len(rw)
        for n in range(1, 5):
            gc = Counter(tuple(gw[i:i + n]) for i in range(len(gw) - n + 1))
            rcn = Counter(tuple(rw[i:i + n]) for i in range(len(rw) - n + 1))
            t[n - 1] += sum(gc.values()); m[n - 1] += sum(min(v, rcn[k]) for k, v in gc.items())
    bleu = 0.0 if c == 0 or min(m) == 0 else \
        (1.0 if c > rl else math.exp(1 - rl / c)) * math.exp(sum(math.log(m[i] / t[i]) for i in range(4)) / 4)
    return exact, edits / rc, bleu, [(int(words(r) == words(g)), lev(chars(g), chars(r)), len(chars(r))) for r, g in ps]

mode, seed, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ps = pairs(seed, 300, mode == "ascii")
with open(path + ".in", "w") as f:
    for r, g in ps: f.write(r.hex() + "\t" + g.hex() + "\n")
with open(path + ".py", "w") as f:
    ex, cer, bleu, per = metrics(ps)
    for p in per: f.write("%d %d %d\n" % p)
    f.write("%.17g %.17g %.17g\n" % (ex, cer, bleu))
if mode == "ascii":
    try:
        import sacrebleu
        hyps = [g.decode() for r, g in ps]; refs = [r.decode() for r, g in ps]
        s = sacrebleu.corpus_bleu(hyps, [refs], smooth_method="none", tokenize="none",
                                  lowercase=True, force=True)
        open(path + ".sacrebleu", "w").write("%.17g\n" % (s.score / 100))
    except ImportError:
        pass
PY
# sacrebleu: importable, or pip-installable into the temporary folder; skipped otherwise
export PYTHONPATH=$tmp/py${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import sacrebleu" 2>/dev/null ||
    timeout 120 python3 -m pip install -q --target "$tmp/py" sacrebleu >/dev/null 2>&1 ||
    echo "note: sacrebleu cannot be installed here: its comparison is skipped"
# close: two numbers agree to 1e-12 relative
close() { python3 -c "import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if abs(a - b) <= 1e-12 * max(1, abs(b)) else 1)" "$1" "$2"; }
for mode in ascii bytes; do
    for seed in 1 2 3; do
        f=$tmp/$mode$seed
        python3 "$tmp/ref.py" "$mode" "$seed" "$f" || { fail=$((fail+1)); echo "FAIL: python $mode $seed"; continue; }
        "$B/tests/test_eval" --score "$f.in" >"$f.c" 2>&1
        ok "$mode pairs (seed $seed): each pair's exact match, edits and reference length equal Python's" \
            'diff <(head -n -1 "$f.c") <(head -n -1 "$f.py") >/dev/null'
        read -r ce cc cb _ < <(tail -n 1 "$f.c"); read -r pe pc pb < <(tail -n 1 "$f.py")
        echo "$mode $seed: exact $ce / $pe, CER $cc / $pc, BLEU-4 $cb / $pb$( [ -f "$f.sacrebleu" ] && echo ", sacrebleu $(cat "$f.sacrebleu")")"
        ok "$mode (seed $seed): corpus exact, CER and BLEU-4 equal Python's ($ce $cc $cb)" \
            'close "$ce" "$pe" && close "$cc" "$pc" && close "$cb" "$pb"'
        if [ -f "$f.sacrebleu" ]; then
            ok "ascii (seed $seed): BLEU-4 $cb equals sacrebleu's $(cat "$f.sacrebleu")" 'close "$cb" "$(cat "$f.sacrebleu")"'
        fi
    done
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
