"""The training-recipe toolkit: augmentation policies (train split only), Mixup/CutMix on the batch, EMA of the
weights (what validation, the best checkpoint, test and resume see), CCT's tokenizer and sequence pooling."""

import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate
from timm.data.auto_augment import RandAugment
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from src.data.transforms import build_transforms
from src.models.vit import VisionTransformer
from src.train import train
from src.training.mixing import BatchMixup
from src.training.module import load_checkpoint
from tests.conftest import EVERY_STEP_CHECKPOINTS, QUICK, TINY_VIT, compose_config, run_cli

DIGITS = ["data=digits", *TINY_VIT, *QUICK]


def _batches(cfg, stage: str) -> list[torch.Tensor]:
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    return [images for images, _ in getattr(datamodule, f"{stage}_dataloader")()]


@pytest.mark.slow
@pytest.mark.parametrize("augment", ["randaugment", "autoaugment", "trivialaugment"])
def test_augmentation_changes_training_images_only(augment, tmp_path):
    plain = compose_config("train", DIGITS, tmp_path)
    policy = compose_config("train", [*DIGITS, f"augment={augment}", "augment.random_erasing=0.5"], tmp_path)
    for stage in ("val", "test"):  # eval batches bit-identical with and without the policy
        assert all(
            torch.equal(a, b) for a, b in zip(_batches(plain, stage), _batches(policy, stage), strict=True)
        )
    torch.manual_seed(0)
    first = _batches(plain, "train")[0]
    torch.manual_seed(0)
    assert not torch.equal(first, _batches(policy, "train")[0])


def test_randaugment_settings_reach_timm():
    augment = {
        "policy": "randaugment",
        "magnitude": 7,
        "num_ops": 3,
        "magnitude_std": 0.5,
        "increasing": True,
    }
    transform = build_transforms(
        "cifar", 32, [0.5] * 3, [0.5] * 3, train=True, native_size=32, augment=augment
    )
    (randaugment,) = [t for t in transform.transforms if isinstance(t, RandAugment)]
    assert randaugment.num_layers == 3
    assert {op.magnitude for op in randaugment.ops} == {7}
    assert {op.magnitude_std for op in randaugment.ops} == {0.5}
    assert "PosterizeIncreasing" in {op.name for op in randaugment.ops}  # inc1
    eval_transform = build_transforms("cifar", 32, [0.5] * 3, [0.5] * 3, train=False, augment=augment)
    assert not any(isinstance(t, RandAugment) for t in eval_transform.transforms)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert all(transform(image).shape == (3, 32, 32) for _ in range(50))  # every op, magnitude noise included


@pytest.mark.parametrize(
    ("mode", "batch"), [("batch", 6), ("batch", 5), ("elem", 6), ("elem", 7), ("pair", 4)]
)
@pytest.mark.parametrize("switch_prob", [0.0, 1.0])  # Mixup only, CutMix only
def test_mixup_mixes_exactly_two_images_per_sample_with_matching_targets(mode, batch, switch_prob):
    """Image i is channel i set to 1: after mixing, the share of each channel in an image is the share of that
    class in its soft target, and only image i and its partner (batch - 1 - i) contribute."""
    np.random.seed(0)
    mixup = BatchMixup(batch, 0.8, 1.0, prob=1.0, switch_prob=switch_prob, mode=mode, label_smoothing=0.0)
    for _ in range(10):
        images = torch.eye(batch)[:, :, None, None].expand(-1, -1, 8, 8).clone()
        mixed, targets = mixup(images, torch.arange(batch))
        assert mixed.shape == (batch, batch, 8, 8) and targets.shape == (batch, batch)
        torch.testing.assert_close(targets.sum(1), torch.ones(batch))
        torch.testing.assert_close(mixed.mean((2, 3)), targets)
        even = batch - batch % 2
        for i in range(batch):
            used = set(targets[i].nonzero().flatten().tolist())
            assert used <= ({i, even - 1 - i} if i < even else {i})  # an odd batch's last image: unmixed


def test_the_modules_soft_target_loss_is_timms_soft_target_cross_entropy(tmp_path):
    """torch's cross-entropy with probability targets (so that a run without Mixup never imports timm)."""
    cfg = compose_config("train", ["data=digits", "mixup=mixup_cutmix", *TINY_VIT], tmp_path)
    module = instantiate(cfg.module)
    logits, targets = torch.randn(6, 10), torch.randn(6, 10).softmax(dim=1)
    torch.testing.assert_close(
        module.soft_criterion(logits, targets), SoftTargetCrossEntropy()(logits, targets)
    )


def test_mixup_with_labels_smoothed_and_mixing_off_is_cross_entropy():
    mixup = BatchMixup(10, 0.8, 1.0, label_smoothing=0.1, off_epoch=3)
    mixup.set_epoch(3)  # mixing stopped (CCT's mixup_off_epoch): targets are smoothed one-hot labels
    images, labels, logits = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,)), torch.randn(6, 10)
    mixed, targets = mixup(images.clone(), labels)
    assert torch.equal(mixed, images)
    expected = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    torch.testing.assert_close(SoftTargetCrossEntropy()(logits, targets), expected)


def test_cct_7_3x1_has_the_reference_parameter_count(tmp_path):
    """3 760 139: SHI-Labs/Compact-Transformers cct_7_3x1_32() at commit cd11f09 (its README: 3.76 M)."""
    cfg = compose_config("train", ["model=cct", "data=cifar10"], tmp_path)
    model = instantiate(cfg.module).backbone
    assert sum(p.numel() for p in model.parameters()) == 3_760_139
    assert (
        model.patch_embed.num_patches == 256 and model.cls_token is None
    )  # 16 x 16 tokens, sequence pooling
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vit_defaults_keep_their_checkpoint_keys():
    """Today's model=vit checkpoints load: the default model has exactly the keys it had."""
    keys = set(VisionTransformer(depth=1).state_dict())
    assert keys == {
        "cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
        "head.weight", "head.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight",
        "blocks.0.attn.qkv.bias", "blocks.0.attn.proj.weight", "blocks.0.attn.proj.bias", "blocks.0.norm2.weight",
        "blocks.0.norm2.bias", "blocks.0.mlp.0.weight", "blocks.0.mlp.0.bias", "blocks.0.mlp.3.weight",
        "blocks.0.mlp.3.bias",
    }  # fmt: skip


@pytest.mark.parametrize("pool", ["cls", "mean", "seq"])
@pytest.mark.parametrize("conv_layers", [1, 2])
def test_conv_tokenizer_with_every_pooling_trains(pool, conv_layers):
    model = VisionTransformer(
        img_size=16, num_classes=3, embed_dim=32, depth=1, num_heads=2, mlp_dim=64,
        tokenizer="conv", conv_layers=conv_layers, pool=pool,
    )  # fmt: skip
    assert model.patch_embed.num_patches == (16 // 2**conv_layers) ** 2  # each max-pool halves the side
    model(torch.randn(4, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_ema_is_what_validation_the_best_checkpoint_and_test_see(tmp_path):
    args = [*DIGITS, "trainer.max_epochs=2", "+trainer.limit_train_batches=4", "callbacks=[default,ema]",
            "callbacks.ema.decay=0.9", "mixup=mixup_cutmix",
            "augment=randaugment"]  # fmt: skip
    cfg = compose_config("train", args, tmp_path)
    metrics = train(cfg)
    best = next((tmp_path / "checkpoints").glob("epoch_*.ckpt"))
    saved = torch.load(best, weights_only=True)
    averaged, raw = saved["state_dict"], saved["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged)  # the average lags the weights
    model = load_checkpoint(best).eval()  # what src.eval and src.predict load
    datamodule = instantiate(cfg.data)
    datamodule.setup()

    def test_loss(state: dict) -> float:
        model.load_state_dict(state)
        with torch.no_grad():
            losses = [model.criterion(model(x), y) for x, y in datamodule.test_dataloader()]
        return torch.stack(losses).mean().item()

    assert test_loss(averaged) == pytest.approx(metrics["test/loss"], abs=1e-5)
    assert test_loss(raw) != pytest.approx(metrics["test/loss"], abs=1e-5)


def test_ema_resumed_mid_epoch_ends_bit_identical(tmp_path):
    """The GPU-resident loader replays the same batches; the average and the raw weights both resume."""
    args = ["data=digits", "data.loader=gpu", "data.batch_size=256", *TINY_VIT, "model.drop_path=0", *QUICK,
            "callbacks=[default,ema]", "callbacks.ema.decay=0.8",
            "trainer.max_epochs=2", "+trainer.limit_val_batches=1", "test=false",
            *EVERY_STEP_CHECKPOINTS]  # fmt: skip
    train(compose_config("train", args, tmp_path / "whole"))
    step_7 = tmp_path / "whole" / "checkpoints" / "step_7.ckpt"
    train(compose_config("train", [*args, f"ckpt_path={step_7}"], tmp_path / "resumed"))
    whole, resumed = (
        torch.load(tmp_path / run / "checkpoints" / "step_10.ckpt", weights_only=True)
        for run in ("whole", "resumed")
    )
    for key in ("state_dict", "current_model_state"):
        assert all(torch.equal(whole[key][name], resumed[key][name]) for name in whole[key])
    assert whole["averaging_state"]["n_averaged"] == resumed["averaging_state"]["n_averaged"] == 10


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["augment.policy=randaugmen"], "error: augment.policy=randaugmen is unknown: use augment=basic|"),
        (["mixup=mixup_cutmix", "mixup.prob=2"], "error: mixup.prob=2 is a probability"),
        (
            ["callbacks=[default,ema]", "callbacks.ema.decay=1"],
            "error: callbacks.ema.decay=1 must be in [0, 1)",
        ),
        (
            ["augment=randaugment", "data.loader=gpu"],
            "error: augment=randaugment runs per image in the DataLoader",
        ),
        (["augment.random_erasing=1.5"], "error: augment.random_erasing=1.5 is a probability"),
        (
            ["augment=randaugmen"],
            "error: augment=randaugmen: no such option (did you mean augment=randaugment?)",
        ),
    ],
)
@pytest.mark.slow
def test_bad_recipe_values_stop_with_one_error_line(overrides, message, tmp_path):
    result = run_cli("src.train", *DIGITS, *overrides, f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert message in result.stderr


@pytest.mark.slow
def test_optuna_searches_the_recipe_toolkit_and_the_ema_decay(tmp_path):
    result = run_cli(
        "src.train", "hparams_search=vit_optuna", "hydra.sweeper.n_trials=1", *DIGITS, "callbacks=[default,ema]",
        "callbacks.ema.decay=choice(0.9,0.99)", "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=2", f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (overrides,) = (tmp_path / "train" / "multiruns").glob("*/0/.hydra/overrides.yaml")
    searched = {item.split("=")[0] for item in yaml.safe_load(overrides.read_text())}
    wanted = {
        "augment",
        "augment.random_erasing",
        "mixup.prob",
        "module.label_smoothing",
        "callbacks.ema.decay",
    }
    assert wanted <= searched


@pytest.mark.slow
def test_mixup_and_ema_train_with_ddp_bf16_and_the_gpu_loader(tmp_path):
    """Two gloo processes, bf16 autocast, batches made on the device: each rank's 629 images come as batches of
    315 and 314 (an odd one), mixed there; the EMA checkpoint is written once."""
    result = run_cli(
        "src.train", "data=digits", "data.loader=gpu", "data.batch_size=315", "trainer=ddp", "trainer.devices=2",
        "trainer.precision=bf16-mixed", "mixup=mixup_cutmix", "callbacks=[default,ema]", *TINY_VIT, *QUICK,
        "+trainer.limit_val_batches=1", f"paths.log_dir={tmp_path}", timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = tmp_path.glob("train/runs/*/checkpoints/epoch_*.ckpt")
    assert "current_model_state" in torch.load(checkpoint, weights_only=True)
