#!/usr/bin/env python3
"""Turns the JSON that bench/peers.sh writes into the committed results:

    results.json  everything peers.sh measured, plus per-row ratios (vs direct, vs the best
                  peer) and the issue's targets evaluated (met / not met, measured ratio)
    results.md    the tables the README embeds
    results.svg   throughput as a fraction of direct, one bar per proxy (hand-written SVG)

    python3 bench/report.py --in /tmp/peerbench/results-peers.json --out-dir bench
Standard library only.
"""
import argparse
import html
import json
import os

GATEWAYS = ("gateway_ebpf", "gateway_userspace")
PEERS = ("haproxy", "haproxy_splice", "nginx", "socat", "envoy")
ORDER = ("direct",) + GATEWAYS + PEERS
COLORS = {"direct": "#9e9e9e", "gateway_ebpf": "#1b5e20", "gateway_userspace": "#66bb6a",
          "haproxy": "#1565c0", "haproxy_splice": "#64b5f6", "nginx": "#ef6c00",
          "socat": "#8d6e63", "envoy": "#6a1b9a"}
LABEL = {"gateway_ebpf": "gateway --splice ebpf", "gateway_userspace": "gateway --splice userspace"}
SHORT = {"iperf1": "L4 iperf3 1 stream", "iperf4": "L4 iperf3 4 streams",
         "conn": "L4 short connections", "tls": "SNI passthrough rps", "tlshs": "SNI passthrough handshakes",
         "tlsbulk": "SNI passthrough throughput", "http": "HTTP keep-alive, 64 conns",
         "http512": "HTTP keep-alive, 512 conns", "h2": "HTTP/2 h2c", "https": "HTTPS termination rps",
         "hsk": "HTTPS new handshakes"}
# The issue's reference: peers measured with this harness on this machine kind, as
# fractions of direct (1 worker, pinned).
PEER_REFERENCE = {"iperf1": "0.72–0.79", "iperf4": "0.38–0.63", "conn": "0.43–0.75",
                  "http": "0.32–0.86", "tls": "0.82–0.86"}


def fnum(x, fmt="%.2f", na="–"):
    return na if x is None else fmt % x


def value_fmt(unit):
    return "%.2f" if unit == "Gbit/s" else "%.0f"


def label(t):
    return LABEL.get(t, t)


def build(res):
    summary = res.get("summary", [])
    by = {}
    for s in summary:
        by.setdefault(s["test"], {})[s["target"]] = s
    rows = []
    for test, targets in by.items():
        peers = {t: s for t, s in targets.items() if t in PEERS and s.get("median") is not None}
        best = max(peers.values(), key=lambda s: s["median"], default=None)
        for t in sorted(targets, key=lambda t: ORDER.index(t) if t in ORDER else 99):
            s = targets[t]
            s["ratio_vs_best_peer"] = (s["median"] / best["median"]
                                       if best and s.get("median") is not None and best["median"] else None)
            s["best_peer"] = best["target"] if best else None
            rows.append(s)
    mem = res.get("memory", [])
    for kind in {m["test"] for m in mem}:
        ms = [m for m in mem if m["test"] == kind]
        # a peer that did not hold (nearly) all the connections is not a fair best
        peers = [m for m in ms if m["target"] in PEERS and m.get("rss_bytes_per_conn") is not None
                 and m["held"] >= 0.95 * m["n"]]
        best = min(peers, key=lambda m: m["rss_bytes_per_conn"], default=None)
        for m in ms:
            m["best_peer"] = best["target"] if best else None
            m["ratio_vs_best_peer"] = (m["rss_bytes_per_conn"] / best["rss_bytes_per_conn"]
                                       if best and m.get("rss_bytes_per_conn") is not None and best["rss_bytes_per_conn"] > 0 else None)
    return by, rows, mem


def targets(by, mem):
    out = []

    def add(name, measured, ratio, ok, note=""):
        out.append({"target": name, "measured": measured,
                    "ratio": ratio, "met": None if ok is None else bool(ok), "note": note})

    def s(test, tg):
        return by.get(test, {}).get(tg)

    for test, goal in (("iperf1", 0.95), ("iperf4", 0.90)):
        g, d = s(test, "gateway_ebpf"), s(test, "direct")
        r = g.get("ratio_vs_direct") if g else None
        add(f"L4 via eBPF splice, iperf3 {test[-1]} stream{'s' if test[-1] != '1' else ''}: ≥ {goal:.2f} of direct",
            f"{fnum(g and g['median'])} vs {fnum(d and d['median'])} Gbit/s" if g and d else "not measured",
            r, None if r is None else r >= goal)
    for test in ("iperf1", "iperf4"):
        g, d = s(test, "gateway_ebpf"), s(test, "direct")
        gc, dc = (g or {}).get("machine_cpu_s_per_GB"), (d or {}).get("machine_cpu_s_per_GB")
        r = gc / dc if gc and dc else None
        add(f"L4 via eBPF splice, {test[-1]} stream{'s' if test[-1] != '1' else ''}: whole-machine CPU per GB within 10 % of direct's",
            f"{fnum(gc, '%.3f')} vs {fnum(dc, '%.3f')} CPU-s/GB" if r else "not measured",
            r, None if r is None else r <= 1.10,
            "machine-wide busy time (/proc/stat) per GB moved, so softirq and kernel threads count")
    g = s("conn", "gateway_ebpf")
    r = g.get("ratio_vs_direct") if g else None
    add("Short connections/s through the L4 route: ≥ 0.80 of direct",
        f"{fnum(g and g['median'], '%.0f')} conn/s" if g else "not measured", r, None if r is None else r >= 0.80)
    g = s("tls", "gateway_ebpf")
    r = g.get("ratio_vs_direct") if g else None
    add("SNI passthrough (HTTPS keep-alive rps through the passthrough route): ≥ 0.95 of direct",
        f"{fnum(g and g['median'], '%.0f')} req/s" if g else "not measured", r, None if r is None else r >= 0.95)
    g = s("http", "gateway_ebpf")
    r = g.get("ratio_vs_direct") if g else None
    add("HTTP keep-alive requests/s on one worker core: ≥ 0.90 of direct",
        f"{fnum(g and g['median'], '%.0f')} req/s" if g else "not measured", r, None if r is None else r >= 0.90)
    n = s("http", "nginx")
    gp, np_ = (g or {}).get("p99_ms"), (n or {}).get("p99_ms")
    r = gp / np_ if gp and np_ else None
    add("HTTP keep-alive p99 no worse than nginx's",
        f"p99 {fnum(gp)} ms vs nginx {fnum(np_)} ms" if r else "not measured", r, None if r is None else r <= 1.0)
    g = s("https", "gateway_ebpf")
    r = g.get("ratio_vs_best_peer") if g else None
    add("HTTPS termination requests/s ≥ the best peer",
        f"{fnum(g and g['median'], '%.0f')} req/s vs {g.get('best_peer') if g else '–'}" if g else "not measured",
        r, None if r is None else r >= 1.0, "ratio is against the best peer, not direct")
    m = next((m for m in mem if m["test"] == "mem_l4" and m["target"] == "gateway_ebpf"), None)
    b = m.get("rss_bytes_per_conn") if m else None
    add("Idle memory: ≤ 1 KiB of gateway RSS per spliced connection",
        f"{fnum(b, '%.0f')} B/conn ({m['held']} held)" if m else "not measured",
        b / 1024 if b is not None else None, None if b is None else b <= 1024, "ratio = bytes per connection / 1024")
    m = next((m for m in mem if m["test"] == "mem_http" and m["target"] == "gateway_ebpf"), None)
    best = next((x for x in mem if m and x["test"] == "mem_http" and x["target"] == m.get("best_peer")), None)
    gb, bb = (m or {}).get("rss_bytes_per_conn"), (best or {}).get("rss_bytes_per_conn")
    add("Idle memory: ≤ the best peer per HTTP keep-alive connection",
        f"{fnum(gb, '%.0f')} B/conn vs {m.get('best_peer')} {fnum(bb, '%.0f')} B/conn" if m and best else "not measured",
        m.get("ratio_vs_best_peer") if m else None, None if gb is None or bb is None else gb <= max(bb, 0),
        "ratio is against the best peer")
    return out


def markdown(res, by, mem, tg):
    meta = res.get("meta", {})
    L = []
    P = L.append
    P(f"Measured {meta.get('date', '?')} on {meta.get('nproc', '?')} CPUs ({meta.get('cpu_model', '?')}), "
      f"kernel {meta.get('kernel', '?')}; {meta.get('runs', '?')} passes of {meta.get('dur_s', '?')} s tests; "
      f"workers={meta.get('workers', '?')}; {meta.get('pin_desc', '')}. "
      f"Gateway: {meta.get('v_gateway', '?')}. "
      f"Peers: {meta.get('v_haproxy', '')}; {meta.get('v_nginx', '')}; envoy {meta.get('v_envoy', '')}.")
    checks = res.get("checks", [])
    bad = [c for c in checks if not c["ok"]]
    P("")
    P(f"Functional checks before measuring: {sum(c['ok'] for c in checks)}/{len(checks)} passed"
      + ("." if not bad else " — failed: " + ", ".join(f"{c['target']} {c['check']}" for c in bad) + "."))
    noisy = sorted({s["test"] + "/" + s["target"] for t in by.values() for s in t.values() if s.get("noisy_passes")})
    P("")
    if noisy:
        P(f"**Noise:** other workloads used more than {meta.get('other_flag_pct', '15')} % of a core during "
          f"{len(noisy)} row(s) even after repeats (marked ⚠ below); treat those numbers with care.")
    else:
        P("**Noise:** no row had foreign load above "
          f"{meta.get('other_flag_pct', '15')} % of a core (each measurement waits for a quiet machine and is repeated if disturbed).")
    P("")
    P("### Targets")
    P("")
    P("| target | measured | ratio | |")
    P("|---|---|---:|---|")
    for t in tg:
        st = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        P(f"| {t['target']} | {t['measured']} | {fnum(t['ratio'], '%.3f')} | {st} |")
    P("")
    P("### Every row")
    P("")
    P("Median over passes, with the min–max over passes. ×direct = value/direct in the same pass (median over passes); "
      "×best peer = against the best of HAProxy, nginx, Envoy (and socat / HAProxy splice when run) for that row. "
      "CPU: for throughput rows whole-machine CPU-seconds per GB moved (proxy-only in brackets); "
      "for request rows whole-workload CPU-µs per request (proxy-only in brackets).")
    for test, targets in by.items():
        S = [targets[t] for t in sorted(targets, key=lambda t: ORDER.index(t) if t in ORDER else 99)]
        unit = S[0].get("unit") or ""
        vf = value_fmt(unit)
        thr = unit == "Gbit/s"
        P("")
        ref = f" — issue's peer reference: {PEER_REFERENCE[test]} of direct" if test in PEER_REFERENCE else ""
        P(f"**{S[0].get('description', test)}** ({unit}){ref}")
        P("")
        if thr:
            P("| | median | min–max | ×direct | ×best peer | CPU s/GB machine (proxy) | retr/noise |")
            P("|---|---:|---:|---:|---:|---:|---|")
        else:
            P("| | median | min–max | ×direct | ×best peer | p50 ms | p99 ms | p99.9 ms | CPU µs/req (proxy) | noise |")
            P("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for s in S:
            nz = "⚠ pass " + ",".join(map(str, s["noisy_passes"])) if s.get("noisy_passes") else ""
            if s.get("errors"):
                nz += (" " if nz else "") + "errors: " + "; ".join(s["errors"])[:80]
            mm = f"{fnum(s.get('min'), vf)}–{fnum(s.get('max'), vf)}"
            name = f"**{label(s['target'])}**" if s["target"] in GATEWAYS else label(s["target"])
            if thr:
                P(f"| {name} | {fnum(s['median'], vf)} | {mm} | {fnum(s.get('ratio_vs_direct'), '%.3f')} | "
                  f"{fnum(s.get('ratio_vs_best_peer'), '%.3f')} | {fnum(s.get('machine_cpu_s_per_GB'), '%.3f')} "
                  f"({fnum(s.get('proxy_cpu_s_per_GB'), '%.3f')}) | {nz} |")
            else:
                p50 = s.get("p50_ms")
                extra = "" if p50 is not None or s.get("mean_ms") is None else f" (h2load mean {s['mean_ms']:.2f})"
                P(f"| {name} | {fnum(s['median'], vf)} | {mm} | {fnum(s.get('ratio_vs_direct'), '%.3f')} | "
                  f"{fnum(s.get('ratio_vs_best_peer'), '%.3f')} | {fnum(p50)}{extra} | {fnum(s.get('p99_ms'))} | "
                  f"{fnum(s.get('p999_ms'))} | {fnum(s.get('workload_cpu_us_per_req'), '%.1f')} "
                  f"({fnum(s.get('proxy_cpu_us_per_req'), '%.1f')}) | {nz} |")
    if mem:
        P("")
        P(f"**Idle connections** ({meta.get('idle_conns', '?')} opened, one request each, then held idle): "
          "growth of the proxy's RSS (all its processes) per connection held. Kernel socket state, and the "
          "eBPF maps, are kernel memory and not in any RSS.")
        P("")
        P("| | connections | held | RSS before → after (MiB) | bytes/conn | ×best peer |")
        P("|---|---|---:|---:|---:|---:|")
        for m in sorted(mem, key=lambda m: (m["test"], ORDER.index(m["target"]) if m["target"] in ORDER else 99)):
            name = f"**{label(m['target'])}**" if m["target"] in GATEWAYS else label(m["target"])
            kind = "spliced (L4)" if m["test"] == "mem_l4" else "HTTP keep-alive"
            short = f" ⚠ only {m['held']} of {m['n']} held" if m["held"] < 0.95 * m["n"] else ""
            if m.get("per_conn_method") == "average":
                short += " (bytes/conn: average over all held)"
            P(f"| {name} | {kind} | {m['held']}{short} | {m['rss_before_kb'] / 1024:.1f} → {m['rss_after_kb'] / 1024:.1f} | "
              f"{fnum(m.get('rss_bytes_per_conn'), '%.0f')} | {fnum(m.get('ratio_vs_best_peer'), '%.2f')} |")
    P("")
    return "\n".join(L)


def svg(by):
    tests = [t for t in by if any(s.get("ratio_vs_direct") is not None for s in by[t].values())]
    targets = [t for t in ORDER if t != "direct" and any(t in by[x] for x in tests)]
    bar, gap, left, width, top = 9, 10, 230, 520, 40
    scale_max = 1.2
    y = top
    out = []
    for test in tests:
        present = [t for t in targets if t in by[test]]
        out.append(f'<text x="{left - 8}" y="{y + bar * len(present) / 2 + 4}" text-anchor="end" '
                   f'font-size="12" font-weight="bold">{html.escape(SHORT.get(test, test))}</text>')
        for t in present:
            r = by[test][t].get("ratio_vs_direct")
            w = 0 if r is None else min(r, scale_max) / scale_max * width
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 1}" fill="{COLORS.get(t, "#444")}">'
                       f'<title>{html.escape(label(t))}: {fnum(r, "%.3f")} of direct</title></rect>')
            out.append(f'<text x="{left + w + 3:.1f}" y="{y + bar - 1}" font-size="8">{fnum(r, "%.2f")}</text>')
            y += bar
        y += gap
    h = y + 40
    axis = []
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + v / scale_max * width
        axis.append(f'<line x1="{x:.1f}" y1="{top - 5}" x2="{x:.1f}" y2="{y}" stroke="{"#000" if v == 1.0 else "#ddd"}" '
                    f'stroke-width="{1 if v == 1.0 else 0.5}"/>')
        axis.append(f'<text x="{x:.1f}" y="{top - 8}" font-size="10" text-anchor="middle">{v:g}</text>')
    legend = []
    lx = 10
    for t in targets:
        legend.append(f'<rect x="{lx}" y="{y + 12}" width="10" height="10" fill="{COLORS.get(t, "#444")}"/>'
                      f'<text x="{lx + 14}" y="{y + 21}" font-size="11">{html.escape(label(t))}</text>')
        lx += 14 + 7 * len(label(t)) + 12
    total_w = max(left + width + 40, lx + 10)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{h}" font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="10" y="16" font-size="13" font-weight="bold">Throughput as a fraction of direct (no proxy = 1), '
            f'median of passes; same machine, same run</text>\n'
            + "\n".join(axis + out + legend) + "\n</svg>\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    res = json.load(open(a.inp))
    by, rows, mem = build(res)
    tg = targets(by, mem)
    res["targets"] = tg
    os.makedirs(a.out_dir, exist_ok=True)

    def write(name, text):
        p = os.path.join(a.out_dir, name)
        with open(p + ".tmp", "w") as f:
            f.write(text)
        os.replace(p + ".tmp", p)
        print(f"wrote {p}")

    # raw per-pass measurements stay in results.json; their scratch paths do not matter
    write("results.json", json.dumps(res, indent=1) + "\n")
    write("results.md", markdown(res, by, mem, tg))
    write("results.svg", svg(by))
    for t in tg:
        st = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"  {st:8} {fnum(t['ratio'], '%.3f'):>7}  {t['target']}  [{t['measured']}]")


if __name__ == "__main__":
    main()
