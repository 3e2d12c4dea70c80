"""The simple alternative the graph is compared with: one FastAPI app in one uvicorn worker.

    python -m bench.peer_fastapi --models DIR --storage DIR --port 8100 [--max-seconds 900]

What the seed-003 service does per request, written the way a typical user would: a sync
endpoint (FastAPI runs it in its thread pool) that parses the multipart form, decodes,
colorizes one image with the same pipeline code and weights, encodes PNG, writes the file
and returns {"outputUrl"}. No batching, no queue limit. Loopback only; it exits by itself
after --max-seconds.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from fastapi import FastAPI, File, Form, HTTPException, UploadFile

from pipeline.errors import InvalidImageError
from pipeline.encode import encode_image
from pipeline.inputs.decode import decode_image
from storage import LocalStore, new_object_name

from .bare import MAX_PIXELS, load_tiny_colorizer


def make_app(models: Path, storage: Path, base_url: str) -> FastAPI:
    import torch

    torch.set_grad_enabled(False)
    colorizer = load_tiny_colorizer(models)
    store = LocalStore(storage, retention_seconds=3600)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "healthy"}

    @app.post("/api/v1/colorize")
    def colorize(image: UploadFile = File(...), model: str = Form("tiny")) -> dict:
        if model != "tiny":
            raise HTTPException(400, "only model=tiny is served here")
        try:
            decoded = decode_image(image.file.read(), max_pixels=MAX_PIXELS)
        except InvalidImageError as exc:
            raise HTTPException(400, str(exc)) from None
        rgb = colorizer.colorize(decoded.rgb)
        filename = new_object_name("png")
        store.put("results", filename, encode_image(rgb, "PNG", alpha=decoded.alpha), "image/png")
        return {"outputUrl": f"{base_url}/results/{filename}"}

    return app


class PeerProcess:
    """The peer in a subprocess on 127.0.0.1:``port``, ready (health answers) inside the ``with``."""

    def __init__(self, models: Path, storage: Path, port: int, max_seconds: float = 900):
        self.url = f"http://127.0.0.1:{port}"
        self.command = [sys.executable, "-m", "bench.peer_fastapi", "--models", str(models), "--storage", str(storage),
                        "--port", str(port), "--max-seconds", str(max_seconds)]

    def __enter__(self) -> PeerProcess:
        root = Path(__file__).resolve().parent.parent
        self.process = subprocess.Popen(self.command, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the FastAPI peer exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2, trust_env=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__()
        raise TimeoutError("the FastAPI peer did not answer /health within 120 s")

    @property
    def pid(self) -> int:
        return self.process.pid

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True, help="demo models (tools.build_demo)")
    parser.add_argument("--storage", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--max-seconds", type=float, default=900, help="exit after this long, whatever happens")
    args = parser.parse_args(argv)
    # A benchmark server must never outlive its benchmark.
    watchdog = threading.Timer(args.max_seconds, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()
    app = make_app(args.models, args.storage, f"http://127.0.0.1:{args.port}")
    uvicorn.run(app, host="127.0.0.1", port=args.port, workers=1, access_log=False, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
