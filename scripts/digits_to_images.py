"""Writes scikit-learn's digits (1 797 images, 8x8 px, 10 classes) as PNG files in class folders, and a
labels.csv listing them: a small "your own images" data set for data=imagefolder and data=csv.

    python scripts/digits_to_images.py data/digits_png    # -> data/digits_png/<0..9>/<n>.png, labels.csv
"""

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digits(out: Path) -> Path:
    """The PNGs hold the pixels data=digits trains on (0..16 grey levels scaled to 0..255, rounded)."""
    digits = load_digits()
    rows = []
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        path = Path(str(label)) / f"{i:04d}.png"
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(image * (255 / 16)).astype(np.uint8)).save(out / path)
        rows.append((path.as_posix(), int(label)))
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, help="folder to write (created; existing files are kept)")
    out = parser.parse_args().out
    if any(out.glob("*/*.png")) or (out / "labels.csv").exists():
        print(f"{out} has PNG class folders or a labels.csv already: nothing written")
        return
    write_digits(out)
    print(f"wrote 1797 PNG files in 10 class folders, and labels.csv, to {out}")


if __name__ == "__main__":
    main()
