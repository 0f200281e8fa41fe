"""The HTTP server of the Sarracenia live suite: serves a directory on 127.0.0.1 (a free
port, printed on stdout as `PORT <n>`), and holds back every file whose name contains
`slow` for --slow seconds before answering, so that a transfer stays in flight."""

import argparse
import functools
import http.server
import sys
import time


class Handler(http.server.SimpleHTTPRequestHandler):
    slow = 0.0

    def do_GET(self):
        if "slow" in self.path and self.slow > 0:
            time.sleep(self.slow)
        super().do_GET()

    def log_message(self, fmt, *args):
        sys.stderr.write("http %s\n" % (fmt % args))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("directory")
    p.add_argument("--slow", type=float, default=0.0)
    a = p.parse_args()
    Handler.slow = a.slow
    handler = functools.partial(Handler, directory=a.directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    print("PORT %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
