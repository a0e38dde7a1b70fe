"""The model card (README.md) of an exported model folder, from its training run: the Hub's YAML metadata
(library, tags, data set, metrics with their values) by huggingface_hub's ModelCardData and EvalResult, then
how to load it, the command that trained it, its test metrics and per-class table from the run's summary.json
and report.md, and what those numbers do not say."""

import csv
import json
import shlex
from pathlib import Path

import yaml

# summary.json's test metrics that the Hub's metadata names (its metric types)
HUB_METRICS = {
    "test/acc": "accuracy", "test/macro_f1": "f1", "test/balanced_acc": "balanced_accuracy",
    "test/map": "mean_average_precision",
}  # fmt: skip


def training_command(run_dir: Path) -> str | None:
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        return None
    return shlex.join(["python", "-m", "src.train", *(yaml.safe_load(overrides.read_text()) or [])])


def weakest_classes(run_dir: Path, n: int = 3) -> list[tuple[str, float, int]]:
    """The `n` classes of lowest F1 in the run's report.csv (class, f1, support)."""
    path = run_dir / "report.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        averages = ("accuracy", "micro avg", "macro avg", "weighted avg")
        rows = [row for row in csv.DictReader(f) if row["class"] not in averages]
    rows.sort(key=lambda row: float(row["f1-score"]))
    return [(row["class"], float(row["f1-score"]), int(float(row["support"]))) for row in rows[:n]]


def usage(library: str, name: str) -> str:
    if library == "timm":
        return (
            '```python\nimport timm\nmodel = timm.create_model("local-dir:<this folder>", pretrained=True).eval()\n'
            '# or, pushed to the Hub: timm.create_model("hf-hub:<repo id>", pretrained=True)\n'
            "config = timm.data.resolve_data_config(model=model)\n"
            "transform = timm.data.create_transform(**config)\n```\n\n"
            "```python\nfrom transformers import pipeline\n"
            'classify = pipeline("image-classification", model="<this folder or repo id>")\n```\n\n'
            "vitlab: `python -m src.predict ckpt_path=<this folder> inputs=<images>`\n"
        )
    return (
        f"{name} is a vitlab model, not a timm architecture: vitlab loads this folder "
        "(`python -m src.predict ckpt_path=<this folder> inputs=<images>`); timm and transformers do not.\n"
    )


def write_model_card(folder: Path, library: str, model_name: str, data_name: str, class_names: list[str],
                     run_dir: Path | None, preprocessing: dict, temperature: float = 1.0,
                     thresholds: list[float] | None = None) -> Path:  # fmt: skip
    """`thresholds`: a multi-label model's, one per label (the card then says how its labels are read)."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    summary_path = run_dir / "summary.json" if run_dir else None
    summary = json.loads(summary_path.read_text()) if summary_path and summary_path.is_file() else {}
    # the run's data option (data=digits) names the data set as users know it, where the run recorded it
    data_name = summary.get("data") or data_name
    tested = summary.get("test") or {}
    results = [
        EvalResult(
            task_type="image-classification",
            dataset_type=data_name,
            dataset_name=data_name,
            dataset_split="test",
            metric_type=hub_name,
            metric_value=float(tested[key]),
        )  # fmt: skip
        for key, hub_name in HUB_METRICS.items()
        if key in tested
    ]
    data = ModelCardData(
        library_name=library, pipeline_tag="image-classification", model_name=model_name,
        tags=["image-classification", "vitlab", *(["timm"] if library == "timm" else [])],
        datasets=[data_name], metrics=sorted({r.metric_type for r in results}) or None,
        eval_results=results or None,
    )  # fmt: skip
    lines = [
        f"# {model_name}",
        "",
        f"An image classifier ({model_name}) trained with vitlab on `{data_name}`: {len(class_names)} "
        f"{'labels' if thresholds is not None else 'classes'} "
        f"({', '.join(class_names[:20])}{', ...' if len(class_names) > 20 else ''}).",
        "",
        "## Use it",
        "",
        usage(library, model_name),
        f"Input: {preprocessing['image_size']} px RGB, {preprocessing['interpolation']} resizing, normalised with "
        f"mean {preprocessing['mean']} and std {preprocessing['std']} (config.json: `pretrained_cfg`, and "
        "`vitlab.preprocessing` for vitlab's exact eval transform).",
        "",
        *(
            [
                f"Calibrated: divide the logits by the temperature {temperature:.4g} before the softmax "
                "(config.json `vitlab.temperature`; vitlab's loader does).",
                "",
            ]
            if temperature != 1.0
            else []
        ),
        *(
            [
                "Multi-label: each label's probability is the sigmoid of its logit, and a label is present above "
                "its own threshold (config.json `vitlab.thresholds`, fitted on the validation split; transformers' "
                "pipeline applies the sigmoid for `problem_type: multi_label_classification`).",
                "",
            ]
            if thresholds is not None
            else []
        ),
        "## Training",
        "",
    ]
    command = training_command(run_dir) if run_dir else None
    lines += [
        f"`{command}`" if command else "The training command is not known (no .hydra/overrides.yaml).",
        "",
    ]
    if summary:
        best = ("mAP", summary.get("best_val_map")) if thresholds is not None else ("accuracy", None)
        best = best if best[1] is not None else ("accuracy", summary.get("best_val_acc"))
        lines += [
            f"Parameters: {summary.get('params_total', '?'):,}. Best validation {best[0]}: "
            f"{best[1] if best[1] is not None else float('nan'):.4f}.",
            "",
        ]
    lines += ["## Results", ""]
    if tested:
        lines += [
            f"On the test split of `{data_name}` ({summary.get('test_images', '?')} images), one run:",
            "",
        ]
        lines += ["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in tested.items()), ""]
        report = run_dir / "report.md"
        if report.is_file():
            lines += [
                "Per label:" if thresholds is not None else "Per class:",
                "",
                report.read_text().strip(),
                "",
            ]
    else:
        lines += ["Not tested: the training run has no summary.json.", ""]
    lines += ["## Limitations", ""]
    if tested:
        lines.append(
            f"- Measured once, on {summary.get('test_images', '?')} test images of `{data_name}`: other seeds, "
            "other data and other image sources are not measured here."
        )
    weak = weakest_classes(run_dir) if run_dir else []
    if weak:
        shown = ", ".join(f"{name} (F1 {f1:.2f}, {support} images)" for name, f1, support in weak)
        lines.append(f"- Weakest classes: {shown}.")
    if preprocessing.get("native_size"):
        lines.append(
            f"- Trained on {preprocessing['native_size']} px images brought to {preprocessing['image_size']} px; "
            "vitlab first brings any photo to that native size, timm's and transformers' transforms do not."
        )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
    path = folder / "README.md"
    card.save(path)
    return path
