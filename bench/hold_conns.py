"""Open N mTLS keep-alive connections to an inbound sidecar and hold them.

Each connection completes the handshake with a client SVID, sends one HTTP/1.1
request (keep-alive) and reads the response, then stays open and idle. Prints
"READY <n_ok> <n_failed>" once all are established, then holds them until stdin
closes or SIGTERM arrives.

usage: hold_conns.py --port P --pki DIR --n N [--path /api/x] [--header 'k: v']
"""

import argparse
import asyncio
import signal
import ssl
import sys


async def one(port, ctx, request, sem, held):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=None), 20
            )
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), 20)
            if not head.startswith(b"HTTP/1.1 200"):
                writer.close()
                return False
            held.append(writer)
            return True
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ssl.SSLError):
            return False


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pki", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--path", default="/api/hold")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--parallel", type=int, default=32)
    a = ap.parse_args()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(f"{a.pki}/ca.crt")
    ctx.load_cert_chain(f"{a.pki}/tls.crt", f"{a.pki}/tls.key")
    ctx.set_alpn_protocols(["http/1.1"])
    extra = "".join(h + "\r\n" for h in a.header)
    request = f"GET {a.path} HTTP/1.1\r\nhost: backend\r\n{extra}\r\n".encode()

    held = []
    sem = asyncio.Semaphore(a.parallel)
    results = await asyncio.gather(*(one(a.port, ctx, request, sem, held) for _ in range(a.n)))
    ok = sum(1 for r in results if r)
    print(f"READY {ok} {a.n - ok}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.readline() else None)
    await stop.wait()
    for w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
