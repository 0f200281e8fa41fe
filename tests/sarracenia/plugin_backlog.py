"""Drive ddmon_report's publisher through a broker that goes away and comes back.

Run by tests/sarracenia.rs with the sr3 virtual environment's python:

    plugin_backlog.py PLUGIN_DIR UPSTREAM_PORT EXCHANGE

The publisher talks to a port of this script's own: a forwarder to the real broker that the
script starts, cuts and stops. Phases (every record's routing key is v03.report.<phase>.<i>,
so the test can check, on the real broker, that all arrived, once and in order):

1. nothing listens: 100 records kept, flush fails at once (refused), nothing dropped;
   a flush right after does not even try (backoff), a forced one sends all 100 (``a``);
2. the connection is cut under the open publisher: 50 more kept, then sent (``b``);
3. a backlog of 10 while nothing listens: 25 added, the 15 oldest dropped and counted, the
   newest 10 sent when it answers again (``c.15`` to ``c.24``).

Prints one JSON line with what the publishers counted; exits non-zero on any failed check.
"""

import importlib
import json
import logging
import socket
import sys
import threading
import urllib.parse


class Forwarder:
    """A TCP forwarder from a local port to the broker, that can be cut and stopped."""

    def __init__(self, upstream_port):
        self.upstream = ("127.0.0.1", upstream_port)
        # The port stays reserved by a bound socket that never listens (a connection to it is
        # refused); the listener shares it (SO_REUSEADDR on both) while it runs.
        self.reserved = socket.socket()
        self.reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.reserved.bind(("127.0.0.1", 0))
        self.port = self.reserved.getsockname()[1]
        self.listener = None
        self.socks = []
        self.lock = threading.Lock()

    def start(self):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(8)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls):
        while True:
            try:
                down, _ = ls.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            with self.lock:
                self.socks += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            socks, self.socks = self.socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self):
        if self.listener is not None:
            # shutdown wakes the thread blocked in accept (close alone would not, on Linux)
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        self.cut()


def check(what, ok):
    if not ok:
        print("FAILED: " + what, file=sys.stderr)
        sys.exit(1)


def main():
    plugin_dir, upstream_port, exchange = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    sys.path.insert(0, plugin_dir)
    plugin = importlib.import_module("ddmon_report")
    fwd = Forwarder(upstream_port)
    url = urllib.parse.urlparse("amqp://guest:guest@127.0.0.1:%d/" % fwd.port)

    def add(p, phase, n, first=0):
        for i in range(first, first + n):
            p.add("v03.report.%s.%d" % (phase, i), json.dumps({"phase": phase, "i": i}))

    # 1. nothing listens
    p = plugin._Publisher(url, exchange, 1000)
    add(p, "a", 100)
    check("a: flush with no broker fails", p.flush() is False)
    check("a: all kept", len(p.pending) == 100 and p.dropped == 0 and p.sent == 0)
    fwd.start()
    check("a: backoff: no second try at once", p.flush() is False and p.failures == 1)
    check("a: forced flush sends", p.flush(force=True) is True)
    check("a: 100 sent", p.sent == 100 and not p.pending)

    # 2. cut under the open connection
    fwd.cut()
    add(p, "b", 50)
    check("b: flush on a cut connection fails", p.flush(force=True) is False)
    check("b: all kept", len(p.pending) == 50)
    check("b: reconnects and sends", p.flush(force=True) is True)
    check("b: 150 sent", p.sent == 150 and not p.pending)
    p.close()

    # 3. a small backlog while nothing listens
    fwd.stop()
    q = plugin._Publisher(url, exchange, 10)
    add(q, "c", 25)
    check("c: flush with no broker fails", q.flush() is False)
    check("c: 15 oldest dropped", q.dropped == 15 and len(q.pending) == 10)
    check("c: the newest kept", q.pending[0][0] == "v03.report.c.15")
    fwd.start()
    check("c: sends the rest", q.flush(force=True) is True and q.sent == 10)
    q.close()
    fwd.stop()
    print(json.dumps({"sent": p.sent + q.sent, "dropped": p.dropped + q.dropped}))


if __name__ == "__main__":
    main()
