"""The backbone zoo: every model config trains a step at 32 px, states its pretrained input, and loads weights
from a local file; pretrained weights offline fail fast with one message."""

import re
import time

import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import constants
from hydra.utils import instantiate

from src.cli.checks import check_values
from src.errors import UserError
from src.models.keras_cnn import KerasCNN
from src.models.timm_models import create_timm_model, vision_transformer
from tests.cli.test_configs import options
from tests.conftest import compose_config, run_cli

TIMM_MODELS = ["timm", "vit_timm", "vit_tiny", "deit", "deit_tiny", "vgg19", "densenet121", "densenet201"]


@pytest.mark.slow
@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_trains_a_step_at_32_px(model, tmp_path, request):
    # model=hf: a folder written by save_pretrained (no Hub here)
    named = [f"model.name={request.getfixturevalue('hf_vit_folder')}"] if model == "hf" else []
    cfg = compose_config("train", [f"model={model}", "data=cifar10", "data.image_size=32", *named], tmp_path)
    module = instantiate(cfg.module).train()
    logits = module(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    module.criterion(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("model", TIMM_MODELS)
def test_model_configs_state_their_pretrained_input(model, tmp_path):
    cfg = compose_config("train", [f"model={model}", "data=cifar10"], tmp_path)
    pretrained = timm.models.get_pretrained_cfg(cfg.model.get("name") or cfg.model.model_name)
    assert list(cfg.data.mean) == list(pretrained.mean) and list(cfg.data.std) == list(pretrained.std)
    assert cfg.data.interpolation == pretrained.interpolation
    if model != "timm":
        assert cfg.model.channels_last == (cfg.model._target_ == "src.models.keras_cnn.KerasCNN")
    if cfg.model._target_ == "src.models.timm_models.timm_model":  # CIFAR's 32 px go up to the model's size
        assert cfg.data.image_size == cfg.model.img_size == pretrained.input_size[-1] == 224
        assert cfg.data.crop_pct == pretrained.crop_pct
    else:  # the Keras-style trunks take the data's size
        assert cfg.data.image_size == 32


def test_deit_on_cifar_resizes_to_224_bicubic_and_augments_only_training(tmp_path):
    datamodule = instantiate(compose_config("train", ["model=deit", "data=cifar10"], tmp_path).data)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    evaluate, augment = datamodule.transform(train=False), datamodule.transform(train=True)
    assert evaluate(image).shape == augment(image).shape == (3, 224, 224)
    torch.testing.assert_close(evaluate(image), evaluate(image))
    assert not torch.equal(augment(image), augment(image))  # random crop + flip
    assert "BICUBIC" in str(evaluate) and "Random" not in str(evaluate)


def test_deit_mlp_head_sits_on_both_tokens_and_the_output_averages_them():
    model = vision_transformer(
        "deit_tiny_distilled_patch16_224", img_size=32, num_classes=10, head="keras_mlp"
    )
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [256, 256, 10]
    assert [m.out_features for m in model.head_dist if isinstance(m, torch.nn.Linear)] == [256, 256, 10]
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.forward_features(x)
    expected = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
    torch.testing.assert_close(model(x), expected)
    assert model.train()(x).shape == (2, 10)  # one output in training too: the label trains both heads


def test_keras_mlp_head_flattens_the_feature_map():
    # 64 px: VGG19's trunk leaves 2x2x512, so the first Dense layer sees 2048 values (as Keras' Flatten does)
    assert KerasCNN("vgg19", img_size=64, num_classes=3).head[1][0].in_features == 2048
    assert KerasCNN("densenet121", img_size=32, num_classes=3, head="linear").head[-1].in_features == 1024


def test_cnns_refuse_images_too_small_for_their_five_halvings():
    with pytest.raises(ValueError, match=r"^img_size=16: vgg19 needs at least 32 px$"):
        KerasCNN("vgg19", img_size=16, num_classes=3)


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["model=vgg19", "data.image_size=16"],
            "data.image_size=16: vgg19 needs at least 32 px (data.image_size=32)",
        ),
        (
            ["model=vgg19", "model.model_name=resnet18"],
            "model.model_name='resnet18': KerasCNN knows timm's VGG and",
        ),
        (
            ["model=densenet121", "model.head=mlp"],
            "model.head='mlp' is not a head; use 'keras_mlp' or 'linear'",
        ),
        (["model=vit_tiny", "model.head=mlp"], "model.head='mlp' is not a head; use 'linear' or 'keras_mlp'"),
    ],
)
def test_bad_model_settings_are_worded_in_config_keys(overrides, line, tmp_path):
    cfg = compose_config("train", ["data=cifar10", *overrides], tmp_path)
    with pytest.raises(UserError, match="^" + re.escape(line)):
        check_values(cfg)


def test_weights_path_loads_a_hub_style_safetensors_file(tmp_path):
    # what the hub serves: 224 px, 1000 ImageNet classes; we build it at 32 px for 10 classes
    source = timm.create_model("vit_tiny_patch16_224")
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(source.state_dict(), path)
    model = vision_transformer("vit_tiny_patch16_224", img_size=32, num_classes=10, weights_path=str(path))
    loaded, expected = model.state_dict(), source.state_dict()
    for name in ("patch_embed.proj.weight", "blocks.11.mlp.fc2.weight", "norm.weight", "cls_token"):
        torch.testing.assert_close(loaded[name], expected[name])
    # timm resamples the 14x14 position grid to 2x2 and starts a new 10-class head
    assert loaded["pos_embed"].shape == (1, 1 + 4, 192) and loaded["head.weight"].shape == (10, 192)


def test_weights_path_loads_a_pth_file_into_a_keras_cnn(tmp_path):
    source = timm.create_model("densenet121")
    path = tmp_path / "densenet121.pth"
    torch.save(source.state_dict(), path)
    model = KerasCNN("densenet121", img_size=32, num_classes=10, weights_path=str(path))
    for name, value in source.features.state_dict().items():
        torch.testing.assert_close(model.features.state_dict()[name], value)


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"model.weights_path=.*is not a file"):
        create_timm_model("vit_tiny_patch16_224", weights_path=str(tmp_path / "nope.safetensors"))


@pytest.mark.slow
def test_pretrained_offline_fails_fast_naming_both_options(tmp_path):
    start = time.monotonic()
    result = run_cli(  # run_cli sets HF_HUB_OFFLINE=1
        "src.train", "model=vit_tiny", "model.pretrained=true", "data=digits", "debug=fdr",
        f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert time.monotonic() - start < 40  # the process itself; huggingface_hub's retries alone take ~50 s
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: model.pretrained=true cannot get the weights of vit_tiny_patch16_224" in result.stderr
    assert "model.weights_path=" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_hub_is_detected_in_seconds(monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1:9")  # nothing listens on port 9
    start = time.monotonic()
    with pytest.raises(UserError, match="127.0.0.1 cannot be reached.*model.weights_path=<that file>"):
        create_timm_model("vit_tiny_patch16_224", pretrained=True)
    assert time.monotonic() - start < 5


@pytest.mark.slow
@pytest.mark.parametrize("model", options("model"))
def test_every_model_config_trains_a_multi_label_step_with_a_frozen_backbone(model, tmp_path, request):
    """Multi-label data (sigmoids, BCE) on every backbone, as a linear probe (freeze=head_only): one step's
    gradients reach the head and only the head."""
    from src.training import multilabel

    named = [f"model.name={request.getfixturevalue('hf_vit_folder')}"] if model == "hf" else []
    overrides = [f"model={model}", "data=digits_multilabel", "data.image_size=32", "freeze=head_only", *named]
    cfg = compose_config("train", overrides, tmp_path)
    multilabel.settle_task(cfg, "multilabel", "data=digits_multilabel")
    module = instantiate(cfg.module).train()
    assert module.multilabel and isinstance(module.criterion, torch.nn.BCEWithLogitsLoss)
    logits = module(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    module.criterion(logits, torch.tensor([[1.0, 0, 1] + [0] * 7, [0, 1.0] + [0] * 8])).backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert 0 < len(trainable) < len(list(module.parameters()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
