"""model=hf: a transformers image classifier from a folder written by save_pretrained (a tiny random ViT and
ConvNeXt made here) trains a step from the CLI config with a classifier for the data's classes and its image
processor's input, and src.eval reads its checkpoint; a Hub id offline and a missing transformers are one line."""

import json
import sys

import pytest
import torch
from huggingface_hub import constants
from hydra.utils import instantiate

from src.errors import UserError
from src.eval import evaluate
from src.models.hf_models import hf_model
from src.train import train
from tests.conftest import QUICK, compose_config, write_hf_vit

transformers = pytest.importorskip("transformers")


def convnext_folder(path):
    config = transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3)
    transformers.ConvNextForImageClassification(config).save_pretrained(path)
    transformers.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)
    return path


RUN = [*QUICK, "data=digits", "data.batch_size=16", "+trainer.limit_train_batches=1",
       "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (write_hf_vit, {"image_size": 32, "interpolation": "bicubic", "mean": [0.4] * 3, "crop_pct": 1.0}),
        (
            convnext_folder,
            {"image_size": 32, "interpolation": "bicubic", "mean": [0.5] * 3, "crop_pct": 0.875},
        ),
    ],
)
def test_a_saved_transformers_classifier_trains_a_step_and_evaluates(make, expected, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: set here
    folder = make(tmp_path / "hf_model")
    cfg = compose_config("train", ["model=hf", f"model.name={folder}", *RUN], tmp_path / "run")
    assert {key: cfg.data[key] for key in expected} == expected  # the image processor's, not digits' own
    assert dict(cfg.data.preprocessing_from) == dict.fromkeys(expected | {"std": 0}, "model")
    module = instantiate(cfg.module)
    before = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    assert module.backbone(torch.zeros(2, 3, 32, 32)).shape == (2, 10)  # a new classifier for the 10 digits
    metrics = train(cfg)
    assert 0 <= metrics["test/acc"] <= 1

    checkpoint = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    stored = torch.load(checkpoint, weights_only=True)
    assert stored["hyper_parameters"]["backbone"]["pretrained"] is False  # rebuilt from the folder's config
    trained = {n.removeprefix("backbone."): w for n, w in stored["state_dict"].items()}
    assert any(not torch.equal(before[n], trained[n]) for n in before)
    evaluated = evaluate(
        compose_config(
            "eval",
            [f"ckpt_path={checkpoint}", "trainer.accelerator=cpu", "+data.num_workers=0",
             "~callbacks.rich_progress_bar", "+trainer.limit_test_batches=1"],
            tmp_path / "eval",
        )
    )  # fmt: skip
    assert evaluated["test/acc"] == pytest.approx(metrics["test/acc"])
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())


def test_a_hub_id_offline_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at import: set here
    cfg = compose_config("train", ["model=hf", "model.name=google/vit-base-patch16-224", *RUN], tmp_path)
    with pytest.raises(SystemExit) as exited:
        train(cfg)
    lines = capsys.readouterr().err.splitlines()
    assert exited.value.code == 2 and len(lines) == 1
    assert lines[0].startswith(
        "error: model.name=google/vit-base-patch16-224: transformers cannot load its files"
    )
    assert "is no folder here. Give a folder written by save_pretrained" in lines[0]


def test_without_transformers_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # what an environment without the extra imports
    with pytest.raises(
        UserError, match=r"model=hf needs transformers.*pip install -c constraints.txt -e '.\[hf\]'"
    ):
        hf_model("any/model", 10)
