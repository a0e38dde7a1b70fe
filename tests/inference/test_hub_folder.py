"""A Hub-ready folder (src.export format=hf): timm loads a timm architecture's folder with the model's logits,
transformers' pipeline gives its top-1 labels, vitlab's own models load back through the allow-list; the model
card carries summary.json's metrics as the Hub's metadata; weights load with safetensors (no pickle); an
offline push is one error line and the folder stays."""

import json
import os
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

from src.export import export
from src.inference.hub_folder import load_folder, write_folder
from src.predict import predict
from tests.conftest import ROOT, compose_config
from tests.inference.test_export import FAMILIES

FACTS = {"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear", "style": "cifar",
         "native_size": None}  # fmt: skip
NAMES = [f"class {i}" for i in range(10)]


@pytest.mark.parametrize(
    "family", ["timm_vit", "distilled_deit", "scratch_vit", "cct", "scratch_vit_fewer_tokens"]
)
def test_a_folder_loads_back_with_the_models_logits(family, tmp_path):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    target = "src.models.timm_models.vision_transformer" if "timm" in family or "deit" in family else None
    config = {"_target_": target or "src.models.vit.VisionTransformer", **model_arguments(family)}
    library = write_folder(model, tmp_path, FACTS, NAMES, config)
    assert library == ("timm" if target else "vitlab")
    images = torch.randn(3, 3, 32, 32)
    loaded, facts, names = load_folder(tmp_path)
    with torch.no_grad():
        assert (loaded(images) - model(images)).abs().max() <= 1e-5
    assert (facts, names) == (FACTS, NAMES)
    config_json = json.loads((tmp_path / "config.json").read_text())
    assert config_json["label_names"] == NAMES and config_json["pretrained_cfg"]["mean"] == [0.5] * 3
    if library == "timm":
        import timm

        # timm's loader given the weights file (the overlay's class count: the head is loaded, not reset)
        by_timm = timm.create_model(
            config_json["architecture"], pretrained=True, num_classes=10, img_size=32,
            pretrained_cfg_overlay={"file": str(tmp_path / "model.safetensors"), "num_classes": 10},
        ).eval()  # fmt: skip
        with torch.no_grad():
            assert (by_timm(images) - model(images)).abs().max() <= 1e-5


def model_arguments(family: str) -> dict:
    """The backbone config a checkpoint of the family holds (what conf/model writes)."""
    if family == "timm_vit":
        return {"model_name": "vit_tiny_patch16_224", "img_size": 32, "num_classes": 10}
    if family == "distilled_deit":
        return {"model_name": "deit_tiny_distilled_patch16_224", "img_size": 32, "num_classes": 10}
    common = {"img_size": 32, "embed_dim": 32, "num_heads": 2, "mlp_dim": 64}
    if family == "cct":
        return {**common, "tokenizer": "conv", "conv_kernel": 3, "conv_layers": 1, "conv_pool": True,
                "pool": "seq", "depth": 2}  # fmt: skip
    if family == "scratch_vit_fewer_tokens":
        return {**common, "patch_size": 4, "depth": 3,
                "token_learner": {"num_tokens": 4, "layer": 2, "fuse": True},
                "downsample": [{"after": 1, "size": 6, "dim": 48}]}  # fmt: skip
    return {**common, "patch_size": 4, "depth": 2}


def test_a_folder_whose_config_names_code_is_refused(tmp_path):
    write_folder(FAMILIES["scratch_vit"](), tmp_path, FACTS, NAMES,
                 {"_target_": "src.models.vit.VisionTransformer", **model_arguments("scratch_vit")})  # fmt: skip
    config = json.loads((tmp_path / "config.json").read_text())
    config["vitlab"]["backbone"]["_target_"] = "os.system"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="os.system"):
        load_folder(tmp_path)


@pytest.fixture(scope="module")
def hub_folder(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf_export")
    return export(compose_config("export", [f"ckpt_path={tiny_checkpoint}", "format=hf"], out))


def test_export_hf_writes_safetensors_config_and_a_card_with_the_runs_metrics(hub_folder, tiny_checkpoint):
    assert sorted(p.name for p in hub_folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    summary = json.loads((tiny_checkpoint.parent.parent / "summary.json").read_text())
    card = ModelCard.load(hub_folder / "README.md")
    assert card.data.library_name == "vitlab" and card.data.pipeline_tag == "image-classification"
    assert card.data.datasets == ["digits"]
    shown = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert shown == {
        "accuracy": summary["test"]["test/acc"],
        "f1": summary["test"]["test/macro_f1"],
        "balanced_accuracy": summary["test"]["test/balanced_acc"],
    }
    text = card.text
    assert "python -m src.train" in text and "| class | precision | recall | f1-score | support |" in text
    assert "Weakest classes:" in text and "vitlab loads this folder" in text


def test_predict_from_the_folder_gives_the_checkpoints_top_k(
    hub_folder, tiny_checkpoint, image_files, tmp_path
):
    def top(ckpt):
        rows = predict(
            compose_config("predict", [f"ckpt_path={ckpt}", f"inputs={image_files}", "topk=3"], tmp_path)
        )
        return [(file.name, [name for name, _ in classes]) for file, classes in rows]

    assert top(hub_folder) == top(tiny_checkpoint)


def test_the_folders_weights_load_without_pickle(hub_folder):
    """safetensors is a header and raw tensors: loading it with pickle's loader disabled still works."""
    code = (
        "import pickle, sys; from safetensors.torch import load_file\n"
        "def refuse(*a, **k): raise AssertionError('pickle used')\n"
        "pickle.load = pickle.loads = pickle.Unpickler = refuse\n"
        "print(len(load_file(sys.argv[1])))"
    )
    result = subprocess.run([sys.executable, "-c", code, str(hub_folder / "model.safetensors")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) > 0


def test_push_offline_is_one_error_line_and_the_folder_stays(tiny_checkpoint, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "src.export", f"ckpt_path={tiny_checkpoint}", "format=hf", "push=true",
         "repo_id=someone/digits-vit", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: could not push") and "someone/digits-vit" in line and "hf upload" in line
    assert (tmp_path / "run" / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_transformers_pipeline_reads_a_timm_folder_with_the_models_top_1(tmp_path, image_files):
    pytest.importorskip("transformers", reason="the optional hf extra: pip install -e '.[hf]'")
    from PIL import Image
    from transformers import pipeline

    torch.manual_seed(0)
    model = FAMILIES["timm_vit"]().eval()
    write_folder(model, tmp_path / "hf", FACTS, NAMES,
                 {"_target_": "src.models.timm_models.vision_transformer", **model_arguments("timm_vit")})  # fmt: skip
    classify = pipeline("image-classification", model=str(tmp_path / "hf"), top_k=1)
    # images at the model's input size, so that both resize alike (not at all)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.open(image_files / f"digit_{i}.png").convert("RGB").resize((32, 32)).save(folder / f"{i}.png")
    ours = predict(
        compose_config("predict", [f"ckpt_path={tmp_path / 'hf'}", f"inputs={folder}", "topk=1"], tmp_path)
    )
    assert len(ours) == 4
    for file, classes in ours:
        assert classify(Image.open(file))[0]["label"] == classes[0][0]


def test_a_calibrated_folder_keeps_the_weights_and_vitlab_divides_the_logits_by_its_temperature(tmp_path):
    torch.manual_seed(0)
    model = FAMILIES["timm_vit"]().eval()
    config = {"_target_": "src.models.timm_models.vision_transformer", **model_arguments("timm_vit")}
    write_folder(model, tmp_path, FACTS, NAMES, config, temperature=2.0)
    assert json.loads((tmp_path / "config.json").read_text())["vitlab"]["temperature"] == 2.0
    images = torch.randn(2, 3, 32, 32)
    loaded, _, _ = load_folder(tmp_path)
    with torch.no_grad():
        assert (loaded(images) - model(images) / 2.0).abs().max() <= 1e-5


@pytest.mark.slow
def test_a_multi_label_timm_folder_gives_sigmoids_in_transformers_and_vitlab(tmp_path, image_files):
    """problem_type multi_label_classification: transformers' pipeline gives each label's sigmoid, as vitlab's
    loader does, which also applies the folder's thresholds."""
    pytest.importorskip("transformers", reason="the optional hf extra: pip install -e '.[hf]'")
    from PIL import Image
    from transformers import pipeline

    from src.inference.classifiers import load_classifier

    torch.manual_seed(0)
    model = FAMILIES["timm_vit"]().eval()
    thresholds = [0.1 * (i + 1) - 0.05 for i in range(10)]
    config = {"_target_": "src.models.timm_models.vision_transformer", **model_arguments("timm_vit")}
    write_folder(model, tmp_path / "hf", FACTS, NAMES, config, thresholds=thresholds)
    saved = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (
        saved["problem_type"] == "multi_label_classification" and saved["vitlab"]["thresholds"] == thresholds
    )
    image = Image.open(image_files / "digit_0.png").convert("RGB").resize((32, 32))  # no resizing by either
    ours = load_classifier(tmp_path / "hf", "cpu")
    assert ours.thresholds == thresholds
    (probabilities,) = ours([image])
    with torch.no_grad():
        logits = model(torch.from_numpy(ours.transform(image).numpy())[None])[0]
    assert probabilities == pytest.approx(torch.sigmoid(logits).numpy(), abs=1e-5)
    scores = {s["label"]: s["score"] for s in pipeline("image-classification", model=str(tmp_path / "hf"))(
        image, top_k=len(NAMES)
    )}  # fmt: skip
    assert [scores[name] for name in NAMES] == pytest.approx(probabilities.tolist(), abs=1e-4)
