"""``colorize-models pull``: fetch every model source of a serve config once, upload it to a model bucket.

    colorize-models pull serve_config.yaml --bucket s3://models[/root] [--endpoint host:port]
        [--secure | --insecure] [--region us-east-1] [--cache-dir DIR] [--write-config OUT.yaml]

Each source (hf://, a sha256-pinned https:// file, a local directory) is resolved with the same
code the replicas use, into the local model cache, then uploaded under a prefix derived from it:

    hf://org/name[@rev]   ->  hf/org/name/<rev or main>/...
    https://.../file      ->  url/<sha256[:16]>/file
    ./some/dir            ->  local/<dir name>/<content sha256[:16]>/...

The config comes back (stdout, or --write-config) with those sources pointing at s3://bucket/prefix
and a `model_store` section, so a cluster downloads from the hub once and every node reads the bucket.
`files` and `subpath` keep working: names stay relative to the new prefix. Credentials come from
MODEL_STORE_ACCESS_KEY / MODEL_STORE_SECRET_KEY (or the env var names the config's model_store sets).
Re-running uploads only objects that are missing or differ in size.
"""
from __future__ import annotations

import argparse
import copy
import fnmatch
import hashlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
import yaml
from minio import Minio
from minio.error import MinioException

from pipeline.errors import ModelLoadError
from pipeline.weights.source import S3Settings, parse_hf_source, parse_pinned_url, parse_s3_source, resolve_model_source
from pipeline.weights.cache import sha256_of

from .settings import ConfigError, load_settings
from .stages import STAGES

_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9._-]+")

Log = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    """Where uploads go: a bucket, an optional root prefix inside it, and how to reach it."""
    store: S3Settings
    bucket: str
    root: str = ""

    def key_prefix(self, prefix: str) -> str:
        return f"{self.root}/{prefix}" if self.root else prefix

    def source(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{self.key_prefix(prefix)}"


def model_refs(args: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every model entry (a dict with a `source`) in the stage sections of one app's args, as
    (where, the dict itself, to rewrite in place): colorizers, their diffusion parts, add-on models."""
    for head in dict.fromkeys(spec.section[0] for spec in STAGES):
        yield from _refs_in(args.get(head), head)


def _refs_in(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(node, dict):
        return
    if "source" in node:
        yield where, node
    for key, value in node.items():
        yield from _refs_in(value, f"{where}.{key}")


def is_pinned_url(source: str) -> bool:
    return source.startswith(("https://", "http://"))


def selected_files(directory: Path, patterns: Sequence[str] | None) -> list[str]:
    """Relative names under `directory` that `patterns` select (all when None); hidden entries
    (e.g. the `.cache/` that `hf download --local-dir` leaves) are never model files."""
    names = []
    for folder, dirs, files in os.walk(directory):  # file symlinks (hub snapshots) count as files
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative_folder = Path(folder).relative_to(directory)
        names += [(relative_folder / f).as_posix() for f in files if not f.startswith(".")]
    if patterns is not None:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return sorted(names)


def content_digest(directory: Path, names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{sha256_of(directory / name)}\n".encode())
    return digest.hexdigest()


def store_prefix(source: str, sha256: str | None, directory: Path, names: Sequence[str]) -> str:
    """A prefix that names the source: the same source lands in the same place on every run."""
    if source.startswith("hf://"):
        hf = parse_hf_source(source)
        return f"hf/{hf.repo_id}/{hf.revision or 'main'}"
    if is_pinned_url(source):
        return f"url/{parse_pinned_url(source, sha256).sha256[:16]}"
    # A local folder has no name outside this machine: its content is what identifies it.
    name = _UNSAFE_KEY_CHARS.sub("-", directory.resolve().name).strip(".-") or "model"
    return f"local/{name}/{content_digest(directory, names)[:16]}"


def upload(client: Minio, bucket: str, key_prefix: str, directory: Path, names: Sequence[str]) -> tuple[int, int]:
    """Put each file at key_prefix/name unless an object of the same size is there; (uploaded, skipped)."""
    existing = {obj.object_name: obj.size for obj in
                client.list_objects(bucket, prefix=f"{key_prefix}/", recursive=True)}
    uploaded = skipped = 0
    for name in names:
        path, key = directory / name, f"{key_prefix}/{name}"
        if existing.get(key) == path.stat().st_size:
            skipped += 1
            continue
        client.fput_object(bucket, key, str(path))  # multipart for large files; follows symlinks
        uploaded += 1
    return uploaded, skipped


@dataclass(frozen=True)
class Planned:
    """One source resolved locally: what to upload where, and what replaces the entry's fields."""
    directory: Path
    names: tuple[str, ...]
    key_prefix: str
    replacement: dict[str, Any]


def plan_source(ref: dict[str, Any], *, where: str, target: Target, cache_dir: Path, base_dir: Path,
                log: Log) -> Planned:
    source, files, sha256 = ref["source"], ref.get("files"), ref.get("sha256")
    local = source if "://" in source or Path(source).is_absolute() else str(base_dir / source)
    log(f"{where}: resolving {source}")
    directory = resolve_model_source(local, cache_dir=cache_dir, files=files, sha256=sha256)
    patterns = None if is_pinned_url(source) else files  # a URL is one file; `files` never applied to it
    names = selected_files(directory, patterns)
    unmatched = [p for p in patterns or () if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched or not names:
        # The s3:// resolver requires every pattern to match; fail here rather than on every node later.
        raise ModelLoadError(f"{where}: {', '.join(map(repr, unmatched)) or 'nothing'} matches no file in "
                             f"{source} (resolved to {directory}); fix `files` before pulling")
    prefix = target.key_prefix(store_prefix(source, sha256, directory, names))
    # A pinned URL's sha256 and (ignored) files do not carry over: the bucket copy is a plain prefix.
    replacement = {"source": f"s3://{target.bucket}/{prefix}", "files": None if is_pinned_url(source) else files}
    return Planned(directory, tuple(names), prefix, replacement)


def rewrite_ref(ref: dict[str, Any], replacement: dict[str, Any]) -> None:
    ref["source"] = replacement["source"]
    ref.pop("sha256", None)
    if replacement["files"] is None:
        ref.pop("files", None)


def pull(config: dict[str, Any], *, target: Target, cache_dir: Path, base_dir: Path, log: Log) -> dict[str, Any]:
    """Upload every non-s3 model source of `config`; return the config rewritten to read the bucket.

    Everything is resolved and checked before the first upload, so a bad entry leaves the bucket alone."""
    client = _client(target.store)  # missing credentials fail before any download
    config = copy.deepcopy(config)
    plans: dict[tuple[Any, ...], tuple[str, Planned]] = {}  # each source (and selection) once
    rewrites: list[tuple[dict[str, Any], tuple[Any, ...]]] = []
    for app in config.get("applications") or []:
        args = app.setdefault("args", {})
        for where, ref in model_refs(args):
            if ref["source"].startswith("s3://"):
                continue  # already in a bucket
            key = (ref["source"], tuple(ref.get("files") or ()) or None, ref.get("sha256"))
            if key not in plans:
                label = f"{app.get('name')}: {where}"
                plans[key] = label, plan_source(ref, where=label, target=target, cache_dir=cache_dir,
                                                base_dir=base_dir, log=log)
            rewrites.append((ref, key))
        args["model_store"] = {**(args.get("model_store") or {}), "endpoint": target.store.endpoint,
                               "secure": target.store.secure, "region": target.store.region}
    if not client.bucket_exists(target.bucket):
        client.make_bucket(target.bucket, location=target.store.region)
        log(f"created bucket {target.bucket}")
    for label, plan in plans.values():
        uploaded, skipped = upload(client, target.bucket, plan.key_prefix, plan.directory, plan.names)
        log(f"{label}: s3://{target.bucket}/{plan.key_prefix}: {uploaded} uploaded, {skipped} already there")
    for ref, key in rewrites:  # after the loop: YAML aliases may share one dict between entries
        rewrite_ref(ref, plans[key][1].replacement)
    return config


def _client(store: S3Settings) -> Minio:
    access, secret = store.credentials()
    return Minio(store.endpoint, access_key=access, secret_key=secret, secure=store.secure, region=store.region)


def _validate(config: dict[str, Any], base_dir: Path) -> None:
    apps = config.get("applications")
    if not isinstance(apps, list) or not apps:
        raise ConfigError("`applications:` must list at least one application")
    for app in apps:
        load_settings(app.get("args"), base_dir=base_dir)


def _target(args: argparse.Namespace, config: dict[str, Any]) -> Target:
    configured = next((app["args"]["model_store"] for app in config["applications"]
                       if (app.get("args") or {}).get("model_store")), {})
    endpoint = args.endpoint or configured.get("endpoint")
    if not endpoint:
        raise ConfigError("give --endpoint host:port (the config has no model_store.endpoint)")
    secure = args.secure if args.secure is not None else configured.get("secure", True)
    names = {k: configured[k] for k in ("access_key_env", "secret_key_env") if k in configured}
    store = S3Settings(endpoint=endpoint, secure=secure, region=args.region or configured.get("region", "us-east-1"),
                       **names)
    if not args.bucket.startswith("s3://"):
        raise ConfigError(f"--bucket must look like s3://bucket[/prefix], got {args.bucket!r}")
    bucket, root = parse_s3_source(args.bucket)
    return Target(store=store, bucket=bucket, root=root)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colorize-models", description="Copy model weights into a model bucket.")
    commands = parser.add_subparsers(dest="command", required=True)
    pull_cmd = commands.add_parser("pull", help="upload every model source of a serve config; print the config "
                                                "rewritten to read them from the bucket")
    pull_cmd.add_argument("config", type=Path)
    pull_cmd.add_argument("--bucket", required=True, help="s3://bucket[/root prefix]; created if missing")
    pull_cmd.add_argument("--endpoint", help="host:port of MinIO/S3 (default: the config's model_store.endpoint)")
    security = pull_cmd.add_mutually_exclusive_group()
    security.add_argument("--secure", dest="secure", action="store_true", default=None, help="https (default)")
    security.add_argument("--insecure", dest="secure", action="store_false", help="plain http")
    pull_cmd.add_argument("--region", help="default: the config's model_store.region, else us-east-1")
    pull_cmd.add_argument("--cache-dir", type=Path,
                          help="where sources are resolved first (default: the config's model_cache_dir)")
    pull_cmd.add_argument("--write-config", type=Path, metavar="OUT.yaml", help="write the config here, not stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    base_dir = Path.cwd()  # relative paths in a config mean what they mean to `make serve` here

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        config = yaml.safe_load(args.config.read_text()) or {}
        _validate(config, base_dir)
        target = _target(args, config)
        first_args = config["applications"][0].get("args") or {}
        cache_dir = args.cache_dir or base_dir / first_args.get("model_cache_dir", "data/model-cache")
        rewritten = pull(config, target=target, cache_dir=cache_dir, base_dir=base_dir, log=log)
        _validate(rewritten, base_dir)
    except (OSError, yaml.YAMLError, ConfigError, ValueError) as exc:
        log(f"error: {exc}")
        return 2
    except (ModelLoadError, MinioException, urllib3.exceptions.HTTPError) as exc:
        log(f"error: {exc}")
        return 1
    text = f"# {args.config.name} with model sources in s3://{target.bucket} (colorize-models pull)\n" \
        + yaml.safe_dump(rewritten, sort_keys=False, width=120)
    if args.write_config:
        args.write_config.write_text(text)
        log(f"wrote {args.write_config}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
