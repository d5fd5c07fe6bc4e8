"""``--distillation tucker_recomp``: the original study's reconstruction loss, full maps compared after
the teacher's Tucker factors reconstruct the teacher's map, the student's, or both (``--recomp_target``)."""

from __future__ import annotations

from torch import Tensor

from toolbox.config import Config
from toolbox.methods.base import Setup
from toolbox.methods.featuremap import normalized_distance
from toolbox.methods.tucker import TuckerDistiller
from toolbox.tucker import Factors, project, recompose


class TuckerRecompDistiller(TuckerDistiller):
    """Compare full maps after Tucker reconstruction of the teacher's, the student's (projected on
    the teacher's factors and reconstructed), or both."""

    # Reconstruction undoes the rotations of full-rank modes, so --tucker_core changes nothing here.
    flags = (*(name for name in TuckerDistiller.flags if name != "tucker_core"), "recomp_target")
    tag_flags = ("recomp_target", "ranks")

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        self.target = config.recomp_target

    def core_kind(self, config: Config) -> str:
        """The same maps either way, so the fast back end skips the full-rank rotations (less work);
        tensorly computes them regardless."""
        return "per_sample" if config.tucker_backend == "fast" else "original"

    def compare(self, teacher_map: Tensor, student_map: Tensor, core: Tensor, factors: Factors) -> Tensor:
        if self.target in ("teacher", "both"):
            teacher_map = recompose(core, factors)
        if self.target in ("student", "both"):
            student_map = recompose(project(student_map.float(), factors), factors)
        return normalized_distance(student_map, teacher_map, self.loss)
