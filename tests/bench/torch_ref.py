#!/usr/bin/python3
# torch_ref.py: the yardstick for `make bench`: the same model, batch and training step as
# tests/bench/bench_model.c, written the way a PyTorch user would (fp32, eager, torch.optim.AdamW),
# timed on the same machine at the same thread count. Without it "fast" has no reference.
#
#   /usr/bin/python3 tests/bench/torch_ref.py --threads N [--warmup W] [--steps S] SHAPES_JSON
#
# SHAPES_JSON is the object bench_model prints after "SHAPES " (bench_model --shapes-only), so
# both sides always use identical sizes. Prints one `TORCH {json}` line, or `TORCH_SKIP reason`
# when torch is not importable (Debian's python3-torch lives under /usr/bin/python3).
#
# The architecture mirrors model/transformer.c: image patches (row-major patch, HWC inside)
# and audio frame groups are linearly projected, bytes are embedded, each with a learned
# position table; [image | audio | text] go through pre-norm blocks (LN -> packed qkv ->
# prefix-LM attention -> proj, LN -> fc -> GELU(tanh) -> fc), a final LN, and an lm_head on the
# text positions only; loss = mean over samples of each sample's mean token cross-entropy.
# Attention is written out (QK^T, mask, softmax, PV) because torch 1.13 has no fused CPU
# attention; that is also what the C backend does.
import argparse
import json
import math
import os
import sys
import time


def build(torch, sh):
    nn = torch.nn
    F = torch.nn.functional
    d, L, NH, dff, V = sh["d_model"], sh["n_layers"], sh["n_heads"], sh["d_ff"], sh["vocab"]
    p, C = sh["patch"], sh["img_c"]
    n_img = (sh["img_h"] // p) * (sh["img_w"] // p)
    n_aud = sh["audio_F"] // sh["audio_group"]
    T, text_T = sh["T"], sh["text_T"]
    assert n_img + n_aud + text_T == T, "shape mismatch with bench_model"
    HD = d // NH

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(d, eps=1e-5)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d, eps=1e-5)
            self.fc = nn.Linear(d, dff)
            self.fc2 = nn.Linear(dff, d)

        def forward(self, x, mask):
            B = x.shape[0]
            qkv = self.qkv(self.ln1(x)).view(B, T, 3, NH, HD).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (B, NH, T, HD)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(HD))
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(B, T, d)
            x = x + self.proj(y)
            return x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.img_proj = nn.Linear(p * p * C, d)
            self.img_pos = nn.Parameter(torch.randn(n_img, d) * 0.02)
            self.aud_proj = nn.Linear(sh["audio_group"] * sh["n_mels"], d)
            self.aud_pos = nn.Parameter(torch.randn(n_aud, d) * 0.02)
            self.tok_emb = nn.Embedding(V, d)
            self.txt_pos = nn.Parameter(torch.randn(text_T, d) * 0.02)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(d, eps=1e-5)
            self.lm_head = nn.Linear(d, V, bias=False)  # no bias, as in transformer.c
            # prefix-LM: query i sees key j iff j < P or j <= i (True = masked out)
            P = n_img + n_aud
            i = torch.arange(T).view(T, 1)
            j = torch.arange(T).view(1, T)
            self.register_buffer("mask", ~((j < P) | (j <= i)))

        def forward(self, image, audio, tokens, targets):
            B = image.shape[0]
            hp, wp = sh["img_h"] // p, sh["img_w"] // p
            patches = (image.view(B, hp, p, wp, p, C).permute(0, 1, 3, 2, 4, 5)
                       .reshape(B, n_img, p * p * C))
            frames = audio[:, : n_aud * sh["audio_group"]].reshape(B, n_aud, -1)
            x = torch.cat([self.img_proj(patches) + self.img_pos,
                           self.aud_proj(frames) + self.aud_pos,
                           self.tok_emb(tokens) + self.txt_pos], dim=1)
            for blk in self.blocks:
                x = blk(x, self.mask)
            logits = self.lm_head(self.ln_f(x[:, T - text_T:]))
            tok_loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1),
                                       ignore_index=-1, reduction="none").view(B, text_T)
            valid = (targets >= 0).float()
            per_sample = (tok_loss * valid).sum(1) / valid.sum(1).clamp(min=1.0)
            return per_sample.mean()

    return Model()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("shapes", help="the JSON object bench_model prints after 'SHAPES '")
    a = ap.parse_args()
    sh = json.loads(a.shapes)
    # OpenMP reads its variables when torch loads it; set_num_threads covers ATen's pool.
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    # Debian's torch calls the pthreads build of OpenBLAS from inside libgomp regions; with
    # libgomp's default spin-waiting the two thread pools fight over the cores (2 threads ran
    # 2-3x slower than 1 on a 2-core VM). Passive waiting is the documented remedy and was the
    # fastest setting we found, so the reference is PyTorch at its best, not a straw man.
    if a.threads > 1:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError as e:
        print(f"TORCH_SKIP torch is not importable by {sys.executable} ({e}); "
              "install Debian's python3-torch")
        return 0
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    model = build(torch, sh)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": sh["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=sh["lr"], betas=(sh["beta1"], sh["beta2"]), eps=sh["eps"])
    B, text_T = sh["B"], sh["text_T"]
    image = torch.rand(B, sh["img_h"], sh["img_w"], sh["img_c"]) * 2 - 1
    audio = torch.randn(B, sh["audio_F"], sh["n_mels"])
    body = torch.randint(0, 256, (B, text_T - 1))
    tokens = torch.cat([torch.full((B, 1), 256), body], dim=1)        # BOS + bytes
    targets = torch.cat([body, torch.full((B, 1), 257)], dim=1)      # bytes + EOS
    clip = sh.get("grad_clip", 0.0)

    # Best step (and the mean), as bench_model reports: interference only slows a step.
    losses, times = [], []
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(image, audio, tokens, targets)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        dt = time.perf_counter() - t0
        losses.append(loss.item())
        if s >= a.warmup:
            times.append(dt)
    step = min(times)
    out = {"config": sh["config"], "threads": a.threads, "torch": torch.__version__,
           "torch_threads": torch.get_num_threads(), "B": B, "T": sh["T"], "steps": a.steps,
           "tokens_per_s": round(B * sh["T"] / step, 1), "ms_per_step": round(step * 1e3, 3),
           "ms_per_step_mean": round(sum(times) / len(times) * 1e3, 3),
           "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
    print("TORCH " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
