#!/usr/bin/env python
"""The share of a distillation step that the ``tucker`` loss takes at ImageNet shapes.

    python bench/bench_imagenet_share.py [--quick] [--json FILE] [--device cpu|cuda] [--repeats N]
                                         [--batch_size 256] [--step_batch_size 256]

On ImageNet the distilled maps are wider than CIFAR's (layer3 of ``resnet34`` is 256x14x14, of
``resnet50`` 1024x14x14, where the channel Gram matrix of the decomposition is 1024x1024), and the
networks deeper, so the share measured on CIFAR does not carry over. Two tables:

* the soft loss and its backward pass alone, ``tucker`` (ranks ``BATCH_SIZE,x0.5,x1,x1``, the
  ImageNet benchmark's) against ``featuremap``, on random maps of layer3's shapes at
  ``--batch_size``, for resnet34->resnet18 and resnet50->MobileNetV1 (the student's map through
  the connector, as in training);
* a whole resnet34->resnet18 training step at ``--step_batch_size`` on random 224x224 images, as
  ``Trainer.step`` computes it (teacher forward without gradients, student forward and backward,
  cross-entropy plus the weighted soft loss, SGD), for ``featuremap`` and ``tucker``, and the
  share of the ``tucker`` step that its loss and backward take at that batch.

The models are randomly initialised (the loss's cost does not depend on the weights' values).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch
import torch.nn.functional as F
from common import Column, LoadMonitor, add_common_flags, finish, interleaved, median, setup

from toolbox.config import parse_config
from toolbox.distillation import Distiller, Setup, Step, build_distiller, with_defaults
from toolbox.models import build_model, stage_shapes

METHODS = ("featuremap", "tucker")
PAIRS = (("resnet34", "resnet18"), ("resnet50", "MobileNetV1"))
STEP_PAIR = PAIRS[0]
RANKS = "BATCH_SIZE,x0.5,x1,x1"
IMAGE = 224
CLASSES = 1000
DEFAULTS = {"batch_size": 256, "step_batch_size": 256}
QUICK = {"batch_size": 4, "step_batch_size": 2}

LOSS_COLUMNS = [
    Column("pair", "teacher -> student"),
    Column("maps", "teacher map"),
    Column("batch", "batch"),
    Column("featuremap_ms", "featuremap ms", "{:.1f}"),
    Column("tucker_ms", "tucker ms", "{:.1f}"),
    Column("ratio", "tucker / featuremap", "{:.1f}x"),
]
STEP_COLUMNS = [
    Column("pair", "teacher -> student"),
    Column("batch", "batch"),
    Column("featuremap_step_ms", "featuremap step ms", "{:.0f}"),
    Column("tucker_step_ms", "tucker step ms", "{:.0f}"),
    Column("tucker_loss_ms", "tucker loss+backward ms", "{:.1f}"),
    Column("tucker_share", "share of the tucker step", "{:.1%}"),
]


def distiller(method: str, teacher: str, student: str, device: torch.device) -> Distiller:
    """The distiller training builds for ``--recipe imagenet`` on this pair (layer3, the benchmark's ranks)."""
    config = with_defaults(
        parse_config(
            [
                "--dataset",
                "imagenet",
                "--recipe",
                "imagenet",
                "--distillation",
                method,
                "--teacher",
                teacher,
                "--student",
                student,
                "--ranks",
                RANKS,
            ]
        )
    )
    shapes = [(*stage_shapes(arch, image_size=IMAGE), (CLASSES,), (CLASSES,)) for arch in (teacher, student)]
    return build_distiller(config, Setup(shapes[0], shapes[1], torch.zeros(0, dtype=torch.long))).to(device)


def loss_and_backward(method: str, teacher: str, student: str, batch: int, device: torch.device) -> Callable[[], None]:
    """One soft loss and its backward pass on random maps of the distilled stage's shapes."""
    module = distiller(method, teacher, student, device)
    layer = module.layer
    t_map = torch.randn(batch, *module.teacher_shape, device=device).contiguous(memory_format=torch.channels_last)
    s_map = torch.randn(batch, *module.student_shape, device=device).contiguous(memory_format=torch.channels_last)
    s_map.requires_grad_(True)
    outputs = [None] * (layer + 1)
    step = Step(torch.zeros(batch, dtype=torch.long, device=device), torch.arange(batch, device=device), 1)

    def run() -> None:
        module.soft_loss([*outputs[:layer], t_map], [*outputs[:layer], s_map], step).backward()
        s_map.grad = None

    return run


def training_step(method: str, batch: int, device: torch.device) -> Callable[[], None]:
    """``Trainer.step`` for ``STEP_PAIR``, float32, channels-last, on one random batch."""
    teacher_arch, student_arch = STEP_PAIR
    module = distiller(method, teacher_arch, student_arch, device)
    teacher = build_model(teacher_arch, CLASSES).to(device, memory_format=torch.channels_last).eval()
    student = build_model(student_arch, CLASSES).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD([*student.parameters(), *module.parameters()], lr=0.2, momentum=0.9, weight_decay=1e-4)
    images = torch.randn(batch, 3, IMAGE, IMAGE, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, CLASSES, (batch,), device=device)
    step = Step(labels, torch.arange(batch, device=device), 1)

    def run() -> None:
        student_out = student(images)
        with torch.no_grad():
            teacher_out = teacher(images)
        loss = F.cross_entropy(student_out[-1], labels) + module.soft_loss(
            teacher_out, student_out, step
        )  # weights cost nothing
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return run


def measure_losses(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for teacher, student in PAIRS:
        samples = interleaved(
            {m: loss_and_backward(m, teacher, student, args.batch_size, device) for m in METHODS}, device, args.repeats
        )
        times = {m: median(samples[m]) * 1e3 for m in METHODS}
        shape = stage_shapes(teacher, image_size=IMAGE)[3]
        rows.append(
            {
                "pair": f"{teacher} -> {student}",
                "maps": "x".join(map(str, shape)),
                "batch": args.batch_size,
                "featuremap_ms": times["featuremap"],
                "tucker_ms": times["tucker"],
                "ratio": times["tucker"] / times["featuremap"],
            }
        )
    return rows


def measure_step(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    batch = args.step_batch_size
    candidates = {f"{m}_step": training_step(m, batch, device) for m in METHODS}
    candidates["tucker_loss"] = loss_and_backward("tucker", *STEP_PAIR, batch, device)
    times = {name: median(samples) * 1e3 for name, samples in interleaved(candidates, device, args.repeats).items()}
    return [
        {
            "pair": " -> ".join(STEP_PAIR),
            "batch": batch,
            "featuremap_step_ms": times["featuremap_step"],
            "tucker_step_ms": times["tucker_step"],
            "tucker_loss_ms": times["tucker_loss"],
            "tucker_share": times["tucker_loss"] / times["tucker_step"],
        }
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(parser)
    parser.add_argument("--batch_size", type=int, help=f"maps per loss (default {DEFAULTS['batch_size']})")
    parser.add_argument(
        "--step_batch_size", type=int, help=f"images per whole training step (default {DEFAULTS['step_batch_size']})"
    )
    args = parser.parse_args()
    device = setup(args, DEFAULTS, QUICK)
    with LoadMonitor() as load:
        losses = measure_losses(args, device)
        steps = measure_step(args, device)
    share = steps[0]["tucker_share"]
    headline = (
        f"tucker's loss and backward take {share:.1%} of a {' -> '.join(STEP_PAIR)} step at batch "
        f"{args.step_batch_size} on {device.type}; on resnet50's 1024-channel maps it costs "
        f"{losses[1]['ratio']:.1f}x featuremap's at batch {args.batch_size}"
    )
    finish(
        args,
        device,
        {
            f"soft loss + backward, median ms (batch {args.batch_size})": (losses, LOSS_COLUMNS),
            f"whole {' -> '.join(STEP_PAIR)} training step, median ms (batch {args.step_batch_size})": (
                steps,
                STEP_COLUMNS,
            ),
        },
        {
            "ranks": RANKS,
            "batch_size": args.batch_size,
            "step_batch_size": args.step_batch_size,
            "repeats": args.repeats,
        },
        load,
        headline,
    )


if __name__ == "__main__":
    main()
