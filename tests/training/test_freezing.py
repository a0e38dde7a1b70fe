"""Freezing: Keras layer names, exact trainable/frozen counts of the notebooks' setups, BatchNorm in eval mode,
clear errors for unknown names, unfreezing at an epoch, and counts in TensorBoard's hparams.yaml."""

import lightning as L
import pytest
import safetensors.torch
import timm
import torch
import yaml
from hydra.utils import instantiate
from timm.optim import param_groups_weight_decay as timm_param_groups
from torch.nn.modules.batchnorm import _BatchNorm

from src.errors import UserError
from src.models.keras_cnn import KerasCNN
from src.reporting.run_metrics import parameter_counts
from src.train import train
from src.training.freezing import apply_freezing, resolve
from src.training.module import ClassifierModule
from src.upstream_fixes.timm import param_groups_weight_decay
from tests.conftest import QUICK, TINY_VIT, compose_config


def seed_module(experiment: str, tmp_path, *overrides: str) -> ClassifierModule:
    cfg = compose_config(
        "train",
        [f"experiment={experiment}", "model.pretrained=false", "data.image_size=32", *overrides],
        tmp_path,
    )
    return instantiate(cfg.module)


def trainable_prefixes(model: torch.nn.Module, depth: int) -> set[str]:
    return {".".join(n.split(".")[:depth]) for n, p in model.named_parameters() if p.requires_grad}


def test_keras_layer_names_map_onto_the_trunks():
    vgg = KerasCNN("vgg19", img_size=32, num_classes=10)
    assert resolve(vgg, "block5_conv1") == "features.28"
    assert resolve(vgg, "block1_conv1") == "features.0" and resolve(vgg, "block5_pool") == "features.36"
    assert len([n for n in vgg.keras_names if "_conv" in n]) == 16  # VGG19: 16 convolutions
    densenet = KerasCNN("densenet121", img_size=32, num_classes=10)
    expected = {
        "conv1/conv": "features.conv0",
        "conv2_block6_2_conv": "features.denseblock1.denselayer6.conv2",
        "pool2_conv": "features.transition1.conv",
        "conv4_block24_1_bn": "features.denseblock3.denselayer24.norm2",  # DenseNet121: 6-12-24-16 layers
        "pool4_pool": "features.transition3.pool",
        "conv5_block1_0_bn": "features.denseblock4.denselayer1.norm1",
        "conv5_block16_2_conv": "features.denseblock4.denselayer16.conv2",
        "bn": "features.norm5",
    }
    assert {keras: resolve(densenet, keras) for keras in expected} == expected
    assert "conv5_block17_0_bn" not in densenet.keras_names
    assert resolve(densenet, "features.denseblock2") == "features.denseblock2"  # module names work too


def test_keras_vgg19_frozen_block5_counts_match_keras(tmp_path):
    counts = parameter_counts(seed_module("keras_vgg19_frozen_block5_cifar10", tmp_path))
    assert (counts["params_trainable"], counts["params_frozen"]) == (9_638_922, 10_585_152)


def test_keras_densenet201_frozen_conv5_counts_match_keras(tmp_path):
    module = seed_module("keras_densenet201_frozen_conv5_cifar10", tmp_path)
    counts = parameter_counts(module)
    assert counts["params_trainable"] == 7_542_538  # as Keras reports
    # Keras counts the BatchNorm moving mean/variance as non-trainable parameters; PyTorch keeps them as buffers
    running_stats = sum(
        b.numel() for n, b in module.named_buffers() if n.endswith(("running_mean", "running_var"))
    )
    assert (counts["params_frozen"], counts["params_frozen"] + running_stats) == (11_110_528, 11_339_584)


def test_deit_b_distilled_frozen10_trains_only_the_last_block_and_the_heads(tmp_path):
    backbone = seed_module("deit_b_distilled_frozen10_cifar10", tmp_path).backbone
    assert trainable_prefixes(backbone, 2) == {"blocks.11", "norm.weight", "norm.bias", "head.0", "head.3",
                                               "head.6", "head_dist.0", "head_dist.3", "head_dist.6"}  # fmt: skip
    assert not any(p.requires_grad for p in (backbone.cls_token, backbone.dist_token, backbone.pos_embed))


def test_the_modes_agree_with_each_other():
    vgg = KerasCNN("vgg19", img_size=32, num_classes=10)
    apply_freezing(vgg, "until", layer="block5_conv1")
    until = parameter_counts(vgg)
    apply_freezing(vgg, "first_n_blocks", num_blocks=4)
    assert parameter_counts(vgg) == until
    apply_freezing(vgg, "head_only")
    assert trainable_prefixes(vgg, 1) == {"head"}
    apply_freezing(vgg, "first_n_blocks", num_blocks=5)
    assert trainable_prefixes(vgg, 1) == {"head"}
    apply_freezing(vgg, "first_n_blocks", num_blocks=0)  # a full fine-tune, as finetune_optuna searches it
    assert parameter_counts(vgg)["params_frozen"] == 0
    apply_freezing(vgg, "until", layer="block5_conv1")
    apply_freezing(vgg, "none")
    assert parameter_counts(vgg)["params_frozen"] == 0
    with pytest.raises(UserError, match="freeze.num_blocks=6: KerasCNN has 5 blocks"):
        apply_freezing(vgg, "first_n_blocks", num_blocks=6)
    densenet = KerasCNN("densenet121", img_size=32, num_classes=10)
    apply_freezing(densenet, "first_n_blocks", num_blocks=3)
    assert trainable_prefixes(densenet, 2) == {"features.denseblock4", "features.norm5", "head.1"}


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics(tmp_path):
    module = seed_module("keras_densenet201_frozen_conv5_cifar10", tmp_path, "data=digits")
    features = module.backbone.features
    frozen_bn, trained_bn = features.transition3.norm, features.denseblock4.denselayer1.norm1
    norms = [m for m in features.modules() if isinstance(m, _BatchNorm)]
    assert all(m.training == m.weight.requires_grad for m in norms)  # from construction on
    module.eval().train()
    assert all(m.training == m.weight.requires_grad for m in norms)  # and after train()
    before = frozen_bn.running_mean.clone(), trained_bn.running_mean.clone()
    modes_in_training = set()

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes_in_training.add((frozen_bn.training, trained_bn.training))

    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=1, limit_val_batches=1, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Probe()],
    )  # fmt: skip
    cfg = compose_config("train", ["data=digits", "data.image_size=32", "data.batch_size=8"], tmp_path)
    trainer.fit(module, datamodule=instantiate(cfg.data))
    assert modes_in_training == {(False, True)}  # in both epochs, i.e. also after validation
    torch.testing.assert_close(frozen_bn.running_mean, before[0])
    assert not torch.equal(trained_bn.running_mean, before[1])


def test_a_typo_in_a_layer_name_lists_the_names_near_it(tmp_path, capsys):
    cfg = compose_config(
        "train",
        [
            "experiment=keras_vgg19_frozen_block5_cifar10",
            "model.pretrained=false",
            "freeze.layer=block5_conv0",
        ],
        tmp_path,
    )
    with pytest.raises(SystemExit) as exit_info:  # through hydra's instantiate and the entry point's handler
        train(cfg)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: freeze.layer='block5_conv0' is not a layer of KerasCNN; names near it:")
    assert "block5_conv1" in error and "block4_conv1" in error


def test_unfreezing_at_an_epoch_trains_the_whole_backbone(tmp_path):
    cfg = compose_config(
        "train", ["data=digits", "freeze=head_only", "freeze.unfreeze_at_epoch=1", "scheduler=none", *TINY_VIT],
        tmp_path,
    )  # fmt: skip
    module = instantiate(cfg.module)
    patch_embed = module.backbone.patch_embed.proj.weight
    start = patch_embed.detach().clone()
    trainer = L.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=instantiate(cfg.data))
    assert all(p.requires_grad for p in module.parameters())
    (optimizer,) = trainer.optimizers
    # decay + no-decay groups of the head, then the same two for the rest of the backbone at a tenth of the lr
    assert len(optimizer.param_groups) == 4
    assert [g["lr"] for g in optimizer.param_groups[2:]] == pytest.approx([cfg.optimizer.lr / 10] * 2)
    assert sorted(g["weight_decay"] for g in optimizer.param_groups[2:]) == [0.0, cfg.optimizer.weight_decay]
    no_decay = next(g for g in optimizer.param_groups[2:] if g["weight_decay"] == 0.0)["params"]
    embeddings = {id(module.backbone.pos_embed), id(module.backbone.cls_token)}
    assert embeddings <= {id(p) for p in no_decay}  # the ViT's no_weight_decay() names them
    assert all(p.ndim <= 1 or id(p) in embeddings for p in no_decay)
    assert not torch.equal(patch_embed, start)  # it trained in the second epoch


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["warmup_cosine", "onecycle", "exponential"])
def test_unfrozen_groups_keep_a_tenth_of_the_lr_and_resume_exactly(scheduler, tmp_path):
    """Unfreezing at epoch 1 of 3 (3 steps each) under each scheduler: the unfrozen groups run at a tenth of the
    others' lr all along, and a fit resumed at step 5 (inside epoch 1) ends with the uninterrupted weights."""
    args = ["data=digits", "data.loader=gpu", "data.batch_size=256", "freeze=head_only", "freeze.unfreeze_at_epoch=1",
            f"scheduler={scheduler}", *TINY_VIT, "model.drop_path=0", *QUICK, "trainer.max_epochs=3",
            "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=1", "test=false",
            "+callbacks.last_checkpoint.every_n_train_steps=1", "callbacks.last_checkpoint.save_top_k=-1",
            "callbacks.last_checkpoint.filename='step_{step}'",
            "+callbacks.last_checkpoint.auto_insert_metric_name=false"]  # fmt: skip
    cfg = compose_config("train", args, tmp_path / "whole")
    train(cfg)
    step_5 = tmp_path / "whole" / "checkpoints" / "step_5.ckpt"
    train(compose_config("train", [*args, f"ckpt_path={step_5}"], tmp_path / "resumed"))
    whole, resumed = (
        torch.load(tmp_path / run / "checkpoints" / "step_9.ckpt", weights_only=True)
        for run in ("whole", "resumed")
    )
    lrs = [group["lr"] for group in whole["optimizer_states"][0]["param_groups"]]
    assert (
        len(lrs) == 4 and lrs[2:] == pytest.approx([lrs[0] / 10] * 2) and lrs[0] != cfg.optimizer.lr
    )  # scheduled
    assert [group["lr"] for group in resumed["optimizer_states"][0]["param_groups"]] == lrs
    assert all(torch.equal(whole["state_dict"][k], resumed["state_dict"][k]) for k in whole["state_dict"])
    patch_embed = "backbone.patch_embed.proj.weight"  # frozen in epoch 0, trained from epoch 1 on
    first = torch.load(tmp_path / "whole" / "checkpoints" / "step_3.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(first[patch_embed], whole["state_dict"][patch_embed])


def test_a_frozen_run_logs_its_counts_and_its_checkpoint_rebuilds_the_same_model(tmp_path, fake_cifar10):
    weights = tmp_path / "model.safetensors"  # stands in for the hub's file on a machine without internet
    safetensors.torch.save_file(timm.create_model("vit_tiny_patch16_224").state_dict(), weights)
    cfg = compose_config(
        "train",
        ["model=vit_tiny", f"model.weights_path={weights}", "freeze=until", "freeze.layer=blocks.11",
         "data.image_size=32", "data.batch_size=4", f"data.data_dir={fake_cifar10}", "data.download=false",
         "data.verify_checksums=false", "data.val_size=20", "+trainer.limit_train_batches=2",
         "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "~callbacks.report",
         "~callbacks.model_summary", *QUICK],
        tmp_path,
    )  # fmt: skip
    train(cfg)
    hparams = yaml.safe_load((tmp_path / "tensorboard" / "hparams.yaml").read_text())
    counts = {k: hparams[f"model/{k}"] for k in ("params_total", "params_trainable", "params_frozen")}
    weights.unlink()  # the checkpoint holds the trained weights: it must not need the file any more
    rebuilt = ClassifierModule.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert rebuilt.hparams.backbone["weights_path"] is None and hparams["model/weights_path"] == str(weights)
    assert counts == parameter_counts(rebuilt) and 0 < counts["params_trainable"] < counts["params_frozen"]
    assert trainable_prefixes(rebuilt.backbone, 2) == {
        "blocks.11",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }


@pytest.mark.parametrize(
    "model, freeze",
    [
        ("vit", "none"),
        ("cct", "none"),
        ("deit_tiny", "first_n_blocks freeze.num_blocks=6"),
        ("vgg19", "until freeze.layer=block5_conv1"),
        ("densenet121", "none"),
    ],  # fmt: skip
)
@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_weight_decay_groups_are_timms(model, freeze, weight_decay, tmp_path):
    """vitlab groups parameters by timm's rule without importing timm (src/upstream_fixes/timm.py): the same
    groups, in the same order, as timm.optim.param_groups_weight_decay, frozen parameters left out."""
    overrides = [f"model={model}", *f"freeze={freeze}".split(), "data=digits", "data.image_size=32"]
    if model in ("deit_tiny", "vgg19"):
        overrides.append("model.pretrained=false")
    backbone = instantiate(compose_config("train", overrides, tmp_path).module).backbone
    assert any(not p.requires_grad for p in backbone.parameters()) == (freeze != "none")
    no_decay = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else ()
    ours = param_groups_weight_decay(backbone, weight_decay, no_weight_decay_list=no_decay)
    theirs = timm_param_groups(backbone, weight_decay, no_weight_decay_list=no_decay)
    assert [g["weight_decay"] for g in ours] == [g["weight_decay"] for g in theirs]
    assert [[id(p) for p in g["params"]] for g in ours] == [[id(p) for p in g["params"]] for g in theirs]


def _numel(*modules) -> int:
    return sum(p.numel() for module in modules for p in module.parameters())


@pytest.mark.parametrize(
    ("name", "stem_and_first_two", "classifier"),
    [
        ("resnet18", lambda m: (m.conv1, m.bn1, m.layer1, m.layer2), lambda m: m.fc),
        ("convnext_atto", lambda m: (m.stem, m.stages[0], m.stages[1]), lambda m: m.head.fc),
        ("vit_tiny_patch16_224", lambda m: (m.patch_embed, m.blocks[0], m.blocks[1]), lambda m: m.head),
    ],
)
def test_a_timm_models_stages_freeze_by_timms_grouping(name, stem_and_first_two, classifier):
    model = timm.create_model(name, num_classes=10, pretrained=False)
    tokens = sum(
        p.numel()
        for p in (getattr(model, "cls_token", None), getattr(model, "pos_embed", None))
        if p is not None
    )
    apply_freezing(model, "first_n_blocks", num_blocks=2)
    assert parameter_counts(model)["params_frozen"] == _numel(*stem_and_first_two(model)) + tokens
    apply_freezing(model, "head_only")
    assert parameter_counts(model)["params_trainable"] == _numel(classifier(model))
    with pytest.raises(UserError, match=r"freeze.num_blocks=13: \w+ has (4|12) blocks"):
        apply_freezing(model, "first_n_blocks", num_blocks=13)


def test_head_only_on_a_model_without_its_named_head_is_one_error_not_a_frozen_model():
    # a model whose classifier freezing cannot find would otherwise freeze every parameter, its head's too
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    with pytest.raises(UserError, match="freeze.mode=head_only: Sequential has no classifier named 'head'"):
        apply_freezing(model, "head_only")
