"""The setup file check of data=imagefolder/csv (src/data/file_checks.py): its cache (a second setup checks no
file again; a changed file is checked again; a damaged cache is ignored), its processes and data.check_files."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import src.data.files as files
from src.data import file_checks
from src.data.file_checks import cache_path, unreadable_files
from src.data.imagefolder import ImageFolderDataModule
from src.errors import UserError
from tests.data.test_imagefolder import SETTINGS, write_images


def write_folder(root: Path, per_class: int = 10) -> Path:
    for c in range(3):
        write_images(root / f"class_{c}", per_class, start=100 * c)
    return root


def setup(root: Path, **settings) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(data_dir=str(root), num_classes=3, **{**SETTINGS, **settings})
    dm.setup("fit")
    return dm


def split_files(dm: ImageFolderDataModule) -> dict[str, list[str]]:
    return {split: sorted(getattr(dm, f"data_{split}").dataset.files[getattr(dm, f"data_{split}").indices])
            for split in ("train", "val", "test")}  # fmt: skip


@pytest.fixture
def count_checks(monkeypatch) -> list[str]:
    """The files the decode check opens, in this process (the checker table holds the function)."""
    opened: list[str] = []

    def counted(path):
        opened.append(str(path))
        return files._check(path)

    monkeypatch.setitem(files.CHECKERS, "decode", counted)
    return opened


def test_second_setup_checks_no_file_again(tmp_path, count_checks, monkeypatch):
    root = write_folder(tmp_path / "images")
    first = split_files(setup(root))
    assert len(count_checks) == 30
    assert cache_path(root, "decode").is_file()
    count_checks.clear()
    second = split_files(setup(root))
    assert count_checks == [] and second == first
    monkeypatch.chdir(tmp_path)  # the same folder named by a relative path, or through a link
    (tmp_path / "link").symlink_to(root)
    setup(Path("images"))
    setup(tmp_path / "link")
    assert count_checks == []


def test_file_changed_after_the_scan_is_checked_again(tmp_path, caplog, count_checks):
    root = write_folder(tmp_path / "images")
    setup(root)
    victim = root / "class_1" / "105.png"
    victim.write_bytes(victim.read_bytes()[:40])  # the same name, now truncated
    (root / "class_2" / "new.png").write_bytes(b"not an image")
    count_checks.clear()
    with caplog.at_level(logging.WARNING):
        dm = setup(root)
    assert sorted(Path(p).name for p in count_checks) == ["105.png", "new.png"]
    listed = {Path(p).name for split in split_files(dm).values() for p in split}
    assert "105.png" not in listed and "new.png" not in listed and len(listed) == 29
    assert "skipped 2 of the 31 files" in caplog.text and "105.png" in caplog.text
    count_checks.clear()  # the bad files are cached as bad: still left out, still named, not decoded again
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        setup(root)
    assert count_checks == [] and "skipped 2 of the 31 files" in caplog.text and "105.png" in caplog.text
    (root / "class_0" / "000.png").unlink()  # another listing: the rest still matched by name
    count_checks.clear()
    assert len({p for split in split_files(setup(root)).values() for p in split}) == 28 and count_checks == []


@pytest.mark.parametrize("damage", ["garbage", "foreign", "truncated"])
def test_damaged_cache_is_ignored_with_a_warning(tmp_path, caplog, count_checks, damage):
    root = write_folder(tmp_path / "images")
    first = split_files(setup(root))
    cache = cache_path(root, "decode")
    if damage == "garbage":
        cache.write_bytes(b"PK\x03\x04 not a zip at all")
    elif damage == "foreign":  # an npz of other arrays, or a pickle of objects (never loaded)
        np.savez(cache, paths=np.array([object()], dtype=object))
    else:
        cache.write_bytes(cache.read_bytes()[:100])
    count_checks.clear()
    with caplog.at_level(logging.WARNING):
        second = split_files(setup(root))
    assert "ignored the file check cache" in caplog.text
    assert len(count_checks) == 30 and second == first
    count_checks.clear()  # rewritten whole: the next setup uses it
    setup(root)
    assert count_checks == []


def test_processes_give_the_same_result(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "images", per_class=12)
    (root / "class_0" / "bad.png").write_bytes(b"no image")
    monkeypatch.setattr(file_checks, "PROCESS_MIN", 8)  # processes even for these few files
    monkeypatch.setattr(file_checks, "CHUNK", 5)
    paths = sorted(str(p) for p in root.rglob("*.png"))
    results = []
    for processes in (1, 2):
        file_checks.cache_path(root, "decode").unlink(missing_ok=True)
        results.append(unreadable_files(paths, root, "decode", processes))
        results.append(unreadable_files(paths, root, "decode", processes))  # from the cache
    assert all(result == results[0] for result in results)
    assert list(results[0]) == [str(root / "class_0" / "bad.png")]
    splits = []
    for workers in (1, 2):
        file_checks.cache_path(root, "decode").unlink(missing_ok=True)
        splits.append(split_files(setup(root, num_workers=workers)))
    assert splits[0] == splits[1]


def test_check_files_open_and_none(tmp_path, caplog):
    root = write_folder(tmp_path / "images")
    truncated = root / "class_0" / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # the header whole, half the pixels
    (root / "class_0" / "text.png").write_text("not an image")

    def listed(check: str) -> set[str]:
        return {Path(p).name for split in split_files(setup(root, check_files=check)).values() for p in split}

    decode, opened, none = listed("decode"), listed("open"), listed("none")
    assert {"truncated.jpg", "text.png"} & decode == set()
    assert "truncated.jpg" in opened and "text.png" not in opened  # what open misses: damaged pixel data
    assert {"truncated.jpg", "text.png"} <= none
    with pytest.raises(UserError, match="data.check_files=fast is not one of decode, open, none"):
        setup(root, check_files="fast")


def test_cache_lives_outside_the_data_folder(tmp_path, file_check_cache):
    root = write_folder(tmp_path / "images")
    before = sorted(root.rglob("*"))
    setup(root)
    assert sorted(root.rglob("*")) == before
    assert cache_path(root, "decode").parent == file_check_cache / "file_checks"
