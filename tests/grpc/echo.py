#!/usr/bin/env python3
"""A real gRPC server and client (grpcio, the gRPC C-core) for the gateway's tests
(tests/tests/grpc_real.rs). No codegen: generic handlers on raw bytes.

  echo.py serve PORT
      Serves test.Echo on 127.0.0.1:PORT (h2c) and prints "ready PORT" once listening.
      Unary(b)         -> b"echo:" + b
      Stream(b"N")     -> N messages b"msg-0" .. b"msg-{N-1}"
      NotFound(b)      -> NOT_FOUND "no such thing: " + b, trailing x-why: missing
      Slow(b"MS")      -> sleeps MS milliseconds, then answers b"late"
      Flaky(b"key")    -> UNAVAILABLE the first time a key is seen, then b"ok:" + key
      Attempts(b"key") -> how many Flaky calls the key got, in decimal

  echo.py call TARGET AUTHORITY METHOD DATA [--timeout S] [--ca PEM]
      One call (unary, or server streaming for Stream) through TARGET (host:port) with
      :authority AUTHORITY, TLS when --ca is given (the name checked is AUTHORITY).
      Prints one JSON line: code, details, trailing metadata, messages (as text).
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def serve(port):
    attempts = {}
    lock = threading.Lock()

    def unary(req, ctx):
        return b"echo:" + req

    def stream(req, ctx):
        for i in range(int(req)):
            yield b"msg-%d" % i

    def not_found(req, ctx):
        ctx.set_trailing_metadata((("x-why", "missing"),))
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode())

    def slow(req, ctx):
        time.sleep(int(req) / 1000)
        return b"late"

    def flaky(req, ctx):
        with lock:
            n = attempts.get(req, 0) + 1
            attempts[req] = n
        if n == 1:
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "first attempt fails")
        return b"ok:" + req

    def count(req, ctx):
        with lock:
            return str(attempts.get(req, 0)).encode()

    u = grpc.unary_unary_rpc_method_handler
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": u(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "NotFound": u(not_found),
            "Slow": u(slow),
            "Flaky": u(flaky),
            "Attempts": u(count),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port("127.0.0.1:%d" % port)
    if bound != port:
        sys.exit("could not bind 127.0.0.1:%d" % port)
    server.start()
    print("ready %d" % port, flush=True)
    server.wait_for_termination()


def call(target, authority, method, data, timeout, ca):
    options = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    if ca is None:
        options.append(("grpc.default_authority", authority))
        channel = grpc.insecure_channel(target, options=options)
    else:
        with open(ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        # The name sent as SNI and :authority, and checked against the certificate.
        options.append(("grpc.ssl_target_name_override", authority))
        channel = grpc.secure_channel(target, creds, options=options)
    path = "/%s/%s" % (SERVICE, method)
    out = {"code": "OK", "details": "", "trailing": {}, "messages": []}
    try:
        if method == "Stream":
            it = channel.unary_stream(path)(data.encode(), timeout=timeout)
            for m in it:
                out["messages"].append(m.decode())
            trailing = it.trailing_metadata()
        else:
            resp, c = channel.unary_unary(path).with_call(data.encode(), timeout=timeout)
            out["messages"].append(resp.decode())
            trailing = c.trailing_metadata()
    except grpc.RpcError as e:
        out["code"] = e.code().name
        out["details"] = e.details() or ""
        trailing = e.trailing_metadata()
    out["trailing"] = {k: v for k, v in (trailing or ()) if not k.endswith("-bin")}
    print(json.dumps(out), flush=True)
    channel.close()


def main(argv):
    if len(argv) == 3 and argv[1] == "serve":
        serve(int(argv[2]))
    elif len(argv) >= 6 and argv[1] == "call":
        rest = argv[6:]
        timeout, ca = 10.0, None
        while rest:
            flag, value, rest = rest[0], rest[1], rest[2:]
            if flag == "--timeout":
                timeout = float(value)
            elif flag == "--ca":
                ca = value
            else:
                sys.exit("unknown flag " + flag)
        call(argv[2], argv[3], argv[4], argv[5], timeout, ca)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
