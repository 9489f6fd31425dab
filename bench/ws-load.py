#!/usr/bin/python3
"""WebSocket load for bench/run's `websocket` scenario (Debian's
python3-websockets, run with /usr/bin/python3).

  ws-load.py serve PORT
      An echo server on 127.0.0.1:PORT (what both proxies forward to).
  ws-load.py probe URL
      One socket, one echo; exit status 0 when it came back intact.
  ws-load.py load URL CONNECTIONS SECONDS SIZE
      CONNECTIONS sockets, each sending a SIZE-byte binary message and
      waiting for its echo, again and again for SECONDS; prints
      `BENCH_RESULT {json}` as bench/wrk-report.lua does (requests = echoes,
      latencies of one round trip, errors by kind).
"""

import asyncio
import json
import sys
import time

import websockets
import websockets.exceptions


async def serve(port):
    async def echo(ws, _path):
        try:
            async for msg in ws:
                await ws.send(msg)
        except websockets.exceptions.ConnectionClosed:
            pass

    async with websockets.serve(echo, "127.0.0.1", port, max_size=None, ping_interval=None,
                                compression=None):
        await asyncio.Future()


async def probe(url):
    async with websockets.connect(url, open_timeout=5, ping_interval=None,
                                  compression=None) as ws:
        await ws.send(b"bench probe")
        back = await asyncio.wait_for(ws.recv(), 5)
        return back == b"bench probe"


async def load(url, connections, seconds, size):
    payload = bytes(i % 251 for i in range(size))
    lat = []
    # As bench/wrk-report.lua counts them.
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    start = time.monotonic()
    end = start + seconds

    async def one():
        try:
            ws = await websockets.connect(url, open_timeout=5, ping_interval=None,
                                          compression=None, max_size=None)
        except websockets.exceptions.InvalidStatusCode:
            errors["status"] += 1
            return
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException):
            errors["connect"] += 1
            return
        try:
            while True:
                t = time.monotonic()
                if t >= end:
                    return
                await ws.send(payload)
                back = await asyncio.wait_for(ws.recv(), 5)
                if back != payload:
                    errors["read"] += 1
                    return
                lat.append(time.monotonic() - t)
        except asyncio.TimeoutError:
            errors["timeout"] += 1
        except (OSError, websockets.exceptions.WebSocketException):
            errors["read"] += 1
        finally:
            await ws.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    duration = time.monotonic() - start
    lat.sort()

    def pct(p):
        if not lat:
            return 0
        return int(lat[min(len(lat) - 1, int(len(lat) * p))] * 1e6)

    return {
        "requests": len(lat),
        "duration_us": int(duration * 1e6),
        "p50_us": pct(0.50),
        "p90_us": pct(0.90),
        "p99_us": pct(0.99),
        "max_us": int(lat[-1] * 1e6) if lat else 0,
        "errors": errors,
    }


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "serve" and len(sys.argv) == 3:
        asyncio.run(serve(int(sys.argv[2])))
    elif mode == "probe" and len(sys.argv) == 3:
        sys.exit(0 if asyncio.run(probe(sys.argv[2])) else 1)
    elif mode == "load" and len(sys.argv) == 6:
        r = asyncio.run(load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
        print("BENCH_RESULT " + json.dumps(r), flush=True)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
