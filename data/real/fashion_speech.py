#!/usr/bin/env python3
"""fashion_speech.py: writes the files of a real paired image-audio-caption set, so that the
project can be tried and tuned on data that is not its own synthetic rule (issue 17).

Images are Fashion-MNIST photos from Debian's dataset-fashion-mnist (28x28 grey, 10
classes); sounds are the class names spoken by Debian's espeak-ng with a voice, speed, pitch
and loudness drawn per sample; captions name the class in one of a few phrasings. The
training set comes only from the package's train file and the test set only from its t10k
file (and no test image equals any training image byte for byte), so a score on the test
set is a held-out score. Sound is present in a seeded half of the training samples and in
no test sample: at test time the caption must come from the image. With --dev N it also
writes a development split, image-only like the test set, from the t10k file and sharing no
image with either: settings are chosen on it, so that the test set is scored once, at the end,
and its score stays held out (data/real/README.md, "Build").

Written to OUT (fashion_speech.sh packs it afterwards):
  img/{train,test}_NNNNN.png   the photos, 8-bit grey, as stored in the idx files
  wav/train_NNNNN.wav          spoken class name, 16-bit mono 22050 Hz, silence trimmed
  img/dev_NNNNN.png            with --dev N: the development photos
  train.jsonl, test.jsonl      mmdata pack manifests (line k = sample_id k); dev.jsonl too
  train_labels.tsv, test_labels.tsv, dev_labels.tsv
                               per manifest line: class, source file and index, sha1 of
                               the 784 pixel bytes, the speech settings (or '-')
  train_pixels.u8, test_pixels.u8 (dev_pixels.u8)
                               the same pixels back to back in manifest order (N x 784)
                               so baselines need no image decoder

Python standard library only (PNG by zlib, WAV by wave), so it runs on any python3.
Deterministic: the same arguments give the same files (espeak-ng is deterministic).
"""
import argparse
import array
import concurrent.futures
import gzip
import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import wave
import zlib

# Class names as the captions and the scorer say them (index = Fashion-MNIST label), and the
# noun phrase a caption uses. "t-shirt" and "shirt" differ as whole words; score.py matches
# whole words for that reason.
CLASSES = ["t-shirt", "trousers", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle boot"]
PHRASES = ["a t-shirt", "a pair of trousers", "a pullover", "a dress", "a coat",
           "a sandal", "a shirt", "a sneaker", "a bag", "an ankle boot"]
TEMPLATES = ["{}", "a photo of {}", "a picture of {}", "this is {}"]
# The caption limit the set is packed with: the longest caption above is 31 bytes.
TEXT_MAX = 32

# espeak-ng English voices and voice variants (Debian's espeak-ng-data; no mbrola).
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan",
          "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
            "klatt", "klatt2"]
RATE = 22050      # espeak-ng's own output rate, written as is
SIDE = 28         # Fashion-MNIST image side
TRIM_LEVEL = 300  # |sample| below this at either end counts as silence (about -40 dBFS)
TRIM_PAD = RATE // 50  # 20 ms of silence kept around the speech


def die(msg):
    print("error: fashion_speech.py: " + msg, file=sys.stderr)
    sys.exit(1)


def read_idx(path, magic, dims):
    """The payload of an idx file (gzip) after checking its header."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        die(f"{path}: {e}")
    head = 4 + 4 * dims
    if len(data) < head or struct.unpack(">I", data[:4])[0] != magic:
        die(f"{path}: not an idx file with magic {magic}")
    shape = struct.unpack(">" + "I" * dims, data[4:head])
    size = 1
    for s in shape:
        size *= s
    if len(data) - head != size:
        die(f"{path}: {len(data) - head} payload bytes, the header says {size}")
    return shape, data[head:]


def load_split(src, prefix):
    """(list of 784-byte images, list of labels) of one idx split."""
    ishape, pix = read_idx(os.path.join(src, prefix + "-images-idx3-ubyte.gz"), 2051, 3)
    (n,), lab = read_idx(os.path.join(src, prefix + "-labels-idx1-ubyte.gz"), 2049, 1)
    if ishape != (n, SIDE, SIDE):
        die(f"{src}: {prefix} images are {ishape}, labels {n}: expected ({n}, 28, 28)")
    if max(lab) >= len(CLASSES):
        die(f"{src}: {prefix} labels: label {max(lab)} is not one of the 10 classes")
    k = SIDE * SIDE
    return [pix[i * k:(i + 1) * k] for i in range(n)], list(lab)


def pick(images, labels, n, rng, banned):
    """n indices, class-balanced (the first n % 10 classes get one more), none of whose
    pixels are in banned or repeat within the pick."""
    by_class = [[] for _ in CLASSES]
    for i, c in enumerate(labels):
        by_class[c].append(i)
    seen = set(banned)
    chosen = []
    for c, idx in enumerate(by_class):
        want = n // len(CLASSES) + (1 if c < n % len(CLASSES) else 0)
        rng.shuffle(idx)
        got = 0
        for i in idx:
            if got == want:
                break
            h = images[i]
            if h in seen:
                continue
            seen.add(h)
            chosen.append(i)
            got += 1
        if got < want:
            die(f"class {CLASSES[c]}: only {got} distinct images for {want} samples")
    rng.shuffle(chosen)
    return chosen


def png_grey(pixels, w, h):
    """An 8-bit greyscale PNG of w x h bytes (rows unfiltered)."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    raw = b"".join(b"\0" + pixels[y * w:(y + 1) * w] for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def speak(text, voice, speed, pitch, amp, wav_path, max_len):
    """Synthesises text into wav_path, silence trimmed; faster until it fits max_len
    samples. Returns (samples, speed used)."""
    tmp = wav_path + ".raw.wav"
    for _ in range(8):
        cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amp),
               "-w", tmp, text]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            die(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.strip()}")
        with wave.open(tmp, "rb") as w:
            if w.getframerate() != RATE or w.getnchannels() != 1 or w.getsampwidth() != 2:
                die(f"espeak-ng wrote {w.getframerate()} Hz x {w.getnchannels()} channels, "
                    f"{8 * w.getsampwidth()} bit; expected {RATE} Hz mono 16 bit")
            pcm = array.array("h", w.readframes(w.getnframes()))
        if sys.byteorder == "big":
            pcm.byteswap()
        loud = [i for i, v in enumerate(pcm) if abs(v) > TRIM_LEVEL]
        if not loud:
            die(f"{' '.join(cmd)}: silence")
        pcm = pcm[max(0, loud[0] - TRIM_PAD):loud[-1] + TRIM_PAD]
        if len(pcm) <= max_len:
            break
        speed = speed * 5 // 4
    else:
        die(f"'{text}' with voice {voice} does not fit {max_len} samples at any speed")
    os.remove(tmp)
    if sys.byteorder == "big":
        pcm.byteswap()
    with wave.open(wav_path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return len(pcm), speed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder to write (created; must be empty)")
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist",
                    help="folder of the idx files (default: dataset-fashion-mnist's)")
    ap.add_argument("--train", type=int, default=4000, help="training samples (4000)")
    ap.add_argument("--test", type=int, default=500, help="test samples (500)")
    ap.add_argument("--dev", type=int, default=0,
                    help="development samples from t10k, no sound, for tuning (0: none)")
    ap.add_argument("--seed", type=int, default=1, help="seed of every choice (1)")
    ap.add_argument("--audio-share", type=float, default=0.5,
                    help="share of training samples with sound (0.5)")
    ap.add_argument("--max-seconds", type=float, default=1.25,
                    help="longest clip after trimming; slower speech is sped up (1.25)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="espeak-ng processes at once (CPUs)")
    a = ap.parse_args()
    if a.train < len(CLASSES) or a.test < len(CLASSES):
        die(f"--train {a.train} --test {a.test}: each needs at least {len(CLASSES)} samples")
    if a.dev != 0 and a.dev < len(CLASSES):
        die(f"--dev {a.dev}: 0 or at least {len(CLASSES)} samples")
    if not 0.0 <= a.audio_share <= 1.0:
        die(f"--audio-share {a.audio_share}: must be in [0, 1]")
    if a.threads < 1:
        die(f"--threads {a.threads}: must be at least 1")
    if os.path.exists(a.out) and os.listdir(a.out):
        die(f"--out {a.out}: exists and is not empty")

    train_img, train_lab = load_split(a.source, "train")
    test_img, test_lab = load_split(a.source, "t10k")
    rng = random.Random(a.seed)
    # Test first, banning every training image; then training, banning the chosen test
    # images (and so every test-equal image too): the two never share pixels.
    test_idx = pick(test_img, test_lab, a.test, rng, set(train_img))
    train_idx = pick(train_img, train_lab, a.train, rng, {test_img[i] for i in test_idx})
    n_audio = round(a.audio_share * a.train)
    with_audio = set(rng.sample(range(a.train), n_audio))
    # The development split from a stream of its own, after everything else: asking for it
    # leaves the training and test samples as they are without it.
    dev_idx = pick(test_img, test_lab, a.dev, random.Random(f"dev {a.seed}"),
                   set(train_img) | {test_img[i] for i in test_idx}) if a.dev else []

    os.makedirs(os.path.join(a.out, "img"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "wav"), exist_ok=True)
    max_len = int(a.max_seconds * RATE)
    jobs, out = [], {}
    splits = [("train", train_img, train_lab, train_idx), ("test", test_img, test_lab, test_idx)]
    if a.dev:
        splits.append(("dev", test_img, test_lab, dev_idx))
    for split, images, labels, chosen in splits:
        src = "train" if split == "train" else "t10k"
        rows, lines = [], []
        for k, i in enumerate(chosen):
            c = labels[i]
            caption = rng.choice(TEMPLATES).format(PHRASES[c])
            assert len(caption) <= TEXT_MAX, caption
            name = f"{split}_{k + 1:05d}"
            rec = {"image": f"img/{name}.png"}
            speech = None
            if split == "train" and k in with_audio:
                rec["audio"] = f"wav/{name}.wav"
                # text, voice, speed (words/min; raised later if the clip is too long),
                # pitch, amplitude
                speech = [rng.choice([CLASSES[c], PHRASES[c]]),
                          rng.choice(VOICES) + "+" + rng.choice(VARIANTS),
                          rng.randint(150, 220), rng.randint(25, 75), rng.randint(80, 140)]
                jobs.append((os.path.join(a.out, rec["audio"]), speech))
            rec["caption"] = caption
            with open(os.path.join(a.out, rec["image"]), "wb") as f:
                f.write(png_grey(images[i], SIDE, SIDE))
            lines.append(json.dumps(rec))
            rows.append((k + 1, c, src, i, hashlib.sha1(images[i]).hexdigest(), speech))
        with open(os.path.join(a.out, split + ".jsonl"), "w") as f:
            f.write("\n".join(lines) + "\n")
        with open(os.path.join(a.out, split + "_pixels.u8"), "wb") as f:
            f.write(b"".join(images[i] for i in chosen))
        out[split] = rows

    with concurrent.futures.ThreadPoolExecutor(a.threads) as ex:
        futs = [ex.submit(speak, s[0], s[1], s[2], s[3], s[4], path, max_len)
                for path, s in jobs]
        lens = []
        for (_, s), fut in zip(jobs, futs):
            n, s[2] = fut.result()
            lens.append(n)
    # written after the speech, so that the label files hold the speed each clip got
    for split, rows in out.items():
        with open(os.path.join(a.out, split + "_labels.tsv"), "w") as f:
            f.write("line\tclass\tname\tsource\tsource_index\tsha1\tspeech\n")
            for line, c, src, i, sha, speech in rows:
                sp = "|".join(map(str, speech)) if speech else "-"
                f.write(f"{line}\t{c}\t{CLASSES[c]}\t{src}\t{i}\t{sha}\t{sp}\n")
    if lens:
        lens.sort()
        print(f"fashion_speech.py: {len(lens)} clips, {lens[0] / RATE:.2f}-"
              f"{lens[-1] / RATE:.2f} s (median {lens[len(lens) // 2] / RATE:.2f} s)")
    print(f"fashion_speech.py: {a.train} training samples ({n_audio} with sound), "
          f"{a.test} test samples (no sound)" + (f", {a.dev} development samples (no sound)"
                                                 if a.dev else "") + f" in {a.out}")


if __name__ == "__main__":
    main()
