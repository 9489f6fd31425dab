#!/usr/bin/python3
"""A real gRPC server (Python `grpcio`, Debian's python3-grpcio, installed by
scripts/setup.sh) for tests/e2e_wasm_grpc.rs. Messages are raw bytes
(generic handlers, no protoc).

  wasm_grpc_peer.py serve HOST PORT [CERT KEY]
      Serves h2c (or TLS with ALPN h2 given CERT and KEY); prints "ready"
      once listening. Service test.Echo:
        Unary(m)    -> "echo:<m> meta:<x-meta metadata>"
        Check(user) -> "ok:<user>", or PERMISSION_DENIED "user <user> is denied"
                       for "mallory"
        Slow(m)     -> waits 500 ms then "slow"; counts whether it completed
                       or was cancelled by the client first
        Sleep(ms)   -> waits ms milliseconds then "slept"
        Deadline(m) -> "deadline" if the call came with a grpc-timeout, else "none"
        Stats(m)    -> "cancelled=<n> completed=<n>" (of Slow calls)
        Big(n)      -> n bytes of "x"
        Chat(stream)-> sends initial metadata x-server-meta: hi, answers each
                       message m with "echo:<m>", then trailing metadata
                       x-server-trailer: bye; a message "fail" ends the call
                       with INVALID_ARGUMENT "fail requested"
"""

import sys
import threading
import time
from concurrent import futures

import grpc

LOCK = threading.Lock()
STATS = {"cancelled": 0, "completed": 0}


def unary(req, ctx):
    md = dict(ctx.invocation_metadata())
    return b"echo:" + req + b" meta:" + md.get("x-meta", "").encode()


def check(req, ctx):
    if req == b"mallory":
        ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "user mallory is denied")
    return b"ok:" + req


def slow(req, ctx):
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        if not ctx.is_active():
            with LOCK:
                STATS["cancelled"] += 1
            return b""
        time.sleep(0.01)
    with LOCK:
        STATS["completed"] += 1
    return b"slow"


def sleep(req, ctx):
    time.sleep(int(req or b"0") / 1000.0)
    return b"slept"


def deadline(req, ctx):
    return b"deadline" if ctx.time_remaining() is not None else b"none"


def stats(req, ctx):
    with LOCK:
        return "cancelled={} completed={}".format(
            STATS["cancelled"], STATS["completed"]
        ).encode()


def big(req, ctx):
    return b"x" * int(req)


def chat(it, ctx):
    ctx.send_initial_metadata((("x-server-meta", "hi"),))
    for m in it:
        if m == b"fail":
            ctx.set_trailing_metadata((("x-server-trailer", "bye"),))
            ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "fail requested")
        yield b"echo:" + m
    ctx.set_trailing_metadata((("x-server-trailer", "bye"),))


def main():
    if len(sys.argv) < 4 or sys.argv[1] != "serve":
        sys.exit("usage: wasm_grpc_peer.py serve HOST PORT [CERT KEY]")
    host, port = sys.argv[2], sys.argv[3]
    u = grpc.unary_unary_rpc_method_handler
    handlers = {
        "Unary": u(unary),
        "Check": u(check),
        "Slow": u(slow),
        "Sleep": u(sleep),
        "Deadline": u(deadline),
        "Stats": u(stats),
        "Big": u(big),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[("grpc.max_send_message_length", 64 << 20)],
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Echo", handlers),)
    )
    addr = "{}:{}".format(host, port)
    if len(sys.argv) >= 6:
        with open(sys.argv[4], "rb") as c, open(sys.argv[5], "rb") as k:
            creds = grpc.ssl_server_credentials(((k.read(), c.read()),))
        server.add_secure_port(addr, creds)
    else:
        server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
