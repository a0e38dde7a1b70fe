"""Temperature scaling lowers the NLL of an over-confident model without changing its predictions; test-time
augmentation averages probabilities, equals no augmentation for the identity view, and refuses flips where the
data set's training never flips."""

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import scipy.special
import torch

from src.data.tta import mean_probabilities, shifted, tta_views
from src.errors import UserError
from src.eval import evaluate
from src.export import export
from src.inference.classifiers import METADATA_KEY, onnx_classifier, torch_classifier
from src.inference.files import load_image
from src.predict import predict
from src.training.calibration import TemperatureScaled, calibration_scores, fit_temperature
from tests.conftest import compose_config


def over_confident(n: int = 2000, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right 70 % of the time but give their top class about 99.9 % of the probability."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=generator)
    wrong = torch.rand(n, generator=generator) > 0.7
    predicted = torch.where(
        wrong, (labels + torch.randint(1, classes, (n,), generator=generator)) % classes, labels
    )
    logits = torch.randn(n, classes, generator=generator)
    logits[torch.arange(n), predicted] += 10.0
    return logits, labels


def test_temperature_scaling_lowers_the_nll_of_an_over_confident_model_and_keeps_its_predictions():
    logits, labels = over_confident()
    temperature = fit_temperature(logits, labels)
    before, after = calibration_scores(logits, labels), calibration_scores(logits, labels, temperature)
    assert temperature > 2  # softened
    assert after["nll"] < 0.5 * before["nll"]
    # confidence ~0.97 against accuracy ~0.7, then much closer to it
    assert before["ece"] > 0.25 and after["ece"] < before["ece"] / 3
    assert torch.equal((logits / temperature).argmax(-1), logits.argmax(-1))
    # the optimum: the NLL rises on either side of it
    for other in (0.9 * temperature, 1.1 * temperature):
        assert calibration_scores(logits, labels, other)["nll"] > after["nll"]


def test_an_under_confident_model_gets_a_temperature_below_one():
    logits, labels = over_confident()
    assert fit_temperature(logits / 20, labels) < 1


def test_the_exported_wrapper_divides_the_logits():
    model = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(TemperatureScaled(model, 2.5)(x), model(x) / 2.5)


def tiny_classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()


def test_tta_with_the_identity_view_equals_no_tta():
    model, images = tiny_classifier(), torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        plain = model(images).softmax(-1)
        torch.testing.assert_close(mean_probabilities(model, images, None), plain)
        torch.testing.assert_close(mean_probabilities(model, images, lambda batch: [batch]), plain)
        torch.testing.assert_close(
            mean_probabilities(model, images, None, 2.0), (model(images) / 2).softmax(-1)
        )


def test_crops_average_the_probabilities_of_the_image_and_four_shifts():
    model, images = tiny_classifier(), torch.randn(2, 3, 16, 16)
    views = tta_views("crops", "digits", 16)(images)
    assert len(views) == 5 and torch.equal(views[0], images)
    assert all(view.shape == images.shape for view in views)
    # a shift by the training crop's padding (16 // 8 = 2 px): the image moved, the border reflected
    torch.testing.assert_close(views[4][..., 2:], images[..., :-2])
    torch.testing.assert_close(shifted(images, 0, 2)[..., 1], images[..., 1])  # reflect: column 2 - 1 = 1
    with torch.no_grad():
        expected = torch.stack([model(view).softmax(-1) for view in views]).mean(0)
        averaged = mean_probabilities(model, images, tta_views("crops", "digits", 16))
    torch.testing.assert_close(averaged, expected)
    torch.testing.assert_close(averaged.sum(-1), torch.ones(2))


def test_hflip_mirrors_photos_and_is_refused_for_digits():
    images = torch.randn(1, 3, 8, 8)
    original, mirrored = tta_views("hflip", "cifar", 8)(images)
    assert torch.equal(mirrored, images.flip(-1)) and torch.equal(original, images)
    with pytest.raises(
        UserError,
        match=r"tta=hflip is not valid for this data set: .* never flips images, .* \(a mirrored digit is no digit\)",
    ):
        tta_views("hflip", "digits", 16)
    with pytest.raises(UserError, match="tta=flip is unknown: use tta=none, tta=crops or tta=hflip"):
        tta_views("flip", "cifar", 32)


# src.eval in this process, on the checkpoint's own data set, without workers or a progress bar
IN_PROCESS = ["trainer.accelerator=cpu", "+data.num_workers=0", "~callbacks.rich_progress_bar"]


@pytest.fixture(scope="module")
def calibrated(tiny_checkpoint, tmp_path_factory) -> Path:
    """The run dir of src.eval calibrate=temperature on the tiny digits checkpoint, which stays as it was."""
    out = tmp_path_factory.mktemp("calibrated")
    original = tiny_checkpoint.read_bytes()
    evaluate(
        compose_config("eval", [f"ckpt_path={tiny_checkpoint}", "calibrate=temperature", *IN_PROCESS], out)
    )
    assert tiny_checkpoint.read_bytes() == original
    return out


def test_eval_reports_the_calibration_error_before_and_after_the_fitted_temperature(calibrated):
    summary = json.loads((calibrated / "summary.json").read_text())
    calibration = summary["calibration"]
    assert (
        summary["temperature"] == calibration["temperature"] and abs(math.log(summary["temperature"])) > 0.05
    )
    # fitted on the validation split: its NLL can only fall there
    assert calibration["val_nll_after"] < calibration["val_nll_before"]
    assert calibration["val_images"] == 180
    # what was tested is the calibrated file, whose scores the test metrics repeat
    assert summary["tested_checkpoint"] == calibration["checkpoint"] == str(calibrated / "calibrated.ckpt")
    assert summary["test"]["test/ece"] == pytest.approx(calibration["test_ece_after"], abs=1e-4)
    assert (calibrated / "reliability.png").stat().st_size > 10_000
    # a plain float: the calibrated copy loads without unpickling code
    assert type(torch.load(calibrated / "calibrated.ckpt", weights_only=True)["temperature"]) is float


def test_the_temperature_reaches_predict_and_the_onnx_export(
    calibrated, tiny_checkpoint, image_files, tmp_path
):
    checkpoint = calibrated / "calibrated.ckpt"
    temperature = torch.load(checkpoint, weights_only=True)["temperature"]
    exported = export(compose_config("export", [f"ckpt_path={checkpoint}"], tmp_path))
    assert json.loads(onnx_metadata(exported))["temperature"] == temperature
    calibrated_model = torch_classifier(checkpoint, torch.device("cpu"))
    inputs = [
        calibrated_model.transform(load_image(file)) for file in sorted(image_files.glob("digit_*.png"))
    ]
    probabilities = calibrated_model.run(inputs)
    plain = torch_classifier(tiny_checkpoint, torch.device("cpu")).run(inputs)
    np.testing.assert_allclose(
        probabilities, scipy.special.softmax(np.log(plain) / temperature, axis=-1), atol=1e-5
    )
    assert np.abs(probabilities - plain).max() > 1e-3
    np.testing.assert_allclose(
        onnx_classifier(exported).run([x.numpy() for x in inputs]), probabilities, atol=1e-5
    )
    # the Lightning route of checkpoints without their preprocessing facts
    old = torch.load(checkpoint, weights_only=True)
    del old["preprocessing"]
    torch.save(old, tmp_path / "old.ckpt")
    np.testing.assert_allclose(
        torch_classifier(tmp_path / "old.ckpt", torch.device("cpu")).run(inputs), probabilities, atol=1e-5
    )
    # test-time augmentation: the same views on both routes
    with_crops = torch_classifier(checkpoint, torch.device("cpu"), "crops").run(inputs)
    np.testing.assert_allclose(
        onnx_classifier(exported, "crops").run([x.numpy() for x in inputs]), with_crops, atol=1e-5
    )
    assert np.abs(with_crops - probabilities).max() > 1e-5  # the tiny model: near uniform, little to change


def onnx_metadata(path: Path) -> str:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY]


def error_line(capsys, run, cfg) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


@pytest.mark.parametrize(
    ("command", "option", "message"),
    [
        (
            "eval",
            "tta=hflip",
            "error: tta=hflip is not valid for this data set: its training recipe ('digits') never flips",
        ),
        (
            "predict",
            "tta=hflip",
            "error: tta=hflip is not valid for this data set: its training recipe ('digits') never flips",
        ),
        ("eval", "tta=mirror", "error: tta=mirror is unknown: use tta=none, tta=crops or tta=hflip"),
        ("predict", "tta=mirror", "error: tta=mirror is unknown: use tta=none, tta=crops or tta=hflip"),
        (
            "eval",
            "calibrate=platt",
            "error: calibrate=platt is unknown: use calibrate=none or calibrate=temperature",
        ),
    ],
)
def test_bad_tta_and_calibrate_values_are_one_error_line(
    tiny_checkpoint, image_files, tmp_path, capsys, command, option, message
):
    run, extra = {"eval": (evaluate, IN_PROCESS), "predict": (predict, [f"inputs={image_files}"])}[command]
    cfg = compose_config(command, [f"ckpt_path={tiny_checkpoint}", option, *extra], tmp_path)
    assert error_line(capsys, run, cfg).startswith(message)
