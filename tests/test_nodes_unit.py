"""recorderd.nodes without a database: shares, plan, the rendezvous order, a convergence simulation;
and the ``node:`` section of the config."""

from __future__ import annotations

import math
import random
import re
import textwrap
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

import pytest
import yaml

from recorderd import metrics, nodes
from recorderd.config import ConfigError, NodeConfig, default_node_id, parse_config, parse_text
from recorderd.db import Database
from recorderd.nodes import MAX_MOVES, Lease, LeaseKeeper, Moves, Peer, _score, plan, shares

# ---------------------------------------------------------------------------------------------- helpers


def cams(n: int) -> list[str]:
    return [f"cam{i:04d}" for i in range(n)]


def live(*ids: str, draining: Sequence[str] = (), caps: Mapping[str, int | None] | None = None) -> list[Peer]:
    caps = caps or {}
    return [Peer(i, True, i in draining, caps.get(i)) for i in ids]


def held_by(assign: Mapping[str, Sequence[str]], *, pending: Mapping[str, str] | None = None) -> dict[str, Lease]:
    """Live leases: ``assign`` node -> its cameras; ``pending`` camera -> the node it is being handed to."""
    pending = pending or {}
    return {c: Lease(c, n, True, pending.get(c)) for n, cs in assign.items() for c in cs}


def owner_of(leases: Mapping[str, Lease], requested: Sequence[str]) -> list[str]:
    return [leases[c].node for c in requested]


def counts(leases: Mapping[str, Lease]) -> Counter[str]:
    return Counter(lease.node for lease in leases.values() if lease.live)


# ---------------------------------------------------------------------------------------------- _score


def test_score_is_a_stable_per_node_order() -> None:
    assert _score("a", "cam1") == _score("a", "cam1")
    assert len(_score("a", "cam1")) == 8
    assert _score("a", "cam1") != _score("b", "cam1")
    # the separator: ("ab", "c") and ("a", "bc") are different pairs
    assert _score("ab", "c") != _score("a", "bc")
    order_a = sorted(cams(100), key=lambda c: _score("a", c))
    order_b = sorted(cams(100), key=lambda c: _score("b", c))
    assert order_a != order_b
    assert len(set(order_a[:10]) & set(order_b[:10])) < 5  # two nodes' favourites are mostly different


# ---------------------------------------------------------------------------------------------- shares


def test_shares_even_split() -> None:
    assert shares(6, live("a", "b", "c")) == {"a": 2, "b": 2, "c": 2}


def test_shares_round_up_and_cover_the_cameras() -> None:
    got = shares(7, live("a", "b", "c"))
    assert set(got) == {"a", "b", "c"}
    assert max(got.values()) == math.ceil(7 / 3) == 3
    assert sum(got.values()) >= 7
    assert min(got.values()) >= 7 // 3  # nobody is left below the even split


def test_shares_dead_and_draining_peers_get_nothing() -> None:
    peers = [Peer("a", True), Peer("b", False), Peer("c", True, draining=True), Peer("d", True)]
    got = shares(6, peers)
    assert got.get("b", 0) == 0
    assert got.get("c", 0) == 0
    assert got["a"] == got["d"] == 3  # the live, undrained nodes cover everything between them


def test_shares_cap_water_fills_the_rest() -> None:
    assert shares(6, live("a", "b", caps={"a": 1})) == {"a": 1, "b": 5}
    # the cap is below the even share whatever the id order
    assert shares(6, live("a", "b", caps={"b": 1})) == {"a": 5, "b": 1}
    # a cap above the even share does not bind
    assert shares(6, live("a", "b", caps={"a": 100})) == {"a": 3, "b": 3}


def test_shares_cap_zero() -> None:
    assert shares(6, live("a", "b", caps={"a": 0})) == {"a": 0, "b": 6}
    assert shares(6, live("a", "b", caps={"a": 0, "b": 0})) == {"a": 0, "b": 0}


def test_shares_no_cameras_no_nodes() -> None:
    assert shares(0, live("a", "b")) == {"a": 0, "b": 0}
    assert shares(5, []) == {}
    assert shares(5, [Peer("a", False)]) == {}


def test_shares_properties_random() -> None:
    rng = random.Random(7)
    for _ in range(300):
        n = rng.randrange(0, 60)
        peers = [Peer(f"n{i}", rng.random() > 0.2, rng.random() < 0.15,
                      rng.choice([None, None, None, 0, 1, 3, 10, 50])) for i in range(rng.randrange(1, 7))]
        got = shares(n, peers)
        active = [p for p in peers if p.alive and not p.draining]
        assert set(got) == {p.id for p in active}
        room = sum(n if p.max_cameras is None else min(n, p.max_cameras) for p in active)
        assert sum(got.values()) >= min(n, room), (n, peers, got)  # covers what the caps allow
        for p in active:
            assert 0 <= got[p.id] <= (p.max_cameras if p.max_cameras is not None else n)
            assert got[p.id] <= math.ceil(n / len(active)) or p.max_cameras is not None or any(
                q.max_cameras is not None for q in active)
        uncapped = [got[p.id] for p in active if p.max_cameras is None]
        if uncapped:
            assert max(uncapped) - min(uncapped) <= 1  # uncapped nodes split evenly


# ---------------------------------------------------------------------------------------------- plan: who plans


@pytest.mark.parametrize("peers", [
    pytest.param(live("b"), id="not-registered"),
    pytest.param([Peer("a", False), Peer("b", True)], id="not-alive"),
    pytest.param([Peer("a", True, draining=True), Peer("b", True)], id="draining"),
])
def test_plan_nothing_for_a_node_that_should_not_take(peers: list[Peer]) -> None:
    # free cameras and a full donor: a planning node would take some
    leases = held_by({"b": cams(10)[:8]})
    assert plan("a", cams(10), leases, peers) == Moves()


# ---------------------------------------------------------------------------------------------- plan: free cameras


def test_plan_acquires_free_cameras_up_to_the_share() -> None:
    moves = plan("a", cams(9), {}, live("a", "b", "c"))
    assert len(moves.acquire) == 3
    assert set(moves.acquire) <= set(cams(9))
    assert len(set(moves.acquire)) == 3
    assert moves.request == ()


def test_plan_acquires_in_rendezvous_order() -> None:
    moves = plan("a", cams(30), {}, live("a", "b", "c"))
    best = sorted(cams(30), key=lambda c: _score("a", c))[:10]
    assert list(moves.acquire) == best


def test_plan_expired_leases_are_free_live_ones_are_not() -> None:
    everything = cams(6)
    leases = {c: Lease(c, "z", False) for c in everything[:4]}  # a dead node's rows, expired
    leases[everything[4]] = Lease(everything[4], "b", True)
    moves = plan("a", everything, leases, live("a", "b", "c"))
    assert len(moves.acquire) == 2
    assert everything[4] not in moves.acquire
    assert set(moves.acquire) <= set(everything[:4]) | {everything[5]}


def test_plan_counts_what_it_holds() -> None:
    everything = cams(9)
    leases = held_by({"a": everything[:2]})
    moves = plan("a", everything, leases, live("a", "b", "c"))
    assert len(moves.acquire) == 1  # share 3, holds 2
    assert not set(moves.acquire) & set(everything[:2])
    # at its share: nothing more, however many cameras are free
    leases = held_by({"a": everything[:3]})
    assert plan("a", everything, leases, live("a", "b", "c")) == Moves()


def test_plan_free_cameras_are_taken_up_to_the_share_at_once() -> None:
    # the limit paces handovers of recording cameras; a free camera (a dead node's) is footage nobody
    # records, so a node takes its whole share of them in one renewal
    moves = plan("a", cams(100), {}, live("a", "b"), limit=5)
    assert len(moves.acquire) == 50 and moves.request == ()
    assert len(plan("a", cams(100), {}, live("a", "b"), limit=0).acquire) == 50


def test_plan_duplicate_camera_ids_count_once() -> None:
    moves = plan("a", cams(4) * 3, {}, live("a", "b"))
    assert len(moves.acquire) == 2
    assert len(set(moves.acquire)) == 2


def test_plan_two_nodes_prefer_different_free_cameras() -> None:
    everything = cams(1000)
    ids = [f"node-{i}" for i in range(5)]
    peers = live(*ids)
    # each node's first claims (its acquire list is in its own preference order)
    firsts = {n: set(plan(n, everything, {}, peers).acquire[:MAX_MOVES]) for n in ids}
    assert all(len(s) == MAX_MOVES for s in firsts.values())
    pairs = [(x, y) for i, x in enumerate(ids) for y in ids[i + 1:]]
    collisions = sum(len(firsts[x] & firsts[y]) for x, y in pairs)
    # one common order would collide on all 16 for every pair (160); independent picks ~0.26 per pair
    assert collisions <= 6
    # the whole share: the picks are independent, not a partition: overlap is about 200*200/1000 = 40 a pair
    whole = {n: set(plan(n, everything, {}, peers, limit=1000).acquire) for n in ids}
    assert all(len(s) == 200 for s in whole.values())
    overlaps = [len(whole[x] & whole[y]) for x, y in pairs]
    assert all(10 < o < 80 for o in overlaps), overlaps  # small, but not zero by construction


# ---------------------------------------------------------------------------------------------- plan: handovers


def test_plan_joining_node_requests_from_each_full_node() -> None:
    everything = cams(6)
    leases = held_by({"a": everything[:3], "b": everything[3:]})
    moves = plan("c", everything, leases, live("a", "b", "c"))
    assert moves.acquire == ()
    assert len(moves.request) == 2
    assert sorted(owner_of(leases, moves.request)) == ["a", "b"]  # 3,3,0 -> 2,2,2


def test_plan_requests_from_the_fullest_donor() -> None:
    everything = cams(6)
    leases = held_by({"a": everything[:4], "b": everything[4:]})
    moves = plan("c", everything, leases, live("a", "b", "c"))
    assert owner_of(leases, moves.request) == ["a", "a"]  # 4,2,0 -> 2,2,2


def test_plan_request_respects_limit_with_acquire() -> None:
    everything = cams(12)
    leases = held_by({"a": everything[:10]})  # two free
    peers = live("a", "c")
    moves = plan("c", everything, leases, peers, limit=3)
    assert len(moves.acquire) == 2
    assert len(moves.request) == 3  # the limit is on handovers only
    moves = plan("c", everything, leases, peers)
    assert len(moves.acquire) == 2
    assert len(moves.request) == 4  # 10,0 (+2 free) -> 6,6
    assert set(owner_of(leases, moves.request)) == {"a"}


def test_plan_no_request_for_a_difference_of_one() -> None:
    everything = cams(7)
    leases = held_by({"a": everything[:3], "b": everything[3:]})
    peers = live("a", "b")
    assert shares(7, peers)["a"] == 4  # a is below its share, still one camera is not worth a move
    assert plan("a", everything, leases, peers) == Moves()
    assert plan("b", everything, leases, peers) == Moves()


def apply(me: str, moves: Moves, leases: dict[str, Lease]) -> dict[str, Lease]:
    """The state once ``me`` got everything it asked for (acquired and handed over)."""
    out = dict(leases)
    for c in (*moves.acquire, *moves.request):
        out[c] = Lease(c, me, True)
    return out


def test_plan_no_ping_pong_after_a_handover() -> None:
    everything = cams(6)
    leases = held_by({"a": everything[:3], "b": everything[3:]})
    peers = live("a", "b", "c")
    moves = plan("c", everything, leases, peers)
    after = apply("c", moves, leases)
    assert counts(after) == {"a": 2, "b": 2, "c": 2}
    for node in ("a", "b", "c"):
        assert plan(node, everything, after, peers) == Moves(), node


def test_plan_donor_never_asks_back_random() -> None:
    """From any state, once a node got what it asked for, no donor of it wants anything of it back."""
    rng = random.Random(11)
    for _ in range(150):
        ids = [f"n{i}" for i in range(rng.randrange(2, 6))]
        everything = cams(rng.randrange(1, 40))
        leases = {c: Lease(c, rng.choice(ids), True) for c in everything}
        peers = live(*ids)
        me = rng.choice(ids)
        moves = plan(me, everything, leases, peers, limit=1000)
        after = apply(me, moves, leases)
        donors = {leases[c].node for c in moves.request}
        for d in donors:
            back = plan(d, everything, after, peers, limit=1000)
            assert not any(after[c].node == me for c in back.request), (leases, moves, back)


def test_plan_balanced_states_are_stable_random() -> None:
    """Every camera held, counts within one of each other: nobody moves anything (no ping-pong)."""
    rng = random.Random(5)
    for _ in range(200):
        k = rng.randrange(1, 7)
        ids = [f"n{i}" for i in range(k)]
        n = rng.randrange(0, 50)
        q, r = divmod(n, k)
        sizes = [q + 1] * r + [q] * (k - r)
        rng.shuffle(sizes)
        everything = cams(n)
        order = everything[:]
        rng.shuffle(order)
        assign: dict[str, list[str]] = {}
        for node, size in zip(ids, sizes, strict=True):
            assign[node], order = order[:size], order[size:]
        leases = held_by(assign)
        for me in ids:
            assert plan(me, everything, leases, live(*ids), limit=1000) == Moves(), (assign, me)


def test_plan_draining_donor_gives_everything() -> None:
    everything = cams(4)
    leases = held_by({"a": everything[:2], "b": everything[2:]})
    peers = live("a", "b", draining=["a"])
    moves = plan("b", everything, leases, peers)
    assert sorted(moves.request) == everything[:2]  # equal counts, and still: a drains


def test_plan_draining_donor_first() -> None:
    everything = cams(7)
    leases = held_by({"a": everything[:2], "b": everything[2:3], "c": everything[3:]})  # 2, 1, 4
    peers = live("a", "b", "c", draining=["a"])
    moves = plan("b", everything, leases, peers)
    assert owner_of(leases, moves.request) == ["a", "a"]  # not c, although c holds more


def test_plan_donor_that_is_dead_or_unknown_gives_everything() -> None:
    everything = cams(4)
    leases = held_by({"a": everything[:2], "b": everything[2:]})
    for peers in ([Peer("a", False), Peer("b", True)], [Peer("b", True)]):
        moves = plan("b", everything, leases, peers)
        assert sorted(moves.request) == everything[:2]  # its rows are live yet, its node is gone


@pytest.mark.parametrize("cap", [0, 1])
def test_plan_node_over_its_cap_gives_the_excess(cap: int) -> None:
    everything = cams(6)
    leases = held_by({"a": everything[:3], "b": everything[3:]})
    peers = live("a", "b", caps={"a": cap})
    assert shares(6, peers) == {"a": cap, "b": 6 - cap}
    moves = plan("b", everything, leases, peers)
    assert len(moves.request) == 3 - cap  # b's share leaves a only its cap


def test_plan_never_requests_a_camera_already_handed_over() -> None:
    everything = cams(6)
    # a: 4 cameras, 2 of them being handed to b already
    leases = held_by({"a": everything[:4], "b": everything[4:5]}, pending={everything[0]: "b", everything[1]: "b"})
    moves = plan("c", everything, leases, live("a", "b", "c"))
    assert not set(moves.request) & {everything[0], everything[1]}
    assert set(moves.request) <= {everything[2], everything[3]}


def test_plan_cameras_in_handover_count_to_their_donor() -> None:
    everything = cams(6)
    # a: 3 (one of them going to b), b: 2, c: 1. Counted as a's, a still holds two more than c
    leases = held_by({"a": everything[:3], "b": everything[3:5], "c": everything[5:]},
                     pending={everything[0]: "b"})
    moves = plan("c", everything, leases, live("a", "b", "c"))
    assert len(moves.request) == 1
    assert owner_of(leases, moves.request) == ["a"]
    assert moves.request[0] != everything[0]


def test_plan_incoming_counts_toward_own_total() -> None:
    everything = cams(6)
    # a: 4, two of them being handed to c; b: 2
    leases = held_by({"a": everything[:4], "b": everything[4:]}, pending={everything[0]: "c", everything[1]: "c"})
    peers = live("a", "b", "c")
    assert plan("c", everything, leases, peers, incoming=everything[:2]) == Moves()
    # incoming with free cameras about: only the rest of the share is acquired, never the incoming one
    leases = held_by({"a": everything[:2]}, pending={everything[0]: "c"})
    moves = plan("c", everything, leases, peers, incoming=[everything[0]])
    assert len(moves.acquire) == 1
    assert everything[0] not in moves.acquire


# ---------------------------------------------------------------------------------------------- simulation


@dataclass
class Sim:
    """The lease table and the nodes, applying each node's plan as LeaseKeeper does: one look for all the
    nodes of a round, then claims in turn (an acquire wins only on a free/expired row, a request only on a
    live row with no handover), and a requested camera is taken ``delay`` rounds later (FFmpeg started)."""

    cameras: list[str]
    limit: int = MAX_MOVES
    delay: int = 1
    peers: dict[str, Peer] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)
    incoming: dict[str, dict[str, int]] = field(default_factory=dict)  # node -> camera -> round asked
    rounds: int = 0
    acquired: int = 0
    taken: int = 0

    def add(self, node: str) -> None:
        self.peers[node] = Peer(node, True)
        self.incoming[node] = {}

    def kill(self, node: str) -> None:
        """The node stops renewing: its node row and its leases run out."""
        self.peers[node] = Peer(node, False)
        self.incoming[node] = {}
        for c, lease in self.leases.items():
            if lease.node == node:
                self.leases[c] = replace(lease, live=False)
            elif lease.handover_to == node:  # the holder clears requests of a dead node (CLEAR_STALE)
                self.leases[c] = replace(lease, handover_to=None)

    def alive(self) -> list[str]:
        return sorted(n for n, p in self.peers.items() if p.alive)

    def step(self) -> int:
        """One round; returns how many rows changed."""
        self.rounds += 1
        changed = 0
        order = self.alive()
        for n in order:  # take what was asked for `delay` rounds ago and records here by now
            for c, asked in list(self.incoming[n].items()):
                if self.rounds - asked >= self.delay:
                    lease = self.leases.get(c)
                    if lease is not None and lease.live and lease.handover_to == n:
                        self.leases[c] = Lease(c, n, True)
                        self.taken += 1
                        changed += 1
                    del self.incoming[n][c]
        view = dict(self.leases)
        peers = list(self.peers.values())
        plans = {n: plan(n, self.cameras, view, peers, self.incoming[n], limit=self.limit) for n in order}
        shift = self.rounds % len(order)  # who wins the races changes from round to round
        for n in order[shift:] + order[:shift]:
            for c in plans[n].acquire:
                lease = self.leases.get(c)
                if lease is None or not lease.live:
                    self.leases[c] = Lease(c, n, True)
                    self.acquired += 1
                    changed += 1
            for c in plans[n].request:
                lease = self.leases.get(c)
                if lease is not None and lease.live and lease.node != n and lease.handover_to is None:
                    self.leases[c] = replace(lease, handover_to=n)
                    self.incoming[n][c] = self.rounds
                    changed += 1
        return changed

    def check_invariants(self) -> None:
        for n, inc in self.incoming.items():
            for c in inc:  # a camera two nodes record is one handover, never two nodes' own
                assert self.leases[c].handover_to == n and self.leases[c].node != n

    def settled(self) -> bool:
        active = [n for n in self.alive() if not self.peers[n].draining]
        for c in self.cameras:
            lease = self.leases.get(c)
            if lease is None or not lease.live or lease.node not in active or lease.handover_to is not None:
                return False
        if any(self.incoming[n] for n in active):
            return False
        held = Counter(self.leases[c].node for c in self.cameras)
        return max(held[n] for n in active) - min(held[n] for n in active) <= 1

    def run(self, max_rounds: int) -> int:
        """Rounds until every camera is held by one live node, evenly; then one round changes nothing."""
        for i in range(1, max_rounds + 1):
            self.step()
            self.check_invariants()
            if self.settled():
                assert self.step() == 0, "a settled cluster moved again"
                return i
        raise AssertionError(f"not settled after {max_rounds} rounds: "
                             f"{Counter(lease.node for lease in self.leases.values() if lease.live)}")


def rounds_for(cameras: int, limit: int) -> int:
    """A generous bound: every camera moved once, ``limit`` per node and round, plus slack."""
    return math.ceil(cameras / limit) + 10


@pytest.mark.parametrize("delay", [1, 2])
def test_simulation_converges(delay: int) -> None:
    n_cams = 1000
    sim = Sim(cams(n_cams), delay=delay)
    for i in range(5):
        sim.add(f"node-{i}")
    # start: everything free
    sim.run(rounds_for(n_cams // 5, MAX_MOVES))
    assert sim.acquired == n_cams  # every camera acquired once, none taken twice
    assert sim.taken == 0
    assert sorted(counts(sim.leases).values()) == [200] * 5

    # one node dies: its 200 rows run out, the other four acquire them
    sim.kill("node-2")
    acquired = sim.acquired
    sim.run(rounds_for(200 // 4, MAX_MOVES))
    assert sim.acquired - acquired == 200
    assert set(counts(sim.leases)) == {"node-0", "node-1", "node-3", "node-4"}
    assert sorted(counts(sim.leases).values()) == [250] * 4

    # a node joins: it gets a fifth, make-before-break, taking cameras from the full nodes
    sim.add("node-5")
    taken = sim.taken
    sim.run(rounds_for(200, MAX_MOVES))
    final = counts(sim.leases)
    assert sum(final.values()) == n_cams
    assert sorted(final.values()) == [200] * 5
    # hardly more moves than the 200 the joiner needs: no camera went back and forth
    assert 200 <= sim.taken - taken <= 210


def test_simulation_uneven_counts_and_drain() -> None:
    sim = Sim(cams(103), limit=8)
    for i in range(4):
        sim.add(f"n{i}")
    sim.run(rounds_for(103 // 4, 8))
    assert sorted(counts(sim.leases).values()) == [25, 26, 26, 26]
    # n1 drains: the others take all its cameras; it plans nothing meanwhile
    sim.peers["n1"] = replace(sim.peers["n1"], draining=True)
    sim.run(rounds_for(26, 8))
    final = counts(sim.leases)
    assert final.get("n1", 0) == 0
    assert sorted(final.values()) == [34, 34, 35]


# ---------------------------------------------------------------------------------------------- LeaseKeeper.tick


@dataclass
class Row:
    node: str
    live: bool = True
    handover_to: str | None = None
    state: str | None = None


class FakeIndex:
    """The leases and nodes tables, answering LeaseKeeper's statements by their meaning (no SQL)."""

    def __init__(self) -> None:
        self.leases: dict[str, Row] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.key = "cluster-key"

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        if sql is nodes.RENEW:
            me, url, cap, _lease, draining, states, values = args
            self.nodes[me] = {"url": url, "max_cameras": cap, "draining": draining, "live": True}
            mine = [c for c, r in self.leases.items() if r.node == me]
            for c in mine:
                self.leases[c].live = True
                if c in states:
                    self.leases[c].state = values[states.index(c)]
            return [(c,) for c in mine]
        if sql is nodes.LOOK:
            return ([{"kind": "lease", "id": c, "node": r.node, "live": r.live, "handover_to": r.handover_to,
                      "state": r.state, "url": None, "max_cameras": None, "draining": None}
                     for c, r in self.leases.items()]
                    + [{"kind": "node", "id": n, "node": None, "live": d["live"], "handover_to": None,
                        "state": None, "url": d["url"], "max_cameras": d["max_cameras"], "draining": d["draining"]}
                       for n, d in self.nodes.items()])
        if sql is nodes.ACQUIRE:
            me, _lease, wanted = args
            got = [c for c in wanted if c not in self.leases or not self.leases[c].live]
            for c in got:
                self.leases[c] = Row(me)
            return [(c,) for c in got]
        if sql is nodes.REQUEST:
            me, wanted = args
            got = [c for c in wanted if (r := self.leases.get(c)) is not None and r.node != me
                   and r.handover_to is None and r.live]
            for c in got:
                self.leases[c].handover_to = me
            return [(c,) for c in got]
        if sql is nodes.TAKE:
            me, _lease, wanted = args
            got = [c for c in wanted if (r := self.leases.get(c)) is not None and r.handover_to == me]
            for c in got:
                self.leases[c] = Row(me)
            return [(c,) for c in got]
        raise AssertionError(f"unexpected fetch: {sql}")

    async def fetchval(self, sql: str, *args: Any) -> Any:
        if sql == getattr(nodes, "NODE_KEY", None):  # the cluster key: made by the first node
            return self.key
        raise AssertionError(f"unexpected fetchval: {sql}")

    async def execute(self, sql: str, *args: Any) -> str:
        if sql is nodes.ABANDON:
            me, wanted = args
            for c in wanted:
                if (r := self.leases.get(c)) is not None and r.handover_to == me:
                    r.handover_to = None
            return "UPDATE"
        raise AssertionError(f"unexpected execute: {sql}")

    @asynccontextmanager
    async def acquire(self, op: str = "query") -> AsyncIterator[FakeIndex]:
        yield self


@pytest.fixture
def node_metrics() -> Iterator[None]:
    """LeaseKeeper sets process-wide gauges: put them back for the tests that follow."""
    yield
    for g in (metrics.NODE_CLUSTERED, metrics.NODE_DRAINING, metrics.NODE_UP, metrics.NODE_PEERS,
              metrics.NODE_UNASSIGNED):
        g.set(0)
    for label in ("held", "incoming"):
        metrics.NODE_CAMERAS.labels(label).set(0)


def keeper_joining(index: FakeIndex, everything: list[str], states: dict[str, str]) -> LeaseKeeper:
    for node, cs in (("a", everything[:3]), ("b", everything[3:])):
        index.nodes[node] = {"url": f"http://{node}:9108", "max_cameras": None, "draining": False, "live": True}
        for c in cs:
            index.leases[c] = Row(node, state="recording")
    return LeaseKeeper(NodeConfig("c", url="http://c:9108"), cast(Database, index),
                       cameras=lambda: everything, states=lambda: states, on_change=lambda: None)


async def test_tick_joining_node_requests_then_takes(node_metrics: None) -> None:
    index, everything = FakeIndex(), cams(6)
    states: dict[str, str] = {}
    keeper = keeper_joining(index, everything, states)
    await keeper.tick()  # the first look only registers
    assert not keeper.incoming and not keeper.held
    await keeper.tick()
    assert len(keeper.incoming) == 2
    assert sorted(index.leases[c].node for c in keeper.incoming) == ["a", "b"]
    assert all(index.leases[c].handover_to == "c" for c in keeper.incoming)
    asked = set(keeper.incoming)
    states.update(dict.fromkeys(asked, "recording"))  # FFmpeg records here too now
    await keeper.tick()
    assert keeper.held >= asked
    assert all(index.leases[c].node == "c" and index.leases[c].handover_to is None for c in asked)


async def test_tick_takes_then_asks_for_no_more(node_metrics: None) -> None:
    index, everything = FakeIndex(), cams(6)
    states: dict[str, str] = {}
    keeper = keeper_joining(index, everything, states)
    await keeper.tick()
    await keeper.tick()
    states.update(dict.fromkeys(keeper.incoming, "recording"))
    await keeper.tick()  # takes its two: 2, 2, 2 is even
    pending = sorted(c for c, r in index.leases.items() if r.handover_to == "c")
    assert pending == [], f"asked for {pending} on top of the 2 it holds of 6 cameras over 3 nodes"
    assert Counter(r.node for r in index.leases.values()) == {"a": 2, "b": 2, "c": 2}


# ---------------------------------------------------------------------------------------------- SQL text


def returning_qualifiers_undeclared(sql: str) -> set[str]:
    """Table names/aliases used in a statement's RETURNING that its INSERT/UPDATE target does not declare."""
    target = re.search(r"\b(?:UPDATE|INSERT INTO)\s+(\w+)(?:\s+AS\s+(\w+))?\s+(?:SET|\()", sql)
    returning = re.search(r"\bRETURNING\b(.*)$", sql, re.S)
    if target is None or returning is None:
        return set()
    declared = {target.group(1), target.group(2)} - {None}
    return set(re.findall(r"\b([A-Za-z_]\w*)\.", returning.group(1))) - declared


@pytest.mark.parametrize("name", ["RENEW", "ACQUIRE", "REQUEST", "TAKE"])
def test_sql_returning_names_its_own_table(name: str) -> None:
    # commit 937d707 shipped RENEW as `UPDATE leases ... RETURNING l.camera_id`: PostgreSQL refuses it
    # ("missing FROM-clause entry for table l") and no node could ever renew
    sql = getattr(nodes, name)
    assert "RETURNING" in sql
    assert returning_qualifiers_undeclared(sql) == set()


# ---------------------------------------------------------------------------------------------- config: node


MINIMAL = "storage: {root: /srv/rec}\n"


@pytest.fixture
def no_node_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECORDERD_NODE_ID", raising=False)
    monkeypatch.delenv("RECORDERD_NODE_URL", raising=False)


def node_doc(**node: Any) -> dict[str, Any]:
    return {"storage": {"root": "/srv/rec"}, "node": node}


def node_errors(data: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "f.yaml", environ=environ if environ is not None else {})
    return info.value.errors


def test_node_defaults(no_node_env: None) -> None:
    node = parse_text(MINIMAL).node
    assert node.id == default_node_id()
    assert node.url is None
    assert not node.clustered
    assert node.max_cameras is None
    assert node.lease_seconds == 8
    assert node.renew_seconds == 2
    assert node.drain_seconds == 120
    assert parse_text(MINIMAL + "node:\n").node == node  # an empty section is the defaults


def test_node_section(no_node_env: None) -> None:
    text = MINIMAL + textwrap.dedent("""\
        node:
          id: rec-2.site_a
          url: http://10.0.0.2:9108/
          max_cameras: 40
          lease_seconds: 12
          drain_seconds: 30.5
        """)
    node = parse_text(text).node
    assert node == NodeConfig("rec-2.site_a", "http://10.0.0.2:9108", 40, 12.0, 30.5)
    assert node.clustered
    assert node.renew_seconds == 3
    assert parse_text(MINIMAL + "node: {lease_seconds: 2, max_cameras: 0}\n").node.max_cameras == 0


def test_node_environment_wins_over_the_file() -> None:
    data = yaml.safe_load(MINIMAL + "node: {id: file-node, url: 'http://file:9108'}\n")
    node = parse_config(data, "f.yaml", environ={"RECORDERD_NODE_ID": "env-node",
                                                  "RECORDERD_NODE_URL": "https://env.example:443/"}).node
    assert (node.id, node.url) == ("env-node", "https://env.example:443")
    node = parse_config(data, "f.yaml", environ={}).node
    assert (node.id, node.url) == ("file-node", "http://file:9108")
    # one set, the other from the file; an empty variable does not count
    node = parse_config(data, "f.yaml", environ={"RECORDERD_NODE_URL": "http://env:1", "RECORDERD_NODE_ID": ""}).node
    assert (node.id, node.url) == ("file-node", "http://env:1")
    # without a file section the environment alone makes the node clustered
    node = parse_config(yaml.safe_load(MINIMAL), "f.yaml", environ={"RECORDERD_NODE_URL": "http://env:1"}).node
    assert node.clustered and node.id == default_node_id()


def test_node_environment_read_by_parse_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECORDERD_NODE_ID", "from-env")
    monkeypatch.setenv("RECORDERD_NODE_URL", "http://h:1")
    node = parse_text(MINIMAL + "node: {id: from-file}\n").node
    assert (node.id, node.url) == ("from-env", "http://h:1")


@pytest.mark.parametrize(("node", "key"), [
    ({"id": "rec 2"}, "node.id"),
    ({"id": "-rec"}, "node.id"),
    ({"id": "x" * 64}, "node.id"),
    ({"id": 12}, "node.id"),
    ({"url": "ftp://10.0.0.2:21"}, "node.url"),
    ({"url": "10.0.0.2:9108"}, "node.url"),
    ({"url": "http://10.0.0.2:9108/?x=1"}, "node.url"),
    ({"url": 9108}, "node.url"),
    ({"lease_seconds": 1.5}, "node.lease_seconds"),
    ({"lease_seconds": "8"}, "node.lease_seconds"),
    ({"lease_seconds": 301}, "node.lease_seconds"),
    ({"drain_seconds": 0}, "node.drain_seconds"),
    ({"max_cameras": -1}, "node.max_cameras"),
    ({"max_cameras": 2.5}, "node.max_cameras"),
    ({"max_cameras": True}, "node.max_cameras"),
    ({"bogus": 1}, "node.bogus"),
])
def test_node_invalid_values_name_the_key(node: dict[str, Any], key: str) -> None:
    errs = node_errors(node_doc(**node))
    assert len(errs) == 1, errs
    assert errs[0].startswith(f"{key}: "), errs


def test_node_section_not_a_mapping() -> None:
    errs = node_errors({"storage": {"root": "/srv/rec"}, "node": ["a"]})
    assert errs == ["node: must be a mapping, got a list"]


def test_node_every_problem_listed() -> None:
    errs = node_errors(node_doc(id="a b", url="ftp://h", lease_seconds=1, bogus=True))
    assert sorted(e.split(":")[0] for e in errs) == ["node.bogus", "node.id", "node.lease_seconds", "node.url"]


def test_node_url_with_password_is_refused_and_masked() -> None:
    password = "hunter2-S3cret"
    url = f"http://admin:{password}@10.0.0.2:9108"
    with pytest.raises(ConfigError) as info:
        parse_config(node_doc(url=url), "f.yaml", environ={})
    assert len(info.value.errors) == 1
    assert info.value.errors[0].startswith("node.url: ")
    assert password not in str(info.value)
    assert "10.0.0.2" in str(info.value)  # still says which url
    # from the environment: the error names the variable, still without the password
    with pytest.raises(ConfigError) as info:
        parse_config(node_doc(), "f.yaml", environ={"RECORDERD_NODE_URL": url})
    assert info.value.errors[0].startswith("RECORDERD_NODE_URL: ")
    assert password not in str(info.value)
    # a user without a password is refused too
    assert node_errors(node_doc(url="http://admin@10.0.0.2:9108"))[0].startswith("node.url: ")


def test_node_bad_environment_names_the_variable() -> None:
    errs = node_errors(node_doc(id="good"), environ={"RECORDERD_NODE_ID": "bad id"})
    assert len(errs) == 1 and errs[0].startswith("RECORDERD_NODE_ID: "), errs
    errs = node_errors(node_doc(url="http://good:1"), environ={"RECORDERD_NODE_URL": "ftp://bad"})
    assert len(errs) == 1 and errs[0].startswith("RECORDERD_NODE_URL: "), errs


@pytest.mark.parametrize("url", ["http://10.0.0.2:abc", "http://10.0.0.2:99999", "http://rec 2:9108"])
def test_node_url_port_and_host_validated(url: str) -> None:
    errs = node_errors(node_doc(url=url))
    assert errs and errs[0].startswith("node.url: ")
