"""The mean of a run's top-k checkpoints (python -m src.average run_dir=<run> k=3), as timm's avg_checkpoints.py
averages: the checkpoints ranked by the metric their ModelCheckpoint monitored (each file records its own score
in the callback state it was saved with), the floating-point tensors of their `state_dict` averaged in float64,
integer buffers (BatchNorm's num_batches_tracked) taken from the best one. The result is written as a new
checkpoint beside them that src.eval, src.predict and src.export load like any other (no optimizer or callback
state: it is no point to resume from)."""

import re
from pathlib import Path

import torch

from src.errors import UserError
from src.runs.resume import read_checkpoint

# what a checkpoint to evaluate needs; the rest (optimizer, callbacks, loops) belongs to a fit
KEPT_KEYS = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "hparams_name")


def ranked_checkpoints(folder: Path) -> list[tuple[Path, float, str]]:
    """(file, score, how it was ranked) of each checkpoint a monitoring ModelCheckpoint kept, best first."""
    ranked, order = [], None
    for path in sorted(folder.glob("*.ckpt")):
        checkpoint = read_checkpoint(path, f"Remove it from {folder}, or average another run")
        for key, state in checkpoint.get("callbacks", {}).items():
            if not key.startswith("ModelCheckpoint") or not state.get("monitor"):
                continue
            # the file is one of its top-k (not last.ckpt, which a monitoring callback never writes)
            scores = {Path(name).name: score for name, score in state.get("best_k_models", {}).items()}
            if path.name in scores:
                ranked.append((path, float(scores[path.name])))
                mode = re.search(r"'mode': '(min|max)'", key)  # the callback's state key records its mode
                order = (state["monitor"], mode.group(1) if mode else "max")
                break
    if order is None:
        return []
    monitor, mode = order
    ranked.sort(key=lambda item: item[1], reverse=mode == "max")
    return [(path, score, f"{monitor} ({mode})") for path, score in ranked]


def average_top_k(run_dir: str | Path, k: int) -> Path:
    """Writes `<run_dir>/checkpoints/average_top<k>.ckpt`, the mean of the run's k best checkpoints."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise UserError(f"k={k}: averaging needs k >= 2 checkpoints")
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        raise UserError(
            f"{folder} does not exist: pass run_dir=<a src.train run dir> (the one holding checkpoints/)"
        )
    out = folder / f"average_top{k}.ckpt"
    if out.exists():
        raise UserError(f"{out} exists already: remove it first to average again (it is never overwritten)")
    ranked = ranked_checkpoints(folder)
    if len(ranked) < k:
        names = ", ".join(path.name for path, _, _ in ranked) or "none"
        raise UserError(
            f"{folder} has {len(ranked)} checkpoints ranked by their monitored metric ({names}); k={k} needs {k}: "
            f"train with callbacks.model_checkpoint.save_top_k={k} (or more) to keep them"
        )
    chosen = ranked[:k]
    checkpoints = [read_checkpoint(path) for path, _, _ in chosen]
    best = checkpoints[0]
    for (path, _, _), checkpoint in zip(chosen[1:], checkpoints[1:], strict=True):
        same_config = checkpoint["hyper_parameters"].get("backbone") == best["hyper_parameters"].get(
            "backbone"
        )
        shapes = {name: tensor.shape for name, tensor in checkpoint["state_dict"].items()}
        if not same_config or shapes != {name: tensor.shape for name, tensor in best["state_dict"].items()}:
            raise UserError(
                f"{path.name} and {chosen[0][0].name} hold different models: only checkpoints of one model average"
            )
    averaged = {}
    for name, tensor in best["state_dict"].items():
        if tensor.is_floating_point():
            total = sum(checkpoint["state_dict"][name].to(torch.float64) for checkpoint in checkpoints)
            averaged[name] = (total / k).to(tensor.dtype)
        else:  # counters (num_batches_tracked): the best one's
            averaged[name] = tensor.clone()
    result = {key: best[key] for key in KEPT_KEYS if key in best}
    result["state_dict"] = averaged
    result["averaged_from"] = {path.name: score for path, score, _ in chosen}
    result["averaged_by"] = chosen[0][2]
    try:
        with open(out, "xb") as file:  # "x": never over a file that appeared meanwhile
            torch.save(result, file)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out
