#!/usr/bin/env python3
"""The slow-reader memory row: one TCP connection, a sender as fast as it can go, a
reader that takes --rate bytes/s.

Listens on 127.0.0.1:--listen (the upstream: reads at --rate, token bucket), then
connects to 127.0.0.1:--connect (a proxy's L4 route to --listen, or --listen itself for
"direct") and sends as fast as the socket accepts for --secs seconds.  Every --every
seconds it samples:

    lead      bytes the client's send() accepted minus bytes the upstream has read:
              what sits in the client's send buffer, the proxy (its sockets, pipes,
              buffers, or an in-kernel queue) and the upstream's receive buffer
    MemAvailable (/proc/meminfo), and the kernel's TCP memory (/proc/net/sockstat
              "TCP: ... mem" pages, all sockets of the machine)

and prints one line "SLOWJSON {...}" with the maxima (MemAvailable: the largest drop
below its value just before the connection), the totals and a coarse time series.
A proxy that queues without limit shows a lead that grows at the sender's rate; one
with backpressure shows a lead that stops at its buffers.

Bounded: --secs <= 60; every socket operation has a timeout; the whole run ends
--secs + 3 s after it starts (the reader is not drained: the upstream closes with
data unread, i.e. a reset, so a proxy that queued gigabytes does not keep us here).
Standard library only.
"""
import argparse
import json
import socket
import struct
import sys
import threading
import time

PAGE = 4096


def meminfo_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def tcp_mem_bytes():
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                w = line.split()
                if "mem" in w:
                    return int(w[w.index("mem") + 1]) * PAGE
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", type=int, required=True, help="upstream port (the slow reader)")
    ap.add_argument("--connect", type=int, required=True, help="port the client sends to")
    ap.add_argument("--secs", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=4e6, help="reader bytes/s")
    ap.add_argument("--every", type=float, default=0.05, help="sampling interval, s")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    secs = max(0.5, min(a.secs, 60.0))
    rate = max(1e5, min(a.rate, 1e9))
    res = {"label": a.label, "secs": secs, "rate_Bps": rate, "error": None}

    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", a.listen))
    lsock.listen(4)
    lsock.settimeout(5.0)

    sent = [0]
    read = [0]
    read_secs = [0.0]  # how long the upstream read for
    stop = threading.Event()
    errors = []
    accepted = threading.Event()

    def reader():
        try:
            conn, _ = lsock.accept()
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(f"upstream accept: {e!r}")
            return
        accepted.set()
        conn.settimeout(0.2)
        chunk = int(min(65536, rate / 50))
        t0 = time.monotonic()
        try:
            while not stop.is_set():
                # token bucket: never ahead of rate * elapsed
                # (in chunks of up to 64 KiB: one recv per chunk, not per byte due)
                allowed = int(rate * (time.monotonic() - t0)) - read[0]
                if allowed < chunk:
                    time.sleep(min(0.05, (chunk - allowed) / rate))
                    continue
                try:
                    n = len(conn.recv(min(allowed, 65536)))
                except socket.timeout:
                    continue
                if n == 0:
                    break
                read[0] += n
        except Exception as e:  # noqa: BLE001
            if not stop.is_set():
                errors.append(f"upstream read: {e!r}")
        finally:
            read_secs[0] = time.monotonic() - t0
            # close with unread data: a reset toward the proxy, which must let go of
            # whatever it still holds
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
            conn.close()

    def sender(c, deadline):
        buf = memoryview(b"\xa5" * (256 * 1024))
        c.settimeout(0.1)
        try:
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    sent[0] += c.send(buf)
                except socket.timeout:
                    continue
        except Exception as e:  # noqa: BLE001
            errors.append(f"client send: {e!r}")

    # the "before" figures: the median of a few samples just before connecting
    samples = []
    for _ in range(5):
        samples.append(meminfo_available())
        time.sleep(0.02)
    before_mem = sorted(samples)[2]
    before_tcp = tcp_mem_bytes()
    rt = threading.Thread(target=reader, daemon=True)
    rt.start()
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.settimeout(5.0)
    try:
        c.connect(("127.0.0.1", a.connect))
    except Exception as e:  # noqa: BLE001
        res["error"] = f"client connect: {e!r}"
        print("SLOWJSON " + json.dumps(res), flush=True)
        return 1
    t0 = time.monotonic()
    deadline = t0 + secs
    st = threading.Thread(target=sender, args=(c, deadline), daemon=True)
    st.start()
    max_lead = 0
    min_mem = before_mem
    max_tcp = before_tcp
    series = []
    next_series = t0
    # sample while sending, then 0.5 s more (what is queued can still move)
    while True:
        now = time.monotonic()
        if now > deadline + 0.5:
            break
        s, r = sent[0], read[0]
        lead = s - r
        mem = meminfo_available()
        tcp = tcp_mem_bytes()
        max_lead = max(max_lead, lead)
        min_mem = min(min_mem, mem)
        max_tcp = max(max_tcp, tcp)
        if now >= next_series:
            series.append([round(now - t0, 2), s, r, before_mem - mem, tcp])
            next_series += 0.5
        time.sleep(a.every)
    stop.set()
    st.join(2.0)
    rt.join(2.0)
    if not accepted.is_set() and not errors:
        errors.append("the upstream never saw a connection")
    res.update(
        sent_bytes=sent[0],
        read_bytes=read[0],
        max_lead_bytes=max_lead,
        final_lead_bytes=sent[0] - read[0],
        memavail_before_bytes=before_mem,
        memavail_drop_max_bytes=before_mem - min_mem,
        tcp_mem_before_bytes=before_tcp,
        tcp_mem_max_bytes=max_tcp,
        read_rate_Bps=read[0] / read_secs[0] if read_secs[0] > 0 else None,
        send_rate_Bps=sent[0] / secs,
        series=series,
        series_fields=["t_s", "sent", "read", "memavail_drop", "tcp_mem"],
    )
    if errors:
        res["error"] = "; ".join(errors)
    elif read[0] == 0:
        res["error"] = "the upstream read nothing"
    try:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    c.close()
    lsock.close()
    print("SLOWJSON " + json.dumps(res), flush=True)
    return 0 if res["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
