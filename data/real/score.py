#!/usr/bin/env python3
"""score.py: scores a transformer run on the Fashion-MNIST + speech set (fashion_speech.sh)
the way the set is meant to be judged: the share of generated captions that name the right
class, and only that class. The trainer's own scorers do not know what a class is (word F1
and exact match reward the template words too), so this reads what it wrote instead.

Input: a run directory (its last eval/step_*.jsonl is scored) or one such file. Each line
holds sample_id, reference and generated (train/eval.c). The reference's class is the one
class name it contains; with --labels (the set's files/test_labels.tsv) the class comes from
the label file by sample_id (= manifest line) and the reference must agree with it.

Class names are matched as whole words, lower-cased, with '-' part of a word, so "shirt"
is not found inside "t-shirt" and "boot" alone is not "ankle boot". A caption is right when
the set of classes it names is exactly {the reference's}. The test samples have no sound, so
this is image-only accuracy. Where the file also holds the captions of each input mode
(generated_image: the sound left out; generated_audio: the image left out, written under
eval.audio_captions), each mode's accuracy follows, over the samples that have it.
"""
import argparse
import glob
import json
import os
import re
import sys

CLASSES = ["t-shirt", "trousers", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle boot"]
PATTERNS = [re.compile(r"(?<![\w-])" + re.escape(c) + r"(?![\w-])") for c in CLASSES]


def die(msg):
    print("error: score.py: " + msg, file=sys.stderr)
    sys.exit(1)


def named(caption):
    """Indices of the classes a caption names."""
    low = caption.lower()
    return {c for c, p in enumerate(PATTERNS) if p.search(low)}


def eval_file(path):
    if os.path.isfile(path):
        return path
    files = sorted(glob.glob(os.path.join(path, "eval", "step_*.jsonl")))
    if not files:
        die(f"{path}: no eval/step_*.jsonl (a transformer run directory, or one such file)")
    return files[-1]


def read_labels(path):
    """sample_id (manifest line) -> class index, from a *_labels.tsv."""
    out = {}
    try:
        with open(path) as f:
            head = f.readline().rstrip("\n").split("\t")
            if head[:2] != ["line", "class"]:
                die(f"{path}:1: expected a header starting 'line<TAB>class'")
            for n, row in enumerate(f, 2):
                cols = row.rstrip("\n").split("\t")
                try:
                    out[int(cols[0])] = int(cols[1])
                except (ValueError, IndexError):
                    die(f"{path}:{n}: expected an integer line and class")
    except OSError as e:
        die(f"{path}: {e}")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run directory (its last eval/step_*.jsonl) or an eval .jsonl")
    ap.add_argument("--labels", help="the set's files/test_labels.tsv: classes by sample_id")
    a = ap.parse_args()
    path = eval_file(a.run)
    labels = read_labels(a.labels) if a.labels else None

    modes = {"generated_image": "image only", "generated_audio": "audio only"}
    mode_n = dict.fromkeys(modes, 0)
    mode_right = dict.fromkeys(modes, 0)
    n = [0] * len(CLASSES)
    right = [0] * len(CLASSES)
    wrong = {"another class": 0, "several classes": 0, "no class": 0}
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
                sid, ref, gen = rec["sample_id"], rec["reference"], rec["generated"]
            except (ValueError, KeyError, TypeError) as e:
                die(f"{path}:{ln}: not an eval line with sample_id, reference, generated ({e})")
            ref_cls = named(ref)
            if len(ref_cls) != 1:
                die(f"{path}:{ln}: reference {ref!r} names {len(ref_cls)} classes, not one")
            (c,) = ref_cls
            if labels is not None:
                if sid not in labels:
                    die(f"{path}:{ln}: sample_id {sid} is not in {a.labels}")
                if labels[sid] != c:
                    die(f"{path}:{ln}: sample_id {sid}: reference {ref!r} but {a.labels} "
                        f"says {CLASSES[labels[sid]]}")
            for key in modes:
                if key in rec:
                    mode_n[key] += 1
                    mode_right[key] += named(rec[key]) == {c}
            got = named(gen)
            n[c] += 1
            if got == {c}:
                right[c] += 1
            elif not got:
                wrong["no class"] += 1
            elif len(got) > 1:
                wrong["several classes"] += 1
            else:
                wrong["another class"] += 1
    total = sum(n)
    if total == 0:
        die(f"{path}: no captions")
    print(f"score.py: {path}: {total} captions")
    print(f"{'class':<12} {'n':>5} {'right':>6} {'acc':>7}")
    for c, name in enumerate(CLASSES):
        acc = f"{100 * right[c] / n[c]:6.1f}%" if n[c] else "    n/a"
        print(f"{name:<12} {n[c]:>5} {right[c]:>6} {acc}")
    print("wrong: " + ", ".join(f"{k} {v}" for k, v in wrong.items()))
    print(f"accuracy {100 * sum(right) / total:.1f}% ({sum(right)}/{total})")
    for key, label in modes.items():
        if mode_n[key]:
            print(f"{label}: accuracy {100 * mode_right[key] / mode_n[key]:.1f}% "
                  f"({mode_right[key]}/{mode_n[key]})")


if __name__ == "__main__":
    main()
