"""python -m src.average: the mean of a run's top-k checkpoints, written as a new checkpoint src.eval takes."""

import pytest
import torch

from src.errors import UserError
from src.runs.averaging import average_top_k
from src.runs.resume import check_resume
from src.train import train
from tests.conftest import QUICK, TINY_VIT, compose_config, run_cli

RUN = ["data=digits", *TINY_VIT, *QUICK, "trainer.max_epochs=3", "+trainer.limit_train_batches=2",
       "+trainer.limit_val_batches=2", "test=false", "callbacks.model_checkpoint.save_top_k=2",
       "callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"]  # fmt: skip


@pytest.mark.slow
def test_average_of_two_checkpoints_is_their_mean_and_evaluates(tmp_path):
    run = tmp_path / "run"
    train(compose_config("train", RUN, run))
    folder = run / "checkpoints"
    kept = {}
    for path in folder.glob("epoch_*.ckpt"):
        state = next(
            s for key, s in torch.load(path, weights_only=True)["callbacks"].items() if "val/loss" in key
        )
        kept[path.name] = float(state["current_score"])
    assert len(kept) == 2  # the two lowest val/loss of three epochs

    result = run_cli("src.average", f"run_dir={run}", "k=2", f"paths.log_dir={tmp_path / 'logs'}")
    assert result.returncode == 0, result.stderr[-2000:]
    averaged = torch.load(folder / "average_top2.ckpt", weights_only=True)
    first, second = (torch.load(folder / name, weights_only=True)["state_dict"] for name in sorted(kept))
    for name, tensor in averaged["state_dict"].items():
        assert torch.equal(tensor, (first[name] + second[name]) / 2), name
    assert averaged["averaged_from"] == pytest.approx(kept)

    evaluated = run_cli("src.eval", f"ckpt_path={folder / 'average_top2.ckpt'}", *QUICK[1:],
                        f"paths.log_dir={tmp_path / 'logs'}")  # fmt: skip
    assert evaluated.returncode == 0 and "test/acc" in evaluated.stdout + evaluated.stderr, evaluated.stderr[
        -2000:
    ]

    again = run_cli("src.average", f"run_dir={run}", "k=2", f"paths.log_dir={tmp_path / 'logs'}")
    assert again.returncode == 2 and "exists already" in again.stderr and "Traceback" not in again.stderr
    with pytest.raises(UserError, match="holds weights only .* no training state to resume"):
        check_resume(folder / "average_top2.ckpt", None, None, None, None)
    with pytest.raises(UserError, match=r"has 2 checkpoints .* k=3 needs 3: train with .*save_top_k=3"):
        average_top_k(run, 3)


def test_a_folder_without_checkpoints_is_a_user_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="has 0 checkpoints"):
        average_top_k(tmp_path, 2)
    with pytest.raises(UserError, match="k >= 2"):
        average_top_k(tmp_path, 1)
