"""Your own images listed in a CSV file (`data=csv`): a path column, a label column (class names or integers)
and an optional split column (train/val/test; a missing split is carved off train as for class folders).
Relative paths are below `data.image_root` (default: the CSV's folder)."""

import csv
from pathlib import Path

from src.data.files import IMAGE_EXTENSIONS
from src.data.imagefolder import SPLITS, FileDataModule, Index, _expand, _identity
from src.errors import UserError


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


def manifest_classes(csv_path: str | Path, label_column: str) -> list[str]:
    """The class names of a manifest: its labels, sorted (integers numerically: 2 before 10)."""
    labels = {row[label_column].strip() for row in read_manifest(csv_path, {"label": label_column})}
    labels.discard("")
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
) -> Index:
    rows = read_manifest(csv_path, {"path": path_column, "label": label_column})
    if split_column and rows and split_column not in rows[0]:  # optional: without it, all rows are carved
        split_column = None
    names = manifest_classes(csv_path, label_column)
    # integer labels may be written 07 or 7: key them by value
    key = (lambda label: str(int(label))) if names[0].lstrip("-").isdigit() else (lambda label: label)
    label_of = {name: i for i, name in enumerate(names)}
    root = _expand(image_root) if image_root else _expand(csv_path).parent
    index = Index(class_names=names)
    listed: dict[tuple[int, int], tuple[int, int, str]] = {}  # each file on disk: (line, label, split)
    for line, row in enumerate(rows, start=2):
        label = row[label_column].strip()
        split = row[split_column].strip().lower() if split_column else ""
        if not label:
            raise UserError(f"{csv_path}, line {line}: no label in column {label_column!r}")
        if split not in ("", *SPLITS):
            raise UserError(
                f"{csv_path}, line {line}: split {row[split_column]!r} is not train, val or test "
                "(leave it empty to have the row split off train by data.val_size / data.test_size)"
            )
        label = label_of[key(label)]
        path = root / row[path_column].strip()
        index.total += 1
        index.origin[split, label] = f"{names[label]} of {csv_path}" + (f" (split {split})" if split else "")
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
    index.drop_unreadable(str(csv_path))
    return index


class CSVDataModule(FileDataModule):
    def __init__(
        self,
        csv_path: str,
        image_root: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        split_column: str | None = "split",
        data_dir: str | None = None,  # unused: csv_path and image_root say where the files are
        **kwargs,
    ):
        super().__init__(data_dir=data_dir, **kwargs)
        self.save_hyperparameters(logger=False)

    def scan(self) -> Index:
        h = self.hparams
        return scan_manifest(h.csv_path, h.image_root, h.path_column, h.label_column, h.split_column)
