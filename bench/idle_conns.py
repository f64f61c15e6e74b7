#!/usr/bin/env python3
"""Open N connections to 127.0.0.1:PORT, send one HTTP/1.1 keep-alive request on each
and read its response (so a proxied connection is established end to end: spliced, or
served), then hold them all idle until --stop appears (or --hold seconds), and close.
In two halves: after the first N/2 it writes "1 <open> <failed> <seconds>" to --ready and
waits for --go to appear (the caller measures), then opens the rest and writes
"2 <open> <failed> <seconds>".  Bounded: at most 20,000 connections, waits at most
--hold (<= 120) seconds each."""
import argparse, asyncio, os, resource, sys, time

REQ = b"GET /hello.txt HTTP/1.1\r\nHost: a.test\r\n\r\n"


async def one(port, sem, conns, errs, give_up):
    async with sem:
        if len(errs) > give_up:  # the proxy is refusing: don't spend minutes on timeouts
            errs.append("skipped")
            return
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            w.write(REQ)
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            if n:
                await asyncio.wait_for(r.readexactly(n), 5)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
            conns.append(w)
        except Exception as e:  # counted, first few shown
            errs.append(repr(e))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--ready", required=True)
    ap.add_argument("--stop", required=True)
    ap.add_argument("--go", required=True)
    ap.add_argument("--hold", type=float, default=60)
    ap.add_argument("--parallel", type=int, default=256)
    a = ap.parse_args()
    n = max(1, min(a.n, 20000))
    hold = max(0.0, min(a.hold, 120.0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 100
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
    conns, errs = [], []
    sem = asyncio.Semaphore(a.parallel)
    for stage, (count, wait_for) in enumerate(((n // 2, a.go), (n - n // 2, a.stop)), 1):
        t0 = time.monotonic()
        give_up = max(50, n // 20)
        await asyncio.gather(*(one(a.port, sem, conns, errs, give_up) for _ in range(count)))
        dt = time.monotonic() - t0
        with open(a.ready + ".tmp", "w") as f:
            f.write(f"{stage} {len(conns)} {len(errs)} {dt:.2f}")
        os.replace(a.ready + ".tmp", a.ready)
        print(f"stage {stage}: open {len(conns)} failed {len(errs)} in {dt:.2f}s", flush=True)
        end = time.monotonic() + hold
        while time.monotonic() < end and not os.path.exists(wait_for):
            await asyncio.sleep(0.05)
    for e in sorted(set(errs))[:5]:
        print(f"error ({errs.count(e)}x):", e, flush=True)
    for w in conns:
        w.close()
    await asyncio.sleep(0.2)
    return 0 if conns else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
