"""data=shards: WebDataset tar shards written by src.shards from an image folder (and from data=hf), read back
bit-identical, split across 2 and 3 ranks with each sample read once, trained on from the command line."""

import functools
import http.server
import io
import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from src.data.imagefolder import SPLITS, ImageFolderDataModule
from src.data.shards import MANIFEST, ShardsDataModule, write_shards
from src.errors import UserError
from tests.conftest import QUICK, TINY_VIT, run_cli, run_dirs
from tests.data.test_imagefolder import write_images

SETTINGS = dict(
    image_size=16, mean=[0.5] * 3, std=[0.25] * 3, batch_size=8, seed=0, val_size=6, test_size=6, num_workers=0
)  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Three classes of 12 PNG and JPEG images each."""
    root = tmp_path_factory.mktemp("shards") / "pets"
    for start, name in enumerate(("cat", "dog", "owl")):
        write_images(root / name, 12, start=100 * start)
        Image.open(root / name / f"{100 * start:03d}.png").convert("RGB").save(root / name / "photo.jpg")
    return root


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("written") / "pets_shards"
    write_shards(ImageFolderDataModule(data_dir=str(folder), num_classes=3, **SETTINGS), out, 7)
    return out


def loaded(path, **settings) -> ShardsDataModule:
    data = ShardsDataModule(path=str(path), **(SETTINGS | {"num_classes": 3} | settings))
    data.setup()
    return data


def test_shards_hold_the_files_own_bytes_and_the_folders_splits(folder, shards):
    source = ImageFolderDataModule(data_dir=str(folder), num_classes=3, **SETTINGS)
    source.setup()
    data = loaded(shards)
    assert data.class_names == ["cat", "dog", "owl"] and data.split_counts == source.split_counts
    # 39 images in splits of 27 / 6 / 6, 7 to a shard: 4 + 1 + 1 tars, the last of train holding 6
    assert sorted(p.name for p in shards.glob("*.tar")) == [
        *(f"test-00000{i}.tar" for i in range(1)), *(f"train-00000{i}.tar" for i in range(4)), "val-000000.tar"
    ]  # fmt: skip
    for split in SPLITS:
        theirs, ours = getattr(source, f"data_{split}"), getattr(data, f"data_{split}")
        for i, j in zip(theirs.indices, ours.indices, strict=True):
            path = Path(theirs.dataset.files[i])
            assert ours.dataset.read(j) == path.read_bytes()  # bit-identical, JPEGs included
            assert ours.dataset.targets[j] == theirs.dataset.targets[i]
    # the tars are WebDataset's format (<key>.<ext>, <key>.cls): WebDataset's own reader gives the same samples
    import webdataset as wds

    samples = list(wds.WebDataset(str(shards / "val-000000.tar"), shardshuffle=False))
    val = data.data_val
    assert [int(sample["cls"]) for sample in samples] == [val.dataset.targets[j] for j in val.indices]
    assert [sample.get("png", sample.get("jpg")) for sample in samples] == [
        val.dataset.read(j) for j in val.indices
    ]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_read_disjoint_parts_and_every_sample_once(shards, world):
    """Val and test (vitlab's evaluation sampler): each sample once across ranks, whatever the shard sizes;
    train (the DistributedSampler vitlab builds): disjoint parts of the 27 training images, each once per epoch
    (27 = 3 x 9; with 2 ranks one image is read twice, to give both ranks 14)."""
    for split in ("val", "test"):
        seen = []
        for rank in range(world):
            data = loaded(shards)
            data.trainer = SimpleNamespace(
                global_rank=rank, world_size=world, strategy=SimpleNamespace(root_device="cpu"), current_epoch=0
            )  # fmt: skip
            loader = getattr(data, f"{split}_dataloader")()
            seen += [
                data.data_val.indices[i] if split == "val" else data.data_test.indices[i]
                for i in loader.sampler
            ]
        assert sorted(seen) == sorted(getattr(loaded(shards), f"data_{split}").indices)
    parts = []
    for rank in range(world):  # the sampler vitlab's training loader builds for each rank
        data = loaded(shards)
        data.trainer = SimpleNamespace(
            global_rank=rank, world_size=world, strategy=SimpleNamespace(root_device="cpu"), current_epoch=0
        )  # fmt: skip
        sampler = data.train_dataloader().sampler
        assert isinstance(
            sampler, DistributedSampler
        )  # so Lightning keeps the loader (and its resumable state)
        parts.append(list(sampler))
    train = data.data_train
    counts = np.bincount(np.concatenate(parts), minlength=len(train))
    assert counts.min() == 1 and counts.sum() - len(train) == (-len(train)) % world


def test_bad_shard_folders_are_user_errors(tmp_path, shards):
    with pytest.raises(UserError, match=r"cannot read .*shards.json .*point data.path at the folder"):
        loaded(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"class_names": ["a"], "samples": {"train": []}}))
    with pytest.raises(UserError, match="lists no samples"):
        loaded(tmp_path)
    with pytest.raises(UserError, match="is not empty: name a new folder"):
        write_shards(None, shards, 7)


@pytest.mark.slow
def test_shards_written_from_the_command_line_train_and_evaluate(folder, tmp_path):
    out, logs = tmp_path / "pets_shards", tmp_path / "logs"
    result = run_cli("src.shards", "data=imagefolder", f"data.data_dir={folder}", f"out={out}",
                     "samples_per_shard=10", "data.val_size=6", "data.test_size=6", f"paths.log_dir={logs}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list(out.glob("train-*.tar"))) == 3 and (out / MANIFEST).is_file()
    result = run_cli("src.train", "data=shards", f"data.path={out}", *TINY_VIT, *QUICK, f"paths.log_dir={logs}",
                     "task_name=pets", "data.image_size=16")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(logs, "pets")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["class_counts"]["test"] == {"cat": 2, "dog": 2, "owl": 2}
    again = run_cli(
        "src.shards", "data=imagefolder", f"data.data_dir={folder}", f"out={out}", f"paths.log_dir={logs}"
    )
    assert again.returncode == 2 and "is not empty: name a new folder" in again.stderr


# warmup_cosine asks for trainer.estimated_stepping_batches, which stops Lightning 2.6 restoring loaders itself
@pytest.mark.parametrize("scheduler", ["warmup_cosine", "none"])
def test_a_fit_resumed_mid_epoch_reads_the_rest_of_that_epoch(shards, scheduler, tmp_path, monkeypatch):
    """Resuming at step 5 (2 batches of 10 into epoch 1 of 27 training images) reads the 7 images that the
    uninterrupted fit read last, in its order: none twice, none left out."""
    from src.data.shards import ShardSamples
    from src.train import train
    from tests.conftest import EVERY_STEP_CHECKPOINTS, compose_config

    read, original = [], ShardSamples.__getitem__
    monkeypatch.setattr(ShardSamples, "__getitem__", lambda self, i: read.append(i) or original(self, i))
    args = ["data=shards", f"data.path={shards}", "data.image_size=16", "data.batch_size=10",
            f"scheduler={scheduler}", *TINY_VIT, *QUICK, "trainer.max_epochs=2", "test=false",
            *EVERY_STEP_CHECKPOINTS]  # fmt: skip
    train(compose_config("train", args, tmp_path / "whole"))
    train_images = set(loaded(shards).data_train.indices)
    whole = [i for i in read if i in train_images]
    assert len(whole) == 2 * 27 and sorted(whole[27:]) == sorted(train_images)
    read.clear()
    step_5 = tmp_path / "whole" / "checkpoints" / "step_5.ckpt"
    assert torch.load(step_5, weights_only=True)["epoch"] == 1  # inside the second epoch
    train(compose_config("train", [*args, f"ckpt_path={step_5}"], tmp_path / "resumed"))
    assert [i for i in read if i in train_images] == whole[-7:]


@pytest.mark.slow
def test_ddp_on_three_cpu_processes_tests_every_shard_image_once(shards, tmp_path):
    """3 gloo ranks over 4 + 1 + 1 shards: the 6 test images (2 per class) in the report once each."""
    result = run_cli("src.train", "data=shards", f"data.path={shards}", "data.image_size=16", "trainer=ddp",
                     "trainer.devices=3", *TINY_VIT, *QUICK, f"paths.log_dir={tmp_path}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(tmp_path, "train")
    supports = [line.rsplit(",", 1)[1] for line in (run_dir / "report.csv").read_text().splitlines()]
    assert supports[1:4] == ["2", "2", "2"] and supports[-1] == "6"


def test_shards_of_a_hugging_face_data_set_and_of_digits_keep_their_images(tmp_path):
    """hf rows keep their own encoded bytes; a data set held as pixels (digits) is stored as lossless PNGs."""
    datasets = pytest.importorskip("datasets")
    from src.data.digits import DigitsDataModule
    from src.data.hf import HFDataModule
    from tests.data.test_hf import digits_dataset

    datasets.DatasetDict(train=digits_dataset(range(300)), test=digits_dataset(range(300, 400))).save_to_disk(
        str(tmp_path / "hf")
    )
    settings = SETTINGS | {"num_classes": 10, "val_size": 30, "test_size": 30, "style": "digits"}
    source = HFDataModule(name=str(tmp_path / "hf"), **settings)
    write_shards(source, tmp_path / "hf_shards", 64)
    data = loaded(tmp_path / "hf_shards", num_classes=10)
    assert data.split_counts == source.split_counts
    rows = source.data_test.dataset
    assert [rows.encoded(i)[0] for i in source.data_test.indices] == [
        data.data_test.dataset.read(j) for j in data.data_test.indices
    ]
    digits = DigitsDataModule(
        data_dir="unused", **(SETTINGS | {"num_classes": 10, "val_size": 180, "test_size": 360})
    )
    write_shards(digits, tmp_path / "digits_shards", 500)
    data = loaded(tmp_path / "digits_shards", num_classes=10)
    pixels, label = digits.data_test.dataset[digits.data_test.indices[0]]
    image, stored = data.data_test.dataset[data.data_test.indices[0]]
    assert stored == label and np.array_equal(np.asarray(image), pixels.permute(1, 2, 0).numpy())


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Python's file server plus single byte ranges (`Range: bytes=a-b`), as object stores and web servers
    answer them: what fsspec's HTTP reads of a sample at an offset ask for."""

    def log_message(self, *args) -> None:
        pass

    def send_head(self):
        wanted = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not wanted or not path.is_file():
            return super().send_head()
        data = path.read_bytes()
        start, end = int(wanted[1]), min(int(wanted[2] or len(data) - 1), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start : end + 1])


@pytest.fixture(scope="module")
def shards_url(shards) -> str:
    """The shard folder served over HTTP on the loopback interface, for as long as the module's tests run."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(shards))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_shards_read_from_an_http_url_as_from_their_folder(shards, shards_url):
    local, remote = loaded(shards), loaded(shards_url, num_workers=2)
    assert remote.class_names == local.class_names and remote.split_counts == local.split_counts
    samples = remote.data_train.dataset
    assert all(samples.read(i) == local.data_train.dataset.read(i) for i in range(len(samples)))
    # the training loader's worker processes, each with its own connections, read every training image once
    labels = torch.cat([y for _, y in remote.train_dataloader()])
    assert sorted(labels.tolist()) == sorted(
        local.data_train.dataset.targets[local.data_train.indices].tolist()
    )


@pytest.mark.slow
def test_training_streams_shards_from_an_http_url(shards_url, tmp_path):
    logs = tmp_path / "logs"
    result = run_cli("src.train", "data=shards", f"data.path={shards_url}", *TINY_VIT, *QUICK,
                     f"paths.log_dir={logs}", "task_name=web", "data.image_size=16")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = run_dirs(logs, "web")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["class_counts"]["test"] == {"cat": 2, "dog": 2, "owl": 2}
