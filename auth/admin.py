"""``colorize-admin``: manage API keys and credits on the ledger.

    colorize-admin keys create --credits 100 [--rate 2 --burst 10] [--name "Acme"]
    colorize-admin keys list
    colorize-admin keys revoke KEY_ID
    colorize-admin credits add KEY_ID 50
    colorize-admin usage [KEY_ID]
    colorize-admin sweep          # release reservations of crashed processes now

The ledger is ``--database-url``, else $COLORIZE_DATABASE_URL, else the embedded SQLite file.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

from sqlalchemy.exc import SQLAlchemyError

from .accounts import AccountError, Accounts
from .db import make_engine
from .keys import InvalidKeyFormat
from .ledger import Ledger
from .settings import DATABASE_URL_ENV, DEFAULT_DATABASE_URL


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        engine = make_engine(args.database_url)
    except (SQLAlchemyError, ValueError) as exc:
        print(f"error: cannot open the ledger at {_safe(args.database_url)}: {exc}", file=sys.stderr)
        return 2
    try:
        return args.run(Accounts(engine), args, engine) or 0
    except (AccountError, InvalidKeyFormat) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"error: the ledger refused the change: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colorize-admin", description="Manage API keys and credits.")
    parser.add_argument("--database-url", default=os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL,
                        help=f"SQLAlchemy URL of the ledger (default: ${DATABASE_URL_ENV} or {DEFAULT_DATABASE_URL})")
    commands = parser.add_subparsers(dest="command", required=True)

    keys = commands.add_parser("keys", help="create, list or revoke API keys").add_subparsers(dest="action",
                                                                                             required=True)
    create = keys.add_parser("create", help="create a key and print it (shown only this once)")
    create.add_argument("--credits", type=int, required=True, help="starting balance")
    create.add_argument("--rate", type=float, help="requests per second refilled (default: the server's)")
    create.add_argument("--burst", type=int, help="bucket size: requests allowed at once (default: the server's)")
    create.add_argument("--name", default="", help="who the key is for")
    create.set_defaults(run=_create)
    keys.add_parser("list", help="list keys (never the keys themselves)").set_defaults(run=_list)
    revoke = keys.add_parser("revoke", help="revoke a key: it is refused from now on")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_revoke)

    credits = commands.add_parser("credits", help="add credits").add_subparsers(dest="action", required=True)
    add = credits.add_parser("add", help="add N credits to a key")
    add.add_argument("key_id")
    add.add_argument("amount", type=int)
    add.set_defaults(run=_add)

    usage = commands.add_parser("usage", help="totals and the latest jobs, for one key or all")
    usage.add_argument("key_id", nargs="?")
    usage.add_argument("--limit", type=int, default=20)
    usage.set_defaults(run=_usage)
    commands.add_parser("sweep", help="release expired reservations now").set_defaults(run=_sweep)
    return parser


def _create(accounts: Accounts, args: argparse.Namespace, _engine) -> None:
    key = accounts.create_key(credits=args.credits, name=args.name, rate_per_s=args.rate, burst=args.burst)
    print(f"key id:  {key.key_id}")
    print(f"api key: {key.key}")
    print("Store the API key now: it is not kept and cannot be shown again.", file=sys.stderr)


def _list(accounts: Accounts, _args, _engine) -> None:
    print(f"{'KEY ID':<14}{'BALANCE':>10}  {'RATE/S':>7}  {'BURST':>6}  {'CREATED':<20}  {'STATUS':<8}  NAME")
    for key in accounts.list_keys():
        print(f"{key.key_id:<14}{key.balance:>10}  {_or_default(key.rate_per_s):>7}  {_or_default(key.burst):>6}  "
              f"{_time(key.created_at):<20}  {'revoked' if key.revoked_at else 'active':<8}  {key.name}")


def _revoke(accounts: Accounts, args: argparse.Namespace, _engine) -> None:
    accounts.revoke(args.key_id)
    print(f"revoked {args.key_id}")


def _add(accounts: Accounts, args: argparse.Namespace, _engine) -> None:
    balance = accounts.add_credits(args.key_id, args.amount)
    print(f"{args.key_id}: balance {balance}")


def _usage(accounts: Accounts, args: argparse.Namespace, _engine) -> None:
    if args.key_id is not None and accounts.get(args.key_id) is None:
        raise AccountError(f"no key {args.key_id}")
    for status, total in sorted(accounts.usage_totals(args.key_id).items()):
        print(f"{status:<10} {total['jobs']:>8} jobs  {total['credits']:>10} credits")
    print(f"\n{'STARTED':<20}  {'KEY ID':<13} {'ROUTE':<24} {'MODEL':<6} {'ADD-ONS':<30} {'PRICE':>5}  "
          f"{'STATUS':<10} {'SECONDS':>8}  RESULT / NOTE")
    for row in accounts.usage(args.key_id, limit=args.limit):
        seconds = "" if row["duration_s"] is None else f"{row['duration_s']:.2f}"
        print(f"{_time(row['started_at']):<20}  {row['key_id']:<13} {row['route']:<24} {row['model'] or '':<6} "
              f"{row['addons']:<30} {row['price']:>5}  {row['status']:<10} {seconds:>8}  "
              f"{row['result_id'] or row['note'] or ''}")


def _sweep(_accounts: Accounts, _args, engine) -> None:
    print(f"released {Ledger(engine).sweep()} expired reservations")


def _or_default(value) -> str:
    return "default" if value is None else f"{value:g}"


def _time(epoch: float | None) -> str:
    return "" if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable URL)"


if __name__ == "__main__":
    sys.exit(main())
