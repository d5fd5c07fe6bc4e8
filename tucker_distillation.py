#!/usr/bin/env python
"""Train a teacher, or distil a student from it through (Tucker-decomposed) feature maps.

    python tucker_distillation.py --distillation none --dataset digits --student ResNet20 --epochs 12
    python tucker_distillation.py --distillation tucker --ranks BATCH_SIZE,16,8,8 --dataset digits \
        --teacher ResNet20 --student ResNetBaby --epochs 12

Each run lives in ``experiments/<experiment_name>/`` (config.json, last.pt, <Arch>.pth, Loss.png,
Accuracy.png, train.log, and metrics.json once finished). Rerunning an unfinished run resumes it; rerunning a
finished one does nothing (after checking that it was trained with these flags). Exit status: 0 done,
2 bad input, 1 diverged, 75 stopped by SIGUSR1/SIGTERM (rerun to resume), 74 a write failed. Every
flag, its default and its meaning: ``--help``.
"""

from __future__ import annotations

import sys

from toolbox.stop import StopFlag

StopFlag().install()  # before the heavy imports: a SLURM warning during start-up still means "stop and requeue"

from toolbox.config import main_guard, parse_config, quiet_on_closed_pipe, wait_passively  # noqa: E402

wait_passively()  # before torch loads


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv, prog="tucker_distillation.py")
    from toolbox.training import evaluate_checkpoint, train  # torch loads only now: --help and bad flags answer at once

    def run() -> None:
        if config.evaluate:
            result = evaluate_checkpoint(config)
            print(f"{config.evaluate}: test accuracy {result['test_acc']:.2f}%, test loss {result['test_loss']:.4f} "
                  f"({config.student} on {config.dataset})")
            return
        train(config)  # it prints (and logs in train.log) each epoch and the best accuracy

    return main_guard(run)


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
