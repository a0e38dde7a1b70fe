"""Checkpoints written so that a crash, a kill or a full disk never leaves a broken one in place of the last good one.

Lightning's TorchCheckpointIO saves through an fsspec transaction, whose temporary file lives in the system temp
dir (`TMPDIR`): when that is another file system than the run dir (a tmpfs `/tmp` and `outputs/` on a disk or NFS),
the final step is a copy, and a kill during it leaves a truncated or empty file (Lightning 2.6,
`lightning.fabric.utilities.cloud_io._atomic_save`). Here the temporary file lives next to its destination, is
fsynced, given the mode of any new file (umask applies) and then renamed over it in one step (`os.replace`)."""

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from src.upstream_fixes.disk_space import DiskFullError, disk_full_message, no_space


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any], needed: int | None = None) -> None:
    """`write(file)` into `path`, all or nothing: on any failure the previous file is intact and no temp file
    stays (a kill -9 can leave a hidden `.<name>.<pid>.<random>.tmp` beside it, never a broken `<name>`). A full
    disk is a DiskFullError naming it (`needed`: about how many bytes the file takes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # 0o666 minus the umask, as for any file a program creates (mkstemp would make it 0600)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as err:
        temp.unlink(missing_ok=True)
        if no_space(err):  # torch says `inline_container.cc: unexpected pos`, the cause only in its context
            kept = f"; the previous {path.name} is intact" if path.exists() else ""
            raise DiskFullError(disk_full_message(path, needed) + kept) from err
        raise
    try:  # the rename itself survives a power cut once the folder is synced (not possible on every file system)
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save(obj, path), all or nothing (atomic_write)."""
    atomic_write(path, lambda file: torch.save(obj, file), needed=tensor_bytes(obj))


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in `obj` (dicts, lists and tuples of them): about the size of its checkpoint."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(value) for value in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(value) for value in obj)
    return 0


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint of a Trainer (best, last, mid-epoch, SLURM's hpc_ckpt) goes through its CheckpointIO:
    local ones are saved by atomic_torch_save; remote URLs (s3://...) keep Lightning's fsspec path. Loading always
    passes weights_only=True, so TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 cannot make a crafted checkpoint run code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
