"""scripts/bench_data_paths.py on 50 images: every input path builds through its own DataModule and feeds its
training loader, and the table names each with a rate."""

import re

from scripts.bench_data_paths import table


def test_every_input_path_reports_a_loader_rate(tmp_path):
    printed = table(tmp_path, images=50, size=16, image_size=16, workers=0, batch_size=8, batches=2)
    rows = printed.splitlines()[2:]
    assert [row.split("|")[1].split()[0] for row in rows] == [
        "imagefolder",
        "imagefolder",
        "csv",
        "hf",
        "shards",
    ]
    for row in rows:
        rate, ratio = re.fullmatch(r"\| [^|]+ \| ([\d,]+) \| ([\d.]+)x \|", row).groups()
        assert float(rate.replace(",", "")) > 0 and float(ratio) > 0
    assert (
        len(list((tmp_path / "png").glob("*/*.png"))) == 50
        and (tmp_path / "shards" / "shards.json").is_file()
    )
