#!/usr/bin/env bash
# Everyday commands for the project; `./util.sh help` lists them.
set -euo pipefail
# Paths given to a command are the caller's, as for runner.py itself: only the project's own files
# are taken from the repository.
REPO="$(cd "$(dirname "$0")" && pwd)"
PYTHON=${PYTHON:-$([ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3)}

usage() {
    sed -n 's/^    \([a-z|-]*\)) *# \(.*\)/\1\t\2/p' "$0" | while IFS=$'\t' read -r name text; do
        printf '  %-15s %s\n' "$name" "$text"
    done
}

# Create .venv and install requirements.txt into it, once (again when requirements.txt changes).
ensure_venv() {
    if [ ! -x "$REPO/.venv/bin/python" ] || [ "$REPO/requirements.txt" -nt "$REPO/.venv/.installed" ]; then
        echo "util.sh: installing requirements.txt into .venv (torch is a large download, a few minutes)..."
        python3 -m venv "$REPO/.venv"
        "$REPO/.venv/bin/pip" install --quiet --upgrade pip
        "$REPO/.venv/bin/pip" install -r "$REPO/requirements.txt"  # its progress shows: torch takes minutes
        touch "$REPO/.venv/.installed"
        echo "util.sh: .venv is ready; 'source .venv/bin/activate' makes its python the one README's commands run"
    fi
    PYTHON="$REPO/.venv/bin/python"
}

case "${1:-help}" in
    # ---- set-up, demo, tests ----
    setup) # create .venv and install requirements.txt (torch, tensorly, jupyter, pytest, ...)
        ensure_venv ;;
    demo) # [training flags]  set up, train a ResNet20 teacher on digits, distil a ResNetBaby with tucker
        shift; ensure_venv
        # the teacher by digits' teacher recipe (toolbox/config/recipes.py), where the students look for it
        teacher=(--dataset digits "$@" --epochs 8 --batch_size 64 --lr 0.05)
        students=(--dataset digits --batch_size 64 --lr 0.05 --epochs 12 "$@")
        log=$(mktemp); trap 'rm -f "$log"' EXIT
        summary=()
        demo_run() { # LABEL FLAGS...: one training run; its last line (the best accuracy) goes to the summary
            local label=$1; shift
            "$PYTHON" "$REPO/tucker_distillation.py" "$@" | tee "$log"
            summary+=("$label $(tail -n 1 "$log")")
        }
        start=$SECONDS
        demo_run "teacher  ResNet20                :" --distillation none --student ResNet20 "${teacher[@]}"
        demo_run "student  ResNetBaby, tucker      :" --distillation tucker --ranks BATCH_SIZE,16,8,8 \
            --teacher ResNet20 --student ResNetBaby "${students[@]}"
        demo_run "baseline ResNetBaby, no teacher  :" --distillation none --student ResNetBaby "${students[@]}"
        printf '%s\n' "${summary[@]}"
        echo "(tucker is the original study's loss: on digits it is expected to land below the student alone, as in"
        echo " README's 'What to expect', 16 points below over 3 seeds, because it rotates the batch mode and weighs"
        echo " every row of the core alike; --tucker_core per_sample compares each sample's own core: 1.3 points above)"
        echo "demo finished in $((SECONDS - start)) s; runs are under experiments/digits/ (or the --experiments_dir given)"
        echo "what to expect from each method, with error bars: README.md, 'What to expect'"
        echo "their curves: tensorboard --logdir experiments (docs/training.md, 'Curves in TensorBoard')"
        echo "to run README's python commands, activate the project's environment first: source .venv/bin/activate" ;;
    study) # [runner.py flags] [-- training flags]  every method and baseline on digits, 3 seeds, 2 runs at a time; the table
        shift; ensure_venv
        runner_flags=(); training_flags=()
        while [ $# -gt 0 ] && [ "$1" != -- ]; do runner_flags+=("$1"); shift; done
        [ $# -gt 0 ] && shift && training_flags=("$@")
        folder=${EXPERIMENTS_DIR:-experiments}/study start=$SECONDS
        # Small enough for two CPU cores: a ResNet20 teacher and ResNetBaby students, 8 epochs each (the grid:
        # toolbox/sweep/studies.py, DIGITS_STUDY).
        "$PYTHON" "$REPO/runner.py" --benchmark digits --scheduler local --parallel 2 --experiments_dir "$folder" \
            "${runner_flags[@]}" -- --threads 1 "${training_flags[@]}"
        case " ${runner_flags[*]} " in *" --dry_run "*|*" --status "*) exit 0 ;; esac
        echo "study finished in $((SECONDS - start)) s; runs are under $folder/"
        PYTHONPATH="$REPO" "$PYTHON" -c 'import sys; from toolbox import analysis; print(analysis.expectation_report(analysis.load_runs(sys.argv[1])))' "$folder" ;;
    test) # [pytest flags]  set up, check lint and format (ruff), then run the whole test suite
        shift; ensure_venv; cd "$REPO"
        "$PYTHON" -m ruff check --quiet . && "$PYTHON" -m ruff format --check --quiet . \
            || { echo "util.sh: ruff found the lines above (ruff check --fix . && ruff format . mends most)" >&2; exit 1; }
        exec "$PYTHON" -m pytest "$@" ;;
    # ---- cluster: runner.py's grid of runs, and a SLURM cluster on this machine ----
    status) # [runner.py flags]  each run of the grid: finished / running / pending / failed / not started, best accuracy (a local sweep: add --scheduler local)
        shift; exec "$PYTHON" "$REPO/runner.py" --status "$@" ;;
    logs) # RUN [tail flags, e.g. -f]  the end of the run's newest log, its job's or its train.log (RUN: its folder, or its name under experiments/)
        [ -n "${2:-}" ] || { echo "util.sh: logs needs a RUN: util.sh logs RUN [tail flags]" >&2; exit 2; }
        run=$2; shift 2
        [ -d "$run" ] || run="${EXPERIMENTS_DIR:-experiments}/$run"
        [ -d "$run" ] || { echo "util.sh: no run folder $run" >&2; exit 2; }
        # shellcheck disable=SC2012  # the log names are the schedulers', without odd characters
        log=$(ls -t -- "$run"/slurm-*.out "$run"/*.[oe][0-9]* "$run"/local.out "$run"/job.out "$run"/train.log 2>/dev/null | head -n 1 || true)
        [ -n "$log" ] || { echo "util.sh: $run has no log yet" >&2; exit 1; }
        [ -f "$log" ] || { echo "util.sh: $log is not a regular file (a FIFO, a device?): not read" >&2; exit 2; }
        echo "==> $log <==" >&2
        exec tail -n 40 "$@" -- "$log" ;;
    cancel) # [--experiments_dir DIR]  cancel the queued and running jobs that runner.py recorded in job.json files
        shift; exec "$PYTHON" "$REPO/runner.py" --cancel "$@" ;;
    clean) # [--yes] [--experiments_dir DIR]  delete the folders of unfinished runs without a live job (asks first; a local sweep: add --scheduler local)
        shift; exec "$PYTHON" "$REPO/runner.py" --clean "$@" ;;
    slurm-up) # start a single-node SLURM cluster on this machine (root; installs the packages if missing)
        exec "$REPO/scripts/slurm-dev.sh" up ;;
    slurm-down) # cancel its jobs and stop the daemons that slurm-up started
        exec "$REPO/scripts/slurm-dev.sh" down ;;
    # ---- end of cluster commands ----
    help|-h|--help) # this list
        usage ;;
    *)
        echo "util.sh: unknown command '$1'; one of:" >&2; usage >&2; exit 2 ;;
esac
