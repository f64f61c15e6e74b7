#!/usr/bin/env python3
"""Regenerates corpus/xdp: real frames, then variants of them.

Run as root from gateway-userspace/fuzz. Captures the SYNs (and RSTs) that curl sends to
127.0.0.1 and ::1 on ports 80 and 31400 (nothing listens: the kernel answers RST) with an
AF_PACKET socket on `lo`, then derives frames for fixtures/xdp-policy.yaml by rewriting
fields (source address, port, VLAN tags, IPv4 options and fragments, IPv6 extension
headers). No checksums are fixed: XDP does not look at them.
"""
import ipaddress
import os
import socket
import struct
import subprocess
import time

OUT = "corpus/xdp"


def capture():
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind(("lo", 0))
    s.settimeout(0.5)
    for url in ["http://127.0.0.1:80/", "http://[::1]:80/", "http://127.0.0.1:31400/", "http://[::1]:31400/"]:
        subprocess.run(["curl", "-s", "-m", "1", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    frames = []
    t = time.time()
    while time.time() - t < 2:
        try:
            data, addr = s.recvfrom(65535)
        except socket.timeout:
            break
        if addr[2] != socket.PACKET_OUTGOING:
            frames.append(data)
    return frames


def main():
    caps = capture()
    # curl's order: SYN, RST for each URL (v4 :80, v6 :80, v4 :31400, v6 :31400).
    fr = dict(enumerate(caps[:8]))
    out = {}
    out["lo-v4-syn-80"] = fr[0]
    out["lo-v4-rst-from-80"] = fr[1]
    out["lo-v6-syn-80"] = fr[2]
    out["lo-v4-syn-31400"] = fr[4]
    out["lo-v6-syn-31400"] = fr[6]

    def v4(frame, src=None, dport=None):
        f = bytearray(frame)
        if src: f[26:30] = ipaddress.IPv4Address(src).packed
        if dport is not None: f[36:38] = struct.pack(">H", dport)
        return bytes(f)

    def v6(frame, src=None, dport=None):
        f = bytearray(frame)
        if src: f[22:38] = ipaddress.IPv6Address(src).packed
        if dport is not None: f[56:58] = struct.pack(">H", dport)
        return bytes(f)

    out["v4-denied-127.0.0.2-80"] = v4(fr[0], "127.0.0.2")
    out["v4-denied-10.77.9.5-80"] = v4(fr[0], "10.77.9.5")
    out["v4-carved-out-10.77.9.200-80"] = v4(fr[0], "10.77.9.200")
    out["v4-denied-192.0.2.7-22"] = v4(fr[0], "192.0.2.7", 22)
    out["v4-allowed-198.51.100.9-22"] = v4(fr[0], "198.51.100.9", 22)
    out["v4-allowed-10.1.2.3-31400"] = v4(fr[4], "10.1.2.3")
    out["v4-default-deny-172.16.0.1-31400"] = v4(fr[4], "172.16.0.1")
    out["v4-unjudged-port-443"] = v4(fr[0], "10.77.9.5", 443)
    out["v6-denied-::2-80"] = v6(fr[2], "::2")
    out["v6-denied-fd00:77::9:5-80"] = v6(fr[2], "fd00:77::9:5")
    out["v6-carved-out-fd00:77::9:8001-80"] = v6(fr[2], "fd00:77::9:8001")
    out["v6-denied-2001:db8:bad::1-31400"] = v6(fr[6], "2001:db8:bad::1")
    out["v6-default-deny-2001:db8::1-31400"] = v6(fr[6], "2001:db8::1")

    den = out["v4-denied-10.77.9.5-80"]
    out["v4-vlan-8021q-denied"] = den[:12] + b"\x81\x00\x00\x07" + den[12:]
    out["v4-vlan-8021ad-denied"] = den[:12] + b"\x88\xa8\x00\x07" + den[12:]
    out["v4-qinq-denied"] = den[:12] + b"\x88\xa8\x00\x07\x81\x00\x00\x08" + den[12:]
    # IHL 6: one 4-byte option (NOPs) before TCP.
    f = bytearray(den); f[14] = 0x46
    out["v4-ihl6-options-denied"] = bytes(f[:34] + b"\x01\x01\x01\x01" + f[34:])
    f = bytearray(den); f[20:22] = struct.pack(">H", 0x2001)
    out["v4-fragment-offset-8-denied"] = bytes(f)
    f = bytearray(den); f[20:22] = struct.pack(">H", 0x2000)
    out["v4-first-fragment-mf-denied"] = bytes(f)
    f = bytearray(den); f[23] = 17
    out["v4-udp-denied"] = bytes(f)

    d6 = out["v6-denied-::2-80"]
    def ext6(frame, chain):
        # chain: list of (type, bytes) inserted after the fixed header; fix next-header fields
        f = bytearray(frame)
        hdr, rest = f[:54], f[54:]
        first_next = hdr[20]
        nexts = [t for t, _ in chain] + [first_next]
        hdr[20] = nexts[0]
        body = b""
        for i, (t, b) in enumerate(chain):
            b = bytearray(b); b[0] = nexts[i + 1]
            body += bytes(b)
        hdr[18:20] = struct.pack(">H", struct.unpack(">H", hdr[18:20])[0] + len(body))
        return bytes(hdr) + body + bytes(rest)
    hop = bytes(8)                       # hop-by-hop, len 0 (8 bytes)
    dst16 = bytes([0, 1]) + bytes(14)    # destination options, len 1 (16 bytes)
    frag0 = bytes([0, 0, 0, 1]) + b"\x12\x34\x56\x78"   # first fragment, M=1
    frag1 = bytes([0, 0, 0, 8]) + b"\x12\x34\x56\x78"   # offset 1
    route = bytes([0, 0, 0, 0]) + bytes(4)   # routing, len 0
    out["v6-hop-denied"] = ext6(d6, [(0, hop)])
    out["v6-hop-dst-frag-denied"] = ext6(d6, [(0, hop), (60, dst16), (44, frag0)])
    out["v6-nonfirst-fragment-denied"] = ext6(d6, [(44, frag1)])
    out["v6-4-ext-denied"] = ext6(d6, [(0, hop), (43, route), (60, dst16), (44, frag0)])
    out["v6-5-ext-denied"] = ext6(d6, [(0, hop), (43, route), (60, dst16), (60, dst16), (44, frag0)])
    out["v6-vlan-denied"] = d6[:12] + b"\x81\x00\x00\x07" + d6[12:]
    out["arp"] = bytes.fromhex("ffffffffffff02000000000108060001080006040001020000000001c0a80001000000000000c0a80002")
    out["v6-v4mapped-denied-__ffff_10.77.9.5-80"] = v6(fr[2], "::ffff:10.77.9.5")
    os.makedirs(OUT, exist_ok=True)
    for name, b in out.items():
        with open(os.path.join(OUT, name.replace(":", "_")), "wb") as f:
            f.write(b)
    print(f"{len(out)} frames in {OUT}")


if __name__ == "__main__":
    main()
