"""Image files on disk: reading one as RGB or grey (shared by the folder/CSV data sets and src.predict), and the one
scan at setup that finds what cannot be read, so that no epoch meets a bad file."""

import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps

log = logging.getLogger(__name__)

# what PIL reads and torchvision's ImageFolder accepts (lower case; matched case-insensitively)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# what opening or decoding a bad file raises (UnidentifiedImageError and "image file is truncated" are OSErrors)
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_image(path: str | Path | BinaryIO, mode: str = "RGB") -> Image.Image:
    """The image at `path`, decoded, upright and in `mode` ("RGB", or "L": grey), whatever its own (grey, RGBA,
    palette, 16-bit). Raises one of READ_ERRORS for a file that is no readable image."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)  # photos are stored sideways with an EXIF rotation
        if image.mode.startswith("I"):  # 16-bit greys: to 8 bits, not clipped at 255 by convert()
            image = image.convert("I").point(lambda value: value / 257).convert("L")
        return image.convert(mode)  # convert() decodes the pixels: truncated files fail here, not later


def image_mode(channels: int) -> str:
    """The PIL mode images are read in for a model of `channels` input channels (1: grey, 3: RGB)."""
    return "L" if channels == 1 else "RGB"


def _check(path: str | BinaryIO) -> str | None:
    """Why `path` (a file name, or the bytes of a file) cannot be trained on, or None. Decodes the whole file (a truncated one fails only there);
    JPEGs at 1/8 scale (PIL's draft mode: the same bytes are read, an eighth of the pixels computed)."""
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))
            image.load()
    except READ_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def _check_header(path: str | BinaryIO) -> str | None:
    """Why `path` is no image that PIL identifies from its header, or None (data.check_files=open)."""
    try:
        with Image.open(path):
            pass
    except READ_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


# data.check_files: how each file is checked at setup (none: not at all)
CHECKERS = {"decode": _check, "open": _check_header}


def unreadable_reasons(
    sources: Sequence[str | BinaryIO], threads: int | None = None, check: str = "decode"
) -> list[str | None]:
    """For each file (a name, or its bytes), why it is no readable image, or None, as data.check_files=`check`
    finds it. Threads: Pillow decodes without the GIL."""
    if check == "none":
        return [None] * len(sources)
    threads = threads or min(32, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(CHECKERS[check], sources, chunksize=64))


def warn_skipped(skipped: dict[str, str], total: int, where: str, shown: int = 5) -> None:
    """One warning for all the files a scan left out: how many of each kind, and the first few by name."""
    if not skipped:
        return
    kinds = Counter(reason.split(":")[0] for reason in skipped.values())
    named = "; ".join(f"{path} ({reason[:80]})" for path, reason in list(skipped.items())[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    counts = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
    log.warning(
        "skipped %d of the %d files in %s (%s): %s%s", len(skipped), total, where, counts, named, more
    )
