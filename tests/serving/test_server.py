"""src.serve's server on loopback, real uvicorn in a thread: concurrent clients get src.predict's answers in shared
forward passes, bad uploads get their 4xx and the server goes on, a full queue answers 503."""

import io
import json
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.message import Message
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.errors import UserError
from src.inference.classifiers import load_classifier
from src.predict import predict
from src.serving.app import Settings, bind, create_app, import_server, server
from src.serving.explainer import Explainer
from tests.conftest import compose_config, run_cli


@contextmanager
def running(ckpt: Path, explainer=None, **settings) -> Iterator[str]:
    """The server of `ckpt` with `settings` on a free loopback port, in a thread, until the block ends: its URL."""
    config = Settings(port=0, **settings)
    app = create_app(load_classifier(ckpt, "cpu"), config, ckpt.name, explainer)
    sock = bind("127.0.0.1", 0)
    uvicorn_server = server(app, config)
    thread = threading.Thread(target=uvicorn_server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uvicorn_server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        uvicorn_server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def request(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, Message]:
    """(status, JSON answer, headers) of a GET (no body) or POST."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=body, headers=headers or {}), timeout=60
        ) as r:
            return r.status, json.load(r), r.headers
    except urllib.error.HTTPError as err:
        return err.code, json.load(err), err.headers


def multipart(files: dict[str, bytes]) -> tuple[bytes, dict]:
    """A multipart/form-data body with one `file` part per entry, as browsers and `curl -F file=@x` send."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for name, data in files.items()
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


def bomb_png(side: int = 20000) -> bytes:
    """A one-bit PNG of side x side black pixels (400 M pixels at 20000): some 50 kB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])  # bit depth 1, greyscale
    compressor = zlib.compressobj(9)
    row = bytes(1 + side // 8)  # filter byte 0, then the row's bits
    pixels = b"".join(compressor.compress(row * 1000) for _ in range(side // 1000)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Eight digits-sized PNGs of different content and sizes (the server resizes them as src.predict does)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        side = 8 + 4 * (i % 3)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"image_{i}.png")
    return folder


def test_concurrent_clients_get_the_answers_of_src_predict_in_shared_batches(
    tiny_checkpoint, images, tmp_path
):
    cfg = compose_config("predict", [f"ckpt_path={tiny_checkpoint}", f"inputs={images}", "topk=3"], tmp_path)
    expected = {file.name: top for file, top in predict(cfg)}
    files = sorted(images.iterdir())

    with running(tiny_checkpoint, max_batch_size=8, max_wait_ms=50, max_queue=64) as url:

        def post(i: int) -> tuple[str, dict]:
            file = files[i % len(files)]
            status, answer, _ = request(f"{url}/predict?k=3", file.read_bytes())
            assert status == 200, answer
            return file.name, answer

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(64)))
        _, health, _ = request(f"{url}/health")
        body, headers = multipart({file.name: file.read_bytes() for file in files[:3]})
        status, batch_answer, _ = request(f"{url}/predict?k=3", body, headers)

    for name, answer in answers:
        (prediction,) = answer["predictions"]
        assert [top["label"] for top in prediction["top"]] == [label for label, _ in expected[name]]
        got = [top["probability"] for top in prediction["top"]]
        assert got == pytest.approx([p for _, p in expected[name]], abs=1e-5)
    sizes = [answer["predictions"][0]["batch_size"] for _, answer in answers]
    # 8 clients at once share forward passes: fewer passes than requests, the largest with several images
    assert health["images"] == 64 and health["batches"] < 64 and health["largest_batch"] == max(sizes) > 1
    assert health["class_names"] == [str(i) for i in range(10)] and health["queued"] == 0
    # one request with three files: three answers in order, in one batch
    assert status == 200
    assert [p["file"] for p in batch_answer["predictions"]] == [file.name for file in files[:3]]
    for prediction, file in zip(batch_answer["predictions"], files[:3], strict=True):
        assert prediction["top"][0]["label"] == expected[file.name][0][0]
    assert batch_answer["predictions"][0]["batch_size"] == 3


def test_bad_uploads_get_their_4xx_and_the_server_keeps_serving(tiny_checkpoint, images):
    good = (images / "image_0.png").read_bytes()
    with running(tiny_checkpoint, max_upload_bytes=65536, max_image_pixels=64 * 64) as url:
        status, answer, _ = request(f"{url}/predict", b"just some text, no image")
        assert status == 415 and "not an image" in answer["detail"]
        status, answer, _ = request(
            f"{url}/predict", bytes(100_000)
        )  # a declared Content-Length beyond the limit
        assert status == 413 and "65536" in answer["detail"]
        # the same without Content-Length (chunked): refused while it streams in
        status, answer, _ = request(
            f"{url}/predict", iter([bytes(10_000)] * 10), {"Transfer-Encoding": "chunked"}
        )
        assert status == 413 and "65536" in answer["detail"]
        status, answer, _ = request(f"{url}/predict", bomb_png(5000))  # 25 M pixels in 12 kB
        assert status == 413 and "5000x5000 pixels" in answer["detail"]
        big = Image.new("RGB", (100, 100))  # not a bomb, but beyond serve.max_image_pixels
        big.save(buffer := io.BytesIO(), format="PNG")
        status, answer, _ = request(f"{url}/predict", buffer.getvalue())
        assert status == 413 and "100x100" in answer["detail"]
        status, answer, _ = request(f"{url}/predict", b"")
        assert status == 400
        status, answer, _ = request(
            f"{url}/predict", b"no parts", {"Content-Type": "multipart/form-data; boundary=x"}
        )
        assert status == 400 and "multipart form" in answer["detail"]
        status, answer, _ = request(f"{url}/predict?k=0", good)
        assert status == 400
        status, answer, _ = request(f"{url}/predict?k=50", good)  # k beyond the classes: every class
        assert status == 200 and len(answer["predictions"][0]["top"]) == 10
        _, health, _ = request(f"{url}/health")
        assert health["images"] == 1 and health["queued"] == 0


def test_a_bomb_beyond_pillows_own_limit_is_refused_before_decoding(tiny_checkpoint):
    # the default serve.max_image_pixels; 400 M pixels is beyond Pillow's MAX_IMAGE_PIXELS too (its error, not a warning)
    with running(tiny_checkpoint) as url:
        status, answer, _ = request(f"{url}/predict", bomb_png())
        assert status == 413 and "decompression bomb" in answer["detail"]
        assert request(f"{url}/health")[0] == 200


def test_a_full_queue_answers_503_with_retry_after(tiny_checkpoint, images):
    good = (images / "image_0.png").read_bytes()
    # two queue places; the worker waits up to 1.5 s for a batch of 8 to fill, so two requests keep them taken
    with running(tiny_checkpoint, max_queue=2, max_batch_size=8, max_wait_ms=1500) as url:
        with ThreadPoolExecutor(2) as pool:
            waiting = [pool.submit(request, f"{url}/predict", good) for _ in range(2)]
            deadline = time.monotonic() + 10
            while request(f"{url}/health")[1]["queued"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            status, answer, headers = request(f"{url}/predict", good)
            assert status == 503 and headers["Retry-After"] == "1" and "busy" in answer["detail"]
            body, multipart_headers = multipart({f"{i}.png": good for i in range(3)})
            assert (
                request(f"{url}/predict", body, multipart_headers)[0] == 413
            )  # more images than the queue holds
            assert [future.result()[0] for future in waiting] == [200, 200]
        assert request(f"{url}/predict", good)[0] == 200  # room again


def test_without_fastapi_one_error_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi raises ImportError
    with pytest.raises(UserError, match=r"fastapi is not installed.*pip install .*'\.\[serve\]'"):
        import_server()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "error: ckpt_path is missing"),
        (["ckpt_path=missing.ckpt", "serve.max_queue=0"], "error: serve.max_queue=0 must be a whole number"),
        (["ckpt_path=missing.ckpt"], "error: ckpt_path=missing.ckpt does not exist"),
    ],
)
def test_option_errors_are_one_line(overrides, message, tmp_path):
    result = run_cli("src.serve", *overrides, f"paths.log_dir={tmp_path}")
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]


def test_the_demo_page_and_its_overlays(tiny_checkpoint, images):
    with running(tiny_checkpoint, Explainer(tiny_checkpoint, "cpu", None)) as url:
        with urllib.request.urlopen(url, timeout=60) as response:
            page = response.read().decode()
        with urllib.request.urlopen(
            urllib.request.Request(f"{url}/explain", (images / "image_4.png").read_bytes()), timeout=60
        ) as response:
            assert response.headers["Content-Type"] == "image/png"
            overlay = Image.open(io.BytesIO(response.read()))
        status, answer, _ = request(f"{url}/explain", b"no image")
    assert 'type="file"' in page and tiny_checkpoint.name in page
    assert "http" not in page  # nothing fetched from elsewhere: works offline
    assert (
        overlay.size == (16, 16) and len(set(overlay.convert("RGB").getdata())) > 10
    )  # the heat map's colours
    assert status == 415


def test_the_demo_needs_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="pass the .ckpt"):
        Explainer(tmp_path / "model.onnx", "cpu", None)
