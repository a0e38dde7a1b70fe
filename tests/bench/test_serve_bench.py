"""src.bench.serve as docs/serving.md runs it, shortened: a table row per thread count and batch size, from servers
it starts and stops itself."""

import re

import pytest

from tests.conftest import run_cli


@pytest.mark.slow  # starts two servers in processes of their own
def test_the_serving_benchmark_prints_a_row_per_batch_size(tiny_checkpoint, tmp_path):
    result = run_cli(
        "src.bench.serve", "--ckpt", str(tiny_checkpoint), "--requests", "24", "--clients", "4", "--warmup", "2",
        "--batch-sizes", "1", "4", "--threads", "1", "--log-dir", str(tmp_path), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(
        r"^\| 1 \| (\d) \| 4 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", result.stdout, re.M
    )
    assert [row[0] for row in rows] == ["1", "4"], result.stdout
    for _, per_second, p50, p99, per_forward in rows:
        assert float(per_second) > 0 and 0 < float(p50) <= float(p99) and float(per_forward) >= 1
    assert float(rows[0][4]) == 1.0  # serve.max_batch_size=1: one image per forward pass
