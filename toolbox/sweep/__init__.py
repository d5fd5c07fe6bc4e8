"""Sweeps: a grid of runs from any training flags, submitted, listed, cancelled and cleaned.

``runner.py`` and ``test_noise.py`` are command lines over this package. A grid is a set of axes
(``beta=50,125,250``) crossed with each other; each point is one run folder, named by the training
script's own rule (``toolbox.rundir``). This package is the face they and the tests import
(``from toolbox import sweep``); each concern lives in its own module:

- ``grid``: axes -> the runs of the grid and the teacher runs they need, as a table;
- ``studies``: the study's and the benchmarks' grids;
- ``file``: runner.py's ``--config`` file (flags and a ``grid:`` section);
- ``folders``: a run folder's state, which folders clean may delete, the run folders under an
  experiments folder, the runner's lock;
- ``submit``: job scripts from ``run.job``, and the ``Submitter`` that skips, packs and submits;
- ``manage``: the status table, cancelling the grid's jobs, cleaning its unfinished runs;
- ``scheduler`` (the interface, ``run.job`` rendering), ``slurm``, ``pbs``, ``local``: the schedulers.

A name is looked up in the module that defines it: to replace one in a test, patch it there
(``toolbox.sweep.submit.atomic_write``), not here.
"""

from toolbox.rundir import JOB_FILE, SCRIPT_FILE
from toolbox.sweep.folders import exclusive, run_folders, run_state
from toolbox.sweep.grid import (
    PAIR,
    SWITCHES,
    Axes,
    Run,
    as_flags,
    attach_teacher,
    axis_flags,
    axis_value,
    build_grid,
    grid_points,
    grid_table,
    make_run,
    parse_axis,
    refused,
    split_pair,
    teacher_report,
    teachers,
    training_config,
)
from toolbox.sweep.manage import cancel_jobs, clean, status_table
from toolbox.sweep.submit import (
    REPO,
    TEMPLATE,
    JobSettings,
    QueueFull,
    Submitter,
    Summary,
    job_name,
    remove_created,
    render_job,
    submit_grid,
)
