"""Training phases: stretches of a run that train other parameters with their own optimiser.

Most methods train in one phase, the run's ``--epochs``. RepDistiller trains AB, FT and FSP in two
(its ``train_student.py`` and ``helper/pretrain.py``): an initialisation phase of ``--init_epochs``
(30) with the distillation loss alone, training only some modules, then the usual training. A
distiller declares its preliminary phases (``Distiller.phases``) and which modules each phase
trains (``Distiller.trained_modules``); the training loop knows no method by name. The choices,
as RepDistiller makes them:

* Preliminary phases come *before* the run's ``--epochs``, which count the main phase alone (30 +
  240 epochs for ``--recipe crd``): the learning-rate milestones, ``metrics.json`` and the curves
  mean what they mean for every other method.
* Each phase has its own SGD optimiser (the run's momentum and weight decay) over the parameters
  of the modules it trains, at the phase's constant learning rate; the main phase starts with a
  fresh optimiser and the run's schedule. A module a phase does not train runs in eval mode with
  frozen parameters, so the modules of the initialisation (AB's connectors, FT's paraphraser) are
  not trained in the main phase, where they run in eval mode, as RepDistiller leaves them out of
  its optimiser and sets them to ``eval()``.
* No test epoch is run in a preliminary phase (RepDistiller runs none there): its epochs are
  recorded in ``last.pt`` and ``metrics.json`` as ``phase_history``, one training record each.
* Preliminary epoch ``i`` (from 1, over all preliminary phases) draws the data order of epoch
  ``-i``, so the main epochs see the same batches as any other method's run with the same seed.

``last.pt`` holds the optimiser and scheduler of the phase the run is in and its
``phase_history``, whose length says where the run is: a run stopped in a phase resumes in it with
its optimiser's state, within an epoch too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from torch import nn

PHASE_RECORD = ("train_hard_loss", "train_soft_loss", "train_acc")
"""What ``phase_history`` records of each preliminary epoch (``toolbox.training.resume.Position.means``)."""


@dataclass(frozen=True)
class Phase:
    """A preliminary phase: its name (for logs), epochs, constant learning rate and loss weights
    (``ce_weight * cross-entropy + beta * soft loss``; RepDistiller's initialisation trains the
    distillation loss alone)."""

    name: str
    epochs: int
    lr: float
    ce_weight: float = 0.0
    beta: float = 1.0


def locate(phases: Iterable[Phase], done: int) -> Optional[tuple[Phase, int]]:
    """The preliminary phase of the epoch after ``done`` preliminary epochs and that epoch's number
    within it (from 1); None once every preliminary phase is done (the main phase)."""
    for phase in phases:
        if done < phase.epochs:
            return phase, done + 1
        done -= phase.epochs
    return None


def train_only(every: Iterable[nn.Module], trained: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Freeze every parameter of ``every`` but those of the ``trained`` modules (within them);
    the trainable parameters, once each, in the modules' order."""
    trained = list(trained)
    for module in every:
        module.requires_grad_(False)
    parameters: dict[int, nn.Parameter] = {}
    for module in trained:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
            parameters.setdefault(id(parameter), parameter)
    return list(parameters.values())


def set_modes(every: Iterable[nn.Module], trained: Iterable[nn.Module]) -> None:
    """The ``trained`` modules in training mode, everything else of ``every`` in eval mode."""
    for module in every:
        module.eval()
    for module in trained:
        module.train()
