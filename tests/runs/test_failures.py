"""Nothing lost, nothing silent (issue 11): diverged runs stop, resumes are checked before anything is written,
bad values and files get one `error:` line, logger=none works, checkpoints load weights_only even when torch is
told otherwise, failed runs leave no empty folder, and a run being written cannot be resumed twice."""

import fcntl
import json
import math
import os
import subprocess
import sys

import lightning
import pytest
import torch
from hydra.utils import instantiate

from src.cli.checks import check_values
from src.errors import UserError
from src.reporting.artefacts import write_summary
from src.training.module import ClassifierModule, load_checkpoint
from tests.conftest import QUICK, TINY_VIT, compose_config, run_cli

DIGITS = ["data=digits", *TINY_VIT, *QUICK, "+trainer.limit_train_batches=3", "+trainer.limit_val_batches=2",
          "+trainer.limit_test_batches=2", "data.batch_size=8"]  # fmt: skip


def files_below(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_error_line(result, *words):
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "\x1b[" not in errors[0]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny digits run: its log dir and run dir."""
    log_dir = tmp_path_factory.mktemp("trained")
    result = run_cli("src.train", *DIGITS, f"paths.log_dir={log_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    return log_dir, run_dir


@pytest.mark.slow
def test_a_diverged_run_stops_with_one_line_and_keeps_no_checkpoint(tmp_path):
    result = run_cli(
        "src.train", *DIGITS, "optimizer.lr=1e6", "trainer.max_epochs=3", f"paths.log_dir={tmp_path}"
    )
    line = one_error_line(result, "training loss was nan at step", "learning rate", "optimizer.lr")
    assert "epoch 0" in line
    assert not list(tmp_path.rglob("*.ckpt")), "no checkpoint of the diverged weights"
    assert not (tmp_path / "train" / "runs").exists() or not list((tmp_path / "train" / "runs").iterdir())


def test_summary_json_writes_non_finite_numbers_as_null(tmp_path):
    write_summary({"test": {"test/loss": math.nan, "test/acc": 0.5}, "x": [math.inf]}, tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text()) == {
        "test": {"test/loss": None, "test/acc": 0.5},
        "x": [None],
    }
    assert "NaN" not in (tmp_path / "s.json").read_text()


@pytest.mark.slow
def test_an_optuna_search_records_a_diverged_trial_as_failed_and_goes_on(tmp_path):
    result = run_cli(
        # with this search space, sampler seed 0 draws lr 1e-3 and then 1e6: a sound trial and a diverging one
        "src.train", "hparams_search=vit_optuna", *DIGITS, f"paths.log_dir={tmp_path}", "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.seed=0", "hydra.sweeper.params={optimizer.lr: 'choice(1e6, 1e-3)'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    launched = [line for line in result.stdout.splitlines() if "Launching" not in line and "#" in line]
    assert {"optimizer.lr=1000000.0" in line for line in launched} == {True, False}, (
        "seed 0 no longer draws both learning rates (the search space changed?): pick another seed\n"
        + "\n".join(launched)
    )
    assert "Optuna records this trial as failed" in result.stderr + result.stdout
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    best = (sweep / "optimization_results.yaml").read_text()
    assert "1000000" not in best and "1e6" not in best.lower()


@pytest.mark.slow
def test_an_optuna_search_whose_every_trial_fails_ends_with_one_line(tmp_path):
    result = run_cli("src.train", "hparams_search=vit_optuna", *DIGITS, "trainer.max_epochs=abc",
                     "hydra.sweeper.n_trials=2", f"paths.log_dir={tmp_path}")  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1].startswith(
        "error: no trial of the Optuna search completed; 2 job(s) of the sweep failed: job 0: bad input: "
        "trainer.max_epochs='abc'"
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.max_epochs=abc", "trainer.max_epochs='abc'"),
        ("data.batch_size=-1", "data.batch_size=-1"),
        ("optimizer.lr=-1", "optimizer.lr=-1"),
        ("model.dropout=1.5", "model.dropout=1.5"),
        ("trainer.gradient_clip_val=-2", "trainer.gradient_clip_val=-2"),
        ("module.label_smoothing=1", "module.label_smoothing=1"),
    ],
)
def test_bad_values_name_the_key_the_value_and_the_range(override, key, tmp_path):
    cfg = compose_config("train", ["data=digits", override], tmp_path)
    with pytest.raises(UserError, match="must be") as error:
        check_values(cfg)
    assert str(error.value).startswith(key)


@pytest.mark.slow
def test_a_bad_value_on_the_command_line_is_one_line_and_leaves_no_run_folder(tmp_path):
    result = run_cli("src.train", *DIGITS, "trainer.max_epochs=abc", f"paths.log_dir={tmp_path}")
    one_error_line(result, "trainer.max_epochs", "abc", "at least 1")
    assert not list(tmp_path.rglob("*.yaml")), files_below(tmp_path)


@pytest.mark.slow
def test_weights_path_that_is_no_weights_file_names_the_key(tmp_path):
    text = tmp_path / "weights.pth"
    text.write_text("hello")
    result = run_cli("src.train", "model=vit_tiny", "data=digits", f"model.weights_path={text}", *QUICK,
                     f"paths.log_dir={tmp_path}")  # fmt: skip
    one_error_line(result, "model.weights_path")


@pytest.mark.slow
def test_logger_none_trains_with_the_default_callbacks(tmp_path):
    result = run_cli("src.train", *DIGITS, "logger=none", f"paths.log_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.rglob("summary.json"))


@pytest.mark.slow
def test_a_sweep_optimizing_an_unlogged_metric_names_it_and_the_logged_ones(tmp_path):
    result = run_cli("src.train", "-m", *DIGITS, "optimized_metric=val/nope", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-3000:]
    job_error, sweep_end = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    for word in ("optimized_metric=val/nope", "val/acc", "test/acc"):
        assert word in job_error
    assert (
        sweep_end.startswith("error: 1 job(s) of the sweep failed")
        and "optimized_metric=val/nope" in sweep_end
    )


@pytest.mark.slow
def test_a_sweep_runs_every_job_records_each_failure_and_exits_non_zero_at_the_end(tmp_path):
    result = run_cli("src.train", "-m", *DIGITS, "optimizer.lr=-1,1e-3,-2", f"paths.log_dir={tmp_path}")
    assert result.returncode == 2, result.stderr[-3000:]
    (sweep,) = (tmp_path / "train" / "multiruns").iterdir()
    assert (sweep / "1" / "summary.json").is_file(), "the job after a failed one ran"
    failed = (sweep / "failed_jobs.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in failed] == ["job 0", "job 2"]
    assert "bad input: optimizer.lr=-1 is not allowed" in failed[0] and "optimizer.lr=-2" in failed[1]
    assert result.stderr.splitlines()[-1].startswith(
        "error: 2 job(s) of the sweep failed: job 0: bad input: optimizer.lr=-1"
    )
    assert "Traceback" not in result.stderr


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["src.eval", "src.predict", "src.train"])
def test_a_malicious_pickle_runs_no_code_even_when_torch_is_told_to_unpickle(entry, trained, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoints" / "evil.ckpt"
    evil.parent.mkdir()
    torch.save({"state_dict": Payload(marker)}, evil)
    extra = {"src.predict": [f"inputs={evil}"], "src.train": DIGITS}[entry] if entry != "src.eval" else []
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-m", entry, f"ckpt_path={evil}", *extra, f"paths.log_dir={tmp_path}"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    one_error_line(result, str(evil), "not a checkpoint")
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["text", "other_program", "truncated"])
def test_resuming_a_file_that_is_no_src_train_checkpoint_is_one_line(kind, trained, tmp_path):
    path = tmp_path / "x.ckpt"
    if kind == "text":
        path.write_text("hello")
    elif kind == "other_program":
        torch.save({"weights": torch.ones(3)}, path)
    else:
        path.write_bytes((trained[1] / "checkpoints" / "last.ckpt").read_bytes()[:5000])
    result = run_cli("src.train", *DIGITS, f"ckpt_path={path}", f"paths.log_dir={tmp_path}")
    one_error_line(result, str(path), "not a checkpoint written by src.train")


@pytest.mark.slow
def test_resuming_with_another_model_names_both_and_writes_nothing_into_the_run(trained, tmp_path):
    log_dir, run_dir = trained
    before = files_below(run_dir)
    result = run_cli("src.train", *DIGITS, "model.depth=2", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                     f"paths.log_dir={tmp_path}")  # fmt: skip
    one_error_line(result, "model.depth=1 in the checkpoint but 2 here")
    assert files_below(run_dir) == before
    assert not (tmp_path / "train").exists() or not list((tmp_path / "train" / "runs").iterdir())


@pytest.mark.slow
def test_a_run_being_written_is_not_resumed_by_a_second_process(trained, tmp_path):
    log_dir, run_dir = trained
    before = files_below(run_dir)
    with open(run_dir / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running src.train holds it
        lock.write("pid 1 on elsewhere\n")
        lock.flush()
        result = run_cli("src.train", *DIGITS, "ckpt_path=last", f"paths.log_dir={log_dir}")
        fcntl.flock(lock, fcntl.LOCK_UN)
    one_error_line(result, str(run_dir), "is being written by")
    assert files_below(run_dir) == before
    assert len(list((log_dir / "train" / "runs").iterdir())) == 1, "the refused run leaves no folder"


@pytest.mark.slow
def test_a_failed_run_logs_its_traceback_in_the_run_log(trained, tmp_path):
    log_dir, run_dir = trained
    result = run_cli("src.train", *DIGITS, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "train=false",
                     f"paths.log_dir={log_dir}")  # fmt: skip
    one_error_line(result, "src.eval")
    log = (run_dir / "train.log").read_text()
    assert "Traceback" in log and "UserError" in log


def test_a_bug_while_building_the_model_keeps_its_traceback_and_a_broken_file_is_one_error(
    tmp_path, monkeypatch
):
    cfg = compose_config("train", ["data=digits", *TINY_VIT], tmp_path)
    module = instantiate(cfg.module)
    path = tmp_path / "model.ckpt"
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    torch.save({**checkpoint, "pytorch-lightning_version": lightning.__version__}, path)
    assert torch.equal(load_checkpoint(path).backbone.head.weight, module.backbone.head.weight)

    def buggy_init(self, *args, **kwargs):
        raise ValueError("a bug in the module")

    monkeypatch.setattr(ClassifierModule, "__init__", buggy_init)
    with pytest.raises(ValueError, match="a bug in the module"):  # not "is not a checkpoint"
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:5000])  # truncated
    with pytest.raises(UserError, match=f"{path} is not a checkpoint written by src.train"):
        load_checkpoint(path)
