"""``--distillation ab``: "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons" (Heo et al., AAAI 2019), as RepDistiller computes it, with its initialisation phase.

The initialisation (``toolbox.methods.phases``, ``--init_epochs``) trains the student's stem and
stages (RepDistiller's ``get_feat_modules()``) and the connectors on the activation-boundary loss
between the pre-activation maps; the main phase trains the student with the cross-entropy alone
(``-b 1`` weighs a loss that RepDistiller sets to 0 there), the connectors frozen.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import Tensor, nn

from toolbox.config import Config
from toolbox.methods.base import Distiller, Setup, Step, stages
from toolbox.methods.bases import INIT, InitialisedDistiller, StageWiseDistiller, conv_regressor
from toolbox.nets.common import feature_modules

AB_MARGIN = 1.0  # RepDistiller's ABLoss(margin=1.0)


def ab_connector(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module:
    """RepDistiller's ``Connector``: nothing where width and height agree, else ``ConvReg`` without
    its ReLU (the convolution its size ratio calls for, then BatchNorm)."""
    if tuple(student_shape[:2]) == tuple(teacher_shape[:2]):
        return nn.Identity()
    return nn.Sequential(conv_regressor(student_shape, teacher_shape), nn.BatchNorm2d(teacher_shape[0]))


def activation_boundary(source: Tensor, target: Tensor, margin: float = AB_MARGIN) -> Tensor:
    """RepDistiller's ``criterion_alternative_l2``: a squared hinge pushing the student's
    pre-activation below -margin where the teacher's neuron is off and above +margin where it is
    on; summed."""
    loss = (source + margin) ** 2 * ((source > -margin) & (target <= 0)) + (source - margin) ** 2 * (
        (source <= margin) & (target > 0)
    )
    return loss.abs().sum()


class ABDistiller(InitialisedDistiller, StageWiseDistiller):
    """AB on every stage's pre-activation map: stage i of n weighs 2^(i-n), each stage's sum is
    divided by the batch size and scaled by 3/1000, as RepDistiller's ``ABLoss``. Trained: in
    ``init`` the connectors and the student but its head; afterwards the student."""

    student_preact = teacher_preact = True
    main_loss = False
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 1.0}  # -b 1, on a main-phase loss of 0
    flags = ("init_epochs",)

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        pairs = zip(stages(setup.student_shapes), stages(setup.teacher_shapes))
        self.connectors = nn.ModuleList(ab_connector(s, t) for s, t in pairs)

    def trained_modules(self, student: nn.Module, phase: str | None) -> list[nn.Module]:
        return [*feature_modules(student), self.connectors] if phase == INIT else [student]

    def compare(self, teacher: list[Tensor], student: list[Tensor], step: Step) -> Tensor:
        count, batch = len(student), len(student[0])
        total = student[0].new_zeros(())
        for index, (s, t, connector) in enumerate(zip(student, teacher, self.connectors)):
            total = total + 2.0 ** (index - count + 1) * activation_boundary(connector(s), t) / batch / 1000 * 3
        return total
