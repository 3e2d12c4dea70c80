"""Small shared test utilities (images, ports, a loopback file server)."""
from __future__ import annotations

import io
import socket
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def photo(width: int = 160, height: int = 96, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like greyscale-ish RGB test image (gradients + shapes)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 120 + 60 * np.sin(x / (width / 3.0)) * np.cos(y / (height / 2.5))
    base += rng.normal(0, 3, size=base.shape)
    base[height // 4: height // 2, width // 4: width // 2] += 50
    grey = np.clip(base, 0, 255).astype(np.uint8)
    return np.dstack([grey, grey, grey])


def encode(array: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


class FileServer:
    """Serves a directory on 127.0.0.1 in a thread (for URL inputs), on ``port`` or a free one."""

    def __init__(self, root: Path, port: int = 0):
        handler = partial(_QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
