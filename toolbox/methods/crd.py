"""``--distillation crd``: Contrastive Representation Distillation (Tian, Krishnan and Isola, ICLR 2020), as
RepDistiller computes it.

The pooled features of both networks are embedded (a linear map, then L2 normalisation) into a
``--crd_dim`` space. Each training sample has a row in two memory banks, one of past student
embeddings and one of past teacher embeddings. For every sample of the batch the contrast set is
the sample itself (the positive, RepDistiller's 'exact' mode) and ``--crd_negatives`` samples of
other classes (drawn with replacement on ImageNet and Tiny ImageNet, as mdistiller's samplers for
them draw; elsewhere only where a class leaves fewer, as RepDistiller's CIFAR-100 sampler); the
student's embedding is scored against the teacher's memory at the contrast set and the teacher's
embedding against the student's memory, ``exp(m . v / T) / Z``, and each side's
scores enter the NCE loss with the uniform noise distribution ``Pn = 1/N`` (RepDistiller's
``ContrastLoss``, Eq. 18 of the paper). The constants ``Z`` are estimated once, on the first batch
(the mean score times N), and kept. After scoring, each memory moves towards the batch's
embeddings at the batch's rows (``momentum * m + (1 - momentum) * v``, renormalised).

Both embeddings are trained (RepDistiller and mdistiller give ``embed_t`` to the optimiser too);
the memory banks and ``Z`` are buffers, so a checkpoint holds them and a resumed run continues
with the same banks. Negatives are drawn on the training device with torch's global generator.

Across ranks (``Setup.world``) every rank keeps the whole banks: the batch's indices and
embeddings are all-gathered, every rank draws the contrast sets of the whole global batch (the same
draws as one process, from generators seeded alike) and keeps its own rows, Z is estimated from the
global batch's scores, and every rank applies the global batch's update. The banks then stay equal
on all ranks and to a one-process run's with the same global batch, without broadcasting them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from toolbox.config import Config
from toolbox.errors import UsageError
from toolbox.methods.base import Distiller, Setup, Step

EPS = 1e-7  # RepDistiller's ContrastLoss
ALWAYS_REPLACED = frozenset({"imagenet", "tiny-imagenet"})
"""The data sets whose negatives mdistiller draws with replacement whatever K (its ImageNetInstanceSample
and Tiny ImageNet's sampler: ``np.random.choice(..., replace=True)``)."""


def nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """RepDistiller's ``ContrastLoss``: column 0 of ``scores`` (B, K+1) is the positive, the others
    are the K negatives; noise distribution ``Pn = 1/n_data``; summed over the negatives and
    averaged over the batch.

    ``log(P / (P + K Pn + eps))`` and ``log(K Pn / (P + K Pn + eps))`` are written as
    ``-log1p((K Pn + eps) / P)`` and ``-log1p((P + eps) / (K Pn))``: the same values, but a
    negative's ratio lies within ~1e-4 of 1, where float32 rounding of the ratio before the log
    biases the sum over B x K terms by ~1e-5 of the loss (RepDistiller's float32 figure)."""
    batch, negatives = scores.shape[0], scores.shape[1] - 1
    noise = negatives / n_data  # K * Pn
    positive, negative = scores[:, 0], scores[:, 1:]
    log_d1 = -torch.log1p((noise + EPS) / positive)
    log_d0 = -torch.log1p((negative + EPS) / noise)
    return -(log_d1.sum() + log_d0.sum()) / batch


def renormalised_update(memory: Tensor, embeddings: Tensor, momentum: float) -> Tensor:
    """The memory rows of the batch moved towards its embeddings and set back to unit length."""
    rows = memory * momentum + embeddings * (1 - momentum)
    return rows / rows.pow(2).sum(-1, keepdim=True).pow(0.5)


class CRDDistiller(Distiller):
    """CRD on the pooled features (outputs[-2]); the soft loss is the unweighted ``loss_s + loss_t``.

    Trained: ``embed_s`` (student dim -> crd_dim) and ``embed_t`` (teacher dim -> crd_dim).
    Buffers (checkpointed): ``memory_s`` and ``memory_t`` (N x crd_dim, RepDistiller's
    ``memory_v1``/``memory_v2``), ``z`` = [Z_s, Z_t] (-1 until the first batch sets them).
    """

    reads_maps = False
    defaults: dict[str, Any] = {**Distiller.defaults, "beta": 0.8}  # RepDistiller's -a 0 -b 0.8, CE weight 1
    flags = ("beta", "crd_dim", "crd_negatives", "crd_temperature", "crd_momentum")
    tag_flags = ()
    recipes = {"imagenet": {"batch_size": 256, "lr": 0.1}}  # mdistiller: SOLVER.BATCH_SIZE, SOLVER.LR (FEAT.DIM 128)

    def __init__(self, config: Config, setup: Setup) -> None:
        super().__init__(config, setup)
        labels = setup.train_labels.long().flatten()
        self.n_data = len(labels)
        if self.n_data == 0:
            raise UsageError("crd needs the training set's labels (Setup.train_labels) to draw its negatives")
        self.negatives = config.crd_negatives
        self.temperature = config.crd_temperature
        self.momentum = config.crd_momentum
        self.world = setup.world
        dim = config.crd_dim
        self.embed_s = nn.Linear(math.prod(setup.student_shapes[-2]), dim)
        self.embed_t = nn.Linear(math.prod(setup.teacher_shapes[-2]), dim)
        stdv = 1.0 / math.sqrt(dim / 3)
        # on the CPU with its generator (as RepDistiller builds them), so the banks do not depend on the device
        self.register_buffer("memory_s", torch.rand(self.n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(self.n_data, dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # [Z_s, Z_t]; negative: not estimated yet

        # The sampler's tables, derived from the labels (not checkpointed).
        counts = torch.bincount(labels.cpu())
        others = self.n_data - counts  # per class: how many samples of other classes there are
        present = counts > 0
        if bool((others[present] == 0).any()):
            raise UsageError("crd draws its negatives from other classes, but the training set has a single class")
        # At most the largest number of samples outside a class, or the default (RepDistiller's nce_k,
        # drawn with replacement where a class has fewer others): more only repeats samples, at B x K memory a step.
        largest = max(int(others[present].max()), Config.crd_negatives)
        if self.negatives > largest:
            raise UsageError(
                f"--crd_negatives must be at most {largest} on this training set of {self.n_data} samples "
                f"(each sample's negatives come from the other classes; got {self.negatives})"
            )
        # np.random.choice(..., replace=K > len(cls_negative)) per class; always on ImageNet (mdistiller's)
        replace = (self.negatives > others) | (config.dataset in ALWAYS_REPLACED)
        self.mode = (
            "replace" if bool(replace[present].all()) else "exact" if not bool(replace[present].any()) else "mixed"
        )
        device = labels.device
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("class_replace", replace.to(device), persistent=False)
        self.register_buffer("class_others", others.to(device), persistent=False)
        self.register_buffer("class_counts", counts.to(device), persistent=False)
        self.register_buffer("class_starts", (counts.cumsum(0) - counts).to(device), persistent=False)
        self.register_buffer("by_class", torch.argsort(labels, stable=True), persistent=False)

    # --- the contrast set ------------------------------------------------------------------------
    def draw(self, indices: Tensor) -> Tensor:
        """The contrast indices (B, K+1): each sample itself, then K samples of other classes, drawn
        uniformly without replacement where the sample's class leaves at least K others, with
        replacement otherwise (RepDistiller's CIFAR100InstanceSample, mode 'exact') and on the
        ``ALWAYS_REPLACED`` data sets (mdistiller's ImageNetInstanceSample)."""
        indices = indices.to(self.labels.device).long()
        own = self.labels[indices]
        batch, k = len(indices), self.negatives
        if self.mode != "replace":
            # A uniform K-subset of the allowed samples: the K largest of i.i.d. uniform keys
            # (float64: ties among N keys are negligible), same-class samples excluded.
            keys = torch.rand(batch, self.n_data, dtype=torch.float64, device=own.device)
            keys.masked_fill_(self.labels[None, :] == own[:, None], -1.0)
            exact = keys.topk(k, dim=1, sorted=False).indices
        if self.mode != "exact":
            # Uniform positions among the class's others, read in the label-sorted order with the
            # class's own block skipped.
            others = self.class_others[own][:, None]
            position = (torch.rand(batch, k, dtype=torch.float64, device=own.device) * others).long()
            position = torch.minimum(position, others - 1)
            position = position + (position >= self.class_starts[own][:, None]) * self.class_counts[own][:, None]
            replaced = self.by_class[position]
        if self.mode == "exact":
            negatives = exact
        elif self.mode == "replace":
            negatives = replaced
        else:
            negatives = torch.where(self.class_replace[own][:, None], replaced, exact)
        return torch.cat([indices[:, None], negatives], dim=1)

    # --- the loss ----------------------------------------------------------------------------------
    def contrast_loss(self, student_feat: Tensor, teacher_feat: Tensor, indices: Tensor, contrast: Tensor) -> Tensor:
        """``loss_s + loss_t`` for this rank's samples ``indices`` with contrast set ``contrast``
        (B, K+1), column 0 the positives; sets Z on the first call (from the global batch) and
        updates both memories with every rank's batch."""
        with torch.autocast(student_feat.device.type, enabled=False):
            v_s = F.normalize(self.embed_s(student_feat.float().flatten(1)), dim=1)
            v_t = F.normalize(self.embed_t(teacher_feat.detach().float().flatten(1)), dim=1)
            # Each embedding against the other network's memory at its contrast set: memory[idx] . v
            # as one (B, N) product and a gather (the same numbers as RepDistiller's bmm over
            # gathered rows, without copying B x (K+1) memory rows).
            out_s = torch.exp((v_s @ self.memory_t.T).gather(1, contrast) / self.temperature)
            out_t = torch.exp((v_t @ self.memory_s.T).gather(1, contrast) / self.temperature)
            with torch.no_grad():
                sums = self.world.all_reduce_sum(torch.stack([out_s.sum(), out_t.sum()]))
                scores = self.world.all_reduce_sum(torch.tensor(float(out_s.numel()), device=sums.device))
                z = torch.where(
                    self.z < 0, sums / scores * self.n_data, self.z
                )  # set once, on the first batch, then kept
                self.z.copy_(z)
                everyone = torch.cat(self.world.all_gather(indices))
                v_s_all, v_t_all = (torch.cat(self.world.all_gather(v.detach())) for v in (v_s, v_t))
                # Out of place: the products above keep the old banks for their backward pass.
                rows_s = renormalised_update(self.memory_s[everyone], v_s_all, self.momentum)
                rows_t = renormalised_update(self.memory_t[everyone], v_t_all, self.momentum)
                self.memory_s = self.memory_s.index_copy(0, everyone, rows_s)
                self.memory_t = self.memory_t.index_copy(0, everyone, rows_t)
            return nce_loss(out_s / z[0], self.n_data) + nce_loss(out_t / z[1], self.n_data)

    def soft_loss(self, teacher_out: list[Tensor], student_out: list[Tensor], step: Step) -> Tensor:
        indices = step.indices.to(self.labels.device).long()
        parts = self.world.all_gather(indices)
        first = sum(len(part) for part in parts[: self.world.rank])
        contrast = self.draw(torch.cat(parts))[
            first : first + len(indices)
        ]  # the global batch's draws, this rank's rows
        return self.contrast_loss(student_out[-2], teacher_out[-2], indices, contrast)
