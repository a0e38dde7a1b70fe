"""The logger options write what their own clients read back: the CSV file, MLflow's MlflowClient, W&B's
offline run folder; a logger whose client is not installed stops with one line naming the extra."""

import csv
import importlib.util
from pathlib import Path

import pytest
import yaml

from src.errors import UserError
from src.training.loggers import instantiate_loggers
from tests.conftest import QUICK, TINY_VIT, compose_config, run_cli, run_dirs

TINY_RUN = [
    "data=digits",
    *TINY_VIT,
    *QUICK,
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
]


def train_with(logger: str, log_dir: Path) -> Path:
    result = run_cli(
        "src.train", *TINY_RUN, f"logger={logger}", "tags=[digits,logger_test]", f"paths.log_dir={log_dir}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(log_dir, "train")
    return run_dir


@pytest.mark.slow
def test_csv_logger_writes_metrics_hyperparameters_and_tags(tmp_path):
    run_dir = train_with("csv", tmp_path)
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    logged = {key for row in rows for key, value in row.items() if value}
    assert {"train/loss_step", "val/acc", "test/acc", "hp/test/acc", "hp/val/acc_best"} <= logged
    hparams = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    assert hparams["model/params_total"] > 0 and hparams["tags"] == "digits,logger_test"
    assert not (run_dir / "tensorboard").exists()  # only the chosen logger


def test_list_form_and_many_compose(tmp_path):
    assert set(compose_config("train", ["logger=[tensorboard,csv]"], tmp_path).logger) == {
        "tensorboard",
        "csv",
    }
    assert set(compose_config("train", ["logger=many"], tmp_path).logger) == {
        "tensorboard",
        "csv",
        "mlflow",
        "wandb",
    }


@pytest.mark.parametrize("logger", ["mlflow", "wandb"])
def test_a_missing_client_names_its_extra(logger, tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == logger else real_find_spec(name, *a)
    )
    cfg = compose_config("train", [f"logger={logger}"], tmp_path)
    with pytest.raises(UserError, match=rf"pip install -e '\.\[{logger}\]'"):
        instantiate_loggers(cfg.logger)


@pytest.mark.slow
def test_mlflow_and_wandb_read_back_what_was_logged(tmp_path, monkeypatch):
    run_dir = train_with("[mlflow,wandb]", tmp_path)
    # MLflow: its own client finds the run in the local store under paths.log_dir
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{tmp_path}/mlflow")
    experiment = client.get_experiment_by_name("train")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == str(run_dir)
    assert int(run.data.params["model.params_total"]) > 0 and run.data.params["data"] == "digits"
    assert {"digits", "logger_test"} <= run.data.tags.keys()
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 1  # one epoch
    assert {"test/acc", "hp/test/acc", "hp/val/acc_best"} <= run.data.metrics.keys()
    artifacts = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report.md", "report.csv", "confusion_matrix.png"} <= artifacts
    # W&B, offline: the run folder inside the run dir; its records (protobuf, unreadable without the server)
    # hold the metric names, hyper-parameters and tags as plain strings
    (records,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    data = records.read_bytes()
    for text in ("val/acc", "test/acc", "hp/test/acc", "params_total", "logger_test"):
        assert text.encode() in data, text
    assert list((run_dir / "wandb").glob("offline-run-*/files/media/images/test/report_*.png"))
