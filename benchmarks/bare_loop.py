"""The baseline: the smallest aiohttp loop that sends a plan's requests, N in flight.

It reads the requests from a ``bulkrerun plan --json`` file (so both sides send exactly the
same requests), keeps ``--inflight`` requests going over one session, and counts 200s. No
journal, no pacing, no retries: what a user would write by hand, and the ceiling bulkrerun
is measured against. ``--sign AK SK`` signs each request (with bulkrerun's signer, which
agrees byte for byte with the official one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp


def load(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


async def main(args: argparse.Namespace) -> int:
    requests = load(args.plan)
    bodies = [json.dumps(r["body"], separators=(",", ":")).encode() for r in requests]
    signer = None
    if args.sign:
        from bulkrerun.signing import AkSk, sign

        creds = AkSk(args.sign[0], args.sign[1])

        def signer(url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
            return sign("POST", url, headers, body, creds, time.time())

    ok = 0
    it = iter(range(len(requests)))
    conn = aiohttp.TCPConnector(limit=args.inflight)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal ok
            for i in it:
                r = requests[i]
                url = args.url + r["path"].replace("{project_id}", args.project)
                headers = dict(r["headers"])
                headers["X-Project-Id"] = args.project
                if signer is not None:
                    headers = signer(url, headers, bodies[i])
                async with session.post(url, data=bodies[i], headers=headers) as resp:
                    await resp.read()
                    ok += resp.status == 200

        await asyncio.gather(*(worker() for _ in range(args.inflight)))
    print(ok)
    return 0 if ok == len(requests) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("plan")
    p.add_argument("url")
    p.add_argument("--project", default="bench")
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--sign", nargs=2, metavar=("AK", "SK"))
    p.add_argument("--uvloop", action="store_true")
    a = p.parse_args()
    if a.uvloop:
        import uvloop

        sys.exit(uvloop.run(main(a)))
    sys.exit(asyncio.run(main(a)))
