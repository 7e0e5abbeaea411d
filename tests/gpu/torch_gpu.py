#!/usr/bin/env python3
# torch_gpu.py: the PyTorch yardstick of tests/gpu/run.sh. Our GPU throughput means little
# without PyTorch's on the same card in the same run, so this trains the two models that
# tests/gpu/bench_train_cuda.c times, at its shapes, batch, precision and AdamW settings, the
# way a PyTorch user would: fp32 master weights under bf16 autocast, fused attention
# (scaled_dot_product_attention, which picks flash / memory-efficient / cuDNN kernels itself),
# fused AdamW, gradient clipping; eagerly and under torch.compile.
#
# The models are train/ref_torch.py's (the independent rebuild from train/MODEL.md that
# tests/torch_ref.sh holds to the trainer's losses), with its written-out attention swapped for
# scaled_dot_product_attention: so "the same model" is checked, not asserted. The parameter
# table here (names and shapes) is checked against `train export`'s by tests/torch_ref.sh.
#
#   torch_gpu.py [--model transformer|dit|all] [--mode eager|compile|all] [--steps N]
#                [--device cuda|cpu] [--precision bf16|fp32]
#       one `TORCH_GPU {json}` line per (model, mode); `TORCH_GPU_SKIP reason` when torch (or
#       CUDA, for --device cuda) is missing
#   torch_gpu.py --check-export EXPORT.h5 [--steps N]
#       our parameter table at the export's sizes must equal the export's; then N training
#       steps on the CPU from the export's weights, eager and compiled (exit 1 on a mismatch
#       or a non-finite loss)
#   torch_gpu.py --table FILE...
#       the side-by-side table from bench_train_cuda's RESULT / MEMORY lines and the
#       TORCH_GPU lines in FILEs, with the targets marked; needs no torch
#
# What each side times is the same step: zero grads, forward with the loss (read back to the
# host), backward, gradient norm, AdamW (and the EMA for the DiT); the mean over the timed
# steps after warm-up ones (the first compiles). Peak memory: torch.cuda.max_memory_allocated
# over the whole run (parameters, gradients, optimizer state, activations); ours is what
# bench_train_cuda's MEMORY line says the run allocated.
import argparse
import json
import math
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# bench_train_cuda.c's two models; keep in step with it (main() and bench_dit()).
BENCH = {
    "transformer": dict(kind="transformer", B=8, d=768, L=12, NH=12, F=3072, V=50304,
                        text_T=1022, img=(8, 8, 3), patch=8, audio_F=1, n_mels=8, group=1,
                        lr=6e-4, betas=(0.9, 0.95), wd=0.1),
    "dit": dict(kind="diffusion", B=32, d=384, L=12, NH=6, F=1536, V=259, text_T=49,
                img=(32, 32, 4), patch=2, audio_F=61, n_mels=32, group=2, enc_layers=4,
                pool_cond=False, predict="v", lr=1e-4, betas=(0.9, 0.999), wd=0.0,
                ema=0.9999),
}


# ---------------------------------------------------------------------------------------
# The parameter tables (train/MODEL.md; names are the checkpoint names).


def block_shapes(pre, d, F):
    return {pre + ".ln1.g": (d,), pre + ".ln1.b": (d,),
            pre + ".attn.qkv.w": (3, d, d), pre + ".attn.qkv.b": (3, d),
            pre + ".attn.proj.w": (d, d), pre + ".attn.proj.b": (d,),
            pre + ".ln2.g": (d,), pre + ".ln2.b": (d,),
            pre + ".mlp.fc.w": (F, d), pre + ".mlp.fc.b": (F,),
            pre + ".mlp.proj.w": (d, F), pre + ".mlp.proj.b": (d,)}


def param_shapes(m):
    d, F, p = m["d"], m["F"], m["patch"]
    H, Wd, c = m["img"]
    n_img, n_aud = (H // p) * (Wd // p), m["audio_F"] // m["group"]
    S = {}
    if m["kind"] == "transformer":
        S.update({"img.proj.w": (d, p * p * c), "img.proj.b": (d,), "img.pos": (n_img, d),
                  "audio.proj.w": (d, m["group"] * m["n_mels"]), "audio.proj.b": (d,),
                  "audio.pos": (n_aud, d), "text.wte": (m["V"], d),
                  "text.pos": (m["text_T"], d)})
        for l in range(m["L"]):
            S.update(block_shapes(f"blocks.{l}", d, F))
        S.update({"ln_f.g": (d,), "ln_f.b": (d,), "lm_head.w": (m["V"], d)})
        return S
    S.update({"text.wte": (m["V"], d), "text.pos": (m["text_T"], d),
              "audio.proj.w": (d, m["group"] * m["n_mels"]), "audio.proj.b": (d,),
              "audio.pos": (n_aud, d), "cond.null": (1, d)})
    for enc in ("text", "audio"):
        for e in range(m["enc_layers"]):
            S.update(block_shapes(f"{enc}.blocks.{e}", d, F))
        S.update({enc + ".ln_f.g": (d,), enc + ".ln_f.b": (d,)})
    fcs = ["t_embed.fc1", "t_embed.fc2"] + (["cond.pool.fc1", "cond.pool.fc2"]
                                            if m["pool_cond"] else [])
    for n in fcs:
        S.update({n + ".w": (d, d), n + ".b": (d,)})
    S.update({"x_embed.w": (d, p * p * c), "x_embed.b": (d,)})
    for l in range(m["L"]):
        pre = f"blocks.{l}"
        blk = block_shapes(pre, d, F)
        for k in ("ln1.g", "ln1.b", "ln2.g", "ln2.b"):  # the modulated LNs have no affine
            del blk[f"{pre}.{k}"]
        S.update(blk)
        S.update({pre + ".ada.w": (6 * d, d), pre + ".ada.b": (6 * d,),
                  pre + ".xattn.ln.g": (d,), pre + ".xattn.ln.b": (d,),
                  pre + ".xattn.q.w": (d, d), pre + ".xattn.q.b": (d,),
                  pre + ".xattn.kv.w": (2, d, d), pre + ".xattn.kv.b": (2, d),
                  pre + ".xattn.proj.w": (d, d), pre + ".xattn.proj.b": (d,)})
    S.update({"final.ada.w": (2 * d, d), "final.ada.b": (2 * d,),
              "final.proj.w": (p * p * c, d), "final.proj.b": (p * p * c,)})
    return S


def decays(name, shape):
    """The trainer's weight-decay rule: tensors of 2+ dims that are not biases."""
    return len(shape) >= 2 and not name.endswith(".b")


def init_params(torch, shapes, device, seed=1, adaln_zero=True, std=0.02):
    """Gains 1, biases 0, adaLN and the final layer 0 (adaLN-Zero), the rest N(0, 0.02): the
    values only need to train sanely, not to match ours. Without adaln_zero those are random
    too, and a larger std: a DiT whose output depends on every part, for a comparison."""
    g = torch.Generator().manual_seed(seed)
    W = {}
    for n, s in shapes.items():
        if n.endswith(".g"):
            t = torch.ones(s)
        elif n.endswith(".b") or (adaln_zero and (".ada." in n or n.startswith("final."))):
            t = torch.zeros(s)
        else:
            t = torch.randn(s, generator=g) * std
        W[n] = t.to(device).requires_grad_()
    return W


# ---------------------------------------------------------------------------------------
# Training


def ref_module(torch):
    sys.path.insert(0, os.path.join(HERE, "..", "..", "train"))
    sys.dont_write_bytecode = True  # no __pycache__ left in the tree
    import ref_torch
    F = torch.nn.functional

    def sdpa(q, k, v, allowed):  # ref_torch.attention's contract, fused
        mask = None if allowed is None else allowed[:, None]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    if not hasattr(ref_torch, "written_attention"):
        ref_torch.written_attention = ref_torch.attention
    ref_torch.attention = sdpa
    return ref_torch


def make_loss(torch, ref, m, W, dev):
    """The model's loss as a function of nothing (its inputs fixed, random, on dev)."""
    F = torch.nn.functional
    g = torch.Generator().manual_seed(7)
    B, (H, Wd, c) = m["B"], m["img"]
    ones = torch.ones(B, dtype=torch.bool, device=dev)
    aud = (torch.rand(B, m["audio_F"], m["n_mels"], generator=g) * 2 - 1).to(dev)
    if m["kind"] == "transformer":
        cfg = {"model": {"n_heads": m["NH"], "n_layers": m["L"], "patch": m["patch"],
                         "audio_group": m["group"]}}
        net = ref.Transformer(W, cfg)
        img = (torch.rand(B, H, Wd, c, generator=g) * 2 - 1).to(dev)
        seq = torch.randint(0, min(m["V"], 50257), (B, m["text_T"] + 1), generator=g)
        tok, tgt = seq[:, :-1].to(dev), seq[:, 1:].clone()
        tgt[:, -1] = -1  # as bench_train_cuda: the last position has no target
        tgt = tgt.to(dev)
        V = m["V"]

        def loss():
            h = net.hidden(img, aud, ones, ones, tok)
            logits = h @ W["lm_head.w"].T
            # every sample has the same number of targets, so the mean over all of them is
            # the trainer's mean over samples of each sample's mean
            return F.cross_entropy(logits.view(-1, V), tgt.view(-1), ignore_index=-1)

        return loss
    cfg = {"model": {"n_heads": m["NH"], "n_layers": m["L"], "patch": m["patch"],
                     "audio_group": m["group"]},
           "diffusion": {"enc_layers": m["enc_layers"], "pool_cond": m["pool_cond"],
                         "predict": m["predict"]}}
    net = ref.DiT(W, cfg, H, Wd, c)
    net.pos = net.pos.to(dev)  # once, not a host-to-device copy every forward
    x_t = torch.randn(B, H, Wd, c, generator=g).to(dev)
    y = torch.randn(B, H, Wd, c, generator=g).to(dev)
    t = torch.rand(B, generator=g).to(dev)
    tok = torch.randint(0, 256, (B, m["text_T"]), generator=g).to(dev)

    def loss():
        pred = net(x_t, t, tok, ones, aud, ones)
        return F.mse_loss(pred.float(), y)  # the mean over samples of each one's pixel mean

    return loss


def train(torch, ref, m, W, mode, steps, warmup, dev, bf16):
    params = list(W.values())
    groups = [{"params": [W[n] for n in W if decays(n, W[n].shape)], "weight_decay": m["wd"]},
              {"params": [W[n] for n in W if not decays(n, W[n].shape)], "weight_decay": 0.0}]
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(groups, lr=m["lr"], betas=m["betas"], eps=1e-8, fused=fused,
                            foreach=None if fused else True)
    ema = [p.detach().clone() for p in params] if m.get("ema") else None
    loss_fn = make_loss(torch, ref, m, W, dev)
    if mode == "compile":
        loss_fn = torch.compile(loss_fn)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    losses, times = [], []
    for s in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        if ema is not None:
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - m["ema"])
        losses.append(loss.item())  # the host reads the loss every step, as ours does
        sync()
        if s >= warmup:
            times.append(time.perf_counter() - t0)
    return losses, sum(times) / len(times)


def run_bench(torch, ref, name, m, mode, steps, dev, bf16):
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    W = init_params(torch, param_shapes(m), dev)
    t0 = time.perf_counter()
    losses, per = train(torch, ref, m, W, mode, steps, 3, dev, bf16)
    H, Wd, _ = m["img"]
    n_tok = (H // m["patch"]) * (Wd // m["patch"]) + m["audio_F"] // m["group"] + m["text_T"]
    out = {"model": name, "mode": mode, "precision": "bf16" if bf16 else "fp32",
           "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "B": m["B"], "params": sum(w.numel() for w in W.values()),
           "steps": steps, "ms_per_step": round(per * 1e3, 3),
           "wall_s": round(time.perf_counter() - t0, 1),
           "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
    if m["kind"] == "transformer":
        out["tokens_per_s"] = round(m["B"] * n_tok / per, 1)
    else:
        out["images_per_s"] = round(m["B"] / per, 2)
    if dev.type == "cuda":
        out["peak_alloc_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["peak_reserved_mib"] = round(torch.cuda.max_memory_reserved() / 2**20, 1)
    ok = all(math.isfinite(x) for x in losses)
    print("TORCH_GPU " + json.dumps(out), flush=True)
    return ok


# ---------------------------------------------------------------------------------------
# --check-export


def dims_of_export(f, yaml):
    cfg = yaml.safe_load(f.attrs["config"].decode())
    mo, da = cfg["model"], cfg["data"]
    d = mo["d_model"]
    n_aud = int(f.attrs["n_aud"])
    kind = f.attrs["model_kind"].decode()
    m = dict(kind=kind, B=2, d=d, L=mo["n_layers"], NH=mo["n_heads"],
             F=mo["d_ff"] or 4 * d, V=int(f.attrs["vocab_size"]), text_T=int(f.attrs["text_T"]),
             img=(da["img_h"], da["img_w"], da["img_c"]), patch=mo["patch"],
             audio_F=n_aud * mo["audio_group"], n_mels=da["n_mels"], group=mo["audio_group"],
             lr=1e-3, betas=(0.9, 0.95), wd=0.1)
    if kind != "transformer":
        df = cfg["diffusion"]
        m.update(enc_layers=df["enc_layers"], pool_cond=df["pool_cond"],
                 predict=df["predict"], ema=0.999)
    return m


def check_export(torch, path, steps):
    import h5py
    import numpy as np
    import yaml
    ref = ref_module(torch)
    with h5py.File(path, "r") as f:
        m = dims_of_export(f, yaml)
        theirs = {k: tuple(v.shape) for k, v in f["params"].items()}
        W0 = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32)
              for k, v in f["params"].items()}
    ours = param_shapes(m)
    bad = [f"{n}: export {theirs.get(n)}, torch_gpu.py {ours.get(n)}"
           for n in sorted(set(ours) | set(theirs)) if ours.get(n) != theirs.get(n)]
    for b in bad:
        print("torch_gpu: parameter mismatch: " + b)
    print(f"torch_gpu: {m['kind']}: {len(ours)} tensors here, {len(theirs)} in {path}, "
          f"{len(bad)} differ")
    ok = not bad
    if ok:  # the fused attention is the written-out one: the same loss from the same random
        # weights (random everywhere: the export's DiT barely left adaLN-Zero's identity)
        W = init_params(torch, ours, torch.device("cpu"), seed=3, adaln_zero=False, std=0.2)
        with torch.no_grad():
            fused = make_loss(torch, ref, m, W, torch.device("cpu"))().item()
            sdpa, ref.attention = ref.attention, ref.written_attention
            written = make_loss(torch, ref, m, W, torch.device("cpu"))().item()
            ref.attention = sdpa
        rel = abs(fused - written) / abs(written)
        print(f"torch_gpu: {m['kind']}: loss with scaled_dot_product_attention {fused:.7f}, "
              f"written out {written:.7f}, relative difference {rel:.1e} (at most 1e-5)")
        ok = rel <= 1e-5
    if ok:
        for mode in ("eager", "compile"):
            W = {k: v.clone().requires_grad_() for k, v in W0.items()}
            losses, per = train(torch, ref, m, W, mode, steps, 1, torch.device("cpu"), False)
            good = all(math.isfinite(x) for x in losses)
            print(f"torch_gpu: {m['kind']} {mode} on the CPU: losses "
                  + " ".join(f"{x:.4f}" for x in losses) + ("" if good else "  NOT FINITE"))
            ok = ok and good
    return ok


# ---------------------------------------------------------------------------------------
# --table


def read_results(files):
    ours, mem, params, torch_rows = {}, {}, {}, []
    for path in files:
        try:
            lines = open(path).read().splitlines()
        except OSError:
            continue
        for ln in lines:
            r = re.match(r"RESULT (transformer|diffusion) (\w+): ([\d.]+) (tokens|images)/s, "
                         r"([\d.]+) ms/step", ln)
            if r:
                name = "transformer" if r[1] == "transformer" else "dit"
                mfu = re.search(r"MFU ([\d.]+)%", ln)
                ours[(name, r[2])] = {"rate": float(r[3]), "ms": float(r[5]),
                                      "mfu": float(mfu[1]) if mfu else None}
            r = re.match(r"MEMORY transformer (\w+) B \d+ recompute none: ([\d.]+) MiB", ln)
            if r:
                mem[("transformer", r[1])] = float(r[2])
            r = re.search(r"(transformer|generator): (\d+) parameters", ln)
            if r:
                params["transformer" if r[1] == "transformer" else "dit"] = int(r[2])
            if ln.startswith("TORCH_GPU "):
                torch_rows.append(json.loads(ln[len("TORCH_GPU "):]))
    return ours, mem, params, torch_rows


def table(files):
    ours, mem, params, rows = read_results(files)
    print("GPU throughput, ours next to PyTorch (same model, batch, precision, AdamW; "
          "PyTorch MFU = ours x its speed ratio: the same model FLOPs)")
    fmt = "  {:<12} {:<5} {:<16} {:>14} {:>9} {:>6} {:>10} {:>10}"
    print(fmt.format("model", "prec", "implementation", "rate", "ms/step", "MFU",
                     "peak MiB", "ours/this"))
    verdicts = []
    if not ours and not rows:
        print("  (no results: neither side ran)")
    for name, unit in (("transformer", "tok/s"), ("dit", "img/s")):
        for prec in ("bf16", "fp32"):
            o = ours.get((name, prec))
            ts = [r for r in rows if r["model"] == name and r["precision"] == prec]
            if not o and not ts:
                continue
            if o:
                mfu = f"{o['mfu']:.1f}%" if o["mfu"] is not None else "n/a"
                pk = mem.get((name, prec))
                print(fmt.format(name, prec, "mmtrain", f"{o['rate']:,.0f} {unit}",
                                 f"{o['ms']:.1f}", mfu, f"{pk:,.0f}" if pk else "n/a", ""))
            else:
                print(fmt.format(name, prec, "mmtrain", "not run", "", "", "", ""))
            by_mode = {}
            for r in ts:
                rate = r.get("tokens_per_s") or r.get("images_per_s")
                by_mode[r["mode"]] = (rate, r)
                if name in params and r.get("params") != params[name]:
                    verdicts.append(f"  NOT THE SAME MODEL: {name} has {params[name]:,} "
                                    f"parameters here, {r.get('params')} in torch {r['mode']}")
                ratio = o["rate"] / rate if o else None
                mfu = (f"{o['mfu'] * rate / o['rate']:.1f}%"
                       if o and o["mfu"] is not None else "n/a")
                pk = r.get("peak_alloc_mib")
                print(fmt.format(name, prec, "torch " + r["mode"], f"{rate:,.0f} {unit}",
                                 f"{r['ms_per_step']:.1f}", mfu, f"{pk:,.0f}" if pk else "n/a",
                                 f"{ratio:.2f}x" if ratio else ""))
            if prec != "bf16":
                continue
            # the targets (bf16)
            def verdict(what, val, target, fmt_v="{:.2f}x"):
                if val is None:
                    verdicts.append(f"  {what}: not measured (target >= {fmt_v.format(target)})")
                else:
                    ok = val >= target
                    verdicts.append(f"  {what}: {fmt_v.format(val)} (target >= "
                                    f"{fmt_v.format(target)}) {'PASS' if ok else 'MISS'}")
            e, c = by_mode.get("eager"), by_mode.get("compile")
            verdict(f"{name} bf16 ours / PyTorch eager", o and e and o["rate"] / e[0], 1.0)
            if name == "transformer":
                verdict("transformer bf16 ours / torch.compile", o and c and o["rate"] / c[0], 0.9)
                verdict("transformer bf16 MFU", o and o["mfu"], 35.0, "{:.1f}%")
                pk = mem.get((name, prec))
                tp = [r["peak_alloc_mib"] for _, r in by_mode.values() if r.get("peak_alloc_mib")]
                if pk and tp:
                    verdicts.append(f"  transformer bf16 peak memory: ours {pk:,.0f} MiB, "
                                    f"PyTorch {min(tp):,.0f} MiB (the lesser of its runs) "
                                    f"{'PASS' if pk <= min(tp) else 'MISS'} (target: <=)")
                else:
                    verdicts.append("  transformer bf16 peak memory: not measured")
    print("targets (issue 15):")
    for v in verdicts:
        print(v)


# ---------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", choices=("transformer", "dit", "all"), default="all")
    ap.add_argument("--mode", choices=("eager", "compile", "all"), default="all")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--check-export", metavar="EXPORT")
    ap.add_argument("--table", nargs="+", metavar="FILE")
    a = ap.parse_args()
    if a.table:
        table(a.table)
        return 0
    try:
        import torch
    except ImportError as e:
        print(f"TORCH_GPU_SKIP torch is not importable by {sys.executable} ({e})")
        return 0
    if a.check_export:
        torch.manual_seed(1)
        return 0 if check_export(torch, a.check_export, a.steps) else 1
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"TORCH_GPU_SKIP torch {torch.__version__} sees no CUDA device")
        return 0
    ref = ref_module(torch)
    ok = True
    for name in (("transformer", "dit") if a.model == "all" else (a.model,)):
        for mode in (("eager", "compile") if a.mode == "all" else (a.mode,)):
            ok = run_bench(torch, ref, name, BENCH[name], mode, a.steps, dev,
                           a.precision == "bf16") and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
