"""A fit resumed on another number of processes: from an epoch's end it goes on; from the middle of an epoch,
whose data order it cannot keep, it stops with one error line (src/runs/world_size.py). And what a requeued SLURM
job resumes (src/runs/folders.py)."""

import logging

import pytest
import torch

from src.errors import UserError
from src.runs.folders import requeued_checkpoint
from src.runs.world_size import check_world_size
from tests.conftest import EVERY_STEP_CHECKPOINTS, QUICK, TINY_VIT, run_cli


def saved(world_size: int | None, is_last_batch: bool) -> dict:
    """A checkpoint's fields the rule reads, as Lightning and WorldSizeCheck write them."""
    progress = {"epoch_loop.batch_progress": {"is_last_batch": is_last_batch}}
    return {"epoch": 1, "world_size": world_size, "loops": {"fit_loop": progress}}


def test_a_mid_epoch_checkpoint_resumes_only_on_its_own_world_size():
    check_world_size(saved(4, is_last_batch=False), 4)
    with pytest.raises(UserError, match=r"middle of epoch 1 by 4 processes, and the fit resumes on 2"):
        check_world_size(saved(4, is_last_batch=False), 2)


def test_an_epoch_end_checkpoint_resumes_on_any_world_size_and_says_the_batch_changed(caplog):
    with caplog.at_level(logging.WARNING):
        check_world_size(saved(4, is_last_batch=True), 2)
    assert "resuming on 2 processes a fit saved on 4" in caplog.text


def test_a_checkpoint_without_its_world_size_is_not_checked():
    check_world_size(saved(None, is_last_batch=False), 2)


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_of_one_process_resumed_on_two_is_one_error_line(tmp_path):
    common = ["data=digits", *TINY_VIT, *QUICK, "+trainer.limit_train_batches=4", f"paths.log_dir={tmp_path}"]
    first = run_cli("src.train", *common, *EVERY_STEP_CHECKPOINTS, "test=false")
    assert first.returncode == 0, first.stderr[-3000:]
    (mid_epoch,) = tmp_path.glob("train/runs/*/checkpoints/step_2.ckpt")
    assert torch.load(mid_epoch, weights_only=True)["world_size"] == 1
    resumed = run_cli("src.train", *common, "trainer=ddp", "trainer.devices=2", "trainer.max_epochs=2",
                      f"ckpt_path={mid_epoch}")  # fmt: skip
    assert resumed.returncode == 2
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert errors and "middle of epoch 0 by 1 processes, and the fit resumes on 2" in errors[0], (
        resumed.stderr[-2000:]
    )


def test_a_requeued_job_resumes_its_checkpoint_with_the_most_steps(tmp_path, monkeypatch):
    """hpc_ckpt_<n> (SLURM's signal) or last.ckpt (saved after it, or the only one when a node died), the hpc one
    on a tie; nothing outside a requeued job."""
    hpc, last = tmp_path / "hpc_ckpt_1.ckpt", tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert requeued_checkpoint(tmp_path) is None
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeued_checkpoint(tmp_path) is None
    torch.save({"global_step": 20}, last)
    assert requeued_checkpoint(tmp_path) == last
    torch.save({"global_step": 30}, hpc)
    assert requeued_checkpoint(tmp_path) == hpc
    torch.save({"global_step": 30}, last)
    assert requeued_checkpoint(tmp_path) == hpc
    torch.save({"global_step": 31}, last)
    assert requeued_checkpoint(tmp_path) == last
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert requeued_checkpoint(tmp_path) is None
