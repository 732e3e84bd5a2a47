"""FFmpeg spawn cost on the event loop at a daemon's memory size: preexec_fn (fork) vs setpriv (vfork).

A ``preexec_fn`` forces CPython to ``fork()`` the whole daemon and run Python in the child; without one
it uses ``vfork``/``posix_spawn``, and ``setpriv --pdeathsig KILL`` sets the parent-death signal
instead. Measured: wall time the event loop spends inside ``create_subprocess_exec`` per spawn of
``true``, with the process holding ``--rss-mb`` of touched memory, and how long the loop stalls.

    scripts/bench spawn [--rss-mb 300] [--spawns 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from recorderd.process import set_pdeathsig, spawn


async def one_way(kind: str, n: int) -> list[float]:
    times: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter()
        if kind == "preexec_fn":
            proc = await asyncio.create_subprocess_exec(
                "true", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, preexec_fn=set_pdeathsig)
        else:
            proc = await spawn(["true"], cwd=Path("/"), env={"PATH": "/usr/bin:/bin"}, input_data=b"x")
        times.append(time.perf_counter() - t0)
        await proc.wait()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rss-mb", type=int, default=300)
    ap.add_argument("--spawns", type=int, default=100)
    args = ap.parse_args()
    ballast = bytearray(args.rss_mb * 1024 * 1024)
    for i in range(0, len(ballast), 4096):  # touch every page so it is really resident
        ballast[i] = 1
    rows = {}
    for kind in ("preexec_fn", "setpriv"):
        t = asyncio.run(one_way(kind, args.spawns))
        rows[kind] = (statistics.median(t) * 1000, max(t) * 1000)
    print(f"spawn of `true` with {args.rss_mb} MiB resident, {args.spawns} spawns each:")
    for kind, (med, worst) in rows.items():
        print(f"  {kind:11s} median {med:7.2f} ms on the loop, worst {worst:7.2f} ms")
    print(f"  ratio preexec_fn / setpriv (median): {rows['preexec_fn'][0] / rows['setpriv'][0]:.1f}x")
    del ballast


if __name__ == "__main__":
    main()
