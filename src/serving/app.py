"""The server's routes, on FastAPI and uvicorn (the `serve` extra): POST /predict, GET /health, and with the demo GET /
(the page) and POST /explain (an overlay PNG). One classifier (src/inference/classifiers.py: a checkpoint, an
ONNX file or a Hub folder, with its own preprocessing and class names), behind a DynamicBatcher."""

import asyncio
import logging
import socket
import warnings
from contextlib import asynccontextmanager
from dataclasses import dataclass

from PIL import Image

from src.errors import UserError
from src.inference.classifiers import Classifier
from src.serving.batcher import DynamicBatcher
from src.serving.images import Rejected, decode

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def import_server():
    """(fastapi, uvicorn), or one error line naming the extra that installs them."""
    try:
        import fastapi
        import python_multipart  # noqa: F401  (Starlette parses multipart uploads with it)
        import uvicorn
    except ImportError as err:
        raise UserError(
            f"{err.name} is not installed (src.serve and src.demo need FastAPI, uvicorn and python-multipart): "
            "pip install -c constraints.txt -e '.[serve]'"
        ) from None
    return fastapi, uvicorn


@dataclass(frozen=True)
class Settings:
    """conf/serve.yaml's `serve:` block, checked."""

    host: str = "127.0.0.1"
    port: int = 8000
    topk: int = 5
    max_batch_size: int = 8
    max_wait_ms: float = 5
    max_queue: int = 64
    max_upload_bytes: int = 10 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_connections: int = 128
    threads: int | None = None
    demo: bool = False
    method: str | None = None

    def __post_init__(self):
        for key in (
            "topk",
            "max_batch_size",
            "max_queue",
            "max_upload_bytes",
            "max_image_pixels",
            "max_connections",
        ):
            value = getattr(self, key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise UserError(f"serve.{key}={value} must be a whole number of at least 1")
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise UserError(f"serve.threads={self.threads} must be a whole number of at least 1, or null")
        if not (isinstance(self.max_wait_ms, int | float) and self.max_wait_ms >= 0):
            raise UserError(
                f"serve.max_wait_ms={self.max_wait_ms} must be a number of milliseconds, 0 or more"
            )
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise UserError(f"serve.port={self.port} must be a port number, 0 to 65535 (0: any free port)")


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit`: from its Content-Length before
    anything is read, else while it streams in, so an oversized upload never sits in memory whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejected(413, f"the upload has {declared} bytes, more than the server's limit of {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Rejected(413, f"the upload has more than the server's limit of {limit} bytes")
    return bytes(body)


async def _uploads(request, settings: Settings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image of a request: the files of a multipart form, or the raw body as one image."""
    from starlette.requests import Request

    body = await _read_body(request, settings.max_upload_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        if not body:
            raise Rejected(400, "no image: send the image file as the body, or as files of a multipart form")
        return [("upload", body)]

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    # Starlette's MultiPartException and HTTPException: a malformed form, or one with too many parts
    try:
        form = await Request(request.scope, replay).form(max_files=settings.max_queue + 1)  # more: 413 below
    except Exception as err:
        raise Rejected(400, f"the multipart form cannot be read: {getattr(err, 'detail', err)}") from None
    try:
        files = [
            (value.filename or key, await value.read())
            for key, value in form.multi_items()
            if hasattr(value, "read")
        ]
    finally:
        await form.close()
    if not files:
        raise Rejected(
            400, "the multipart form has no file: send images as its files (curl -F file=@image.png)"
        )
    return files


def create_app(classifier: Classifier, settings: Settings, model_name: str, explainer=None):
    """The FastAPI app: `explainer` (src/serving/explainer.py) adds the demo page and its overlays."""
    fastapi, _ = import_server()
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    batcher = DynamicBatcher(
        classifier.run, settings.max_batch_size, settings.max_wait_ms, settings.max_queue
    )
    names, thresholds = classifier.class_names, classifier.thresholds

    @asynccontextmanager
    async def lifespan(_app):
        await batcher.start()
        yield
        await batcher.stop()

    app = fastapi.FastAPI(title=f"vitlab: {model_name}", lifespan=lifespan)

    @app.exception_handler(Rejected)
    async def rejected(_request, err: Rejected):
        headers = {"Retry-After": "1"} if err.status == 503 else None
        return JSONResponse({"detail": err.reason}, status_code=err.status, headers=headers)

    def prepared(name: str, data: bytes):
        return classifier.transform(decode(data, settings.max_image_pixels, name))

    @app.post("/predict")
    async def predict(request: fastapi.Request, k: int = settings.topk):
        if k < 1:
            raise Rejected(400, f"k={k} must be at least 1")
        k = min(k, len(names))
        files = await _uploads(request, settings)
        if len(files) > settings.max_queue:
            raise Rejected(
                413, f"{len(files)} images in one request, more than serve.max_queue={settings.max_queue}"
            )
        # decoded and preprocessed in threads (Pillow and the transform release the GIL), not on the event loop
        inputs = await asyncio.gather(*(asyncio.to_thread(prepared, name, data) for name, data in files))
        if not batcher.admit(len(inputs)):
            raise Rejected(503, f"the server is busy ({batcher.pending} images queued): retry in a second")
        results = await batcher.submit(inputs)
        predictions = []
        for (name, _), (row, batch_size) in zip(files, results, strict=True):
            top = row.argsort(kind="stable")[::-1]  # most probable first, as src.predict ranks
            # multi-label: every label above its threshold, as src.predict lists them (k does not apply)
            top = top[:k] if thresholds is None else [i for i in top if row[i] > thresholds[i]]
            predictions.append({
                "file": name,
                "top": [{"label": names[i], "probability": float(row[i])} for i in top],
                "batch_size": batch_size,
            })  # fmt: skip
        return {"model": model_name, "predictions": predictions}

    @app.get("/health")
    async def health():
        stats = batcher.stats
        return {
            "status": "ok", "model": model_name, "class_names": names, "queued": batcher.pending,
            "max_queue": settings.max_queue, "max_batch_size": settings.max_batch_size, "batches": stats.batches,
            "images": stats.images, "largest_batch": stats.largest_batch, "demo": explainer is not None,
            "thresholds": thresholds,
        }  # fmt: skip

    if explainer is not None:
        from src.serving.page import PAGE

        @app.get("/", response_class=HTMLResponse)
        async def page():
            return PAGE.replace("{{model}}", model_name)

        @app.post("/explain")
        async def explain(request: fastapi.Request):
            ((name, data),) = (await _uploads(request, settings))[:1]
            image = await asyncio.to_thread(decode, data, settings.max_image_pixels, name)
            if not batcher.admit(1):
                raise Rejected(
                    503, f"the server is busy ({batcher.pending} images queued): retry in a second"
                )
            return Response(await batcher.run_alone(explainer, image), media_type="image/png")

    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: a free port the system picks), bound before the server starts, so the
    URL printed is the one that answers."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({err.strerror}): pick another serve.port (0: any free one)"
        ) from None
    sock.listen(2048)
    return sock


def server(app, settings: Settings):
    """A uvicorn server of `app` (run it with .run(sockets=[bind(...)])); it logs through the command's logging."""
    _, uvicorn = import_server()
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=30,
    )
    return uvicorn.Server(config)


def serve_forever(app, settings: Settings, model_name: str) -> None:
    """Serves until Ctrl-C, on the address printed."""
    # beyond Image.MAX_IMAGE_PIXELS Pillow only warns; decode() refuses what exceeds serve.max_image_pixels, and this
    # turns Pillow's own warning into an error too (a 413) where the limit is set above Pillow's
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    sock = bind(settings.host, settings.port)
    host, port = sock.getsockname()[:2]
    if settings.host not in LOOPBACK:
        log.warning(
            "serve.host=%s: the server is reachable from other machines, with no authentication", host
        )
    routes = "POST /predict, GET /health" + (", GET / (the demo page)" if settings.demo else "")
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    log.info("serving %s on %s (%s); Ctrl-C stops", model_name, url, routes)
    server(app, settings).run(sockets=[sock])
