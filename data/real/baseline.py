#!/usr/bin/env python3
"""baseline.py: image-only classifiers on the same split as the trainer (fashion_speech.sh),
so that the share of right captions the transformer reaches has a yardstick: what plain
classifiers make of the same 4000 training photos, scored on the same 500 test photos.

Models (PyTorch, CPU): logistic regression (one linear layer), a two-layer MLP (784-256-10,
ReLU) and a small CNN (two 3x3 conv + pool stages, then 128 hidden), trained with AdamW
(lr 1e-3, weight decay 1e-2) on minibatches of 64, on pixels scaled to [0, 1] and
standardised by the training mean and standard deviation. The test set chooses nothing: the
number of epochs (up to 30, the CNN 15) is the one that scores best on the last 500
training samples after training on the other 3500; then the model is trained afresh on all
training samples for that many epochs and scored once on the test set. For each of --seeds
seeds; the table shows the mean test accuracy, its range over the seeds and the epochs.

Input: the set's files/ folder: {train,test}_pixels.u8 (N x 784 bytes in manifest order)
and {train,test}_labels.tsv (column 'class'). Needs torch and numpy (pip install torch numpy).
"""
import argparse
import os
import sys
import time


def die(msg):
    print("error: baseline.py: " + msg, file=sys.stderr)
    sys.exit(1)


def parser():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="?", default="data/real/fashion_speech/files",
                    help="the set's files/ folder (default data/real/fashion_speech/files)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per model (3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (2)")
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help and bad arguments answer before torch and numpy load

try:
    import numpy as np
    import torch
    import torch.nn as nn
except ImportError as e:
    die(f"{e.name} is missing: pip install torch numpy")


def load(files, split):
    lab_path = os.path.join(files, split + "_labels.tsv")
    pix_path = os.path.join(files, split + "_pixels.u8")
    try:
        with open(lab_path) as f:
            head = f.readline().rstrip("\n").split("\t")
            if "class" not in head:
                die(f"{lab_path}:1: no 'class' column")
            col = head.index("class")
            y = np.array([int(r.split("\t")[col]) for r in f], dtype=np.int64)
        x = np.fromfile(pix_path, dtype=np.uint8)
    except (OSError, ValueError) as e:
        die(f"{split}: {e}")
    if x.size != y.size * 784:
        die(f"{pix_path}: {x.size} bytes for {y.size} labels of 784 pixels")
    return x.reshape(-1, 784).astype(np.float32) / 255.0, y


def models():
    """name -> (constructor, most epochs)."""
    def logreg():
        return nn.Linear(784, 10)

    def mlp():
        return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))

    def cnn():
        return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),
                             nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(),
                             nn.Linear(128, 10))
    return {"logistic regression": (logreg, 30),
            "MLP 784-256-10": (mlp, 30),
            "small CNN": (cnn, 15)}


def fit(make, epochs, xtr, ytr, xte, yte, seed):
    """(net, accuracy on (xte, yte) after each of epochs epochs of training on (xtr, ytr))."""
    torch.manual_seed(seed)
    net = make()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    accs = []
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xtr[idx]), ytr[idx]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            accs.append((net(xte).argmax(1) == yte).float().mean().item())
    return net, accs


def train_eval(make, max_epochs, xtr, ytr, xte, yte, seed, n_val=500):
    """(test accuracy, epochs): epochs chosen on the last n_val training samples."""
    _, val = fit(make, max_epochs, xtr[:-n_val], ytr[:-n_val], xtr[-n_val:], ytr[-n_val:], seed)
    epochs = val.index(max(val)) + 1
    return fit(make, epochs, xtr, ytr, xte, yte, seed)[1][-1], epochs


def main():
    a = parser().parse_args()
    if a.seeds < 1:
        die(f"--seeds {a.seeds}: must be at least 1")
    torch.set_num_threads(a.threads)
    xtr, ytr = load(a.files, "train")
    xte, yte = load(a.files, "test")
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = torch.from_numpy((xtr - mean) / std), torch.from_numpy((xte - mean) / std)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)
    print(f"baseline.py: {len(ytr)} training and {len(yte)} test images from {a.files}, "
          f"{a.seeds} seeds, torch {torch.__version__}")
    print(f"{'model':<22} {'test acc':>9} {'range':>15} {'epochs':>9} {'s/seed':>7}")
    for name, (make, max_epochs) in models().items():
        t0 = time.time()
        runs = [train_eval(make, max_epochs, xtr, ytr, xte, yte, s) for s in range(a.seeds)]
        accs = [r[0] for r in runs]
        dt = (time.time() - t0) / a.seeds
        print(f"{name:<22} {100 * sum(accs) / len(accs):8.1f}% "
              f"{100 * min(accs):6.1f}-{100 * max(accs):5.1f}% "
              f"{','.join(str(r[1]) for r in runs):>9} {dt:6.1f}s")


if __name__ == "__main__":
    main()
