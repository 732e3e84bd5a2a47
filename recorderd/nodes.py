"""Several nodes, one index: which node records which camera, by leases in PostgreSQL.

Every enabled camera has at most one row in ``leases``: the node that records it and until when
(``expires_at``, server time: no node compares its own clock). Each node renews its rows every
``renew_seconds`` (a quarter of the lease) in one statement that also says it is alive (``nodes``).
Nothing else coordinates: no second consensus system, no home-made protocol beside these rows.

- **Free cameras** (no row, or a row past ``expires_at``) are taken by an atomic upsert that only
  succeeds on an expired row, so two nodes racing for one camera cannot both win. A node takes free
  cameras up to an even share of the cameras among live nodes (``node.max_cameras`` caps its share).
- **Rebalancing is make-before-break.** A node with at least two cameras fewer than another (or any
  node, while another drains) sets ``handover_to`` on some of that node's rows and starts recording
  them. Once its FFmpeg writes (or the holder reports it is not recording anyway) it takes the row.
  The old holder sees at its next renewal that the row is not its own any more and stops: the two
  overlap by up to one renewal period and a clean stop; there is no gap.
- **Fencing.** A node only stops a camera when the index says another node holds it. A node whose
  renewals stop (killed, hung, cut off) loses its rows when they expire; the others take them. If it
  comes back it learns at its first renewal which rows are gone and stops those cameras, within one
  renewal period. While PostgreSQL is away it keeps recording everything it held: two nodes may
  overlap, they never both stop.
- **Drain** (``recorderd drain``, SIGUSR1): the node says it is draining; the others take all its
  cameras make-before-break; it stops when it holds none (or after ``drain_seconds``).

``plan`` is the pure part (unit-tested); ``LeaseKeeper`` runs it against the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from recorderd import metrics
from recorderd.config import Config, NodeConfig
from recorderd.db import Database, DatabaseUnavailable
from recorderd.logging import get_logger, register_secrets

log = get_logger(component="nodes")

HANDOVER_TIMEOUT = 30.0  # seconds an incoming camera may take to record before the request is given up
# handovers one node asks for per renewal: moves of recording cameras spread over a few renewals. Free
# cameras (a dead node's) are taken all at once: every renewal they wait is footage nobody records
MAX_MOVES = 16

# one statement per renewal: "I am alive" and "these are still mine" ($6/$7: the holder's camera states,
# for the other nodes' API). Rows whose node is this one are renewed even past expires_at: nobody took them
RENEW = """
WITH beat AS (
    INSERT INTO nodes AS n (id, url, max_cameras, lease_seconds, draining, seen_at)
    VALUES ($1, $2, $3, $4, $5, now())
    ON CONFLICT (id) DO UPDATE SET url = EXCLUDED.url, max_cameras = EXCLUDED.max_cameras,
        lease_seconds = EXCLUDED.lease_seconds, draining = EXCLUDED.draining, seen_at = now()
)
UPDATE leases SET expires_at = now() + make_interval(secs => $4),
    state = coalesce(($7::text[])[array_position($6::text[], camera_id)], state)
WHERE node = $1
RETURNING camera_id
"""

# the cluster as it is now: one round trip, two kinds of rows
LOOK = """
SELECT 'lease' AS kind, camera_id AS id, node, expires_at > now() AS live, handover_to, state,
       NULL::text AS url, NULL::int AS max_cameras, NULL::bool AS draining
FROM leases
UNION ALL
SELECT 'node', id, NULL, seen_at > now() - make_interval(secs => lease_seconds), NULL, NULL,
       url, max_cameras, draining
FROM nodes
"""

# free or expired rows only: of two nodes racing for a camera, one wins
ACQUIRE = """
INSERT INTO leases AS l (camera_id, node, expires_at, since)
SELECT c, $1, now() + make_interval(secs => $2), now() FROM unnest($3::text[]) AS c
ON CONFLICT (camera_id) DO UPDATE SET node = EXCLUDED.node, expires_at = EXCLUDED.expires_at,
    since = now(), handover_to = NULL, handover_at = NULL, state = NULL
WHERE l.expires_at < now()
RETURNING camera_id
"""

REQUEST = """
UPDATE leases SET handover_to = $1, handover_at = now()
WHERE camera_id = ANY($2::text[]) AND node <> $1 AND handover_to IS NULL AND expires_at > now()
RETURNING camera_id
"""

# the new holder takes the row; the old one finds out at its next renewal and stops
TAKE = """
UPDATE leases SET node = $1, handover_to = NULL, handover_at = NULL, since = now(), state = NULL,
    expires_at = now() + make_interval(secs => $2)
WHERE camera_id = ANY($3::text[]) AND handover_to = $1
RETURNING camera_id
"""

ABANDON = """
UPDATE leases SET handover_to = NULL, handover_at = NULL WHERE camera_id = ANY($2::text[]) AND handover_to = $1
"""

# handovers to nodes that died before finishing them, on this node's rows
CLEAR_STALE = """
UPDATE leases SET handover_to = NULL, handover_at = NULL
WHERE node = $1 AND handover_to IS NOT NULL AND NOT (handover_to = ANY($2::text[]))
"""

# cameras that left the config (or were disabled): nobody records them
DROP = "DELETE FROM leases WHERE node = $1 AND NOT (camera_id = ANY($2::text[]))"

RELEASE = "DELETE FROM leases WHERE node = $1"

# the key one node shows another (recorderd.api.peers): made by the first node, read by every other
NODE_KEY = """
WITH made AS (INSERT INTO cluster (key, value) VALUES ('node_key', $1) ON CONFLICT (key) DO NOTHING RETURNING value)
SELECT value FROM made UNION ALL SELECT value FROM cluster WHERE key = 'node_key' LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    camera_id: str
    node: str
    live: bool  # expires_at is still ahead (server time)
    handover_to: str | None = None
    state: str | None = None  # the holder's camera state, as it last renewed


@dataclass(frozen=True, slots=True)
class Peer:
    id: str
    alive: bool
    draining: bool = False
    max_cameras: int | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Moves:
    acquire: tuple[str, ...] = ()  # free cameras to take
    request: tuple[str, ...] = ()  # other nodes' cameras to ask for (make-before-break)


def _score(node: str, camera: str) -> bytes:
    """Rendezvous order: every node prefers different free cameras, so their claims seldom collide."""
    return hashlib.blake2b(f"{node}\0{camera}".encode(), digest_size=8).digest()


def shares(cameras: int, peers: Sequence[Peer]) -> dict[str, int]:
    """The most cameras each live, undrained node should hold: an even split, water-filled around the
    nodes whose ``max_cameras`` is below it (rounded up, so the shares always cover the cameras)."""
    active = sorted((p for p in peers if p.alive and not p.draining),
                    key=lambda p: (p.max_cameras if p.max_cameras is not None else math.inf, p.id))
    out: dict[str, int] = {}
    left = cameras
    for n, p in enumerate(active):
        even = math.ceil(left / (len(active) - n)) if left > 0 else 0
        out[p.id] = even if p.max_cameras is None else min(even, p.max_cameras)
        left -= out[p.id]
    return out


def plan(me: str, cameras: Iterable[str], leases: Mapping[str, Lease], peers: Sequence[Peer],
         incoming: Iterable[str] = (), *, limit: int = MAX_MOVES) -> Moves:
    """What this node should ask for now, from one look at the cluster (``leases`` by camera)."""
    wanted = sorted(set(cameras))
    peer = {p.id: p for p in peers}
    mine_peer = peer.get(me)
    if mine_peer is None or not mine_peer.alive or mine_peer.draining:
        return Moves()
    share = shares(len(wanted), peers).get(me, 0)
    incoming = set(incoming)
    held = {c for c in wanted if (lease := leases.get(c)) is not None and lease.node == me}
    have = len(held | incoming)
    free = [c for c in wanted if c not in incoming and ((lease := leases.get(c)) is None or not lease.live)]
    free.sort(key=lambda c: _score(me, c))
    acquire = tuple(free[:max(0, share - have)])
    have += len(acquire)
    # make-before-break from the fullest donors: a draining node gives everything, another gives while it
    # holds two more than this node would (so two nodes never trade one camera back and forth)
    share_of = shares(len(wanted), peers)
    counts: dict[str, list[str]] = {}
    for c in wanted:
        lease = leases.get(c)
        if lease is not None and lease.live and lease.node != me and lease.handover_to is None:
            counts.setdefault(lease.node, []).append(c)
    pending: dict[str, int] = {}
    for lease in leases.values():
        if lease.live and lease.handover_to is not None:
            pending[lease.node] = pending.get(lease.node, 0) + 1
    size = {n: len(cs) + pending.get(n, 0) for n, cs in counts.items()}
    for cs in counts.values():
        cs.sort(key=lambda c: _score(me, c))
    request: list[str] = []
    while have < share and len(request) < limit:
        # a donor is draining, dead, over its max_cameras (lowered by a reload), or two ahead of this node:
        # a difference of one is never worth a move (nodes would trade a camera back and forth)
        donors = [n for n, cs in counts.items() if cs and (
            n not in share_of or size[n] - have >= 2
            or (peer[n].max_cameras is not None and size[n] > (peer[n].max_cameras or 0)))]
        if not donors:
            break
        donor = max(donors, key=lambda n: (n in peer and peer[n].draining, size[n], n))
        request.append(counts[donor].pop(0))
        size[donor] -= 1
        have += 1
    return Moves(acquire=acquire, request=tuple(request))


@dataclass(slots=True)
class ClusterView:
    """The last look at the cluster, for status and the API (which node records which camera)."""

    leases: dict[str, Lease] = field(default_factory=dict)
    peers: dict[str, Peer] = field(default_factory=dict)
    at: float = 0.0  # wall time of the look; 0: never


class LeaseKeeper:
    """Holds this node's leases: renews them, takes free cameras and handovers, gives them up.

    ``cameras()`` are the enabled camera ids of the config; ``states()`` the local supervisors' states by
    camera; ``on_change()`` is called when ``wanted()`` changed (the daemon starts and stops cameras).
    """

    def __init__(self, cfg: NodeConfig, db: Database, *, cameras: Callable[[], Sequence[str]],
                 states: Callable[[], Mapping[str, str]], on_change: Callable[[], None]) -> None:
        self.cfg = cfg
        self.db = db
        self._cameras = cameras
        self._states = states
        self._on_change = on_change
        self.held: set[str] = set()
        self.incoming: dict[str, float] = {}  # camera -> monotonic time the handover was asked for
        self.view = ClusterView()
        self.draining = False
        self.up = False
        self.key: str | None = None  # authenticates node-to-node requests (recorderd.api.peers)
        self._ticks = 0
        self.queries = 0  # statements sent, as recorderd_node_lease_queries_total (scripts/bench nodes)
        self._wake = asyncio.Event()
        metrics.NODE_CLUSTERED.set(1)
        metrics.NODE_DRAINING.set(0)

    # ------------------------------------------------------------------ public

    @property
    def me(self) -> str:
        return self.cfg.id

    def wanted(self) -> set[str]:
        """The cameras this node records: those it holds, and those it is taking over."""
        return self.held | set(self.incoming)

    def owner(self, camera_id: str) -> str | None:
        """The node recording ``camera_id`` by the last look (this node's own word first)."""
        if camera_id in self.held:
            return self.me
        lease = self.view.leases.get(camera_id)
        return lease.node if lease is not None and lease.live else None

    def recorded_by(self, camera_id: str) -> tuple[str | None, str | None]:
        """(node, state) of a camera by the last look; (None, None) when no live lease holds it."""
        lease = self.view.leases.get(camera_id)
        if lease is None or not lease.live:
            return None, None
        return lease.node, lease.state

    def peer_url(self, node: str) -> str | None:
        peer = self.view.peers.get(node)
        return peer.url if peer is not None else None

    def update_config(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self._wake.set()

    def drain(self) -> None:
        if not self.draining:
            self.draining = True
            metrics.NODE_DRAINING.set(1)
            log.info("node_draining", node=self.me, cameras=len(self.held))
            self._wake.set()

    async def drained(self, seconds: float) -> bool:
        """After ``drain()``: wait until the others hold every camera this node had (True), or give up
        after ``seconds`` or once no live peer is left to take them (False, logged)."""
        deadline = time.monotonic() + seconds
        while self.wanted() and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            if self.view.at and self.up and not any(p.alive and not p.draining and p.id != self.me
                                                    for p in self.view.peers.values()):
                log.warning("drain_no_peers", node=self.me, cameras=sorted(self.wanted()))
                return False
        if self.wanted():
            log.warning("drain_incomplete", node=self.me, cameras=sorted(self.wanted()), seconds=seconds)
            return False
        log.info("drain_done", node=self.me)
        return True

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.me, "url": self.cfg.url, "clustered": True, "draining": self.draining,
            "leases_up": self.up, "held": sorted(self.held), "incoming": sorted(self.incoming),
            "looked_at": self.view.at or None,
            "nodes": [{"id": p.id, "url": p.url, "alive": p.alive, "draining": p.draining,
                       "max_cameras": p.max_cameras,
                       "cameras": sum(1 for lease in self.view.leases.values() if lease.live and lease.node == p.id)}
                      for p in sorted(self.view.peers.values(), key=lambda p: p.id)],
            # who records the cameras this node does not, and their state by the holder's last renewal
            "elsewhere": {c: {"node": lease.node, "state": lease.state}
                          for c, lease in sorted(self.view.leases.items())
                          if lease.live and lease.node != self.me and c not in self.incoming},
        }

    async def run(self) -> None:
        """Renew every ``renew_seconds`` for as long as the daemon runs; never raises for the database."""
        await self.db.wait_up()
        while True:
            started = time.monotonic()
            try:
                await self.tick()
                pause = self.cfg.renew_seconds
            except DatabaseUnavailable as exc:
                self._set_up(False, str(exc))
                pause = min(1.0, self.cfg.renew_seconds)  # a renewal as soon as the index is back
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, pause - (time.monotonic() - started)))

    async def release(self) -> None:
        """A clean stop: give every lease back so the others take the cameras now, not at expiry."""
        try:
            async with self.db.acquire("lease") as conn:
                await conn.execute(RELEASE, self.me)
            metrics.NODE_LEASE_QUERIES.inc()
            self.queries += 1
            log.info("leases_released", node=self.me, cameras=len(self.held))
        except Exception as exc:  # they expire on their own
            log.warning("leases_release_failed", node=self.me, error=str(exc))
        self.held.clear()
        self.incoming.clear()

    # ------------------------------------------------------------------ one renewal

    async def tick(self) -> None:
        cfg = self.cfg
        states = self._states()
        cameras = set(self._cameras())
        queries = 0
        async with self.db.acquire("lease") as conn:
            if self.key is None:
                key = str(await conn.fetchval(NODE_KEY, secrets.token_urlsafe(32)))
                register_secrets([key])  # never in a log line
                self.key = key
                queries += 1
            renewed = {r[0] for r in await conn.fetch(
                RENEW, self.me, cfg.url, cfg.max_cameras, cfg.lease_seconds, self.draining,
                list(states), list(states.values()))}
            rows = await conn.fetch(LOOK)
            queries += 2
            leases = {r["id"]: Lease(r["id"], r["node"], r["live"], r["handover_to"], r["state"])
                      for r in rows if r["kind"] == "lease"}
            peers = {r["id"]: Peer(r["id"], r["live"], bool(r["draining"]), r["max_cameras"], r["url"])
                     for r in rows if r["kind"] == "node"}
            self._set_up(True)
            changed = self._fence(renewed)
            if stray := renewed - cameras:  # left the config: nobody records it
                await conn.execute(DROP, self.me, sorted(cameras))
                queries += 1
                self.held -= stray
                changed = True
            if any(lease.node == self.me and lease.handover_to is not None
                   and not (lease.handover_to in peers and peers[lease.handover_to].alive)
                   for lease in leases.values()):
                await conn.execute(CLEAR_STALE, self.me, [p.id for p in peers.values() if p.alive])
                queries += 1
            n, moved = await self._finish_handovers(conn, leases, cameras, states)
            queries += n
            changed |= moved
            for c in self.held:  # plan from the view after this renewal's takes, not the look before them
                if (lease := leases.get(c)) is not None and (lease.node != self.me or lease.handover_to):
                    leases[c] = Lease(c, self.me, True, None, lease.state)
            self._ticks += 1
            if self.draining:
                if self.incoming:
                    await conn.execute(ABANDON, self.me, sorted(self.incoming))
                    queries += 1
                    self.incoming.clear()
                    changed = True
            elif self._ticks > 1:  # the first look only registers: nodes started together see each other
                moves = plan(self.me, cameras, leases, list(peers.values()), self.incoming)
                if moves.acquire:
                    got = {r[0] for r in await conn.fetch(ACQUIRE, self.me, cfg.lease_seconds,
                                                          list(moves.acquire))}
                    queries += 1
                    if got:
                        metrics.NODE_ACQUIRED.inc(len(got))
                        log.info("leases_acquired", node=self.me, cameras=sorted(got))
                        self.held |= got
                        changed = True
                if moves.request:
                    asked = {r[0] for r in await conn.fetch(REQUEST, self.me, list(moves.request))}
                    queries += 1
                    if asked:
                        metrics.NODE_HANDOVERS.labels("requested").inc(len(asked))
                        log.info("handover_requested", node=self.me, cameras=sorted(asked),
                                 from_nodes=sorted({leases[c].node for c in asked if c in leases}))
                        now = time.monotonic()
                        self.incoming.update(dict.fromkeys(asked, now))
                        changed = True
        metrics.NODE_LEASE_QUERIES.inc(queries)
        self.queries += queries
        self.view = ClusterView(leases, peers, time.time())
        self._gauges(cameras, leases, peers)
        if changed:
            self._on_change()

    def _fence(self, renewed: set[str]) -> bool:
        """Rows this node held that are another's now: stop recording them (the new holder records)."""
        lost = self.held - renewed
        adopted = renewed - self.held  # rows of this node id from before a restart: still ours
        if lost:
            metrics.NODE_LEASES_LOST.inc(len(lost))
            log.warning("leases_lost", node=self.me, cameras=sorted(lost))
        if adopted:
            log.info("leases_adopted", node=self.me, cameras=sorted(adopted))
        self.held = set(renewed)
        for c in renewed:
            self.incoming.pop(c, None)
        return bool(lost or adopted)

    async def _finish_handovers(self, conn: Any, leases: Mapping[str, Lease], cameras: set[str],
                                states: Mapping[str, str]) -> tuple[int, bool]:
        """Take the rows of incoming cameras that record here now (or whose holder is not recording
        anyway); give up requests that went nowhere. Returns (statements sent, anything changed)."""
        take, drop = [], []
        now = time.monotonic()
        for camera, asked in list(self.incoming.items()):
            lease = leases.get(camera)
            if camera not in cameras or lease is None or lease.handover_to != self.me or not lease.live:
                drop.append(camera)  # the holder released or died, or the camera left: plan again
            elif states.get(camera) == "recording" or lease.state not in ("recording", None):
                take.append(camera)
            elif now - asked > HANDOVER_TIMEOUT:
                drop.append(camera)
        queries = 0
        if take:
            got = {r[0] for r in await conn.fetch(TAKE, self.me, self.cfg.lease_seconds, take)}
            queries += 1
            if got:
                metrics.NODE_HANDOVERS.labels("in").inc(len(got))
                log.info("handover_taken", node=self.me, cameras=sorted(got),
                         from_nodes=sorted({leases[c].node for c in got}))
            self.held |= got
            drop += [c for c in take if c not in got]
        if drop:
            abandoned = [c for c in drop if (lease := leases.get(c)) is not None and lease.handover_to == self.me]
            if abandoned:
                await conn.execute(ABANDON, self.me, abandoned)
                queries += 1
                metrics.NODE_HANDOVERS.labels("abandoned").inc(len(abandoned))
                log.warning("handover_abandoned", node=self.me, cameras=sorted(abandoned))
        for c in take + drop:
            self.incoming.pop(c, None)
        return queries, bool(take or drop)

    def _set_up(self, up: bool, reason: str = "") -> None:
        if up != self.up:
            if up:
                log.info("leases_available", node=self.me)
            else:  # keep recording everything held: only another holder's row stops a camera
                log.warning("leases_unavailable", node=self.me, error=reason, keeping=sorted(self.wanted()))
        self.up = up
        metrics.NODE_UP.set(1 if up else 0)

    def _gauges(self, cameras: set[str], leases: Mapping[str, Lease], peers: Mapping[str, Peer]) -> None:
        metrics.NODE_CAMERAS.labels("held").set(len(self.held))
        metrics.NODE_CAMERAS.labels("incoming").set(len(self.incoming))
        metrics.NODE_PEERS.set(sum(1 for p in peers.values() if p.alive))
        metrics.NODE_UNASSIGNED.set(sum(1 for c in cameras if (lease := leases.get(c)) is None or not lease.live))


def cmd_drain(config: Config, out: TextIO, err: TextIO, *, poll: float = 0.5) -> int:
    """``recorderd drain``: SIGUSR1 to the running daemon, then wait until it has handed its cameras over
    and stopped (exit 0), printing how many it still records; 1 if it does not stop in time."""
    from recorderd.statusfile import pid_alive, read_status

    data, why = read_status(config.storage.status_file)
    if data is None or why:
        print(f"recorderd drain: no running daemon ({why})", file=err)
        return 1
    pid = int(data["pid"])
    os.kill(pid, signal.SIGUSR1)
    node = data.get("node") or {}
    print(f"draining node {node.get('id', config.node.id)} (pid {pid}): its cameras move to the other nodes",
          file=out, flush=True)
    limit = config.node.drain_seconds + config.shutdown_seconds + 10
    deadline = time.monotonic() + limit
    last = None
    while pid_alive(pid):
        if time.monotonic() > deadline:
            print(f"recorderd drain: pid {pid} still running after {limit:.0f} s", file=err)
            return 1
        data, _ = read_status(config.storage.status_file)
        left = len((data or {}).get("cameras") or [])
        if left != last and data is not None:
            print(f"  {left} cameras still recorded here", file=out, flush=True)
            last = left
        time.sleep(poll)
    print("drained: the daemon stopped", file=out)
    return 0

