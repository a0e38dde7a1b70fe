"""A checkpoint never chooses which code runs (src/runs/safe_config.py): configs naming anything but vitlab's allow-list
are refused, with one `error:` line and exit 2, by every command that reads a checkpoint, before anything is built;
checkpoints that src.train writes still load in each of them."""

import os
import re
from pathlib import Path

import lightning
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from src.data.preprocessing import preprocessing_facts
from src.errors import UserError
from src.eval import evaluate
from src.explain import explain
from src.export import export
from src.predict import predict
from src.runs.safe_config import check_checkpoint_config
from src.token_maps import main as token_maps
from src.train import train
from src.training.module import ClassifierModule
from tests.conftest import CONF, QUICK, TINY_VIT, compose_config, run_cli

# a TokenLearner, so that src.token_maps has maps to draw
DIGITS = ["data=digits", *TINY_VIT, "model.token_learner.num_tokens=2", "model.token_learner.layer=0", *QUICK,
          "data.batch_size=8", "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
          "+trainer.limit_test_batches=1"]  # fmt: skip


class Pickled:
    """Runs `touch <marker>` when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def payloads(marker: Path, backbone: dict, folder: Path) -> dict[str, dict]:
    """Hyper-parameters that would create `marker` (or build what they choose) when instantiated, by name."""
    pickle_file = folder / "payload.pt"
    torch.save(Pickled(marker), pickle_file)
    return {
        "getoutput": {"backbone": {"_target_": "subprocess.getoutput", "cmd": f"touch {marker}"}},
        "torch_load": {"backbone": {"_target_": "torch.load", "f": str(pickle_file), "weights_only": False}},
        "os_system": {"backbone": {"_target_": "os.system", "command": f"touch {marker}"}},
        "eval_args": {
            "backbone": {"_target_": "builtins.eval", "_args_": [f"__import__('os').system('touch {marker}')"]}
        },
        "partial": {"backbone": {**backbone, "_partial_": True}},
        "nested": {"backbone": {**backbone, "token_learner": {"_target_": "os.system", "command": f"touch {marker}"}}},
        "data": {"data": {"_target_": "os.system", "command": f"touch {marker}"}},
    }  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A checkpoint of a tiny digits ViT shaped as src.train writes them (random weights), and a digits image."""
    folder = tmp_path_factory.mktemp("trained")
    cfg = compose_config("train", DIGITS, folder)
    module = instantiate(cfg.module)
    checkpoint = {
        "state_dict": module.state_dict(),
        "pytorch-lightning_version": lightning.__version__,
        "hyper_parameters": dict(module.hparams),
        "class_names": [str(i) for i in range(10)],
        "preprocessing": preprocessing_facts(instantiate(cfg.data)),
    }
    image = folder / "digit.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(image)
    return {"checkpoint": checkpoint, "image": image}


def with_hparams(trained: dict, **hparams) -> dict:
    """The trained checkpoint with some of its hyper-parameters replaced."""
    checkpoint = dict(trained["checkpoint"])
    checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], **hparams}
    return checkpoint


def write(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


def run_command(command: str, checkpoint: Path, image: Path, folder: Path):
    """`command` on `checkpoint` in this process, as its `python -m` entry point runs it."""
    ckpt = f"ckpt_path={checkpoint}"
    if command == "eval":
        return evaluate(compose_config("eval", [ckpt, *QUICK[:2], "+trainer.limit_test_batches=1"], folder))
    if command in ("predict_plain", "predict_lightning"):
        return predict(compose_config("predict", [ckpt, f"inputs={image}", "device=cpu"], folder))
    if command == "export":
        return export(compose_config("export", [ckpt, "num_images=2"], folder))
    if command == "explain":
        return explain(
            compose_config("explain", [ckpt, f"inputs={image}", "device=cpu", "method=gradcam"], folder)
        )
    if command == "token_maps":
        return token_maps([str(checkpoint), str(image), "--out", str(folder / "maps.png")])
    if command == "train_resume":
        return train(compose_config("train", [*DIGITS, ckpt], folder))
    assert command == "distill_teacher"
    return train(
        compose_config("train", [*DIGITS, "distill=hard", f"distill.teacher_ckpt={checkpoint}"], folder)
    )


COMMANDS = ["eval", "predict_plain", "predict_lightning", "export", "explain", "token_maps", "train_resume",
            "distill_teacher"]  # fmt: skip
# every payload through both ways of building: Hydra (Lightning's load) and src.predict's plain route; the issue's
# two through every command
CASES = [(c, p) for c in ("eval", "predict_plain") for p in ("getoutput", "torch_load", "os_system", "eval_args",
                                                            "partial", "nested", "data")]  # fmt: skip
CASES += [(c, p) for c in COMMANDS if c not in ("eval", "predict_plain") for p in ("getoutput", "torch_load")]


@pytest.mark.parametrize(("command", "payload"), CASES)
def test_a_checkpoint_naming_code_is_refused_before_it_runs(command, payload, trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    backbone = trained["checkpoint"]["hyper_parameters"]["backbone"]
    checkpoint = with_hparams(trained, **payloads(marker, backbone, tmp_path)[payload])
    if command == "predict_lightning":  # a checkpoint written before src.export: Lightning rebuilds it
        del checkpoint["preprocessing"]
    path = write(checkpoint, tmp_path / "evil.ckpt")
    try:
        with pytest.raises(SystemExit) as exit_info:
            run_command(command, path, trained["image"], tmp_path)
    finally:  # also when the command failed in another way
        assert not marker.exists(), "the checkpoint's config ran a command"
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot choose which code runs" in errors[0], errors
    assert str(path) in errors[0]


# resuming needs a checkpoint with the trainer's state: tests/runs/test_failures.py resumes those
@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "train_resume"])
def test_a_checkpoint_of_vitlabs_own_configs_loads_in_every_command(command, trained, tmp_path):
    checkpoint = dict(trained["checkpoint"])
    if command == "predict_lightning":
        del checkpoint["preprocessing"]
    # metrics, predicted rows or the written file
    assert run_command(command, write(checkpoint, tmp_path / "model.ckpt"), trained["image"], tmp_path)


def test_lightnings_load_from_checkpoint_checks_the_configs_first(trained, tmp_path):
    """README's way of rebuilding a model in one's own code."""
    marker = tmp_path / "pwned"
    backbone = trained["checkpoint"]["hyper_parameters"]["backbone"]
    checkpoint = with_hparams(trained, **payloads(marker, backbone, tmp_path)["torch_load"])
    try:
        with pytest.raises(UserError, match="backbone._target_='torch.load' is not one of"):
            ClassifierModule.load_from_checkpoint(write(checkpoint, tmp_path / "evil.ckpt"))
    finally:
        assert not marker.exists(), "the checkpoint's config ran a command"


def test_the_issues_checkpoint_is_one_error_line_from_the_command_line(trained, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = with_hparams(
        trained, backbone={"_target_": "subprocess.getoutput", "cmd": f"touch {marker}"}
    )
    path = write(checkpoint, tmp_path / "evil.ckpt")
    result = run_cli(
        "src.predict", f"ckpt_path={path}", f"inputs={trained['image']}", f"paths.log_dir={tmp_path}"
    )
    assert not marker.exists()
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert (
        "backbone._target_='subprocess.getoutput' is not one of" in line and "Traceback" not in result.stderr
    )


# every option of the groups a checkpoint stores (distill: none, the teacher's config goes to distilled_with)
OPTIONS = [f"{group}={path.stem}" for group in ("model", "data", "optimizer", "scheduler", "freeze", "mixup",
           "experiment") for path in sorted((CONF / group).glob("*.yaml"))]  # fmt: skip
# values the options leave to the user (???) or count from data on disk
FILLED = {"data=imagefolder": ["data.num_classes=3"], "data=csv": ["data.num_classes=3", "data.csv_path=x.csv"],
          "data=hf": ["data.num_classes=3", "data.name=x"], "data=shards": ["data.num_classes=3", "data.path=x"],
          "experiment=quickstart_imagefolder": ["data.num_classes=3"], "experiment=quickstart_csv":
          ["data.num_classes=3"], "freeze=first_n_blocks": ["freeze.num_blocks=1"],
          "freeze=until": ["freeze.layer=blocks.1"]}  # fmt: skip


@pytest.mark.parametrize("option", OPTIONS)
def test_the_configs_of_every_option_of_conf_pass_the_check(option, tmp_path, request):
    """What a checkpoint of a run with `option` stores (src.training.module keeps its configs resolved, as plain data)."""
    overrides = ["data=digits", option, *FILLED.get(option, [])]
    if option == "model=hf":  # a folder written by save_pretrained (no Hub here)
        overrides.append(f"model.name={request.getfixturevalue('hf_vit_folder')}")
    if option.startswith("experiment=") or option.startswith("model="):
        overrides.remove("data=digits")  # experiments choose their data set; pretrained models their input
    module = compose_config("train", overrides, tmp_path).module
    hparams = OmegaConf.to_container(module, resolve=True)
    hparams = {key: value for key, value in hparams.items() if not key.startswith("_")} | {"distill": None}
    # what ClassifierModule.on_save_checkpoint stores: the checkpoint's own weights replace pretrained ones
    backbone = hparams["backbone"]
    if backbone.get("pretrained") or backbone.get("weights_path"):
        backbone |= {"pretrained": False} | ({"weights_path": None} if "weights_path" in backbone else {})
    check_checkpoint_config(hparams, "x.ckpt")


@pytest.mark.parametrize(
    ("backbone", "words"),
    [
        (
            {"model_name": "vit_tiny_patch16_224", "checkpoint_path": "/x.pth"},
            "checkpoint_path is no argument",
        ),
        ({"model_name": "vit_tiny_patch16_224", "num_classes": "${oc.env:HOME}"}, "is an interpolation"),
        ({"model_name": "vit_tiny_patch16_224", "pretrained_cfg_overlay": {"file": "/x.pth"}}, "no argument"),
        ({"model_name": "vit_tiny_patch16_224", "pretrained": True}, "backbone.pretrained=True, where"),
        (
            {"model_name": "vit_tiny_patch16_224", "weights_path": "/x.pth"},
            "backbone.weights_path='/x.pth', where",
        ),
        ({"model_name": "hf-hub:someone/model"}, "is no timm architecture name"),
    ],
)
def test_a_timm_backbone_takes_plain_model_arguments_and_fetches_no_weights(backbone, words):
    with pytest.raises(UserError, match=words):
        check_checkpoint_config({"backbone": {"_target_": "timm.create_model", **backbone}}, "x.ckpt")


def test_model_timm_takes_no_name_with_a_scheme():
    backbone = {
        "_target_": "src.models.timm_models.timm_model",
        "name": "hf-hub:someone/model",
        "num_classes": 10,
    }
    with pytest.raises(UserError, match="backbone.name='hf-hub:someone/model' is no timm architecture name"):
        check_checkpoint_config({"backbone": backbone}, "x.ckpt")


def test_a_checkpoint_brings_no_teacher():
    distill = {"mode": "hard", "teacher": "vit_tiny_patch16_224", "pretrained": True}
    with pytest.raises(UserError, match="distill.mode='hard', where a checkpoint has no teacher"):
        check_checkpoint_config({"distill": distill}, "x.ckpt")


@pytest.mark.parametrize(
    ("backbone", "words"),
    [
        (
            {"_target_": "src.models.vit.VisionTransformer", "depth": torch.ones(1)},
            "depth is a Tensor, not a plain",
        ),
        ({"_target_": ["os.system"]}, "_target_=['os.system'] is not one of"),
    ],
)
def test_a_value_that_is_no_plain_data_is_refused(backbone, words):
    with pytest.raises(UserError, match=re.escape(words)):
        check_checkpoint_config({"backbone": backbone}, "x.ckpt")


def test_class_names_are_shown_as_written_not_as_markup(trained, tmp_path, capsys):
    """Rich markup in a checkpoint's class names (or in file names) is text: "[old]" stays, "[/x]" ends nothing."""
    checkpoint = {**trained["checkpoint"], "class_names": [f"[/c{i}] [old]" for i in range(10)]}
    cfg = compose_config("predict", [f"ckpt_path={write(checkpoint, tmp_path / 'model.ckpt')}",
                                     f"inputs={trained['image']}", "device=cpu", "topk=2"], tmp_path)  # fmt: skip
    predict(cfg)
    shown = capsys.readouterr().out
    assert "[/c" in shown and "[old]" in shown
