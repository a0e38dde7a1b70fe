"""Faults and signals (docs/reliability.md): a run stopped by SIGTERM or Ctrl-C exits non-zero, keeps and marks
its folder and says how to resume; a folder that holds a run is never trained into afresh; a failed run's folder
is tidied without hiding the error."""

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.errors import UserError
from src.runs.folders import config_subdir
from src.runs.guard import guarded_run, tidied_on_failure
from src.runs.marks import INTERRUPTED
from src.runs.resume import read_checkpoint
from src.training.trainer import build_trainer
from tests.conftest import QUICK, ROOT, TINY_VIT, compose_config, mount_tmpfs, run_cli

# tiny epochs of ~180 batches of digits: long enough to send a signal inside one
SIGNALLED = ["data=digits", *TINY_VIT, *QUICK, "trainer.max_epochs=20", "data.batch_size=8",
             "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"]  # fmt: skip


def start_train(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "src.train", *args], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip


def wait_for(pattern: str, folder: Path, process: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 600
    while not (found := list(folder.glob(pattern))):
        assert process.poll() is None, f"the run ended before {pattern} existed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return found[0]


def error_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_sigterm_mid_fit_exits_143_saves_last_checkpoint_and_marks_the_run(tmp_path):
    log = tmp_path / "out.log"
    run = start_train(*SIGNALLED, f"paths.log_dir={tmp_path}", log=log)
    last = wait_for("train/runs/*/checkpoints/last.ckpt", tmp_path, run)  # epoch 0 done
    epoch_0 = torch.load(last, weights_only=True)["global_step"]
    time.sleep(0.5)  # into epoch 1's batches: SIGTERM during epoch 0's saves stops the fit at their end
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=300) == 143, log.read_text()[-3000:]
    run_dir = last.parent.parent
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] >= 1 and saved["global_step"] > epoch_0, "last.ckpt not saved when the run stopped"
    (line,) = error_lines(log)
    assert "SIGTERM" in line and f"ckpt_path={last}" in line and "Traceback" not in log.read_text()
    assert "SIGTERM" in (run_dir / INTERRUPTED).read_text()

    resumed = run_cli(
        "src.train", *SIGNALLED, "trainer.max_epochs=2", f"ckpt_path={last}", f"paths.log_dir={tmp_path}"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "summary.json").is_file() and not (run_dir / INTERRUPTED).exists()


@pytest.mark.slow
def test_ctrl_c_before_any_checkpoint_keeps_the_folder_marked_and_exits_130(tmp_path):
    log = tmp_path / "out.log"
    run = start_train(*SIGNALLED, f"paths.log_dir={tmp_path}", log=log)
    events = wait_for("train/runs/*/tensorboard/events.*", tmp_path, run)  # the fit has started
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=300) == 130, log.read_text()[-3000:]
    run_dir = events.parent.parent
    assert (
        run_dir.is_dir() and (run_dir / "train.log").is_file() and list((run_dir / "tensorboard").iterdir())
    )
    assert not list(run_dir.rglob("*.ckpt"))
    (line,) = error_lines(log)
    assert "SIGINT" in line and "no checkpoint" in line and str(run_dir) in line
    assert "SIGINT" in (run_dir / INTERRUPTED).read_text()


def test_sigterm_outside_a_trainer_call_stops_the_run_with_143_and_marks_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped, guarded_run(tmp_path):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises first
    assert stopped.value.code == 143
    assert "SIGTERM" in (tmp_path / INTERRUPTED).read_text()
    assert capsys.readouterr().err.startswith("error: stopped by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, "the handler before is restored"


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "Lightning's sys.exit(1)"])
def test_ctrl_c_keeps_a_folder_with_nothing_saved_and_marks_it(how, tmp_path, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped, guarded_run(run_dir):
        (run_dir / "train.log").write_text("the steps done\n")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            if how != "KeyboardInterrupt":
                sys.exit(1)
            raise
    assert stopped.value.code == 130
    assert (run_dir / "train.log").read_text() == "the steps done\n"
    assert "SIGINT" in (run_dir / INTERRUPTED).read_text()
    assert "no checkpoint" in capsys.readouterr().err


def test_a_run_that_finishes_is_no_longer_marked_interrupted(tmp_path):
    (tmp_path / INTERRUPTED).write_text("stopped by SIGTERM\n")
    with guarded_run(tmp_path):
        pass
    assert not (tmp_path / INTERRUPTED).exists()


def files_and_times(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_fresh_run_into_a_folder_that_holds_a_run_is_refused_and_touches_nothing(tmp_path):
    run_dir = tmp_path / "run"
    for name, text in [(".hydra/config.yaml", "seed: 1\n"), ("checkpoints/last.ckpt", "weights"),
                       ("summary.json", "{}\n"), ("train.log", "the first run\n")]:  # fmt: skip
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(text)
    before = files_and_times(run_dir)
    result = run_cli("src.train", "data=digits", *TINY_VIT, *QUICK, f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {run_dir} holds a run already")
    assert f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}" in line and "new folder" in line
    assert files_and_times(run_dir) == before


def test_a_requeued_slurm_job_may_continue_in_its_run_dir(tmp_path, monkeypatch):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 1\n")
    with pytest.raises(UserError, match="holds a run already"):
        config_subdir(str(tmp_path))
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")  # Lightning resumes it by itself
    assert config_subdir(str(tmp_path)).startswith(".hydra/resumed_")
    assert config_subdir(str(tmp_path / "other"), None) == ".hydra"


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(size, read_only): a folder on a tmpfs of that size (skipped where this process may not mount
    one)."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        if not mount_tmpfs(folder, size, read_only):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize(("size", "epochs", "saved"), [("120k", 1, None), ("450k", 3, 0)])
def test_a_full_disk_during_a_fit_is_one_line_keeps_the_last_checkpoint_and_marks_the_run(
    size, epochs, saved, small_disk
):
    """At the first save (nothing saved yet), and at a later one (last.ckpt of epoch 0 saved before)."""
    log_dir = small_disk(size)
    result = run_cli("src.train", "data=digits", *TINY_VIT, *QUICK, f"trainer.max_epochs={epochs}",
                     "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2", "data.batch_size=8",
                     f"paths.log_dir={log_dir}")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"no space left on tmpfs at {log_dir} for " in line and "free, at least" in line
    assert "Traceback" not in result.stderr and "inline_container" not in result.stderr
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    assert (run_dir / INTERRUPTED).is_file() and "Traceback" in (run_dir / "train.log").read_text()
    last = run_dir / "checkpoints" / "last.ckpt"
    if saved is None:
        assert "saved no checkpoint yet" in line and not last.exists()
    else:
        assert torch.load(last, weights_only=True)["epoch"] == saved and f"ckpt_path={last}" in line


def test_a_second_crash_into_the_same_folder_keeps_both_and_shows_its_own_error(tmp_path):
    run_dir = tmp_path / "run"
    for attempt in (1, 2):
        with pytest.raises(RuntimeError, match=f"crash {attempt}"), guarded_run(run_dir):
            raise RuntimeError(f"crash {attempt}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_failed", "run_failed_2"]


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["src.eval", "src.predict", "src.export", "src.explain"])
def test_a_command_that_fails_on_bad_input_leaves_no_folder(entry, tmp_path):
    missing = tmp_path / "nope.ckpt"
    inputs = [f"inputs={tmp_path}"] if entry in ("src.predict", "src.explain") else []
    result = run_cli(entry, f"ckpt_path={missing}", *inputs, f"paths.log_dir={tmp_path / 'outputs'}")
    assert result.returncode == 2 and f"checkpoint not found: {missing}" in result.stderr, result.stderr[
        -3000:
    ]
    assert not list((tmp_path / "outputs").glob("*/runs/*")), "a folder with only .hydra and a log"


def test_a_read_only_command_keeps_its_results_and_tidies_a_folder_without_any(tmp_path):
    def fail(run_dir: Path, error: BaseException) -> None:
        with pytest.raises(type(error)), tidied_on_failure(run_dir):
            (run_dir / ".hydra").mkdir(parents=True)
            (run_dir / "predict.log").write_text("the traceback\n")
            raise error

    fail(tmp_path / "bad_input", UserError("bad input"))
    fail(tmp_path / "crash", RuntimeError("a bug"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crash_failed"]
    (tmp_path / "with_results").mkdir()
    (tmp_path / "with_results" / "predictions.csv").write_text("path,class\n")
    fail(tmp_path / "with_results", UserError("bad input"))
    assert (tmp_path / "with_results" / "predictions.csv").is_file()


@pytest.mark.parametrize("kept", [0, 5000])
def test_a_truncated_last_ckpt_is_named_so_and_the_other_checkpoint_of_its_run_offered(kept, tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    checkpoint = {"state_dict": {"w": torch.ones(5000)}, "hyper_parameters": {"backbone": {"name": "vit"}},
                  "pytorch-lightning_version": "2.6.6"}  # fmt: skip
    torch.save(checkpoint, folder / "epoch_003.ckpt")
    torch.save(checkpoint, folder / "last.ckpt")
    (folder / "last.ckpt").write_bytes((folder / "last.ckpt").read_bytes()[:kept])
    with pytest.raises(UserError) as error:
        read_checkpoint(folder / "last.ckpt")
    message = str(error.value)
    assert (
        f"{folder / 'last.ckpt'} is not a checkpoint written by src.train (it is cut short: {kept} bytes"
        in message
    )
    assert message.endswith(
        f"Resume from another checkpoint of its run: ckpt_path={folder / 'epoch_003.ckpt'}"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_trainer_on_a_machine_without_one_is_a_user_error_naming_the_setting(tmp_path):
    cfg = compose_config("train", ["data=digits", "trainer.accelerator=gpu"], tmp_path)
    with pytest.raises(
        UserError, match=r"^trainer.accelerator=gpu, trainer.devices=1: No supported gpu backend"
    ):
        build_trainer(cfg)


@pytest.mark.parametrize(("entry", "read_only", "message"), [
    ("src.train", True, "cannot write {disk}/train: Read-only file system. Pass paths.log_dir="),
    ("src.train", False, "no space left on tmpfs at {disk} for {disk}/train/runs/"),
    ("src.eval", False, "no space left on tmpfs at {disk} for {disk}/eval/runs/"),
])  # fmt: skip
def test_an_outputs_folder_that_cannot_be_written_is_one_line_and_leaves_nothing(
    entry, read_only, message, small_disk
):
    disk = small_disk("4k", read_only)  # 4k: Hydra's folders fit, its config files do not
    result = run_cli(entry, "data=digits", f"paths.log_dir={disk}")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: " + message.format(disk=disk)), line
    assert not list(disk.glob("*/runs/*")), "a folder of what Hydra wrote before it failed"


def test_a_resume_into_a_run_another_process_holds_is_one_line_and_writes_nothing_there(tmp_path):
    """Two resumes started together both find the run free; the second to reach Hydra's config copy is refused
    there, before it writes into the first one's folder (forced here with hydra.run.dir: no resolver looks)."""
    run_dir = tmp_path / "run"
    for name in (".hydra/config.yaml", "checkpoints/last.ckpt", "train.log"):
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text(name)
    with open(run_dir / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the winning src.train holds it
        lock.write("pid 1 on elsewhere\n")
        lock.flush()
        before = files_and_times(run_dir)
        result = run_cli("src.train", "data=digits", f"hydra.run.dir={run_dir}",
                         f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [f"error: {run_dir} is being written by pid 1 on elsewhere: wait for it "
                                          "to end (or stop it) before resuming this run"]  # fmt: skip
    assert files_and_times(run_dir) == before
