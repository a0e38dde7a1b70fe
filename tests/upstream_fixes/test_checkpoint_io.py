"""Checkpoints are written all or nothing, by the CheckpointIO every Trainer of the configs gets: a full disk or a
kill during a save leaves the previous checkpoint loadable, no temp file, and new files get the usual mode."""

import errno
import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from src.upstream_fixes.disk_space import DiskFullError
from tests.conftest import QUICK, ROOT, TINY_VIT, compose_config, mount_tmpfs, run_cli

PAYLOAD = {"state_dict": {"w": torch.arange(300_000, dtype=torch.float32)}}  # 1.2 MB


def configured_io(tmp_path):
    cfg = compose_config("train", ["trainer.accelerator=cpu", "logger=none", "callbacks=none"], tmp_path)
    return instantiate(cfg.trainer).strategy.checkpoint_io


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs when this process may mount one (root); otherwise a folder whose writes fail with ENOSPC
    after 1 MiB (a wrapper around os.write / file writes is not possible for torch.save's C++ writer, so the
    fallback makes fsync fail with ENOSPC, which is where a full NFS reports it)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = mount_tmpfs(folder, "1m")
    yield folder, mounted
    if mounted:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_temp_file(tmp_path, small_fs, monkeypatch):
    folder, mounted = small_fs
    io = configured_io(tmp_path)
    path = folder / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(10)}}, path)
    if not mounted:

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # another file system than the destination when mounted
    with pytest.raises(DiskFullError) as error:  # not torch's "inline_container.cc: unexpected pos"
        io.save_checkpoint(PAYLOAD, path)
    assert str(error.value).startswith(f"no space left on {'tmpfs at ' + str(folder) if mounted else ''}")
    assert f"for {path}: " in str(error.value) and " free, at least 1.1 MiB needed" in str(error.value)
    assert "the previous last.ckpt is intact" in str(error.value)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(10))
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]


def test_a_new_checkpoint_gets_the_mode_of_any_new_file(tmp_path):
    io = configured_io(tmp_path)
    umask = os.umask(0o022)
    try:
        io.save_checkpoint(PAYLOAD, tmp_path / "a.ckpt")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.ckpt").stat().st_mode & 0o777 == 0o644


WRITER = textwrap.dedent(
    """
    import sys, torch
    from hydra.utils import instantiate
    from tests.conftest import compose_config
    from pathlib import Path
    cfg = compose_config("train", ["trainer.accelerator=cpu", "logger=none", "callbacks=none"], Path(sys.argv[1]))
    io = instantiate(cfg.trainer).strategy.checkpoint_io
    payload = {"state_dict": {"w": torch.randn(4_000_000)}}  # 16 MB: each save takes a while
    for n in range(10**6):
        for folder in sys.argv[2:]:
            io.save_checkpoint({**payload, "n": n}, Path(folder) / "last.ckpt")
        print(n, flush=True)
    """
)


@pytest.mark.slow
def test_killing_the_writer_at_random_points_leaves_loadable_checkpoints(tmp_path):
    """Two file systems (the disk under tmp_path and the /dev/shm tmpfs), TMPDIR on the tmpfs as in the report."""
    disk, shm = tmp_path / "disk", Path("/dev/shm") / f"ckpt_test_{os.getpid()}"
    disk.mkdir()
    shm.mkdir()
    env = {**os.environ, "TMPDIR": str(shm), "PYTHONPATH": str(ROOT)}
    rng = random.Random(0)
    try:
        for _ in range(4):
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(tmp_path), str(disk), str(shm)],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            writer.stdout.readline()  # both files exist once the first round is saved
            time.sleep(rng.uniform(0.0, 1.5))
            writer.kill()
            writer.wait()
            for folder in (disk, shm):
                checkpoint = torch.load(folder / "last.ckpt", weights_only=True)
                assert checkpoint["state_dict"]["w"].numel() == 4_000_000
        assert not list(Path(shm).glob("tmp*")), "nothing is staged in TMPDIR"
    finally:
        for path in shm.iterdir():
            path.unlink()
        shm.rmdir()


@pytest.mark.slow
def test_a_run_killed_while_saving_with_tmpdir_on_a_tmpfs_resumes(tmp_path):
    """The report's case: TMPDIR=/dev/shm, outputs/ on the disk, kill -9 while checkpoints are being written
    (one every step), then ckpt_path=last."""
    overrides = ["data=digits", *TINY_VIT, *QUICK, "trainer.max_epochs=40", "+trainer.limit_train_batches=2",
                 "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "data.batch_size=8",
                 "+callbacks.last_checkpoint.every_n_train_steps=1", f"paths.log_dir={tmp_path}"]  # fmt: skip
    env = {**os.environ, "TMPDIR": "/dev/shm", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.Popen([sys.executable, "-m", "src.train", *overrides], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while not list(tmp_path.glob("train/runs/*/checkpoints/epoch_*.ckpt")) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(random.Random(1).uniform(0.5, 3.0))
    run.kill()
    run.wait()
    checkpoints = list(tmp_path.glob("train/runs/*/checkpoints/*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        torch.load(path, weights_only=True)
    (last,) = tmp_path.glob("train/runs/*/checkpoints/last.ckpt")
    epochs = torch.load(last, weights_only=True)["epoch"] + 2  # one more epoch, wherever the kill landed
    result = run_cli(
        "src.train", *overrides[:-2], f"trainer.max_epochs={epochs}", "ckpt_path=last", overrides[-1]
    )
    assert result.returncode == 0, result.stderr[-3000:]
