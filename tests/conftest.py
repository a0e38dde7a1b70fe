import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from src.cli.resolvers import register_resolvers
from tests.fakes import write_fake_cifar10, write_fake_flowers102

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# the tests compose and resolve conf/ themselves, as the entry points do (src/cli/resolvers.py)
register_resolvers()

# a scratch ViT small enough to train a step in well under a second on a CPU
TINY_VIT = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.mlp_dim=64"]
# one short CPU epoch, no progress bar noise
QUICK = [
    "trainer.max_epochs=1",
    "trainer.accelerator=cpu",
    "data.num_workers=0",
    "~callbacks.rich_progress_bar",
]


def compose_config(config_name: str, overrides: list[str], output_dir: Path):
    """The config an entry point would see, composed as Hydra composes it, with `${hydra:...}` resolvable."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(output_dir)
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra  # resolved already; instantiate() must not see it
    return cfg


# a checkpoint after every training step, named by its step (step_7.ckpt): the tests that resume mid-epoch
EVERY_STEP_CHECKPOINTS = [
    "+callbacks.last_checkpoint.every_n_train_steps=1",
    "callbacks.last_checkpoint.save_top_k=-1",
    "callbacks.last_checkpoint.filename='step_{step}'",
    "+callbacks.last_checkpoint.auto_insert_metric_name=false",
]


def run_cli(
    module: str, *overrides: str, cwd: Path = ROOT, timeout: int = 1800, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Runs `python -m <module> <overrides>` as a user would (with `env` added to the environment), on this
    checkout's `src` also from another folder (the editable install may point at another checkout)."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": pythonpath,
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mount_tmpfs(folder: Path, size: str, read_only: bool = False) -> bool:
    """Mounts a tmpfs of `size` (`1m`, `120k`) on `folder`, a small disk to fill (or a read-only one); False
    where this process may not mount (not root, or a container that forbids it). The caller unmounts it."""
    options = f"size={size}" + (",ro" if read_only else "")
    mount = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
    return os.geteuid() == 0 and subprocess.run(mount, capture_output=True).returncode == 0


def run_dirs(log_dir: Path, task_name: str) -> list[Path]:
    return sorted((log_dir / task_name / "runs").iterdir())


@pytest.fixture(scope="session", autouse=True)
def file_check_cache(tmp_path_factory) -> Path:
    """The file check cache of data=imagefolder/csv (src/data/file_checks.py), for this session only: the tests'
    folders stay out of the user's ~/.cache/vitlab (subprocesses inherit the variable)."""
    folder = tmp_path_factory.mktemp("vitlab_cache")
    os.environ["VITLAB_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory) -> Path:
    return write_fake_cifar10(tmp_path_factory.mktemp("cifar10"))


@pytest.fixture(scope="session")
def fake_flowers102(tmp_path_factory) -> Path:
    return write_fake_flowers102(tmp_path_factory.mktemp("flowers102"))


@pytest.fixture(scope="session")
def digits_png(tmp_path_factory) -> Path:
    """scikit-learn's digits as PNG class folders + labels.csv (scripts/digits_to_images.py): <root>/digits_png."""
    from scripts.digits_to_images import write_digits

    root = tmp_path_factory.mktemp("images")
    write_digits(root / "digits_png")
    return root


def write_hf_vit(path: Path) -> Path:
    """A tiny random transformers ViT classifier (3 classes, 32 px) and its image processor, as save_pretrained
    writes them: what model=hf model.name=<folder> loads."""
    import transformers

    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=3,
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(path)
    transformers.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.4, 0.4], image_std=[0.3, 0.3, 0.3], resample=3
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_vit_folder(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    return write_hf_vit(tmp_path_factory.mktemp("hf") / "vit")


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """One `src.train -m` sweep of two tiny digits runs (ViT depth 1 and 2, 2 short epochs): the multirun dir.
    Shared by the report, predict and compare tests, so they cost one CLI run."""
    log_dir = tmp_path_factory.mktemp("sweep")
    result = run_cli(
        "src.train", "-m", "data=digits", *(o for o in TINY_VIT if not o.startswith("model.depth")),
        "model.depth=1,2", *QUICK, "trainer.max_epochs=2", "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=2", f"paths.log_dir={log_dir}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (log_dir / "train" / "multiruns").iterdir()
    return sweep


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_sweep) -> Path:
    """The best checkpoint of the tiny sweep's first digits run."""
    import json

    return Path(json.loads((tiny_sweep / "0" / "summary.json").read_text())["best_checkpoint"])


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> Path:
    """A folder of four 8x8 grey PNGs (digits-sized), a 40x30 colour JPEG and a file that is no image."""
    import numpy as np
    from PIL import Image

    folder = tmp_path_factory.mktemp("image_files")
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"digit_{i}.png")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    (folder / "broken.jpg").write_text("not an image")
    return folder
