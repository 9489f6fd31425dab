#!/usr/bin/env python3
"""UDP syslog sink for bench/run's `--logs on` turns.

    log-sink.py COUNTS_FILE PORT [PORT ...]

Binds 127.0.0.1:PORT (UDP) for each PORT, reads every datagram (one
access-log line each, from portcullis or HAProxy) and throws it away, and
every 0.1 s rewrites COUNTS_FILE with `{"PORT": datagrams, ...}` so the
harness can check that each proxy really logs. It reads, unlike a `log`
target nobody listens on: a port without a reader answers every datagram
with an ICMP port-unreachable, which is not the work a production syslog
target costs the sender. Standard library only; stops on SIGTERM.
"""

import json
import os
import selectors
import signal
import socket
import sys
import time


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    counts_file = sys.argv[1]
    sel = selectors.DefaultSelector()
    counts: dict[str, int] = {}
    for p in sys.argv[2:]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # Room for bursts (portcullis flushes its buffered lines every 100 ms).
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("127.0.0.1", int(p)))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, p)
        counts[p] = 0
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    buf = bytearray(65536)
    written = None
    next_write = 0.0
    while not stop:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            n = 0
            while True:
                try:
                    s.recv_into(buf)
                except BlockingIOError:
                    break
                n += 1
            counts[key.data] += n
        now = time.monotonic()
        if now >= next_write and counts != written:
            tmp = counts_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(counts, f)
            os.replace(tmp, counts_file)
            written = dict(counts)
            next_write = now + 0.1
    return 0


if __name__ == "__main__":
    sys.exit(main())
