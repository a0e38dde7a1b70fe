"""Layer-wise lr decay driven by vitlab's schedules, with its weight-decay rule and freezing; timm's optimizers by
name (src/training/optimizers.py)."""

import logging
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from src.errors import UserError
from src.runs.safe_config import check_checkpoint_config
from src.train import train
from src.training.module import ClassifierModule, load_checkpoint
from tests.conftest import QUICK, TINY_VIT, compose_config

DECAY = 0.65
BASE_LR = 1e-3
SCHEDULES = {
    "warmup_cosine": {"_target_": "src.training.schedulers.warmup_cosine", "warmup_fraction": 0.1,
                      "min_lr_ratio": 0.01},
    "onecycle": {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": BASE_LR, "pct_start": 0.3},
    "exponential": {"_target_": "torch.optim.lr_scheduler.ExponentialLR", "gamma": 0.9},
}  # fmt: skip
# the blocks in forward order, and the classifier: timm's vit_tiny (12 blocks) and convnext_atto (2+2+6+2 blocks;
# a stage's downsampling counts with its first block)
MODELS = {
    "vit_tiny_patch16_224": ([f"blocks.{i}." for i in range(12)], "head.weight"),
    "convnext_atto": (
        [(f"stages.{s}.blocks.{b}.", f"stages.{s}.downsample." if b == 0 else f"stages.{s}.blocks.{b}.")
         for s, n in enumerate((2, 2, 6, 2)) for b in range(n)],
        "head.fc.weight",
    ),
}  # fmt: skip
STEM = ("patch_embed", "cls_token", "pos_embed", "stem")
BACKBONES = {
    "vit_tiny_patch16_224": {"img_size": 32, "patch_size": 8},
    "convnext_atto": {},
}


def _optimizer(model_name, schedule, layer_decay, freeze=None, steps=3):
    """The optimizer ClassifierModule builds for timm's `model_name`, after `steps` steps of `schedule`."""
    backbone = {"_target_": "timm.create_model", "model_name": model_name, "num_classes": 10,
                **BACKBONES[model_name]}  # fmt: skip
    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": BASE_LR, "weight_decay": 0.05,
                 "layer_decay": layer_decay}  # fmt: skip
    scheduler = {"schedule": {**SCHEDULES[schedule], "_partial_": True}, "interval": "step"}
    torch.manual_seed(0)
    module = ClassifierModule(backbone, optimizer, scheduler, num_classes=10, freeze=freeze)
    module.trainer = SimpleNamespace(estimated_stepping_batches=100)  # what the schedules over the run ask
    built = module.configure_optimizers()
    for _ in range(steps):
        built["optimizer"].step()
        built["lr_scheduler"]["scheduler"].step()
    names = {id(p): name for name, p in module.backbone.named_parameters()}
    return module, {names[id(p)]: g["lr"] for g in built["optimizer"].param_groups for p in g["params"]}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_each_block_learns_at_base_times_decay_to_its_distance_from_the_head(model_name, schedule):
    blocks, head = MODELS[model_name]
    _, plain = _optimizer(model_name, schedule, layer_decay=None)
    _, decayed = _optimizer(model_name, schedule, layer_decay=DECAY)
    scheduled = plain[head]
    assert scheduled != BASE_LR  # the schedule moved the rates: what follows holds through it
    for name, lr in decayed.items():
        block = [i for i, prefix in enumerate(blocks) if name.startswith(prefix)]
        if block:
            expected = scheduled * DECAY ** (len(blocks) - block[0])
        elif name.startswith(STEM):
            expected = scheduled * DECAY ** (len(blocks) + 1)
        elif name.startswith("norm."):  # ViT's norm after the blocks: timm counts it with the last block
            expected = scheduled * DECAY
        else:
            assert name.startswith("head."), name
            expected = scheduled
        assert lr == pytest.approx(expected, rel=1e-6), name


def test_layer_decay_keeps_no_weight_decay_on_norms_biases_and_embeddings():
    module, _ = _optimizer("vit_tiny_patch16_224", "exponential", layer_decay=DECAY, steps=0)
    names = {id(p): name for name, p in module.backbone.named_parameters()}
    decays = {names[id(p)]: g["weight_decay"] for g in module.configure_optimizers()["optimizer"].param_groups
              for p in g["params"]}  # fmt: skip
    assert {
        decays[n] for n in ("cls_token", "pos_embed", "blocks.3.norm1.weight", "blocks.3.attn.qkv.bias")
    } == {0}
    assert decays["blocks.3.attn.qkv.weight"] == decays["head.weight"] == 0.05


def test_layer_decay_with_frozen_blocks_unfrozen_later_puts_them_at_a_tenth():
    freeze = {"mode": "first_n_blocks", "num_blocks": 2, "unfreeze_at_epoch": 1}
    _, lrs = _optimizer("vit_tiny_patch16_224", "warmup_cosine", layer_decay=DECAY, freeze=freeze, steps=0)
    # warm-up's first factor, 1e-3, on every group alike
    assert lrs["head.weight"] == pytest.approx(BASE_LR * 1e-3)
    assert lrs["blocks.5.mlp.fc1.weight"] == pytest.approx(BASE_LR * 1e-3 * DECAY ** (12 - 5))
    assert lrs["blocks.1.mlp.fc1.weight"] == pytest.approx(BASE_LR * 1e-3 * DECAY ** (12 - 1) / 10)


def test_layer_decay_on_a_model_without_timms_layer_order_is_an_error(tmp_path):
    cfg = compose_config("train", ["data=digits", *TINY_VIT, "optimizer.layer_decay=0.65"], tmp_path)
    module = instantiate(cfg.module)
    with pytest.raises(UserError, match="group_matcher.*optimizer.layer_decay=null"):
        module.configure_optimizers()


@pytest.mark.parametrize(
    ("opt", "optimizer_class"), [("lamb", "Lamb"), ("lion", "Lion"), ("adopt", "Adopt"), ("adamw", "AdamW")]
)
def test_timms_optimizers_by_name_keep_vitlabs_groups(opt, optimizer_class, tmp_path):
    cfg = compose_config(
        "train",
        ["data=digits", *TINY_VIT, "optimizer=timm", f"optimizer.opt={opt}", "scheduler=none"],
        tmp_path,
    )
    module = instantiate(cfg.module)
    optimizer = module.configure_optimizers()
    assert type(optimizer).__name__ == optimizer_class
    names = {id(p): name for name, p in module.backbone.named_parameters()}
    decays = {names[id(p)]: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays["cls_token"] == decays["head.bias"] == 0 and decays["head.weight"] == 0.05
    if opt == "adamw":  # torch's class, with its fused kernel on CPU weights
        assert optimizer.defaults["fused"] is True


@pytest.mark.parametrize(
    ("opt", "words"),
    [("lamm", "names near it: lamb"), ("adamw_lookahead", "no optimizer timm registers"),
     ("adahessian", "second derivatives"), ("bnbadamw", "optimizer.opt='bnbadamw'")],
)  # fmt: skip
def test_an_optimizer_timm_cannot_run_here_is_one_error(opt, words, tmp_path):
    from src.training.optimizers import timm_optimizer

    with pytest.raises(UserError, match=words):
        timm_optimizer([torch.nn.Parameter(torch.zeros(2))], opt=opt, lr=1e-3)


TIMM_VIT = ["data=digits", "model=vit_timm", "model.name=vit_tiny_patch16_224", "data.image_size=32",
            "model.patch_size=8", *QUICK, "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1"]  # fmt: skip
LION = ["optimizer=timm", "optimizer.opt=lookahead_lion", "optimizer.lr=1e-4", "optimizer.layer_decay=0.65"]


@pytest.fixture(scope="module")
def lion_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lion")
    assert "test/acc" in train(compose_config("train", [*TIMM_VIT, *LION], folder))
    return sorted((folder / "checkpoints").glob("*.ckpt"))[0]


def test_a_run_with_timms_optimizer_and_layer_decay_trains_and_its_checkpoint_loads(lion_checkpoint):
    module = load_checkpoint(lion_checkpoint)
    assert module.hparams.optimizer["opt"] == "lookahead_lion"
    assert module.hparams.optimizer["layer_decay"] == 0.65
    check_checkpoint_config(dict(module.hparams), lion_checkpoint)


@pytest.mark.parametrize(
    ("changed", "difference"),
    [([*LION, "optimizer.layer_decay=0.75"], "optimizer.layer_decay=0.65 in the checkpoint but 0.75"),
     ([*LION, "optimizer.opt=lamb"], "optimizer.opt='lookahead_lion' in the checkpoint but 'lamb'"),
     (["optimizer=adamw", "optimizer.layer_decay=0.65"], "optimizer._target_=")],
)  # fmt: skip
def test_resuming_with_other_optimizer_groups_or_state_is_one_error(
    changed, difference, lion_checkpoint, tmp_path, capsys
):
    cfg = compose_config("train", [*TIMM_VIT, *changed, f"ckpt_path={lion_checkpoint}"], tmp_path)
    with pytest.raises(SystemExit) as exit_:  # train() prints the UserError as one line and exits 2
        train(cfg)
    assert exit_.value.code == 2 and difference in capsys.readouterr().err


@pytest.mark.parametrize(
    ("lr_scale", "devices", "accumulate", "factor"),
    # a global batch of 64 per device x devices x accumulated batches, against lr_base_size=128
    [
        ("none", 2, 3, 1.0),
        ("linear", 1, 1, 0.5),
        ("linear", 2, 3, 3.0),
        ("sqrt", 2, 3, 3.0**0.5),
        ("sqrt", 1, 2, 1.0),
    ],
)
def test_lr_scale_follows_the_global_batch_of_devices_and_accumulation(
    tmp_path, caplog, lr_scale, devices, accumulate, factor
):
    overrides = ["data=digits", *TINY_VIT, "scheduler=none", "data.batch_size=64", "optimizer.lr=1e-3", f"optimizer.lr_scale={lr_scale}",
                 "optimizer.lr_base_size=128"]  # fmt: skip
    model = instantiate(compose_config("train", overrides, tmp_path).module)
    # a DDP Trainer that is never fit: its world size and accumulation are what the optimizer reads
    model.trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                              accumulate_grad_batches=accumulate, logger=False)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="src.training.module"):
        optimizer = model.configure_optimizers()
    assert max(group["lr"] for group in optimizer.param_groups) == pytest.approx(1e-3 * factor)
    if lr_scale != "none":
        assert (
            f"optimizer.lr_scale={lr_scale}: lr {1e-3 * factor:.4g} for a global batch of {64 * devices * accumulate}"
            in caplog.text
        )


@pytest.mark.parametrize(("key", "value"), [("lr_scale", "cubic"), ("lr_base_size", 0)])
def test_a_bad_lr_scale_setting_is_one_error_line(tmp_path, capsys, key, value):
    with pytest.raises(SystemExit) as exit_:
        train(
            compose_config("train", ["data=digits", *TINY_VIT, *QUICK, f"optimizer.{key}={value}"], tmp_path)
        )
    assert exit_.value.code == 2
    assert f"error: optimizer.{key}={value!r} is not allowed" in capsys.readouterr().err
