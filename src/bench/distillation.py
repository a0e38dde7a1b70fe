"""What a teacher costs per training step: its forward pass against the student's training step.

    python -m src.bench.distillation data=digits model=deit_tiny data.image_size=16 model.patch_size=8 \
        distill=hard distill.teacher_ckpt=<ckpt>

Takes src.train's overrides (a `distill` teacher is required), builds the module as src.train does, and times on
random batches of data.batch_size: the student's step (forward, loss with the teacher's term, backward) and the
teacher's forward alone (resize, re-normalise, forward), median of `BENCH_REPEATS` (default 10) after one warm-up.
"""

import os
import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from src.bench.timing import median_seconds
from src.cli.exits import exit_on_user_error
from src.cli.resolvers import register_resolvers
from src.errors import UserError

# before it composes conf/train.yaml
register_resolvers()


@exit_on_user_error
def main(overrides: list[str]) -> None:
    config_dir = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "conf"
    )
    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if cfg.distill.mode == "none":
        raise UserError(
            "src.bench.distillation times a teacher: add distill=hard distill.teacher_ckpt=<ckpt>"
        )
    module = instantiate(cfg.module).train()
    size, batch = cfg.data.image_size, cfg.data.batch_size
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, cfg.data.num_classes, (batch,))

    def step():
        outputs = module(images)
        loss, _ = module.distillation(
            None, "train", 0, images, labels, outputs, lambda o: module.criterion(o, labels)
        )
        loss.backward()

    repeats = int(os.environ.get("BENCH_REPEATS", 10))
    step_s = median_seconds(step, repeats)
    teacher_s = median_seconds(lambda: module.distillation.teacher_logits(images), repeats)
    print(f"batch {batch} at {size} px, {torch.get_num_threads()} threads")
    print(f"student step (with the teacher's forward): {step_s * 1000:.0f} ms")
    print(f"teacher forward alone: {teacher_s * 1000:.0f} ms ({100 * teacher_s / step_s:.0f} % of the step)")


if __name__ == "__main__":
    main(sys.argv[1:])
