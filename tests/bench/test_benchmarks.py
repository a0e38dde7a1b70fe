"""The benchmark commands (python -m src.bench, src.bench.quickstart) and scripts/gpu_check.py run end to end and
time what a user's run does."""

import importlib
import json

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf

from src.bench import gpu, step_profile, workload
from src.bench import quickstart as bench_quickstart
from src.bench import suite as bench
from src.training.trainer import build_trainer
from tests.conftest import TINY_VIT


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
