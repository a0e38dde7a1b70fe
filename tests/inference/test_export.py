"""Shipping a model: ONNX (onnxruntime) and TorchScript files agree with PyTorch for every model family at batch
1 and 3, carry their preprocessing, predict from them as from the checkpoint, fail with one error line; and
predict loads neither Lightning (checkpoints) nor torch (ONNX)."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

import src.export
from src.errors import UserError
from src.export import compare, export, export_onnx, export_torchscript
from src.models.keras_cnn import KerasCNN
from src.models.timm_models import vision_transformer
from src.models.vit import VisionTransformer
from src.predict import predict
from tests.conftest import ROOT, compose_config

FAMILIES = {
    "scratch_vit": lambda: VisionTransformer(
        img_size=32, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_dim=64
    ),
    # a small CCT: convolutional tokenizer with pooling, sequence pooling instead of a class token
    "cct": lambda: VisionTransformer(
        img_size=32,
        tokenizer="conv",
        conv_kernel=3,
        conv_layers=1,
        conv_pool=True,
        pool="seq",
        embed_dim=32,
        depth=2,
        num_heads=2,
        mlp_dim=64,
    ),
    # fewer tokens part-way: TokenLearner + TokenFuser after block 2, a flexible downsampling after block 1
    "scratch_vit_fewer_tokens": lambda: VisionTransformer(
        img_size=32,
        patch_size=4,
        embed_dim=32,
        depth=3,
        num_heads=2,
        mlp_dim=64,
        token_learner={"num_tokens": 4, "layer": 2, "fuse": True},
        downsample=[{"after": 1, "size": 6, "dim": 48}],
    ),
    "timm_vit": lambda: vision_transformer("vit_tiny_patch16_224", img_size=32, num_classes=10),
    "distilled_deit": lambda: vision_transformer(
        "deit_tiny_distilled_patch16_224", img_size=32, num_classes=10
    ),
    "vgg19": lambda: KerasCNN("vgg19", img_size=32, num_classes=10),
    "densenet121": lambda: KerasCNN("densenet121", img_size=32, num_classes=10),
}


# the CNNs take tens of seconds on 2 contended cores (VGG19's 80 MB of weights, DenseNet's 400 layers)
SLOW = {"vgg19", "densenet121"}


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FAMILIES]
)
def test_onnx_export_matches_pytorch_at_batch_1_and_3(family, tmp_path):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    images = torch.randn(3, 3, 32, 32)
    path = tmp_path / "model.onnx"
    exported = export_onnx(model, images[:2], path, 17, '{"facts": 1}')
    worst, flips = compare(model, exported, images)  # batches of 1 and 3: the batch axis is dynamic
    assert worst <= 1e-4 and flips == 0
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {p.key: p.value for p in proto.metadata_props}["vitlab"] == '{"facts": 1}'


@pytest.mark.parametrize("family", ["scratch_vit", pytest.param("distilled_deit", marks=pytest.mark.slow)])
def test_torchscript_export_matches_pytorch(family, tmp_path):
    model = FAMILIES[family]().eval()
    images = torch.randn(3, 3, 32, 32)
    exported = export_torchscript(model, images[:2], tmp_path / "model.pt", 17, "{}")
    worst, flips = compare(model, exported, images)
    assert worst <= 1e-5 and flips == 0


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export")
    return export(compose_config("export", [f"ckpt_path={tiny_checkpoint}"], out))


def test_export_writes_the_preprocessing_and_class_names(exported):
    assert exported.name == "model.onnx"
    proto = onnx.load(str(exported))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["vitlab"])
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert meta | {"class_names": None} == {
        "image_size": 16, "mean": [0.3051] * 3, "std": [0.382] * 3, "interpolation": "bilinear",
        "style": "digits", "native_size": 8, "crop_pct": 0.875, "channels": 3, "class_names": None,
        "temperature": 1.0,
    }  # fmt: skip


def test_predict_from_onnx_gives_the_checkpoints_top_k(tiny_checkpoint, exported, image_files, tmp_path):
    from_ckpt = predict(
        compose_config(
            "predict", [f"ckpt_path={tiny_checkpoint}", f"inputs={image_files}", "topk=3"], tmp_path
        )
    )
    from_onnx = predict(
        compose_config("predict", [f"ckpt_path={exported}", f"inputs={image_files}", "topk=3"], tmp_path)
    )
    assert [file for file, _ in from_onnx] == [file for file, _ in from_ckpt]
    for (_, onnx_top), (_, ckpt_top) in zip(from_onnx, from_ckpt, strict=True):
        assert [name for name, _ in onnx_top] == [name for name, _ in ckpt_top]
        # Pillow's resize against torchvision's: within about one grey level
        assert [p for _, p in onnx_top] == pytest.approx([p for _, p in ckpt_top], abs=2e-3)


def test_torchscript_export_of_a_checkpoint(tiny_checkpoint, tmp_path):
    path = export(compose_config("export", [f"ckpt_path={tiny_checkpoint}", "format=torchscript"], tmp_path))
    extra = {"vitlab": ""}
    torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["vitlab"])["class_names"] == [str(d) for d in range(10)]


def test_predict_from_a_checkpoint_without_its_preprocessing_goes_through_lightning(
    tiny_checkpoint, image_files, tmp_path
):
    old = torch.load(tiny_checkpoint, weights_only=True)
    del old["preprocessing"]  # as checkpoints written before src.export
    torch.save(old, tmp_path / "old.ckpt")
    plain = predict(
        compose_config("predict", [f"ckpt_path={tiny_checkpoint}", f"inputs={image_files}"], tmp_path)
    )
    lightning = predict(
        compose_config("predict", [f"ckpt_path={tmp_path / 'old.ckpt'}", f"inputs={image_files}"], tmp_path)
    )
    assert [[n for n, _ in top] for _, top in plain] == [[n for n, _ in top] for _, top in lightning]
    assert [p for _, top in plain for _, p in top] == pytest.approx(
        [p for _, top in lightning for _, p in top]
    )


def test_predict_imports_no_lightning_for_checkpoints_and_no_torch_for_onnx(
    tiny_checkpoint, exported, image_files
):
    code = (
        "import sys; from pathlib import Path; import src.predict; "
        "from src.inference.classifiers import onnx_classifier, pick_device, torch_classifier; "
        "from src.inference.files import load_image; image = load_image(Path(sys.argv[2])); "
        "onnx_classifier(Path(sys.argv[1]))([image]); torch_free = 'torch' not in sys.modules; "
        "torch_classifier(Path(sys.argv[3]), pick_device('cpu'))([image]); "
        "print(torch_free, 'lightning' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(exported), str(image_files / "digit_0.png"), str(tiny_checkpoint)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "False"]


def error_lines(capsys, cfg) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        export(cfg)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_a_model_onnx_cannot_write_at_its_size_is_one_error_line_naming_the_fix(tmp_path):
    # VGG's classifier pools its last feature map (1x1 at 32 px) up to 7x7, which ONNX has no operator for
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, stride=32),
        torch.nn.AdaptiveAvgPool2d(7),
        torch.nn.Flatten(),
        torch.nn.Linear(196, 10),
    ).eval()
    with pytest.raises(UserError) as raised:
        export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "model.onnx", 17, "{}")
    line = str(raised.value)
    assert line.startswith(
        "format=onnx: torch's ONNX exporter cannot write this model (Unsupported: ONNX export of operator "
        "adaptive_avg_pool2d, output size that are not factor of input size); at data.image_size=32 "
    )
    assert line.endswith("export with format=torchscript or format=hf instead") and "\n" not in line
    assert not (tmp_path / "model.onnx").exists()


def test_a_wrong_opset_and_a_file_that_is_no_checkpoint_are_one_error_line(tiny_checkpoint, tmp_path, capsys):
    (line,) = error_lines(
        capsys, compose_config("export", [f"ckpt_path={tiny_checkpoint}", "opset=9"], tmp_path)
    )
    assert line == "error: opset=9 cannot be written: use an opset from 14 to 20"
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    (line,) = error_lines(
        capsys, compose_config("export", [f"ckpt_path={tmp_path / 'notes.ckpt'}"], tmp_path)
    )
    assert line.startswith("error: ") and "is not a checkpoint written by src.train" in line


def test_an_export_that_fails_the_check_is_deleted_with_one_error_line(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    real = src.export.export_onnx

    def drifting(*args):  # an exporter whose numbers drift by 1e-3
        run = real(*args)
        return lambda images: run(images) + 1e-3

    monkeypatch.setattr(src.export, "export_onnx", drifting)
    (line,) = error_lines(capsys, compose_config("export", [f"ckpt_path={tiny_checkpoint}"], tmp_path))
    assert line.startswith(
        "error: the exported onnx model disagrees with the PyTorch model on 8 test images: "
    )
    assert "max |logit difference| 0.001 (allowed 0.0001)" in line and "model.onnx was deleted" in line
    assert not (tmp_path / "model.onnx").exists()
