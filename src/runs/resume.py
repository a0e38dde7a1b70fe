"""What `src.train ckpt_path=...` checks before it writes anything: that the file is a src.train checkpoint (read
with weights_only=True and mmap, so checking costs no full read), that its model, data, freezing and optimizer are
the command's, and that no other process is writing into its run dir (a lock file, see run_guard.py).

The run dir is chosen by a resolver (src/runs/folders.py) before Hydra writes `.hydra/` and the log into it: the resolver
runs these checks too and, when one fails, gives a fresh run dir, so the error is reported from there and the
checkpoint's run dir stays untouched (the fresh one is removed again: it holds nothing)."""

import pickle
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.runs.safe_config import check_checkpoint_config

# settings that change no weight: switches of the run, and pretrained weights the checkpoint replaces
IGNORED_MODEL_KEYS = ("pretrained", "weights_path", "compile", "channels_last")
# what of the data shapes the model: another data set, class count or image size needs another model
COMPARED_DATA_KEYS = ("_target_", "num_classes", "image_size")


# what torch.load raises for a file that is no checkpoint: not a zip, truncated, garbled, or a pickle that would
# run code (weights_only refuses it)
UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError)


def read_checkpoint(
    path: str | Path, how_to_pass: str = "Pass ckpt_path=<run dir>/checkpoints/<file>.ckpt, or ckpt_path=last"
) -> dict:
    """The checkpoint's contents (tensors memory-mapped); a file that is no src.train checkpoint is one UserError
    naming it, ending with `how_to_pass`, and so are configs that would choose code (src/runs/safe_config.py)."""
    problem = None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except UNREADABLE as err:
        first_line = (str(err).strip().splitlines() or [""])[0]
        problem = f"{type(err).__name__}: {first_line[:200]}"
        if _cut_short(Path(path)):
            size = Path(path).stat().st_size
            problem = (
                f"it is cut short: {size} bytes, without a zip's end; a save that was killed, or a full disk"
            )
            how_to_pass = _other_checkpoints(Path(path)) or how_to_pass
    else:
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        lightning_keys = isinstance(hparams, dict) and {"state_dict", "pytorch-lightning_version"} <= set(
            checkpoint
        )
        if not (lightning_keys and "backbone" in hparams):
            problem = (
                "it has no src.train model (hyper_parameters.backbone, state_dict, pytorch-lightning_version)"
            )
    if problem:
        raise UserError(f"{path} is not a checkpoint written by src.train ({problem}). {how_to_pass}")
    check_checkpoint_config(hparams, path)  # before anything is built from them
    return checkpoint


def _cut_short(path: Path) -> bool:
    """Empty, or a zip (torch.save's format) whose end record is missing: the end of the file was never written."""
    try:
        with open(path, "rb") as file:
            start = file.read(4)
            file.seek(
                max(0, path.stat().st_size - 2**16 - 22)
            )  # the end record is in the last 64 KiB + 22 bytes
            tail = file.read()
    except OSError:
        return False
    return not start or (start == b"PK\x03\x04" and b"PK\x05\x06" not in tail)


def _other_checkpoints(path: Path) -> str | None:
    """`Resume from another checkpoint of its run: ckpt_path=<the newest other one> (others: ...)`, or None."""
    others = sorted(path.parent.glob("*.ckpt"), key=lambda other: other.stat().st_mtime, reverse=True)
    others = [other for other in others if other.name != path.name]
    if not others:
        return None
    rest = f" (or {', '.join(other.name for other in others[1:])})" if others[1:] else ""
    return f"Resume from another checkpoint of its run: ckpt_path={others[0]}{rest}"


OPTIMIZER_STATE_KEYS = ["_target_", "opt", "layer_decay"]


def _plain(config) -> dict:
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config or {})


def _differences(group: str, trained: dict, given: dict, keys=None, ignored=()) -> list[str]:
    keys = keys or sorted(set(trained) | set(given), key=str)
    return [
        f"{group}.{key}={trained.get(key)!r} in the checkpoint but {given.get(key)!r} here"
        for key in keys
        if key not in ignored and trained.get(key) != given.get(key)
    ]


def check_fits(checkpoint: dict, path: str | Path, model, data, freeze, optimizer) -> None:
    """A UserError naming both sides of every difference between the checkpoint's configs and the command's."""
    trained = checkpoint["hyper_parameters"]
    differences = [
        *_differences("model", trained.get("backbone") or {}, _plain(model), ignored=IGNORED_MODEL_KEYS),
        *_differences("data", trained.get("data") or {}, _plain(data), keys=COMPARED_DATA_KEYS),
        *_differences(
            "freeze", trained.get("freeze") or {"mode": "none"}, _plain(freeze) or {"mode": "none"}
        ),
        # what shapes the optimizer's state and parameter groups, which a resumed run loads
        *_differences(
            "optimizer", trained.get("optimizer") or {}, _plain(optimizer), keys=OPTIMIZER_STATE_KEYS
        ),
    ]
    if differences:
        raise UserError(
            f"ckpt_path={path} does not fit this command: {'; '.join(differences)}. Resume with the options "
            "the run was started with (its .hydra/overrides.yaml)"
        )


def check_resume(path: str | Path, model, data, freeze, optimizer, run_dir_free: bool = True) -> None:
    """All checks of the module; `run_dir_free`: also that no process holds the checkpoint's run dir."""
    from src.runs.guard import run_dir_in_use

    checkpoint = read_checkpoint(path)
    if "optimizer_states" not in checkpoint:  # src.average's: weights only
        raise UserError(
            f"{path} holds weights only (an average of checkpoints), no training state to resume: evaluate it "
            f"(python -m src.eval ckpt_path={path}), or resume from last.ckpt"
        )
    check_fits(checkpoint, path, model, data, freeze, optimizer)
    run_dir = Path(path).parent.parent
    holder = run_dir_in_use(run_dir) if run_dir_free and Path(path).parent.name == "checkpoints" else None
    if holder:
        raise UserError(
            f"{run_dir} is being written by {holder}: wait for it to end (or stop it) before resuming this run"
        )
