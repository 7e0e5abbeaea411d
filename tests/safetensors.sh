#!/usr/bin/env bash
# safetensors.sh: weights in and out as safetensors (train/EXPORT.md "safetensors"):
#   - `train export --format safetensors` holds every tensor of the HDF5 export byte for byte,
#     as read by the `safetensors` Python package (and h5py), with the same metadata, the
#     tokenizer and a sample layout that agrees with the position tensors' shapes; both model
#     kinds (the diffusion EMA as ema/<name>);
#   - checkpoint.init_from of that file gives the weights of init_from of the checkpoint: the
#     same val_loss after a step with every group frozen, and exports equal byte for byte, at
#     tp=1 and at tp=2 (each rank reads its slice);
#   - a file written by Python's safetensors.numpy.save_file (its own header order, no
#     metadata) from the HDF5 export loads the same way;
#   - bad files are one "error:" line naming the file and the reason and a non-zero exit:
#     truncated, header length beyond the file, bad JSON, another dtype, a shape that does
#     not match its bytes or the model, a missing tensor or EMA, overlapping, out-of-range
#     and gapped offsets, unknown keys, another model kind; and export's own bad options.
set -u
B=${MM_BUILD:-build}
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
root=(); [ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
ok() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1"; fi; }
. "$(dirname "$0")/lib/runs.sh"  # train, trained, expect_error
export_both() {  # NAME: $tmp/NAME.h5 and $tmp/NAME.safetensors of run NAME
    "$B/train" export --ckpt "$tmp/$1" --out "$tmp/$1.h5" >"$tmp/$1.exp" 2>&1 &&
        "$B/train" export --ckpt "$tmp/$1" --out "$tmp/$1.safetensors" --format safetensors \
            >>"$tmp/$1.exp" 2>&1
    ok "$1: both exports: $(cat "$tmp/$1.exp")" '[ $? -eq 0 ]'
}
val_loss() { grep -o '"val_loss":[^,}]*' "$tmp/$1/metrics.jsonl" | tail -n 1 | cut -d: -f2; }
same_tensors() { "$B/tests/test_finetune" --same-tensors "$@"; }
ALLFROZEN=optim.freeze=text,image,audio,trunk
DFROZEN=optim.freeze=text,audio,trunk  # the diffusion model has no image group

# the Python side: importable, or pip-installable into the temporary folder; skipped otherwise
export PYTHONPATH=$tmp/py${PYTHONPATH:+:$PYTHONPATH}
have_py=1
python3 -c "import safetensors.numpy, h5py, numpy" 2>/dev/null ||
    timeout 180 python3 -m pip install -q --target "$tmp/py" safetensors h5py numpy \
        >/dev/null 2>&1 || have_py=0
[ $have_py -eq 1 ] ||
    echo "note: the safetensors, h5py and numpy Python packages cannot be installed here:" \
         "the comparisons through them are skipped"
# check_export NAME: the safetensors export against the HDF5 one, through both packages
check_export() {
    python3 - "$tmp/$1.h5" "$tmp/$1.safetensors" <<'PY'
import sys, h5py, numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file
h5, st = sys.argv[1], sys.argv[2]
tensors = load_file(st)
with safe_open(st, "np") as f:
    meta = f.metadata()
with h5py.File(h5, "r") as f:
    want = {k: np.asarray(v) for k, v in f["params"].items()}
    if "ema" in f:
        want.update({"ema/" + k: np.asarray(v) for k, v in f["ema"].items()})
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in f.attrs.items()}
assert sorted(tensors) == sorted(want), (sorted(tensors), sorted(want))
for k, v in want.items():
    t = tensors[k]
    assert t.dtype == np.float32 and v.dtype == np.float32, k
    assert t.shape == v.shape and t.tobytes() == v.tobytes(), k
assert sorted(meta) == sorted(attrs), (sorted(meta), sorted(attrs))
for k, v in attrs.items():
    assert meta[k] == str(v), (k, meta[k], v)
assert meta["tokenizer"] == "bytes-v1" and meta["vocab_size"] == "259"
assert (meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"]) == ("256", "257", "258")
assert tensors["text.wte"].shape[0] == 259
assert tensors["text.pos"].shape[0] == int(meta["text_T"])
assert tensors["audio.pos"].shape[0] == int(meta["n_aud"])
if meta["model_kind"] == "transformer":
    assert meta["layout"] == "image audio text" and "cond_layout" not in meta
    assert tensors["img.pos"].shape[0] == int(meta["n_img"])
else:
    assert meta["layout"] == "image" and meta["cond_layout"] == "text audio null"
    assert any(k.startswith("ema/") for k in tensors) and meta["weights"] == "params ema"
print("same: %d tensors, %d metadata keys" % (len(want), len(meta)))
PY
}
# python_copy NAME OUT: OUT.safetensors written by safetensors.numpy.save_file from the HDF5
# export alone (its own header order and padding, no metadata: as a PyTorch user's file)
python_copy() {
    python3 - "$tmp/$1.h5" "$tmp/$2.safetensors" <<'PY'
import sys, h5py, numpy as np
from safetensors.numpy import save_file
with h5py.File(sys.argv[1], "r") as f:
    d = {k: np.asarray(v) for k, v in f["params"].items()}
    if "ema" in f:
        d.update({"ema/" + k: np.asarray(v) for k, v in f["ema"].items()})
save_file(d, sys.argv[2])
PY
}

"$B/mmdata" synth --out "$tmp/A" --samples 64 --seed 3 >/dev/null ||
    { echo "synth failed"; echo "0 passed, 1 failed"; exit 1; }
cat >"$tmp/c.yaml" <<YAML
run:
  steps: 3
  threads: 1
  log_every: 100
data:
  train: $tmp/A/train
  val: $tmp/A/val
  global_batch: 8
  micro_batch: 8
model:
  d_model: 32
  n_layers: 1
  n_heads: 2
optim:
  warmup: 1
eval:
  samples: 16
YAML

# --- the transformer ------------------------------------------------------------------
trained 2 base parallel.tp=2
export_both base
ok "the safetensors export says so" 'grep -q "(safetensors: <name>)" "$tmp/base.exp"'
if [ $have_py -eq 1 ]; then
    out=$(check_export base 2>&1)
    ok "safetensors export = HDF5 export byte for byte, same metadata: $out" '[[ "$out" == same:* ]]'
fi
# init_from the checkpoint and from the file: a step with every group frozen, then evaluation
trained 1 from_ckpt checkpoint.init_from="$tmp/base" run.steps=1 $ALLFROZEN
trained 1 from_st checkpoint.init_from="$tmp/base.safetensors" run.steps=1 $ALLFROZEN
ok "init_from the file loaded every tensor" \
    'grep -q "initialized weights from .*base.safetensors (step 3): 23 of 23 tensors loaded" "$tmp/from_st.log"'
# (the same layout gives the same sums: the tp=2 base is compared with a tp=2 fine-tune below)
a=$(val_loss base); b=$(val_loss from_ckpt); c=$(val_loss from_st)
ok "same val_loss at tp=1: init_from checkpoint $b, init_from safetensors $c" \
    '[ -n "$b" ] && [ "$b" = "$c" ]'
"$B/train" export --ckpt "$tmp/from_st" --out "$tmp/from_st.h5" >/dev/null 2>&1
out=$(same_tensors "$tmp/base.h5" "$tmp/from_st.h5" params)
ok "the weights init_from read equal the export's: $out" '[ "$out" = "same: 23 tensors" ]'
trained 2 from_st_tp2 checkpoint.init_from="$tmp/base.safetensors" run.steps=1 $ALLFROZEN parallel.tp=2
"$B/train" export --ckpt "$tmp/from_st_tp2" --out "$tmp/from_st_tp2.h5" >/dev/null 2>&1
out=$(same_tensors "$tmp/base.h5" "$tmp/from_st_tp2.h5" params)
ok "tp=2 ranks read their slices of the file: $out" '[ "$out" = "same: 23 tensors" ]'
ok "tp=2: same val_loss as the tp=2 run that trained the weights ($a, $(val_loss from_st_tp2))" \
    '[ -n "$a" ] && [ "$(val_loss from_st_tp2)" = "$a" ]'
trained 1 ft_st checkpoint.init_from="$tmp/base.safetensors" run.steps=2
"$B/train" export --ckpt "$tmp/ft_st" --out "$tmp/ft_st.h5" >/dev/null 2>&1
out=$(same_tensors "$tmp/base.h5" "$tmp/ft_st.h5" params)
ok "the comparison can fail: a trained fine-tune differs ($out)" '[[ "$out" == differ:* ]]'
if [ $have_py -eq 1 ]; then
    python_copy base py
    trained 1 from_py checkpoint.init_from="$tmp/py.safetensors" run.steps=1 $ALLFROZEN
    ok "a save_file file (no metadata) loads: $(grep initialized "$tmp/from_py.log")" \
        'grep -q "initialized weights from .*py.safetensors: 23 of 23 tensors loaded" "$tmp/from_py.log"'
    ok "... with the same val_loss ($(val_loss from_py))" '[ "$(val_loss from_py)" = "$b" ]'
fi

# --- the diffusion model (EMA) --------------------------------------------------------
dit=(model.kind=diffusion model.patch=4 diffusion.enc_layers=1 diffusion.eval_samples=4)
trained 2 dbase "${dit[@]}" parallel.tp=2
export_both dbase
ok "the diffusion export has ema/<name>" 'grep -q "(safetensors: <name>, ema/<name>)" "$tmp/dbase.exp"'
if [ $have_py -eq 1 ]; then
    out=$(check_export dbase 2>&1)
    ok "diffusion: safetensors = HDF5 export (params and EMA): $out" '[[ "$out" == same:* ]]'
fi
trained 1 dfrom_ckpt "${dit[@]}" checkpoint.init_from="$tmp/dbase" run.steps=1 $DFROZEN
trained 1 dfrom_st "${dit[@]}" checkpoint.init_from="$tmp/dbase.safetensors" run.steps=1 $DFROZEN
ok "diffusion: EMA from the file's ema/ tensors" 'grep -q "EMA from its ema/ tensors" "$tmp/dfrom_st.log"'
b=$(val_loss dfrom_ckpt); c=$(val_loss dfrom_st)
ok "diffusion: same val_loss from the checkpoint ($b) and the file ($c)" '[ -n "$b" ] && [ "$b" = "$c" ]'
"$B/train" export --ckpt "$tmp/dfrom_ckpt" --out "$tmp/dfrom_ckpt.h5" >/dev/null 2>&1
"$B/train" export --ckpt "$tmp/dfrom_st" --out "$tmp/dfrom_st.h5" >/dev/null 2>&1
out="$(same_tensors "$tmp/dfrom_ckpt.h5" "$tmp/dfrom_st.h5" params) / $(same_tensors "$tmp/dfrom_ckpt.h5" "$tmp/dfrom_st.h5" ema)"
ok "diffusion: weights and EMA after init_from agree: $out" '[[ "$out" == "same: "*" / same: "* ]]'
if [ $have_py -eq 1 ]; then
    python_copy dbase dpy
    trained 1 dfrom_py "${dit[@]}" checkpoint.init_from="$tmp/dpy.safetensors" run.steps=1 $DFROZEN
    ok "diffusion: a save_file file loads, EMA included, same val_loss ($(val_loss dfrom_py))" \
        'grep -q "EMA from its ema/ tensors" "$tmp/dfrom_py.log" && [ "$(val_loss dfrom_py)" = "$b" ]'
fi

# --- bad files ------------------------------------------------------------------------
# craft MODE OUT: a damaged copy of base.safetensors (header rewritten with plain Python)
craft() {
    python3 - "$tmp/base.safetensors" "$tmp/$2.safetensors" "$1" <<'PY'
import json, struct, sys
src, dst, mode = sys.argv[1:]
raw = open(src, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
head, data = json.loads(raw[8:8 + n]), raw[8 + n:]
names = sorted(k for k in head if k != "__metadata__")
def out(h, d=data, text=None):
    b = (text if text is not None else json.dumps(h)).encode()
    b += b" " * (-len(b) % 8)
    open(dst, "wb").write(struct.pack("<Q", len(b)) + b + d)
if mode == "truncated":
    open(dst, "wb").write(raw[:len(raw) - 100])
elif mode == "header_len":
    open(dst, "wb").write(struct.pack("<Q", len(raw)) + raw[8:])
elif mode == "bad_json":
    out(None, text=json.dumps(head)[:-1] + ",}")
elif mode == "dtype":
    head["ln_f.g"]["dtype"] = "BF16"; out(head)
elif mode == "shape_bytes":
    head["ln_f.g"]["shape"] = [33]; out(head)
elif mode == "overlap":
    a, b = head["ln_f.b"]["data_offsets"], head["ln_f.g"]["data_offsets"]
    head["ln_f.g"]["data_offsets"] = [a[0], a[0] + b[1] - b[0]]; out(head)
elif mode == "out_of_range":
    o = head["lm_head.w"]["data_offsets"]; size = o[1] - o[0]
    head["lm_head.w"]["data_offsets"] = [len(data), len(data) + size]; out(head)
elif mode == "trailing":
    out(head, data + b"\0" * 8)
elif mode == "unknown_key":
    head["ln_f.g"]["offsets"] = head["ln_f.g"].pop("data_offsets"); out(head)
elif mode == "not_safetensors":
    open(dst, "wb").write(b"\x89HDF\r\n\x1a\n" + raw[8:200])
PY
}
init_err() {  # NAME PATTERN FILE [ARGS...]: init_from FILE fails with PATTERN
    local name=$1 pat=$2 file=$3; shift 3
    expect_error "init_from $name" "checkpoint.init_from.*$file.*$pat" "$B/train" "$tmp/c.yaml" \
        run.out_dir="$tmp/bad_$name" checkpoint.init_from="$tmp/$file" "$@"
}
craft truncated t1; init_err truncated "end beyond the [0-9]+ bytes of data the file holds \(file truncated\?\)" t1.safetensors
craft header_len t2; init_err "header length" "header length [0-9]+ reaches beyond the file" t2.safetensors
craft bad_json t3; init_err "bad JSON" "byte [0-9]+ of the file \(JSON header\): expected a quoted tensor name, found .}." t3.safetensors
craft dtype t4; init_err dtype "tensor 'ln_f.g': dtype BF16; only F32" t4.safetensors
craft shape_bytes t5; init_err "shape vs bytes" "tensor 'ln_f.g': data_offsets .* hold 128 bytes, its shape needs 132" t5.safetensors
craft overlap t6; init_err overlap "tensor 'ln_f.g': data_offsets .* overlap tensor 'ln_f.b'" t6.safetensors
craft out_of_range t7; init_err "out of range" "tensor 'lm_head.w': data_offsets .* end beyond" t7.safetensors
craft trailing t8; init_err "bytes after the data" "8 bytes after the last tensor's data belong to no tensor" t8.safetensors
craft unknown_key t9; init_err "unknown key" "tensor 'ln_f.g': unknown key 'offsets'" t9.safetensors
craft not_safetensors t10; init_err "an HDF5 file" "header length [0-9]+ reaches beyond the file" t10.safetensors
ok "nothing was trained from a bad file" '! ls "$tmp"/bad_*/metrics.jsonl >/dev/null 2>&1'
init_err "missing file" "cannot open" nope.safetensors
init_err "another model width" "do not fit the model: .*checkpoint \\[32.*model \\[64" base.safetensors model.d_model=64
init_err "another model kind" "a transformer model, the config asks for diffusion" base.safetensors "${dit[@]}"
if [ $have_py -eq 1 ]; then
    python3 - "$tmp/py.safetensors" "$tmp/nolm.safetensors" "$tmp/dpy.safetensors" "$tmp/noema.safetensors" <<'PY'
import sys
from safetensors.numpy import load_file, save_file
d = load_file(sys.argv[1]); del d["lm_head.w"]; save_file(d, sys.argv[2])
d = load_file(sys.argv[3]); del d["ema/final.proj.w"]; save_file(d, sys.argv[4])
PY
    init_err "missing tensor" "lm_head.w: missing from the checkpoint" nolm.safetensors
    init_err "missing EMA tensor" "tensor 'ema/final.proj.w' missing" noema.safetensors "${dit[@]}"
    python3 -c "import json, sys, struct; h = json.dumps({'__metadata__': {'model_kind': 'transformer', 'step': 'x'}}).encode(); open(sys.argv[1], 'wb').write(struct.pack('<Q', len(h)) + h)" "$tmp/step.safetensors"
    init_err "bad step" "__metadata__ 'step' is 'x'" step.safetensors
fi
expect_error "export: --format unknown" "--format 'onnx': expected hdf5 or safetensors" \
    "$B/train" export --ckpt "$tmp/base" --out "$tmp/x.onnx" --format onnx
expect_error "export: .safetensors name, hdf5 format" "names a safetensors file but --format is hdf5" \
    "$B/train" export --ckpt "$tmp/base" --out "$tmp/x.safetensors"
expect_error "export: unwritable safetensors --out" "$tmp/nodir/x.safetensors: cannot create" \
    "$B/train" export --ckpt "$tmp/base" --out "$tmp/nodir/x.safetensors" --format safetensors
ok "no temporary file left behind" '! ls "$tmp"/*.tmp >/dev/null 2>&1'

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
