#!/usr/bin/env python3
"""Derive the synthetic test vectors in src/tls/testdata/ from the captured ones.

* curl_tls13_padded_40k_3records.bin: curl's real ClientHello with its padding
  extension (0x0015) grown so the handshake message is 40000 bytes, then cut into
  records of 16384, 16384 and the rest (RFC 8446 5.1 fragmentation).
* curl_tls13_tiny_records.bin: curl's real ClientHello re-fragmented into records of
  1..=50 bytes (random.Random(20240601) sizes).
Deterministic: re-running produces identical files.
"""
import random, struct, sys, os

D = os.path.join(os.path.dirname(__file__), "..", "src", "tls", "testdata")

def records_to_handshake(data):
    out, off, ver = b"", 0, None
    while off < len(data):
        typ, v, ln = data[off], data[off+1:off+3], struct.unpack(">H", data[off+3:off+5])[0]
        assert typ == 0x16
        ver = ver or v
        out += data[off+5:off+5+ln]
        off += 5 + ln
    return out, ver

def fragment(hs, ver, sizes):
    out, off = b"", 0
    for n in sizes:
        chunk = hs[off:off+n]
        if not chunk:
            break
        out += bytes([0x16]) + ver + struct.pack(">H", len(chunk)) + chunk
        off += len(chunk)
    assert off == len(hs)
    return out

def pad_hello(hs, target_len):
    assert hs[0] == 1
    body = hs[4:]
    p = 2 + 32
    p += 1 + body[p]                                   # session id
    p += 2 + struct.unpack(">H", body[p:p+2])[0]       # cipher suites
    p += 1 + body[p]                                   # compression methods
    head, exts = body[:p], body[p+2:]
    assert struct.unpack(">H", body[p:p+2])[0] == len(exts)
    # split extensions, drop any existing padding, append a big one (padding is
    # never the last one required to be; pre_shared_key must be last, curl sends none)
    items, q = [], 0
    while q < len(exts):
        t, l = struct.unpack(">HH", exts[q:q+4])
        items.append((t, exts[q+4:q+4+l]))
        q += 4 + l
    assert all(t != 41 for t, _ in items), "pre_shared_key would have to stay last"
    items = [(t, d) for t, d in items if t != 0x0015]
    fixed = 4 + len(head) + 2 + sum(4 + len(d) for _, d in items) + 4
    items.append((0x0015, b"\x00" * (target_len - fixed)))
    new_exts = b"".join(struct.pack(">HH", t, len(d)) + d for t, d in items)
    new_body = head + struct.pack(">H", len(new_exts)) + new_exts
    out = bytes([1]) + struct.pack(">I", len(new_body))[1:] + new_body
    assert len(out) == target_len
    return out

curl = open(os.path.join(D, "curl_tls13_sni_alpn.bin"), "rb").read()
hs, ver = records_to_handshake(curl)

big = pad_hello(hs, 40000)
open(os.path.join(D, "curl_tls13_padded_40k_3records.bin"), "wb").write(
    fragment(big, ver, [16384, 16384, 40000 - 2 * 16384]))

rng = random.Random(20240601)
sizes = []
while sum(sizes) < len(hs):
    sizes.append(rng.randint(1, 50))
open(os.path.join(D, "curl_tls13_tiny_records.bin"), "wb").write(fragment(hs, ver, sizes))
print("ok", len(sizes), "tiny records")
