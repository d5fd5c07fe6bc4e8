#!/usr/bin/env python
"""Submit the study's grid of runs to a batch scheduler; run it again later to fill the gaps.

    python runner.py                       # the whole study (17 configurations x 3 runs) on SLURM
    python runner.py --dry_run             # what it would submit (--scripts: with the rendered job scripts)
    python runner.py --dataset digits --teacher ResNetBaby --student ResNetBaby --epochs 2 -- --max_batches 3
                                           # the same 51 runs, tiny (and their teacher: 52 jobs)
    python runner.py --scheduler local --parallel 2      # no cluster: the grid on this machine
    python runner.py --status              # the grid as a table (also: --cancel, --clean)
    python runner.py --benchmark --dry_run # the CRD/DKD CIFAR-100 benchmark: 7 pairs x 24 configurations x 3 seeds
    python runner.py --benchmark imagenet --teacher_dir DIR --dry_run   # ImageNet: 2 pairs x 13 configurations x 1 seed

Every run has its own folder experiments/<name>/, named as tucker_distillation.py names it. A run
is skipped when it has finished (metrics.json) or when its job, recorded in job.json, is queued or
running; every other run is submitted, and resumes from its last.pt if it has one. A student
whose teacher is not trained yet waits for the teacher's job, submitted first when needed.
Cluster settings come from flags or TD_* environment variables (listed by --help). Exit status:
0 done, 1 a run could not be submitted (or, with --scheduler local, failed) or the scheduler could not
be asked, 2 bad input, 74 a write failed (a full disk, a read-only folder): no run folder is left
half-made, so fix it and run runner.py again; 75 stopped by Ctrl-C, SIGTERM or SIGUSR1 (between two
submissions: every job submitted has its job.json; with --scheduler local the signal reaches the
running jobs, whose runs stop after their current step): runner.py run again goes on.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

from toolbox.cli import IO_ERROR, os_error_line, quiet_on_closed_pipe
from toolbox.errors import Interrupted, UsageError
from toolbox.sweep import cancel_jobs, clean, exclusive, grid_table, status_table, submit_grid, teacher_report
from toolbox.sweep.command import (
    DISTILLATIONS,
    ask,
    check_folder,
    check_ranks,
    check_teachers,
    grid_axes,
    job_settings,
    make_scheduler,
    parse_args,
    prepare_data,
    record_grid,
    teacher_files,
)
from toolbox.sweep.grid import build_grid
from toolbox.sweep.scheduler import Scheduler, SchedulerError

__all__ = ["DISTILLATIONS", "clean", "grid_axes", "main", "parse_args"]


def main(argv: Optional[list[str]] = None, scheduler: Optional[Scheduler] = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else argv
        args, extra = parse_args(argv, __doc__)
        scheduler = scheduler or make_scheduler(args)
        if not args.experiments_dir:
            raise UsageError("--experiments_dir is empty: name the folder of the runs, e.g. experiments")
        experiments_dir = Path(args.experiments_dir).absolute()
        check_folder(experiments_dir, "--experiments_dir")
        if args.cancel:
            cancel_jobs(experiments_dir, scheduler)
            return 0
        if args.clean:
            with exclusive(experiments_dir):
                clean(experiments_dir, scheduler, (lambda _: True) if args.yes else ask)
            return 0
        axes = grid_axes(args)
        check_teachers(args)
        runs = build_grid(
            axes,
            extra,
            experiments_dir,
            args.study,
            teacher_files(args.teacher_dir, axes),
            leave_out_refused=bool(args.benchmark),
        )
        if args.status:
            print(status_table(runs, scheduler))
            return 0
        settings = job_settings(args)
        check_ranks(runs, settings, scheduler)
        if args.study and not args.dry_run:  # what --study NAME alone names from now on
            record_grid(experiments_dir / args.study, argv)
        if args.dry_run:
            print(grid_table(runs, axes))
        else:  # data before jobs: compute nodes may have no internet, and many jobs start at once
            prepare_data(runs, settings.workdir)
        for line in teacher_report(runs):  # which teacher the students distil from, and whether it is a weak one
            print(line, flush=True)
        if args.prepare_data:
            print("the grid's data sets are ready")
            return 0
        with contextlib.nullcontext() if args.dry_run else exclusive(experiments_dir), scheduler.stopping_on_signals():
            summary = submit_grid(
                runs,
                scheduler,
                settings,
                args.max_queued,
                args.dry_run,
                out=lambda line: print(line, flush=True),
                scripts=args.scripts,
            )
        print(summary.report(args.max_queued, args.dry_run))
        if scheduler.stopped_by:
            raise Interrupted(f"stopped by {scheduler.stopped_by.name}: {scheduler.stop_outcome}")
        return 1 if summary.failed or summary.crashed else Interrupted.exit_code if summary.stopped else 0
    except (UsageError, Interrupted) as error:  # Interrupted: a stop signal while waiting for a data-set lock
        print(f"runner.py: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C before the jobs were submitted (preparing the data, reading the folders)
        print("runner.py: error: stopped by SIGINT before submitting; run runner.py again", file=sys.stderr)
        return Interrupted.exit_code
    except SchedulerError as error:
        print(f"runner.py: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # not a failed write of ours: quiet_on_closed_pipe ends the script
        raise
    except OSError as error:  # a write failed: a full disk, a folder that became read-only, ...
        print(
            f"runner.py: error: {os_error_line(error)}; fix that (free space, permissions) and run runner.py again",
            file=sys.stderr,
        )
        return IO_ERROR


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
