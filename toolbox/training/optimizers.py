"""The optimisers a run trains with (``--optimizer``), behind one call: ``update(task, distillation,
weight)`` takes the step's cross-entropy part and distillation part of the loss (``weight``
scales both, ``World.loss_weight``), computes the gradients and moves the parameters.

``sgd`` is torch's SGD on the gradient of the whole loss. ``dot`` is mdistiller's
Distillation-Oriented Trainer (Zhao et al., ICCV 2023; ``mdistiller/engine/dot.py``): the gradients
of the two parts are computed apart (two backward passes through one forward pass) and each gets
its own momentum buffer, ``--momentum - --dot_delta`` for the cross-entropy's and
``--momentum + --dot_delta`` for the distillation loss's, where a parameter receives both; a
parameter that receives one only (the student's classifier under a feature method, a method's own
modules) keeps their mean, ``--momentum``. The loop knows neither: it hands both parts over.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from toolbox.config import Config
from toolbox.distributed import World
from toolbox.errors import UsageError
from toolbox.training.speed import optimizer_kernels


class SGD(torch.optim.SGD):
    """torch's SGD, one backward pass through the whole loss."""

    def update(self, task: Tensor, distillation: Tensor, weight: float = 1.0) -> None:
        self.zero_grad(set_to_none=True)
        ((task + distillation) * weight).backward()
        self.step()


class DOT(torch.optim.Optimizer):
    """mdistiller's ``DistillationOrientedTrainer`` (dampening 0), step for step: per parameter,
    the cross-entropy's gradient plus weight decay updates ``momentum_buffer``, then the distillation
    loss's gradient updates ``momentum_kd_buffer`` (with weight decay only where the parameter has no
    cross-entropy gradient to carry it), and each buffer moves the parameter by ``-lr`` times itself.
    A buffer starts as its first gradient (mdistiller's clone). Its buffers are in ``state`` and so
    in every checkpoint."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float, delta: float, weight_decay: float) -> None:
        super().__init__(
            params,
            {
                "lr": lr,
                "task_momentum": momentum - delta,
                "kd_momentum": momentum + delta,
                "weight_decay": weight_decay,
            },
        )

    def update(self, task: Tensor, distillation: Tensor, weight: float = 1.0) -> None:
        self.zero_grad(set_to_none=True)
        (distillation * weight).backward(retain_graph=True)
        kd_grads = {
            parameter: parameter.grad
            for group in self.param_groups
            for parameter in group["params"]
            if parameter.grad is not None
        }
        self.zero_grad(set_to_none=True)
        (task * weight).backward()
        self.step(kd_grads)

    @torch.no_grad()
    def step(self, kd_grads: dict[Tensor, Tensor]) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            task_momentum, kd_momentum = group["task_momentum"], group["kd_momentum"]
            lone_momentum = (task_momentum + kd_momentum) / 2  # for a parameter that one part alone reaches
            for parameter in group["params"]:
                state, task_grad, kd_grad = self.state[parameter], parameter.grad, kd_grads.get(parameter)
                if task_grad is not None:
                    gradient = task_grad.add(parameter, alpha=decay) if decay else task_grad
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = gradient.clone()
                    else:
                        state["momentum_buffer"].mul_(task_momentum if kd_grad is not None else lone_momentum).add_(
                            gradient
                        )
                    parameter.add_(state["momentum_buffer"], alpha=-lr)
                if kd_grad is not None:
                    if "momentum_kd_buffer" not in state:
                        state["momentum_kd_buffer"] = kd_grad.clone()
                    elif task_grad is not None:
                        state["momentum_kd_buffer"].mul_(kd_momentum).add_(kd_grad)
                    else:
                        gradient = kd_grad.add(parameter, alpha=decay) if decay else kd_grad
                        state["momentum_kd_buffer"].mul_(lone_momentum).add_(gradient)
                    parameter.add_(state["momentum_kd_buffer"], alpha=-lr)


def make_optimizer(config: Config, parameters: list[Tensor], world: World) -> SGD | DOT:
    """``--optimizer``'s optimiser over ``parameters``. DOT trains in one process: its two backward
    passes per forward pass are one too many for DDP's gradient averaging."""
    if config.optimizer != "dot":
        return SGD(
            parameters,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            **optimizer_kernels(world.device),
        )
    if world.distributed:
        raise UsageError(
            "--optimizer dot trains in one process (its two backward passes per step do not fit DDP's "
            "gradient averaging); run it without torchrun, or use --optimizer sgd"
        )
    return DOT(
        parameters, lr=config.lr, momentum=config.momentum, delta=config.dot_delta, weight_decay=config.weight_decay
    )
