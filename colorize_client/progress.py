"""What a run shows while it works: a tqdm bar on a terminal (photos/s, ETA, credits spent),
one line per photo otherwise (logs, CI), or nothing."""
from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def credits(n: int) -> str:
    return f"{n} credit{'' if n == 1 else 's'}"


class Progress:
    """Silent; the base of the others."""

    def start(self, total: int) -> None:
        self.total, self.finished, self.started = total, 0, time.monotonic()

    def photo(self, status: str, name: str, detail: str, credits_spent: int, failed: int) -> None:
        self.finished += 1

    def note(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class Lines(Progress):
    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream

    def photo(self, status: str, name: str, detail: str, credits_spent: int, failed: int) -> None:
        super().photo(status, name, detail, credits_spent, failed)
        elapsed = time.monotonic() - self.started
        rate = self.finished / elapsed if elapsed > 0 else 0.0
        eta = f"{(self.total - self.finished) / rate:.0f} s" if rate else "?"
        joined = f" {detail}" if detail.startswith("->") else f": {detail}" if detail else ""
        self.note(f"[{self.finished}/{self.total}] {status} {name}{joined} "
                  f"({rate:.2f} photos/s, ETA {eta}, {credits(credits_spent)} spent)")

    def note(self, message: str) -> None:
        print(message, file=self.stream, flush=True)


class Bar(Progress):
    def __init__(self, stream: TextIO = sys.stderr):
        self.stream = stream

    def start(self, total: int) -> None:
        super().start(total)
        self.bar = tqdm(total=total, unit="photo", file=self.stream, dynamic_ncols=True, smoothing=0.1,
                        postfix={"credits": 0})

    def photo(self, status: str, name: str, detail: str, credits_spent: int, failed: int) -> None:
        super().photo(status, name, detail, credits_spent, failed)
        if status != "done":
            self.note(f"{status} {name}{': ' + detail if detail else ''}")
        self.bar.set_postfix({"credits": credits_spent, **({"failed": failed} if failed else {})}, refresh=False)
        self.bar.update(1)

    def note(self, message: str) -> None:
        tqdm.write(message, file=self.stream)

    def close(self) -> None:
        self.bar.close()


def choose(quiet: bool, stream: TextIO = sys.stderr) -> Progress:
    if quiet:
        return Progress()
    return Bar(stream) if stream.isatty() else Lines(stream)
