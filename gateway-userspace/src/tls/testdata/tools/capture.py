#!/usr/bin/env python3
"""Capture the first flight a TLS client sends to a plain TCP listener on 127.0.0.1.

Usage: capture.py OUTFILE -- CLIENT ARGV ({port} is substituted)
The listener reads until the ClientHello's records are complete (or 2 s of silence),
writes them to OUTFILE, then closes the socket (the client fails the handshake; fine)."""
import socket, subprocess, sys, time

out = sys.argv[1]
argv = sys.argv[3:]
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
argv = [a.replace("{port}", str(port)) for a in argv]
proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
srv.settimeout(10)
conn, _ = srv.accept()
conn.settimeout(2)
data = b""
def complete(d):
    # walk records, accumulate handshake bytes; done when the first handshake message is complete
    hs = b""; off = 0
    while off + 5 <= len(d):
        ln = int.from_bytes(d[off+3:off+5], "big")
        if off + 5 + ln > len(d):
            return False
        hs += d[off+5:off+5+ln]; off += 5 + ln
        if len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            return off
    return False
try:
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        n = complete(data)
        if n:
            data = data[:n]
            break
except socket.timeout:
    pass
conn.close()
srv.close()
try:
    proc.stdin.close()
except Exception:
    pass
try:
    proc.wait(5)
except subprocess.TimeoutExpired:
    proc.kill()
open(out, "wb").write(data)
print(f"{out}: {len(data)} bytes")
