"""The S3-compatible object store behind the archive tier: upload with a checksum the server
confirms, ranged reads, batched deletes.

Built on ``obstore`` (Rust ``object_store`` bindings): natively async, no thread per request and a
small install, where ``aiobotocore`` brings botocore's service JSON and runs its signing and parsing
in Python on the event loop the cameras' pipes share.

Verification: the ETag S3 returns for a single PUT is the MD5 of the bytes it stored, and for a
multipart upload the MD5 of the parts' MD5s with ``-<parts>``. Both are computed here from the local
file while it is read, so an upload counts only when the server's own digest of what it stored
equals ours, and its size (from a HEAD) equals the file's.

Credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or ``archive.credentials_file``
and are registered as secrets: no log line, metric or error text carries them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.store import S3Store

from recorderd.config import ArchiveConfig
from recorderd.logging import register_secrets

if TYPE_CHECKING:
    from obstore.store import ClientConfig, RetryConfig

PART_BYTES = 8 * 1024 * 1024  # files up to this go in one PUT; larger ones in parts of this size
DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1000 keys
REQUEST_TIMEOUT = "60s"


class ArchiveError(Exception):
    """An object store request failed; the text never holds a credential."""


class VerifyError(ArchiveError):
    """The server's digest or size of an upload differs from the local file's."""


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


def load_credentials(cfg: ArchiveConfig, environ: Mapping[str, str] | None = None) -> Credentials | None:
    """The environment first, then ``credentials_file`` (``KEY=value`` lines or an AWS
    ``credentials`` ini: keys are matched without case, sections ignored). None: no credentials
    (a public bucket, or AWS's instance role is not used here)."""
    env = os.environ if environ is None else environ
    found: dict[str, str] = {}
    if cfg.credentials_file is not None:
        try:
            text = Path(cfg.credentials_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ArchiveError(f"archive.credentials_file {cfg.credentials_file}: {exc.strerror}") from None
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")) or "=" not in line:
                continue
            key, _, value = line.partition("=")
            key = key.strip().lower().removeprefix("export ")
            found[key] = value.strip().strip("'\"")
    key_id = env.get("AWS_ACCESS_KEY_ID") or found.get("aws_access_key_id")
    secret = env.get("AWS_SECRET_ACCESS_KEY") or found.get("aws_secret_access_key")
    token = env.get("AWS_SESSION_TOKEN") or found.get("aws_session_token")
    if not key_id or not secret:
        return None
    register_secrets([s for s in (key_id, secret, token) if s])
    return Credentials(key_id, secret, token or None)


def expected_etag(path: str | os.PathLike[str], part: int = PART_BYTES) -> tuple[int, str]:
    """(size, ETag the server must report) of a file uploaded by ``ObjectStore.put_file``. Blocking."""
    digests: list[bytes] = []
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(part):
            digests.append(hashlib.md5(chunk, usedforsecurity=False).digest())
            size += len(chunk)
    if len(digests) <= 1:  # one PUT: the MD5 of the bytes (of nothing for an empty file)
        return size, digests[0].hex() if digests else hashlib.md5(b"", usedforsecurity=False).hexdigest()
    return size, hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest() + f"-{len(digests)}"


def _read_small(path: str) -> tuple[bytes | None, int, str]:
    """A file of up to ``PART_BYTES``: its bytes, size and MD5 from one read; a larger one: (None, 0, "")."""
    with open(path, "rb") as f:
        data = f.read(PART_BYTES + 1)
    if len(data) > PART_BYTES:
        return None, 0, ""
    return data, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest()


def _clean_etag(etag: str | None) -> str:
    return (etag or "").strip().strip('"').lower()


class ObjectStore:
    """One bucket and key prefix. Keys given to the methods are relative to the prefix."""

    def __init__(self, cfg: ArchiveConfig, credentials: Credentials | None) -> None:
        self.bucket = cfg.bucket
        self.prefix = cfg.prefix
        options: ClientConfig = {"timeout": REQUEST_TIMEOUT, "connect_timeout": "5s"}
        if cfg.endpoint is not None and cfg.endpoint.startswith("http://"):
            options["allow_http"] = True
        kwargs: dict[str, Any] = {"region": cfg.region}
        if cfg.endpoint is not None:
            kwargs["endpoint"] = cfg.endpoint
            kwargs["virtual_hosted_style_request"] = False
        if credentials is not None:
            kwargs["access_key_id"] = credentials.access_key_id
            kwargs["secret_access_key"] = credentials.secret_access_key
            if credentials.session_token:
                kwargs["session_token"] = credentials.session_token
        else:
            kwargs["skip_signature"] = True
        # few quick retries inside a request; the archiver's own backoff handles an outage
        retry: RetryConfig = {"max_retries": 2, "retry_timeout": timedelta(seconds=20),
                              "backoff": {"init_backoff": timedelta(seconds=0.2),
                                          "max_backoff": timedelta(seconds=2), "base": 2}}
        self._store = S3Store(cfg.bucket, prefix=cfg.prefix or None, client_options=options,
                              retry_config=retry, **kwargs)

    def url(self, key: str) -> str:
        """``s3://bucket/prefix/key``: what the index stores for an archived segment (and search shows),
        so a row names its object whatever ``archive.url`` says later."""
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}{key}"

    def key_of(self, url: str) -> str | None:
        """The key under this store of an ``s3://`` URL; None when it is in another bucket or prefix."""
        base = self.url("")
        if not url.startswith(base) or len(url) == len(base):
            return None
        key = url[len(base):]
        return None if any(p in ("", ".", "..") for p in key.split("/")) else key

    async def put_file(self, key: str, path: str) -> tuple[int, str]:
        """Upload ``path`` to ``key`` and verify it; returns (size, etag). Raises ArchiveError or
        VerifyError (the object may then exist with other bytes: a retry overwrites it)."""
        data, size, etag = await asyncio.to_thread(_read_small, path)  # one read, digest included
        try:
            if data is not None:
                await obstore.put_async(self._store, key, data)
            else:
                size, etag = await asyncio.to_thread(expected_etag, path)
                await obstore.put_async(self._store, key, Path(path), chunk_size=PART_BYTES)
            head = await obstore.head_async(self._store, key)
        except ArchiveError:
            raise
        except Exception as exc:  # obstore raises its own hierarchy and OSError
            raise ArchiveError(_describe(exc)) from None
        if head["size"] != size:
            raise VerifyError(f"the server stored {head['size']} bytes of {size}")
        if _clean_etag(head.get("e_tag")) != etag:
            raise VerifyError("the server's checksum differs from the file's")
        return size, etag

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object: one ranged GET."""
        try:
            return bytes(await obstore.get_range_async(self._store, key, start=start, end=end))
        except Exception as exc:
            raise ArchiveError(_describe(exc)) from None

    async def stream(self, key: str, chunk: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """The whole object, chunk by chunk."""
        try:
            result = await obstore.get_async(self._store, key)
            async for part in result.stream(min_chunk_size=chunk):
                yield bytes(part)
        except Exception as exc:
            raise ArchiveError(_describe(exc)) from None

    async def download(self, key: str, dest: str) -> None:
        """The object into ``dest`` (created or truncated)."""
        f = await asyncio.to_thread(open, dest, "wb")
        try:
            async for part in self.stream(key):
                await asyncio.to_thread(f.write, part)
        finally:
            await asyncio.to_thread(f.close)

    async def exists(self, key: str) -> int | None:
        """The object's size, or None when there is none."""
        try:
            head = await obstore.head_async(self._store, key)
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise ArchiveError(_describe(exc)) from None
        return int(head["size"])

    async def delete_many(self, keys: Sequence[str]) -> None:
        """Batched deletes (DeleteObjects, 1000 keys a request); a key with no object is not an error."""
        for i in range(0, len(keys), DELETE_BATCH):
            try:
                await obstore.delete_async(self._store, list(keys[i:i + DELETE_BATCH]))
            except FileNotFoundError:
                pass
            except Exception as exc:
                raise ArchiveError(_describe(exc)) from None

    async def list_keys(self, prefix: str) -> list[str]:
        try:
            return [m["path"] for m in await obstore.list(self._store, prefix=prefix).collect_async()]
        except Exception as exc:
            raise ArchiveError(_describe(exc)) from None


def _describe(exc: BaseException) -> str:
    """First line of an obstore error (its method, URL without credentials, status): never a
    signature or key, which object_store does not print."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"
