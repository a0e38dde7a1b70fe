"""TokenLearner, TokenFuser and FDViT's flexible downsampling in the scratch ViT: shapes per placement, exact
properties, counted FLOPs against a hand count, error lines, and a checkpoint that rebuilds and predicts."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from src.cli.checks import check_model_settings
from src.errors import UserError
from src.models.token_learner import FlexibleDownsample, TokenFuser, TokenLearner
from src.models.vit import Block, VisionTransformer
from src.token_maps import main as token_maps_main
from src.token_maps import token_maps
from src.training.module import ClassifierModule
from src.upstream_fixes.flops import measure_flops
from tests.conftest import QUICK, compose_config, run_cli, run_dirs

# 16 px, patch 4: a 4x4 map of N = 16 patch tokens, plus the class token
SMALL = dict(img_size=16, patch_size=4, embed_dim=32, depth=4, num_heads=4, mlp_dim=64, num_classes=10)


def vit(**options) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(**SMALL, **options).eval()


def flops(module, *args) -> int:
    with torch.no_grad():
        return measure_flops(module, lambda: module(*args))


def tokens_per_block(model: VisionTransformer) -> list[int]:
    """How many tokens each block sees, read with forward hooks."""
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    model(torch.randn(2, 3, 16, 16))
    return seen


@pytest.mark.parametrize(
    "options, tokens",
    [
        ({}, [17, 17, 17, 17]),
        ({"token_learner": {"num_tokens": 8, "layer": 0}}, [9, 9, 9, 9]),
        ({"token_learner": {"num_tokens": 8, "layer": 2}}, [17, 17, 9, 9]),
        ({"token_learner": {"num_tokens": 4, "layer": 3}}, [17, 17, 17, 5]),
        ({"token_learner": {"num_tokens": 4, "layer": 2, "fuse": True}}, [17, 17, 5, 5]),
        ({"downsample": [{"after": 2, "size": 3, "dim": 48}]}, [17, 17, 10, 10]),
        ({"downsample": [{"after": 1, "size": 3}, {"after": 3, "size": 2, "dim": 64}]}, [17, 10, 10, 5]),
        (
            {"downsample": [{"after": 1, "size": 3}], "token_learner": {"num_tokens": 2, "layer": 2}},
            [17, 10, 3, 3],
        ),
    ],
)
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_tokens_per_block_and_output_shapes(options, tokens, pool):
    model = vit(pool=pool, **options)
    assert tokens_per_block(model) == tokens
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)
    width = (options.get("downsample") or [{}])[-1].get("dim", 32)
    out = 17 if options.get("token_learner", {}).get("fuse") else tokens[-1]  # TokenFuser restores positions
    assert model.forward_features(torch.randn(2, 3, 16, 16)).shape == (2, out, width)


def test_fused_blocks_hand_all_positions_on():
    model = vit(token_learner={"num_tokens": 4, "layer": 2, "fuse": True})
    x = model.pos_drop(model.patch_embed(torch.randn(2, 3, 16, 16)))
    x = torch.cat([model.cls_token.expand(2, -1, -1), x], dim=1)
    assert model.forward_blocks(x).shape == (2, 17, 32)  # TokenFuser restores the 16 positions
    assert sorted(model.token_learner) == sorted(model.token_fuser) == ["2", "3"]  # one pair per later block


def test_token_learner_weights_sum_to_one_over_positions():
    learner = TokenLearner(dim=32, num_tokens=8)
    maps = learner.maps(torch.randn(3, 16, 32))
    assert maps.shape == (3, 8, 16) and (maps >= 0).all()
    torch.testing.assert_close(maps.sum(dim=-1), torch.ones(3, 8))


def test_identity_maps_with_one_token_per_position_give_the_plain_vit(monkeypatch):
    """S = N and maps = the identity: the learned tokens are the patch tokens, so the model is the plain ViT."""
    plain, learned = vit(), vit(token_learner={"num_tokens": 16, "layer": 2})
    learned.load_state_dict(plain.state_dict(), strict=False)  # same blocks, head, embeddings
    monkeypatch.setattr(TokenLearner, "maps", lambda self, x: torch.eye(16).expand(len(x), -1, -1))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(learned(x), plain(x), rtol=0, atol=0)


def test_a_fresh_token_fuser_adds_nothing():
    """Scenic zero-initialises the fuser's token mixing, so at the start the fused blocks leave positions as
    they were (the residual alone) and training starts from the shallower plain network."""
    fuser = TokenFuser(dim=32, num_tokens=4)
    out = fuser(torch.randn(2, 4, 32), torch.randn(2, 16, 32))
    assert out.shape == (2, 16, 32) and not out.any()
    model = vit(token_learner={"num_tokens": 4, "layer": 1, "fuse": True})
    assert all(not f.mix.weight.any() for f in model.token_fuser.values())  # ViT's init left them at zero


def test_resampling_equals_fdvits_grid_sample():
    """FDViT resamples with grid_sample on a linspace(-1, 1) grid (align_corners=True); we use interpolate."""
    layer = FlexibleDownsample(in_dim=8, out_dim=8, size=3)
    x = torch.randn(2, 8, 5, 5)
    d = torch.linspace(-1, 1, 3)
    mesh_x, mesh_y = torch.meshgrid(d, d, indexing="ij")
    grid = torch.stack((mesh_y, mesh_x), 2).expand(2, -1, -1, -1)
    theirs = F.grid_sample(x, grid, align_corners=True)
    ours = F.interpolate(x, size=(layer.size, layer.size), mode="bilinear", align_corners=True)
    torch.testing.assert_close(ours, theirs)


def block_flops(n: int, c: int, m: int) -> int:
    """qkv 2nc*3c + scores 2n*n*c + weighted values 2n*n*c + projection 2nc*c + MLP 2nc*m*2."""
    return 2 * n * c * 3 * c + 4 * n * n * c + 2 * n * c * c + 4 * n * c * m


def test_flops_of_one_block_equal_the_hand_count():
    block = Block(32, 4, 64, 0.0, 0.0, 0.0).eval()
    assert flops(block, torch.randn(1, 17, 32)) == block_flops(17, 32, 64)


def test_token_learner_flops_equal_the_hand_count():
    n, c, s = 16, 32, 8
    patches, mlp, pooled = 2 * n * 48 * c, 2 * n * c * 64 + 2 * n * 64 * s, 2 * s * n * c
    assert flops(TokenLearner(c, s), torch.randn(1, n, c)) == mlp + pooled
    model = vit(token_learner={"num_tokens": s, "layer": 2})
    expected = (
        patches + 2 * block_flops(n + 1, c, 64) + mlp + pooled + 2 * block_flops(s + 1, c, 64) + 2 * c * 10
    )
    assert flops(model, torch.randn(1, 3, 16, 16)) == expected
    assert expected < flops(vit(), torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"token_learner": {"num_tokens": 8, "layer": 4}}, "token_learner.layer=4 with depth=4"),
        ({"token_learner": {"num_tokens": 0, "layer": 2}}, "token_learner.num_tokens=0: it must be"),
        ({"token_learner": {"num_tokens": 8}}, "token_learner.layer=None"),
        ({"downsample": [{"after": 2, "size": 5}]}, "size=5 is larger than the 4x4 token map"),
        ({"downsample": [{"after": 1, "size": 3}, {"after": 2, "size": 4}]}, "larger than the 3x3 token map"),
        ({"downsample": [{"after": 2, "size": 2}, {"after": 2, "size": 1}]}, "give after"),
        ({"downsample": [{"after": 4, "size": 2}]}, "give after"),
        (
            {"downsample": [{"after": 2, "size": 2, "dim": 30}]},
            "dim=30 is not divisible by num_heads=4",
        ),
        (
            {"token_learner": {"num_tokens": 4, "layer": 1}, "downsample": [{"after": 2, "size": 2}]},
            "leaves no token map",
        ),
    ],
)
def test_bad_settings_are_named(options, message):
    with pytest.raises(ValueError, match=message):  # the model's own arguments: it knows no config
        VisionTransformer(**SMALL, **options)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.token_learner.layer=3", "model.token_learner.layer=3 with model.depth=3"),
        ("model.downsample=[{after:1,size:2,dim:31}]", "model.downsample entry .* not divisible by model.num_heads=2"),
        ("model.token_learner.fuse=false", "model.downsample entry .* or set model.token_learner.fuse=true"),
    ],
)  # fmt: skip
def test_the_config_layer_names_bad_settings_in_config_keys(override, message, tmp_path):
    options = ["model.token_learner.num_tokens=4", "model.token_learner.layer=1"]
    if "fuse" in override:
        options.append("model.downsample=[{after:2,size:2}]")
    cfg = compose_config("train", [*TINY, *options, override], tmp_path)
    with pytest.raises(UserError, match=message):
        check_model_settings(cfg)


TINY = ["data=digits", "data.image_size=16", "model.embed_dim=32", "model.depth=3", "model.num_heads=2",
        "model.mlp_dim=64"]  # fmt: skip


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.token_learner.layer=3", "error: model.token_learner.layer=3 with model.depth=3"),
        (
            "model.token_learner.num_tokens=-1",
            "error: model.token_learner.num_tokens=-1: it must be at least 1",
        ),
        ("model.downsample=[{after:1,size:6}]", "error: model.downsample entry"),
    ],
)
@pytest.mark.slow
def test_bad_settings_give_one_error_line(override, message, tmp_path):
    defaults = ["model.token_learner.num_tokens=4", "model.token_learner.layer=1"]
    result = run_cli("src.train", *TINY, *QUICK, *defaults, override, f"paths.log_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_checkpoint_with_both_options_rebuilds_and_predicts(tmp_path):
    options = [
        "model.token_learner.num_tokens=4", "model.token_learner.layer=2", "model.token_learner.fuse=true",
        "model.downsample=[{after:1,size:3,dim:48}]", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
    ]  # fmt: skip
    result = run_cli("src.train", *TINY, *QUICK, *options, "task_name=fewer", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = run_dirs(tmp_path, "fewer")
    checkpoint = json.loads((run / "summary.json").read_text())["best_checkpoint"]
    model = ClassifierModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    assert sorted(model.backbone.token_fuser) == ["2"] and list(model.backbone.downsample) == ["1"]
    assert model.backbone.num_features == 48
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
        images / "a.png"
    )
    result = run_cli(
        "src.predict", f"ckpt_path={checkpoint}", f"inputs={images}", f"paths.log_dir={tmp_path}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 images classified" in result.stdout + result.stderr
    picture = token_maps_main([str(checkpoint), str(images / "a.png"), "--out", str(tmp_path / "maps.png")])
    # the image and its 4 maps, 16 px tiles with 1 px padding
    assert Image.open(picture).size == (5 * 17 + 1, 18)
    with pytest.raises(SystemExit):  # never overwrites
        token_maps_main([str(checkpoint), str(images / "a.png"), "--out", str(picture)])


def test_token_maps_are_distributions_over_the_map():
    model = vit(token_learner={"num_tokens": 3, "layer": 1}, downsample=[{"after": 1, "size": 3}])
    maps = token_maps(model, torch.randn(2, 3, 16, 16))
    assert maps.shape == (2, 3, 3, 3)  # the 3x3 map left after downsampling
    torch.testing.assert_close(maps.sum(dim=(2, 3)), torch.ones(2, 3))
    with pytest.raises(UserError, match="this model has no TokenLearner"):
        token_maps(vit(), torch.randn(1, 3, 16, 16))


def test_cpu_attention_is_counted_forward_and_backward():
    """torch 2.14 counts 0 FLOPs for CPU attention (pytorch/pytorch#195460); src.upstream_fixes.flops adds the formulas to the
    counter that Lightning's measure_flops (and ThroughputMonitor) use."""
    q = torch.randn(1, 2, 8, 4, requires_grad=True)
    attention = torch.nn.Identity()  # measure_flops wants a module; what it counts is the functions'
    counted = measure_flops(attention, lambda: F.scaled_dot_product_attention(q, q, q), torch.Tensor.sum)
    forward = 4 * 2 * 8 * 8 * 4  # scores and weighted values: 2 matmuls of 2*h*n*n*d
    # the backward recomputes the scores, then 4 gradient matmuls: 5 matmuls to the forward's 2
    assert counted == forward * 7 // 2


def test_cost_command_counts_fewer_flops_with_learned_tokens(capsys):
    from src.bench.cost import main

    tiny = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.mlp_dim=64"]
    learned = [*tiny, "model.token_learner.num_tokens=2", "model.token_learner.layer=1"]
    args = ["--image-size", "16", "--steps", "2", "--warmup", "0", "--repeats", "1", "--batch-size", "4"]
    plain, tl = main([*args, "--variant", "plain", *tiny, "--variant", "S=2 @1", *learned])
    assert (plain["variant"], tl["variant"]) == ("plain", "S=2 @1")
    # the second block sees 1 + 2 tokens instead of 1 + 16: counted, not timed
    assert float(tl["MFLOPs/image (forward)"]) < float(plain["MFLOPs/image (forward)"])
    assert tl["params (M)"] > plain["params (M)"] and plain["CPU train img/s"] > 0
    assert "| S=2 @1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # a bad setting: one error line, exit 2
        main([*args, "--steps", "0", "--variant", "bad", *tiny, "model.token_learner.num_tokens=0"])
    assert exit_info.value.code == 2
