"""Several nodes sharing cameras by leases (recorderd/nodes.py): settle times, handovers, lease traffic.

    python benchmarks/bench_nodes.py [--cameras 1000] [--nodes 5] [--lease 4] [--segment 2] [--window 10]
                                     [--matrix-cameras 250,500,1000] [--matrix-nodes 3,5] [--dsn DSN]

The cameras are simulated: a **stand-in for FFmpeg**, no RTSP, no processes. For every camera a node
wants (``LeaseKeeper.wanted()``, synced from ``on_change``) an asyncio task plays FFmpeg's part: it
"connects" for a random 0.5-1.5 s (state ``starting``), then its state is ``recording`` and it prints one
``-segment_list_type csv`` line (``filename,start,end``, seconds from its stream start) every
``--segment`` seconds into an in-memory sink; stopped cleanly (the node stops wanting the camera) it
prints the line of its last, partial segment, as FFmpeg does on a clean stop; killed with its node it
prints nothing more. The sink parses the lines: segment lines/s cluster-wide, the longest wait for a
camera's next line (from any node), and holes in each camera's footage (the union of the lines' spans).

Every node is a real ``LeaseKeeper`` with its own ``Database`` pool (its node id), all in one process
and one event loop, against one PostgreSQL (a private cluster, tests/fixtures_pg.PgCluster, fsync off,
unless ``--dsn``). The loop's worst stall is printed so a distorted timing would show.

1. cold start of ``--nodes`` nodes (random renewal phases): time until settled, i.e. every camera has a
   live lease of a live node (the ``leases`` table, read directly), shares even (max - min <= 1), no
   handover pending, every holder's stand-in ``recording`` and no other node recording it; it must hold
   for two renewals in a row, the time printed is its first sample.
2. one node killed (its keeper task cancelled without ``release()``, its pool dropped, its stand-ins
   gone without a last line: kill -9 of the box): time until settled again; per camera the gap from the
   kill to the first ``recording`` on another node.
3. a fresh node joins: time until settled; cameras moved, cameras moved more than once (ping-pong),
   cameras without any recording node at any 0.1 s sample.
4. lease traffic in steady state (``--window`` s): statements the keepers sent (``keeper.queries``) and
   PostgreSQL's own ``pg_stat_database.xact_commit`` delta, rows the keepers' LOOK read, renewal time;
   for the main cluster after the join and for a matrix of cameras x nodes (each cold-started apart).

Exit 1 if a phase does not settle within ``--timeout`` seconds or a keeper's ``run()`` dies.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import asyncpg  # noqa: E402

from recorderd import logging as rlog  # noqa: E402
from recorderd.config import NodeConfig  # noqa: E402
from recorderd.db import Database, migrate  # noqa: E402
from recorderd.nodes import MAX_MOVES, LeaseKeeper  # noqa: E402

STARTUP = (0.5, 1.5)  # seconds the stand-in takes to "connect" before it records
SAMPLE = 0.25  # seconds between looks at the leases table while waiting for a settle
COVER_SAMPLE = 0.1  # seconds between in-memory looks at which cameras some node records
NODE_URL = "http://127.0.0.1:1"  # any url: it makes the node clustered; nobody calls it here
GAP_SLACK = 0.25  # a line may come this late (loop jitter) before a wait counts as a missed period
HOLE_MIN = 0.001  # footage holes shorter than this are float noise


class BenchError(Exception):
    pass


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# --------------------------------------------------------------------------- the segment lines


@dataclass
class Sink:
    """Where the stand-ins' csv lines go: counted, parsed, timed, by camera."""

    segment: float
    phase: str = "cold start"
    lines: int = 0
    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # camera -> (start, end) monotonic
    last: dict[str, float] = field(default_factory=dict)  # camera -> arrival of its last line
    longest: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> camera -> longest wait
    by_phase: dict[str, int] = field(default_factory=dict)

    def line(self, camera: str, origin: float, text: str) -> None:
        now = time.monotonic()
        _name, start, end = text.split(",")
        self.lines += 1
        self.by_phase[self.phase] = self.by_phase.get(self.phase, 0) + 1
        self.spans.setdefault(camera, []).append((origin + float(start), origin + float(end)))
        prev = self.last.get(camera)
        if prev is not None:
            waits = self.longest.setdefault(self.phase, {})
            waits[camera] = max(waits.get(camera, 0.0), now - prev)
        self.last[camera] = now

    def holes(self, until: float) -> list[tuple[str, float, float]]:
        """(camera, from, to) where no line covers a camera's footage, from its first line to ``until``."""
        out = []
        for camera, spans in self.spans.items():
            spans.sort()
            covered = spans[0][1]
            for start, end in spans[1:]:
                if start > until:
                    break
                if start - covered > HOLE_MIN:
                    out.append((camera, covered, start))
                covered = max(covered, end)
        return out


class StandIn:
    """FFmpeg's part for one camera on one node: start-up delay, then a csv segment-list line per segment."""

    def __init__(self, node: str, camera: str, sink: Sink, rng: random.Random,
                 recorded: dict[str, list[tuple[str, float]]]) -> None:
        self.node = node
        self.recorded = recorded
        self.camera = camera
        self.sink = sink
        self.state = "starting"
        self.origin = 0.0  # monotonic time of the stream start (time 0 of the csv lines)
        self.recording_at: float | None = None
        self._seg_start = 0.0
        self._n = 0
        self._startup = rng.uniform(*STARTUP)
        self.task = asyncio.create_task(self._run())

    def _emit(self, end: float) -> None:
        text = f"{self.camera}-{self._n:06d}.mp4,{self._seg_start - self.origin:.6f},{end - self.origin:.6f}"
        self.sink.line(self.camera, self.origin, text)
        self._n += 1
        self._seg_start = end

    async def _run(self) -> None:
        await asyncio.sleep(self._startup)
        self.origin = self._seg_start = self.recording_at = time.monotonic()
        self.state = "recording"
        self.recorded.setdefault(self.camera, []).append((self.node, self.recording_at))
        while True:
            end = self._seg_start + self.sink.segment
            await asyncio.sleep(max(0.0, end - time.monotonic()))
            self._emit(end)

    def stop(self) -> None:
        """A clean stop: the partial segment is closed and listed, then the process is gone."""
        if self.state == "recording" and not self.task.done():
            now = time.monotonic()
            if now > self._seg_start:
                self._emit(now)
        self.kill()

    def kill(self) -> None:
        self.state = "gone"
        self.task.cancel()


# --------------------------------------------------------------------------- one node


class TimedKeeper(LeaseKeeper):
    """The real LeaseKeeper; each renewal's duration and the rows its look read are noted."""

    ticks: list[tuple[float, float, int]]  # (monotonic end, seconds, rows read by LOOK)

    async def tick(self) -> None:
        t = time.monotonic()
        await super().tick()
        end = time.monotonic()
        self.ticks.append((end, end - t, len(self.view.leases) + len(self.view.peers)))


class SimNode:
    def __init__(self, node_id: str, dsn: str, cameras: Sequence[str], lease: float, sink: Sink,
                 rng: random.Random, recorded: dict[str, list[tuple[str, float]]]) -> None:
        self.id = node_id
        self.sink = sink
        self.rng = rng
        self.recorded = recorded  # camera -> (node, recording since) of every stand-in that reached recording
        self.db = Database(dsn, pool_max=2, node=node_id)
        self.standins: dict[str, StandIn] = {}
        self.keeper = TimedKeeper(NodeConfig(id=node_id, url=NODE_URL, lease_seconds=lease), self.db,
                                  cameras=lambda: cameras, states=self.states, on_change=self.sync)
        self.keeper.ticks = []
        self.task: asyncio.Task[None] | None = None
        self.alive = False

    def states(self) -> dict[str, str]:
        return {c: s.state for c, s in self.standins.items()}

    def sync(self) -> None:
        """on_change: a stand-in for every wanted camera, none for the others."""
        wanted = self.keeper.wanted()
        for camera in [c for c in self.standins if c not in wanted]:
            self.standins.pop(camera).stop()
        for camera in wanted:
            if camera not in self.standins:
                self.standins[camera] = StandIn(self.id, camera, self.sink, self.rng, self.recorded)

    def recording(self) -> set[str]:
        return {c for c, s in self.standins.items() if s.state == "recording"}

    async def connect(self) -> None:
        await self.db.connect()

    async def start(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.alive = True
        self.task = asyncio.create_task(self.keeper.run(), name=f"keeper-{self.id}")

    def kill(self) -> None:
        """kill -9: no release, no last segment lines, connections dropped."""
        self.alive = False
        if self.task is not None:
            self.task.cancel()
        for s in self.standins.values():
            s.kill()
        self.standins.clear()
        self.db.terminate()

    async def close(self) -> None:
        self.alive = False
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        for s in self.standins.values():
            s.kill()
        self.standins.clear()
        await self.db.close()


# --------------------------------------------------------------------------- the cluster


@dataclass
class Status:
    held: int  # cameras with a live lease of a live node
    counts: dict[str, int]
    recording: int  # cameras whose holder's stand-in records
    pending: int  # rows with handover_to set, plus keepers' incoming
    doubles: int  # cameras also wanted by a node that is not the holder
    holders: dict[str, str]
    detail: list[str] = field(default_factory=list)  # what is pending or doubled, for a failure message

    def settled(self, cameras: int) -> bool:
        return (self.held == cameras and self.recording == cameras and self.even
                and self.pending == 0 and self.doubles == 0)

    @property
    def even(self) -> bool:
        return bool(self.counts) and max(self.counts.values()) - min(self.counts.values()) <= 1

    def describe(self, cameras: int) -> str:
        shares = "/".join(str(n) for _, n in sorted(self.counts.items()))
        return (f"held {self.held}/{cameras}, recording {self.recording}, shares {shares}, "
                f"handovers pending {self.pending}, recorded twice {self.doubles}")

    def explain(self, cameras: int) -> str:
        return self.describe(cameras) + "".join(f"\n     {d}" for d in self.detail[:20])


class Cluster:
    def __init__(self, dsn: str, cameras: int, lease: float, sink: Sink, rng: random.Random,
                 timeout: float) -> None:
        self.dsn = dsn
        self.cameras = [f"cam-{i:04d}" for i in range(cameras)]
        self.lease = lease
        self.sink = sink
        self.rng = rng
        self.timeout = timeout
        self.nodes: dict[str, SimNode] = {}
        self.recorded: dict[str, list[tuple[str, float]]] = {}
        self.conn: asyncpg.Connection | None = None
        self.uncovered: dict[str, set[str]] = {}  # phase -> cameras no node recorded at some sample
        self.most_doubles: dict[str, int] = {}
        self.phase = ""
        self._cover_task: asyncio.Task[None] | None = None

    @property
    def renew(self) -> float:
        return self.lease / 4

    def alive(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.alive]

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.execute("TRUNCATE leases, nodes")
        self._cover_task = asyncio.create_task(self._cover())

    async def add(self, node_ids: Iterable[str], *, spread: bool = True) -> float:
        """Connect the nodes' pools (not timed), then start their keepers at random renewal phases;
        returns the monotonic start."""
        new = [SimNode(i, self.dsn, self.cameras, self.lease, self.sink, self.rng, self.recorded) for i in node_ids]
        for n in new:  # one by one: the first applies the migrations
            await n.connect()
            self.nodes[n.id] = n
        t0 = time.monotonic()
        await asyncio.gather(*(n.start(self.rng.uniform(0, self.renew) if spread else 0.0) for n in new))
        return t0

    async def close(self) -> None:
        if self._cover_task is not None:
            self._cover_task.cancel()
            await asyncio.gather(self._cover_task, return_exceptions=True)
        for n in self.nodes.values():
            await n.close()
        if self.conn is not None:
            await self.conn.close()

    def check_tasks(self) -> None:
        for n in self.alive():
            if n.task is not None and n.task.done():
                exc = n.task.exception() if not n.task.cancelled() else None
                raise BenchError(f"{n.id}: LeaseKeeper.run() ended: {type(exc).__name__}: {exc}")

    async def _cover(self) -> None:
        """Every 0.1 s: which cameras no live node records, how many two record."""
        while True:
            await asyncio.sleep(COVER_SAMPLE)
            recording: set[str] = set()
            doubles = 0
            for n in self.alive():
                rec = n.recording()
                doubles += len(rec & recording)
                recording |= rec
            if self.phase:
                self.uncovered.setdefault(self.phase, set()).update(c for c in self.cameras if c not in recording)
                self.most_doubles[self.phase] = max(self.most_doubles.get(self.phase, 0), doubles)

    async def status(self) -> Status:
        assert self.conn is not None
        rows = await self.conn.fetch("SELECT camera_id, node, expires_at > now() AS live, handover_to FROM leases")
        alive = {n.id: n for n in self.alive()}
        holders = {r["camera_id"]: r["node"] for r in rows if r["live"] and r["node"] in alive}
        counts = dict.fromkeys(alive, 0)
        for node in holders.values():
            counts[node] += 1
        recording = sum(1 for c, node in holders.items()
                        if (s := alive[node].standins.get(c)) is not None and s.state == "recording")
        pending = sum(1 for r in rows if r["handover_to"] is not None) + sum(len(n.keeper.incoming)
                                                                               for n in alive.values())
        doubles = sum(1 for n in alive.values() for c in n.standins if holders.get(c) != n.id)
        detail = [f"leases row {r['camera_id']}: node {r['node']} (live {r['live']}), handover_to {r['handover_to']}"
                  for r in rows if r["handover_to"] is not None]
        now = time.monotonic()
        detail += [f"{n.id}: incoming {c} for {now - t:.1f} s, its stand-in "
                   f"{s.state if (s := n.standins.get(c)) is not None else 'absent'}"
                   for n in alive.values() for c, t in n.keeper.incoming.items()]
        detail += [f"{n.id}: stand-in {c} ({s.state}) but the holder is {holders.get(c)}"
                   for n in alive.values() for c, s in n.standins.items() if holders.get(c) != n.id]
        return Status(len(holders), counts, recording, pending, doubles, holders, detail)

    async def settle(self, t0: float, what: str) -> tuple[float, Status, dict[str, float]]:
        """Sample until settled for two renewals in a row; (seconds from t0 to the first settled sample,
        the status then, first time each milestone was seen)."""
        first: float | None = None
        milestones: dict[str, float] = {}
        moves: dict[str, int] = {}
        last: dict[str, str] = {}
        while True:
            self.check_tasks()
            st = await self.status()
            now = time.monotonic()
            for c, node in st.holders.items():
                if c in last and last[c] != node:
                    moves[c] = moves.get(c, 0) + 1
                last[c] = node
            for name, ok in (("all held", st.held == len(self.cameras)),
                             ("all recording", st.recording == len(self.cameras)),
                             ("even", st.even and st.held == len(self.cameras))):
                if ok and name not in milestones:
                    milestones[name] = now - t0
            if st.settled(len(self.cameras)):
                first = now if first is None else first
                if now - first >= 2 * self.renew:
                    milestones["_moved_twice"] = sum(1 for v in moves.values() if v > 1)
                    return first - t0, st, milestones
            else:
                first = None
            if now - t0 > self.timeout:
                raise BenchError(f"{what}: not settled after {self.timeout:.0f} s: {st.explain(len(self.cameras))}")
            await asyncio.sleep(SAMPLE)

    async def window(self, seconds: float) -> dict[str, float]:
        """Steady state: nothing but the keepers talks to PostgreSQL for ``seconds``."""
        assert self.conn is not None
        q = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        nodes = self.alive()
        queries0 = sum(n.keeper.queries for n in nodes)
        xact0 = await self.conn.fetchval(q)
        lines0 = self.sink.lines
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        self.check_tasks()
        dt = time.monotonic() - t0
        queries = sum(n.keeper.queries for n in nodes) - queries0
        xacts = await self.conn.fetchval(q) - xact0 - 1  # less the first read of the counter
        ticks = [(d, rows) for n in nodes for end, d, rows in n.keeper.ticks if t0 <= end <= t0 + dt]
        durations = [d for d, _ in ticks]
        return {"seconds": dt, "stmt_s": queries / dt, "xact_s": xacts / dt, "ticks_s": len(ticks) / dt,
                "rows_s": sum(r for _, r in ticks) / dt, "p50": pct(durations, .5), "p99": pct(durations, .99),
                "max": max(durations, default=0.0), "lines_s": (self.sink.lines - lines0) / dt}


# --------------------------------------------------------------------------- the run


async def loop_stall(out: list[float]) -> None:
    while True:
        t = time.monotonic()
        await asyncio.sleep(0.01)
        out.append(time.monotonic() - t - 0.01)


def gaps_line(sink: Sink, phase: str) -> tuple[float, int]:
    waits = sink.longest.get(phase, {})
    late = sum(1 for w in waits.values() if w > sink.segment + GAP_SLACK)
    return max(waits.values(), default=0.0), late


async def main_cluster(args: argparse.Namespace, dsn: str, sink: Sink, rng: random.Random) -> dict[str, float]:
    cl = Cluster(dsn, args.cameras, args.lease, sink, rng, args.timeout)
    await cl.open()
    try:
        n_cam = args.cameras
        # 1. cold start
        ids = [f"node-{i + 1}" for i in range(args.nodes)]
        cl.phase = sink.phase = "cold start"
        t0 = await cl.add(ids)
        secs, st, ms = await cl.settle(t0, "cold start")
        queries = sum(n.keeper.queries for n in cl.alive())
        print(f"1. cold start, {args.nodes} nodes: settled in {secs:.1f} s "
              f"(all held {ms.get('all held', 0):.1f} s, all recording {ms.get('all recording', 0):.1f} s, "
              f"even {ms.get('even', 0):.1f} s); {st.describe(n_cam)}; "
              f"{queries} lease statements from t0", flush=True)
        await asyncio.sleep(sink.segment + 0.5)  # the lines of the settle arrive in this phase

        # steady state before anything happens: the longest wait for a line must be one segment
        cl.phase = sink.phase = "steady"
        await asyncio.sleep(max(2.0, sink.segment * 2))

        # 2. a node dies
        victim = cl.nodes[ids[len(ids) // 2]]
        st = await cl.status()
        lost = sorted(c for c, node in st.holders.items() if node == victim.id)
        cl.phase = sink.phase = "node killed"
        t_kill = time.monotonic()
        victim.kill()
        secs, st, ms = await cl.settle(t_kill, "node killed")
        gaps = []
        for c in lost:
            after = [t for node, t in cl.recorded.get(c, []) if node != victim.id and t >= t_kill - 30]
            gaps.append(max(0.0, min(after) - t_kill) if after else float("inf"))
        await asyncio.sleep(sink.segment + 0.5)
        others = sorted(cl.uncovered.get("node killed", set()) - set(lost))
        print(f"2. {victim.id} killed (no release; it held {len(lost)} cameras): settled in {secs:.1f} s "
              f"(all held {ms.get('all held', 0):.1f} s, all recording {ms.get('all recording', 0):.1f} s); "
              f"{st.describe(n_cam)}", flush=True)
        print(f"   per camera, kill -> recording on another node: p50 {pct(gaps, .5):.1f} s, "
              f"max {max(gaps, default=0):.1f} s (its lease is {args.lease:g} s); cameras of other nodes "
              f"without a recording node meanwhile: {len(others)}", flush=True)

        # 3. a node joins
        joiner = f"node-{args.nodes + 1}"
        before = dict(st.holders)
        cl.phase = sink.phase = "node joined"
        t_join = await cl.add([joiner], spread=False)
        secs, st, ms = await cl.settle(t_join, "node joined")
        moved = sum(1 for c, node in st.holders.items() if before.get(c) != node)
        sideways = sum(1 for c, node in st.holders.items() if before.get(c) != node and node != joiner)
        await asyncio.sleep(sink.segment + 0.5)
        uncovered = cl.uncovered.get("node joined", set())
        print(f"3. {joiner} joins: settled in {secs:.1f} s; {moved} cameras moved (make-before-break; "
              f"{sideways} of them between the old nodes), {int(ms['_moved_twice'])} moved more than once; "
              f"{st.describe(n_cam)}; cameras without a "
              f"recording node at some {COVER_SAMPLE:g} s sample: {len(uncovered)}; most cameras recorded by "
              f"two nodes at once: {cl.most_doubles.get('node joined', 0)}", flush=True)

        # 4. steady-state traffic of this cluster
        cl.phase = sink.phase = "steady after"
        w = await cl.window(args.window)
        w["settle"] = float("nan")
        await asyncio.sleep(0.5)

        # the lines
        until = time.monotonic() - sink.segment - 1.0
        holes = sink.holes(until)
        print(f"segment lines (csv, made by the stand-ins, counted here): {sink.lines:,} lines, "
              f"{w['lines_s']:,.0f} lines/s cluster-wide in steady state "
              f"({n_cam / sink.segment:,.0f}/s expected: {n_cam} cameras / {sink.segment:g} s)")
        for phase in ("steady", "node joined", "steady after", "node killed"):
            longest, late = gaps_line(sink, phase)
            print(f"   {phase:<13} longest wait for a camera's next line (any node): {longest:5.2f} s; "
                  f"cameras that went more than a segment ({sink.segment:g} s + {GAP_SLACK:g}) without a line: {late}")
        in_kill = [h for h in holes if h[1] >= t_kill - sink.segment - 0.5 and h[2] <= t_join]
        other = [h for h in holes if h not in in_kill]
        print(f"   footage holes (no line's span covers them) after each camera's first line: {len(in_kill)} "
              f"around the kill (all the killed node's cameras: {sorted({h[0] for h in in_kill}) == lost}), "
              f"longest {max((h[2] - h[1] for h in in_kill), default=0):.1f} s; elsewhere {len(other)}"
              + (f", longest {max(h[2] - h[1] for h in other):.2f} s" if other else ""), flush=True)
        return w
    finally:
        await cl.close()


async def matrix_cell(args: argparse.Namespace, dsn: str, cameras: int, nodes: int, rng: random.Random
                      ) -> dict[str, float]:
    sink = Sink(args.segment)
    cl = Cluster(dsn, cameras, args.lease, sink, rng, args.timeout)
    await cl.open()
    try:
        t0 = await cl.add([f"m{nodes}-{i + 1}" for i in range(nodes)])
        secs, _st, _ms = await cl.settle(t0, f"{cameras} cameras on {nodes} nodes")
        w = await cl.window(args.window)
        w["settle"] = secs
        return w
    finally:
        await cl.close()


def print_traffic(rows: list[tuple[int, int, dict[str, float]]], renew: float, window: float) -> None:
    print(f"\n4. lease traffic in steady state ({window:g} s windows; renewal every {renew:g} s: "
          "2 statements per node per renewal expected, RENEW + LOOK)")
    print("   cameras  nodes  cold settle  keeper stmt/s  per node  pg xact/s  LOOK rows/s  "
          "renewal p50/p99/max ms  lines/s")
    for cams, nodes, w in rows:
        settle = "  (main)" if w["settle"] != w["settle"] else f"{w['settle']:7.1f} s"
        print(f"   {cams:7d}  {nodes:5d}  {settle:>11}  {w['stmt_s']:13.1f}  {w['stmt_s'] / nodes:8.2f}  "
              f"{w['xact_s']:9.1f}  {w['rows_s']:11,.0f}  {w['p50'] * 1000:8.1f}/{w['p99'] * 1000:.1f}/"
              f"{w['max'] * 1000:.1f}   {w['lines_s']:6,.0f}")


async def bench(args: argparse.Namespace, dsn: str) -> int:
    rng = random.Random(args.seed)
    stalls: list[float] = []
    stall_task = asyncio.create_task(loop_stall(stalls))
    t_start = time.monotonic()
    await migrate(dsn, node="bench")
    print(f"recorderd nodes bench: {args.cameras:,} SIMULATED cameras (a stand-in for FFmpeg: an asyncio task per "
          f"camera a node wants, 'recording' after {STARTUP[0]:g}-{STARTUP[1]:g} s, one csv segment-list line "
          f"per {args.segment:g} s segment; no RTSP, no processes)")
    print(f"  {args.nodes} nodes = {args.nodes} real LeaseKeepers, each its own asyncpg pool, all in ONE process "
          f"and one event loop; one PostgreSQL; lease {args.lease:g} s (renew every {args.lease / 4:g} s), "
          f"at most {MAX_MOVES} cameras asked for per node per renewal; settled = every camera held by one live "
          f"node (leases table), shares within 1, holder recording, no handover pending, for 2 renewals",
          flush=True)
    code = 0
    try:
        rows: list[tuple[int, int, dict[str, float]]] = []
        main_w = await main_cluster(args, dsn, Sink(args.segment), rng)
        for nodes in args.matrix_nodes:
            for cams in args.matrix_cameras:
                if (cams, nodes) == (args.cameras, args.nodes):
                    rows.append((cams, nodes, main_w))
                else:
                    rows.append((cams, nodes, await matrix_cell(args, dsn, cams, nodes, rng)))
        if (args.cameras, args.nodes) not in {(c, n) for c, n, _ in rows}:
            rows.append((args.cameras, args.nodes, main_w))
        print_traffic(rows, args.lease / 4, args.window)
        print("   (main): the cluster of 1.-3. after the join (its cold start is 1.). pg xact/s: every transaction "
              "in the database (PostgreSQL flushes a backend's counters at most once a second); one more per "
              "renewal than the keepers count is asyncpg's connection reset when db.acquire() gives it back")
    except BenchError as exc:
        print(f"FAILED: {exc}", flush=True)
        code = 1
    stall_task.cancel()
    print(f"\nevent loop: worst stall {max(stalls, default=0) * 1000:.0f} ms, p99 {pct(stalls, .99) * 1000:.1f} ms "
          f"(10 ms sampler, whole run); bench took {time.monotonic() - t_start:.0f} s")
    return code


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cameras", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--lease", type=float, default=4.0, help="lease seconds (renewal every lease/4)")
    p.add_argument("--segment", type=float, default=2.0, help="seconds per simulated segment")
    p.add_argument("--window", type=float, default=10.0, help="seconds of each steady-state traffic window")
    p.add_argument("--matrix-cameras", type=ints, default=[250, 500, 1000], help="e.g. 250,500,1000; empty: none")
    p.add_argument("--matrix-nodes", type=ints, default=[3, 5], help="e.g. 3,5; empty: none")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds a phase may take to settle")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dsn", help="PostgreSQL to use (its leases and nodes tables are emptied); "
                                 "default: a private cluster")
    args = p.parse_args()
    if args.nodes < 2:
        p.error("--nodes must be at least 2 (one is killed)")
    rlog.configure("error")  # leases_lost and handover warnings are what this bench provokes
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    if args.dsn:
        return asyncio.run(bench(args, args.dsn))
    from fixtures_pg import PgCluster
    with PgCluster() as cluster:
        dsn = cluster.create_database("bench_nodes")
        return asyncio.run(bench(args, dsn))


if __name__ == "__main__":
    raise SystemExit(main())
