"""Requests per second and latency of src.serve under concurrent clients, for each server batch size:

    python -m src.bench.serve --ckpt <run>/checkpoints/last.ckpt --requests 512 --clients 8 --batch-sizes 1 8 --threads 1 0

Per torch thread count and batch size, a server (`python -m src.serve serve.threads=<t> serve.max_batch_size=<b>`, its
own process on a free loopback port)
answers `--requests` POST /predict requests of one image each from `--clients` threads, each with a keep-alive
connection, after `--warmup` requests; printed as a Markdown table: requests/s, p50 and p99 latency, and the mean
number of images per forward pass (from GET /health). Clients and server share the machine's cores."""

import argparse
import http.client
import itertools
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from src.bench.report import load_average, markdown
from src.serving.process import server_process


def _client(url: str, body: bytes, count: int) -> list[float]:
    """Seconds of each of `count` requests, one after another on one connection."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    latencies = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            connection.request("POST", "/predict", body, {"Content-Type": "application/octet-stream"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"error: POST /predict answered {response.status}")
            latencies.append(time.perf_counter() - start)
    finally:
        connection.close()
    return latencies


def _health(url: str) -> dict:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    connection.request("GET", "/health")
    return json.loads(connection.getresponse().read())


def measure(url: str, body: bytes, requests: int, clients: int, warmup: int) -> dict:
    """Requests/s, p50/p99 latency (ms) and images per forward pass of `requests` requests from `clients` threads."""
    _client(url, body, warmup)
    before = _health(url)
    share = [requests // clients + (i < requests % clients) for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        start = time.perf_counter()
        latencies = [s for part in pool.map(lambda n: _client(url, body, n), share) for s in part]
        wall = time.perf_counter() - start
    after = _health(url)
    milliseconds = np.array(latencies) * 1000
    return {
        "requests/s": requests / wall,
        "p50 ms": float(np.percentile(milliseconds, 50)),
        "p99 ms": float(np.percentile(milliseconds, 99)),
        "images per forward": (after["images"] - before["images"])
        / max(1, after["batches"] - before["batches"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt", required=True, type=Path, help="a checkpoint, an exported model.onnx or a Hub folder"
    )
    parser.add_argument(
        "--image", type=Path, help="the image every request sends (default: a 32x32 noise PNG)"
    )
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-wait-ms", type=float, default=5)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[0], help="serve.threads of each row (0: null)"
    )
    parser.add_argument("--log-dir", default="outputs", help="where the servers' run dirs go (paths.log_dir)")
    args = parser.parse_args(argv)
    if not args.ckpt.exists():
        raise SystemExit(f"error: --ckpt {args.ckpt} does not exist")
    if args.image is None:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        noise = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(noise).save(buffer, format="PNG")
        body = buffer.getvalue()
    else:
        body = args.image.read_bytes()

    print(f"load average (1, 5, 15 min) at the start: {load_average()}")
    rows = []
    for threads, size in itertools.product(args.threads, args.batch_sizes):
        overrides = [f"ckpt_path={args.ckpt}", f"serve.threads={threads or 'null'}", f"serve.max_batch_size={size}",
                     f"serve.max_wait_ms={args.max_wait_ms}", f"serve.max_queue={max(64, args.clients)}",
                     f"paths.log_dir={args.log_dir}"]  # fmt: skip
        with server_process("src.serve", *overrides) as url:
            result = measure(url, body, args.requests, args.clients, args.warmup)
        rows.append(
            {
                "serve.threads": threads or "null",
                "serve.max_batch_size": size,
                "clients": args.clients,
                **result,
            }
        )
    print(markdown(rows))
    print(f"load average (1, 5, 15 min) at the end: {load_average()}")


if __name__ == "__main__":
    main()
