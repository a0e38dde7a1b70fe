"""The data settings a run gives its model, said in the run log: each value, whether it is the model's own (its
pretrained weights' data config, conf/model/timm.yaml, or a transformers model's image processor, hf.yaml) or the
config's, and a warning where pretrained weights meet another input than theirs."""

import logging

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def report_model_input(cfg: DictConfig) -> None:
    data, model = cfg.data, cfg.model
    sources = data.get("preprocessing_from")
    if not sources:  # a model without a pretrained data config (vitlab's own, the Keras-style trunks)
        return
    values = {
        key: OmegaConf.to_object(data[key]) if OmegaConf.is_config(data[key]) else data[key]
        for key in sources
    }
    log.info("Model input: %s", ", ".join(f"data.{key}={values[key]} ({sources[key]})" for key in sources))
    if not (model.get("pretrained") or model.get("weights_path")):
        return
    if model.get("_target_") == "src.models.hf_models.hf_model":
        from src.models.hf_models import processor_input as expected_input  # imported when used: transformers
    else:
        from src.models.timm_models import pretrained_input as expected_input  # imported when used: timm

    expected = expected_input(model.name)
    for key, source in sources.items():
        if source == "config" and not _same(values[key], expected[key]):
            log.warning(
                "data.%s=%s, where %s's pretrained weights were trained with %s: the weights see another input "
                "than theirs (leave data.%s out to use theirs)",
                key, values[key], model.name, expected[key], key,
            )  # fmt: skip


def _same(value, expected) -> bool:
    if isinstance(expected, list):
        return len(value) == len(expected) and all(
            abs(a - b) < 1e-6 for a, b in zip(value, expected, strict=True)
        )
    if isinstance(expected, float):
        return abs(value - expected) < 1e-6
    return value == expected
