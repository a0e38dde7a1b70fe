"""src.serve or src.demo in a process of its own, on a free loopback port, for the benchmark and the browser test:
started as a user starts it, its URL read from the line it logs."""

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def server_process(command: str, *overrides: str, timeout: float = 300) -> Iterator[str]:
    """`python -m <command> serve.port=0 <overrides>` until the block ends; yields the URL it serves on."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", command, "serve.port=0", *overrides],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": pythonpath},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + timeout
            url = None
            while url is None:
                time.sleep(0.2)
                log.seek(0)
                found = re.search(r" on (http://\S+) \(", log.read())
                url = found and found.group(1)
                if url is None and (process.poll() is not None or time.monotonic() > deadline):
                    log.seek(0)
                    raise RuntimeError(f"{command} did not start within {timeout} s:\n{log.read()[-3000:]}")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)
