"""Hugging Face `datasets` data sets (`data=hf`): a folder on disk (written by `save_to_disk`, parquet or arrow
files, or an image folder for datasets' `imagefolder` builder), or a Hub name where the Hub can be reached.

The image and label columns are configurable; class names come from the label column's `ClassLabel` feature
(or its values, sorted). The data set's splits map onto train/val/test; a val or test split that the data set
lacks is carved off train by the seeded, stratified split that image folders use. Images stay in the data set's
memory-mapped arrow files and are decoded when a batch needs them; unreadable ones are left out at setup, with
one warning, as for image folders."""

import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from src.data.files import image_mode, open_image, unreadable_reasons, warn_skipped
from src.data.imagefolder import SPLITS, FileDataModule, Index, _expand
from src.errors import UserError

log = logging.getLogger(__name__)

# the names data sets on the Hub give their splits, tried in this order where data.splits leaves one null
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test",)}
# rows whose images are checked together (their bytes are in memory at once)
CHECK_BATCH = 1000


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("data=hf needs Hugging Face's datasets package: pip install -e '.[data]'") from None
    return datasets


def load_hf(name: str):
    """The DatasetDict that `name` names: a local folder (save_to_disk output, or data files that
    `datasets.load_dataset` reads), else a data set on the Hub."""
    datasets = _import_datasets()
    if name is None:
        raise UserError(
            "data.name is not set: pass data.name=<a folder (save_to_disk, parquet files) or a Hub data set>"
        )
    path = _expand(name)
    if path.is_dir():
        try:
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset(str(path))
        except FileNotFoundError as err:
            raise UserError(
                f"data.name={name} holds no data set ({str(err)[:200]}): point it at a folder written by "
                "save_to_disk, a folder of parquet/arrow files, or a folder of class folders of images"
            ) from None
    else:
        try:
            loaded = datasets.load_dataset(str(name))
        except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
            raise UserError(
                f"data.name={name} is no folder here and could not be loaded from the Hugging Face Hub "
                f"({type(err).__name__}: {str(err)[:200]}): on a machine that reaches the Hub, save it with "
                "datasets.load_dataset(...).save_to_disk(<folder>) and pass data.name=<folder>"
            ) from None
    if isinstance(loaded, datasets.Dataset):  # save_to_disk of one split
        loaded = datasets.DatasetDict(train=loaded)
    return loaded


def _column(data, column: str, setting: str):
    features = next(iter(data.values())).features
    if column not in features:
        raise UserError(
            f"the data set has no column {column!r} (its columns: {', '.join(features)}): name it with "
            f"data.{setting}=<column>"
        )
    return features[column]


def hf_classes(data, label_column: str) -> list[str]:
    """The class names: the ClassLabel feature's names, else the label values sorted (integers numerically)."""
    datasets = _import_datasets()
    feature = _column(data, label_column, "label_column")
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    if not isinstance(feature, datasets.Value):
        raise UserError(
            f"column {label_column!r} holds {feature}, not one label per image: data=hf reads single-label "
            "data sets (a ClassLabel, integer or string column)"
        )
    values = {str(value) for split in data.values() for value in split.unique(label_column)}
    if all(value.lstrip("-").isdigit() for value in values):
        return [str(n) for n in sorted(int(value) for value in values)]
    return sorted(values)


def hf_num_classes(name: str, label_column: str) -> int:
    return len(hf_classes(load_hf(name), label_column))


def map_splits(data, splits: dict) -> dict[str, str]:
    """{vitlab split: the data set's split} for the splits it has; a missing val/test is carved off train."""
    mapped = {}
    for split in SPLITS:
        chosen = (splits or {}).get(split)
        if chosen is not None and chosen not in data:
            raise UserError(
                f"data.splits.{split}={chosen} is not a split of the data set (its splits: {', '.join(data)}): "
                f"name one of them, or set data.splits.{split}=null"
                + (" (val and test are then carved off train)" if split != "train" else "")
            )
        found = chosen or next((name for name in SPLIT_NAMES[split] if name in data), None)
        if found is not None:
            mapped[split] = found
    if "train" not in mapped:
        raise UserError(
            f"the data set has no train split (its splits: {', '.join(data)}): name the one to train on with "
            "data.splits.train=<split>"
        )
    return mapped


def _image_source(value) -> str | io.BytesIO:
    """An undecoded Image feature value ({'bytes', 'path'}) or a path string, as what PIL opens."""
    if isinstance(value, dict):
        return io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
    return value


def scan_hf(name: str, image_column: str, label_column: str, splits: dict, check: str = "decode") -> Index:
    """Every row of the mapped splits whose image can be read (as data.check_files=`check` finds them), named
    '<split>/<row>' in index.files."""
    datasets = _import_datasets()
    data = load_hf(name)
    feature = _column(data, image_column, "image_column")
    if not isinstance(feature, datasets.Image | datasets.Value):
        raise UserError(
            f"column {image_column!r} holds {feature}, not images: name the image column with "
            "data.image_column=<column>"
        )
    names = hf_classes(data, label_column)
    class_label = isinstance(data[next(iter(data))].features[label_column], datasets.ClassLabel)
    label_of = {name: i for i, name in enumerate(names)}
    index = Index(class_names=names)
    for split, source in map_splits(data, splits).items():
        rows = data[source]
        if isinstance(feature, datasets.Image):
            rows = rows.cast_column(image_column, datasets.Image(decode=False))
        for label, class_name in enumerate(names):
            index.origin[split, label] = f"{class_name} of {name} (split {source})"
        for start in range(0, len(rows), CHECK_BATCH):
            batch = rows[start : start + CHECK_BATCH]
            reasons = unreadable_reasons([_image_source(value) for value in batch[image_column]], check=check)
            for row, (value, reason) in enumerate(zip(batch[label_column], reasons, strict=True), start):
                index.total += 1
                if reason:
                    index.skipped[f"{source}/{row}"] = reason
                elif value is None:
                    index.skipped[f"{source}/{row}"] = "no label"
                else:
                    index.add(f"{source}/{row}", value if class_label else label_of[str(value)], split)
    warn_skipped(index.skipped, index.total, str(name))
    return index


class HFRows(Dataset):
    """The rows that index.files names ('<split>/<row>'), as (image in `mode`, label); decoded when read."""

    def __init__(self, data, image_column: str, rows: list[str], targets: list[int], mode: str = "RGB"):
        datasets = _import_datasets()
        self.splits = {
            split: part.cast_column(image_column, datasets.Image(decode=False))
            if isinstance(part.features[image_column], datasets.Image)
            else part
            for split, part in data.items()
        }
        self.image_column, self.mode = image_column, mode
        split_and_row = [row.rsplit("/", 1) for row in rows]
        self.split_names = sorted({split for split, _ in split_and_row})
        self.split_of = np.array([self.split_names.index(split) for split, _ in split_and_row])
        self.row_of = np.array([int(row) for _, row in split_and_row])
        self.targets = np.array(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def _source(self, i: int) -> str | io.BytesIO:
        split = self.splits[self.split_names[self.split_of[i]]]
        return _image_source(split[int(self.row_of[i])][self.image_column])

    def __getitem__(self, i: int):
        return open_image(self._source(i), self.mode), int(self.targets[i])

    def encoded(self, i: int) -> tuple[bytes, str]:
        """The image's own bytes and format (what src.shards stores)."""
        source = self._source(i)
        data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            return data, (image.format or "png").lower()


class HFDataModule(FileDataModule):
    def __init__(
        self,
        name: str,
        image_column: str = "image",
        label_column: str = "label",
        splits: dict | None = None,
        data_dir: str | None = None,  # unused: data.name says where the data set is
        **kwargs,
    ):
        super().__init__(data_dir=data_dir, **kwargs)
        self.save_hyperparameters(logger=False)

    def scan(self) -> Index:
        h = self.hparams
        return scan_hf(h.name, h.image_column, h.label_column, h.splits, h.check_files)

    def dataset(self, index: Index, labels: np.ndarray) -> HFRows:
        h = self.hparams
        return HFRows(load_hf(h.name), h.image_column, index.files, labels, image_mode(h.channels))
