"""colorize: colorize every photo in files and folders through the key API.

    colorize shoebox/ --out colorized/ --model tiny --concurrency 4

Walks folders recursively and writes PATH/a/b.jpg as OUT/a/b.colorized.png. A re-run skips
photos whose result is already complete, and re-sends the rest under the same Idempotency-Keys,
so a photo the service already finished is replayed, not charged again.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from .batch import ALREADY_DONE, DONE, SKIPPED, Batch, Outcome, Pacer
from .client import DEFAULT_TIMEOUT_S, AsyncClient
from .errors import AuthError, ColorizeError, NotReady
from .files import find_photos, is_complete_png
from .progress import choose, credits
from .protocol import MODELS, Account, Options
from .report import summary_text, write_manifest
from .retry import RetryPolicy

API_ENV, KEY_ENV = "COLORIZE_API", "COLORIZE_API_KEY"
DEFAULT_API = "http://127.0.0.1:8000"
MANIFEST_NAME = "colorize-manifest.json"
# Exit statuses: all done; some photos failed or were not sent; bad usage; nothing was started
# (service unreachable, key refused, balance too low); stopped by Ctrl-C (128 + SIGINT).
OK, SOME_FAILED, USAGE, NOT_STARTED, INTERRUPTED = 0, 1, 2, 3, 130

EPILOG = f"""\
exit status: {OK} all photos done or skipped; {SOME_FAILED} some failed or were not sent; {USAGE} bad usage;
{NOT_STARTED} nothing started (service unreachable, key refused, or the balance cannot pay for the
run without --partial); {INTERRUPTED} stopped by Ctrl-C.

Ctrl-C once: nothing new is sent, photos in flight finish and are saved. Twice: those are abandoned
too. Either way the summary and the manifest are written; run the same command again to resume.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colorize", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="photos, or folders to walk recursively")
    p.add_argument("--out", "-o", type=Path, required=True, metavar="DIR",
                   help="where results go, keeping each photo's place under its folder: OUT/a/b.colorized.png")
    job = p.add_argument_group("what to do with each photo (all change the price; see --dry-run)")
    job.add_argument("--model", choices=MODELS, default="large",
                     help="large: text-guided, better quality (default); tiny: much faster")
    job.add_argument("--clean-scratches", action="store_true", help="repair scratches and dust first (+1 credit)")
    job.add_argument("--face-remaster", action="store_true", help="restore faces last (+2 credits)")
    job.add_argument("--prompt", help="text guidance for the large model, up to 300 characters "
                     "(put before the photo's caption)")
    job.add_argument("--seed", type=int, help="0-4294967295: the same photo, prompt and seed give the same result")
    run = p.add_argument_group("how to run")
    run.add_argument("--api", default=os.environ.get(API_ENV) or DEFAULT_API, metavar="URL",
                     help=f"the service (default: ${API_ENV}, else {DEFAULT_API})")
    run.add_argument("--key", default=None, metavar="KEY",
                     help=f"the API key (default: ${KEY_ENV}; prefer the variable: arguments show in `ps`). "
                          "Never printed.")
    run.add_argument("--concurrency", "-j", type=_positive, default=4, metavar="N",
                     help="photos in flight at once (default 4)")
    run.add_argument("--dry-run", action="store_true",
                     help="count the photos and their price, check the balance, send nothing")
    run.add_argument("--partial", action="store_true",
                     help="start even if the balance cannot pay for every photo; stop when it runs out")
    run.add_argument("--retries", type=_non_negative, default=5, metavar="N",
                     help="retries per photo after a timeout, a dropped connection, a 5xx or a 409 whose "
                          "first request is still running, with exponential backoff up to 30 s (default 5); "
                          "429s are waited out (Retry-After) and not counted; other 4xx are not retried")
    run.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                     help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT_S:.0f})")
    run.add_argument("--manifest", type=Path, metavar="FILE",
                     help=f"where to write the manifest, JSON or .csv (default OUT/{MANIFEST_NAME})")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress output, only the summary")
    return p


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def main(argv: list[str] | None = None, *, transport: httpx.AsyncBaseTransport | None = None) -> int:
    args = parser().parse_args(argv)
    args.key = args.key or os.environ.get(KEY_ENV) or None
    try:
        options = Options(args.model, args.clean_scratches, args.face_remaster, args.prompt, args.seed)
    except ValueError as exc:
        print(f"colorize: {exc}", file=sys.stderr)
        return USAGE
    missing = [str(path) for path in args.paths if not path.exists()]
    if missing:
        print(f"colorize: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return USAGE
    if not args.key and not args.dry_run:
        print(f"colorize: no API key: set {KEY_ENV} or pass --key", file=sys.stderr)
        return USAGE
    try:
        return asyncio.run(_run(args, options, transport))
    except KeyboardInterrupt:  # before the run's own handler is installed (or where it cannot be)
        print("colorize: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # `colorize ... | head`: the reader left; the run itself is complete
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return OK


async def _run(args: argparse.Namespace, options: Options, transport) -> int:
    err = sys.stderr
    photos, passed_over = find_photos(args.paths, args.out)
    todo, skipped = [], []
    for photo in photos:
        if is_complete_png(photo.output):
            skipped.append(Outcome(photo.source, photo.output, SKIPPED, ALREADY_DONE))
        else:
            todo.append(photo)
    skipped += [Outcome(s.source, None, SKIPPED, s.reason) for s in passed_over]
    retry = RetryPolicy(attempts=args.retries + 1)
    async with AsyncClient(args.api, args.key, timeout=args.timeout, retry=retry, max_connections=args.concurrency,
                           transport=transport) as client:
        try:
            pricing = await client.pricing()
            account = await _account(client) if args.key else None
        except AuthError as exc:
            print(f"colorize: the service refused the API key: {exc}", file=err)
            return NOT_STARTED
        except ColorizeError as exc:
            print(f"colorize: cannot use the service at {args.api}: {exc}", file=err)
            return NOT_STARTED
        price = pricing.price(options)
        needed = price * len(todo)
        print(_plan(len(photos), len(todo), len(passed_over), price, needed, options, account,
                    pricing.published), file=err)
        short = account is not None and account.credits < needed
        if short:
            print(f"the balance ({account.credits}) cannot pay for all {len(todo)} photos ({needed} credits)"
                  + ("; --partial: going as far as it goes" if args.partial and not args.dry_run else
                     "" if args.partial else "; not starting (--partial starts anyway)"), file=err)
        if args.dry_run:
            return NOT_STARTED if short and not args.partial else OK
        if short and not args.partial:
            return NOT_STARTED
        pacer = Pacer(account.rate_per_second, account.burst or 1) if account and account.rate_per_second else None
        batch = Batch(client, options, price, choose(args.quiet), args.concurrency, pacer,
                      account.credits if account else None)
        started = time.monotonic()
        interrupted = _install_stop_handlers(batch, err)
        try:
            await batch.run(todo)
        finally:
            _remove_stop_handlers()
    outcomes = batch.outcomes + skipped
    spent, exact = batch.credits_spent()
    seconds = time.monotonic() - started
    manifest = args.manifest or args.out / MANIFEST_NAME
    counts = dict(sorted(Counter(o.status for o in outcomes).items()))
    try:
        write_manifest(manifest, outcomes, {"counts": counts, "credits_spent": spent, "credits_exact": exact,
                                            "seconds": round(seconds, 3), "interrupted": bool(interrupted),
                                            "options": options.fields(), "api": args.api})
    except OSError as exc:
        print(f"colorize: cannot write the manifest {manifest}: {exc}", file=err)
        manifest = None
    print(summary_text(outcomes, credits_spent=spent, credits_exact=exact, seconds=seconds,
                       interrupted=bool(interrupted), manifest=manifest), flush=True)
    if interrupted:
        return INTERRUPTED
    return OK if all(o.status in (DONE, SKIPPED) for o in outcomes) and not any(
        o.status == SKIPPED and o.reason.startswith("its output") for o in outcomes) else SOME_FAILED


async def _account(client: AsyncClient) -> Account | None:
    try:
        return await client.account()
    except ColorizeError as exc:
        if exc.status == 404 and not isinstance(exc, NotReady):  # a service from before /api/v1/account
            return None  # the balance is then checked by the service, job by job
        raise


def _plan(found: int, todo: int, passed_over: int, price: int, needed: int, options: Options,
          account: Account | None, published: bool) -> str:
    parts = [f"{found} photos found", f"{found - todo} already done"]
    if passed_over:
        parts.append(f"{passed_over} other files skipped")
    addons = [name for name, on in (("clean_scratches", options.clean_scratches),
                                    ("face_remaster", options.face_remaster)) if on]
    priced = f"{credits(price)} each ({options.model}{''.join(' + ' + a for a in addons)}" \
             + ("" if published else "; seed price table") + ")"
    balance = (f"balance {credits(account.credits)} (key {account.key_id})" if account is not None
               else "balance unknown (the service has no /api/v1/account, or no key was given)")
    return f"{', '.join(parts)}; {todo} to colorize x {priced} = {credits(needed)}; {balance}"


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _install_stop_handlers(batch: Batch, err) -> list[int]:
    """Ctrl-C once: stop sending; twice (or SIGTERM): abandon what is in flight. Returns a list
    that gets the signal numbers received (truthy once interrupted)."""
    received: list[int] = []
    loop = asyncio.get_running_loop()

    def on_signal(number: int) -> None:
        received.append(number)
        if number == signal.SIGINT and received.count(signal.SIGINT) == 1:
            print(f"\nstopping: nothing new is sent; waiting for {batch.in_flight} photos in flight "
                  "(Ctrl-C again to abandon them)", file=err, flush=True)
            batch.stop()
        else:
            print("\nabandoning the photos in flight", file=err, flush=True)
            batch.abandon()

    for number in _STOP_SIGNALS:
        try:
            loop.add_signal_handler(number, on_signal, number)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises KeyboardInterrupt instead
            pass
    return received


def _remove_stop_handlers() -> None:
    loop = asyncio.get_running_loop()
    for number in _STOP_SIGNALS:
        try:
            loop.remove_signal_handler(number)
        except (NotImplementedError, RuntimeError):
            pass


if __name__ == "__main__":
    sys.exit(main())
