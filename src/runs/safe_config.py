"""What the configs of a checkpoint may name: the allow-list of `_target_`s, and the check that refuses anything
else before a model, data set, optimizer or schedule is built from them.

A checkpoint is data (torch.load with weights_only=True), but the configs it stores are built with Hydra's
`instantiate`, which imports and calls whatever `_target_` names: a checkpoint from a colleague or a hub could
name `subprocess.getoutput` or `torch.load` with weights_only=false. So every command checks a checkpoint's
configs here first: each `_target_` one of those listed for its place, each argument one its signature takes,
each value plain (str, int, float, bool, None, and lists and dicts of them), and no other Hydra key
(`_partial_` only where optimizers and schedules take it). A user's own conf/ is not checked: it is code they
chose; the checkpoints it writes pass, since the lists hold every `_target_` conf/ names for these places
(tests/runs/test_untrusted_checkpoints.py)."""

import inspect

# the `_target_`s a checkpoint may name, by their place in its hyper-parameters
ALLOWED_TARGETS = {
    "backbone": frozenset(
        {
            "src.models.vit.VisionTransformer",
            "src.models.timm_models.timm_model",
            "src.models.timm_models.vision_transformer",
            "src.models.keras_cnn.KerasCNN",
            "src.models.hf_models.hf_model",
            "timm.create_model",
        }
    ),
    "data": frozenset(
        {
            "src.data.cifar10.CIFAR10DataModule",
            "src.data.digits.DigitsDataModule",
            "src.data.digits_multilabel.DigitsMultilabelDataModule",
            "src.data.flowers102.Flowers102DataModule",
            "src.data.hf.HFDataModule",
            "src.data.imagefolder.ImageFolderDataModule",
            "src.data.manifest.CSVDataModule",
            "src.data.shards.ShardsDataModule",
        }
    ),
    # torch's optimizers that a step without a closure drives
    "optimizer": frozenset(
        f"torch.optim.{name}"
        for name in [
            "Adadelta",
            "Adafactor",
            "Adagrad",
            "Adam",
            "Adamax",
            "AdamW",
            "ASGD",
            "NAdam",
            "RAdam",
            "RMSprop",
            "Rprop",
            "SGD",
        ]
    )
    # any optimizer of timm's registry, by name (conf/optimizer/timm.yaml)
    | {"src.training.optimizers.timm_optimizer"},
    # torch's schedules built from numbers alone (not those taking functions or other schedulers), and vitlab's
    "scheduler.schedule": frozenset(
        [
            *(
                f"torch.optim.lr_scheduler.{name}"
                for name in [
                    "StepLR",
                    "MultiStepLR",
                    "ConstantLR",
                    "LinearLR",
                    "ExponentialLR",
                    "PolynomialLR",
                    "CosineAnnealingLR",
                    "CosineAnnealingWarmRestarts",
                    "CyclicLR",
                    "OneCycleLR",
                ]
            ),
            "src.training.schedulers.warmup_cosine",
        ]
    ),
}
# `_target_`s that checkpoints written before src/ was grouped into packages name, and their names today: they are
# checked here, and built by src.training.module, as the new ones
MOVED_TARGETS = {"src.schedulers.warmup_cosine": "src.training.schedulers.warmup_cosine"}


def current_target(target):
    """Today's name of a `_target_` (MOVED_TARGETS); anything else as it is."""
    return MOVED_TARGETS.get(target, target) if isinstance(target, str) else target


# Hydra's keys that vitlab's configs set, where and to which values; no other key may start with "_". Optimizers
# and schedules are partials (src.training.module passes the parameters, the schedule the optimizer); the data configs
# convert their lists to plain ones
HYDRA_KEYS = {
    "_partial_": (("optimizer", "scheduler.schedule"), (True,)),
    "_convert_": (tuple(ALLOWED_TARGETS), ("none", "partial", "object", "all")),
}
# keys src.training.module takes out of the backbone's and the optimizer's configs before building them
MODULE_KEYS = {
    "backbone": frozenset({"compile", "channels_last"}),
    # the parameter groups' setting (src.training.freezing); the lr's scaling with the global batch
    "optimizer": frozenset({"layer_decay", "lr_scale", "lr_base_size"}),
}
# the arguments of targets that take **kwargs (timm passes them to the model class), instead of their signature:
# timm.create_model's named ones include files and hub configs to load (checkpoint_path, pretrained_cfg_overlay)
KNOWN_ARGUMENTS = {
    "timm.create_model": frozenset(
        [
            "model_name",
            "pretrained",
            "num_classes",
            "in_chans",
            "img_size",
            "patch_size",
            "global_pool",
            "drop_rate",
            "drop_path_rate",
        ]
    ),
}
PLAIN = (str, int, float, bool, type(None))
# a checkpoint holds its weights: rebuilding its backbone fetches and reads none (src.training.module stores these so)
WEIGHTS_FROM_NOWHERE = {"pretrained": (False, None), "weights_path": (None,)}


class _Refused(Exception):
    """What `_walk` found; `check_checkpoint_config` raises it as a UserError that names the checkpoint."""


def allowed_callable(place: str, target: str):
    """The class or function `target` names, when the allow-list has it for `place`; None otherwise. Nothing else is
    imported."""
    from hydra.utils import get_object

    target = current_target(target)
    return get_object(target) if target in ALLOWED_TARGETS.get(place, ()) else None


def accepted_arguments(target: str, built) -> frozenset[str]:
    """The argument names `built` (what `target` names) takes: its signature's, through the `__init__`s of its
    base classes while each passes on **kwargs; for timm.create_model, KNOWN_ARGUMENTS."""
    if target in KNOWN_ARGUMENTS:
        return KNOWN_ARGUMENTS[target]
    if isinstance(built, type):
        functions = [c.__dict__["__init__"] for c in built.__mro__ if "__init__" in c.__dict__]
    else:
        functions = [built]
    names = set()
    for function in functions:
        parameters = inspect.signature(function).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return frozenset(names - {"self"})


def check_checkpoint_config(hparams: dict, source, built=tuple(ALLOWED_TARGETS)) -> None:
    """Raises a UserError (src.errors) naming the key when the checkpoint `source`'s hyper-parameters `hparams`
    would choose code: a `_target_` that is not allow-listed for its place (nested ones have none), a Hydra key, a
    value that is no plain data or is an interpolation. The configs of the places in `built` (the ones the command
    builds) must also name only arguments their target takes."""
    from src.errors import UserError

    how = (
        "a checkpoint cannot choose which code runs; use a checkpoint that src.train wrote (a model, data set or "
        "optimizer of your own: add its _target_ to ALLOWED_TARGETS in src/runs/safe_config.py)"
    )
    try:
        targets = {}
        _walk(hparams, "", targets)
        _nothing_loaded_from_elsewhere(hparams)
        for place, config in targets.items():
            if place not in built:
                continue
            taken = accepted_arguments(config["_target_"], allowed_callable(place, config["_target_"]))
            unknown = sorted(set(config) - taken - MODULE_KEYS.get(place, set()) - {"_target_", *HYDRA_KEYS})
            if unknown:
                raise _Refused(
                    f"{place}.{unknown[0]} is no argument of {config['_target_']} (it takes "
                    f"{', '.join(sorted(taken))})"
                )
    except _Refused as refusal:
        raise UserError(f"{source}: {refusal}: {how}") from None


def _walk(value, key: str, targets: dict) -> None:
    """Checks `value` (at `key`, dotted) and everything below it; collects the allow-listed configs by place."""
    if isinstance(value, dict):
        if "_target_" in value:
            target = value["_target_"]
            if key not in ALLOWED_TARGETS:
                raise _Refused(f"{key or 'hyper_parameters'}._target_={target!r} is no place for a target")
            if not isinstance(target, str) or current_target(target) not in ALLOWED_TARGETS[key]:
                raise _Refused(
                    f"{key}._target_={target!r} is not one of the {len(ALLOWED_TARGETS[key])} {key} targets "
                    f"vitlab builds ({', '.join(sorted(ALLOWED_TARGETS[key]))})"
                )
            targets[key] = value
        for name, item in value.items():
            if not isinstance(name, str):
                raise _Refused(f"{key} has a key {name!r} that is not a name")
            places, values = HYDRA_KEYS.get(name, ((), ()))
            hydra_key = "_target_" in value and key in places and item in values
            if name.startswith("_") and name != "_target_" and not hydra_key:
                raise _Refused(f"{key}.{name}={item!r} is a Hydra key that a checkpoint may not set")
            _walk(item, f"{key}.{name}" if key else name, targets)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _walk(item, f"{key}[{i}]", targets)
    elif isinstance(value, str) and "${" in value:
        raise _Refused(f"{key}={value!r} is an interpolation, where checkpoints hold resolved values")
    elif not isinstance(value, PLAIN):
        raise _Refused(f"{key} is a {type(value).__name__}, not a plain value")


def _nothing_loaded_from_elsewhere(hparams: dict) -> None:
    """A checkpoint holds its weights and no teacher, so rebuilding it reads no other file and fetches nothing (a
    timm name with a scheme, hf-hub:<repo> or local-dir:<folder>, would fetch or read the model's config)."""
    backbone, distill = (
        hparams.get(key) if isinstance(hparams.get(key), dict) else {} for key in ("backbone", "distill")
    )
    for name, values in WEIGHTS_FROM_NOWHERE.items():
        if backbone.get(name) not in values:
            raise _Refused(
                f"backbone.{name}={backbone[name]!r}, where a checkpoint has {values[0]!r} (its own weights)"
            )
    for key in ("name", "model_name"):
        if ":" in str(backbone.get(key, "")):
            raise _Refused(f"backbone.{key}={backbone[key]!r} is no timm architecture name")
    # src.training.module keeps a run's teacher config as distilled_with
    if distill.get("mode", "none") != "none":
        raise _Refused(f"distill.mode={distill['mode']!r}, where a checkpoint has no teacher (distill: null)")
