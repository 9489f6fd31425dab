#!/usr/bin/python3
"""A real WebSocket server and client (Python `websockets`, Debian's
python3-websockets, installed by scripts/setup.sh) for tests/e2e_websocket.rs.

  websocket_peer.py serve HOST PORT [CERT KEY]
      Serves WebSockets; prints "ready" once listening. On each connection it
      first sends a JSON text message {"path": ..., "headers": {...}} (the
      request as it arrived), then:
        /close  closes with code 4000, reason "bye";
        else    echoes every message back until the client closes.

  websocket_peer.py client URL SCENARIO [N]
      Runs one scenario against URL and prints one JSON line with what it saw:
        echo          text and a 1 MiB binary message come back intact, then
                      the client closes (code 1000);
        server-close  waits for the server's close;
        idle          waits (sending nothing) until the connection goes;
        refused       the handshake must fail: the HTTP status;
        many N        N sockets at once, 20 echoes each.
      Extra request headers: WS_HEADER_<name>=value in the environment.
"""

import asyncio
import json
import os
import ssl
import sys
import time

import websockets
import websockets.exceptions


async def serve(host, port, cert=None, key=None):
    ctx = None
    if cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)

    async def handler(ws, path):
        hello = {
            "path": path,
            "headers": {k.lower(): v for k, v in ws.request_headers.raw_items()},
        }
        await ws.send(json.dumps(hello))
        if path == "/close":
            await ws.close(4000, "bye")
            return
        try:
            async for msg in ws:
                await ws.send(msg)
        except websockets.exceptions.ConnectionClosed:
            pass

    async with websockets.serve(handler, host, int(port), ssl=ctx, max_size=None,
                                ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()


def client_args(url):
    headers = [(k[len("WS_HEADER_"):].replace("_", "-"), v)
               for k, v in os.environ.items() if k.startswith("WS_HEADER_")]
    kw = {"max_size": None, "ping_interval": None, "extra_headers": headers, "compression": None,
          "open_timeout": 10, "close_timeout": 5}
    if url.startswith("wss:"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        kw["ssl"] = ctx
    return kw


async def echo(url):
    async with websockets.connect(url, **client_args(url)) as ws:
        hello = json.loads(await ws.recv())
        await ws.send("hello through the proxy")
        text = await ws.recv()
        big = bytes(i % 251 for i in range(1 << 20))
        await ws.send(big)
        back = await ws.recv()
        await ws.close()
        return {"hello": hello, "text": text, "binary_ok": back == big,
                "binary_len": len(back), "close_code": ws.close_code}


async def server_close(url):
    ws = await websockets.connect(url, **client_args(url))
    hello = json.loads(await ws.recv())
    try:
        await asyncio.wait_for(ws.recv(), 10)
        return {"hello": hello, "error": "a message instead of a close"}
    except websockets.exceptions.ConnectionClosed as e:
        rcvd = e.rcvd
        return {"hello": hello, "close_code": rcvd.code if rcvd else None,
                "reason": rcvd.reason if rcvd else None}


async def idle(url):
    ws = await websockets.connect(url, **client_args(url))
    await ws.recv()
    start = time.monotonic()
    try:
        await asyncio.wait_for(ws.recv(), 20)
        return {"error": "a message instead of the close"}
    except websockets.exceptions.ConnectionClosed as e:
        return {"closed_after": time.monotonic() - start,
                "close_frame": e.rcvd is not None}


async def refused(url):
    try:
        ws = await websockets.connect(url, **client_args(url))
        await ws.close()
        return {"error": "the handshake succeeded"}
    except websockets.exceptions.InvalidStatusCode as e:
        return {"status": e.status_code,
                "headers": {k.lower(): v for k, v in e.headers.raw_items()}}


async def many(url, n):
    async def one(i):
        async with websockets.connect(url, **client_args(url)) as ws:
            await ws.recv()
            for j in range(20):
                msg = f"socket {i} message {j}"
                await ws.send(msg)
                if await ws.recv() != msg:
                    return False
            return True

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"ok": sum(1 for r in results if r is True), "errors": errors[:5]}


async def client(url, scenario, n):
    if scenario == "echo":
        return await echo(url)
    if scenario == "server-close":
        return await server_close(url)
    if scenario == "idle":
        return await idle(url)
    if scenario == "refused":
        return await refused(url)
    if scenario == "many":
        return await many(url, n)
    raise SystemExit(f"unknown scenario {scenario!r}")


def main():
    if len(sys.argv) >= 4 and sys.argv[1] == "serve":
        asyncio.run(serve(*sys.argv[2:6]))
    elif len(sys.argv) >= 4 and sys.argv[1] == "client":
        n = int(sys.argv[4]) if len(sys.argv) > 4 else 1
        try:
            out = asyncio.run(client(sys.argv[2], sys.argv[3], n))
        except Exception as e:  # reported, so the test can say what failed
            out = {"error": repr(e)}
        print(json.dumps(out), flush=True)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
