#!/usr/bin/env python3
"""encoder_proxy.py: which image encoder a small transformer needs on this set, measured in
minutes instead of hours. It trains image-only classifiers that are the trainer's transformer
in miniature (d_model 128, 4 pre-norm blocks, 4 heads, AdamW lr 2e-3 with 50 warmup steps and
a cosine to 1e-4, weight decay 0.1, batch 32, 1200 steps, mirroring: configs/fashion_tiny.yaml's
recipe) on the same 4000 photos, upscaled to 32x32 as pack does, and scores them on the same
500 test photos. Only the encoder in front of the blocks changes:

  patch8  linear 8x8 patches (16 tokens): model.stem: patch, model.patch: 8
  conv    two 3x3 conv + GELU + 2x2 max-pool stages (32, 64 channels), then 2x2 patches
          (16 tokens): model.stem: conv (train/MODEL.md)
  patch4  linear 4x4 patches (64 tokens)
  overlap 8x8 patches at stride 4 (49 tokens)

Measured on the 2-core VM with a first draft of this script (erf GELU; data/real/README.md
has the table): patch8 78.1% (2 seeds), conv 82.0% (4 seeds), overlap 78.2%, patch8 with
d_model 64 79.9%; the captioning transformer gained less from the conv stem (README).
The recipe options (--lr, --layers, --dropout, --stoch-depth, --translate, --batchnorm) ask
the same question of the training recipe around an encoder before anyone builds it into the
trainer (README "What the proxy says about the recipe": at 1500 steps none beat the conv
stem's plain recipe by more than the noise).
The class comes from the mean of the last block's outputs (a classifier head), not from a
generated caption, so the numbers compare encoders, not the trainer.

Input: the set's files/ folder ({train,test}_pixels.u8 and _labels.tsv). Needs torch and numpy.
"""
import argparse
import math
import os
import sys


def parser():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", default=os.path.join(here, "fashion_speech", "files"),
                    help="the set's files/ folder (default: %(default)s)")
    ap.add_argument("--encoders", default="patch8,conv",
                    help="comma-separated: patch8, conv, patch4, overlap (default: %(default)s)")
    ap.add_argument("--seeds", default="1,2", help="comma-separated seeds (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=1200, help="optimizer steps (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default: %(default)s)")
    ap.add_argument("--layers", type=int, default=4, help="transformer blocks (default: %(default)s)")
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="dropout of the tokens and of each branch, as model.dropout (default: %(default)s)")
    ap.add_argument("--stoch-depth", type=float, default=0.0,
                    help="share of samples skipping the last block's branches, less in earlier ones (default: %(default)s)")
    ap.add_argument("--translate", type=int, default=0,
                    help="largest shift in pixels, as augment.translate (default: %(default)s)")
    ap.add_argument("--batchnorm", action="store_true", help="batch norm after each stem convolution")
    return ap


if __name__ == "__main__":
    parser().parse_args()  # --help and bad arguments answer before torch and numpy load

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:
    print(f"error: encoder_proxy.py: {e.name} is missing: pip install torch numpy", file=sys.stderr)
    sys.exit(1)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baseline import load  # noqa: E402  (the same reader, the same checks)


class Block(nn.Module):
    def __init__(self, C, H, drop=0.0, sd=0.0):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.att = nn.MultiheadAttention(C, H, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU("tanh"), nn.Linear(4 * C, C))
        self.drop, self.sd = nn.Dropout(drop), sd

    def branch(self, y):
        """dropout, then stochastic depth: the whole branch left out for a share sd of samples"""
        if self.training and self.sd > 0:
            y = y * ((torch.rand(y.shape[0], 1, 1) >= self.sd).float() / (1 - self.sd))
        return self.drop(y)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.branch(self.att(h, h, h, need_weights=False)[0])
        return x + self.branch(self.mlp(self.ln2(x)))


def encoder(kind, C, bn=False):
    """(module on (N, 1, 32, 32) images -> (N, C, h, w), tokens); bn: batch norm in the conv stem"""
    if kind == "patch8":
        return nn.Conv2d(1, C, 8, 8), 16
    if kind == "patch4":
        return nn.Conv2d(1, C, 4, 4), 64
    if kind == "overlap":
        return nn.Conv2d(1, C, 8, 4), 49
    if kind == "conv":
        norm = nn.BatchNorm2d if bn else (lambda _: nn.Identity())
        return nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), norm(32), nn.GELU("tanh"), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, 1, 1), norm(64), nn.GELU("tanh"), nn.MaxPool2d(2),
                             nn.Conv2d(64, C, 2, 2)), 16
    raise ValueError(kind)


class Net(nn.Module):
    def __init__(self, kind, C=128, L=4, H=4, drop=0.0, sd=0.0, bn=False):
        super().__init__()
        self.enc, n = encoder(kind, C, bn)
        self.pos = nn.Parameter(torch.randn(1, n, C) * 0.02)
        # stochastic depth grows linearly with depth to sd at the last block
        self.blocks = nn.ModuleList([Block(C, H, drop, sd * (i + 1) / L) for i in range(L)])
        self.ln, self.head = nn.LayerNorm(C), nn.Linear(C, 10)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.enc(x).flatten(2).transpose(1, 2) + self.pos)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x).mean(1))


def images(x):
    """N x 784 pixels in [0, 1] -> (N, 1, 32, 32) in [-1, 1], scaled up as pack does"""
    t = torch.tensor(x * 2 - 1).reshape(-1, 1, 28, 28)
    return F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)


def translate(xb, t, g):
    """each image shifted by up to t pixels along each axis, the border repeated (augment.translate)"""
    if t == 0:
        return xb
    pad = F.pad(xb, (t, t, t, t), mode="replicate")
    d = torch.randint(0, 2 * t + 1, (xb.shape[0], 2), generator=g).tolist()
    h, w = xb.shape[2], xb.shape[3]
    return torch.stack([pad[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(d)])


def run(kind, seed, xtr, ytr, xte, yte, steps, r, min_lr=1e-4, warmup=50, bs=32):
    """test accuracy of one encoder trained with the recipe r (the parsed command line)"""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    lr = r.lr
    m = Net(kind, L=r.layers, drop=r.dropout, sd=r.stoch_depth, bn=r.batchnorm)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.1)
    n, perm, at = xtr.shape[0], None, 0
    for step in range(steps):
        now = lr * (step + 1) / warmup if step < warmup else \
            min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
        for pg in opt.param_groups:
            pg["lr"] = now
        if perm is None or at + bs > n:
            perm, at = torch.randperm(n, generator=g), 0
        idx = perm[at:at + bs]
        at += bs
        xb = xtr[idx]
        flip = torch.rand(bs, generator=g) < 0.5
        xb = translate(torch.where(flip[:, None, None, None], xb.flip(3), xb), r.translate, g)
        loss = F.cross_entropy(m(xb), ytr[idx])
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()
    m.eval()
    with torch.no_grad():
        return (m(xte).argmax(1) == yte).float().mean().item()


def main():
    a = parser().parse_args()
    kinds = a.encoders.split(",")
    for kind in kinds:
        if kind not in ("patch8", "conv", "patch4", "overlap"):
            print(f"error: encoder_proxy.py: --encoders: unknown encoder '{kind}'", file=sys.stderr)
            sys.exit(2)
    torch.set_num_threads(1)
    xtr, ytr = load(a.files, "train")
    xte, yte = load(a.files, "test")
    xtr, xte, ytr, yte = images(xtr), images(xte), torch.tensor(ytr), torch.tensor(yte)
    for kind in kinds:
        accs = [run(kind, int(s), xtr, ytr, xte, yte, a.steps, a) for s in a.seeds.split(",")]
        print(f"{kind:8s} " + " ".join(f"{100 * x:.1f}" for x in accs) +
              f"  mean {100 * np.mean(accs):.1f}%", flush=True)


if __name__ == "__main__":
    main()
