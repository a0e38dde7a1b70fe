"""The setup check that finds image files which cannot be trained on (`data.check_files`), and the cache that
spares a second setup from checking again what it checked before.

- `decode` (the default) decodes every file once (JPEGs in PIL's draft mode); `open` reads each file's header
  only (it misses truncated or damaged pixel data, which then fails the loader mid-epoch); `none` checks nothing.
- What a check found is cached per data folder and check in `<cache dir>/file_checks/<hash>.npz` (plain arrays,
  read without pickle), keyed by each file's path, size and modification time: a file that is new or has changed
  since is checked again; a cache file that does not match is ignored, with a warning.
- The files not in the cache are checked in `processes` processes, a chunk of files at a time."""

import hashlib
import logging
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from src.data.files import CHECKERS, unreadable_reasons
from src.errors import UserError
from src.upstream_fixes.checkpoint_io import atomic_write

log = logging.getLogger(__name__)

CHECKS = (*CHECKERS, "none")
CACHE_VERSION = 1
# files per task sent to a checking process; below PROCESS_MIN files in all, threads in this process check them
CHUNK = 512
PROCESS_MIN = 4 * CHUNK
# the files' (size, modification time in ns); MISSING for a path that cannot be stat'ed (never cached as fine)
MISSING = (-1, -1)


def cache_dir() -> Path:
    """Where vitlab keeps what it can compute again: $VITLAB_CACHE, else $XDG_CACHE_HOME/vitlab, else
    ~/.cache/vitlab."""
    if folder := os.environ.get("VITLAB_CACHE"):
        return Path(folder).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vitlab"


def cache_path(root: str | Path, check: str) -> Path:
    key = hashlib.sha256(f"{check}\0{Path(root).resolve()}".encode()).hexdigest()[:24]
    return cache_dir() / "file_checks" / f"{key}.npz"


def _check_chunk(job: tuple[str, list[str]]) -> list[str | None]:
    check, paths = job
    return [CHECKERS[check](path) for path in paths]


def _stamps(paths: Sequence[str]) -> np.ndarray:
    stamps = np.empty((len(paths), 2), dtype=np.int64)
    for i, path in enumerate(paths):
        try:
            info = os.stat(path)
            stamps[i] = info.st_size, info.st_mtime_ns
        except OSError:
            stamps[i] = MISSING
    return stamps


def _relative(path: str, prefixes: list[str]) -> str:
    for prefix in prefixes:
        if path.startswith(prefix):
            return path[len(prefix) :]
    return path


def _join(strings: Sequence[str]) -> np.ndarray:
    """Strings as one array of UTF-8 bytes, separated by NUL (which no path holds)."""
    return np.frombuffer("\0".join(strings).encode("utf-8", "surrogateescape"), dtype=np.uint8)


def _split(blob: np.ndarray, count: int) -> list[str]:
    strings = blob.tobytes().decode("utf-8", "surrogateescape").split("\0") if count else []
    if len(strings) != count:
        raise ValueError(f"{len(strings)} entries where {count} were expected")
    return strings


def _read_cache(path: Path, root: str, check: str) -> tuple[list[str], np.ndarray, list[str]] | None:
    """(relative paths, stamps, reasons: '' for a good file) of the cache file, or None (no file; one that does
    not match, with a warning)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            if (
                int(stored["version"]) != CACHE_VERSION
                or str(stored["root"]) != root
                or str(stored["check"]) != check
            ):
                raise ValueError("written for another folder, check or vitlab version")
            stamps = stored["stamps"].astype(np.int64)
            if stamps.ndim != 2 or stamps.shape[1] != 2:
                raise ValueError(f"stamps of shape {stamps.shape}")
            names = _split(stored["paths"], len(stamps))
            reasons = _split(stored["reasons"], len(stamps))
    except Exception as err:  # whatever a damaged or foreign file makes numpy or zipfile raise: check again
        log.warning("ignored the file check cache %s (%s: %s): checking every file", path, type(err).__name__,
                    str(err)[:200])  # fmt: skip
        return None
    return names, stamps, reasons


def _write_cache(path: Path, root: str, check: str, names: list[str], stamps: np.ndarray, reasons: list[str]):
    def write(file) -> None:
        np.savez(file, version=np.array(CACHE_VERSION), root=np.array(root), check=np.array(check),
                 paths=_join(names), stamps=stamps, reasons=_join(reasons))  # fmt: skip

    try:
        atomic_write(path, write)
    # a read-only home or a full disk: the next setup checks again, nothing else is lost
    except OSError as err:
        log.warning("could not write the file check cache %s (%s): the next setup checks every file again",
                    path, err)  # fmt: skip


def _check_files(paths: Sequence[str], check: str, processes: int) -> list[str | None]:
    if processes <= 1 or len(paths) < PROCESS_MIN:
        return unreadable_reasons(paths, check=check)  # threads: no process start for a few files
    jobs = ((check, list(paths[start : start + CHUNK])) for start in range(0, len(paths), CHUNK))
    # fork, as the training loader's workers start: nothing to import again; only PIL runs in the children
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return [reason for chunk in pool.imap(_check_chunk, jobs) for reason in chunk]


def unreadable_files(
    paths: Sequence[str],
    root: str | Path,
    check: str = "decode",
    processes: int | None = None,
    stamps: np.ndarray | None = None,
) -> dict[str, str]:
    """{path: reason} for the files among `paths` that are no readable image, as `check` finds them; files
    below `root` are cached by their path relative to it. `processes`: for the files not in the cache (None:
    the cores); `stamps`: each file's (size, mtime_ns) where the caller stat'ed them already."""
    if check not in CHECKS:
        raise UserError(f"data.check_files={check} is not one of {', '.join(CHECKS)}")
    if check == "none" or not paths:
        return {}
    processes = max(1, min(processes or os.cpu_count() or 1, os.cpu_count() or 1, 32))
    given, root = str(Path(root)).rstrip(os.sep) + os.sep, str(Path(root).resolve())
    # the paths below the folder as the scan named it (relative, a link) or as it is: the same names either way
    prefixes = [given, root.rstrip(os.sep) + os.sep]
    names = [_relative(path, prefixes) for path in paths]
    stamps = _stamps(paths) if stamps is None else np.asarray(stamps, dtype=np.int64)
    path = cache_path(root, check)
    cached = _read_cache(path, root, check)
    reasons: list[str] = [""] * len(paths)
    todo = np.ones(len(paths), dtype=bool)
    same_listing = False
    if cached is not None:
        cached_names, cached_stamps, cached_reasons = cached
        same_listing = cached_names == names
        if same_listing:  # the usual case: the same listing, in the same order
            todo = (cached_stamps != stamps).any(axis=1)
            reasons = cached_reasons
        else:  # files added, removed or renamed: matched by name
            where = {name: i for i, name in enumerate(cached_names)}
            found = np.array([where.get(name, -1) for name in names], dtype=np.int64)
            del where
            known = np.flatnonzero(found >= 0)
            known = known[(cached_stamps[found[known]] == stamps[known]).all(axis=1)]
            todo[known] = False
            for i in known:
                reasons[i] = cached_reasons[found[i]]
        del cached
        todo |= (stamps == MISSING).all(axis=1)
    checked = np.flatnonzero(todo)
    if len(checked):
        found = _check_files([paths[i] for i in checked], check, processes)
        for i, reason in zip(checked, found, strict=True):
            reasons[i] = reason or ""
    if len(checked) or not same_listing:
        _write_cache(path, root, check, names, stamps, reasons)
    return {p: reason for p, reason in zip(paths, reasons, strict=True) if reason}
