"""Small shared test utilities (images, ports, loopback HTTP servers)."""
from __future__ import annotations

import io
import socket
import struct
import threading
import zlib
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


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge canvas (all-zero rows compress to almost nothing)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\x00" * (width + 1) * height, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def encode(array: np.ndarray, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


class LoopbackServer:
    """Serves ``handler`` (a BaseHTTPRequestHandler class) on 127.0.0.1 in a thread, on ``port`` or a
    free one; ``with`` gives its base URL."""

    def __init__(self, handler, port: int = 0):
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class FileServer(LoopbackServer):
    """Serves a directory on 127.0.0.1 in a thread (for URL inputs), on ``port`` or a free one."""

    def __init__(self, root: Path, port: int = 0):
        super().__init__(partial(_QuietHandler, directory=str(root)), port)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass
