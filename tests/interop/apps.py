"""Third-party apps for the interoperability suite, run behind the sidecar.

Usage: apps.py http|sse|grpc|ws

Each app binds 127.0.0.1 on an ephemeral port, prints `LISTENING <port>` on stdout
and serves until killed. The servers are the libraries' own (http.server, grpcio,
websockets); the handlers only give the tests something to check.
"""

import hashlib
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

CHUNK = 64 * 1024


class Releases:
    """Counts releases; a waiter is freed only by a release made after it started."""

    def __init__(self):
        self.cond = threading.Condition()
        self.count = 0

    def release(self):
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def ticket(self):
        with self.cond:
            return self.count

    def wait_after(self, ticket, timeout):
        """True once a release later than `ticket` happened; False after `timeout`."""
        with self.cond:
            return self.cond.wait_for(lambda: self.count > ticket, timeout)


def pattern(n):
    """Yields `n` deterministic bytes (i % 251) in chunks; the tests compute the same."""
    block = bytes(i % 251 for i in range(251 * 261))  # 65511 bytes, a multiple of 251
    sent = 0
    while sent < n:
        piece = block[: min(len(block), n - sent)]
        sent += len(piece)
        yield piece


def announce(port):
    print(f"LISTENING {port}", flush=True)


class PlainHandler(BaseHTTPRequestHandler):
    """http.server as most Python apps use it: HTTP/1.1, no HTTP/2."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="text/plain"):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def read_body(self):
        """Reads the request body (Content-Length or chunked); returns its sha256 and size."""
        digest, total = hashlib.sha256(), 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    piece = self.rfile.read(min(left, CHUNK))
                    digest.update(piece)
                    total += len(piece)
                    left -= len(piece)
                self.rfile.readline()
        else:
            left = int(self.headers.get("content-length", "0"))
            while left:
                piece = self.rfile.read(min(left, CHUNK))
                if not piece:
                    break
                digest.update(piece)
                total += len(piece)
                left -= len(piece)
        return digest.hexdigest(), total

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/hello":
            self.reply(200, b"hello from python http.server\n")
        elif url.path == "/headers":
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.reply(200, body, "application/json")
        elif url.path == "/bytes":
            n = int(parse_qs(url.query).get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("content-type", "application/octet-stream")
            self.send_header("content-length", str(n))
            self.end_headers()
            for piece in pattern(n):
                self.wfile.write(piece)
        else:
            self.reply(404, b"no such path\n")

    def do_POST(self):
        digest, total = self.read_body()
        body = json.dumps({"sha256": digest, "bytes": total}).encode()
        self.reply(200, body, "application/json")


class SseHandler(BaseHTTPRequestHandler):
    """Server-sent events: event 0, then the rest only after GET /release.

    The release comes from the test straight to the app, after the client behind the
    sidecar has seen event 0: a proxy that buffers the stream makes the client wait
    for ever (bounded by the timeout below, which then sends `event: timeout`).
    """

    protocol_version = "HTTP/1.1"
    released = Releases()

    def log_message(self, *args):
        pass

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/release":
            SseHandler.released.release()
            body = b"released\n"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        ticket = SseHandler.released.ticket()
        self.chunk(b"id: 0\ndata: first\n\n")
        if not SseHandler.released.wait_after(ticket, 20):
            self.chunk(b"event: timeout\ndata: never released\n\n")
        else:
            for i in range(1, 5):
                self.chunk(b"id: %d\ndata: event %d\n\n" % (i, i))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True


def serve_http(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    announce(server.server_address[1])
    server.serve_forever()


def serve_grpc():
    """A grpcio server with generic handlers and raw-bytes messages (no protoc)."""
    import time
    from concurrent import futures

    import grpc

    released = Releases()
    last_deadline = {"finite": "none"}

    def echo(req, ctx):
        return req

    def count(req, ctx):
        n = int(req.decode() or "5")
        ticket = released.ticket()
        yield b"0"
        if not released.wait_after(ticket, 20):
            yield b"timeout"
            return
        for i in range(1, n):
            yield str(i).encode()

    def release(req, ctx):
        released.release()
        return b"released"

    def concat(reqs, ctx):
        return b",".join(reqs)

    def fail(req, ctx):
        ctx.abort(grpc.StatusCode.FAILED_PRECONDITION, "out of stock: caf\u00e9 \u2713 100%")

    def slow(req, ctx):
        remaining = ctx.time_remaining()
        last_deadline["finite"] = "yes" if remaining is not None and remaining < 60 else "no"
        end = time.monotonic() + 20
        while ctx.is_active() and time.monotonic() < end:
            time.sleep(0.02)
        return b"too late"

    def deadline(req, ctx):
        return last_deadline["finite"].encode()

    ident = dict(request_deserializer=None, response_serializer=None)
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(echo, **ident),
        "Forbidden": grpc.unary_unary_rpc_method_handler(echo, **ident),
        "Count": grpc.unary_stream_rpc_method_handler(count, **ident),
        "Release": grpc.unary_unary_rpc_method_handler(release, **ident),
        "Concat": grpc.stream_unary_rpc_method_handler(concat, **ident),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, **ident),
        "Slow": grpc.unary_unary_rpc_method_handler(slow, **ident),
        "LastDeadline": grpc.unary_unary_rpc_method_handler(deadline, **ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("interop.Echo", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    announce(port)
    server.wait_for_termination()


def serve_ws():
    """The websockets library's server: echoes; `close:CODE:REASON` closes with that code."""
    import asyncio

    from websockets.asyncio.server import serve

    async def handler(ws):
        async for msg in ws:
            if isinstance(msg, str) and msg.startswith("close:"):
                _, code, reason = msg.split(":", 2)
                await ws.close(int(code), reason)
                return
            await ws.send(msg)

    async def main():
        async with serve(handler, "127.0.0.1", 0, max_size=4 * 1024 * 1024) as server:
            announce(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind == "http":
        serve_http(PlainHandler)
    elif kind == "sse":
        serve_http(SseHandler)
    elif kind == "grpc":
        serve_grpc()
    elif kind == "ws":
        serve_ws()
    else:
        sys.exit("usage: apps.py http|sse|grpc|ws")
