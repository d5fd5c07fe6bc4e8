"""Training one run: the face of ``toolbox/training/``.

- ``run``: ``train(config)``, open -> fit -> finish, and ``evaluate_checkpoint``;
- ``trainer``: the ``Trainer`` (models, optimiser, history) and its step, epoch and ``fit``;
- ``resume``: last.pt (what it holds, reading and restoring it, the position within an epoch) and
  what a rerun finds;
- ``prepare``: the data set, the schedule, autocast, determinism, the teacher's checks;
- ``optimizers`` (SGD, DOT), ``speed`` (torch.compile, fused kernels), ``curves`` (TensorBoard),
  ``console`` (the lines a run prints, and its train.log).
"""

from toolbox.training.run import evaluate_checkpoint, train
from toolbox.training.trainer import Learner, Trainer

__all__ = ["Learner", "Trainer", "evaluate_checkpoint", "train"]
