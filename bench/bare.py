"""Bare in-process throughput: the same work as one request, without HTTP or Ray.

Per image: decode the uploaded bytes, colorize (in batches of B), encode PNG, write the file,
exactly the calls the ingress and the colorizer stage make. One process, one loop, torch
with its default threads: the ceiling the graph is measured against.
"""
from __future__ import annotations

import time
from pathlib import Path

from pipeline.encode import encode_image
from pipeline.inputs.decode import decode_image
from storage import LocalStore, new_object_name

from .photos import Photo
from .profile import machine_busy_s

MAX_PIXELS = 50_000_000


def load_tiny_colorizer(models: Path):
    from pipeline.weights.settings import ModelRuntime, ModelSettings

    spec = ModelSettings(architecture="ddcolor", source=str(models / "tiny"))
    return spec.load_colorizer(ModelRuntime(cache_dir=models.parent / "model-cache"))


def process_batch(colorizer, store: LocalStore, uploads: list[bytes]) -> None:
    decoded = [decode_image(data, max_pixels=MAX_PIXELS) for data in uploads]
    results = colorizer.run_batch([image.rgb for image in decoded])
    for image, rgb in zip(decoded, results):
        store.put("results", new_object_name("png"), encode_image(rgb, "PNG", alpha=image.alpha), "image/png")


def bare_throughput(models: Path, storage: Path, photos: list[Photo], batch_sizes=(1, 2, 4, 8),
                    images_per_size: int = 48) -> dict[int, dict[str, float]]:
    """{batch size: {"rps", "ms_per_image", "cpu_ms_per_image", "foreign_cores"}}, one size after the other,
    in this process; foreign_cores: what other processes used of the machine meanwhile."""
    import torch

    from service.memory import keep_photo_buffers

    keep_photo_buffers()  # the allocator settings the replicas run with

    torch.set_grad_enabled(False)
    colorizer = load_tiny_colorizer(models)
    store = LocalStore(storage, retention_seconds=3600)
    results = {}
    for batch in batch_sizes:
        uploads = [photos[i % len(photos)].data for i in range(max(images_per_size // batch, 2) * batch)]
        process_batch(colorizer, store, uploads[:batch])  # warm-up: allocator, kernels for this shape
        started, cpu_started, machine_started = time.perf_counter(), time.process_time(), machine_busy_s()
        for start in range(0, len(uploads), batch):
            process_batch(colorizer, store, uploads[start:start + batch])
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        others = max(machine_busy_s() - machine_started - cpu, 0.0)
        results[batch] = {"rps": len(uploads) / seconds, "ms_per_image": 1000 * seconds / len(uploads),
                          "cpu_ms_per_image": 1000 * cpu / len(uploads), "foreign_cores": others / seconds}
    return results
