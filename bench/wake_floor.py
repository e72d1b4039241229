"""The floor under any Redis queue's idle latency on this machine: a bare redis-py hand-off.

One process LPUSHes its ``time.time()``; another, idle in ``BLPOP`` (asyncio client, as a
worker's), records the delay when the reply arrives. No framework, no script, no claim: a
queue's idle start latency cannot be lower than this (two process wake-ups and two trips
through Redis), so it tells what a target such as "p50 ≤ 1 ms" means on the machine at hand.

    .venv/bin/python -m bench.wake_floor [--url redis://127.0.0.1:6379/0] [--samples 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid

import redis
import redis.asyncio as aioredis


async def _listen(url: str, key: str) -> None:
    r = aioredis.Redis.from_url(url, decode_responses=True)
    while True:
        reply = await r.blpop([f"{key}:wake"], timeout=5)
        now = time.time()
        if reply is None or reply[1] == "stop":
            break
        await r.rpush(f"{key}:out", repr(now - float(reply[1])))
    await r.aclose()


def measure(url: str, samples: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``samples`` hand-offs, 20 ms apart (the listener idle in between)."""
    key = f"bench:floor:{uuid.uuid4().hex[:8]}"
    r = redis.Redis.from_url(url, decode_responses=True)
    listener = subprocess.Popen([sys.executable, "-m", "bench.wake_floor", "--listen", key, "--url", url])
    try:
        time.sleep(1.0)  # the listener is up and blocked
        for _ in range(samples):
            time.sleep(0.02)
            r.lpush(f"{key}:wake", repr(time.time()))
        r.lpush(f"{key}:wake", "stop")
        listener.wait(30)
        delays = sorted(float(x) * 1000 for x in r.lrange(f"{key}:out", 0, -1))
    finally:
        if listener.poll() is None:
            listener.kill()
        r.delete(f"{key}:wake", f"{key}:out")
        r.close()
    return statistics.median(delays), delays[max(0, int(len(delays) * 0.99) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen:
        asyncio.run(_listen(args.url, args.listen))
        return
    p50, p99 = measure(args.url, args.samples)
    print(f"bare LPUSH -> BLPOP hand-off between two processes: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


if __name__ == "__main__":
    main()
