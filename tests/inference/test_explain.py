"""Where models look: attention rollout equals its formula, the scratch ViT's explicit attention path equals the
fused one, maps for every model family (prefix tokens and patch grids from the model), src.explain's files,
and the report's attention.png (and its switch)."""

import numpy as np
import pytest
import timm
import torch

from src.explain import explain
from src.inference.attention_maps import (
    attention_layers,
    gradcam_layer,
    heatmaps,
    rollout,
    split_tokens,
    unfused_attention,
)
from src.models.keras_cnn import KerasCNN
from src.models.timm_models import vision_transformer
from src.models.vit import VisionTransformer
from src.reporting.artefacts import displayable
from src.reporting.attention import plot_test_attention
from src.train import train
from tests.conftest import QUICK, TINY_VIT, compose_config


def test_rollout_of_a_hand_built_two_layer_stack_equals_the_formula():
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(2):  # (batch 1, 2 heads, 3 tokens), rows sum to 1
        weights = rng.random((1, 2, 3, 3))
        layers.append(weights / weights.sum(-1, keepdims=True))
    expected = np.eye(3)
    for attention in layers:  # Abnar & Zuidema: heads averaged, 0.5 A + 0.5 I, rows to 1, product over layers
        fused = 0.5 * attention[0].mean(axis=0) + 0.5 * np.eye(3)
        fused /= fused.sum(-1, keepdims=True)
        expected = fused @ expected
    got = rollout([torch.from_numpy(a) for a in layers])
    np.testing.assert_allclose(got[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, atol=1e-6)


def test_the_scratch_vits_explicit_attention_equals_the_fused_path():
    torch.manual_seed(0)
    model = VisionTransformer(
        img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_dim=64
    ).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fused = model(images)
        with unfused_attention(model) as attentions:
            explicit = model(images)
    assert (explicit - fused).abs().max() <= 1e-5
    assert [a.shape for a in attentions] == [(3, 4, 65, 65)] * 2  # 8x8 patches + class token, per layer
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(3, 4, 65))
    assert all(layer.fused_attn for layer in attention_layers(model))  # training keeps the fused kernel
    with torch.no_grad():
        model(images)
    assert len(attentions) == 2  # the hooks are gone


@pytest.mark.parametrize(
    ("build", "prefix", "side"),
    [
        (
            lambda: VisionTransformer(
                img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_dim=64
            ),
            1,
            8,
        ),
        (lambda: vision_transformer("vit_tiny_patch16_224", img_size=64, num_classes=10), 1, 4),
        (lambda: vision_transformer("deit_tiny_distilled_patch16_224", img_size=64, num_classes=10), 2, 4),
    ],
    ids=["scratch_vit", "timm_vit", "distilled_deit"],
)
def test_transformers_get_rollout_and_gradcam_maps(build, prefix, side):
    model = build().eval()
    size = 32 if side == 8 else 64
    images = torch.randn(2, 3, size, size)
    with torch.no_grad(), unfused_attention(model) as attentions:
        model(images)
    assert split_tokens(attentions[-1].shape[-1]) == (prefix, side)
    layer, dropped = gradcam_layer(model, images)
    assert dropped == prefix and layer is list(model.blocks)[-1].norm1
    for method in ("rollout", "gradcam"):
        maps = heatmaps(model, images, method)
        assert maps.shape == (2, size, size) and maps.min() >= 0 and maps.max() == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("name", ["vgg19", "densenet121"])
def test_cnns_get_gradcam_maps_and_no_rollout(name, capsys):
    model = KerasCNN(name, img_size=32, num_classes=10, head="linear").eval()
    images = torch.randn(2, 3, 32, 32)
    layer, dropped = gradcam_layer(model, images)
    assert dropped is None and layer in set(model.features.modules())
    maps = heatmaps(model, images, "gradcam")
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() <= 1
    assert all(p.grad is None for p in model.parameters()) and all(
        p.requires_grad for p in model.parameters()
    )
    with pytest.raises(Exception, match="method=rollout needs attention layers"):
        heatmaps(model, images, "rollout")


@pytest.mark.parametrize(
    ("name", "size", "stage", "kwargs"),
    [
        ("resnet18", 32, "layer3", {}),  # layer4's map is 1x1 at 32 px
        ("convnext_atto", 64, "stages.3", {}),
        # Swin's stages hand on (B, H, W, C) maps; a narrow one-block-per-stage Swin for speed
        (
            "swin_tiny_patch4_window7_224",
            224,
            "layers.3",
            {"embed_dim": 24, "depths": (1,) * 4, "num_heads": (1,) * 4},
        ),
    ],
)
def test_timm_cnns_and_swin_get_gradcam_on_their_last_stage_of_2x2_cells_or_more(name, size, stage, kwargs):
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    images = torch.randn(2, 3, size, size)
    layer, dropped = gradcam_layer(model, images)
    assert layer is model.get_submodule(stage) and dropped is None
    maps = heatmaps(model, images, "gradcam")
    assert maps.shape == (2, size, size) and maps.min() >= 0 and maps.max() == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("method", ["rollout", "gradcam"])
def test_explain_writes_one_overlay_per_readable_image(
    tiny_checkpoint, image_files, tmp_path, method, caplog
):
    cfg = compose_config(
        "explain", [f"ckpt_path={tiny_checkpoint}", f"inputs={image_files}", f"method={method}"], tmp_path
    )
    out = explain(cfg)
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == [f"000{i}_digit_{i}.png" for i in range(4)] + ["0004_photo.png"]
    assert (out / "grid.png").is_file() and (out / "predictions.csv").read_text().count("\n") == 6
    assert "broken.jpg: not a readable image" in caplog.text


def test_explain_rejects_an_unknown_method(tiny_checkpoint, image_files, tmp_path, capsys):
    cfg = compose_config(
        "explain", [f"ckpt_path={tiny_checkpoint}", f"inputs={image_files}", "method=saliency"], tmp_path
    )
    with pytest.raises(SystemExit) as exit_info:
        explain(cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: method=saliency is not a method: use method=rollout or method=gradcam"
    ]


def test_every_test_run_writes_attention_png_unless_switched_off(tiny_sweep, tmp_path):
    assert (tiny_sweep / "0" / "attention.png").is_file()  # and TensorBoard's test/attention: test_reporting
    args = [
        "data=digits",
        *TINY_VIT,
        *QUICK,
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
    ]
    train(compose_config("train", [*args, "callbacks.report.attention=false"], tmp_path))
    assert (tmp_path / "misclassified.png").is_file() and not (tmp_path / "attention.png").exists()


def test_the_reports_attention_grid_runs_gradcam_inside_lightnings_inference_mode(tmp_path):
    model = KerasCNN("vgg19", img_size=32, num_classes=3, head="linear").eval()
    with torch.inference_mode():  # as in on_test_end: inference tensors, no autograd
        images = torch.randn(3, 3, 32, 32)
        wrong = {"image": images[:2], "target": torch.tensor([0, 1]), "pred": torch.tensor([1, 2])}
        right = {"image": images[2:], "target": torch.tensor([2]), "pred": torch.tensor([2])}
        for group in (wrong, right):
            group["confidence"] = torch.full((len(group["image"]),), 0.5)
        fig = plot_test_attention(
            model, wrong, right, ["a", "b", "c"], [0.5] * 3, [0.5] * 3, tmp_path / "a.png"
        )
    assert "Grad-CAM" in fig.texts[0].get_text()
    (picture,) = fig.axes[0].images  # the image with its heat map blended in
    plain = displayable(images[:1], [0.5] * 3, [0.5] * 3)[0]
    assert picture.get_array().shape == plain.shape and not np.allclose(picture.get_array(), plain, atol=0.05)
    assert [ax.get_title().split(" - ")[0] for ax in fig.axes[:3]] == ["wrong", "wrong", "right"]
    assert (tmp_path / "a.png").is_file()
