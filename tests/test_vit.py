"""The scratch ViT: shapes, pooling, its parameter count at the documented size, and input checks."""

import pytest
import torch

from src.errors import UserError
from src.models.vit import VisionTransformer


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


def test_bad_sizes_are_reported():
    with pytest.raises(UserError, match=r"data.image_size=30 is not a multiple of model.patch_size=4"):
        VisionTransformer(img_size=30, patch_size=4)
    with pytest.raises(UserError, match=r"model.embed_dim=32 is not divisible by model.num_heads=3"):
        VisionTransformer(embed_dim=32, num_heads=3)
    with pytest.raises(
        UserError, match=r"model.pool='avg' is not a pooling: use model.pool=cls, mean or seq"
    ):
        VisionTransformer(pool="avg")
