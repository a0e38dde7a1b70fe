"""Data sets as WebDataset tar shards (`data=shards`), for data that lives on an object store or is read by many
nodes: `python -m src.shards` writes any vitlab data set as `<split>-000000.tar`, ... (WebDataset's format: one
`<key>.<ext>` image file and one `<key>.cls` label per sample, the image's own bytes) and `shards.json`, which
lists the class names and where each sample lies in its shard (byte offset and size, from the tar headers).

Training reads samples by those offsets, from a folder or from any fsspec URL (s3://, gs://, https://: byte-range
reads), so the shards are a map-style data set like an image folder: Lightning's DistributedSampler gives each
rank a disjoint share, val and test are read exactly once across ranks, and a fit resumed mid-epoch goes on where
it stopped, as for image folders."""

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from src.data.files import image_mode, open_image
from src.data.imagefolder import SPLITS, FileDataModule, Index
from src.errors import UserError

log = logging.getLogger(__name__)

MANIFEST = "shards.json"


def _encoded(dataset, i: int) -> tuple[bytes, str]:
    """The image at `i` as file bytes and extension: the file's own bytes where the data set has them (image
    folders, CSV, hf), else a PNG of its pixels (digits, CIFAR-10)."""
    if hasattr(dataset, "encoded"):
        return dataset.encoded(i)
    image, _ = dataset[i]
    if isinstance(image, torch.Tensor):  # C x H x W uint8
        image = Image.fromarray(image.permute(1, 2, 0).numpy())
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue(), "png"


def _label(dataset, i: int) -> int:
    targets = getattr(dataset, "targets", None)
    return int(targets[i]) if targets is not None else int(dataset[i][1])


def write_shards(datamodule, out: str | Path, samples_per_shard: int) -> Path:
    """Writes every split of `datamodule` as shards into the new folder `out`; returns its manifest's path."""
    try:
        import webdataset as wds
    except ImportError:
        raise UserError("python -m src.shards needs WebDataset: pip install -e '.[data]'") from None

    out = Path(os.path.expanduser(str(out)))
    if out.exists() and any(out.iterdir()):
        raise UserError(f"out={out} is not empty: name a new folder for the shards (nothing is overwritten)")
    if not isinstance(samples_per_shard, int) or samples_per_shard < 1:
        raise UserError(f"samples_per_shard={samples_per_shard} must be a whole number of at least 1")
    datamodule.setup()
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"class_names": list(datamodule.class_names), "samples": {}}
    for split in SPLITS:
        subset = getattr(datamodule, f"data_{split}")
        with wds.ShardWriter(str(out / f"{split}-%06d.tar"), maxcount=samples_per_shard, verbose=0) as sink:
            for n, i in enumerate(tqdm(subset.indices, desc=f"{split} shards", unit="image")):
                data, ext = _encoded(subset.dataset, i)
                sink.write({"__key__": f"{n:09d}", ext: data, "cls": _label(subset.dataset, i)})
        manifest["samples"][split] = [
            entry for tar in sorted(out.glob(f"{split}-*.tar")) for entry in _tar_index(tar)
        ]
    path = out / MANIFEST
    path.write_text(json.dumps(manifest))
    return path


def _tar_index(tar: Path) -> list[list]:
    """[shard name, byte offset, size, label] of each image in `tar`, in the shard's order."""
    images, labels = {}, {}
    with tarfile.open(tar) as archive:
        for member in archive:
            key, _, ext = member.name.partition(".")
            if ext == "cls":
                labels[key] = int(archive.extractfile(member).read())
            else:
                images[key] = [tar.name, member.offset_data, member.size]
    return [images[key] + [labels[key]] for key in images]


def read_manifest(path: str) -> dict:
    if path is None:
        raise UserError("data.path is not set: pass data.path=<folder or URL of the shards and shards.json>")
    url = f"{str(path).rstrip('/')}/{MANIFEST}"
    try:
        with fsspec.open(os.path.expanduser(url), "r") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot read {url} ({type(err).__name__}: {str(err)[:200]}): point data.path at the folder that "
            "python -m src.shards wrote"
        ) from None
    if not any(manifest.get("samples", {}).values()):
        raise UserError(f"{url} lists no samples: write the shards again with python -m src.shards")
    return manifest


def shards_num_classes(path: str) -> int:
    return len(read_manifest(path)["class_names"])


class ShardSamples(Dataset):
    """The images at (shard, offset, size) with their labels; each process opens each shard once."""

    def __init__(self, root: str, entries: list[str], targets: list[int], mode: str = "RGB"):
        self.root, self.mode = os.path.expanduser(str(root).rstrip("/")), mode
        shard_offset_size = [entry.rsplit(":", 2) for entry in entries]
        self.shard_names = sorted({shard for shard, _, _ in shard_offset_size})
        self.shard_of = np.array([self.shard_names.index(shard) for shard, _, _ in shard_offset_size])
        self.offsets = np.array([int(offset) for _, offset, _ in shard_offset_size])
        self.sizes = np.array([int(size) for _, _, size in shard_offset_size])
        self.targets = np.array(targets)
        self._open: dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.targets)

    def read(self, i: int) -> bytes:
        if self._pid != os.getpid():  # a loader worker: its own file handles, not its parent's
            self._open, self._pid = {}, os.getpid()
        shard = int(self.shard_of[i])
        if shard not in self._open:
            self._open[shard] = fsspec.open(f"{self.root}/{self.shard_names[shard]}", "rb").open()
        handle = self._open[shard]
        handle.seek(int(self.offsets[i]))
        return handle.read(int(self.sizes[i]))

    def __getitem__(self, i: int):
        return open_image(io.BytesIO(self.read(i)), self.mode), int(self.targets[i])


class ShardsDataModule(FileDataModule):
    def __init__(self, path: str, data_dir: str | None = None, **kwargs):
        super().__init__(data_dir=data_dir, **kwargs)
        self.save_hyperparameters(logger=False)

    def scan(self) -> Index:
        manifest = read_manifest(self.hparams.path)
        index = Index(class_names=manifest["class_names"])
        for split, samples in manifest["samples"].items():
            for shard, offset, size, label in samples:
                index.total += 1
                index.add(f"{shard}:{offset}:{size}", label, split)
        return index

    def dataset(self, index: Index, labels: np.ndarray) -> ShardSamples:
        return ShardSamples(self.hparams.path, index.files, labels, image_mode(self.hparams.channels))
