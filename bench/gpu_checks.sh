#!/usr/bin/env bash
# What only a GPU can show about several runs per GPU and --compile, in one go of at most about nine
# minutes on one GPU: the compile tests on CUDA (compiled and eager training agree, fused SGD), K
# runs side by side with and without CUDA MPS and each step eager / compiled / as CUDA graphs
# (bench_grid.py), and the study's ResNet112 -> ResNet56 epoch, eager and compiled (bench_epoch.py).
# Each part has its own time limit; one that runs out or fails is reported, and the next one runs.
# Logs and JSON go to OUT_DIR; bench/RESULTS.md takes its figures from them.
#
#   bench/gpu_checks.sh OUT_DIR            (PYTHON: the interpreter, default python)
set -u
out=${1:?usage: bench/gpu_checks.sh OUT_DIR}
python=${PYTHON:-python}
mkdir -p -- "$out" || exit 1
out=$(cd -- "$out" && pwd) || exit 1
cd -- "$(dirname -- "$0")/.." || exit 1
"$python" -c 'import sys, torch
sys.exit("bench/gpu_checks.sh: no CUDA device here") if not torch.cuda.is_available() else print(torch.cuda.get_device_name())' || exit 1

part() {  # NAME SECONDS COMMAND...: its output in OUT_DIR/NAME.log, and its end shown here
    local name=$1 seconds=$2
    shift 2
    echo "== $name (at most $seconds s): $*"
    timeout --signal=INT --kill-after=30 "$seconds" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit status $? (124: out of time)"
    tail -n 30 "$out/$name.log"
}

part compile_tests 120 "$python" -m pytest tests/test_compile.py -q -p no:cacheprovider -n 0
part grid 210 "$python" bench/bench_grid.py --device cuda --methods none tucker --repeats 3 --json "$out/grid.json"
part epoch 150 "$python" bench/bench_epoch.py --device cuda --methods tucker --amp bf16 --compile --epochs 3 --repeats 2 \
    --json "$out/epoch.json"
