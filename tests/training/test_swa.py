"""Stochastic weight averaging (callbacks=[default,swa]): the saved average is Lightning's mean of the epochs'
weights, the run tests it, src.eval reads it, and a fit resumed inside the averaging epochs ends with the same."""

import pytest
import torch
from hydra.utils import instantiate

from src.errors import UserError
from src.train import train
from src.training.module import load_checkpoint
from src.training.swa import SWA
from tests.conftest import QUICK, TINY_VIT, compose_config, run_cli

SWA_RUN = ["data=digits", *TINY_VIT, *QUICK, "model.drop_path=0", "trainer.max_epochs=3",
           "+trainer.limit_train_batches=4", "+trainer.limit_val_batches=1", "callbacks=[default,swa]",
           "callbacks.swa.swa_epoch_start=2", "callbacks.model_checkpoint.save_top_k=-1"]  # fmt: skip


def _weights(path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_swa_checkpoint_is_the_mean_of_the_epochs_weights_tested_and_resumable(tmp_path):
    cfg = compose_config("train", SWA_RUN, tmp_path / "whole")
    metrics = train(cfg)
    folder = tmp_path / "whole" / "checkpoints"
    average, first, second, third = (
        _weights(folder / f"{name}.ckpt") for name in ("swa", "epoch_000", "epoch_001", "epoch_002")
    )
    # from epoch 2 of 3 (1-based) Lightning averages the weights at the start of epochs 2 and 3
    for name in average:
        torch.testing.assert_close(average[name], (first[name] + second[name]) / 2, rtol=0, atol=1e-6)
    assert any(not torch.equal(average[name], third[name]) for name in average)  # not the last weights

    model = load_checkpoint(folder / "swa.ckpt").eval()  # what src.eval, src.predict and src.export load
    datamodule = instantiate_data(cfg)
    with torch.no_grad():
        losses = [model.criterion(model(x), y) for x, y in datamodule.test_dataloader()]
    assert torch.stack(losses).mean().item() == pytest.approx(metrics["test/loss"], abs=1e-5)
    assert (tmp_path / "whole" / "summary.json").is_file()  # the report

    # resumed after the first averaged epoch: the average and SWA's lr schedule continue from the checkpoint
    train(compose_config("train", [*SWA_RUN, f"ckpt_path={folder / 'epoch_001.ckpt'}"], tmp_path / "resumed"))
    resumed = _weights(tmp_path / "resumed" / "checkpoints" / "swa.ckpt")
    assert all(not torch.equal(average[name], second[name]) for name in average)  # a real average
    assert all(torch.equal(average[name], resumed[name]) for name in average)


def instantiate_data(cfg):
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"swa_lrs": 0}, "callbacks.swa.swa_lrs=0 must be a positive learning rate"),
        ({"swa_lrs": 1e-3, "swa_epoch_start": 0}, "callbacks.swa.swa_epoch_start=0 must be an epoch >= 1"),
        (
            {"swa_lrs": 1e-3, "swa_epoch_start": 1.5},
            "callbacks.swa.swa_epoch_start=1.5 must be an epoch >= 1",
        ),
        ({"swa_lrs": 1e-3, "annealing_strategy": "step"}, "use cos or linear"),
    ],
)
def test_bad_swa_settings_are_user_errors(kwargs, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        SWA(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["callbacks.swa.swa_epoch_start=5"],
            "error: callbacks.swa.swa_epoch_start=5 is after the last epoch",
        ),
        (
            ["callbacks=[default,swa,ema]"],
            "error: callbacks ema and swa both replace the weights by an average",
        ),
    ],
)
def test_swa_combinations_that_average_nothing_stop_with_one_error_line(overrides, message, tmp_path):
    result = run_cli("src.train", *SWA_RUN, *overrides, f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in result.stderr
