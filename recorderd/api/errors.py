"""Every API error is JSON ``{"error": <code>, "detail": <sentence>}`` with the right status.

Handlers raise ``ApiError`` (or its named helpers); the app's middleware turns it, aiohttp's own
HTTP errors under ``/api/`` and anything unexpected into that shape. Nothing a client sends is echoed
back unescaped, and an unexpected error never shows its traceback or a path.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers or {}

    def response(self) -> web.Response:
        return json_error(self.status, self.error, self.detail, self.headers)


def json_error(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers,
                             dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def bad_request(param: str, detail: str) -> ApiError:
    return ApiError(400, "bad_request", f"{param}: {detail}")


def not_found(what: str) -> ApiError:
    """The same answer for "does not exist" and "not yours": a tenant learns nothing of others."""
    return ApiError(404, "not_found", f"no such {what}")


INDEX_DOWN = "the footage index is unreachable; recording goes on (the daemon log says why)"


def unavailable(detail: str = INDEX_DOWN) -> ApiError:
    """The index is away. The detail names no host or database: API clients are not operators."""
    return ApiError(503, "index_unavailable", detail, {"Retry-After": "5"})
