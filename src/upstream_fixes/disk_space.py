"""A full disk, said in one line: which file system (device and mount point), how much is free, and how much a
save needed. torch.save on a full disk fails with `inline_container.cc: unexpected pos`, the `No space left on
device` only in the exception's context."""

import errno
import os
import shutil
from pathlib import Path


class DiskFullError(Exception):
    """A write that found no space left; the message names the file system and the space needed."""


def no_space(err: BaseException | None) -> bool:
    """Whether `err`, or what it was raised from or while handling, is a full disk (ENOSPC)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            return True
        err = err.__cause__ or err.__context__
    return False


def file_system(path: str | Path) -> str:
    """`<device> at <mount point>` of the file system that holds `path` (or its nearest existing parent)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    mount = path
    while not os.path.ismount(mount):
        mount = mount.parent
    try:
        with open("/proc/self/mounts") as mounts:
            devices = {
                fields[1]: fields[0] for fields in (line.split() for line in mounts) if len(fields) > 1
            }
    except OSError:
        devices = {}
    device = devices.get(str(mount))
    return f"{device} at {mount}" if device else str(mount)


def readable_size(size: int) -> str:
    if size >= 2**30:
        return f"{size / 2**30:.1f} GiB"
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def disk_full_message(path: str | Path, needed: int | None = None) -> str:
    """`no space left on <device> at <mount> for <path>: <free> free[, about <needed> needed]`, and the fix."""
    try:
        free = readable_size(shutil.disk_usage(Path(path).parent if not Path(path).is_dir() else path).free)
    except OSError:
        free = "unknown space"
    need = f", at least {readable_size(needed)} needed" if needed else ""
    return (
        f"no space left on {file_system(path)} for {path}: {free} free{need}. Free some space there, or pass "
        "paths.log_dir=<a folder on a disk with room>"
    )
