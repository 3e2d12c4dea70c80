"""`https://.../file#sha256=<hex>`: one pinned file, downloaded once into `cache_dir/url/<sha[:16]>/`.

The pin is what makes a URL safe to cache and to load: the file is hashed while it streams into a
staged temp file and only a match is renamed into place. Plain http is refused except on loopback
(tests); with a pin, transport security adds nothing to integrity, but it is kept as a policy.
"""
from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.errors import ModelLoadError
from pipeline.weights.cache import CHUNK_BYTES, entry_lock, remove_stale_parts, sha256_of, staged_file
from pipeline.weights.progress import DownloadProgress

USER_AGENT = "colorize-service/0.1 (model fetcher)"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class PinnedUrl:
    url: str        # without the fragment
    sha256: str     # lower-case hex
    filename: str   # last path segment, the name the file gets in the cache


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_scheme(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise ModelLoadError(f"refusing {url}: only https:// model URLs are allowed (plain http only on loopback)")


def parse_pinned_url(source: str, sha256: str | None) -> PinnedUrl:
    """Split `source` into URL, pin and file name; refuse unpinned, conflicting or nameless URLs."""
    url, _, fragment = source.partition("#")
    _check_scheme(url)
    fragment_pin = fragment[len("sha256="):].lower() if fragment.startswith("sha256=") else None
    if fragment and fragment_pin is None:
        raise ModelLoadError(f"{source}: the only URL fragment understood is #sha256=<64 hex digits>")
    pins = {pin.lower() for pin in (sha256, fragment_pin) if pin}
    if not pins:
        raise ModelLoadError(
            f"refusing unpinned {url}: give its sha256 (the `sha256` setting or a #sha256=<hex> "
            "fragment) so a changed or tampered file is never loaded"
        )
    if len(pins) > 1:
        raise ModelLoadError(f"{source}: the sha256 argument and the #sha256= fragment disagree")
    (pin,) = pins
    if not _SHA256.fullmatch(pin):
        raise ModelLoadError(f"{source}: sha256 must be 64 hex digits, got {pin!r}")
    filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    if not _FILENAME.fullmatch(filename):
        raise ModelLoadError(f"{url} must end in a plain file name (letters, digits, '._+-'), got {filename!r}")
    return PinnedUrl(url=url, sha256=pin, filename=filename)


class _PolicyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (release assets usually redirect to a CDN) under the same scheme policy."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        _check_scheme(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, timeout_s: float) -> http.client.HTTPResponse:
    handlers: list[urllib.request.BaseHandler] = [_PolicyRedirects()]
    if _is_loopback(urlsplit(url).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))  # never send loopback requests to a proxy
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    return opener.open(request, timeout=timeout_s)


def _download(pinned: PinnedUrl, destination: Path, timeout_s: float) -> None:
    """Stream into a staged file, verify length and hash, then rename onto `destination`."""
    with staged_file(destination.parent.parent, prefix=f".{destination.parent.name}.") as (handle, staging):
        digest = hashlib.sha256()
        received = 0
        try:
            with _open(pinned.url, timeout_s) as response:
                expected_length = response.headers.get("Content-Length")
                progress = DownloadProgress(pinned.url, total=int(expected_length) if expected_length
                                            and expected_length.isdigit() else None)
                progress.start()
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    progress.add(len(chunk))
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ModelLoadError(f"cannot download {pinned.url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            raise ModelLoadError(f"cannot download {pinned.url}: {exc}") from exc
        # http.client returns a short body without error when the server closes early: check the length.
        if expected_length is not None and expected_length.isdigit() and received != int(expected_length):
            raise ModelLoadError(
                f"download of {pinned.url} was interrupted: got {received} of {expected_length} bytes"
            )
        actual = digest.hexdigest()
        if actual != pinned.sha256:
            raise ModelLoadError(
                f"sha256 mismatch for {pinned.url}: expected {pinned.sha256}, got {actual}; "
                "the file was discarded (fix the pin or the URL)"
            )
        handle.close()
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, destination)
        progress.finish()


def resolve_url(source: str, *, cache_dir: Path, sha256: str | None, timeout_s: float) -> Path:
    pinned = parse_pinned_url(source, sha256)
    root = cache_dir / "url"
    entry = root / pinned.sha256[:16]
    destination = entry / pinned.filename
    # One lock per entry directory: it also guards the stale-part sweep, which is per directory.
    with entry_lock(cache_dir, f"url/{entry.name}"):
        if destination.is_file():
            if sha256_of(destination) == pinned.sha256:
                return entry
            destination.unlink()  # damaged on disk since it was verified: fetch it again
        remove_stale_parts(root, prefix=f".{entry.name}.")
        _download(pinned, destination, timeout_s)
    return entry
