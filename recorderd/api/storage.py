"""``GET /api/v1/storage``: how full the footage disk is, against the 80/90/95 % marks the daemon logs,
and what each camera and tenant the caller may see takes of it.

The disk figures are one ``statvfs`` (in a worker thread: a hung mount must not hold the loop); the
per-camera bytes come from the sweeper's last survey, so this costs no scan and no query. A scoped
token sees the volume's level (it decides whether *its* footage is kept) but only its own cameras.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from recorderd.api.errors import ApiError
from recorderd.diskguard import USAGE_LEVELS, read_usage
from recorderd.health import disk_floor_bytes

if TYPE_CHECKING:
    from recorderd.api.app import Services


def add_routes(app: web.Application, services: Services) -> None:
    app.router.add_get("/api/v1/storage", StorageApi(services).storage)


class StorageApi:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def storage(self, request: web.Request) -> web.Response:
        from recorderd.api.app import principal_of

        cfg = self.services.config
        try:
            usage = await asyncio.wait_for(asyncio.to_thread(read_usage, cfg.storage.root), 5.0)
        except (OSError, TimeoutError):
            raise ApiError(503, "storage_unavailable", "the footage disk cannot be read; recording goes on "
                           "where it can (the daemon log says why)", {"Retry-After": "5"}) from None
        principal = principal_of(request)
        surveyed = self.services.camera_usage()
        cameras: list[dict[str, Any]] = []
        tenants: dict[str, dict[str, Any]] = {}
        for cam in cfg.cameras:
            if not principal.sees(cam.tenant):
                continue
            cam_bytes = surveyed[cam.id].bytes if cam.id in surveyed else None
            cameras.append({"camera_id": cam.id, "name": cam.name, "tenant": cam.tenant, "plan": cam.plan,
                            "bytes": cam_bytes, "share": share(cam_bytes, usage.total)})
            t = tenants.setdefault(cam.tenant or "", {"tenant": cam.tenant, "bytes": 0, "cameras": 0})
            t["bytes"] += cam_bytes or 0
            t["cameras"] += 1
        for t in tenants.values():
            t["share"] = share(t["bytes"], usage.total)
        ratio = usage.used_ratio
        return web.json_response({
            "volume": {"total_bytes": usage.total, "used_bytes": usage.used, "free_bytes": usage.free,
                       "used_ratio": round(ratio, 4), "read_only": usage.read_only,
                       "marks": list(USAGE_LEVELS),
                       "level": sum(1 for m in USAGE_LEVELS if ratio >= m),  # marks crossed
                       "floor_free_bytes": disk_floor_bytes(usage.total, cfg.storage.min_free_percent,
                                                            cfg.storage.min_free_bytes)},
            "tenants": sorted(tenants.values(), key=lambda t: t["tenant"] or ""),
            "cameras": cameras,
        }, headers={"Cache-Control": "no-store"})


def share(part: int | None, total: int) -> float | None:
    return round(part / total, 4) if part is not None and total else None
