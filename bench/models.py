"""Bare-model latency: every stage's pipeline class in-process, batch 1 vs batch N.

    python -m bench.models                       # CPU: tiny builds + full-size DDColor-T/SIGGRAPH17
    python -m bench.models --device cuda --dtype float16 --size 1024 --batches 1 8 32
    python -m bench.models --models ddcolor:ddcolor_paper_tiny ddcolor:ddcolor_paper face:GFPGANv1.4 \
        --batches 1 2 --threads 2               # the CPU profile (docs/cpu-profile.md)

``face:<config>`` is the whole face-remaster stage (MTCNN with its shipped weights, GFPGAN with random
weights, paste-back) on a real portrait (skimage's astronaut, grey, ``--size`` px square): one face.

Full-size architectures run with random weights (no weights can be downloaded here):
latency and memory are real, the colors are not. Prints one table; ratios are measured
side by side in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from pipeline.stages.colorizer import Colorizer
from pipeline.device import resolve_device, resolve_dtype
from pipeline.models import architecture_module, model_class


def photo_batch(count: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    images = []
    for _ in range(count):
        base = 128 + 80 * np.sin(x / rng.uniform(20, 60)) * np.cos(y / rng.uniform(20, 60))
        grey = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
        images.append(np.dstack([grey] * 3))
    return images


def build(architecture: str, variant: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    module = architecture_module(architecture)
    if variant == "tiny":
        model = module.build_tiny_model() if hasattr(module, "build_tiny_model") \
            else model_class(architecture)(**module.tiny_config())
    else:
        model = model_class(architecture)(**module.PUBLISHED_CONFIGS[variant])
    return model.to(device=device, dtype=dtype).eval()


def face_photos(count: int, size: int) -> list[np.ndarray]:
    from PIL import Image
    from skimage import data

    grey = Image.fromarray(data.astronaut()).convert("L").resize((size, size), Image.Resampling.BICUBIC)
    return [np.array(grey.convert("RGB")) for _ in range(count)]


def stage_for(entry: str, device: torch.device, dtype: torch.dtype):
    """A stage with ``run_batch(images)`` and the photos it runs on."""
    architecture, variant = entry.split(":")
    if architecture == "face":
        from pipeline.stages.face_detect import FaceDetector
        from pipeline.stages.face_remaster import FaceRemaster

        stage = FaceRemaster(build("gfpgan", variant, device, dtype), FaceDetector())
        photo = face_photos(1, 512)[0]
        if np.array_equal(stage.run_batch([photo])[0], photo):  # else GFPGAN never ran: no timing of it
            raise SystemExit("face bench: MTCNN found no face in the portrait")
        return stage, face_photos
    return Colorizer(build(architecture, variant, device, dtype)), photo_batch


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (all threads of this process) of ``run``.

    On a shared machine the wall time grows with everyone else's load; the CPU time much less, so
    CPU seconds / threads estimates the wall time on an idle machine with that many free cores.
    """
    run()  # warm-up: allocator, kernels, lazy init
    samples, cpu = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started, cpu_started = time.perf_counter(), time.process_time()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - started)
        cpu.append(time.process_time() - cpu_started)
    return statistics.median(samples), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--size", type=int, default=512, help="input image side (px)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--models", nargs="+", default=[
        "siggraph17:tiny", "ddcolor:tiny", "siggraph17:siggraph17", "ddcolor:ddcolor_paper_tiny"])
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bare models on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}), "
          f"{dtype}, {args.size}px inputs, torch threads {torch.get_num_threads()}")
    print(f"{'model':34} {'batch':>5} {'ms/batch':>10} {'ms/image':>9} {'img/s':>8} {'vs b1':>6} {'GPU MiB':>8} "
          f"{'CPU s/image':>11}")
    for entry in args.models:
        colorizer, photos = stage_for(entry, device, dtype)
        base_rate = None
        for batch in args.batches:
            images = photos(batch, args.size)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds, cpu_seconds = timed(lambda: colorizer.run_batch(images), device, args.repeats)
            rate = batch / seconds
            base_rate = base_rate or rate
            memory = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
            print(f"{entry:34} {batch:>5} {seconds * 1000:>10.1f} {seconds * 1000 / batch:>9.1f} "
                  f"{rate:>8.2f} {rate / base_rate:>6.2f} {memory:>8.0f} {cpu_seconds / batch:>11.2f}", flush=True)

        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
