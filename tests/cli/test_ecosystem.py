"""What users arriving from lightning-hydra-template, timm or the Lightning docs expect: a clean first screen with
the config tree, a --help page that explains every group, shell completion, and the profiler debug modes."""

import json
import os
import re
import subprocess
import sys

import pytest

from src.train import train
from tests.conftest import CONF, ROOT, TINY_VIT, compose_config, run_cli, run_dirs

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra") + ["hydra/launcher"]


@pytest.mark.slow
def test_help_explains_every_group_in_one_line():
    result = run_cli("src.train", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    groups_section = result.stdout.split("== Config groups")[1].split("== Options")[0]
    for group in GROUPS:
        assert re.search(rf"^\s+{re.escape(group)}\s+\w.{{10,}}$", groups_section, re.M), group
    assert "logger: csv, many, mlflow, none, tensorboard, wandb" in result.stdout  # options listed by Hydra


@pytest.mark.slow
def test_shell_completion_offers_the_options_of_a_group():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COMP_LINE": "python src/train.py logger="}
    result = subprocess.run(
        [sys.executable, "src/train.py", "-sc", "query=bash"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert set(result.stdout.split()) >= {"logger=csv", "logger=mlflow", "logger=wandb", "logger=tensorboard"}


@pytest.mark.slow
def test_first_screen_shows_config_and_summary_without_adverts_or_warnings(tmp_path):
    # as a user runs it: Python's default warning filters (run_cli would silence them), the default callbacks
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    result = subprocess.run(
        [sys.executable, "-m", "src.train", "data=digits", *TINY_VIT, "trainer.max_epochs=1",
         "trainer.accelerator=cpu", "data.num_workers=0", f"paths.log_dir={tmp_path}"],
        cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    screen = result.stdout + result.stderr
    assert "config · task train" in screen and "├── model" in screen  # the config tree
    assert re.search(r"Total FLOPs: [1-9]", screen)  # the summary counts FLOPs (it read 0 without an input)
    assert "Tip:" not in screen and "litlogger" not in screen
    assert "already configured with model summary" not in screen
    # the only warning allowed is Lightning's hint on machines where SLURM's srun exists (not vitlab's doing)
    warnings = [line for line in screen.splitlines() if re.search(r"warn|deprecat", line, re.I)]
    assert all("srun" in line for line in warnings), warnings
    (run_dir,) = run_dirs(tmp_path, "train")
    assert "optimizer" in (run_dir / "config_tree.log").read_text()


def test_print_config_false_prints_no_tree_but_saves_it(tmp_path, capsys):
    overrides = ["debug=fdr", "data=digits", "~callbacks.rich_progress_bar", "print_config=false", *TINY_VIT]
    train(compose_config("train", overrides, tmp_path))
    assert "config · task" not in capsys.readouterr().out
    assert "├── trainer" in (tmp_path / "config_tree.log").read_text()


# what the <run dir>/profiler/fit-profile.txt of each profiler debug mode shows its reader: the simple profiler's
# time per hook, cProfile's statistics per hook, the PyTorch profiler's operator table
PROFILE_TEXT = {
    "profiler": ["Action", "Mean duration (s)", "Num calls", "run_training_batch"],
    "profiler_advanced": [
        "Profile stats for: [Strategy]SingleDeviceStrategy.training_step",
        "ncalls",
        "cumtime",
    ],
    "profiler_pytorch": ["Self CPU", "CPU total", "aten::"],
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", PROFILE_TEXT)
def test_profiler_debug_modes_write_a_readable_profile(mode, tmp_path):
    # the PyTorch profiler records steps 3-5 of each stage (wait 1, warm-up 1, active 3): it needs 5 batches
    batches = 5 if mode == "profiler_pytorch" else 2
    limits = [f"+trainer.limit_{stage}_batches={batches}" for stage in ("train", "val", "test")]
    overrides = [f"debug={mode}", "data=digits", "~callbacks.rich_progress_bar", *TINY_VIT, *limits]
    train(compose_config("train", overrides, tmp_path))
    profiles = tmp_path / "profiler"
    text = (profiles / "fit-profile.txt").read_text()
    assert [shown for shown in PROFILE_TEXT[mode] if shown not in text] == [], text[:2000]
    if mode == "profiler_pytorch":
        # the Chrome trace that TensorBoard's profiler plugin and Perfetto open: the training step's operators
        (trace,) = profiles.glob("fit-profile-*training_step*.pt.trace.json")
        events = json.loads(trace.read_text())["traceEvents"]
        assert any(event.get("cat") == "cpu_op" and event["name"].startswith("aten::") for event in events)
