#!/usr/bin/python3
"""A real gRPC server and client (Python `grpcio`, Debian's python3-grpcio,
installed by scripts/setup.sh) for tests/e2e_grpc.rs. No generated code:
generic handlers with bytes (de)serializers on service `test.Echo`.

  grpc_peer.py serve PORT [CERT KEY]
      Serves on 127.0.0.1:PORT (TLS if CERT and KEY); prints "ready".
      Methods (messages are raw bytes):
        Unary         echoes the request; "fail" aborts with INVALID_ARGUMENT,
                      message "bad input" and trailing metadata
                      x-reason: policy; "sleep:MS" answers after MS ms;
                      "meta" answers the request metadata as JSON.
        ServerStream  "N" -> N messages "0".."N-1", then trailing metadata
                      x-count: N.
        ClientStream  the concatenation of every request message.
        Bidi          each request message back, upper-cased.

  grpc_peer.py client TARGET SCENARIO [TLS-CA]
      Runs SCENARIO against TARGET (host:port) and prints one JSON line:
        all       unary, server streaming (100), client streaming (50),
                  bidi (20), a failing call with its status, message and
                  trailing metadata, and the request metadata the server saw.
        deadline  a call that takes 3 s with a 300 ms deadline: its status.
        unary     one unary call: its status (and details).
        many N    N unary calls from 8 threads: how many succeeded.
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def ident(b):
    return b


def serve(port, cert=None, key=None):
    def unary(request, context):
        if request == b"fail":
            context.set_trailing_metadata((("x-reason", "policy"),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")
        if request.startswith(b"sleep:"):
            time.sleep(int(request[6:]) / 1000.0)
            return b"slept"
        if request == b"meta":
            return json.dumps(dict(context.invocation_metadata())).encode()
        return request

    def server_stream(request, context):
        n = int(request)
        for i in range(n):
            yield str(i).encode()
        context.set_trailing_metadata((("x-count", str(n)),))

    def client_stream(request_iterator, context):
        return b"".join(request_iterator)

    def bidi(request_iterator, context):
        for m in request_iterator:
            yield m.upper()

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, ident, ident),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, ident, ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, ident, ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    addr = "127.0.0.1:%d" % port
    if cert:
        with open(cert, "rb") as f:
            c = f.read()
        with open(key, "rb") as f:
            k = f.read()
        server.add_secure_port(addr, grpc.ssl_server_credentials(((k, c),)))
    else:
        server.add_insecure_port(addr)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def method(ch, kind, name):
    path = "/%s/%s" % (SERVICE, name)
    return getattr(ch, kind)(path, request_serializer=ident, response_deserializer=ident)


def err(e):
    return {"code": e.code().name, "details": e.details(),
            "trailing": dict(e.trailing_metadata() or ())}


def client(target, scenario, arg=None):
    ch = grpc.insecure_channel(target)
    grpc.channel_ready_future(ch).result(timeout=10)
    out = {}
    unary = method(ch, "unary_unary", "Unary")
    if scenario == "all":
        out["unary"] = unary(b"hello", timeout=10).decode()
        big = b"x" * (300 * 1024)
        out["unary_big"] = len(unary(big, timeout=10))
        call = method(ch, "unary_stream", "ServerStream")(b"100", timeout=10)
        msgs = [m.decode() for m in call]
        out["server_stream"] = {"count": len(msgs), "first": msgs[0], "last": msgs[-1],
                                "trailing": dict(call.trailing_metadata())}
        out["client_stream"] = method(ch, "stream_unary", "ClientStream")(
            iter([b"ab"] * 50), timeout=10).decode()
        out["bidi"] = [m.decode() for m in method(ch, "stream_stream", "Bidi")(
            iter([b"m%d" % i for i in range(20)]), timeout=10)]
        try:
            unary(b"fail", timeout=10)
            out["fail"] = "no error"
        except grpc.RpcError as e:
            out["fail"] = err(e)
        out["meta"] = json.loads(unary(b"meta", metadata=(("x-token", "abc"),), timeout=10))
    elif scenario == "deadline":
        t = time.time()
        try:
            unary(b"sleep:3000", timeout=0.3)
            out["result"] = "no error"
        except grpc.RpcError as e:
            out["result"] = err(e)
        out["elapsed"] = time.time() - t
    elif scenario == "unary":
        try:
            out["reply"] = unary(b"hello", timeout=10).decode()
        except grpc.RpcError as e:
            out["error"] = err(e)
    elif scenario == "many":
        n = int(arg)
        ok = []
        errors = []

        def run(k):
            for i in range(k):
                try:
                    if unary(b"n%d" % i, timeout=10) == b"n%d" % i:
                        ok.append(1)
                except grpc.RpcError as e:
                    errors.append(e.code().name)
        ts = [threading.Thread(target=run, args=(n // 8,)) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        out["ok"] = len(ok)
        out["errors"] = errors[:5]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), *(sys.argv[3:5]))
    else:
        client(sys.argv[2], sys.argv[3], *(sys.argv[4:5]))
