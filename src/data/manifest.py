"""Your own images listed in a CSV file (`data=csv`): a path column, a label column (class names or integers)
and an optional split column (train/val/test; a missing split is carved off train as for class folders).
Relative paths are below `data.image_root` (default: the CSV's folder).

With `data.label_separator` set (say `;`), a row's label cell lists any number of labels (`dog;car`): the data are
multi-label (module.task=multilabel), each image's target a 0/1 row over the labels. Val and test are then carved
off at random (seeded, not stratified); a label of a given val or test row that no train (or unassigned) row has
is an error, one that the carved train split lacks a warning."""

import csv
import logging
from pathlib import Path

import numpy as np

from src.data.files import IMAGE_EXTENSIONS
from src.data.imagefolder import SPLITS, FileDataModule, Index, _expand, _identity, _split_count
from src.errors import UserError

log = logging.getLogger(__name__)


def split_labels(cell: str, separator: str | None) -> list[str]:
    """The labels of one label cell: the cell itself, or (with a separator) its non-empty parts."""
    if not separator:
        return [cell.strip()] if cell.strip() else []
    return [part.strip() for part in cell.split(separator) if part.strip()]


def read_manifest(csv_path: str | Path, columns: dict[str, str | None]) -> list[dict[str, str]]:
    """The rows of the CSV; the columns named in `columns` ({'path': ..., 'label': ...}) must exist."""
    if csv_path is None:
        raise UserError("data.csv_path is not set: pass data.csv_path=<your labels.csv>")
    csv_path = _expand(csv_path)
    if not csv_path.is_file():
        raise UserError(f"data.csv_path={csv_path} is not a file: point it at a CSV with a header row")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for key, column in columns.items():
            if column not in header:
                raise UserError(
                    f"{csv_path} has no column {column!r} (its columns: {', '.join(header) or 'none'}): "
                    f"name the {key} column with data.{key}_column=<name>"
                )
        rows = []
        for row in reader:
            if None in row or None in row.values():  # more fields than the header (restkey), or fewer
                fields = sum(v is not None for k, v in row.items() if k is not None) + len(
                    row.get(None) or []
                )
                raise UserError(
                    f"{csv_path}, line {reader.line_num}: {fields} fields where the header has {len(header)}: "
                    'quote a value that holds a comma ("a,b.png"), or give every column a value'
                )
            rows.append(row)
        return rows


def manifest_classes(csv_path: str | Path, label_column: str, separator: str | None = None) -> list[str]:
    """The class names of a manifest: its labels, sorted (integers numerically: 2 before 10)."""
    rows = read_manifest(csv_path, {"label": label_column})
    labels = {label for row in rows for label in split_labels(row[label_column], separator)}
    if not labels:
        raise UserError(f"{csv_path} lists no labels in its column {label_column!r}")
    if all(label.lstrip("-").isdigit() for label in labels):
        return [str(n) for n in sorted(int(label) for label in labels)]
    return sorted(labels)


def scan_manifest(
    csv_path: str | Path,
    image_root: str | Path | None,
    path_column: str,
    label_column: str,
    split_column: str | None,
    separator: str | None = None,
    check: str = "decode",
    processes: int | None = None,
) -> Index:
    """The files of the manifest; each label a class index, or with `separator`, a sorted tuple of them."""
    rows = read_manifest(csv_path, {"path": path_column, "label": label_column})
    if split_column and rows and split_column not in rows[0]:  # optional: without it, all rows are carved
        split_column = None
    names = manifest_classes(csv_path, label_column, separator)
    # integer labels may be written 07 or 7: key them by value
    key = (lambda label: str(int(label))) if names[0].lstrip("-").isdigit() else (lambda label: label)
    label_of = {name: i for i, name in enumerate(names)}
    root = _expand(image_root) if image_root else _expand(csv_path).parent
    index = Index(class_names=names)
    listed: dict[tuple[int, int], tuple[int, int, str]] = {}  # each file on disk: (line, label, split)
    for line, row in enumerate(rows, start=2):
        labels = split_labels(row[label_column], separator)
        split = row[split_column].strip().lower() if split_column else ""
        if not labels:
            raise UserError(f"{csv_path}, line {line}: no label in column {label_column!r}")
        if split not in ("", *SPLITS):
            raise UserError(
                f"{csv_path}, line {line}: split {row[split_column]!r} is not train, val or test "
                "(leave it empty to have the row split off train by data.val_size / data.test_size)"
            )
        indices = tuple(sorted({label_of[key(label)] for label in labels}))
        label = indices if separator else indices[0]
        path = root / row[path_column].strip()
        index.total += 1
        if not separator:
            index.origin[split, label] = f"{names[label]} of {csv_path}" + (
                f" (split {split})" if split else ""
            )
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            index.skipped[str(path)] = f"not an image: {path.suffix or 'no'} extension"
        elif not path.is_file():
            index.skipped[str(path)] = "missing file"
        elif (first := listed.setdefault(_identity(path), (line, label, split))) != (line, label, split):
            if first[1:] != (label, split):  # one file in two classes, or in two splits
                raise UserError(
                    f"{csv_path}, lines {first[0]} and {line} list the same file {path} with another label or "
                    "split: keep one of the two rows"
                )
            index.skipped[str(path)] = f"listed again: line {line} repeats line {first[0]}"
        else:
            index.add(str(path), label, split)
    index.drop_unreadable(str(csv_path), root, check, processes)
    return index


def assign_multilabel_splits(
    index: Index, val_size: float, test_size: float, seed: int, where: str
) -> dict[str, np.ndarray]:
    """{split: indices into index.files} of multi-label files: the splits given, and val/test carved at random
    (seeded) off the unassigned files, or else off train. A label of a given val/test file that no train or
    unassigned file has is an error (the model could never learn it); a label train ends up without, a warning."""
    if not index.files:
        raise UserError(f"no readable images among the {index.total} files listed in {where}")
    splits = np.array(index.splits)
    given = {s: np.flatnonzero(splits == s) for s in SPLITS if (splits == s).any()}
    pool_split = "" if "" in index.splits else "train"
    pool = np.flatnonzero(splits == "") if pool_split == "" else given.pop("train", np.array([], int))
    learnable = {label for i in [*pool, *given.get("train", [])] for label in index.labels[i]}
    for split in ("val", "test"):
        for i in given.get(split, []):
            if unknown := [index.class_names[label] for label in index.labels[i] if label not in learnable]:
                raise UserError(
                    f"{index.files[i]} ({split} split of {where}) has the label(s) {', '.join(unknown)}, which no "
                    "training image has: add training images with them, or drop the row"
                )
    rng = np.random.default_rng(seed)
    pool = rng.permutation(pool)
    for split, size in (("test", test_size), ("val", val_size)):
        if split not in given:
            count = _split_count(size, len(pool), f"data.{split}_size")
            if not 0 < count < len(pool):
                raise UserError(
                    f"data.{split}_size={size} leaves no images to train on ({len(pool)} to split): make it smaller"
                )
            given[split], pool = pool[:count], pool[count:]
    given["train"] = np.concatenate([given.get("train", np.array([], int)), pool]).astype(int)
    trained = {label for i in given["train"] for label in index.labels[i]}
    if untrained := [name for label, name in enumerate(index.class_names) if label not in trained]:
        log.warning(
            "the label(s) %s have no image in the train split of %s: the model cannot learn them",
            ", ".join(untrained),
            where,
        )
    return {split: np.sort(given[split]) for split in SPLITS}


class CSVDataModule(FileDataModule):
    def __init__(
        self,
        csv_path: str,
        image_root: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split_column: str | None = "split",
        label_separator: str | None = None,
        data_dir: str | None = None,  # unused: csv_path and image_root say where the files are
        **kwargs,
    ):
        super().__init__(data_dir=data_dir, **kwargs)
        self.save_hyperparameters(logger=False)

    @property
    def task(self) -> str:
        return "multilabel" if self.hparams.label_separator else "multiclass"

    def scan(self) -> Index:
        h = self.hparams
        return scan_manifest(
            h.csv_path, h.image_root, h.path_column, h.label_column, h.split_column, h.label_separator,
            h.check_files, self.check_processes(),
        )  # fmt: skip

    def assign_splits(self, index: Index) -> dict[str, np.ndarray]:
        if self.task == "multiclass":
            return super().assign_splits(index)
        h = self.hparams
        return assign_multilabel_splits(index, h.val_size, h.test_size, h.seed, str(h.csv_path))

    def label_array(self, index: Index) -> np.ndarray:
        if self.task == "multiclass":
            return super().label_array(index)
        targets = np.zeros((len(index.labels), len(index.class_names)), dtype=np.float32)
        for row, labels in enumerate(index.labels):
            targets[row, list(labels)] = 1.0
        return targets
