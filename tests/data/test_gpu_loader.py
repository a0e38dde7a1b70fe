"""Fast paths: the GPU-resident loader (run on CPU tensors here), fused optimizers, compile/bf16 configs, the bench."""

import importlib
import json
import re
import warnings

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

import src.training.module
from src.bench import gpu, step_profile, workload
from src.bench import quickstart as bench_quickstart
from src.bench import suite as bench
from src.data.cifar10 import CIFAR10DataModule
from src.data.digits import DigitsDataModule
from src.data.gpu_loader import GPUBatches
from src.train import train
from src.training.nonfinite import NonFiniteLossGuard
from src.training.trainer import build_trainer
from tests.conftest import CONF, QUICK, TINY_VIT, compose_config

PLAIN = dict(mean=[0.0] * 3, std=[1.0] * 3)  # normalised value = pixel / 255


def batches(images, labels, **kwargs) -> GPUBatches:
    options = dict(batch_size=32, image_size=images.shape[-1], train=True, **PLAIN) | kwargs
    return GPUBatches(images, labels, **options)


def constant_images(values: torch.Tensor, size: int = 8) -> torch.Tensor:
    return values.to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, size, size).contiguous()


def test_batches_have_shapes_dtypes_and_their_own_labels():
    labels = torch.arange(100) % 10
    loader = batches(constant_images(labels * 20), labels, batch_size=32, crop_padding=2, flip=True)
    sizes = []
    for images, batch_labels in loader:
        assert images.dtype == torch.float32 and batch_labels.dtype == torch.int64
        assert images.shape[1:] == (3, 8, 8) and images.is_contiguous()  # NHWC views train 20x slower on CPU
        # a constant image stays constant under crop (reflect padding) and flip: its value is its label
        assert torch.equal((images.mean(dim=(1, 2, 3)) * 255).round().long(), batch_labels * 20)
        sizes.append(len(images))
    assert sizes == [32, 32, 32, 4] and len(loader) == 4


@pytest.mark.parametrize("world_size", [1, 2])
def test_an_epoch_covers_every_sample_once(world_size):
    n = 300
    index = torch.arange(n)
    images = torch.stack([index % 256, index // 256, torch.zeros(n, dtype=torch.long)], 1)
    images = images.to(torch.uint8)[:, :, None, None].expand(-1, -1, 4, 4).contiguous()
    seen = []
    for rank in range(world_size):
        loader = batches(images, index, batch_size=64, rank=rank, world_size=world_size)
        epochs = [torch.cat([labels for _, labels in loader]) for _ in range(2)]
        assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch
        (x, labels), *_ = loader
        assert torch.equal(
            (x[:, 0, 0, 0] * 255).round() + 256 * (x[:, 1, 0, 0] * 255).round(), labels.float()
        )
        seen.append(epochs[0])
        assert len(epochs[0]) == 150 * (2 // world_size)  # equal shares, so DDP ranks step in lockstep
    assert torch.equal(torch.cat(seen).unique(), index)


def test_a_loader_restored_mid_epoch_serves_the_rest_of_that_epoch():
    images = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8)
    options = dict(batch_size=16, crop_padding=2, flip=True, cutout=3)
    whole = batches(images, torch.arange(100), **options)
    epoch_0, epoch_1 = list(whole), list(whole)
    interrupted = batches(images, torch.arange(100), **options)
    for _, _ in zip(range(3), interrupted, strict=False):  # three batches, then a checkpoint
        pass
    restored = batches(images, torch.arange(100), **options)
    restored.load_state_dict(interrupted.state_dict())
    for expected, got in zip(epoch_0[3:] + epoch_1, list(restored) + list(restored), strict=True):
        assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])  # augmentations too


def test_flips_half_the_images_and_crops_shift_the_content():
    n, size, pad = 2000, 8, 2
    ramp = torch.arange(size, dtype=torch.uint8) * 30  # dark left, bright right
    images = ramp.expand(n, 3, size, size).contiguous()
    (flipped, _), *_ = batches(images, torch.zeros(n), batch_size=n, flip=True)
    left_brighter = flipped[:, 0, 0, 0] > flipped[:, 0, 0, -1]
    assert 0.45 < left_brighter.float().mean() < 0.55

    dot = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    dot[:, :, 4, 4] = 255
    (cropped, _), *_ = batches(dot, torch.zeros(n), batch_size=n, crop_padding=pad)
    rows, cols = (cropped[:, 0] == 1).nonzero()[:, 1:].unbind(1)
    # the dot lands anywhere within +-pad of where it was (reflection can add a mirrored copy)
    assert set(rows.tolist()) == set(range(4 - pad, 4 + pad + 1)) == set(cols.tolist())


def test_cutout_zeroes_one_square_per_image():
    images = constant_images(torch.full((50,), 200), size=12)
    (x, _), *_ = batches(images, torch.zeros(50), batch_size=50, cutout=5)
    assert ((x == 0).sum(dim=(1, 2, 3)) == 3 * 5 * 5).all()


def test_eval_batches_are_in_order_unaugmented_and_repeatable():
    images = torch.randint(0, 256, (70, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(70)
    loader = batches(
        images, labels, train=False, crop_padding=2, flip=True, cutout=3, mean=[0.5] * 3, std=[0.25] * 3
    )
    first, second = list(loader), list(loader)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))
    assert torch.equal(torch.cat([y for _, y in first]), labels)
    # torchvision scales by * (1 / 255), not / 255: the last bit may differ
    assert torch.allclose(torch.cat([x for x, _ in first]), (images / 255 - 0.5) / 0.25, atol=1e-6)


DIGITS = dict(data_dir="unused", val_size=180, test_size=360, image_size=16, num_classes=10, batch_size=64)


@pytest.mark.parametrize("train", [True, False])
def test_resizing_the_whole_set_once_gives_the_batches_of_resizing_each_batch(train):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (150, 3, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(150) % 10
    options = dict(image_size=16, train=train, crop_padding=2, interpolation="bicubic", seed=3)
    once, per_batch = (
        batches(images, labels, **options),
        batches(images, labels, **options, resized_cache_bytes=0),
    )
    assert once._resized is not None and per_batch._resized is None
    for _ in range(2):  # two epochs: the cache is reused, not consumed
        for (a, labels_a), (b, labels_b) in zip(once, per_batch, strict=True):
            assert a.shape == (len(a), 3, 16, 16) and torch.equal(labels_a, labels_b)
            assert torch.equal(a, b)


def test_datamodules_choose_the_loader():
    dm = DigitsDataModule(**DIGITS, mean=[0.3] * 3, std=[0.4] * 3, loader="gpu", cutout=4)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train, GPUBatches) and train.train and not train.flip and train.cutout == 4
    assert not val.train and len(val) == 3
    images, _ = next(iter(train))
    assert images.shape == (64, 3, 16, 16)  # digits' 8 px resized, as the torch transforms do

    torch_loader = DigitsDataModule(**DIGITS, mean=[0.3] * 3, std=[0.4] * 3, num_workers=2, prefetch_factor=4)
    torch_loader.setup("fit")
    loader = torch_loader.train_dataloader()
    assert loader.prefetch_factor == 4 and not loader.pin_memory  # pinned only for a GPU


@pytest.mark.parametrize(
    ("augment", "random_erasing", "expected"),
    [(None, 0.0, GPUBatches), ("basic", 0.0, GPUBatches), ("randaugment", 0.0, torch.utils.data.DataLoader),
     ("basic", 0.25, torch.utils.data.DataLoader)],
)  # fmt: skip
def test_loader_auto_batches_in_memory_unless_the_augmentation_runs_per_image(
    augment, random_erasing, expected
):
    policy = augment and {
        **OmegaConf.load(CONF / "augment" / f"{augment}.yaml"),
        "random_erasing": random_erasing,
    }
    dm = DigitsDataModule(**DIGITS, mean=[0.3] * 3, std=[0.4] * 3, loader="auto", augment=policy)
    dm.setup("fit")
    assert isinstance(dm.train_dataloader(), expected) and isinstance(dm.val_dataloader(), expected)


@pytest.mark.parametrize("loader", ["torch", "gpu"])
def test_a_last_training_batch_of_one_image_is_dropped(loader):
    """BatchNorm cannot train on one image: 1 257 training digits at batch 8 would leave one in the last batch."""
    dm = DigitsDataModule(**DIGITS | {"batch_size": 8}, mean=[0.3] * 3, std=[0.4] * 3, loader=loader)
    dm.setup("fit")
    sizes = [len(labels) for _, labels in dm.train_dataloader()]
    assert len(sizes) == len(dm.train_dataloader()) == 157 and set(sizes) == {8}
    assert [len(labels) for _, labels in dm.val_dataloader()][-1] == 180 - 22 * 8  # kept where nothing trains
    dm = DigitsDataModule(**DIGITS | {"batch_size": 10}, mean=[0.3] * 3, std=[0.4] * 3, loader=loader)
    dm.setup("fit")
    assert sum(len(labels) for _, labels in dm.train_dataloader()) == 1257  # any other last batch is kept


@pytest.mark.parametrize(
    ("image_size", "interpolation"), [(32, "bilinear"), (48, "bilinear"), (48, "bicubic")]
)
def test_cifar10_eval_batches_are_the_dataloader_paths_bit_for_bit(image_size, interpolation, fake_cifar10):
    """data.loader=auto puts the GPU-resident loader in the DataLoader's place: evaluation sees the same tensors
    (the same torchvision resize of the uint8 images, scaling and normalisation, on whole batches)."""
    options = dict(data_dir=str(fake_cifar10), val_size=20, image_size=image_size, num_classes=10,
                   mean=[0.5] * 3, std=[0.25] * 3, batch_size=8, download=False, verify_checksums=False,
                   seed=0, interpolation=interpolation)  # fmt: skip
    on_device, plain = (
        CIFAR10DataModule(**options, loader="gpu"),
        CIFAR10DataModule(**options, loader="torch"),
    )
    on_device.setup("fit")
    plain.setup("fit")
    for stage in ("val", "test"):
        for (images, labels), (expected, expected_labels) in zip(
            getattr(on_device, f"{stage}_dataloader")(), getattr(plain, f"{stage}_dataloader")(), strict=True
        ):
            assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_digits_eval_batches_are_the_dataloader_paths_bit_for_bit(interpolation):
    """The quickstart's data: 8 px images resized to 16 once on the GPU-resident path, per image on the other."""
    on_device, plain = (
        DigitsDataModule(**DIGITS, mean=[0.3] * 3, std=[0.4] * 3, interpolation=interpolation, loader=loader)
        for loader in ("gpu", "torch")
    )
    on_device.setup()
    plain.setup()
    for stage in ("val", "test"):
        for (images, labels), (expected, expected_labels) in zip(
            getattr(on_device, f"{stage}_dataloader")(), getattr(plain, f"{stage}_dataloader")(), strict=True
        ):
            assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


def test_digits_training_batches_have_the_dataloader_paths_augmentation_statistics():
    """The GPU loader's batch-wise crop against the DataLoader's per-image v2.RandomCrop: over 2 epochs each
    pixel's mean and spread across the augmented images agree within 0.03 (measured 0.014; a crop padding of
    1 or 3 in place of 2 differs by 0.07-0.11)."""

    def pixel_statistics(loader: str) -> tuple[torch.Tensor, torch.Tensor]:
        dm = DigitsDataModule(**DIGITS, mean=[0.0] * 3, std=[1.0] * 3, loader=loader)
        dm.setup("fit")
        images = torch.cat([x for _ in range(2) for x, _ in dm.train_dataloader()])
        return images.mean(0), images.std(0)

    (mean, spread), (expected_mean, expected_spread) = pixel_statistics("gpu"), pixel_statistics("torch")
    assert (mean - expected_mean).abs().max() < 0.03 and (spread - expected_spread).abs().max() < 0.03
    # and the crop moves the content: an un-augmented pixel mean would differ by far more at the borders
    plain = DigitsDataModule(**DIGITS, mean=[0.0] * 3, std=[1.0] * 3, loader="gpu")
    plain.setup("fit")
    unaugmented = torch.cat([x for x, _ in plain.val_dataloader()]).mean(0)
    assert (unaugmented - expected_mean).abs().max() > 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data=flowers102", "data.loader=gpu"], "data.loader=gpu needs .* use data.loader=torch"),
        (["data=digits", "data.loader=gpu", "data.cutout=16"], "data.cutout=16 must be between 0 .off. and data.image_size=16"),
        (["data=digits", "data.loader=torch", "data.cutout=4"], "data.cutout=4 is applied by the GPU-resident loader only: add data.loader=gpu"),
    ],
)  # fmt: skip
def test_gpu_loader_and_cutout_refuse_what_they_cannot_do(
    overrides, message, fake_flowers102, tmp_path, capsys
):
    flowers = [f"data.data_dir={fake_flowers102}", "data.download=false", "data.verify_checksums=false"]
    cfg = compose_config(
        "train", [*overrides, *TINY_VIT, *QUICK, *(flowers if "flowers" in overrides[0] else [])], tmp_path
    )
    with pytest.raises(SystemExit) as exit_info:  # the entry point's `error: ...`, exit code 2
        train(cfg)
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_trains_with_the_gpu_resident_loader(tmp_path):
    cfg = compose_config(
        "train",
        ["data=digits", "data.loader=gpu", "data.cutout=4", *TINY_VIT, *QUICK, "+trainer.limit_train_batches=3",
         "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert {"train/loss_epoch", "train/acc", "val/acc", "test/acc"} <= metrics.keys()


def test_bf16_mixed_trains_tests_and_reports(tmp_path):
    """The bf16 autocast path of trainer=gpu, run with torch's CPU autocast: bf16 logits reach the metrics and
    the report, the checkpoint keeps float32 weights."""
    cfg = compose_config(
        "train",
        ["data=digits", "trainer.precision=bf16-mixed", "data.loader=gpu", *TINY_VIT, *QUICK,
         "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert 0 < metrics["test/loss"] < 10 and 0 <= metrics["test/acc"] <= 1
    assert "| accuracy |" in (tmp_path / "report.md").read_text()
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert {tensor.dtype for tensor in checkpoint["state_dict"].values()} == {torch.float32}


def test_compile_and_bf16_configs_compose(tmp_path):
    cfg = compose_config("train", ["trainer=gpu", "model.compile=true", "model.channels_last=true"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"
    module = instantiate(cfg.module)
    assert module.backbone._compiled_call_impl is not None  # compiled in place: state_dict keys unchanged
    assert not any(key.startswith("backbone._orig_mod") for key in module.state_dict())


@pytest.mark.parametrize(
    ("fused", "device", "expected"),
    [("null", "cpu", True), ("null", "cuda:0", True), ("false", "cpu", False)],
)
def test_fused_optimizer_setting(fused, device, expected, tmp_path, monkeypatch):
    cfg = compose_config(
        "train", ["data=digits", "scheduler=none", *TINY_VIT, f"optimizer.fused={fused}"], tmp_path
    )
    module = instantiate(cfg.module)
    built = []
    # the optimizer as built for weights on `device` (building a fused one for CUDA tensors needs a GPU)
    monkeypatch.setattr(
        src.training.module,
        "instantiate",
        lambda config, **kwargs: built.append(kwargs) or instantiate(config),
    )
    module._device = torch.device(device)  # what .to(device) sets
    optimizer = module.configure_optimizers()
    assert built == [{"fused": expected}]
    if device == "cpu":  # and for CPU weights, the real thing (torch has a fused CPU kernel too)
        module._device = torch.device("cpu")
        monkeypatch.undo()
        assert bool(module.configure_optimizers().defaults["fused"]) is expected
    assert isinstance(optimizer, torch.optim.AdamW)


def test_the_bench_times_the_trainer_a_user_run_gets(tmp_path):
    """src.bench's Trainer is src.train's (src/training/trainer.py): conf/trainer, the logger group and the upstream
    workarounds, only without validation, checkpoints or progress bar."""
    cfg = workload.model_config("vit", 16, "cpu", TINY_VIT)
    timed = workload.bench_trainer(cfg, "cpu", str(tmp_path), max_epochs=1)
    user_run = build_trainer(OmegaConf.merge(cfg, {"paths": {"output_dir": str(tmp_path)}}))
    ours = [type(c) for c in timed.callbacks if type(c).__module__.startswith("src.")]
    assert ours and ours == [type(c) for c in user_run.callbacks if type(c).__module__.startswith("src.")]
    assert isinstance(timed.logger, TensorBoardLogger) and timed.logger.save_dir == f"{tmp_path}/tensorboard"
    assert timed.log_every_n_steps == cfg.trainer.log_every_n_steps and timed.precision == "32-true"
    assert timed.limit_val_batches == 0 and timed.checkpoint_callback is None
    assert timed.progress_bar_callback is None


def test_bench_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "benchmarks.md"
    argv = ["--device", "cpu", "--models", "vit:16,no_such_model", "--batch-size", "8", "--steps", "4",
            "--warmup", "1", "--repeats", "1", "--num-workers", "0", "--profile", "--out", str(out)]  # fmt: skip
    results = bench.main(argv)
    (result,) = results.models
    training, loaders = result.fit_vs_raw, result.loaders
    assert (result.model, result.image_size, result.precision) == ("vit", 16, "32-true")
    assert training.ours_img_s > 0 and training.raw_img_s > 0 and training.ratio_per_cpu_second > 0
    assert training.infer_img_s > 0 and training.peak_train_mib > 0 and loaders.gpu_loader_img_s > 0
    assert result.gpu is None and results.epoch is None  # the GPU measurements: on CUDA or with --extras on
    assert "skipping no_such_model: there is no conf/model/no_such_model.yaml" in capsys.readouterr().err
    doc = out.read_text()
    assert "| vit | 16 | 32-true |" in doc and "python -m src.bench --device cpu" in doc
    assert "Not measured here" in doc and "load average" in doc
    # --profile: Lightning's loop runs in Trainer.fit's steps only; both loops run the model's own code
    packages, functions = result.profile.packages, result.profile.functions
    assert packages["lightning"][0] > 0 and packages["lightning"][1] == 0
    assert packages["vitlab (src)"][0] > 0 and packages["vitlab (src)"][1] > 0
    differences = [fit - raw for fit, raw in functions.values()]
    assert differences == sorted(differences, reverse=True) and len(functions) == step_profile.TOP_FUNCTIONS
    assert "Where a step of vit at 16 px goes" in doc and "| lightning |" in doc


def test_the_benchmark_loop_in_bare_lightning_computes_what_the_hand_written_loop_does():
    settings = bench_quickstart.loop_settings(bench_quickstart.quickstart_config(["trainer.max_epochs=2"]))
    settings["model"] |= {"embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64}
    loop = bench_quickstart.hand_written_fit(settings)
    lightning = bench_quickstart.plain_lightning_fit(settings)
    assert lightning["test_acc"] == loop["test_acc"] and lightning["best_val_acc"] == loop["best_val_acc"]
    assert len(lightning["epoch_seconds"]) == len(loop["epoch_seconds"]) == 2
    assert 0.1 < loop["test_acc"] < 1  # it learned something in two epochs, so equal numbers say something


@pytest.mark.slow  # six short trainings, four of them whole processes
def test_the_quickstart_benchmark_runs_every_side_in_each_mode(monkeypatch):
    lines = bench_quickstart.whole_process(["trainer.max_epochs=1"], 1)
    rows = [line.split("|") for line in lines if line.startswith("| ") and not line.startswith("| |")]
    ours, lightning, loop, *ratios = rows
    assert ours[1].strip().startswith("vitlab") and loop[1].strip() == "hand-written loop"
    assert lightning[1].strip() == "the loop in a bare Lightning Trainer"
    assert [ratio[1].strip() for ratio in ratios] == [
        "ratio vitlab / hand-written", "ratio lightning / hand-written", "ratio vitlab / lightning"
    ]  # fmt: skip
    # wall s, CPU s, s/epoch of each side and their ratios, one test accuracy per run, the fastest wall s
    assert all(float(cell) > 0 for row in rows for cell in row[2:5])
    assert all(0 < float(row[5]) <= 1 for row in (ours, lightning, loop))
    assert all(float(row[6]) > 0 for row in rows)  # the fastest run's wall s, and their ratios
    assert lightning[5] == loop[5]  # the same loop, the same random numbers
    each_run, *run_by_run = [line for line in lines if line.startswith(("Each run", "- wall"))]
    assert each_run.startswith("Each run, wall s (vitlab · lightning · hand-written): ")
    assert [line.split(" run by run")[0] for line in run_by_run] == [
        "- wall vitlab / hand-written", "- wall lightning / hand-written", "- wall vitlab / lightning"
    ]  # fmt: skip
    # one run: the median of the run-by-run ratios is the ratio of the medians
    for line, ratio in zip(run_by_run, ratios, strict=True):
        assert float(line.split("median ")[1].split()[0]) == pytest.approx(float(ratio[2]), abs=2e-3)
    monkeypatch.setattr(bench_quickstart, "GROWTH_POINTS", ((2, 64),))
    row = bench_quickstart.growth([], epochs=2)[-1]
    assert row.startswith("| 2x digits | 64 |") and all(float(cell) > 0 for cell in row.split("|")[3:7])
    # --profile: the quickstart's metrics are torchmetrics, which the bare loop does not use; both run Lightning
    packages = {
        cells[1].strip(): [float(cell) for cell in cells[2:5]]
        for cells in (line.split("|") for line in bench_quickstart.epoch_profile([], epochs=2))
        if len(cells) == 6 and cells[2].strip()[:1].isdigit()
    }
    assert packages["torchmetrics"][0] > 0 and packages["torchmetrics"][1] == 0
    assert packages["lightning"][0] > 0 and packages["lightning"][1] > 0
    # cells of 10 ms and more are printed as whole numbers, so the difference may be off by one in its last digit
    assert packages["all"][2] == pytest.approx(packages["all"][0] - packages["all"][1], abs=1)


@pytest.mark.slow  # torch.compile builds C++ kernels with gcc on a CPU: tens of seconds
def test_compiled_backbone_trains_and_checkpoints_like_the_eager_one(tmp_path):
    cfg = compose_config(
        "train",
        ["data=digits", *TINY_VIT, *QUICK, "model.compile=true", "+trainer.limit_train_batches=2",
         "+trainer.limit_val_batches=1", "test=false"],
        tmp_path,
    )  # fmt: skip
    metrics = train(cfg)
    assert metrics["train/loss_epoch"] > 0
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])


@pytest.mark.slow  # torch.compile on a CPU: tens of seconds
def test_the_gpu_only_measurements_run_end_to_end_on_the_cpu():
    """What `src.bench --device cuda` adds (never run here for want of a GPU) must not fail on its first GPU."""
    args = bench.parse_args(["--device", "cpu", "--batch-size", "8", "--steps", "3", "--warmup", "1",
                             "--epoch-images", "64", "--epoch-batch-size", "32", "--overrides", *TINY_VIT])  # fmt: skip
    cfg = workload.model_config("vit", 16, "cpu", args.overrides)
    module = workload.build_module(cfg)
    loader = workload.gpu_batches(*workload.synthetic(3 * 8), batch_size=8, image_size=16, device="cpu")
    extras = gpu.gpu_extras(cfg, module, loader, args)
    # a 1-block ViT of width 32 on 16 px (17 tokens): ~6 x 11 k parameters x 17 tokens, less the patch
    # embedding's input gradient, plus attention (counted: 0.94 MFLOP; the scratch ViT-Lite-7/4 at 32 px: 1.54 GFLOP)
    assert 0.0008 < extras.train_gflop_per_image < 0.0011
    assert extras.compiled_ours_img_s > 0 and extras.mfu_raw is None  # no bf16 peak known for a CPU
    assert gpu.epoch_seconds(args) > 0


@pytest.mark.slow  # four short training runs, each evaluated and predicted, and four benchmarks: minutes on 2 cores
def test_the_gpu_check_script_runs_every_step_on_the_cpu(tmp_path):
    """scripts/gpu_check.py's dry run: the GPU session's only command must not fail on a Python error."""
    gpu_check = importlib.import_module("scripts.gpu_check")
    code = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--budget", "3000"])
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = {step["step"]: (step["status"], step.get("reason")) for step in results["steps"]}
    assert set(statuses) == {"data", *(f"smoke/{name}" for name in gpu_check.smoke_runs(True)),
                             "test/no_gpu_sync", *(f"bench/{name}" for name in gpu_check.BENCH_RUNS)}  # fmt: skip
    assert all(status == "PASS" for status, _ in statuses.values()), statuses
    assert code == 0
    smoke = next(step for step in results["steps"] if step["step"] == "smoke/vit_bf16")
    assert smoke["peak_memory_of"] == "process_rss" and 0 <= smoke["test/acc"] <= 1
    benchmarks = (tmp_path / "benchmarks.md").read_text()
    for model in ("| vit | 16 |", "| deit | 32 |", "| vgg19 | 32 |", "| densenet121 | 32 |"):
        assert model in benchmarks
    assert "train GFLOP/image" in benchmarks and "compiled" in benchmarks


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.py runs it there)"
)
def test_a_training_step_that_logs_nothing_does_not_wait_for_the_gpu(tmp_path):
    """Between the steps the loggers write, `Trainer.fit` of the ClassifierModule (with the non-finite loss guard)
    reads nothing off the GPU, as a hand-written loop does not: each read waits for all the work queued so far.
    Lightning turned the progress bar's step loss into a number after every step (upstream_fixes.lightning
    `progress_bar_value`)."""
    cfg = workload.model_config("vit", 16, "cuda", TINY_VIT)
    images, labels = workload.synthetic(40 * 8)
    loader = workload.gpu_batches(images, labels, 8, 16, "cuda")

    class CountSyncs(L.Callback):  # torch's sync debug mode warns at each read; steps 2..29 log nothing
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx in (2, 30):
                torch.cuda.set_sync_debug_mode("warn" if batch_idx == 2 else "default")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = workload.bench_trainer(
            cfg,
            "cuda",
            str(tmp_path),
            CountSyncs(),
            NonFiniteLossGuard(),
            max_epochs=1,
            log_every_n_steps=1000,
        )
        trainer.fit(workload.build_module(cfg), train_dataloaders=loader)
    torch.cuda.set_sync_debug_mode("default")
    syncs = [str(warning.message) for warning in caught if "synchroniz" in str(warning.message)]
    assert trainer.global_step == 40
    assert syncs == [], f"{len(syncs)} GPU syncs in 28 steps, the first: {syncs[:1]}"
