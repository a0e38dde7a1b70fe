"""Multi-label classification: its metrics agree with scikit-learn's, the thresholds fitted on val are each
label's F1-maximising ones, a checkpoint's thresholds reach src.predict unchanged, and a tiny model trains."""

import json

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

from src.errors import UserError
from src.training import multilabel
from src.training.module import ClassifierModule
from tests.conftest import compose_config


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (200, 6))
    logits = torch.tensor(rng.normal(size=(200, 6)) + 1.5 * targets, dtype=torch.float32)
    thresholds = torch.tensor([0.3, 0.4, 0.5, 0.6, 0.7, 0.45])
    probabilities = torch.sigmoid(logits).numpy()
    ranking, thresholded = multilabel.ranking_metrics(6), multilabel.thresholded_metrics(6)
    ranking.update(torch.sigmoid(logits), torch.tensor(targets))
    thresholded.update(multilabel.shifted_probabilities(logits, thresholds), torch.tensor(targets))
    scores = {**ranking.compute(), **thresholded.compute()}

    predicted = probabilities > thresholds.numpy()
    assert scores["map"] == pytest.approx(average_precision_score(targets, probabilities, average="macro"))
    assert scores["map_micro"] == pytest.approx(
        average_precision_score(targets, probabilities, average="micro")
    )
    assert scores["f1"] == pytest.approx(f1_score(targets, predicted, average="macro"))
    assert scores["f1_micro"] == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert scores["exact_match"] == pytest.approx(accuracy_score(targets, predicted))
    assert scores["hamming"] == pytest.approx(hamming_loss(targets, predicted))


def test_fitted_thresholds_maximise_each_labels_f1():
    # label 0: positives at 0.9, 0.6, 0.35; negatives at 0.7, 0.4, 0.1: the best cut keeps 0.9..0.35 (F1 0.75)
    # label 1: separable: the cut lies between its lowest positive (0.55) and highest negative (0.5)
    p = np.array([[0.9, 0.8], [0.7, 0.5], [0.6, 0.55], [0.4, 0.2], [0.35, 0.9], [0.1, 0.3]])
    y = np.array([[1, 1], [0, 0], [1, 1], [0, 0], [1, 1], [0, 0]])
    thresholds = multilabel.fit_thresholds(p, y)
    assert thresholds == pytest.approx([(0.35 + 0.1) / 2, (0.55 + 0.5) / 2])
    # no threshold does better than the fitted one, on any label
    rng = np.random.default_rng(1)
    p, y = rng.random((300, 4)), rng.integers(0, 2, (300, 4))
    p = np.clip(p + 0.3 * y, 0, 1)
    for j, t in enumerate(multilabel.fit_thresholds(p, y)):
        best = max(f1_score(y[:, j], p[:, j] > c, zero_division=0) for c in np.unique(p[:, j]) - 1e-9)
        assert f1_score(y[:, j], p[:, j] > t) == pytest.approx(best)
    assert multilabel.fit_thresholds(p, np.zeros_like(y)) == [0.5] * 4  # no positives: the default


def test_precision_thresholds_keep_the_most_positives_at_the_chosen_precision():
    # label 0: positives at 0.9, 0.7; negatives at 0.8, 0.6, 0.5: at precision 0.6 the cut keeps 0.9..0.7 (2/3,
    # recall 1), at precision 1 only 0.9 (recall 1/2)
    # label 1: positives at 0.7, 0.6, 0.4; negatives at 0.8, 0.5: precision 0.6 keeps all five (3/5, recall 1),
    # precision 1 is reached nowhere (0.8 is a negative): the F1-maximising threshold, 0.2
    # label 2: its one positive (0.6) is below three negatives: precision 0.6 is reached nowhere
    p = np.array([[0.9, 0.8, 0.9], [0.8, 0.7, 0.8], [0.7, 0.6, 0.7], [0.6, 0.5, 0.6], [0.5, 0.4, 0.5]])
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]])
    f1_thresholds = multilabel.fit_thresholds(p, y)
    assert f1_thresholds == pytest.approx([0.65, 0.2, 0.55])
    thresholds, unreached = multilabel.fit_precision_thresholds(p, y, 0.6)
    assert thresholds == pytest.approx([(0.7 + 0.6) / 2, 0.4 / 2, f1_thresholds[2]]) and unreached == [2]
    thresholds, unreached = multilabel.fit_precision_thresholds(p, y, 1.0)
    assert thresholds == pytest.approx([(0.9 + 0.8) / 2, *f1_thresholds[1:]]) and unreached == [1, 2]
    # on random scores: each reached label's precision is at least the target, and no threshold below its own
    # keeps that precision with more of its positives
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, (300, 4))
    p = np.clip(rng.random((300, 4)) * 0.7 + 0.3 * y, 0, 1)
    thresholds, unreached = multilabel.fit_precision_thresholds(p, y, 0.8)
    assert unreached == []
    for j, t in enumerate(thresholds):
        kept = p[:, j] > t
        assert y[kept, j].mean() >= 0.8
        for lower in np.unique(p[:, j][p[:, j] <= t]) - 1e-9:
            more = p[:, j] > lower
            assert y[more, j].mean() < 0.8 or y[more, j].sum() == y[kept, j].sum()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["module.thresholds=recall"], "module.thresholds=recall is unknown"),
        (["module.thresholds=precision", "module.target_precision=1.5"], "module.target_precision=1.5"),
        (["module.thresholds=precision", "module.target_precision=0"], "module.target_precision=0"),
    ],
)
def test_bad_threshold_fits_are_one_error(tmp_path, overrides, message):
    from hydra.utils import instantiate

    cfg = _module_config(tmp_path, *overrides)
    multilabel.settle_task(cfg, "multilabel", "data=digits_multilabel")
    with pytest.raises((UserError, InstantiationException), match=message):
        instantiate(cfg.module)


def test_losses_and_balanced_positive_weights():
    targets = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    # label 0: 3 positives, 1 negative; label 1: 1 and 3; label 2 has no positives and keeps weight 1
    weights = multilabel.balanced_pos_weight(targets)
    assert weights.tolist() == pytest.approx([1 / 3, 3.0, 1.0])
    logits = torch.randn(4, 3)
    weighted = multilabel.criterion("bce", weights)(logits, targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=weights)
    assert weighted == pytest.approx(expected.item())
    asl = multilabel.criterion("asl")(logits, targets)
    assert torch.isfinite(asl) and asl > 0
    with pytest.raises(UserError, match="module.loss=ce"):
        multilabel.criterion("ce")


def _module_config(tmp_path, *overrides):
    return compose_config(
        "train",
        ["data=digits_multilabel", "model.embed_dim=32", "model.depth=1", "model.num_heads=2",
         "model.mlp_dim=64", *overrides],
        tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize(
    "override",
    ["module.label_smoothing=0.1", "mixup=mixup_cutmix", "module.loss=ce", "module.task=multiclass"],
)
def test_single_label_options_are_refused_for_multi_label_data(tmp_path, override):
    from hydra.utils import instantiate

    cfg = _module_config(tmp_path, override)
    with pytest.raises((UserError, InstantiationException), match="multi-label|single-label|module.task"):
        multilabel.settle_task(cfg, "multilabel", "data=digits_multilabel")
        instantiate(cfg.module)


def test_multi_label_data_switches_val_acc_monitors_to_val_map(tmp_path):
    cfg = _module_config(tmp_path, "callbacks=[default,early_stopping]")
    assert multilabel.settle_task(cfg, "multilabel", "data=digits_multilabel") == "multilabel"
    assert cfg.module.task == "multilabel" and cfg.optimized_metric == "val/map"
    for name in ("model_checkpoint", "early_stopping"):
        assert (cfg.callbacks[name].monitor, cfg.callbacks[name].mode) == ("val/map", "max")


def test_thresholds_travel_in_the_checkpoint_to_predict(tmp_path, capsys):
    """A module's fitted thresholds, saved as src.train saves them, are the ones src.predict applies, from the
    checkpoint, from its ONNX export and from a Hub folder of the model; threshold=0.5 overrides them; src.serve
    answers with the same labels."""
    import lightning as L
    from hydra.utils import instantiate

    from src.inference.classifiers import load_classifier, onnx_classifier, torch_classifier
    from src.predict import predict

    cfg = _module_config(tmp_path, "data.train_images=64", "data.val_images=32", "data.test_images=32")
    multilabel.settle_task(cfg, "multilabel", "data=digits_multilabel")
    model: ClassifierModule = instantiate(cfg.module)
    datamodule = instantiate(cfg.data)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    fitted = model.thresholds.tolist()
    assert fitted != [0.5] * 10  # fitted on the validation pass, not the initial ones
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    classifier = torch_classifier(path, torch.device("cpu"))
    assert classifier.thresholds == fitted
    reloaded = ClassifierModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    assert reloaded.thresholds.tolist() == fitted

    datamodule.setup("test")
    image = datamodule.data_test.dataset.tensors[0][0].permute(1, 2, 0).numpy()
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "canvas.png")
    (probabilities,) = classifier([Image.open(tmp_path / "canvas.png").convert("RGB")])
    # the ONNX export keeps the thresholds and the logits: the same probabilities, so the same labels
    from src.export import export

    onnx = export(compose_config("export", [f"ckpt_path={path}"], tmp_path / "export"))
    onnx_classifier_ = onnx_classifier(onnx)
    assert onnx_classifier_.thresholds == fitted
    (onnx_probabilities,) = onnx_classifier_([Image.open(tmp_path / "canvas.png").convert("RGB")])
    assert onnx_probabilities == pytest.approx(probabilities, abs=1e-5)
    # the Hub folder of the model: transformers' multi-label task, the names and thresholds in config.json, which
    # vitlab's readers apply; its model card says how the labels are read
    hub = export(compose_config("export", [f"ckpt_path={path}", "format=hf"], tmp_path / "export_hf"))
    names = [str(i) for i in range(10)]
    config = json.loads((hub / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification" and config["vitlab"]["thresholds"] == fitted
    card = (hub / "README.md").read_text()
    assert "Multi-label: each label's probability is the sigmoid" in card
    assert config["label_names"] == names
    (hub_probabilities,) = load_classifier(hub, "cpu")([Image.open(tmp_path / "canvas.png").convert("RGB")])
    assert hub_probabilities == pytest.approx(probabilities, abs=1e-5)
    cases = [(path, "null", fitted), (path, 0.5, [0.5] * 10), (onnx, "null", fitted), (hub, "null", fitted),
             (hub, 0.5, [0.5] * 10)]  # fmt: skip

    def labels_above(thresholds):
        """The canvas's labels above `thresholds` with their probabilities, most probable first."""
        above = [(str(j), float(p)) for j, p in enumerate(probabilities) if p > thresholds[j]]
        return sorted(above, key=lambda pair: -pair[1])

    for number, (model_path, threshold, expected_thresholds) in enumerate(cases):
        out = tmp_path / f"predict_{number}"
        out.mkdir()
        cfg = compose_config(
            "predict",
            [f"ckpt_path={model_path}", f"inputs={tmp_path / 'canvas.png'}", f"threshold={threshold}"],
            out,
        )
        ((_, labels),) = predict(cfg)
        expected = labels_above(expected_thresholds)
        assert [name for name, _ in labels] == [name for name, _ in expected]
        assert [p for _, p in labels] == pytest.approx([p for _, p in expected], abs=1e-5)
    # src.serve of the folder answers with the same labels
    from tests.serving.test_server import request, running

    with running(hub) as url:
        status, answer, _ = request(f"{url}/predict", (tmp_path / "canvas.png").read_bytes())
        _, health, _ = request(f"{url}/health")
    assert status == 200 and health["thresholds"] == fitted
    (served,) = answer["predictions"]
    assert [top["label"] for top in served["top"]] == [name for name, _ in labels_above(fitted)]
    assert [top["probability"] for top in served["top"]] == pytest.approx(
        [p for _, p in labels_above(fitted)], abs=1e-5
    )


def test_precision_thresholds_are_fitted_on_val_and_name_the_labels_that_miss(tmp_path, caplog):
    """module.thresholds=precision: the thresholds after the validation pass are those of its probabilities;
    the labels that reach the precision nowhere are named in one warning."""
    import lightning as L
    from hydra.utils import instantiate

    cfg = _module_config(
        tmp_path, "data.train_images=64", "data.val_images=32", "module.thresholds=precision",
        "module.target_precision=1.0",
    )  # fmt: skip
    multilabel.settle_task(cfg, "multilabel", "data=digits_multilabel")
    model: ClassifierModule = instantiate(cfg.module)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        trainer.fit(model, datamodule=instantiate(cfg.data))
    probabilities, targets = model.val_probabilities.compute().numpy(), model.val_targets.compute().numpy()
    expected, unreached = multilabel.fit_precision_thresholds(probabilities, targets, 1.0)
    assert model.thresholds.tolist() == pytest.approx(expected)
    assert unreached  # an untrained model ranks some negative of each of several labels first
    (warning,) = [r.getMessage() for r in caplog.records if "reach a precision" in r.getMessage()]
    assert warning.startswith(f"labels {', '.join(str(j) for j in unreached)} reach a precision of 1.0")


@pytest.mark.slow
def test_quickstart_multilabel_learns_and_reports(tmp_path):
    """The experiment as a user runs it, shortened (3 epochs of 1 000 canvases, test mAP about 0.5 then): far
    above chance (about 0.25: a quarter of the labels are on), and the report gives each label's row, the
    co-occurrence of its errors and its figures, also in TensorBoard, whose HParams view shows the test mAP."""
    import io
    import json

    import matplotlib.image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import run_cli

    result = run_cli(
        "src.train", "experiment=quickstart_multilabel", "trainer.max_epochs=3", "data.train_images=1000",
        "data.test_images=300", "~callbacks.rich_progress_bar", f"paths.log_dir={tmp_path}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "module.task=multilabel (from DigitsMultilabelDataModule)" in result.stdout + result.stderr
    (run,) = (tmp_path / "quickstart_multilabel" / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "multilabel" and summary["test"]["test/map"] > 0.4
    assert list(summary["thresholds"]) == [str(digit) for digit in range(10)]
    report = (run / "report.md").read_text()
    assert "| average precision | threshold | support |" in report and "| macro avg |" in report
    table, pairs = report.split("Labels missed and added in the same image")
    assert table.count("\n| ") == 10 + 2  # below the header: one row per label, micro and macro averages
    # the pairs are the largest counts of the missed x added matrix of the tested predictions
    rows = [
        line.strip("|").split("|")
        for line in pairs.splitlines()
        if line.startswith("| ") and "missed" not in line
    ]
    counts = [int(images) for _, _, images in rows]
    assert len(rows) == 10 and counts == sorted(counts, reverse=True) and counts[0] > 0
    for name in ("pr_curves", "error_cooccurrence", "misclassified"):
        image = matplotlib.image.imread(run / f"{name}.png")
        assert image.ndim == 3 and min(image.shape[:2]) > 400, name
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    for name in ("pr_curves", "error_cooccurrence"):
        (logged,) = events.Images(f"test/{name}")
        decoded = matplotlib.image.imread(io.BytesIO(logged.encoded_image_string))
        assert np.array_equal(decoded[..., :3], matplotlib.image.imread(run / f"{name}.png")[..., :3]), name
    assert [e.value for e in events.Scalars("hp/test/map")] == pytest.approx([summary["test"]["test/map"]])
    assert b"hp/test/map" in events.PluginTagToContent("hparams")["_hparams_/experiment"]
    assert "hp/test/acc" not in events.Tags()["scalars"]
    # its Hub folder: the model card gives the test mAP (the Hub's metadata too) and how the labels are read
    best = next((run / "checkpoints").glob("epoch_*.ckpt"))
    exported = run_cli("src.export", f"ckpt_path={best}", "format=hf",
                       f"paths.log_dir={tmp_path}")  # fmt: skip
    assert exported.returncode == 0, exported.stderr[-3000:]
    (card,) = (tmp_path / "export" / "runs").glob("*/hf/README.md")
    text = card.read_text()
    assert "type: mean_average_precision" in text and "Best validation mAP" in text
    assert f"| test/map | {summary['test']['test/map']:.4f} |" in text and "Per label:" in text
