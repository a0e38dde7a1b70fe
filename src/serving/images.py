"""Uploaded bytes to an RGB image, or the reason they are refused: not an image (415), more pixels than
`max_image_pixels` (413; checked from the header, before any pixel is decoded: a decompression bomb of a few
kilobytes never reaches memory)."""

from io import BytesIO

from PIL import Image

from src.data.files import READ_ERRORS, open_image


class Rejected(Exception):
    """An upload the server refuses: the HTTP status and the reason the client reads."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode(data: bytes, max_image_pixels: int, name: str = "upload") -> Image.Image:
    try:
        with Image.open(BytesIO(data)) as probe:  # the header only
            width, height = probe.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise Rejected(413, f"{name}: {err}") from None
    except READ_ERRORS as err:
        raise Rejected(415, f"{name} is not an image Pillow can read ({type(err).__name__})") from None
    if width * height > max_image_pixels:
        raise Rejected(
            413, f"{name} has {width}x{height} pixels, more than the server's limit of {max_image_pixels}"
        )
    try:
        return open_image(BytesIO(data))  # decoded, upright and RGB as src.predict reads files
    except READ_ERRORS as err:
        raise Rejected(415, f"{name} is not a readable image ({type(err).__name__}: {err})") from None
