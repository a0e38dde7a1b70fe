"""A checkpoint that src.train wrote before src/ was grouped into packages still evaluates, predicts and trains
on. The fixture: `python -m src.train experiment=quickstart data.image_size=8 model.patch_size=4
model.embed_dim=16 model.depth=1 model.num_heads=2 model.mlp_dim=32 trainer.max_epochs=1 scheduler=warmup_cosine
logger=none`, its last.ckpt (70 KB); its hyper-parameters name `src.schedulers.warmup_cosine`."""

from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from PIL import Image

from src.predict import predict
from src.training.module import load_checkpoint
from tests.conftest import QUICK, compose_config, run_cli

CHECKPOINT = Path(__file__).parents[1] / "fixtures" / "checkpoint_before_wings.ckpt"


def test_src_eval_evaluates_it(tmp_path):
    result = run_cli("src.eval", f"ckpt_path={CHECKPOINT}", f"paths.log_dir={tmp_path}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/acc" in result.stdout


def test_src_predict_classifies_with_it(tmp_path):
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "white.png")
    cfg = compose_config("predict", [f"ckpt_path={CHECKPOINT}", f"inputs={tmp_path / 'white.png'}"], tmp_path)
    ((file, top),) = predict(cfg)
    assert file.name == "white.png" and len(top) == 5
    assert {name for name, _ in top} <= {str(digit) for digit in range(10)}


def test_its_model_trains_on_with_the_scheduler_it_names(tmp_path):
    model = load_checkpoint(CHECKPOINT)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    before = [p.detach().clone() for p in model.backbone.parameters()]
    trainer.fit(model, datamodule=instantiate({**model.hparams.data, "num_workers": 0}))
    assert trainer.global_step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.backbone.parameters(), strict=True))
