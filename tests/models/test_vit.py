"""The scratch ViT: shapes, pooling, its parameter count at the documented size, and input checks."""

import re

import pytest
import torch

from src.cli.checks import check_values
from src.errors import UserError
from src.models.vit import VisionTransformer
from tests.conftest import compose_config


def test_vit_lite_7_4_size_and_output_shape():
    model = VisionTransformer()  # ViT-Lite-7/4 defaults: patch 4, dim 256, depth 7, 4 heads, MLP 512
    assert sum(p.numel() for p in model.parameters()) == 3_722_250  # CCT paper: 3.72 M
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_pooling_options_train(pool):
    model = VisionTransformer(
        img_size=16, num_classes=3, embed_dim=32, depth=2, num_heads=2, mlp_dim=64, pool=pool, drop_path=0.1
    )
    logits = model(torch.randn(4, 3, 16, 16))
    logits.sum().backward()
    assert logits.shape == (4, 3)
    assert all(p.grad is not None for p in model.parameters())


def test_eval_mode_is_deterministic_with_dropout_and_drop_path():
    model = VisionTransformer(
        img_size=16, embed_dim=32, depth=2, num_heads=2, mlp_dim=64, dropout=0.5, drop_path=0.5
    ).eval()
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), model(x))


def test_bad_arguments_are_value_errors_in_the_models_own_words():
    with pytest.raises(ValueError, match=r"^img_size=30 is not a multiple of patch_size=4$"):
        VisionTransformer(img_size=30, patch_size=4)
    with pytest.raises(ValueError, match=r"^dim=32 is not divisible by num_heads=3$"):
        VisionTransformer(embed_dim=32, num_heads=3)
    with pytest.raises(ValueError, match=r"^pool='avg' is not a pooling: use cls, mean or seq$"):
        VisionTransformer(pool="avg")


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            ["data.image_size=30"],
            "data.image_size=30 is not a multiple of model.patch_size=4: change one of them",
        ),
        (
            ["model.embed_dim=32", "model.num_heads=3"],
            "model.embed_dim=32 is not divisible by model.num_heads=3",
        ),
        (["model.pool=avg"], "model.pool='avg' is not a pooling: use model.pool=cls, mean or seq"),
        (["+model.tokenizer=convs"], "model.tokenizer='convs' is unknown: use model.tokenizer=patch or conv"),
        (
            ["model=cct", "model.conv_layers=0"],
            "model.conv_kernel=3 / model.conv_layers=0: both must be at least 1",
        ),
    ],
)
def test_bad_settings_are_worded_in_config_keys(overrides, line, tmp_path):
    cfg = compose_config("train", ["data=digits", *overrides], tmp_path)
    with pytest.raises(UserError, match="^" + re.escape(line)):
        check_values(cfg)
