# trace_check.py: checks one rank's step timeline for tests/trace.sh (see its header):
#   python3 trace_check.py RANK_JSON RANK METRICS_JSONL N_LAYERS
# Prints the worst step's coverage, then "OK" or one line per problem.
import json, sys
path, rank, metrics, n_layers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
bad = []
doc = json.load(open(path))
ev = doc["traceEvents"]
X = [e for e in ev if e.get("ph") == "X"]
M = [e for e in ev if e.get("ph") == "M"]
if any(e.get("pid") != rank for e in ev): bad.append("an event with pid != rank")
if any(not isinstance(e.get("ts"), (int, float)) or e.get("dur", -1) < 0 for e in X):
    bad.append("an X event without ts or with a negative dur")
named = {e["tid"] for e in M if e["name"] == "thread_name"}
if {e["tid"] for e in X} - named: bad.append("threads without a name: %s" % ({e["tid"] for e in X} - named))
names = {e["name"] for e in X}
need = ["step", "data wait", "load batch", "micro-step", "forward", "backward", "grad sync",
        "allreduce", "optimizer", "evaluation", "checkpoint"]
need += ["backward blocks.%d" % l for l in range(n_layers)]
missing = [n for n in need if n not in names]
if missing: bad.append("missing phases: %s" % missing)
if not any(e["name"] == "load batch" and e["tid"] == 2 for e in X): bad.append("no loader-thread event")
buckets = {e["tid"] for e in X if e["name"] == "allreduce"}
if len(buckets) < 2: bad.append("allreduce on %d bucket threads, expected several" % len(buckets))
steps = sorted((e for e in X if e["name"] == "step"), key=lambda e: e["args"]["step"])
if [e["args"]["step"] for e in steps] != list(range(1, 21)): bad.append("steps are not 1..20")
# nesting: per thread, each event lies inside the enclosing one or after it (1 us rounding)
eps = 1.0
for tid in {e["tid"] for e in X}:
    stack = []
    for e in sorted((e for e in X if e["tid"] == tid), key=lambda e: (e["ts"], -e["dur"])):
        while stack and e["ts"] >= stack[-1]["ts"] + stack[-1]["dur"] - eps: stack.pop()
        if stack and e["ts"] + e["dur"] > stack[-1]["ts"] + stack[-1]["dur"] + eps:
            bad.append("tid %d: %s overlaps %s without nesting" % (tid, e["name"], stack[-1]["name"]))
            break
        stack.append(e)
# per step, the phases directly inside it against its duration
main = [e for e in X if e["tid"] == 1]
worst = 0.0
for s in steps:
    lo, hi = s["ts"] - eps, s["ts"] + s["dur"] + eps
    inside = [e for e in main if e is not s and e["ts"] >= lo and e["ts"] + e["dur"] <= hi]
    top = [e for e in inside if not any(p is not e and p["ts"] <= e["ts"] and
           e["ts"] + e["dur"] <= p["ts"] + p["dur"] and p["dur"] > e["dur"] for p in inside)]
    total = sum(e["dur"] for e in top)
    worst = max(worst, abs(total - s["dur"]) / s["dur"])
if worst > 0.05: bad.append("a step's phases sum %.1f%% away from its duration" % (100 * worst))
if rank == 0:
    st = [json.loads(l)["step_time"] for l in open(metrics) if '"step_time"' in l]
    d = [abs(a - s["dur"] * 1e-6) for a, s in zip(st, steps)]
    if len(st) != 20 or max(d) > 2e-6: bad.append("step durations differ from metrics.jsonl's step_time")
print("worst step: phases sum within %.2f%% of the step time" % (100 * worst))
print("\n".join(bad) if bad else "OK")
