# cases.sh: exists so that tests/backend_ref.sh (the check) and tests/ref/make_ref.sh (which
# made the reference files from the baseline build) run exactly the same commands: the data,
# the configs, every override, the layouts and the fixtures are defined here once and both
# scripts source this file. Sourcing it runs nothing. Changing anything here changes what the
# references mean: backend_ref.sh compares the command lines it ran with tests/ref/cmdlines.txt,
# written when the references were made, and fails when they differ.
#
# Every function runs in the current directory (a scratch directory), with relative paths
# only, so that the configs saved in checkpoints and exports do not depend on where it ran.
# Needs: REF_B (the build: train, mmdata), REF_HERE (this folder), REF_H5CANON (compiled
# h5canon), and, for mpirun as root, REF_MPI_ROOT=(--allow-run-as-root).
# shellcheck shell=bash disable=SC2034

# The BLAS kernels. OpenBLAS picks its kernels by CPU, and they round differently (the
# SkylakeX sgemm is not the Haswell one), so the references would hold only on CPUs that
# get the same pick. Every run here takes the Haswell kernels, which any x86-64 with AVX2 and
# FMA runs; our own loops compute the same bits at every x86-64 level (model/cpu/cpu_isa.h),
# so the references hold on any such machine. ref_produce exports it.
REF_BLAS_CORE=Haswell
# Succeeds when this CPU can run those kernels (AVX2 and FMA).
ref_cpu_runs_blas_core() {
    local f; f=" $(grep -m1 '^flags' /proc/cpuinfo) "
    [[ $f == *" avx2 "* && $f == *" fma "* ]]
}

# The synthetic data set: 128 training and 64 validation samples, seed 11.
REF_SYNTH=(--samples 128 --seed 11)

# Every run: 20 steps, one thread per rank, every step logged (metrics.jsonl), checkpoint
# only at the end (checkpoint.every=0), and for the loss cases no validation set, so no
# evaluation (data.val= empty). Model sizes and batches are the configs' own.
REF_COMMON=(data.train=data/train data.val= run.steps=20 run.threads=1 run.log_every=1
            eval.every=0 checkpoint.every=0)

# The loss cases: NAME NP CONFIG OVERRIDES... (configs: frozen copies of configs/tiny.yaml and
# configs/diffusion_tiny.yaml of the baseline, in tests/ref/, so retuning a demo config does
# not move these numbers). global_batch 32, micro_batch 16: dp=2 takes one micro-step per
# rank, tp=2 (dp=1) accumulates two.
REF_CASES=(
    "lm_1              1 tiny.yaml"
    "lm_dp2            2 tiny.yaml"
    "lm_tp2            2 tiny.yaml parallel.tp=2"
    "lm_dp2_tp2_zero1  4 tiny.yaml parallel.tp=2 parallel.zero=1"
    "dit_1             1 diffusion_tiny.yaml"
    "dit_dp2           2 diffusion_tiny.yaml"
)

# The fixtures: the same configs shrunk (d_model 8, 2 layers, 2 heads) so that a checkpoint
# is small enough to commit, trained on one rank to step 10 of 20 (run.stop_after=10), then
# resumed to step 20 with evaluation at step 20 on the validation set (eval.every=0: only
# at the last step; the diffusion model with 8 prompts per mode and 5 sampler steps). The
# diffusion fixture predicts v (diffusion.predict=v), where the loss cases above predict x
# as the config does: both paths are pinned, and this early in training an x-predicting
# model samples the same flat grey image whatever the noise and the prompt, which would pin
# nothing, while v-predicted samples depend on both.
REF_SMALL=(model.d_model=8 model.n_layers=2 model.n_heads=2 data.val=data/val
           eval.samples=64 eval.batch=64)
REF_FIXTURES=(
    "lm   tiny.yaml"
    "dit  diffusion_tiny.yaml diffusion.predict=v diffusion.eval_samples=8 diffusion.sample_steps=5"
)
REF_STOP=10
REF_CKPT_STEP=step_00000010

# `train sample` from the diffusion fixture: a caption, and a caption with a sound of the
# validation set (written by mmdata inspect).
REF_SAMPLE_TEXT="a large blue square at the top"
REF_SAMPLE_ARGS=(--n 2 --steps 5 --seed 1 --guidance 3)

# The trainer under mpirun, one OpenMP thread per rank. mpi_yield_when_idle: a rank waiting
# in a collective yields its core instead of spinning on it (tp=2 on 2 cores: 8 s instead
# of 22 s); it changes no number, only how ranks wait.
ref_mpirun() {  # NP ARGS...
    local np=$1; shift
    OMP_NUM_THREADS=1 timeout 300 mpirun "${REF_MPI_ROOT[@]}" --oversubscribe \
        --mca mpi_yield_when_idle 1 -np "$np" "$REF_B/train" "$@"
}

# The step lines of a run, exactly as metrics.jsonl has them (timings left out).
ref_steps() { grep -o '"step":[0-9]*,"loss":[^,]*,"lr":[^,]*,"grad_norm":[^,}]*' "runs/$1/metrics.jsonl"; }
# The evaluation lines (no timings in them), with the keys the baseline had: the metrics
# issue 17 added (caption metrics of any set, the per-input-mode keys of the transformer)
# come after those and are left out, and so are their fields in eval/*.jsonl (ref_eval_sha).
ref_evals() {
    grep '"val_loss"' "runs/$1/metrics.jsonl" |
        sed -E 's/,"(val_loss|caption_(exact|cer|bleu4|f1|acc)|acc_[a-z]+)_(image|audio|both)":[^,}]*//g; s/,"caption_(exact|cer|bleu4|f1)":[^,}]*//g'
}
# sha256 of an eval/*.jsonl as the baseline wrote it: each caption line up to "exact"
ref_eval_sha() { sed -E 's/,"exact":.*$/}/' "$1" | sha256sum | cut -d' ' -f1; }
# sha256 of a file's bytes; of an HDF5 file's canonical content (h5canon.c says why).
ref_sha() { sha256sum <"$1" | cut -d' ' -f1; }
ref_h5sha() {  # [--tensors] FILE
    local s
    s=$("$REF_H5CANON" "$@" | sha256sum; exit "${PIPESTATUS[0]}") || { echo unreadable; return 1; }
    echo "${s%% *}"
}
# the data set's files, name and sha256 of each, in name order
ref_data_sums() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum); }

# Every rank file of a checkpoint: "LABEL/rank_XXXXX.h5 SHA" (parameters, AdamW moments,
# EMA: every tensor's bits). meta.h5 is left out: it holds the resolved config, which may
# gain keys; its step, RNG and loader position show in the resumed losses.
ref_ckpt_sums() {  # DIR LABEL
    local f
    for f in "$1"/rank_*.h5; do echo "$2/$(basename "$f") $(ref_h5sha "$f")"; done
}

# Runs everything into the current directory and writes the results into OUT (a folder):
#   cmdlines.txt     every command run, the build shown as BUILD and tests/ref/ as REF
#   status.txt       "NAME RC" for each command (0 = it succeeded); its output: logs/NAME.txt
#   steps_RUN.txt    the step lines of each run; evals_RUN.txt its evaluation lines
#   sums.txt         "LABEL SHA256" for the data, the final checkpoint of each run, the
#                    fixtures as this build makes them, the evaluation outputs, the exports
#                    and the sampled images
# FIX: where the resumed runs, the exports and `train sample` take the fixtures from: a
# folder holding ckpt_lm/ and ckpt_dit/ (the stored ones), or "fresh" (the ones this build
# just made, which is how make_ref.sh made the stored ones).
ref_produce() {
    local out=$1 fix=$2 c name np cfg extra f kind e
    export OPENBLAS_CORETYPE=$REF_BLAS_CORE
    mkdir -p "$out" runs fix logs
    : >"$out/cmdlines.txt"; : >"$out/status.txt"; : >"$out/sums.txt"
    ref_x() {  # NAME CMD...: runs CMD into logs/NAME.txt, noting its command line and status
        local n=$1 line; shift
        line="$*"; line=${line//"$REF_B"/BUILD}; line=${line//"$REF_HERE"/REF}
        echo "$n: $line" >>"$out/cmdlines.txt"
        "$@" >"logs/$n.txt" 2>&1
        echo "$n $?" >>"$out/status.txt"
    }
    ref_sum() { echo "$1 $2" >>"$out/sums.txt"; }

    ref_x synth "$REF_B/mmdata" synth --out data "${REF_SYNTH[@]}"
    ref_data_sums data | while read -r s p; do ref_sum "data/${p#./}" "$s"; done

    for c in "${REF_CASES[@]}"; do
        read -r name np cfg extra <<<"$c"
        # shellcheck disable=SC2086  # $extra: several words on purpose
        ref_x "$name" ref_mpirun "$np" "$REF_HERE/$cfg" "${REF_COMMON[@]}" $extra \
            run.out_dir="runs/$name"
        ref_steps "$name" >"$out/steps_$name.txt"
        ref_ckpt_sums "runs/$name/ckpt/step_00000020" "$name/step_00000020" >>"$out/sums.txt"
    done

    for f in "${REF_FIXTURES[@]}"; do
        read -r kind cfg extra <<<"$f"
        # shellcheck disable=SC2086
        ref_x "fix_$kind" ref_mpirun 1 "$REF_HERE/$cfg" "${REF_COMMON[@]}" "${REF_SMALL[@]}" \
            $extra run.out_dir="runs/fix_$kind" run.stop_after=$REF_STOP
        ref_steps "fix_$kind" >"$out/steps_fix_$kind.txt"
        ref_evals "fix_$kind" >"$out/evals_fix_$kind.txt"
        ref_ckpt_sums "runs/fix_$kind/ckpt/$REF_CKPT_STEP" "fix_$kind/$REF_CKPT_STEP" >>"$out/sums.txt"
        mkdir -p "fix/ckpt_$kind"
        if [ "$fix" = fresh ]; then
            cp -r "runs/fix_$kind/ckpt/$REF_CKPT_STEP" "fix/ckpt_$kind/"
        else
            cp -r "$fix/ckpt_$kind/$REF_CKPT_STEP" "fix/ckpt_$kind/"
        fi
        chmod -R u+w "fix/ckpt_$kind"
        # shellcheck disable=SC2086
        ref_x "res_$kind" ref_mpirun 1 "$REF_HERE/$cfg" "${REF_COMMON[@]}" "${REF_SMALL[@]}" \
            $extra run.out_dir="runs/res_$kind" checkpoint.resume="fix/ckpt_$kind/$REF_CKPT_STEP"
        ref_steps "res_$kind" >"$out/steps_res_$kind.txt"
        ref_evals "res_$kind" >"$out/evals_res_$kind.txt"
        ref_ckpt_sums "runs/res_$kind/ckpt/step_00000020" "res_$kind/step_00000020" >>"$out/sums.txt"
        for e in "runs/res_$kind"/eval/*.jsonl "runs/res_$kind"/samples/*.png; do
            [ -e "$e" ] || continue
            case $e in
                *.jsonl) ref_sum "res_$kind/${e#"runs/res_$kind/"}" "$(ref_eval_sha "$e")" ;;
                *) ref_sum "res_$kind/${e#"runs/res_$kind/"}" "$(ref_sha "$e")" ;;
            esac
        done

        ref_x "export_$kind" env OMP_NUM_THREADS=1 timeout 120 "$REF_B/train" export \
            --ckpt "fix/ckpt_$kind/$REF_CKPT_STEP" --out "export_$kind.h5"
        ref_sum "export_$kind.h5" "$(ref_h5sha "export_$kind.h5")"
        ref_sum "export_$kind.h5(tensors)" "$(ref_h5sha --tensors "export_$kind.h5")"
    done

    ref_x inspect "$REF_B/mmdata" inspect data --split val --sample 3 --out look
    ref_sum look/sample_3.wav "$(ref_sha look/sample_3.wav)"
    ref_x sample_text env OMP_NUM_THREADS=1 timeout 120 "$REF_B/train" sample \
        --ckpt "fix/ckpt_dit/$REF_CKPT_STEP" --out sample_text --text "$REF_SAMPLE_TEXT" \
        "${REF_SAMPLE_ARGS[@]}"
    ref_x sample_audio env OMP_NUM_THREADS=1 timeout 120 "$REF_B/train" sample \
        --ckpt "fix/ckpt_dit/$REF_CKPT_STEP" --out sample_audio --text "$REF_SAMPLE_TEXT" \
        --audio look/sample_3.wav "${REF_SAMPLE_ARGS[@]}"
    for e in sample_text/* sample_audio/*; do [ -e "$e" ] && ref_sum "$e" "$(ref_sha "$e")"; done
    return 0
}
