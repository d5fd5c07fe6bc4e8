"""Two gloo ranks on the CPU train as one process does with the same global batch.

The runs distil with CRD (the method that shares state across ranks: its memory bank) on digits,
through ``distributed_entry.py`` (no BatchNorm: see there), for two epochs of 3 steps at a global
batch of 501 of the 1438 images, so the full steps split unevenly (251 + 250) and the last batch is
smaller (436 = 218 + 218); and with AB, whose initialisation phase trains other parameters with
its own optimiser (each phase its own DDP module), for an epoch of 3 steps of 201 (101 + 100) in
each phase. One process and two ranks reach the same weights and banks to float32 rounding of the
per-rank sums (a few steps at a low lr only: without BatchNorm, at lr 0.1,
rounding grows quickly, and after 23 steps two one-process runs with other thread counts differ
by 1e-3, as much as these do). A run stopped by a signal on one rank, killed with kill -9, and rerun, ends
with exactly the weights of the uninterrupted one, and its TensorBoard curves are that run's, each step once;
an AB run stopped on two ranks within its first phase resumes there and ends as one process's run.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import patience
from tests.test_tensorboard import scalars
from toolbox.config import parse_config
from toolbox.methods.phases import PHASE_RECORD
from toolbox.rundir import EVENT_FILE
from toolbox.training import train
from toolbox.training.curves import STEP_TAGS

REPO = Path(__file__).resolve().parent.parent
ENTRY = str(REPO / "tests" / "distributed_entry.py")
# float32 rounding of sums in another order (measured figures: docs/many-gpus.md)
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}
CRD = ("--distillation", "crd", "--epochs", "2", "--batch_size", "501")
AB = ("--distillation", "ab", "--init_epochs", "1", "--epochs", "1", "--batch_size", "201", "--max_batches", "3")

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or importlib.util.find_spec("torch.distributed.run") is None,
    reason="torch was built without torch.distributed (torchrun)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(root: Path, name: str, *flags: str) -> list[str]:
    """The training command of run ``name``; ``flags``: the method, epochs and batches (``CRD``, ``AB``), and more."""
    return [
        ENTRY,
        "--teacher",
        "ResNetBaby",
        "--teacher_checkpoint",
        str(root / "teacher.pth"),
        "--student",
        "ResNetBaby",
        "--dataset",
        "digits",
        "--lr",
        "0.01",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--data_dir",
        str(root / "data"),
        "--experiments_dir",
        str(root / "runs"),
        "--experiment_name",
        name,
        "--tensorboard_every",
        "1",
        *flags,
    ]


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def torchrun(root: Path, name: str, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            *command(root, name, *flags),
        ],
        env=environment(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_ranks(
    root: Path, name: str, *flags: str, step_seconds: float = 0, rank_flags: tuple[list[str], ...] = ([], [])
) -> list[subprocess.Popen]:
    """Two ranks started as torchrun starts them, to read each one's status and stderr; each step
    takes ``step_seconds`` longer (distributed_entry.slow_steps); rank r adds ``rank_flags[r]``."""
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, *command(root, name, *flags), *rank_flags[rank]],
            cwd=REPO,
            env={
                **environment(),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "ENTRY_STEP_SECONDS": str(step_seconds),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]


def last(root: Path, name: str) -> dict:
    return torch.load(root / "runs" / name / "last.pt", weights_only=True)


def assert_close(one: dict, two: dict, exact: bool = False) -> None:
    for key in ("student", "distiller"):
        assert one[key].keys() == two[key].keys()
        for entry in one[key]:
            if exact:
                assert torch.equal(two[key][entry], one[key][entry]), f"{key}.{entry}"
            else:
                torch.testing.assert_close(two[key][entry], one[key][entry], **TOLERANCE, msg=f"{key}.{entry}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher, and the same CRD run trained by one process ('one') and by two ranks ('two');
    meanwhile AB's one-process run ('ab_one'), here, with the entry point's models and methods."""
    root = tmp_path_factory.mktemp("distributed")
    sys.path.insert(0, str(REPO / "tests"))
    from distributed_entry import remove_batchnorm, without_batchnorm

    from toolbox.models import MODELS

    torch.manual_seed(1)
    torch.save({"weights": without_batchnorm(MODELS["ResNetBaby"])(10).state_dict()}, root / "teacher.pth")
    one = subprocess.Popen(
        [sys.executable, *command(root, "one", *CRD)],
        env=environment(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    two = torchrun(root, "two", *CRD)
    with pytest.MonkeyPatch.context() as patch:
        remove_batchnorm(patch.setitem)
        train(parse_config(command(root, "ab_one", *AB)[1:]))
    for process in (one, two):
        output = process.communicate(timeout=patience(120))[0]
        assert process.returncode == 0, output
    return root


def test_two_ranks_train_as_one_process(runs: Path) -> None:
    """Same weights, CRD banks and Z to float32 rounding; the same files, written once by rank 0."""
    one, two = last(runs, "one"), last(runs, "two")
    assert_close(one, two)
    assert one["history"]["test_acc"] == pytest.approx(two["history"]["test_acc"], abs=0.5)  # one image in 360 may flip

    def files(name: str) -> list[str]:
        return sorted(
            "<events>" if EVENT_FILE.fullmatch(path.name) else path.name for path in (runs / "runs" / name).iterdir()
        )

    assert files("two") == files("one") and files("two").count("<events>") == 1
    steps_one, steps_two = scalars(runs / "runs" / "one" / "steps"), scalars(runs / "runs" / "two" / "steps")
    for tag in STEP_TAGS:  # each step's losses are the means over both ranks' rows
        assert [step for step, _ in steps_two[tag]] == [1, 2, 3, 4, 5, 6]
        assert [value for _, value in steps_two[tag]] == pytest.approx([value for _, value in steps_one[tag]], rel=1e-5)
    log = (runs / "runs" / "two" / "train.log").read_text().splitlines()
    assert len(log) == 4 and log[0].split("  ", 1)[1].startswith("training "), log  # start, two epochs, result
    config = (runs / "runs" / "two" / "config.json").read_text()
    assert '"world_size": 2' in config


def test_crd_bank_is_the_same_on_one_and_two_ranks(runs: Path) -> None:
    one, two = last(runs, "one")["distiller"], last(runs, "two")["distiller"]
    for bank in ("memory_s", "memory_t", "z"):
        torch.testing.assert_close(two[bank], one[bank], **TOLERANCE)


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + patience(timeout)
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_stopped_and_killed_runs_resume_to_the_uninterrupted_one(runs: Path) -> None:
    """SIGUSR1 to rank 1 alone stops both ranks after the same step with status 75 (ranks started
    as torchrun starts them, to read each one's status); then kill -9 of rank 1 makes rank 0 fail
    with one line; the next run, under torchrun, resumes and ends where the uninterrupted one did."""
    log = runs / "runs" / "stopped" / "train.log"
    ranks = start_ranks(runs, "stopped", *CRD, "--log_every", "1", step_seconds=0.5)
    wait_for(log, "step 1/3", ranks[0])
    ranks[1].send_signal(signal.SIGUSR1)
    errors = [rank.communicate(timeout=patience(60))[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [75, 75], errors
    assert "error: stopped by signal on another rank" in errors[0] and errors[1] == "", errors

    ranks = start_ranks(runs, "stopped", *CRD, "--log_every", "1")
    wait_for(log, "step 3/3", ranks[0])
    ranks[1].kill()
    error = ranks[0].communicate(timeout=patience(60))[1]
    assert ranks[0].returncode == 1 and error.count("\n") == 1, error
    assert error.startswith("error: rank 0 lost another rank of this run (") and "rerun the same command" in error

    job = torchrun(runs, "stopped", *CRD)
    output = job.communicate(timeout=patience(120))[0]
    assert job.returncode == 0 and "resuming" in output, output
    assert_close(last(runs, "two"), last(runs, "stopped"), exact=True)
    assert scalars(runs / "runs" / "stopped" / "steps") == scalars(runs / "runs" / "two" / "steps")


def test_a_two_phase_run_stopped_in_its_first_phase_trains_as_one_process(runs: Path) -> None:
    """AB on two ranks, stopped by SIGUSR1 to rank 1 within its initialisation (the student's stem
    and stages, with its own SGD) and resumed under torchrun in that phase, then its main phase
    (the whole student, the head too): each phase averages its own parameters' gradients over the
    ranks, so the weights and the initialisation's record are one process's to float32 rounding."""
    ranks = start_ranks(runs, "ab_two", *AB, "--log_every", "1", step_seconds=1)  # the signal lands within the epoch
    wait_for(runs / "runs" / "ab_two" / "train.log", "init epoch 1/1  step 1/3", ranks[0])
    ranks[1].send_signal(signal.SIGUSR1)
    errors = [rank.communicate(timeout=patience(60))[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [75, 75], errors
    stopped = last(runs, "ab_two")
    assert stopped["phase_history"] == [] and stopped["position"] is not None  # within the initialisation's epoch

    job = torchrun(runs, "ab_two", *AB)
    output = job.communicate(timeout=patience(120))[0]
    assert job.returncode == 0 and "resuming" in output, output
    one, two = last(runs, "ab_one"), last(runs, "ab_two")
    assert_close(one, two)
    assert len(two["phase_history"]) == len(one["phase_history"]) == 1
    for key in PHASE_RECORD:
        assert two["phase_history"][0][key] == pytest.approx(one["phase_history"][0][key], rel=1e-5), key


def test_sync_bn_on_cpu_ranks_is_one_line_before_any_folder(tmp_path: Path) -> None:
    """SyncBatchNorm runs on CUDA only: under torchrun on the CPU, --sync_bn is refused by every rank
    (rank 0 says it), exit 2, and no run folder is made."""
    ranks = start_ranks(tmp_path, "sync", "--distillation", "none", "--epochs", "1", "--sync_bn")
    errors = [rank.communicate(timeout=patience(60))[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2], errors
    assert errors[0].count("\n") == 1 and "--sync_bn synchronises BatchNorm over GPUs" in errors[0] and errors[1] == ""
    assert not (tmp_path / "runs").exists()


def test_ranks_started_with_other_flags_or_files_stop_in_one_line_before_writing(tmp_path: Path) -> None:
    """Two nodes of one run whose flags differ would train rank 0's run with another's batches; a
    node that sees another last.pt (a stale copy) would resume another state: every rank stops,
    rank 0 says how in one line, exit 2, and nothing is written."""
    plain = ("r", "--distillation", "none", "--epochs", "1")
    ranks = start_ranks(tmp_path, *plain, rank_flags=(["--lr", "0.05"], ["--lr", "5", "--seed", "7"]))
    errors = [rank.communicate(timeout=patience(60))[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2] and errors[1] == "", errors
    assert errors[0].count("\n") == 1 and "rank 1 of this run was started with other flags than rank 0" in errors[0]
    assert "--lr 5.0 there, 0.05 on rank 0; --seed 7 there, 0 on rank 0" in errors[0]
    assert not (tmp_path / "runs").exists()

    stale = tmp_path / "stale"
    (stale / "r").mkdir(parents=True)
    (stale / "r" / "last.pt").write_bytes(b"rank 1 sees this copy")
    ranks = start_ranks(tmp_path, *plain, rank_flags=([], ["--experiments_dir", str(stale)]))
    errors = [rank.communicate(timeout=patience(60))[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [2, 2] and errors[1] == "", errors
    assert errors[0].count("\n") == 1 and "rank 1 of this run was started with other files in" in errors[0]
    assert "(its last.pt is another file)" in errors[0]
    assert sorted(path.name for path in (stale / "r").iterdir()) == ["last.pt"]  # nothing written


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_rank_exits_with_its_status_and_its_output_but_skips_the_teardown(world_size: str) -> None:
    """A rank leaves through os._exit (the interpreter's teardown races gloo's worker threads, which
    DDP keeps alive, and aborts a finished run at random): its status and its buffered output stay,
    and the teardown (atexit) is skipped there only; a process on its own exits as any script does."""
    script = (
        "import atexit, sys; from toolbox.cli import exit_process; "
        "atexit.register(lambda: print('teardown')); print('done', end=''); print('said', file=sys.stderr, end=''); "
        "exit_process(75)"
    )
    env = {**os.environ, "WORLD_SIZE": world_size, "PYTHONPATH": str(REPO)}
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO)
    assert ended.returncode == 75 and ended.stderr == "said"
    assert ended.stdout == ("done" if world_size == "2" else "doneteardown\n")
