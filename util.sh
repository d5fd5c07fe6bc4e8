#!/usr/bin/env bash
# Everyday commands for the project; `./util.sh help` lists them.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

usage() {
    sed -n 's/^    \([a-z|-]*\)) *# \(.*\)/\1\t\2/p' "$0" | while IFS=$'\t' read -r name text; do
        printf '  %-15s %s\n' "$name" "$text"
    done
}

# Create .venv and install requirements.txt into it, once (again when requirements.txt changes).
ensure_venv() {
    if [ ! -x .venv/bin/python ] || [ requirements.txt -nt .venv/.installed ]; then
        python3 -m venv .venv
        .venv/bin/pip install --quiet --upgrade pip
        .venv/bin/pip install --quiet -r requirements.txt
        touch .venv/.installed
    fi
    PYTHON=.venv/bin/python
}

case "${1:-help}" in
    # ---- set-up, demo, tests ----
    setup) # create .venv and install requirements.txt (torch, tensorly, jupyter, pytest, ...)
        ensure_venv ;;
    demo) # [training flags]  set up, train a ResNet20 teacher on digits, distil a ResNetBaby with tucker
        shift; ensure_venv
        common=(--dataset digits --batch_size 64 --lr 0.05 --epochs 12 "$@")
        log=$(mktemp); trap 'rm -f "$log"' EXIT
        summary=()
        demo_run() { # LABEL FLAGS...: one training run; its last line (the best accuracy) goes to the summary
            local label=$1; shift
            "$PYTHON" tucker_distillation.py "$@" "${common[@]}" | tee "$log"
            summary+=("$label $(tail -n 1 "$log")")
        }
        start=$SECONDS
        demo_run "teacher  ResNet20                :" --distillation none --student ResNet20
        demo_run "student  ResNetBaby, tucker      :" --distillation tucker --ranks BATCH_SIZE,16,8,8 \
            --teacher ResNet20 --student ResNetBaby
        demo_run "baseline ResNetBaby, no teacher  :" --distillation none --student ResNetBaby
        printf '%s\n' "${summary[@]}"
        echo "demo finished in $((SECONDS - start)) s; runs are under experiments/digits/"
        echo "what to expect from each method, with error bars: README.md, 'What to expect'" ;;
    study) # [runner.py flags] [-- training flags]  every method and baseline on digits, 3 seeds, 2 runs at a time; the table
        shift; ensure_venv
        runner_flags=(); training_flags=()
        while [ $# -gt 0 ] && [ "$1" != -- ]; do runner_flags+=("$1"); shift; done
        [ $# -gt 0 ] && shift && training_flags=("$@")
        folder=${EXPERIMENTS_DIR:-experiments}/study start=$SECONDS
        # Small enough for two CPU cores: a ResNet20 teacher and ResNetBaby students, 6 epochs each.
        "$PYTHON" runner.py --scheduler local --parallel 2 --experiments_dir "$folder" --dataset digits \
            --teacher ResNet20 --student ResNetBaby --epochs 6 --batch_size 64 --ranks_list BATCH_SIZE,16,8,8 \
            --distillations none featuremap tucker tucker_recomp noise kd fitnet at sp pkt rkd vid crd dkd \
            --grid tucker_core=original,per_sample "${runner_flags[@]}" -- --lr 0.05 --threads 1 "${training_flags[@]}"
        case " ${runner_flags[*]} " in *" --dry_run "*|*" --status "*) exit 0 ;; esac
        echo "study finished in $((SECONDS - start)) s; runs are under $folder/"
        "$PYTHON" -c 'import sys; from toolbox import analysis; print(analysis.expectation_report(analysis.load_runs(sys.argv[1])))' "$folder" ;;
    test) # [pytest flags]  set up, then run the whole test suite
        shift; ensure_venv; exec "$PYTHON" -m pytest "$@" ;;
    # ---- cluster: runner.py's grid of runs, and a SLURM cluster on this machine ----
    status) # [runner.py flags]  each run of the grid: finished / running / pending / failed / not started, best accuracy
        shift; exec "$PYTHON" runner.py --status "$@" ;;
    logs) # RUN [tail flags, e.g. -f]  the end of the run's newest job log (RUN: its folder, or its name under experiments/)
        run=${2:?usage: util.sh logs RUN [tail flags]}; shift 2
        [ -d "$run" ] || run="${EXPERIMENTS_DIR:-experiments}/$run"
        [ -d "$run" ] || { echo "util.sh: no run folder $run" >&2; exit 2; }
        # shellcheck disable=SC2012  # the log names are the schedulers', without odd characters
        log=$(ls -t "$run"/slurm-*.out "$run"/*.[oe][0-9]* "$run"/local.out 2>/dev/null | head -n 1 || true)
        [ -n "$log" ] || { echo "util.sh: $run has no job log yet" >&2; exit 1; }
        echo "==> $log <==" >&2
        exec tail -n 40 "$@" "$log" ;;
    cancel) # [--experiments_dir DIR]  cancel the queued and running jobs that runner.py recorded in job.json files
        shift; exec "$PYTHON" runner.py --cancel "$@" ;;
    clean) # [--yes] [--experiments_dir DIR]  delete the folders of unfinished runs without a live job (asks first)
        shift; exec "$PYTHON" runner.py --clean "$@" ;;
    slurm-up) # start a single-node SLURM cluster on this machine (root; installs the packages if missing)
        exec scripts/slurm-dev.sh up ;;
    slurm-down) # cancel its jobs and stop the daemons that slurm-up started
        exec scripts/slurm-dev.sh down ;;
    # ---- end of cluster commands ----
    help|-h|--help) # this list
        usage ;;
    *)
        echo "util.sh: unknown command '$1'; one of:" >&2; usage >&2; exit 2 ;;
esac
