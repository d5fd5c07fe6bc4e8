"""runner.py and toolbox/scheduler.py without a cluster: the grid, the rendered job scripts
(golden files in tests/golden/; UPDATE_GOLDEN=1 rewrites them), the skip / resubmit / teacher /
max_queued / dry-run decisions against a fake scheduler, the scheduler classes against fake
sbatch, squeue, qsub and qstat executables, and run.job itself under bash with a stand-in for the
training script."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

import pytest

import runner
from tests.conftest import age, patience
from toolbox import sweep
from toolbox.rundir import RunDir
from toolbox.sweep.local import LocalScheduler, local_gpus
from toolbox.sweep.pbs import PbsScheduler
from toolbox.sweep.scheduler import PENDING, RUNNING, Resources, Scheduler, SchedulerError
from toolbox.sweep.slurm import SlurmScheduler

GOLDEN = Path(__file__).parent / "golden"
TINY = [
    "--dataset",
    "digits",
    "--teacher",
    "ResNetBaby",
    "--student",
    "ResNetBaby",
    "--epochs",
    "2",
    "--batch_size",
    "64",
]
CHANGES = "epochs=2,batch_size=64"  # the flags of TINY that differ from their defaults name the runs
TEACHER = "digits/teacher/ResNetBaby/epochs=8,batch_size=64,lr=0.05/seed0"  # digits' teacher recipe, not TINY's
FEATUREMAP = f"digits/ResNetBaby-ResNetBaby/featuremap/{CHANGES}"

# Stands in for `python tucker_distillation.py FLAGS`: records its flags in the run folder, then
# acts as FAKE_TRAINING says: finish (write metrics.json; a student first checks that its
# teacher's weights exist), fail_teacher (exit 1 when training a teacher), wait (exit 75 on
# USR1/TERM, like the real script, after writing ready), or unprepared (write ready, then die of
# USR1/TERM, like the real script before its handler is installed).
FAKE_TRAINING = f"""#!{sys.executable}
import json, os, signal, sys, time
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})

flags = dict(zip(sys.argv[2::2], sys.argv[3::2]))
run = Path(flags["--experiments_dir"]) / flags["--experiment_name"]
run.mkdir(parents=True, exist_ok=True)
(run / "argv.json").write_text(json.dumps(sys.argv[1:]))
(run / "mps.txt").write_text(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", ""))
mode = os.environ.get("FAKE_TRAINING", "finish")
if mode == "exit":
    sys.exit(0)
teacher = flags["--distillation"] == "none"
if mode in ("wait", "unprepared"):
    def stop(signum, frame):
        (run / "signal.txt").write_text(signal.Signals(signum).name)
        sys.exit(75)
    if mode == "wait":
        signal.signal(signal.SIGUSR1, stop)
        signal.signal(signal.SIGTERM, stop)
    (run / "ready").touch()
    time.sleep(30)
    sys.exit(1)
if mode == "fail_teacher" and teacher:
    sys.exit(1)
if mode == "fail_seed1" and flags["--seed"] == "1":
    sys.exit(1)
if not teacher:
    from toolbox.config import parse_config
    from toolbox.rundir import default_teacher_checkpoint
    weights = default_teacher_checkpoint(parse_config(sys.argv[2:]))
    if not weights.exists():
        sys.exit(3)
(run / (flags["--student"] + ".pth")).touch()
(run / "metrics.json").write_text(json.dumps({{"best_test_acc": 42.0}}))
"""


class FakeSlurm(SlurmScheduler):
    """SLURM as runner.py sees it, with ``live`` playing squeue and submissions recorded."""

    def __init__(self, live: Optional[dict[str, str]] = None, refuse: tuple[str, ...] = ()) -> None:
        super().__init__("tester")
        self.live = dict(live or {})
        self.refuse = refuse  # parts of run folder paths whose submission fails
        self.submitted: list[tuple[Path, Optional[str]]] = []
        self.attempts = 0
        self.cancelled: list[str] = []

    def submit(self, script: Path, dependency: Optional[str] = None) -> str:
        self.attempts += 1
        if any(part in str(script) for part in self.refuse):
            raise SchedulerError(
                "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified"
            )
        self.submitted.append((script, dependency))
        job_id = str(100 + len(self.submitted))
        self.live[job_id] = PENDING
        return job_id

    def live_jobs(self) -> dict[str, str]:
        return dict(self.live)

    def cancel(self, ids: Iterable[str]) -> None:
        for job_id in ids:
            self.cancelled.append(job_id)
            del self.live[job_id]

    def final_states(self, ids: Iterable[str]) -> dict[str, str]:
        return {job_id: "TIMEOUT" for job_id in ids}

    def names(self) -> list[str]:
        """The submitted runs, in order, by their names under the experiments folder."""
        return [str(script.parent).split("/experiments/", 1)[1] for script, _ in self.submitted]


@pytest.fixture
def experiments(tmp_path: Path) -> Path:
    return tmp_path / "experiments"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> Callable[..., tuple[int, str, str]]:
    """Run runner.main in this process: (exit status, stdout, stderr)."""

    def run(argv: list[str], scheduler: Optional[Scheduler] = None) -> tuple[int, str, str]:
        try:
            status = runner.main(argv, scheduler)
        except SystemExit as exit:  # argparse
            status = exit.code
        out, err = capsys.readouterr()
        return status, out, err

    return run


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder first on PATH, for fake scheduler commands."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("USER", "tester")
    return folder


def fake_training(path: Path) -> Path:
    """``FAKE_TRAINING`` as an executable at ``path``, to stand in for the Python of a job script."""
    path.write_text(FAKE_TRAINING)
    path.chmod(0o755)
    return path


def kd_runs(experiments: Path, count: int) -> list[sweep.Run]:
    """``count`` seeds of a kd grid, their folders made, as a job script of several runs trains them."""
    args, extra = runner.parse_args(grid(experiments, "--distillations", "kd", "--runs", str(count)))
    runs = plan(args, extra)
    for run in runs:
        run.path.mkdir(parents=True)
    return runs


def tool(folder: Path, name: str, body: str) -> Path:
    """A fake command: a bash script."""
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return path


def plan(args, extra: list[str]) -> list[sweep.Run]:
    """The runs runner.py plans for its parsed flags."""
    return sweep.build_grid(runner.grid_axes(args), extra, Path(args.experiments_dir).absolute(), args.study)


def grid(experiments: Path, *more: str) -> list[str]:
    return [*TINY, "--experiments_dir", str(experiments), *more]


def saved_config(experiments: Path, name: str) -> dict:
    """What the training saves in config.json: the config of the run of that name in the test's
    grid (every method), or a made-up config naming the run for other names."""
    args, extra = runner.parse_args(grid(experiments, "--distillations", *runner.DISTILLATIONS))
    runs = plan(args, extra)
    configs = {run.name: run.config for run in [*runs, *sweep.teachers(runs)]}
    if name in configs:
        return {"config": dataclasses.asdict(configs[name])}
    return {"config": {**dataclasses.asdict(configs[TEACHER]), "experiment_name": name}}


def make_run(experiments: Path, name: str, *files: str, job: Optional[str] = None, best: float = 50.0) -> Path:
    """A run folder in some state: these files (a config.json as the training writes it), and a
    job.json naming ``job`` as runner.py writes it."""
    path = experiments / name
    path.mkdir(parents=True, exist_ok=True)
    for file in files:
        content = {"metrics.json": {"best_test_acc": best}, "config.json": saved_config(experiments, name)}.get(file)
        (path / file).write_text(json.dumps(content) if content else "")
    if job is not None:
        (path / "job.json").write_text(json.dumps({"run": name, "job_id": job, "scheduler": "slurm"}))
    return path


# ---------------------------------------------------------------- the grid


def test_default_grid_is_17_configurations_of_3_runs(tmp_path: Path) -> None:
    args, extra = runner.parse_args(["--experiments_dir", str(tmp_path)])
    runs = plan(args, extra)

    pair = "cifar100/ResNet112-ResNet56"
    ranks = ["B-32-8-8", "B-24-8-8", "B-16-8-8", "B-8-8-8"]
    expected = (
        {f"{pair}/featuremap"}
        | {f"{pair}/tucker/{r}" for r in ranks}
        | {f"{pair}/tucker_recomp/{target}/{r}" for target in ("teacher", "student", "both") for r in ranks}
    )
    assert len(expected) == 17
    assert len(runs) == 51
    assert {run.name.rsplit("/", 1)[0] for run in runs} == expected
    for run in runs:
        seed = run.flags[run.flags.index("--seed") + 1]
        assert seed in ("0", "1", "2") and run.name.endswith(f"/seed{seed}")
        assert run.path == tmp_path / run.name
        assert run.flags[-2:] == ["--experiment_name", run.name]
        assert run.teacher.name == "cifar100/teacher/ResNet112/seed0"
        assert run.teacher_checkpoint == run.teacher.path / "ResNet112.pth"
    assert plan(*runner.parse_args(["--experiments_dir", str(tmp_path)])) == runs  # stable


def test_study_keeps_students_apart_and_flags_after_dashes_reach_every_run(experiments: Path) -> None:
    """Flags after -- reach the teacher's run too, but for its training flags: the teacher recipe's."""
    args, extra = runner.parse_args(
        grid(experiments, "--distillations", "featuremap", "--runs", "1", "--study", "lr0.02")
        + ["--", "--lr", "0.02", "--max_batches", "3"]
    )
    (run,) = plan(args, extra)
    assert run.name == f"lr0.02/{FEATUREMAP},lr=0.02,max_batches=3/seed0"  # named after its flags, under the study
    assert run.teacher.name == "digits/teacher/ResNetBaby/epochs=8,batch_size=64,lr=0.05,max_batches=3/seed0"
    for flags, lr in ((run.flags, "0.02"), (run.teacher.flags, "0.05")):
        assert flags[flags.index("--max_batches") + 1] == "3"
        assert flags[len(flags) - 1 - flags[::-1].index("--lr") + 1] == lr  # the last --lr is the one that counts


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "mnist"], "argument --dataset: invalid choice: 'mnist' (choose from"),
        (["--student", "VGG16"], "argument --student: invalid choice"),
        (
            ["--distillations", "hint"],
            "argument --distillations: invalid choice: 'hint' (choose from 'none', 'featuremap'",
        ),
        (["--ranks_list", "BATCH_SIZE,32,8"], "argument --ranks_list: each value needs 4 comma-separated ranks"),
        (["--recomp_targets", "neither"], "argument --recomp_targets: invalid choice"),
        (["--runs", "0"], "argument --runs: must be a whole number, 1 or more; got '0'"),
        (
            ["--runs_per_gpu", "-1"],
            "argument --runs_per_gpu: must be a whole number, 1 or more; got '-1'",
        ),  # not '0 or more'
        (["--parallel", "1.5"], "argument --parallel: must be a whole number, 1 or more; got '1.5'"),
        (["--mem", "lots"], "argument --mem: must be a whole number with K, M, G or T, e.g. 16G"),
        (["--time", "90"], "argument --time: must be [D-]HH:MM:SS"),
        (["--time", "99:99:99"], "argument --time: must be [D-]HH:MM:SS"),
        (["--scheduler", "sge"], "argument --scheduler: invalid choice: 'sge' (choose from 'slurm', 'pbs', 'local')"),
        (["--study", "../outside"], "--study must be a relative path"),
        (["--study", "/etc"], "--study must be a relative path"),
        (["--", "--seed", "5"], "--seed cannot follow '--': runner.py sets --seed for every run from its own --runs"),
        (["--", "--experiment_name=x"], "--experiment_name cannot follow '--'"),
        (
            ["--", "--epoch", "9"],
            "--epoch cannot follow '--': runner.py sets --epochs for every run from its own --epochs",
        ),
        (
            ["--", "--config", "x.yaml"],
            "--config cannot follow '--': runner.py sets --config for every run from its own --config",
        ),
        (["--", "--no_such_flag", "1"], "unrecognized arguments: --no_such_flag"),
        (["--env_setup", "module load a\nrm -rf /"], "argument --env_setup: must be one line"),
        (
            ["--teacher_dir", "/dev/null"],
            "--teacher_dir /dev/null is not a folder: pass the folder that holds the teachers'",
        ),
        (["--experiments_dir", ""], "--experiments_dir is empty: name the folder of the runs"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(cli, experiments: Path, argv: list[str], message: str) -> None:
    fake = FakeSlurm()
    status, out, err = cli(grid(experiments, "--runs", "1", *argv), fake)
    assert status == 2
    assert err.startswith("runner.py: error: ") and message in err and err.count("\n") == 1
    assert fake.submitted == []


def test_bad_input_from_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "runner.py", "--dataset", "mnist"], capture_output=True, text=True, cwd=sweep.REPO
    )
    assert done.returncode == 2
    assert (
        done.stderr.startswith("runner.py: error: argument --dataset: invalid choice") and done.stderr.count("\n") == 1
    )


def test_run_folder_leaving_the_experiments_folder_is_refused(cli, tmp_path: Path, experiments: Path) -> None:
    experiments.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (experiments / "digits").symlink_to(tmp_path / "elsewhere")
    status, _, err = cli(grid(experiments), FakeSlurm())
    assert status == 2 and "leaves --experiments_dir" in err


# ---------------------------------------------------------------- job scripts

GOLDEN_SETTINGS = sweep.JobSettings(
    Resources(partition="gpu", account="proj-42", time="1-12:00:00", gpus=1, cpus=4, mem="16G", signal_seconds=300),
    python="/opt/venv/bin/python",
    env_setup="module load cuda/12.1 && source /opt/venv/bin/activate",
    workdir=Path("/repo"),
)


def golden_run() -> sweep.Run:
    args, extra = runner.parse_args(
        [
            "--experiments_dir",
            "/repo/experiments",
            "--distillations",
            "tucker_recomp",
            "--recomp_targets",
            "both",
            "--ranks_list",
            "BATCH_SIZE,16,8,8",
            "--runs",
            "1",
            "--",
            "--max_batches",
            "5",
        ]
    )
    (run,) = plan(args, extra)
    return run


@pytest.mark.parametrize(
    "scheduler, golden",
    [(SlurmScheduler("someone"), "slurm.job"), (PbsScheduler("someone"), "pbs.job"), (LocalScheduler(), "local.job")],
)
def test_rendered_job_matches_golden_file(scheduler: Scheduler, golden: str) -> None:
    text = sweep.render_job([golden_run()], scheduler, GOLDEN_SETTINGS)
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / golden).write_text(text)
    assert text == (GOLDEN / golden).read_text()


def test_multi_node_job_matches_golden_file() -> None:
    """Two nodes of four GPUs: one srun task per GPU, their ranks from SLURM, the rendezvous on the
    first node, --cpus and the GPU per process, --mem per process times four per node."""
    resources = dataclasses.replace(GOLDEN_SETTINGS.resources, nodes=2, ranks_per_node=4)
    text = sweep.render_job(
        [golden_run()], SlurmScheduler("someone"), dataclasses.replace(GOLDEN_SETTINGS, resources=resources)
    )
    if os.environ.get("UPDATE_GOLDEN"):
        (GOLDEN / "slurm_multinode.job").write_text(text)
    assert text == (GOLDEN / "slurm_multinode.job").read_text()


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--scheduler", "pbs", "--gpus_per_node", "2"],
            "--scheduler pbs starts one process per run; --nodes 1 --gpus_per_node 2 needs --scheduler slurm",
        ),
        (
            ["--scheduler", "local", "--nodes", "2"],
            "--scheduler local starts one process per run; --nodes 2 --gpus_per_node 1 needs --scheduler slurm",
        ),
        (["--nodes", "2", "--gpus", "2"], "--gpus 2 with --nodes/--gpus_per_node: each process gets one GPU"),
        (
            ["--nodes", "16", "--gpus_per_node", "8", "--batch_size", "64"],
            "is the global batch: with 128 processes (--nodes x --gpus_per_node) it needs at least one sample each",
        ),
        (["--nodes", "0"], "argument --nodes: must be a whole number, 1 or more; got '0'"),
    ],
)
def test_several_processes_are_refused_where_they_cannot_run(
    cli, experiments: Path, flags: list[str], message: str
) -> None:
    scheduler = None if "--scheduler" in flags else FakeSlurm()  # pbs, local: runner.py's own
    status, _, err = cli([*grid(experiments, "--distillations", "kd", "--runs", "1"), *flags], scheduler)
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert not experiments.exists() and not (scheduler and scheduler.submitted)


def test_processes_per_run_come_from_the_environment(cli, experiments: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TD_NODES", "3")
    monkeypatch.setenv("TD_GPUS_PER_NODE", "2")
    status, out, _ = cli(
        [*grid(experiments, "--distillations", "kd", "--runs", "1"), "--dry_run", "--scripts"], FakeSlurm()
    )
    assert status == 0 and "#SBATCH --nodes=3\n#SBATCH --ntasks-per-node=2\n#SBATCH --gpus-per-node=2\n" in out
    assert "export WORLD_SIZE=6 MASTER_ADDR=" in out


@pytest.mark.parametrize(
    "variable, value, message",
    [
        (
            "TD_SCHEDULER",
            "slrum",
            "TD_SCHEDULER must be one of slurm, pbs, local; got 'slrum'",
        ),  # never the local default
        ("TD_SCHEDULER", "", "TD_SCHEDULER must be one of slurm, pbs, local; got ''"),
        ("TD_GPUS", "x", "TD_GPUS must be a whole number (0 or more); got 'x'"),
        ("TD_RUNS_PER_GPU", "-2", "TD_RUNS_PER_GPU must be a whole number, 1 or more; got '-2'"),
        ("TD_MPS", "yes", "TD_MPS must be true or false; got 'yes'"),
        ("TD_SIGNAL_SECONDS", "70000", "TD_SIGNAL_SECONDS must be at most 65535"),
    ],
)
def test_a_bad_environment_variable_is_named(
    cli, experiments: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    status, out, err = cli([*grid(experiments, "--distillations", "kd", "--runs", "1"), "--dry_run"])
    assert status == 2 and err.count("\n") == 1 and err.startswith(f"runner.py: error: {message}"), err
    assert out == "" and not experiments.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grid", "beta=1", "--grid", "beta=2"], "--grid beta=... is given twice"),
        (["--signal_seconds", "65536"], "argument --signal_seconds: must be at most 65535"),
    ],
)
def test_flags_a_scheduler_would_refuse_or_that_would_drop_runs(
    cli, experiments: Path, flags: list[str], message: str
) -> None:
    status, out, err = cli(
        [*grid(experiments, "--distillations", "kd", "--runs", "1"), "--dry_run", *flags], FakeSlurm()
    )
    assert status == 2 and err.count("\n") == 1 and message in err and out == "", err


def test_empty_values_leave_their_directives_out() -> None:
    settings = sweep.JobSettings(Resources(gpus=0, signal_seconds=0), python="python")
    slurm = sweep.render_job([golden_run()], SlurmScheduler("someone"), settings)
    directives = [line for line in slurm.splitlines() if line.startswith("#SBATCH")]
    assert [d.split("=")[0] for d in directives] == [
        "#SBATCH --job-name",
        "#SBATCH --output",
        "#SBATCH --cpus-per-task",
        "#SBATCH --mem",
        "#SBATCH --requeue",
        "#SBATCH --open-mode",
    ]
    pbs = sweep.render_job([golden_run()], PbsScheduler("someone"), settings)
    assert [line for line in pbs.splitlines() if line.startswith("#PBS -l")] == ["#PBS -l select=1:ncpus=4:mem=16GB"]
    assert "#PBS -q" not in pbs and "#PBS -P" not in pbs and "#SBATCH" not in pbs
    assert "set -e\nset +e\n" in slurm  # no set-up line


def test_every_value_reaches_the_training_script_intact(tmp_path: Path) -> None:
    """Paths with spaces, quotes and $(...) are quoted: the shell neither splits nor runs them."""
    experiments = tmp_path / "runs $(touch PWNED) it's; echo"
    python = fake_training(tmp_path / "python with space")
    args, extra = runner.parse_args(grid(experiments, "--distillations", "kd", "--runs", "1"))
    teacher = plan(args, extra)[0].teacher
    settings = sweep.JobSettings(Resources(), python=str(python))
    for scheduler in (SlurmScheduler("someone"), PbsScheduler("someone")):
        script = tmp_path / "run.job"
        script.write_text(sweep.render_job([teacher], scheduler, settings))
        subprocess.run(["bash", "-n", str(script)], check=True)
    subprocess.run(["bash", str(script)], cwd=tmp_path, check=True, timeout=patience(60))
    assert json.loads((teacher.path / "argv.json").read_text()) == [
        str(sweep.REPO / "tucker_distillation.py"),
        *teacher.flags,
    ]
    assert not list(tmp_path.rglob("PWNED")) and not (sweep.REPO / "PWNED").exists()


@pytest.mark.parametrize("training", ["wait", "unprepared"])
@pytest.mark.parametrize(
    "signal_name, forwarded, requeued", [("USR1", "USR1", True), ("TERM", "TERM", False), ("INT", "TERM", False)]
)
def test_run_job_forwards_the_signal_and_requeues_only_before_the_time_limit(
    tmp_path: Path, experiments: Path, fake_bin: Path, signal_name: str, forwarded: str, requeued: bool, training: str
) -> None:
    """USR1 (SLURM's warning before the time limit): the training stops with 75 and the job
    requeues itself. TERM (scancel, preemption) or INT (Ctrl-C on a local sweep, passed on as TERM):
    the training stops with 75, no requeue. A training killed by the forwarded signal (it came before
    its handler) counts as stopped: 75 as well."""
    scontrol_log = tmp_path / "scontrol.log"
    tool(fake_bin, "scontrol", f'echo "$*" >> {scontrol_log}\n')
    python = fake_training(tmp_path / "python")
    args, extra = runner.parse_args(grid(experiments, "--distillations", "kd", "--runs", "1"))
    (run,) = plan(args, extra)
    run.path.mkdir(parents=True)
    script = run.path / "run.job"
    script.write_text(sweep.render_job([run], SlurmScheduler("someone"), sweep.JobSettings(Resources(), str(python))))

    job = subprocess.Popen(["bash", str(script)], env={**os.environ, "FAKE_TRAINING": training, "SLURM_JOB_ID": "4242"})
    deadline = time.monotonic() + patience(30)
    while not (run.path / "ready").exists():
        assert time.monotonic() < deadline and job.poll() is None, "the stand-in training never started"
        time.sleep(0.05)
    job.send_signal(getattr(signal, f"SIG{signal_name}"))

    assert job.wait(timeout=patience(30)) == 75
    if training == "wait":
        assert (run.path / "signal.txt").read_text() == f"SIG{forwarded}"
    assert (scontrol_log.read_text() if scontrol_log.exists() else "") == ("requeue 4242\n" if requeued else "")


# ---------------------------------------------------------------- what gets submitted


def test_teacher_is_submitted_first_and_students_wait_for_it(cli, experiments: Path) -> None:
    fake = FakeSlurm()
    status, out, _ = cli(
        grid(experiments, "--distillations", "featuremap", "tucker", "--ranks_list", "BATCH_SIZE,8,8,8", "--runs", "2"),
        fake,
    )
    assert status == 0
    assert fake.names() == [
        TEACHER,
        f"{FEATUREMAP}/seed0",
        f"{FEATUREMAP}/seed1",
        f"digits/ResNetBaby-ResNetBaby/tucker/B-8-8-8/{CHANGES}/seed0",
        f"digits/ResNetBaby-ResNetBaby/tucker/B-8-8-8/{CHANGES}/seed1",
    ]
    assert [dependency for _, dependency in fake.submitted] == [None, "101", "101", "101", "101"]
    for script, _ in fake.submitted:
        assert script.name == "run.job" and script.read_text().startswith("#!/bin/bash\n")
        job = json.loads((script.parent / "job.json").read_text())
        assert job["scheduler"] == "slurm" and job["job_id"] in fake.live
    assert "submitted 5 (teachers: 1), skipped as finished 0, skipped as queued or running 0, failed to submit 0" in out


@pytest.mark.parametrize(
    "teacher_files, teacher_job, submits_teacher, dependency",
    [
        (["metrics.json", "ResNetBaby.pth", "last.pt"], None, False, None),  # trained
        (["ResNetBaby.pth"], None, False, None),  # weights put there by hand
        (["config.json", "ResNetBaby.pth"], "7", False, "7"),  # training now, between writing .pth and last.pt
        (["config.json", "last.pt", "ResNetBaby.pth"], None, True, "101"),  # crashed half-way: resumed first
    ],
)
def test_students_wait_for_their_teacher_only_while_it_trains(
    cli,
    experiments: Path,
    teacher_files: list[str],
    teacher_job: Optional[str],
    submits_teacher: bool,
    dependency: Optional[str],
) -> None:
    make_run(experiments, TEACHER, *teacher_files, job=teacher_job)
    fake = FakeSlurm(live={"7": RUNNING})
    status, _, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "2"), fake)
    assert status == 0
    assert (fake.names()[0] == TEACHER) == submits_teacher
    assert [d for name, (_, d) in zip(fake.names(), fake.submitted) if name != TEACHER] == [dependency, dependency]


def test_finished_and_queued_runs_are_skipped_and_the_others_resubmitted(cli, experiments: Path) -> None:
    make_run(experiments, TEACHER, "metrics.json", "ResNetBaby.pth")
    make_run(experiments, f"{FEATUREMAP}/seed0", "metrics.json", job="40")
    make_run(experiments, f"{FEATUREMAP}/seed1", "config.json", job="50")  # queued
    make_run(experiments, f"{FEATUREMAP}/seed2", "config.json", "last.pt", job="51")  # crashed, no live job
    fake = FakeSlurm(live={"50": PENDING})

    status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "4"), fake)

    assert status == 0
    assert fake.names() == [f"{FEATUREMAP}/seed2", f"{FEATUREMAP}/seed3"]
    assert json.loads((experiments / FEATUREMAP / "seed2/job.json").read_text())["job_id"] == "101"
    assert f"submitted    {FEATUREMAP}/seed2  job 101 (resumes from last.pt)" in out
    assert "submitted 2 (teachers: 0), skipped as finished 1, skipped as queued or running 1, failed to submit 0" in out


def test_running_again_submits_nothing_twice(cli, experiments: Path) -> None:
    fake = FakeSlurm()
    argv = grid(experiments, "--distillations", "featuremap", "--runs", "2")
    cli(argv, fake)
    status, out, _ = cli(argv, fake)
    assert status == 0 and len(fake.submitted) == 3
    # The students are queued; their teacher is looked at only when a student needs it.
    assert "submitted 0 (teachers: 0), skipped as finished 0, skipped as queued or running 2" in out


def test_max_queued_stops_submitting_and_says_what_remains(cli, experiments: Path) -> None:
    fake = FakeSlurm(live={"1": RUNNING, "2": PENDING})  # the user's other jobs count too
    status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "3", "--max_queued", "4"), fake)
    assert status == 0
    assert fake.names() == [TEACHER, f"{FEATUREMAP}/seed0"]
    assert "--max_queued 4 reached: 2 runs remain; run runner.py again later" in out


def test_teachers_are_submitted_first_and_max_queued_holds_back_a_teacher_too(cli, experiments: Path) -> None:
    """Two pairs: both teachers before any student (a local job waits for its teacher before the
    next is started); the queue's limit reached at a teacher holds its students back, no traceback."""
    pairs = [
        *TINY[:2],
        *TINY[6:],
        "--grid",
        "pair=ResNetBaby-ResNetBaby,ResNet20-ResNetBaby",
        "--distillations",
        "kd",
        "--runs",
        "2",
    ]
    fake = FakeSlurm()
    status, out, _ = cli([*pairs, "--experiments_dir", str(experiments)], fake)
    assert status == 0, out
    assert [name.split("/")[1] for name in fake.names()] == [
        "teacher",
        "teacher",
        *["ResNetBaby-ResNetBaby"] * 2,
        *["ResNet20-ResNetBaby"] * 2,
    ]
    fake = FakeSlurm()
    status, out, _ = cli([*pairs, "--experiments_dir", str(experiments / "limited"), "--max_queued", "1"], fake)
    assert status == 0 and len(fake.names()) == 1 and "--max_queued 1 reached: 4 runs remain" in out, out


def test_dry_run_prints_the_plan_the_scripts_on_request_and_submits_and_writes_nothing(cli, experiments: Path) -> None:
    fake = FakeSlurm()
    status, plan, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "2", "--dry_run"), fake)
    assert status == 0 and f"would submit {TEACHER}\n" in plan and "#!/bin/bash" not in plan
    # which teacher the students distil from: the teacher recipe's, not one of the students' 2 epochs
    assert f"teacher {TEACHER}: 8 epochs, trained first, for 2 students\n" in plan and "warning" not in plan
    status, out, _ = cli(
        grid(experiments, "--distillations", "featuremap", "--runs", "2", "--dry_run", "--scripts"), fake
    )
    assert status == 0 and fake.attempts == 0 and not experiments.exists()
    assert f"would submit {TEACHER}\n#!/bin/bash\n" in out
    assert f"would submit {FEATUREMAP}/seed1 after job dry-run-1\n" in out
    assert out.count("#SBATCH --job-name=td.") == 3
    assert "would submit 3 (teachers: 1)" in out


def test_a_refused_submission_is_reported_with_the_schedulers_message(cli, experiments: Path) -> None:
    fake = FakeSlurm(refuse=(f"featuremap/{CHANGES}/seed1",))
    status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "3"), fake)
    assert status == 1
    assert fake.names() == [TEACHER, f"{FEATUREMAP}/seed0", f"{FEATUREMAP}/seed2"]
    assert f"failed to submit {FEATUREMAP}/seed1: sbatch: error: Batch job submission failed: Invalid account" in out
    assert not (experiments / FEATUREMAP / "seed1").exists()  # nothing left that looks like a run


def test_a_folder_holding_a_run_with_other_flags_is_refused_not_submitted(cli, experiments: Path) -> None:
    conflicting = make_run(experiments, f"{FEATUREMAP}/seed1", "config.json", "metrics.json")
    saved = json.loads((conflicting / "config.json").read_text())
    saved["config"]["lr"] = 0.5  # trained with another learning rate under this name
    (conflicting / "config.json").write_text(json.dumps(saved))
    fake = FakeSlurm()
    status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "2"), fake)
    assert status == 1 and fake.names() == [TEACHER, f"{FEATUREMAP}/seed0"]
    assert (
        f"failed to submit {FEATUREMAP}/seed1: its folder holds a run with other flags (--lr 0.5 there, 0.1 here)"
        in out
    )


def test_a_run_trained_by_a_live_process_is_running_without_any_job(cli, experiments: Path) -> None:
    make_run(experiments, TEACHER, "config.json", "metrics.json", "ResNetBaby.pth")
    busy = RunDir(make_run(experiments, f"{FEATUREMAP}/seed0", "config.json", "last.pt"))
    fake = FakeSlurm()
    with busy.locked():  # as a training started by hand holds it
        status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "1"), fake)
        assert status == 0 and fake.submitted == [] and "skipped as queued or running 1" in out
        assert f"running      {FEATUREMAP}/seed0  process {os.getpid()} on" in out
        status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "1", "--status"), fake)
        assert "running" in out and f"process {os.getpid()}" in out


def test_a_teacher_that_cannot_be_submitted_fails_its_students_once(cli, experiments: Path) -> None:
    fake = FakeSlurm(refuse=("teacher",))
    status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "3"), fake)
    assert status == 1 and fake.attempts == 1 and fake.submitted == []
    assert out.count(f"its teacher {TEACHER} failed to submit: sbatch: error:") == 6  # progress line + summary, x3


def test_only_one_runner_at_a_time(cli, experiments: Path) -> None:
    with sweep.exclusive(experiments):
        status, _, err = cli(grid(experiments), FakeSlurm())
    assert status == 2 and "another runner.py is working on" in err


# ---------------------------------------------------------------- the real scheduler classes, faked commands


def test_slurm_commands(cli, tmp_path: Path, experiments: Path, fake_bin: Path) -> None:
    queue = tmp_path / "queue"
    queue.write_text("")
    tool(
        fake_bin,
        "sbatch",
        f'echo "$*" >> {tmp_path}/sbatch.log\necho "$((200 + $(wc -l < {tmp_path}/sbatch.log)));dev"\n',
    )
    tool(fake_bin, "squeue", f'echo "$*" > {tmp_path}/squeue.args\ncat {queue}\n')
    argv = grid(experiments, "--distillations", "featuremap", "--runs", "2")

    status, out, _ = cli(argv)

    assert status == 0
    assert (tmp_path / "sbatch.log").read_text().splitlines() == [
        f"--parsable {experiments}/{TEACHER}/run.job",
        f"--parsable --dependency=afterok:201 --kill-on-invalid-dep=yes {experiments}/{FEATUREMAP}/seed0/run.job",
        f"--parsable --dependency=afterok:201 --kill-on-invalid-dep=yes {experiments}/{FEATUREMAP}/seed1/run.job",
    ]
    assert "--states=all --user tester" in (tmp_path / "squeue.args").read_text()
    assert json.loads((experiments / FEATUREMAP / "seed1/job.json").read_text())["job_id"] == "203"

    queue.write_text("201 COMPLETED\n202 REQUEUED\n203 CONFIGURING\n999 PENDING\n")
    assert SlurmScheduler("tester").live_jobs() == {"202": PENDING, "203": RUNNING, "999": PENDING}
    status, out, _ = cli(argv)
    assert status == 0 and len((tmp_path / "sbatch.log").read_text().splitlines()) == 3
    assert f"pending      {FEATUREMAP}/seed0  job 202" in out and f"running      {FEATUREMAP}/seed1  job 203" in out


def test_slurm_refusals_and_an_unreachable_queue(cli, experiments: Path, fake_bin: Path) -> None:
    tool(fake_bin, "squeue", "")
    tool(fake_bin, "sbatch", 'echo "sbatch: error: invalid partition specified: gpu" >&2; exit 1\n')
    status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "1", "--partition", "gpu"))
    assert status == 1
    assert (
        f"failed to submit {FEATUREMAP}/seed0: its teacher {TEACHER} failed to submit: "
        "sbatch: error: invalid partition specified: gpu"
    ) in out

    tool(fake_bin, "squeue", 'echo "slurm_load_jobs error: Unable to contact slurm controller" >&2; exit 1\n')
    status, _, err = cli(grid(experiments, "--distillations", "featuremap", "--runs", "1"))
    assert status == 1
    assert err == (
        "runner.py: error: cannot list the queue, so nothing was submitted: "
        "slurm_load_jobs error: Unable to contact slurm controller\n"
    )


@pytest.mark.parametrize(
    "command, answer", [("sbatch", ""), ("sbatch", "Submitted batch job 7"), ("qsub", "job 7 queued")]
)
def test_an_answer_that_is_not_a_job_id_is_a_failed_submission(
    cli, experiments: Path, fake_bin: Path, command: str, answer: str
) -> None:
    tool(fake_bin, command, f'echo "{answer}"\n')
    tool(fake_bin, "squeue" if command == "sbatch" else "qstat", "")
    argv = grid(
        experiments, "--scheduler", "slurm" if command == "sbatch" else "pbs", "--distillations", "kd", "--runs", "1"
    )
    status, out, _ = cli(argv)
    assert status == 1 and f"failed to submit: {command} answered {answer!r}, not a job id" in out
    assert not list(experiments.rglob("job.json"))


def test_queue_and_account_lines_that_cannot_be_read(cli, experiments: Path, fake_bin: Path) -> None:
    tool(fake_bin, "squeue", 'echo "slurm_load_jobs: some warning"\n')
    status, _, err = cli(grid(experiments, "--distillations", "kd", "--runs", "1"))
    assert status == 1 and err == (
        "runner.py: error: cannot list the queue, so nothing was submitted: squeue printed a "
        "line runner.py cannot read: 'slurm_load_jobs: some warning'\n"
    )
    tool(fake_bin, "sacct", 'echo "sacct: warning"; echo "7|TIMEOUT|0:0"\n')
    assert SlurmScheduler("tester").final_states(["7"]) == {"7": "TIMEOUT"}


def test_without_any_scheduler_a_dry_run_still_works(cli, experiments: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "1", "--dry_run"))
    assert status == 0 and "warning: cannot list the queue (squeue not found" in out and "would submit 2" in out
    status, _, err = cli(grid(experiments, "--distillations", "featuremap", "--runs", "1"))
    assert status == 1 and "squeue not found: run this on the cluster's login node" in err


def test_pbs_commands(cli, tmp_path: Path, experiments: Path, fake_bin: Path) -> None:
    queue = tmp_path / "queue"
    queue.write_text("")
    tool(
        fake_bin, "qsub", f'echo "$*" >> {tmp_path}/qsub.log\necho "$((3000 + $(wc -l < {tmp_path}/qsub.log))).pbs01"\n'
    )
    tool(fake_bin, "qstat", f"cat {queue}\n")
    argv = grid(
        experiments,
        "--scheduler",
        "pbs",
        "--distillations",
        "featuremap",
        "--runs",
        "1",
        "--partition",
        "gpuvolta",
        "--account",
        "ab12",
        "--time",
        "1-02:00:00",
        "--mem",
        "32G",
    )

    assert cli(argv)[0] == 0

    assert (tmp_path / "qsub.log").read_text().splitlines() == [
        f"{experiments}/{TEACHER}/run.job",
        f"-W depend=afterok:3001 {experiments}/{FEATUREMAP}/seed0/run.job",
    ]
    script = (experiments / FEATUREMAP / "seed0/run.job").read_text()
    for line in (
        "#PBS -N td.digits.ResNetBaby-ResNetBaby.featuremap.epochs.2.batch_size.64.seed0",
        "#PBS -q gpuvolta",
        "#PBS -P ab12",
        "#PBS -l select=1:ncpus=4:mem=32GB:ngpus=1",
        "#PBS -l walltime=26:00:00",
        f"#PBS -o {experiments}/{FEATUREMAP}/seed0/",
        f"#PBS -e {experiments}/{FEATUREMAP}/seed0/",
    ):
        assert line + "\n" in script
    assert "#SBATCH" not in script

    queue.write_text(
        "\npbs01:\n                                                            Req'd  Req'd   Elap\n"
        "Job ID          Username Queue    Jobname    SessID NDS TSK Memory Time  S Time\n"
        "--------------- -------- -------- ---------- ------ --- --- ------ ----- - -----\n"
        "3001.pbs01      tester   gpuvolta td.digits.  12345   1   4   32gb 26:00 R 00:01\n"
        "3002.pbs01      tester   gpuvolta td.digits.    --    1   4   32gb 26:00 H   -- \n"
    )
    assert PbsScheduler("tester").live_jobs() == {"3001": RUNNING, "3002": PENDING}
    status, out, _ = cli(argv)
    assert status == 0 and len((tmp_path / "qsub.log").read_text().splitlines()) == 2
    assert f"pending      {FEATUREMAP}/seed0  job 3002" in out


def test_local_scheduler_runs_the_grid_here(
    cli, tmp_path: Path, experiments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python = fake_training(tmp_path / "python")
    argv = grid(
        experiments,
        "--scheduler",
        "local",
        "--parallel",
        "2",
        "--python",
        str(python),
        "--distillations",
        "featuremap",
        "--runs",
        "2",
    )

    status, out, _ = cli(argv)

    assert status == 0, out
    for name in (TEACHER, f"{FEATUREMAP}/seed0", f"{FEATUREMAP}/seed1"):
        assert (experiments / name / "metrics.json").exists()  # students found their teacher's weights
        assert json.loads((experiments / name / "job.json").read_text())["scheduler"] == "local"
        assert (experiments / name / "local.out").exists()
    assert (
        out.splitlines()[-1]
        == "the sweep: finished 3, failed 0, stopped 0, not started 0, skipped 0 (finished or running before)"
    )
    again = cli(argv)[1]
    assert "submitted 0" in again
    assert (
        again.splitlines()[-1]
        == "the sweep: finished 0, failed 0, stopped 0, not started 0, skipped 2 (finished or running before)"
    )

    monkeypatch.setenv("FAKE_TRAINING", "fail_teacher")
    status, out, _ = cli(
        grid(
            experiments,
            "--scheduler",
            "local",
            "--python",
            str(python),
            "--distillations",
            "kd",
            "--runs",
            "1",
        )
        + ["--", "--teacher_epochs", "3"]
    )  # another teacher
    assert status == 1
    assert (
        out.splitlines()[-1]
        == "the sweep: finished 0, failed 1, stopped 0, not started 1, skipped 0 (finished or running before)"
    )
    student = "digits/ResNetBaby-ResNetBaby/kd/epochs=2,batch_size=64,teacher_epochs=3/seed0"
    assert f"failed to submit {student}: not run: job local-" in out
    teacher = "digits/teacher/ResNetBaby/epochs=3,batch_size=64,lr=0.05/seed0"
    assert f"failed while running {teacher}: exit status 1, see its local.out" in out


def test_local_scheduler_packs_runs_as_a_cluster_job_does(
    cli, tmp_path: Path, experiments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--scheduler local --runs_per_gpu 2: the same job script as on a cluster, run here; each run
    has its own job.out, and a failed run is named alone."""
    python = fake_training(tmp_path / "python")
    argv = grid(
        experiments,
        "--scheduler",
        "local",
        "--runs_per_gpu",
        "2",
        "--python",
        str(python),
        "--distillations",
        "featuremap",
        "--runs",
        "2",
    )
    monkeypatch.setenv("FAKE_TRAINING", "fail_seed1")

    status, out, _ = cli(argv)

    assert status == 1, out
    students = [experiments / f"{FEATUREMAP}/seed{seed}" for seed in range(2)]
    jobs = [json.loads((run / "job.json").read_text()) for run in students]
    assert jobs[0]["job_id"] == jobs[1]["job_id"] and jobs[1]["script"] == str(students[0] / "run.job")
    assert jobs[0]["pack"] == jobs[1]["pack"] == [f"{FEATUREMAP}/seed0", f"{FEATUREMAP}/seed1"]
    assert [(run / "metrics.json").exists() for run in students] == [True, False]
    assert all((run / "job.out").exists() for run in students) and (students[0] / "local.out").exists()
    assert f"failed while running {FEATUREMAP}/seed1: exit status 1, see its job.out" in out
    assert "failed while running 1" in out

    monkeypatch.setenv("FAKE_TRAINING", "finish")
    status, out, _ = cli(argv)
    assert status == 0 and "submitted 1 (teachers: 0), skipped as finished 1" in out, out
    assert (students[1] / "metrics.json").exists() and (students[1] / "local.out").exists()


def test_job_logs_that_are_links_are_never_written_through(
    cli, tmp_path: Path, experiments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job.out or local.out that is a symbolic link: the run it would log is not trained (its pack
    mate is), then not submitted; the file the link points to is left as it was."""
    monkeypatch.setenv("FAKE_TRAINING", "exit")
    python = fake_training(tmp_path / "python")
    make_run(experiments, TEACHER, "metrics.json", "ResNetBaby.pth")
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    students = [experiments / f"{FEATUREMAP}/seed{seed}" for seed in range(2)]
    students[1].mkdir(parents=True)
    (students[1] / "job.out").symlink_to(outside)
    argv = grid(
        experiments,
        "--scheduler",
        "local",
        "--runs_per_gpu",
        "2",
        "--python",
        str(python),
        "--distillations",
        "featuremap",
        "--runs",
        "2",
    )

    status, out, _ = cli(argv)

    assert status == 1 and f"failed while running {FEATUREMAP}/seed1: exit status 2, see its job.out" in out, out
    assert (students[0] / "argv.json").exists() and not (students[1] / "argv.json").exists()
    assert f"{students[1] / 'job.out'} is a symbolic link" in (students[0] / "local.out").read_text()
    make_run(experiments, f"{FEATUREMAP}/seed0", "metrics.json")  # seed1 alone: its own job, logging to its local.out
    (students[1] / "job.out").unlink()
    (students[1] / "local.out").symlink_to(outside)
    status, out, _ = cli(argv)
    assert status == 1 and f"failed to submit {FEATUREMAP}/seed1: {students[1] / 'local.out'} is a symbolic link" in out
    assert outside.read_text() == "precious" and not (students[1] / "argv.json").exists()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_to_a_local_sweep_stops_its_jobs_and_starts_no_more(
    cli, tmp_path: Path, experiments: Path, monkeypatch: pytest.MonkeyPatch, stop: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM on runner.py --scheduler local reaches the running job, whose trainings stop
    (75); the next job is not started, runner.py waits for the running one and exits 75 in one line."""
    python = fake_training(tmp_path / "python")
    make_run(experiments, TEACHER, "metrics.json", "ResNetBaby.pth")
    students = [experiments / f"{FEATUREMAP}/seed{seed}" for seed in range(3)]
    monkeypatch.setenv("FAKE_TRAINING", "wait")

    def signal_once_trainings_wait() -> None:
        deadline = time.monotonic() + patience(30)
        while not all((run / "ready").exists() for run in students[:2]) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), stop)

    before = signal.getsignal(stop)
    threading.Thread(target=signal_once_trainings_wait, daemon=True).start()
    status, out, err = cli(
        grid(
            experiments,
            "--scheduler",
            "local",
            "--runs_per_gpu",
            "2",
            "--python",
            str(python),
            "--distillations",
            "featuremap",
            "--runs",
            "3",
        )
    )

    assert status == 75 and err == (
        f"runner.py: error: stopped by {stop.name}: its running jobs were stopped, each run "
        "keeping its last.pt; run runner.py again to resume them\n"
    ), out + err
    assert [(run / "signal.txt").read_text() for run in students[:2]] == ["SIGTERM", "SIGTERM"]  # run.job's forward
    assert not (students[2] / "argv.json").exists()
    summary = (
        "submitted 2 (teachers: 0), skipped as finished 0, skipped as queued or running 0, failed to submit 0, "
        "stopped 2, not started 1"
    )
    assert summary in out and f"stopped {FEATUREMAP}/seed0: runner.py run again resumes it" in out
    assert signal.getsignal(stop) == before  # the handler was runner.py's for the sweep only


def test_a_stop_signal_between_cluster_submissions_ends_the_sweep_and_keeps_what_was_submitted(
    cli, experiments: Path
) -> None:
    """Ctrl-C on runner.py while it submits to SLURM takes effect between two submissions: the job
    submitted when it came has its job.json (a job no file records would be submitted twice), no
    further job is submitted, and runner.py exits 75 in one line; the next runner.py submits the rest."""

    class InterruptedSlurm(FakeSlurm):
        def submit(self, script: Path, dependency: Optional[str] = None) -> str:
            job_id = super().submit(script, dependency)
            if len(self.submitted) == 1:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while sbatch answers
            return job_id

    make_run(experiments, TEACHER, "metrics.json", "ResNetBaby.pth")
    argv = grid(experiments, "--distillations", "featuremap", "--runs", "3")
    before = signal.getsignal(signal.SIGINT)
    status, out, err = cli(argv, fake := InterruptedSlurm())

    assert status == 75 and err == (
        "runner.py: error: stopped by SIGINT: the jobs submitted before it stay queued; run "
        "runner.py again to submit the rest\n"
    ), out + err
    assert (
        len(fake.submitted) == 1
        and json.loads((fake.submitted[0][0].parent / "job.json").read_text())["job_id"] == "101"
    )
    assert "not started 2" in out and signal.getsignal(signal.SIGINT) == before
    status, out, _ = cli(argv, FakeSlurm(live=fake.live))
    assert status == 0 and "submitted 2 " in out and "skipped as queued or running 1" in out


def test_ctrl_c_before_submitting_is_one_line(cli, experiments: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "prepare_data", interrupted)
    status, out, err = cli(grid(experiments, "--distillations", "featuremap"), fake := FakeSlurm())
    assert (status, err) == (75, "runner.py: error: stopped by SIGINT before submitting; run runner.py again\n")
    assert not fake.submitted and not list(experiments.rglob("job.json"))


def test_the_data_is_made_ready_before_any_job_is_submitted(
    cli, tmp_path: Path, experiments: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision

    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "url", (tmp_path / "nowhere.tar.gz").as_uri()
    )  # never the internet
    fake = FakeSlurm()
    status, _, err = cli(
        grid(
            experiments,
            "--dataset",
            "cifar10",
            "--runs",
            "1",
            "--distillations",
            "featuremap",
            "--",
            "--data_dir",
            str(tmp_path / "offline"),
        ),
        fake,
    )
    assert status == 2 and fake.attempts == 0 and len(err.strip().splitlines()) == 1
    assert "could not download" in err and "--prepare_data --dataset cifar10" in err
    assert not experiments.exists() or not any(experiments.rglob("*.job"))


# ---------------------------------------------------------------- status, cancel, clean


def test_status_table(cli, experiments: Path) -> None:
    make_run(experiments, TEACHER, "metrics.json", "ResNetBaby.pth", job="10", best=91.234)
    make_run(experiments, f"{FEATUREMAP}/seed0", "config.json", "last.pt", job="11")
    make_run(experiments, f"{FEATUREMAP}/seed1", job="12")
    make_run(experiments, f"{FEATUREMAP}/seed2", "config.json", "last.pt", job="13")
    fake = FakeSlurm(live={"11": RUNNING, "12": PENDING})

    status, out, _ = cli(grid(experiments, "--distillations", "featuremap", "--runs", "4", "--status"), fake)

    assert status == 0 and fake.attempts == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["state", "job", "best", "acc", "run"]
    assert rows[1:6] == [
        ["finished", "10", "91.23", TEACHER],
        ["running", "11", f"{FEATUREMAP}/seed0"],
        ["pending", "12", f"{FEATUREMAP}/seed1"],
        ["failed", "(TIMEOUT)", "13", f"{FEATUREMAP}/seed2"],
        ["not", "started", f"{FEATUREMAP}/seed3"],
    ]
    assert rows[6] == "finished 1, running 1, pending 1, failed 1, not started 1".split()


def test_cancel_cancels_only_the_live_jobs_runner_recorded(cli, experiments: Path) -> None:
    make_run(experiments, "a/seed0", "config.json", job="11")
    make_run(experiments, "b/seed0", "config.json", job="12")
    make_run(experiments, "c/seed0", "metrics.json", job="13")
    # 13 has finished and its job is ending; 99 is not this project's.
    fake = FakeSlurm(live={"11": RUNNING, "13": RUNNING, "99": PENDING})
    status, out, _ = cli(["--cancel", "--experiments_dir", str(experiments)], fake)
    assert status == 0 and fake.cancelled == ["11"] and "cancelled 1 jobs" in out


def test_cancel_stops_the_local_job_of_another_runner_once(cli, tmp_path: Path, experiments: Path) -> None:
    """A pack's local job that another runner.py started (known by its process id and script): --cancel
    sends it one SIGTERM, which run.job passes on to its trainings; a process id that runs something
    else is not a job of ours and gets nothing."""
    first, second = make_run(experiments, "a/seed0", "config.json"), make_run(experiments, "a/seed1", "config.json")
    script = first / "run.job"
    script.write_text(f"trap 'echo TERM >> {tmp_path / 'got'}; exit 75' TERM\nsleep 60 &\nwait $!\n")
    job = subprocess.Popen(["bash", str(script)])
    other = subprocess.Popen(["sleep", "60"])  # a process id recorded by a job.json, now another program's
    try:
        deadline = time.monotonic() + patience(10)
        while b"run.job" not in Path(f"/proc/{job.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for run, job_id, extra in (
            (first, job.pid, {}),
            (second, job.pid, {"script": str(script)}),
            (make_run(experiments, "b/seed0", "config.json"), other.pid, {}),
        ):
            (run / "job.json").write_text(
                json.dumps({"run": run.name, "job_id": f"local-{job_id}", "scheduler": "local", **extra})
            )
        status, out, _ = cli(["--cancel", "--scheduler", "local", "--experiments_dir", str(experiments)])
        assert status == 0 and "cancelled 1 jobs" in out and out.count(f"cancel local-{job.pid} (running)") == 2, out
        assert job.wait(timeout=patience(10)) == 75 and (tmp_path / "got").read_text() == "TERM\n"
        assert other.poll() is None
    finally:
        for process in (job, other):
            process.kill()
            process.wait()


def test_clean_deletes_only_unfinished_runs_without_a_live_job(cli, experiments: Path) -> None:
    finished = make_run(experiments, "done/seed0", "metrics.json", "last.pt", "config.json")
    crashed = make_run(experiments, "crashed/deep/seed0", "config.json", "last.pt", job="5")
    live = make_run(experiments, "live/seed0", "config.json", job="6")
    around = make_run(experiments, "outer", "config.json")  # holds a finished run below it
    make_run(experiments, "outer/inner", "metrics.json")
    fake = FakeSlurm(live={"6": RUNNING})
    age(experiments)

    assert sweep.clean(experiments, fake, confirm=lambda question: False, out=lambda line: None) == []
    assert crashed.exists()
    status, err = cli(["--clean", "--experiments_dir", str(experiments)], fake)[::2]
    assert status == 2 and "pass --yes" in err and crashed.exists()  # no terminal to ask

    status, out, _ = cli(["--clean", "--yes", "--experiments_dir", str(experiments)], fake)

    assert status == 0 and "deleted 1 run folders" in out
    assert not (experiments / "crashed").exists()  # nor the folders that only held it
    assert (finished / "metrics.json").exists() and (finished / "last.pt").exists()
    assert (live / "config.json").exists() and (around / "config.json").exists()

    queued = make_run(experiments, "queued/seed0", "config.json", job="7")  # in SLURM's queue, not the local one
    age(experiments)
    lines: list[str] = []
    assert sweep.clean(experiments, LocalScheduler(1), confirm=lambda question: True, out=lines.append) == []
    assert (queued / "job.json").exists() and any("clean with --scheduler slurm" in line for line in lines)


def test_local_runs_share_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two local runs at a time on this machine get half its usable cores' threads each (at least
    one), also inside a SLURM job, whose CPUs and id are not theirs: no job of theirs to requeue. A
    job killed by a signal has the status a shell gives it."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "64")
    script = tmp_path / "run.job"
    script.write_text(
        f'echo "$OMP_NUM_THREADS ${{SLURM_JOB_ID-none}} ${{SLURM_CPUS_PER_TASK-none}}" > {tmp_path / "seen"}\n'
    )
    scheduler = LocalScheduler(parallel=2)
    scheduler.submit(script)
    killed = tmp_path / "killed.job"
    killed.write_text("kill -KILL $$\n")
    killed_id = scheduler.submit(killed)
    assert scheduler.wait_all() == {killed_id: 137}  # as a shell says it, not Python's -9
    assert (tmp_path / "seen").read_text().split() == [str(max(1, len(os.sched_getaffinity(0)) // 2)), "none", "none"]


def test_local_jobs_side_by_side_spread_over_the_gpus(tmp_path: Path) -> None:
    """Two jobs at a time on a machine with GPUs 3 and 5 get one each; the next job takes the GPU
    that is free again; none is given where there are no GPUs."""
    release = tmp_path / "release"

    def job(name: str, held: bool = False) -> Path:
        script = tmp_path / f"{name}.job"
        wait = f"until [ -e {release} ]; do sleep 0.05; done\n" if held else ""
        script.write_text(f'echo "${{CUDA_VISIBLE_DEVICES-unset}}" > {tmp_path / name}\n{wait}')
        return script

    scheduler = LocalScheduler(parallel=2, gpus=["3", "5"])
    scheduler.submit(job("long", held=True))  # runs until released below
    scheduler.submit(job("short"))
    scheduler.submit(job("next"))  # waits for a free slot: the short job's
    release.touch()
    unassigned = LocalScheduler(parallel=2)
    unassigned.submit(job("cpu"))
    assert scheduler.wait_all() == unassigned.wait_all() == {}
    assert [(tmp_path / name).read_text().strip() for name in ("long", "short", "next")] == ["3", "5", "5"]
    assert (tmp_path / "cpu").read_text().strip() == os.environ.get("CUDA_VISIBLE_DEVICES", "unset")


def test_local_gpus_are_the_visible_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0, 2,GPU-8f3a")
    assert local_gpus() == ["0", "2", "GPU-8f3a"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", "/nonexistent")  # no nvidia-smi
    assert local_gpus() == []


def test_util_sh_reads_relative_paths_from_where_it_is_called(tmp_path: Path) -> None:
    """util.sh status / clean / logs, called from another folder with relative paths, act on that
    folder's runs, as runner.py there would; the repository's experiments/ is left alone."""
    here = tmp_path / "here"
    experiments = here / "exp"
    make_run(experiments, TEACHER, "metrics.json", "ResNetBaby.pth", best=91.234)
    crashed = make_run(experiments, "crashed/seed0", "config.json", "last.pt")
    (crashed / "local.out").write_text("epoch 1/2 ...\n")
    (here / "experiments" / "logged").mkdir(parents=True)  # the default experiments folder, relative to here
    (here / "experiments" / "logged" / "local.out").write_text("in the default folder\n")
    repo_experiments = sorted((sweep.REPO / "experiments").rglob("*"))

    def util(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(sweep.REPO / "util.sh"), *args],
            cwd=here,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHON": sys.executable},
            timeout=patience(120),
        )

    status = util(
        "status", "--scheduler", "local", *TINY, "--experiments_dir", "exp", "--distillations", "kd", "--runs", "1"
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1].split() == ["finished", "91.23", TEACHER]

    logs = util("logs", "exp/crashed/seed0")
    assert logs.returncode == 0 and logs.stdout == "epoch 1/2 ...\n", logs.stderr
    logs = util("logs", "logged")
    assert logs.returncode == 0 and logs.stdout == "in the default folder\n", logs.stderr
    (here / "-dash").mkdir()  # a name tail and ls would read as their flags
    (here / "-dash" / "train.log").write_text("dashed\n")
    logs = util("logs", "-dash", "-n", "1")
    assert logs.returncode == 0 and logs.stdout == "dashed\n", logs.stderr
    logs = util("logs")
    assert logs.returncode == 2 and logs.stderr == "util.sh: logs needs a RUN: util.sh logs RUN [tail flags]\n"
    (here / "piped").mkdir()
    os.mkfifo(here / "piped" / "train.log")  # tail would wait on it for a writer
    logs = util("logs", "piped")
    assert logs.returncode == 2 and "piped/train.log is not a regular file (a FIFO, a device?): not read" in logs.stderr

    age(experiments)
    clean = util("clean", "--yes", "--scheduler", "local", "--experiments_dir", "exp")
    assert clean.returncode == 0 and "deleted 1 run folders" in clean.stdout, clean.stderr
    assert not crashed.exists() and (experiments / TEACHER / "metrics.json").exists()
    assert sorted((sweep.REPO / "experiments").rglob("*")) == repo_experiments


@pytest.mark.parametrize("command", [[], ["--status"], ["--clean", "--yes"], ["--cancel"]])
def test_an_experiments_path_that_cannot_be_a_folder_is_one_line_with_status_2(
    cli, tmp_path: Path, command: list[str]
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a user's file")
    for experiments in (taken, taken / "experiments"):
        status, _, err = cli([*grid(experiments, "--distillations", "kd"), *command], FakeSlurm())
        assert (
            status == 2
            and err
            == f"runner.py: error: --experiments_dir {experiments} cannot be a folder: {taken} "
            "is not a folder; pass another --experiments_dir\n"
        )
    assert taken.read_text() == "a user's file"


def test_an_experiments_path_with_a_line_break_is_refused_before_anything_is_made(cli, tmp_path: Path) -> None:
    experiments = tmp_path / "two\nlines"
    status, _, err = cli(grid(experiments, "--distillations", "kd"), FakeSlurm())
    assert status == 2 and err == (
        f"runner.py: error: --experiments_dir {str(experiments)!r} holds a line break, which no "
        "job script line can hold; pass another --experiments_dir\n"
    )
    assert not experiments.exists()


@pytest.mark.parametrize("failing", ["atomic_write", "atomic_write_json"])
def test_a_failed_write_is_one_line_with_status_74_and_leaves_no_run_folder(
    cli, experiments: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The run.job (before submitting) or the job.json (after: the job is cancelled, else the next
    runner.py would submit the run twice) cannot be written, as on a full disk."""

    def full_disk(path: Path, *_) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(f"toolbox.sweep.submit.{failing}", full_disk)  # where the Submitter looks it up
    fake = FakeSlurm()
    status, out, err = cli(grid(experiments, "--distillations", "kd", "--runs", "1"), fake)
    written = sweep.SCRIPT_FILE if failing == "atomic_write" else sweep.JOB_FILE
    assert status == 74 and err == (
        f"runner.py: error: {experiments / TEACHER / written}: No space left on device; "
        "fix that (free space, permissions) and run runner.py again\n"
    )
    assert fake.cancelled == ([] if failing == "atomic_write" else ["101"]) and not fake.live
    assert [p.name for p in experiments.rglob("*")] == [".runner.lock"]  # no folder of the run, nor above it


# ---------------------------------------------------------------- several runs per job


def test_runs_per_gpu_packs_the_students_of_one_teacher_into_jobs(cli, experiments: Path) -> None:
    """Five students of a teacher being trained, three per job: the teacher alone, then two jobs
    after it; each run's job.json names the shared job and its members; the next runner.py submits
    nothing."""
    fake = FakeSlurm()
    argv = [
        *grid(experiments, "--distillations", "featuremap", "--runs", "5"),
        "--runs_per_gpu",
        "3",
        "--cpus",
        "2",
        "--mem",
        "8G",
    ]
    status, out, _ = cli(argv, fake)

    assert status == 0, out
    assert [(script.parent.name, dependency) for script, dependency in fake.submitted] == [
        ("seed0", None),
        ("seed0", "101"),
        ("seed3", "101"),
    ]  # the teacher's folder is seed0 too
    first_pack = fake.submitted[1][0].read_text()
    assert "#SBATCH --cpus-per-task=6\n#SBATCH --mem=24G\n" in first_pack and "trainings=3\n" in first_pack
    assert first_pack.count("start /") == 3 and f"{FEATUREMAP}/seed2/job.out /" in first_pack
    for seed, job_id in ((0, "102"), (1, "102"), (2, "102"), (3, "103"), (4, "103")):
        job = json.loads((experiments / FEATUREMAP / f"seed{seed}/job.json").read_text())
        assert job["job_id"] == job_id and len(job["pack"]) == (3 if seed < 3 else 2)
    assert "submitted 6 (teachers: 1)" in out
    assert "submitted 0 (teachers: 0)" in cli(argv, fake)[1]


def test_a_pack_job_stops_every_run_and_reports_the_worst_status(tmp_path: Path, experiments: Path) -> None:
    """USR1 reaches both trainings of a two-run job, which exits 75 and requeues; trainings that fail
    fail the job with their status, each run's output in its own job.out."""
    scontrol_log = tmp_path / "scontrol.log"
    python = fake_training(tmp_path / "python")
    runs = kd_runs(experiments, 2)
    script = runs[0].path / "run.job"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    tool(fake_bin, "scontrol", f'echo "$*" >> {scontrol_log}\n')
    script.write_text(sweep.render_job(runs, SlurmScheduler("someone"), sweep.JobSettings(Resources(), str(python))))
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242"}

    job = subprocess.Popen(["bash", str(script)], env={**env, "FAKE_TRAINING": "wait"})
    deadline = time.monotonic() + patience(30)
    while not all((run.path / "ready").exists() for run in runs):
        assert time.monotonic() < deadline and job.poll() is None, "the stand-in trainings never started"
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=patience(30)) == 75
    assert [(run.path / "signal.txt").read_text() for run in runs] == ["SIGUSR1", "SIGUSR1"]
    assert scontrol_log.read_text() == "requeue 4242\n"

    done = subprocess.run(["bash", str(script)], env={**env, "FAKE_TRAINING": "finish"}, timeout=patience(60))
    assert done.returncode == 3  # the stand-in students find no teacher weights
    assert all((run.path / "job.out").exists() for run in runs)


@pytest.mark.parametrize("starts", [True, False])
def test_a_pack_job_shares_its_gpu_through_an_mps_daemon_of_its_own(
    tmp_path: Path, experiments: Path, starts: bool
) -> None:
    """--mps: the job starts a CUDA MPS control daemon in a folder it makes, its trainings are the
    daemon's clients, and it tells the daemon to quit and removes the folder when they have ended. A
    daemon that does not start leaves the runs to share the GPU without it. One run, or no GPU: no MPS."""
    python = fake_training(tmp_path / "python")
    args, extra = runner.parse_args(grid(experiments, "--distillations", "kd", "--runs", "2"))
    runs = plan(args, extra)
    settings = sweep.JobSettings(Resources(gpus=1), str(python), mps=True)
    assert "\nmps=no\n" in sweep.render_job(runs[:1], SlurmScheduler("someone"), settings)
    assert "\nmps=no\n" in sweep.render_job(
        runs, SlurmScheduler("someone"), dataclasses.replace(settings, resources=Resources(gpus=0))
    )
    script = runs[0].path / "run.job"
    for run in runs:
        run.path.mkdir(parents=True)
    script.write_text(sweep.render_job(runs, SlurmScheduler("someone"), settings))
    fake_bin, temporary, calls = tmp_path / "bin", tmp_path / "tmp", tmp_path / "mps.log"
    fake_bin.mkdir()
    temporary.mkdir()
    tool(
        fake_bin,
        "nvidia-cuda-mps-control",
        f'echo "$* $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY '
        f'$([ "$1" = -d ] || cat)" >> {calls}\n' + ("" if starts else "exit 1\n"),
    )
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "TMPDIR": str(temporary), "FAKE_TRAINING": "exit"}

    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=patience(60))

    assert done.returncode == 0, done.stdout + done.stderr
    folders = [(run.path / "mps.txt").read_text() for run in runs]
    if starts:
        assert folders[0] == folders[1] and Path(folders[0]).parent == temporary and "td-mps." in folders[0]
        assert calls.read_text().splitlines() == [f"-d {folders[0]} {folders[0]} ", f" {folders[0]} {folders[0]} quit"]
    else:
        assert folders == ["", ""] and "CUDA MPS did not start: the runs share the GPU without it" in done.stdout
    assert list(temporary.iterdir()) == []


@pytest.mark.parametrize("stop, requeued", [(signal.SIGTERM, ""), (signal.SIGUSR1, "requeue 4242\n")])
def test_a_stop_before_the_trainings_start_leaves_no_daemon_and_starts_none(
    tmp_path: Path, experiments: Path, stop: signal.Signals, requeued: str
) -> None:
    """A signal while the job starts its MPS daemon (it used to end the job there, leaving the daemon
    running and its folder in $TMPDIR): no training starts, the daemon is told to quit, its folder is
    removed, and the job ends as stopped (75), requeued after USR1."""
    python = fake_training(tmp_path / "python")
    runs = kd_runs(experiments, 2)
    script = runs[0].path / "run.job"
    script.write_text(
        sweep.render_job(runs, SlurmScheduler("someone"), sweep.JobSettings(Resources(gpus=1), str(python), mps=True))
    )
    fake_bin, temporary, calls, starting, release = (
        tmp_path / name for name in ("bin", "tmp", "calls", "starting", "release")
    )
    fake_bin.mkdir()
    temporary.mkdir()
    tool(
        fake_bin,
        "nvidia-cuda-mps-control",
        f'echo "$* $([ "$1" = -d ] || cat)" >> {calls}\n'
        f'if [ "$1" = -d ]; then touch {starting}; until [ -e {release} ]; do sleep 0.05; done; fi\n',
    )
    tool(fake_bin, "scontrol", f'echo "$*" >> {calls}\n')
    env = {
        **os.environ,
        "PATH": f"{fake_bin}:{os.environ['PATH']}",
        "TMPDIR": str(temporary),
        "SLURM_JOB_ID": "4242",
        "FAKE_TRAINING": "exit",
    }

    job = subprocess.Popen(["bash", str(script)], env=env)
    deadline = time.monotonic() + patience(30)
    while not starting.exists():
        assert time.monotonic() < deadline and job.poll() is None, "the stand-in daemon never started"
        time.sleep(0.05)
    job.send_signal(stop)
    release.touch()

    assert job.wait(timeout=patience(30)) == 75
    assert not any((run.path / "argv.json").exists() for run in runs) and list(temporary.iterdir()) == []
    assert calls.read_text() == "-d \n quit\n" + requeued


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--gpus_per_node", "2"],
            "--runs_per_gpu 2 packs small runs onto one GPU; a run over --nodes/--gpus_per_node",
        ),
        (
            ["--gpus", "2"],
            "--runs_per_gpu 2 packs runs onto one GPU, which they share; --gpus 2 would give the job GPUs no run uses",
        ),
    ],
)
def test_runs_per_gpu_is_refused_with_gpus_of_its_own(cli, experiments: Path, flags: list[str], message: str) -> None:
    status, _, err = cli(
        [*grid(experiments, "--distillations", "kd", "--runs", "1"), "--runs_per_gpu", "2", *flags], FakeSlurm()
    )
    assert status == 2 and err.count("\n") == 1, err
    assert message in err
    assert not experiments.exists()


@pytest.mark.parametrize(
    "environment, threads",
    [({"SLURM_CPUS_PER_TASK": "6"}, "2"), ({"OMP_NUM_THREADS": "8"}, "2"), ({"OMP_NUM_THREADS": "2"}, "1"), ({}, "")],
)
def test_the_runs_of_a_job_share_its_cpus(experiments: Path, environment: dict[str, str], threads: str) -> None:
    """Three runs in one job: SLURM's CPUs per task, or PBS's OMP_NUM_THREADS, divided among them
    (at least one each); no setting where neither scheduler gave one."""
    args, extra = runner.parse_args(grid(experiments, "--distillations", "kd", "--runs", "3"))
    script = sweep.render_job(plan(args, extra), SlurmScheduler("someone"), sweep.JobSettings(Resources(), "python"))
    lines = [line for line in script.splitlines() if line.startswith("trainings=") or "OMP_NUM_THREADS=" in line]
    env = {key: value for key, value in os.environ.items() if key not in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS")}
    done = subprocess.run(
        ["bash", "-c", "\n".join([*lines, 'echo "${OMP_NUM_THREADS:-}"'])],
        env={**env, **environment},
        capture_output=True,
        text=True,
        check=True,
    )
    assert lines[0] == "trainings=3" and done.stdout.strip() == threads


def test_a_study_remembers_its_grid(cli, tmp_path: Path, experiments: Path) -> None:
    """``--study NAME`` records the grid it submits; later, ``--status --study NAME`` alone shows that
    grid (not the default study's), and a flag given then replaces the recorded one."""
    python = fake_training(tmp_path / "python")
    argv = grid(experiments, "--scheduler", "local", "--python", str(python), "--study", "s1")
    status, out, _ = cli([*argv, "--distillations", "featuremap", "kd", "--runs", "1", "--grid", "beta=50,60"])
    assert status == 0, out
    recorded = json.loads((experiments / "s1" / "grid.json").read_text())["argv"]
    assert "--distillations" in recorded and "--status" not in recorded

    status, table, _ = cli(["--experiments_dir", str(experiments), "--study", "s1", "--scheduler", "local", "--status"])
    assert status == 0, table
    finished = [line for line in table.splitlines() if line.startswith("finished ")]
    assert table.splitlines()[-1] == "finished 5, running 0, pending 0, failed 0, not started 0", table
    assert sum(" s1/digits/" in line for line in finished) == 4  # featuremap and kd, beta 50 and 60; and the teacher

    status, table, _ = cli(
        [
            "--experiments_dir",
            str(experiments),
            "--study",
            "s1",
            "--scheduler",
            "local",
            "--status",
            "--grid",
            "beta=50",
        ]
    )
    assert status == 0 and table.splitlines()[-1].startswith("finished 3, "), table
    (experiments / "s1" / "grid.json").write_text("[1, 2]")
    status, _, err = cli(["--experiments_dir", str(experiments), "--study", "s1", "--status"])
    assert status == 2 and "grid.json is not a grid runner.py recorded; it was left as it is" in err
