#!/usr/bin/env bash
# The prepared GPU check (issue 8): the default Transformer on names, trained with
#     --device cuda --dtype bf16 --compile
# for a fixed number of steps, against fp32 and bf16 eager on the same GPU and the same run on CPU. Prints one row
# per run: tokens/s (after the first logging window, which holds compilation and warm-up), the step reached, the
# val loss there, and the wall time. Sized to finish in under 10 minutes on one H100/H200 with the defaults; without
# a GPU the CUDA rows are skipped and the rest still runs.
#
#   bash benchmarks/gpu_check.sh                          # results also in $OUT/summary.txt
#   STEPS=500 CPU_BUDGET=60 bash benchmarks/gpu_check.sh  # shorter
#   ONLY=cpu MODELS="mlp transformer" CPU_VARIANTS="fp32 bf16 fp32-compile bf16-compile" STEPS=300 \
#       bash benchmarks/gpu_check.sh                      # the CPU precision/compile grid
#
# Data: $DATA/names-{train,val}.txt when present (default: ../shared/data next to the repository), else the
# built-in first-names dataset (split 0.9/0.1). The machine running this needs no network: only this repository,
# Python with torch (CUDA build for the GPU rows), numpy, safetensors and tqdm.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-/tmp/gpu_check}
STEPS=${STEPS:-2000}                 # optimizer steps per run; the val loss is measured after exactly these
LOG_EVERY=${LOG_EVERY:-100}          # tokens/s windows
CPU_BUDGET=${CPU_BUDGET:-120}        # seconds cap per CPU run (it reports the step it reached)
RUN_TIMEOUT=${RUN_TIMEOUT:-300}      # hard limit per run, seconds
MODELS=${MODELS:-transformer}        # registry names; each with its default config and training defaults
GPU_VARIANTS=${GPU_VARIANTS:-"bf16-compile fp32 bf16"}
CPU_VARIANTS=${CPU_VARIANTS:-"fp32"}
ONLY=${ONLY:-all}                    # all | gpu | cpu
DATA=${DATA:-$REPO/../shared/data}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

say() { echo "$@" | tee -a "$SUMMARY"; }

python - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import os, platform, sys
try:
    import torch
except ImportError:
    sys.exit("gpu_check: torch is not installed")
missing = [m for m in ("numpy", "safetensors", "tqdm") if __import__("importlib").util.find_spec(m) is None]
if missing:
    print(f"gpu_check: missing Python packages {missing}: the runs will fail", file=sys.stderr)
cpu = platform.processor() or platform.machine()
try:
    cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
except (OSError, StopIteration):
    pass
print(f"python {platform.python_version()}, torch {torch.__version__}, CPU {cpu} x{os.cpu_count()}")
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("no CUDA GPU visible: CUDA rows are skipped")
EOF

if [ -f "$DATA/names-train.txt" ] && [ -f "$DATA/names-val.txt" ]; then
    DATA_ARGS=(-i "$DATA/names-train.txt" --val-file "$DATA/names-val.txt" --split 1,0)
    say "data: $DATA/names-train.txt (val: names-val.txt)"
else
    DATA_ARGS=(-i first-names --split 0.9,0.1)
    say "data: built-in first-names ($DATA/names-train.txt not found)"
fi
HAVE_CUDA=$(python -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
GPUS=$(python -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)

summarize() {  # NAME DEVICE VARIANT WALL STATUS
    python - "$OUT/$1" "$2" "$3" "$4" "$5" "$1" <<'EOF' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
run, device, variant, wall, status, name = Path(sys.argv[1]), *sys.argv[2:]
try:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
except OSError:
    records = []
train = [r for r in records if r["event"] == "train"]
evals = [r for r in records if r["event"] == "eval"]
# Tokens/s over the windows after the first (the first holds compilation and warm-up): tokens / seconds.
tokens = seconds = 0.0
for before, after in zip(train, train[1:]):
    dt = after["elapsed"] - before["elapsed"]
    tokens, seconds = tokens + after["tokens_per_s"] * dt, seconds + dt
tps = f"{tokens / seconds:>10.0f}" if seconds > 0 else f"{'-':>10}"
first = f"{train[0]['elapsed']:6.1f}s" if train else "     -"
step = train[-1]["step"] if train else 0
val = f"{evals[-1]['val_loss']:.4f}" if evals else "-"
note = "" if status == "0" else f"  (exit {status}: see {run}.log)"
print(f"{name:<28} {device:<5} {variant:<13} {tps} tok/s  first window {first}  step {step:>5}  "
      f"val {val:<7} wall {float(wall):6.1f}s{note}")
EOF
}

run() {  # NAME DEVICE VARIANT LAUNCHER... -- extra train args
    local name=$1 device=$2 variant=$3
    shift 3
    local args=(--device "$device" --max-steps "$STEPS" --eval-every "$STEPS" --log-every "$LOG_EVERY" --patience 0
                --samples 0 --out "$OUT/$name" --force)
    case $variant in
        *bf16*) args+=(--dtype bf16) ;;
        *fp16*) args+=(--dtype fp16) ;;
    esac
    case $variant in *compile*) args+=(--compile) ;; esac
    [ "$device" = cpu ] && args+=(--time-budget "$CPU_BUDGET")
    local start end status
    start=$(date +%s.%N)
    timeout "$RUN_TIMEOUT" "$@" "${DATA_ARGS[@]}" "${args[@]}" > "$OUT/$name.log" 2>&1
    status=$?
    end=$(date +%s.%N)
    summarize "$name" "$device" "$variant" "$(python -c "print($end - $start)")" "$status"
}

say "steps $STEPS, log every $LOG_EVERY, CPU budget ${CPU_BUDGET}s per run"
for model in $MODELS; do
    if [ "$ONLY" != cpu ] && [ "$HAVE_CUDA" = 1 ]; then
        for variant in $GPU_VARIANTS; do
            run "$model-cuda-$variant" cuda "$variant" python -m makemore train --model "$model"
        done
        if [ "$GPUS" -ge 2 ]; then  # data-parallel over every GPU of this machine
            run "$model-cuda-ddp$GPUS-bf16-compile" cuda "ddp-bf16-compile" \
                torchrun --standalone --nproc_per_node "$GPUS" -m makemore train --model "$model"
        fi
    fi
    if [ "$ONLY" != gpu ]; then
        for variant in $CPU_VARIANTS; do
            run "$model-cpu-$variant" cpu "$variant" python -m makemore train --model "$model"
        done
    fi
done
say "summary: $SUMMARY"
