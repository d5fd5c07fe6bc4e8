#!/usr/bin/env python
"""Train a teacher, or distil a student from it through (Tucker-decomposed) feature maps.

    python tucker_distillation.py --distillation none --dataset digits --student ResNet20 --epochs 12
    python tucker_distillation.py --distillation tucker --ranks BATCH_SIZE,16,8,8 --dataset digits \
        --teacher ResNet20 --student ResNetBaby --epochs 12

    python tucker_distillation.py --config digits-tucker.yaml      # the flags from a YAML file

Each run lives in ``experiments/<experiment_name>/`` (config.json, last.pt, <Arch>.pth, Loss.png,
Accuracy.png, train.log, TensorBoard event files, and metrics.json once finished). Rerunning an
unfinished run resumes it; rerunning a finished one does nothing (after checking that it was
trained with these flags). Exit status: 0 done, 2 bad input, 1 diverged (or another rank died),
75 stopped by SIGUSR1, SIGTERM or Ctrl-C (rerun to resume), 74 a write failed. Every flag, its default and its meaning:
``--help``.
"""

from __future__ import annotations

import signal

# First of all, with nothing but signal: a SLURM warning (or Ctrl-C) during start-up still means "stop"
# (toolbox/stop.py). StopFlag takes over what these record while the modules load.
early_signals: list[int] = []
for stop_signal in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
    signal.signal(stop_signal, lambda signum, frame: early_signals.append(signum))


from toolbox.stop import StopFlag  # noqa: E402

StopFlag().install(caught=early_signals)  # read after the switch: no signal falls between

import contextlib  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

from toolbox.cli import exit_process, main_guard, quiet_on_closed_pipe, wait_passively  # noqa: E402
from toolbox.config import Config, parse_config  # noqa: E402
from toolbox.rundir import RunDir  # noqa: E402  (no torch)

wait_passively()  # before torch loads


def claimed_early(config: Config) -> contextlib.AbstractContextManager:
    """The folder that --experiment_name names (as runner.py's jobs do), locked before torch loads:
    a clean during the seconds of start-up cannot take it. A name derived from the flags needs the
    methods (and torch); train() locks that one as soon as it is known. Under torchrun rank 0 alone
    holds the lock (RANK, which torchrun sets, is read without torch)."""
    if config.experiment_name is None or config.evaluate or os.environ.get("RANK", "0") != "0":
        return contextlib.nullcontext()
    return RunDir(Path(config.experiments_dir) / config.experiment_name).claimed(config.experiment_name)


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv, prog="tucker_distillation.py")

    def run() -> None:
        with claimed_early(config):
            from toolbox.training import (  # torch loads only now: --help and bad flags answer at once
                evaluate_checkpoint,
                train,
            )

            if config.evaluate:
                result = evaluate_checkpoint(config)
                print(
                    f"{config.evaluate}: test accuracy {result['test_acc']:.2f}%, test loss {result['test_loss']:.4f} "
                    f"({config.student} on {config.dataset})"
                )
                return
            train(config)  # it prints (and logs in train.log) each epoch and the best accuracy

    return main_guard(run)


if __name__ == "__main__":
    status = quiet_on_closed_pipe(main)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run has said how it ended: a late Ctrl-C changes nothing
    exit_process(status)
