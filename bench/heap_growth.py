"""What grew in a process's Python heap between its first and last snapshots
(``service/heap_watch.py``; run the service with ``COLORIZE_HEAP_SNAPSHOTS=FOLDER``).

    python -m bench.heap_growth FOLDER [--top 15] [--skip 1]

``--skip N`` compares from the N-th snapshot instead of the first (the first minutes fill caches)."""
from __future__ import annotations

import argparse
import re
import tracemalloc
from collections import defaultdict
from pathlib import Path

SNAPSHOT = re.compile(r"(?P<process>.+-\d+)-(?P<index>\d{4})\.snap$")


def snapshots_by_process(folder: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(folder.iterdir()):
        match = SNAPSHOT.match(path.name)
        if match:
            found[match["process"]].append(path)
    return dict(found)


def growth(first: Path, last: Path, top: int) -> tuple[int, int, list[str]]:
    """(total bytes at first, at last, the largest differences by allocating line with their callers)."""
    before, after = tracemalloc.Snapshot.load(str(first)), tracemalloc.Snapshot.load(str(last))
    total = [sum(stat.size for stat in snap.statistics("filename")) for snap in (before, after)]
    lines = []
    for diff in after.compare_to(before, "traceback")[:top]:
        if diff.size_diff == 0:
            continue
        newest_first = list(diff.traceback)[::-1][:4]  # tracemalloc keeps the oldest frame first
        frames = " <- ".join(f"{Path(frame.filename).name}:{frame.lineno}" for frame in newest_first)
        lines.append(f"{diff.size_diff / 1024:+10.1f} KiB {diff.count_diff:+7d} blocks  {frames}")
    return total[0], total[1], lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--skip", type=int, default=1)
    args = parser.parse_args()
    for process, paths in snapshots_by_process(args.folder).items():
        if len(paths) <= args.skip:
            print(f"{process}: {len(paths)} snapshot(s), not enough to compare")
            continue
        first, last = paths[args.skip], paths[-1]
        start, end, lines = growth(first, last, args.top)
        print(f"{process}: Python heap {start / 2**20:.1f} -> {end / 2**20:.1f} MiB "
              f"({first.name} -> {last.name})")
        for line in lines:
            print("  " + line)


if __name__ == "__main__":
    main()
