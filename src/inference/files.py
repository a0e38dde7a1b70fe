"""The files a prediction reads and writes: the images named by `inputs` (a file, a folder or a glob) and the
predictions, as a CSV file and as the table printed on screen."""

import csv
import glob
import logging
import os
from pathlib import Path

from PIL import Image
from rich.table import Table
from rich.text import Text

from src.data.files import READ_ERRORS, open_image
from src.errors import UserError

log = logging.getLogger(__name__)


def expand_inputs(inputs: str | list[str]) -> list[Path]:
    """Files named by each input: a file, every (not hidden) file below a folder, or the files a glob matches."""
    patterns = [inputs] if isinstance(inputs, str) else inputs
    if not all(patterns):
        raise UserError(
            "inputs is empty: pass an image file, a folder or a quoted glob such as inputs='photos/*.jpg'"
        )
    files = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():  # hidden files and folders (.DS_Store, .git) are not inputs
            below = (
                p
                for p in path.rglob("*")
                if not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            files += sorted(p for p in below if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            files += sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise UserError(
            f"no files found for inputs={inputs}: pass an image file, a folder or a quoted glob such as "
            "inputs='photos/*.jpg'"
        )
    return files


def load_image(path: Path) -> Image.Image | None:
    try:
        return open_image(path)  # RGB; the eval transform converts to the model's channels (preprocessing.py)
    except READ_ERRORS as err:
        log.warning("skipped %s: not a readable image (%s)", path, err)
        return None


def write_predictions(rows: list[tuple[Path, list[tuple[str, float]]]], path: Path) -> None:
    """One row per image: its classes with their probabilities, most probable first (multi-label: as many as
    are above their thresholds, the other cells empty)."""
    k = max(len(top) for _, top in rows)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *(f"{key}_{rank}" for rank in range(1, k + 1) for key in ("class", "prob"))])
        writer.writerows([str(file), *(x for pair in top for x in pair)] for file, top in rows)


def predictions_table(rows: list[tuple[Path, list[tuple[str, float]]]], title: str) -> Table:
    # Text, not markup: file and class names such as "cat [old]" show as they are ("[/x]" would end the run)
    table = Table(title=Text(title))
    table.add_column("file", overflow="fold")
    k = max(len(top) for _, top in rows)
    for rank in range(1, k + 1):
        table.add_column(f"top {rank}")
    # short, unambiguous names; absolute paths without following links (a linked file may lie anywhere)
    root = os.path.commonpath([os.path.dirname(os.path.abspath(file)) for file, _ in rows])
    for file, top in rows:
        cells = [os.path.relpath(os.path.abspath(file), root), *(f"{name} {p:.1%}" for name, p in top)]
        table.add_row(*map(Text, cells + [""] * (k - len(top))))
    return table
