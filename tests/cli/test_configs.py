"""Every option of every config group composes and instantiates; optimizers and schedulers drive a real step."""

import os
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from src.errors import UserError
from src.train import train
from src.training.trainer import build_trainer
from tests.conftest import CONF, ROOT, TINY_VIT, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# experiments: tests/training/test_experiments.py (they need pretrained weights switched off here)
GROUP_OPTIONS = [
    (g, o)
    for g in ("data", "model", "freeze", "augment", "mixup", "trainer", "logger", "callbacks", "debug")
    for o in options(g)
]
# options with a value the user must give (???)
REQUIRED = {"freeze=until": ["freeze.layer=blocks.6"], "freeze=first_n_blocks": ["freeze.num_blocks=2"]}
# options that read your own images: where (the fixture digits_png writes them)
OWN_IMAGES = {
    "data=imagefolder": "data.data_dir={}",
    "data=csv": "data.csv_path={}/labels.csv",
    "data=hf": "data.name={}",
}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_every_option_composes_and_instantiates(group, option, tmp_path, request):
    choice = f"{group}={option}"
    required = REQUIRED.get(choice, [])
    if choice in OWN_IMAGES:  # the number of classes is counted from real files
        required = [OWN_IMAGES[choice].format(request.getfixturevalue("digits_png") / "digits_png")]
    if choice == "data=shards":  # a manifest as src.shards writes it
        (tmp_path / "shards.json").write_text(
            '{"class_names": ["a", "b"], "samples": {"train": [["t.tar", 0, 1, 0]]}}'
        )
        required = [f"data.path={tmp_path}"]
    if choice == "model=hf":  # a folder written by save_pretrained (no Hub here)
        required = [f"model.name={request.getfixturevalue('hf_vit_folder')}"]
    cfg = compose_config("train", [choice, *required], tmp_path)
    if (
        choice == "trainer=fsdp" and not torch.cuda.is_available()
    ):  # Lightning's FSDP needs GPUs: one error line
        with pytest.raises(UserError, match="trainer.accelerator=gpu"):
            build_trainer(cfg)
        return
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        cfg.trainer.accelerator = "cpu"  # composes here; the GPU itself is exercised where one exists
    if cfg.trainer.accelerator == "mps" and not torch.backends.mps.is_available():
        cfg.trainer.accelerator = "cpu"  # likewise for Apple's GPUs
    assert isinstance(instantiate(cfg.data), L.LightningDataModule)
    model = instantiate(cfg.module)
    assert model.hparams.num_classes == cfg.data.num_classes
    assert isinstance(build_trainer(cfg), L.Trainer)


def test_image_size_and_classes_flow_from_data_to_model(tmp_path):
    cfg = compose_config("train", ["data=flowers102"], tmp_path)
    assert cfg.model.img_size == 224 and cfg.model.num_classes == 102
    assert instantiate(cfg.module).backbone.head.out_features == 102


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_train_a_step(optimizer, scheduler, tmp_path):
    cfg = compose_config(
        "train",
        [
            "data=digits",
            "debug=fdr",
            f"optimizer={optimizer}",
            f"scheduler={scheduler}",
            "~callbacks.rich_progress_bar",
            *TINY_VIT,
        ],
        tmp_path,
    )
    metrics = train(cfg)
    assert {"train/loss_step", "val/acc", "test/acc"} <= metrics.keys()


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["fdr", "limit", "overfit"])
def test_every_debug_mode_runs(debug, tmp_path):
    overrides = [f"debug={debug}", "data=digits", "~callbacks.rich_progress_bar", *TINY_VIT]
    cfg = compose_config(
        "train", [*overrides, "trainer.max_epochs=2", "++trainer.limit_val_batches=1"], tmp_path
    )
    assert "test/acc" in train(cfg)


@pytest.mark.parametrize("model", ["vit", "vit_tiny"])
def test_no_weight_decay_on_norms_biases_and_embeddings(model, tmp_path):
    cfg = compose_config(
        "train", [f"model={model}", "data=digits", "data.image_size=32", "scheduler=none"], tmp_path
    )
    module = instantiate(cfg.module)
    names = {id(p): name for name, p in module.backbone.named_parameters()}
    groups = {
        g["weight_decay"]: {names[id(p)] for p in g["params"]}
        for g in module.configure_optimizers().param_groups
    }
    assert set(groups) == {0.0, cfg.optimizer.weight_decay}
    assert {"cls_token", "pos_embed", "norm.weight", "norm.bias", "head.bias"} <= groups[0.0]
    assert "head.weight" in groups[cfg.optimizer.weight_decay]
    assert not any(name.endswith((".bias", "norm1.weight")) for name in groups[cfg.optimizer.weight_decay])


def test_train_yaml_composed_before_anything_of_src_resolves_after_register_resolvers(tmp_path):
    """A notebook composes conf/train.yaml with Hydra's compose API in a fresh interpreter, then registers
    vitlab's resolvers (importing src alone registers none): the paths, the run dir and the class count counted
    from the data folder all resolve."""
    for name in ("cats", "dogs", "owls"):
        (tmp_path / "images" / name).mkdir(parents=True)
    script = textwrap.dedent(f"""
        import sys
        from hydra import compose, initialize_config_dir
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        with initialize_config_dir(config_dir={str(CONF)!r}, version_base="1.3"):
            cfg = compose("train", overrides=["data=imagefolder", "data.data_dir=images"], return_hydra_config=True)
        assert not [name for name in sys.modules if name.split(".")[0] == "src"], "composing imported src"
        import src
        assert not OmegaConf.has_resolver("cwd"), "importing src registered resolvers"
        from src.cli.resolvers import register_resolvers

        register_resolvers()
        HydraConfig.instance().set_config(cfg)
        print(cfg.paths.log_dir, cfg.hydra.run.dir, cfg.module.num_classes)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log_dir, run_dir, num_classes = result.stdout.split()
    assert log_dir == str(tmp_path / "outputs")
    assert run_dir.startswith(f"{tmp_path / 'outputs'}/train/runs/")
    assert num_classes == "3"


def test_a_quickstart_run_never_imports_timm(tmp_path):
    """`import timm.<anything>` loads all of timm's models (and wandb): 1.3 s of start-up that the scratch ViT
    does not need (src/upstream_fixes/timm.py). A whole quickstart run, fit to report, in a fresh interpreter."""
    script = textwrap.dedent("""
        import runpy, sys
        sys.argv = ["src.train", "experiment=quickstart", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                    "~callbacks.rich_progress_bar", "paths.log_dir=outputs"]
        try:
            runpy.run_module("src.train", run_name="__main__", alter_sys=True)
        finally:
            print("imported:", sorted({name.split(".")[0] for name in sys.modules} & {"timm", "wandb"}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "imported: []" in result.stdout
    assert next(tmp_path.glob("outputs/quickstart/runs/*/summary.json")).is_file()
