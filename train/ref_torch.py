#!/usr/bin/env python3
# ref_torch.py: an independent PyTorch rebuild of both model kinds from train/MODEL.md alone,
# run on an export (train/EXPORT.md) and the validation set (data/FORMAT.md), to show that
# those documents suffice: it recomputes the trainer's validation losses (and, for the
# transformer, its greedy captions) and compares them with what the run logged. It reads no C
# and shares no code with the trainer; tests/torch_ref.sh holds it to 1e-6 relative.
#
#   python3 train/ref_torch.py EXPORT.h5 [--val DIR] [--samples N] [--run RUN_DIR]
#                              [--dtype float64|float32] [--captions] [--rtol R]
#
# Without --val / --samples it takes data.val and eval.samples from the config stored in the
# export. With --run it reads RUN_DIR/metrics.jsonl at the export's step and, with --captions,
# RUN_DIR/eval/step_*.jsonl, prints each difference and exits 1 when a loss differs by more
# than --rtol (relative) or a caption differs. float64 (the default) computes the exact value
# of the documented model, so its difference from the log is the trainer's fp32 rounding;
# --dtype float32 shows what fp32 arithmetic in PyTorch gives instead.
#
# Needs numpy, h5py and PyYAML; torch (CPU is enough). The model classes need only torch and
# numpy (h5py and PyYAML are imported where files are read): tests/gpu/torch_gpu.py trains
# them on a GPU as the PyTorch yardstick of tests/gpu/run.sh, so they take their device from
# their inputs.
import argparse
import json
import math
import os
import sys

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the caller (tests/torch_ref.sh) checks first; this is for a user
    sys.exit("ref_torch.py: needs torch (pip install torch)")

BOS, EOS, PAD, VOCAB = 256, 257, 258, 259  # tokenizer bytes-v1


# ---------------------------------------------------------------------------------------
# The validation set (data/FORMAT.md): samples 0..n-1 in shard order, decoded as the loader
# decodes them.


def log_mel(pcm, rate, n_fft, hop, n_mels, audio_len):
    """(F, n_mels) features of one clip of int16 PCM (FORMAT.md "Audio features")."""
    x = np.zeros(audio_len)
    x[: len(pcm)] = pcm.astype(np.float64) / 32768.0
    frames = 1 + (audio_len - n_fft) // hop
    i = np.arange(n_fft)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * i / n_fft)  # periodic Hann
    seg = np.stack([x[t * hop : t * hop + n_fft] for t in range(frames)]) * win
    power = np.abs(np.fft.rfft(seg, axis=1)) ** 2 / np.sum(win * win)
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    edges = hz(mel(rate / 2.0) * np.arange(n_mels + 2) / (n_mels + 1))
    f = np.arange(n_fft // 2 + 1) * rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    tri = np.maximum(0.0, np.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
    return (np.log(power @ tri.T + 1e-6) - (-7.0)) / 2.5


def read_val(folder, n_max, cfg):
    """The first n_max samples of a dataset folder as model-ready numpy arrays."""
    import h5py
    with open(os.path.join(folder, "index.json")) as fp:
        index = json.load(fp)
    sc = index["schema"]
    d = cfg["data"]
    cols = {k: [] for k in ("sample_id", "has_image", "image", "has_audio", "audio", "text")}
    for sh in index["shards"]:
        with h5py.File(os.path.join(folder, sh["file"]), "r") as f:
            off = f["text_offsets"][:]
            text = f["text"][:].tobytes()
            for k in ("sample_id", "has_image", "image", "has_audio"):
                cols[k].extend(f[k][:])
            for j in range(len(off) - 1):
                n = int(f["audio_n"][j])
                cols["audio"].append(f["audio"][j, :n])
                cols["text"].append(text[off[j] : off[j + 1]])
    n = min(n_max, len(cols["sample_id"])) if n_max > 0 else len(cols["sample_id"])
    T = sc["text_max"] + 1
    S = {"n": n, "text_T": T, "sample_id": [int(v) for v in cols["sample_id"][:n]]}
    S["has_image"] = np.array(cols["has_image"][:n], dtype=bool)
    S["has_audio"] = np.array(cols["has_audio"][:n], dtype=bool)
    # the loader's float32 arithmetic, x / 127.5 - 1; zeros without an image
    img = np.stack(cols["image"][:n]).astype(np.float32) / np.float32(127.5) - np.float32(1)
    S["image"] = np.where(S["has_image"][:, None, None, None], img, 0).astype(np.float64)
    frames = 1 + (sc["audio_len"] - d["n_fft"]) // d["hop"]
    aud = np.zeros((n, frames, d["n_mels"]))
    for i in range(n):
        if S["has_audio"][i]:
            aud[i] = log_mel(cols["audio"][i], sc["audio_rate"], d["n_fft"], d["hop"],
                             d["n_mels"], sc["audio_len"])
    S["audio"] = aud
    tok = np.full((n, T), PAD, dtype=np.int64)
    tgt = np.full((n, T), -1, dtype=np.int64)
    for i, cap in enumerate(cols["text"][:n]):
        b = list(cap)
        tok[i, 0] = BOS
        tok[i, 1 : 1 + len(b)] = b
        tgt[i, : len(b)] = b
        tgt[i, len(b)] = EOS
    S["tokens"], S["targets"], S["text"] = tok, tgt, cols["text"][:n]
    return S


# ---------------------------------------------------------------------------------------
# Pieces both models share (MODEL.md "Shared pieces").


def layer_norm(x, g=None, b=None):
    return F.layer_norm(x, x.shape[-1:], g, b, eps=1e-5)  # biased variance, as PyTorch


def linear(x, W, name):
    """x @ w.T + b; the 3-D qkv / kv weights are the packed (k*C, C) matrix."""
    w = W[name + ".w"]
    w = w.reshape(-1, w.shape[-1])
    b = W.get(name + ".b")
    return F.linear(x, w, None if b is None else b.reshape(-1))


def attention(q, k, v, allowed):
    """q (B, NH, Tq, HD), k, v (B, NH, Tk, HD), allowed (B, Tq, Tk) bool, or None when every
    key is allowed. Softmax of q k^T / sqrt(HD) over the allowed keys; a query with none gets
    zeros."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        s = s.masked_fill(~allowed[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row of -inf only: NaN -> 0
    return p @ v


def self_attention(x, W, pre, NH, allowed):
    B, T, C = x.shape
    qkv = linear(x, W, pre + ".qkv").view(B, T, 3, NH, C // NH).permute(2, 0, 3, 1, 4)
    y = attention(qkv[0], qkv[1], qkv[2], allowed).transpose(1, 2).reshape(B, T, C)
    return linear(y, W, pre + ".proj")


def mlp(x, W, pre):
    h = F.gelu(linear(x, W, pre + ".fc"), approximate="tanh")
    return linear(h, W, pre + ".proj")


def block(x, W, pre, NH, allowed):
    """The pre-norm block of the transformer and of the DiT's encoders."""
    x = x + self_attention(layer_norm(x, W[pre + ".ln1.g"], W[pre + ".ln1.b"]), W,
                           pre + ".attn", NH, allowed)
    return x + mlp(layer_norm(x, W[pre + ".ln2.g"], W[pre + ".ln2.b"]), W, pre + ".mlp")


def patchify(img, p):
    """(B, H, W, c) -> (B, (H/p)(W/p), p*p*c): patches row-major, pixels (dy, dx, c) inside."""
    B, H, Wd, c = img.shape
    x = img.reshape(B, H // p, p, Wd // p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // p) * (Wd // p), p * p * c)


def unpatchify(x, H, Wd, c, p):
    B = x.shape[0]
    x = x.reshape(B, H // p, Wd // p, p, p, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, Wd, c)


def conv_stem(img, W):
    """The convolutional image stem (MODEL.md "The convolutional stem"): (B, H, W, c) ->
    (B, H/4, W/4, 2S), two rounds of 3x3 convolution (padding 1), GELU and 2x2 max pooling,
    computed by torch's own convolution and pooling on NCHW, not by an im2col like the
    trainer's, so that this is an independent check of those kernels."""
    x = img.permute(0, 3, 1, 2)
    for name in ("img.conv1", "img.conv2"):
        # stored (OC, kh, kw, IC), a row in im2col order; Conv2d's weight is (OC, IC, kh, kw)
        w = W[name + ".w"].permute(0, 3, 1, 2)
        x = F.max_pool2d(F.gelu(F.conv2d(x, w, W[name + ".b"], padding=1), approximate="tanh"), 2)
    return x.permute(0, 2, 3, 1)


def group_audio(aud, g):
    """(B, F, M) -> (B, F // g, g*M): g consecutive frames per token, the tail dropped."""
    B, Fr, M = aud.shape
    n = Fr // g
    return aud[:, : n * g].reshape(B, n, g * M)


# ---------------------------------------------------------------------------------------
# The transformer (MODEL.md "The transformer").


class Transformer:
    def __init__(self, W, cfg):
        self.W, m = W, cfg["model"]
        self.NH, self.L, self.p, self.g = m["n_heads"], m["n_layers"], m["patch"], m["audio_group"]
        self.n_img, self.n_aud = W["img.pos"].shape[0], W["audio.pos"].shape[0]
        self.P = self.n_img + self.n_aud
        self.conv = m.get("stem", "patch") == "conv"  # exports older than the stem have no key
        S = m.get("stem_width", 32)
        if self.conv and W["img.conv1.w"].shape[0] != S:
            raise ValueError(f"img.conv1.w has {W['img.conv1.w'].shape[0]} output channels, "
                             f"model.stem_width says {S}")

    def image_tokens(self, img):
        """(B, n_img, C) before the positions: patches of the image, or of the conv stem's
        (H/4, W/4) feature map with patches of p/4."""
        if self.conv:
            return linear(patchify(conv_stem(img, self.W), self.p // 4), self.W, "img.proj")
        return linear(patchify(img, self.p), self.W, "img.proj")

    def hidden(self, img, aud, has_img, has_aud, tok):
        """The final LayerNorm's output at the text positions, (B, Tu, C) for Tu tokens."""
        W, B, Tu = self.W, tok.shape[0], tok.shape[1]
        x = torch.cat([self.image_tokens(img) + W["img.pos"],
                       linear(group_audio(aud, self.g), W, "audio.proj") + W["audio.pos"],
                       W["text.wte"][tok] + W["text.pos"][:Tu]], dim=1)
        T, dev = x.shape[1], x.device
        key = torch.cat([has_img[:, None].expand(B, self.n_img),
                         has_aud[:, None].expand(B, self.n_aud),
                         torch.ones(B, Tu, dtype=torch.bool, device=dev)], dim=1)
        i = torch.arange(T, device=dev)
        shape = (i[None, :] < self.P) | (i[None, :] <= i[:, None])  # prefix, then causal
        allowed = shape[None] & key[:, None, :]
        for l in range(self.L):
            x = block(x, W, f"blocks.{l}", self.NH, allowed)
        return layer_norm(x[:, self.P :], W["ln_f.g"], W["ln_f.b"])

    def sample_losses(self, img, aud, has_img, has_aud, tok, tgt):
        """Each sample's mean cross-entropy over its targets (0 without any)."""
        logits = self.hidden(img, aud, has_img, has_aud, tok) @ self.W["lm_head.w"].T
        ce = F.cross_entropy(logits.transpose(1, 2), tgt.clamp(min=0), reduction="none")
        m = (tgt >= 0).to(ce.dtype)
        return (ce * m).sum(1) / m.sum(1).clamp(min=1)

    def generate(self, img, aud, has_img, has_aud, T):
        """Greedy captions as bytes: from BOS, append the argmax (lowest id on ties) until a
        special token or T - 1 bytes."""
        B = img.shape[0]
        tok = torch.full((B, 1), BOS, dtype=torch.long, device=img.device)
        out, live = [bytearray() for _ in range(B)], [True] * B
        for s in range(T - 1):
            h = self.hidden(img, aud, has_img, has_aud, tok)[:, s]
            nxt = (h @ self.W["lm_head.w"].T).argmax(-1)
            for b in range(B):
                if live[b] and int(nxt[b]) >= 256:
                    live[b] = False
                elif live[b]:
                    out[b].append(int(nxt[b]))
            if not any(live):
                break
            tok = torch.cat([tok, nxt.clamp(max=255)[:, None]], dim=1)  # dead rows: unread
        return [bytes(o) for o in out]


def eval_transformer(W, cfg, S, dt, want_captions, batch):
    net = Transformer(W, cfg)
    t = lambda a, **k: torch.as_tensor(a, **k)
    img, aud = t(S["image"], dtype=dt), t(S["audio"], dtype=dt)
    hi, ha = t(S["has_image"]), t(S["has_audio"])
    tok, tgt = t(S["tokens"]), t(S["targets"])
    # the input modes (MODEL.md "Evaluation"): the samples each takes, and what it hides
    modes = {"": (torch.ones_like(hi), hi, ha), "_image": (hi, hi, torch.zeros_like(ha)),
             "_audio": (ha, torch.zeros_like(hi), ha), "_both": (hi & ha, hi, ha)}
    res, caps = {}, {}
    for sfx, (take, mi, ma) in modes.items():
        if not bool(take.any()):
            continue
        losses = torch.cat([net.sample_losses(img[i:i + batch], aud[i:i + batch],
                                              mi[i:i + batch], ma[i:i + batch],
                                              tok[i:i + batch], tgt[i:i + batch])
                            for i in range(0, S["n"], batch)])
        res["val_loss" + sfx] = float(losses.double()[take].sum()) / int(take.sum())
    if want_captions:
        none = torch.zeros_like(hi)
        for key, mi, ma in (("generated", hi, ha), ("generated_image", hi, none),
                            ("generated_audio", none, ha)):
            caps[key] = []
            for i in range(0, S["n"], batch):
                caps[key] += net.generate(img[i:i + batch], aud[i:i + batch], mi[i:i + batch],
                                          ma[i:i + batch], S["text_T"])
    return res, caps


# ---------------------------------------------------------------------------------------
# The diffusion model (MODEL.md "The diffusion model").


class Rng:
    """mm_rng (MODEL.md "Random numbers"): xoshiro256** seeded by splitmix64."""

    M = (1 << 64) - 1

    def __init__(self, seed, stream):
        x = (seed ^ (stream * 0xD1B54A32D192ED03)) & self.M
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & self.M
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & self.M
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & self.M
            self.s.append(z ^ (z >> 31))

    def u64(self):
        s, M = self.s, self.M
        rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & M
        r = (rotl((s[1] * 5) & M, 7) * 9) & M
        t = (s[1] << 17) & M
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return r

    def uniform(self):  # float32 in [0, 1)
        return np.float32((self.u64() >> 40) * (1.0 / 16777216.0))

    def normal(self):  # float32
        u1 = 1.0 - (self.u64() >> 11) * (1.0 / 9007199254740992.0)
        u2 = (self.u64() >> 11) * (1.0 / 9007199254740992.0)
        return np.float32(math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2))

    def below(self, n):
        limit = self.M - self.M % n
        while True:
            x = self.u64()
            if x < limit:
                return x % n


def alpha_bar(k):
    """DDPM cosine schedule (s = 0.008, 1000 steps, beta clipped at 0.999)."""
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    ab, prev = 1.0, f(0.0)
    for i in range(k + 1):
        nxt = f((i + 1) / 1000.0)
        ab *= 1.0 - min(1.0 - nxt / prev, 0.999)
        prev = nxt
    return ab


def sincos_2d(gh, gw, C):
    Q = C // 4
    w = 10000.0 ** (-np.arange(Q) / Q)
    py, px = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    py, px = py.reshape(-1, 1) * w, px.reshape(-1, 1) * w
    return np.concatenate([np.sin(py), np.cos(py), np.sin(px), np.cos(px)], axis=1)


class DiT:
    def __init__(self, W, cfg, H, Wd, c):
        self.W, m, d = W, cfg["model"], cfg["diffusion"]
        self.NH, self.L, self.p, self.g = m["n_heads"], m["n_layers"], m["patch"], m["audio_group"]
        self.E, self.pool, self.x_pred = d["enc_layers"], d["pool_cond"], d["predict"] == "x"
        self.H, self.Wd, self.c = H, Wd, c
        C = W["x_embed.b"].shape[0]
        self.pos = torch.as_tensor(sincos_2d(H // self.p, Wd // self.p, C),
                                   dtype=W["x_embed.b"].dtype)

    def encoder(self, x, pre, key):
        allowed = key[:, None, :].expand(-1, x.shape[1], -1)  # bidirectional
        for e in range(self.E):
            x = block(x, self.W, f"{pre}.blocks.{e}", self.NH, allowed)
        return layer_norm(x, self.W[pre + ".ln_f.g"], self.W[pre + ".ln_f.b"])

    def __call__(self, x_t, t, tok, has_text, aud, has_aud):
        W, B, NH = self.W, x_t.shape[0], self.NH
        C = W["x_embed.b"].shape[0]
        half = C // 2
        arg = t.double()[:, None] * 1000.0 * torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
        temb = torch.cat([torch.cos(arg), torch.sin(arg)], 1).to(x_t.dtype)
        c = linear(F.silu(linear(temb, W, "t_embed.fc1")), W, "t_embed.fc2")
        # the conditioning tokens [caption | audio | null] and which of them are keys
        tok = torch.where(has_text[:, None], tok, torch.full_like(tok, PAD))
        tkey = has_text[:, None] & (tok != PAD)
        text = self.encoder(W["text.wte"][tok] + W["text.pos"], "text", tkey)
        a = linear(group_audio(aud, self.g), W, "audio.proj") + W["audio.pos"]
        akey = has_aud[:, None].expand(B, a.shape[1])
        audio = self.encoder(a, "audio", akey)
        cond = torch.cat([text, audio, W["cond.null"].expand(B, 1, C)], 1)
        ckey = torch.cat([tkey, akey, torch.ones(B, 1, dtype=torch.bool, device=tkey.device)], 1)
        if self.pool:
            k = ckey.to(cond.dtype)[..., None]
            pooled = (cond * k).sum(1) / k.sum(1)
            c = c + linear(F.silu(linear(pooled, W, "cond.pool.fc1")), W, "cond.pool.fc2")
        sc = F.silu(c)
        x = linear(patchify(x_t, self.p), W, "x_embed") + self.pos.to(x_t.device)
        N, Tc = x.shape[1], cond.shape[1]
        xallowed = ckey[:, None, :].expand(B, N, Tc)
        for l in range(self.L):
            pre = f"blocks.{l}"
            sh1, s1, g1, sh2, s2, g2 = linear(sc, W, pre + ".ada")[:, None].chunk(6, dim=-1)
            h = layer_norm(x) * (1 + s1) + sh1
            x = x + g1 * self_attention(h, W, pre + ".attn", NH, None)
            h = layer_norm(x, W[pre + ".xattn.ln.g"], W[pre + ".xattn.ln.b"])
            q = linear(h, W, pre + ".xattn.q").view(B, N, NH, -1).transpose(1, 2)
            kv = linear(cond, W, pre + ".xattn.kv").view(B, Tc, 2, NH, -1).permute(2, 0, 3, 1, 4)
            y = attention(q, kv[0], kv[1], xallowed).transpose(1, 2).reshape(B, N, C)
            x = x + linear(y, W, pre + ".xattn.proj")
            h = layer_norm(x) * (1 + s2) + sh2
            x = x + g2 * mlp(h, W, pre + ".mlp")
        shift, scale = linear(sc, W, "final.ada")[:, None].chunk(2, dim=-1)
        out = linear(layer_norm(x) * (1 + scale) + shift, W, "final.proj")
        out = unpatchify(out, self.H, self.Wd, self.c, self.p)
        if self.x_pred:  # the network's clean image, returned as the velocity it implies
            out = (x_t - out) / t.clamp(min=0.05)[:, None, None, None]
        return out


def eval_diffusion(W, cfg, S, dt, batch):
    """val_loss: the mean over samples with an image of each one's MSE at the fixed time and
    noise of (seed, sample id) (MODEL.md "Evaluation" of the diffusion model)."""
    d = cfg["diffusion"]
    H, Wd, c = S["image"].shape[1:]
    net = DiT(W, cfg, H, Wd, c)
    seed = (cfg["run"]["seed"] ^ ((0x9E3779B97F4A7C15 * ((-2 + 1) & Rng.M)) & Rng.M)) & Rng.M
    rows = [i for i in range(S["n"]) if S["has_image"][i]]
    total = 0.0
    for i0 in range(0, len(rows), batch):
        idx = rows[i0:i0 + batch]
        ts, xs, tg = [], [], []
        for i in idx:
            r = Rng(seed, S["sample_id"][i])
            r.uniform(), r.uniform()  # the training draws of condition dropout
            if d["objective"] == "ddpm":
                t = np.float32(r.below(1000) / 1000.0)
                ab = alpha_bar(min(max(round(float(t) * 1000), 0), 999))
                a, s = math.sqrt(ab), math.sqrt(1.0 - ab)
            else:
                t = (np.float32(1.0 / (1.0 + math.exp(-float(r.normal()))))
                     if d["t_sampling"] == "logit_normal" else r.uniform())
                a, s = 1.0 - float(t), float(t)
            eps = np.array([r.normal() for _ in range(H * Wd * c)], dtype=np.float32)
            eps = eps.reshape(H, Wd, c)
            x0 = S["image"][i].astype(np.float32)
            ts.append(t)
            xs.append((a * x0.astype(np.float64) + s * eps.astype(np.float64)).astype(np.float32))
            tg.append(eps - x0 if d["objective"] == "flow" else eps)
        T = lambda a: torch.as_tensor(np.stack(a) if isinstance(a, list) else a)
        pred = net(T(xs).to(dt), T(np.array(ts)).to(dt), torch.as_tensor(S["tokens"][idx]),
                   torch.ones(len(idx), dtype=torch.bool),
                   torch.as_tensor(S["audio"][idx], dtype=dt),
                   torch.as_tensor(S["has_audio"][idx]))
        err = (pred.double() - T(tg).double()) ** 2
        total += float(err.reshape(len(idx), -1).mean(1).sum())
    return {"val_loss": total / len(rows)} if rows else {}


# ---------------------------------------------------------------------------------------
# Comparison with the run's own logs.


def shown(gen):
    """A caption's bytes as the eval JSONL writes them: invalid UTF-8, byte by byte, as U+FFFD."""
    out, i = [], 0
    while i < len(gen):
        for n in (1, 2, 3, 4):
            try:
                out.append(gen[i:i + n].decode("utf-8"))
                i += n
                break
            except UnicodeDecodeError:
                continue
        else:
            out.append("\ufffd")
            i += 1
    return "".join(out)


def compare(run, step, res, caps, S, rtol):
    logged = {}
    with open(os.path.join(run, "metrics.jsonl")) as fp:
        for line in fp:
            o = json.loads(line)
            if o.get("step") == step and "val_loss" in o:
                logged = o
    if not logged:
        print(f"no evaluation at step {step} in {run}/metrics.jsonl")
        return False
    good = True
    for k, v in res.items():
        rel = abs(v - logged[k]) / abs(logged[k])
        good &= rel <= rtol
        print(f"{k}: logged {logged[k]:.9g}, here {v:.9g}, relative difference {rel:.2e}")
    if caps:
        path = os.path.join(run, "eval", f"step_{step:08d}.jsonl")
        with open(path) as fp:
            lines = [json.loads(line) for line in fp]
        same = total = 0
        for i, o in enumerate(lines):
            assert o["sample_id"] == S["sample_id"][i], "eval order is not the val set's"
            for key in ("generated", "generated_image", "generated_audio"):
                if key not in o:
                    continue
                total += 1
                mine = shown(caps[key][i])
                same += mine == o[key]
                if mine != o[key]:
                    print(f"sample {o['sample_id']} {key}: logged {o[key]!r}, here {mine!r}")
        print(f"captions: {same} of {total} equal")
        good &= same == total
    return good


def main():
    ap = argparse.ArgumentParser(
        description="Recompute a run's validation losses from its export in PyTorch.")
    ap.add_argument("export")
    ap.add_argument("--val", help="validation dataset folder (default: the config's data.val)")
    ap.add_argument("--samples", type=int, help="validation samples (default: eval.samples)")
    ap.add_argument("--run", help="run folder whose metrics.jsonl (and eval/) to compare with")
    ap.add_argument("--captions", action="store_true", help="also generate greedy captions")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--rtol", type=float, default=1e-6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dt = getattr(torch, a.dtype)
    import h5py
    import yaml
    with h5py.File(a.export, "r") as f:
        kind = f.attrs["model_kind"].decode()
        step = int(f.attrs["step"])
        cfg = yaml.safe_load(f.attrs["config"].decode())
        W = {k: torch.as_tensor(np.asarray(v), dtype=dt) for k, v in f["params"].items()}
    S = read_val(a.val or cfg["data"]["val"],
                 a.samples if a.samples is not None else cfg["eval"]["samples"], cfg)
    if kind == "transformer":
        res, caps = eval_transformer(W, cfg, S, dt, a.captions, a.batch)
    else:
        res, caps = eval_diffusion(W, cfg, S, dt, a.batch), {}
    print(json.dumps({"step": step, **res}))
    if a.run and not compare(a.run, step, res, caps, S, a.rtol):
        sys.exit(1)


if __name__ == "__main__":
    try:
        with torch.no_grad():
            main()
    except (OSError, KeyError, ValueError) as e:  # a missing file, or not an mmtrain export/set
        sys.exit(f"ref_torch.py: error: {e}")
