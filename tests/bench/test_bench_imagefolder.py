"""scripts/bench_imagefolder.py on 200 files, one of them corrupt: its table row counts the files it scanned, and
the setup that it times keeps the readable ones."""

import pytest

from scripts.bench_imagefolder import scan_row, write_files
from src.data.imagefolder import ImageFolderDataModule


@pytest.mark.parametrize("check", ["decode", "open"])
def test_the_scan_row_counts_the_files_and_the_setup_keeps_the_readable_ones(tmp_path, check):
    write_files(tmp_path, 200, 16)
    (tmp_path / "class_0" / "000000.jpg").write_bytes(b"not a jpeg")
    dm = ImageFolderDataModule(
        data_dir=str(tmp_path), num_classes=10, image_size=16, mean=[0.5] * 3, std=[0.25] * 3, batch_size=8,
        num_workers=0, val_size=0.1, test_size=0.1, check_files=check,
    )  # fmt: skip
    cells = [cell.strip() for cell in scan_row(dm, 1, check).strip("|").split("|")]
    assert cells[:2] == ["200", check]
    assert sum(len(getattr(dm, f"data_{split}")) for split in ("train", "val", "test")) == 199
    assert all(float(cell.replace(",", "")) >= 0 for cell in cells[2:])
