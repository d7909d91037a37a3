"""Third-party clients for the interoperability suite, run in front of the sidecar.

Usage: clients.py grpc|httpx|ws --target HOST:PORT [--ca F --cert F --key F] [...]

Each client runs its checks and prints one JSON object on stdout: check name ->
{"ok": bool, "detail": str} (plus raw values where the test asserts them itself).
It never decides a test's outcome by its exit code alone; the Rust test reads the JSON.
"""

import argparse
import asyncio
import json
import ssl
import sys


def tls_context(args):
    if not args.ca:
        return None
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    return ctx


def check(results, name, fn):
    try:
        ok, detail = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        ok, detail = False, f"{type(e).__name__}: {e}"
    results[name] = {"ok": bool(ok), "detail": str(detail)}


def run_grpc(args):
    import grpc

    read = lambda p: open(p, "rb").read()  # noqa: E731
    if args.ca:
        creds = grpc.ssl_channel_credentials(read(args.ca), read(args.key), read(args.cert))
        options = [("grpc.ssl_target_name_override", args.name)] if args.name else []
        channel = grpc.secure_channel(args.target, creds, options=options)
    else:
        channel = grpc.insecure_channel(args.target)
    ident = dict(request_serializer=None, response_deserializer=None)
    method = lambda kind, m: getattr(channel, kind)(f"/interop.Echo/{m}", **ident)  # noqa: E731
    results = {}

    def unary():
        big = bytes(range(256)) * 4096  # 1 MiB
        got = method("unary_unary", "Echo")(big, timeout=10)
        return got == big, f"{len(got)} bytes back"

    def server_stream():
        # The app sends "0", then waits for Release: a buffering proxy never shows "0".
        stream = method("unary_stream", "Count")(b"5", timeout=15)
        first = next(stream)
        method("unary_unary", "Release")(b"", timeout=10)
        got = [first] + list(stream)
        want = [str(i).encode() for i in range(5)]
        return got == want, repr(got)

    def client_stream():
        got = method("stream_unary", "Concat")(iter([b"a", b"b", b"c"]), timeout=10)
        return got == b"a,b,c", repr(got)

    def app_error():
        try:
            method("unary_unary", "Fail")(b"", timeout=10)
            return False, "no error"
        except grpc.RpcError as e:
            want = "out of stock: caf\u00e9 \u2713 100%"
            ok = e.code() == grpc.StatusCode.FAILED_PRECONDITION and e.details() == want
            return ok, f"{e.code().name}: {e.details()}"

    def deadline():
        try:
            method("unary_unary", "Slow")(b"", timeout=0.5)
            return False, "no deadline error"
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, f"{e.code().name}: {e.details()}"
        seen = method("unary_unary", "LastDeadline")(b"", timeout=10)
        return seen == b"yes", f"DEADLINE_EXCEEDED; app saw a deadline: {seen.decode()}"

    check(results, "unary", unary)
    check(results, "server_stream", server_stream)
    check(results, "client_stream", client_stream)
    check(results, "app_error", app_error)
    check(results, "deadline", deadline)
    try:
        method("unary_unary", "Forbidden")(b"", timeout=10)
        results["denied"] = {"ok": False, "detail": "allowed", "code": "OK", "message": ""}
    except grpc.RpcError as e:
        results["denied"] = {
            "ok": True,
            "detail": f"{e.code().name}: {e.details()}",
            "code": e.code().name,
            "message": e.details() or "",
        }
    channel.close()
    return results


def run_httpx(args):
    import httpx

    async def main():
        results = {}
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        verify = tls_context(args) or False
        async with httpx.AsyncClient(http2=True, verify=verify, limits=limits, timeout=30) as c:
            base = f"https://{args.target}"

            async def one(i):
                r = await c.get(f"{base}{args.path}?i={i}")
                return r.status_code, r.http_version, r.content

            try:
                got = await asyncio.gather(*(one(i) for i in range(args.streams)))
                statuses = sorted({s for s, _, _ in got})
                versions = sorted({v for _, v, _ in got})
                bodies = sorted({b for _, _, b in got}, key=len)
                ok = statuses == [200] and versions == ["HTTP/2"] and len(bodies) == 1
                detail = f"{len(got)} streams: status {statuses}, {versions}, body {bodies[0][:60]!r}"
                results["concurrent"] = {"ok": ok, "detail": detail}
            except Exception as e:  # noqa: BLE001
                results["concurrent"] = {"ok": False, "detail": f"{type(e).__name__}: {e}"}
        return results

    return asyncio.run(main())


def run_ws(args):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def main():
        results = {}
        url = f"wss://{args.target}/ws"
        ctx = tls_context(args)

        async def echo():
            async with connect(url, ssl=ctx, max_size=4 * 1024 * 1024, open_timeout=10) as ws:
                await ws.send("hello")
                text = await asyncio.wait_for(ws.recv(), 10)
                blob = bytes(range(256)) * 4096
                await ws.send(blob)
                back = await asyncio.wait_for(ws.recv(), 10)
                return text == "hello" and back == blob, f"text {text!r}, {len(back)} bytes back"

        async def server_close():
            async with connect(url, ssl=ctx, open_timeout=10) as ws:
                await ws.send("close:4001:gone fishing")
                try:
                    await asyncio.wait_for(ws.recv(), 10)
                    return False, "no close"
                except ConnectionClosed as e:
                    rcvd = e.rcvd
                    got = (rcvd.code, rcvd.reason) if rcvd else None
                    return got == (4001, "gone fishing"), f"close frame {got}"

        async def client_close():
            ws = await connect(url, ssl=ctx, open_timeout=10)
            await ws.close(1000, "done")
            await asyncio.wait_for(ws.wait_closed(), 10)
            got = (ws.close_code, ws.close_reason)
            return got == (1000, "done"), f"close handshake {got}"

        for name, fn in (("echo", echo), ("server_close", server_close), ("client_close", client_close)):
            try:
                ok, detail = await fn()
            except Exception as e:  # noqa: BLE001
                ok, detail = False, f"{type(e).__name__}: {e}"
            results[name] = {"ok": ok, "detail": detail}
        return results

    return asyncio.run(main())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["grpc", "httpx", "ws"])
    p.add_argument("--target", required=True)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--name", help="grpc.ssl_target_name_override")
    p.add_argument("--path", default="/hello")
    p.add_argument("--streams", type=int, default=300)
    a = p.parse_args()
    run = {"grpc": run_grpc, "httpx": run_httpx, "ws": run_ws}[a.kind]
    print(json.dumps(run(a)), flush=True)
    sys.exit(0)
