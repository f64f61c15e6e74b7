#!/usr/bin/env python3
"""Turns the JSON that bench/peers.sh writes into the committed results:

    results.json  everything peers.sh measured, plus per-row ratios (vs direct, vs the best
                  peer) and the issues' targets evaluated (met / not met, measured ratio)
    results.md    the tables the README embeds
    results.svg   throughput as a fraction of direct, one bar per proxy (hand-written SVG)

    python3 bench/report.py --in /tmp/peerbench/results-peers.json --out-dir bench
Standard library only.
"""
import argparse
import html
import json
import os

# the gateway's L4 data paths: `auto` is the default (and the only gateway on the HTTP rows)
GATEWAYS = ("gateway_auto", "gateway_ebpf", "gateway_splice", "gateway_uring")
FORCED = ("gateway_ebpf", "gateway_splice", "gateway_uring")
PEERS = ("haproxy", "haproxy_splice", "nginx", "socat", "envoy")
# "the best peer" of issue 9's targets
TARGET_PEERS = ("haproxy", "nginx", "envoy")
ORDER = ("direct",) + GATEWAYS + PEERS
L4_TESTS = ("iperf1", "iperf4", "conn", "tls", "tlshs", "tlsbulk")
COLORS = {"direct": "#9e9e9e", "gateway_auto": "#1b5e20", "gateway_ebpf": "#00897b",
          "gateway_splice": "#7cb342", "gateway_uring": "#c0ca33",
          "haproxy": "#1565c0", "haproxy_splice": "#64b5f6", "nginx": "#ef6c00",
          "socat": "#8d6e63", "envoy": "#6a1b9a"}
LABEL = {"gateway_auto": "gateway (auto, the default)", "gateway_ebpf": "gateway --splice ebpf",
         "gateway_splice": "gateway --splice splice", "gateway_uring": "gateway --splice uring"}
SHORT = {"iperf1": "L4 iperf3 1 stream", "iperf4": "L4 iperf3 4 streams",
         "conn": "L4 short connections", "tls": "SNI passthrough rps", "tlshs": "SNI passthrough handshakes",
         "tlsbulk": "SNI passthrough throughput", "http": "HTTP keep-alive, 64 conns",
         "http512": "HTTP keep-alive, 512 conns", "h2": "HTTP/2 h2c", "https": "HTTPS termination rps",
         "hsk": "HTTPS new handshakes"}
# The issue's reference: peers measured with this harness on this machine kind, as
# fractions of direct (1 worker, pinned).
PEER_REFERENCE = {"iperf1": "0.72–0.79", "iperf4": "0.38–0.63", "conn": "0.43–0.75",
                  "http": "0.32–0.86", "tls": "0.82–0.86"}
MiB = 1024 * 1024
SLOW_LEAD_LIMIT = 64 * MiB  # issue 9: a slow reader keeps the sender's lead under 64 MiB


def fnum(x, fmt="%.2f", na="–"):
    return na if x is None else fmt % x


def value_fmt(unit):
    return "%.2f" if unit == "Gbit/s" else "%.0f"


def label(t):
    return LABEL.get(t, t)


def base_test(t):
    return t[:-len("_unpinned")] if t.endswith("_unpinned") else t


def short(t):
    b = SHORT.get(base_test(t), base_test(t))
    return b + " (unpinned)" if t.endswith("_unpinned") else b


def order_key(t):
    return ORDER.index(t) if t in ORDER else 99


def build(res):
    summary = res.get("summary", [])
    by = {}
    for s in summary:
        by.setdefault(s["test"], {})[s["target"]] = s
    rows = []
    for test, targets in by.items():
        peers = {t: s for t, s in targets.items() if t in PEERS and s.get("median") is not None}
        best = max(peers.values(), key=lambda s: s["median"], default=None)
        for t in sorted(targets, key=order_key):
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


def targets(by, mem, slow):
    out = []

    def add(group, name, measured, ratio, ok, note=""):
        out.append({"group": group, "target": name, "measured": measured,
                    "ratio": ratio, "met": None if ok is None else bool(ok), "note": note})

    def s(test, tg):
        return by.get(test, {}).get(tg)

    def med(test, tg):
        x = s(test, tg)
        return x.get("median") if x else None

    # --- issue 9, in the pinned topology and again in the unpinned one
    for topo, sfx in (("pinned", ""), ("unpinned", "_unpinned")):
        grp = f"issue 9, {topo}"
        tag = "" if topo == "pinned" else " (unpinned)"
        if not [t for t in by if t.endswith("_unpinned") == (topo == "unpinned") and base_test(t) in L4_TESTS]:
            continue
        for test, n in (("iperf1", "1 stream"), ("iperf4", "4 streams")):
            g, d = s(test + sfx, "gateway_auto"), s(test + sfx, "direct")
            r = g.get("ratio_vs_direct") if g else None
            add(grp, f"auto, iperf3 {n}{tag}: ≥ 0.90 of direct",
                f"{fnum(g and g['median'])} vs {fnum(d and d['median'])} Gbit/s" if g and d else "not measured",
                r, None if r is None else r >= 0.90)
        g, d = s("iperf4" + sfx, "gateway_auto"), s("iperf4" + sfx, "direct")
        gc, dc = (g or {}).get("machine_cpu_s_per_GB"), (d or {}).get("machine_cpu_s_per_GB")
        r = gc / dc if gc and dc else None
        add(grp, f"auto, iperf3 4 streams{tag}: whole-machine CPU per GB ≤ 1.2× direct's",
            f"{fnum(gc, '%.3f')} vs {fnum(dc, '%.3f')} CPU-s/GB" if r else "not measured",
            r, None if r is None else r <= 1.2,
            "machine-wide busy time (/proc/stat) per GB moved, so softirq and kernel threads count")
        for test, what in (("tls", "SNI passthrough keep-alive rps"), ("conn", "short connections/s")):
            g = med(test + sfx, "gateway_auto")
            best = max(((t, med(test + sfx, t)) for t in TARGET_PEERS if med(test + sfx, t) is not None),
                       key=lambda x: x[1], default=None)
            r = g / best[1] if g is not None and best and best[1] else None
            add(grp, f"auto, {what}{tag}: ≥ the best peer (HAProxy, nginx, Envoy)",
                f"{fnum(g, '%.0f')} vs {best[0]} {fnum(best[1], '%.0f')}" if r is not None else "not measured",
                r, None if r is None else r >= 1.0, "ratio is against the best peer")
        for test in L4_TESTS:
            if test + sfx not in by:
                continue
            g = med(test + sfx, "gateway_auto")
            best = max(((t, med(test + sfx, t)) for t in FORCED if med(test + sfx, t) is not None),
                       key=lambda x: x[1], default=None)
            r = g / best[1] if g is not None and best and best[1] else None
            unit = (s(test + sfx, "gateway_auto") or {}).get("unit") or ""
            add(grp, f"auto ≥ the best forced mode (ebpf, splice, uring): {short(test + sfx)}",
                f"{fnum(g, value_fmt(unit))} vs {best[0].removeprefix('gateway_')} {fnum(best[1], value_fmt(unit))} {unit}"
                if r is not None else "not measured",
                r, None if r is None else r >= 1.0, "ratio is against the best forced mode")

    # --- the slow reader (issue 9's test figure, per gateway mode, as a bench row)
    if slow:
        gw = [x for x in slow if x["target"] in GATEWAYS]
        leads = [(x["target"], x.get("max_lead_bytes")) for x in gw]
        known = [v for _, v in leads if v is not None]
        worst = max(known) if known and len(known) == len(leads) else None
        add("issue 9, slow reader", "slow reader (4 MB/s) against a fast sender: the sender's lead < 64 MiB in every gateway mode",
            ", ".join(f"{t.removeprefix('gateway_')} {fnum(v and v / MiB, '%.1f')}" for t, v in leads) + " MiB" if leads else "not measured",
            worst / SLOW_LEAD_LIMIT if worst is not None else None,
            None if worst is None else worst < SLOW_LEAD_LIMIT, "ratio = the worst mode's lead / 64 MiB")

    # --- issue 5's targets that still stand, for the default gateway (auto)
    grp = "issue 5"
    for test, goal in (("iperf1", 0.95), ("iperf4", 0.90)):
        g, d = s(test, "gateway_auto"), s(test, "direct")
        r = g.get("ratio_vs_direct") if g else None
        add(grp, f"L4 (auto), iperf3 {test[-1]} stream{'s' if test[-1] != '1' else ''}: ≥ {goal:.2f} of direct",
            f"{fnum(g and g['median'])} vs {fnum(d and d['median'])} Gbit/s" if g and d else "not measured",
            r, None if r is None else r >= goal)
    for test in ("iperf1", "iperf4"):
        g, d = s(test, "gateway_auto"), s(test, "direct")
        gc, dc = (g or {}).get("machine_cpu_s_per_GB"), (d or {}).get("machine_cpu_s_per_GB")
        r = gc / dc if gc and dc else None
        add(grp, f"L4 (auto), {test[-1]} stream{'s' if test[-1] != '1' else ''}: whole-machine CPU per GB within 10 % of direct's",
            f"{fnum(gc, '%.3f')} vs {fnum(dc, '%.3f')} CPU-s/GB" if r else "not measured",
            r, None if r is None else r <= 1.10,
            "machine-wide busy time (/proc/stat) per GB moved, so softirq and kernel threads count")
    g = s("conn", "gateway_auto")
    r = g.get("ratio_vs_direct") if g else None
    add(grp, "Short connections/s through the L4 route (auto): ≥ 0.80 of direct",
        f"{fnum(g and g['median'], '%.0f')} conn/s" if g else "not measured", r, None if r is None else r >= 0.80)
    g = s("tls", "gateway_auto")
    r = g.get("ratio_vs_direct") if g else None
    add(grp, "SNI passthrough (HTTPS keep-alive rps through the passthrough route, auto): ≥ 0.95 of direct",
        f"{fnum(g and g['median'], '%.0f')} req/s" if g else "not measured", r, None if r is None else r >= 0.95)
    g = s("http", "gateway_auto")
    r = g.get("ratio_vs_direct") if g else None
    add(grp, "HTTP keep-alive requests/s on one worker core: ≥ 0.90 of direct",
        f"{fnum(g and g['median'], '%.0f')} req/s" if g else "not measured", r, None if r is None else r >= 0.90)
    n = s("http", "nginx")
    gp, np_ = (g or {}).get("p99_ms"), (n or {}).get("p99_ms")
    r = gp / np_ if gp and np_ else None
    add(grp, "HTTP keep-alive p99 no worse than nginx's",
        f"p99 {fnum(gp)} ms vs nginx {fnum(np_)} ms" if r else "not measured", r, None if r is None else r <= 1.0)
    g = s("https", "gateway_auto")
    r = g.get("ratio_vs_best_peer") if g else None
    add(grp, "HTTPS termination requests/s ≥ the best peer",
        f"{fnum(g and g['median'], '%.0f')} req/s vs {g.get('best_peer') if g else '–'}" if g else "not measured",
        r, None if r is None else r >= 1.0, "ratio is against the best peer, not direct")
    m = next((m for m in mem if m["test"] == "mem_l4" and m["target"] == "gateway_auto"), None)
    b = m.get("rss_bytes_per_conn") if m else None
    add(grp, "Idle memory: ≤ 1 KiB of gateway RSS per spliced connection (auto)",
        f"{fnum(b, '%.0f')} B/conn ({m['held']} held)" if m else "not measured",
        b / 1024 if b is not None else None, None if b is None else b <= 1024, "ratio = bytes per connection / 1024")
    m = next((m for m in mem if m["test"] == "mem_http" and m["target"] == "gateway_auto"), None)
    best = next((x for x in mem if m and x["test"] == "mem_http" and x["target"] == m.get("best_peer")), None)
    gb, bb = (m or {}).get("rss_bytes_per_conn"), (best or {}).get("rss_bytes_per_conn")
    add(grp, "Idle memory: ≤ the best peer per HTTP keep-alive connection",
        f"{fnum(gb, '%.0f')} B/conn vs {m.get('best_peer')} {fnum(bb, '%.0f')} B/conn" if m and best else "not measured",
        m.get("ratio_vs_best_peer") if m else None, None if gb is None or bb is None else gb <= max(bb, 0),
        "ratio is against the best peer")
    return out


def cpu_cell(c):
    if not c or c.get("busy_pct") is None:
        return "–"
    return f"{c['busy_pct']:.0f} % ({c['softirq_pct']:.0f})"


def path_cell(s):
    """Where a gateway row's bytes went (/debug/splice deltas), e.g. "kernel 99.9 %, 1 offload"."""
    b = s.get("splice_bytes_by_path")
    if not b:
        return ""
    tot = sum(v for v in b.values() if v)
    parts = [f"{k} {100 * v / tot:.1f} %" for k, v in sorted(b.items(), key=lambda kv: -(kv[1] or 0)) if v and tot and 100 * v / tot >= 0.05]
    extra = []
    if s.get("splice_offloads"):
        extra.append(f"{s['splice_offloads']:.0f} offload{'s' if s['splice_offloads'] != 1 else ''}")
    if s.get("splice_pauses"):
        extra.append(f"{s['splice_pauses']:.0f} pause{'s' if s['splice_pauses'] != 1 else ''}")
    if s.get("splice_fallbacks"):
        extra.append(f"{s['splice_fallbacks']:.0f} fallback{'s' if s['splice_fallbacks'] != 1 else ''}")
    if s.get("splice_redirect_failures"):
        extra.append(f"**{s['splice_redirect_failures']:.0f} redirect failures**")
    return ", ".join(parts + extra)


def markdown(res, by, mem, slow, tg):
    meta = res.get("meta", {})
    L = []
    P = L.append
    P(f"Measured {meta.get('date', '?')} on {meta.get('nproc', '?')} CPUs ({meta.get('cpu_model', '?')}), "
      f"kernel {meta.get('kernel', '?')}; {meta.get('runs', '?')} passes of {meta.get('dur_s', '?')} s tests; "
      f"workers={meta.get('workers', '?')}; pinned topology: {meta.get('pin_desc', '')}; "
      f"unpinned topology ({meta.get('unpinned_tests') or 'not run'}): {meta.get('unpinned_desc', 'not run')}. "
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
    P("| | target | measured | ratio | |")
    P("|---|---|---|---:|---|")
    for t in tg:
        st = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        P(f"| {t['group']} | {t['target']} | {t['measured']} | {fnum(t['ratio'], '%.3f')} | {st} |")
    P("")
    P("### Every row")
    P("")
    P("Median over passes, with the min–max over passes. ×direct = value/direct in the same pass and the same "
      "topology (median over passes); ×best peer = against the best of HAProxy, nginx, Envoy (and socat / "
      "HAProxy splice when run) for that row. CPU: for throughput rows whole-machine CPU-seconds per GB moved "
      "(proxy-only in brackets); for request rows whole-workload CPU-µs per request (proxy-only in brackets). "
      "path: where a gateway row's bytes went, from its `/debug/splice` before and after (kernel = the eBPF "
      "sockhash splice, splice = splice(2) through pipes, uring = io_uring copies; offloads = flows `auto` "
      "handed to the kernel).")
    for topo in ("pinned", "unpinned"):
        tests = [t for t in by if (t.endswith("_unpinned")) == (topo == "unpinned")]
        if not tests:
            continue
        P("")
        P(f"#### {'Pinned: proxy on CPU 1, everything else on CPU 0' if topo == 'pinned' else 'Unpinned: every process free to use every CPU (proxies still one worker)'}")
        for test in tests:
            targets = by[test]
            S = [targets[t] for t in sorted(targets, key=order_key)]
            unit = S[0].get("unit") or ""
            vf = value_fmt(unit)
            thr = unit == "Gbit/s"
            l4 = base_test(test) in L4_TESTS
            P("")
            ref = f" — issue 5's peer reference (pinned): {PEER_REFERENCE[test]} of direct" if test in PEER_REFERENCE else ""
            P(f"**{S[0].get('description', test)}** ({unit}){ref}")
            P("")
            pc = " path |" if l4 else ""
            pcs = "---|" if l4 else ""
            if thr:
                P(f"| | median | min–max | ×direct | ×best peer | CPU s/GB machine (proxy) |{pc} noise |")
                P(f"|---|---:|---:|---:|---:|---:|{pcs}---|")
            else:
                P(f"| | median | min–max | ×direct | ×best peer | p50 ms | p99 ms | p99.9 ms | CPU µs/req (proxy) |{pc} noise |")
                P(f"|---|---:|---:|---:|---:|---:|---:|---:|---:|{pcs}---|")
            for s in S:
                nz = "⚠ pass " + ",".join(map(str, s["noisy_passes"])) if s.get("noisy_passes") else ""
                if s.get("errors"):
                    nz += (" " if nz else "") + "errors: " + "; ".join(s["errors"])[:80]
                mm = f"{fnum(s.get('min'), vf)}–{fnum(s.get('max'), vf)}"
                name = f"**{label(s['target'])}**" if s["target"] in GATEWAYS else label(s["target"])
                pth = f" {path_cell(s)} |" if l4 else ""
                if thr:
                    P(f"| {name} | {fnum(s['median'], vf)} | {mm} | {fnum(s.get('ratio_vs_direct'), '%.3f')} | "
                      f"{fnum(s.get('ratio_vs_best_peer'), '%.3f')} | {fnum(s.get('machine_cpu_s_per_GB'), '%.3f')} "
                      f"({fnum(s.get('proxy_cpu_s_per_GB'), '%.3f')}) |{pth} {nz} |")
                else:
                    p50 = s.get("p50_ms")
                    extra = "" if p50 is not None or s.get("mean_ms") is None else f" (h2load mean {s['mean_ms']:.2f})"
                    P(f"| {name} | {fnum(s['median'], vf)} | {mm} | {fnum(s.get('ratio_vs_direct'), '%.3f')} | "
                      f"{fnum(s.get('ratio_vs_best_peer'), '%.3f')} | {fnum(p50)}{extra} | {fnum(s.get('p99_ms'))} | "
                      f"{fnum(s.get('p999_ms'))} | {fnum(s.get('workload_cpu_us_per_req'), '%.1f')} "
                      f"({fnum(s.get('proxy_cpu_us_per_req'), '%.1f')}) |{pth} {nz} |")

    # per-CPU busy figures for the iperf rows, both topologies
    cols = [t for t in ("iperf1", "iperf4", "iperf1_unpinned", "iperf4_unpinned") if t in by]
    ncpu = max((len(s.get("per_cpu") or []) for t in cols for s in by[t].values()), default=0)
    if cols and ncpu:
        P("")
        P("### Per-CPU busy time, iperf3 rows")
        P("")
        P("Each CPU's busy share of its time over the measurement (user+nice+system+irq+softirq, /proc/stat), median "
          "over passes; in brackets the irq+softirq part of it. Pinned: CPU 0 runs the iperf3 client and server, "
          "CPU 1 the proxy. On loopback the receive path of a segment (softirq), and the eBPF verdict and psock "
          "backlog work of the kernel splice, run on the CPU of the task that sent it — the client's — so a "
          "kernel-spliced flow loads CPU 0 and leaves the proxy's CPU idle, where a NIC would spread it by RSS.")
        P("")
        hdr = "| |" + "".join(f" {short(t)}, CPU {i} |" for t in cols for i in range(ncpu))
        P(hdr)
        P("|---|" + "---:|" * (len(cols) * ncpu))
        targets = sorted({tg for t in cols for tg in by[t]}, key=order_key)
        for tg in targets:
            cells = []
            for t in cols:
                s = by[t].get(tg)
                pcs = (s or {}).get("per_cpu") or []
                cells += [cpu_cell(pcs[i] if i < len(pcs) else None) for i in range(ncpu)]
            name = f"**{label(tg)}**" if tg in GATEWAYS else label(tg)
            P(f"| {name} | " + " | ".join(cells) + " |")

    # the splice verdict's run time
    bpf = [s for t in by.values() for s in t.values() if s.get("bpf_run_cnt") is not None]
    if bpf:
        P("")
        P("### eBPF: the splice_verdict program's run time")
        P("")
        P("From `kernel.bpf_stats_enabled=1` (on for the run): the program's `run_time_ns` and `run_cnt` "
          "(`/proc/<pid>/fdinfo` of its fd) before and after each measurement; median over passes. "
          "CPU s/GB = verdict time per GB the row moved (for request rows, per GB of responses); "
          "% of a core = verdict time over the measurement's wall time. `auto` runs the verdict only on "
          "flows it offloaded.")
        P("")
        P("| row | gateway | runs | ns per run | CPU s/GB in the verdict | % of a core |")
        P("|---|---|---:|---:|---:|---:|")
        for s in sorted(bpf, key=lambda s: (s["test"].endswith("_unpinned"), list(by).index(s["test"]), order_key(s["target"]))):
            P(f"| {short(s['test'])} | {label(s['target'])} | {fnum(s.get('bpf_run_cnt'), '%.0f')} | "
              f"{fnum(s.get('bpf_ns_per_run'), '%.0f')} | {fnum(s.get('bpf_cpu_s_per_GB'), '%.4f')} | "
              f"{fnum(s.get('bpf_cpu_pct'), '%.1f')} |")

    if slow:
        P("")
        P(f"### Slow reader: one connection, a sender as fast as it can for {meta.get('slow_secs', '?')} s, an upstream "
          f"reading {float(meta.get('slow_rate_Bps') or 0) / 1e6:.0f} MB/s")
        P("")
        P("Through each proxy's L4 route (pinned topology; `bench/slow_reader.py`). Sender's lead = bytes the client's "
          "`send()` accepted minus bytes the upstream read, the maximum over the run: the client's send buffer, the "
          "proxy (sockets, pipes, buffers, or an in-kernel queue) and the upstream's receive buffer; direct is the "
          "floor. MemAvailable drop = the largest fall of `/proc/meminfo` MemAvailable below its value just before "
          "(machine-wide: other workloads move it too). TCP memory = the largest `/proc/net/sockstat` `TCP: mem` "
          "(pages × 4096, every TCP socket of the machine; before the run in brackets). Released = seconds until "
          "no socket of the flow was left once the upstream reset it.")
        P("")
        P("| | sent MB | read MB | read MB/s | sender's lead MiB | MemAvailable drop MiB | TCP memory MiB | released s | path | |")
        P("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
        for r in sorted(slow, key=lambda r: order_key(r["target"])):
            name = f"**{label(r['target'])}**" if r["target"] in GATEWAYS else label(r["target"])
            sp = r.get("splice") or {}
            pth = ""
            if sp:
                pth = path_cell({"splice_bytes_by_path": {k: v.get("bytes") for k, v in (sp.get("paths") or {}).items()},
                                 "splice_offloads": sp.get("offloads"), "splice_pauses": sp.get("pauses"),
                                 "splice_fallbacks": sp.get("fallbacks"),
                                 "splice_redirect_failures": (sp.get("kernel") or {}).get("redirect_failures")})
            lead = r.get("max_lead_bytes")
            flag = "⚠ ≥ 64 MiB" if lead is not None and lead >= SLOW_LEAD_LIMIT else ""
            if r.get("error"):
                flag = (flag + " " if flag else "") + "error: " + str(r["error"])[:80]
            P(f"| {name} | {fnum(r.get('sent_bytes') and r['sent_bytes'] / 1e6, '%.0f')} | "
              f"{fnum(r.get('read_bytes') and r['read_bytes'] / 1e6, '%.0f')} | "
              f"{fnum(r.get('read_rate_Bps') and r['read_rate_Bps'] / 1e6, '%.1f')} | {fnum(lead and lead / MiB, '%.1f')} | "
              f"{fnum(None if r.get('memavail_drop_max_bytes') is None else r['memavail_drop_max_bytes'] / MiB, '%.0f')} | "
              f"{fnum(r.get('tcp_mem_max_bytes') and r['tcp_mem_max_bytes'] / MiB, '%.1f')} "
              f"({fnum(r.get('tcp_mem_before_bytes') and r['tcp_mem_before_bytes'] / MiB, '%.1f')}) | "
              f"{fnum(r.get('released_s'), '%.1f')}{'' if r.get('released', True) else ' (not yet)'} | {pth} | {flag} |")

    if mem:
        P("")
        P(f"**Idle connections** ({meta.get('idle_conns', '?')} opened, one request each, then held idle): "
          "growth of the proxy's RSS (all its processes) per connection held. Kernel socket state, and the "
          "eBPF maps, are kernel memory and not in any RSS.")
        P("")
        P("| | connections | held | RSS before → after (MiB) | bytes/conn | ×best peer |")
        P("|---|---|---:|---:|---:|---:|")
        for m in sorted(mem, key=lambda m: (m["test"], order_key(m["target"]))):
            name = f"**{label(m['target'])}**" if m["target"] in GATEWAYS else label(m["target"])
            kind = "spliced (L4)" if m["test"] == "mem_l4" else "HTTP keep-alive"
            short_ = f" ⚠ only {m['held']} of {m['n']} held" if m["held"] < 0.95 * m["n"] else ""
            if m.get("per_conn_method") == "average":
                short_ += " (bytes/conn: average over all held)"
            P(f"| {name} | {kind} | {m['held']}{short_} | {m['rss_before_kb'] / 1024:.1f} → {m['rss_after_kb'] / 1024:.1f} | "
              f"{fnum(m.get('rss_bytes_per_conn'), '%.0f')} | {fnum(m.get('ratio_vs_best_peer'), '%.2f')} |")
    P("")
    return "\n".join(L)


def svg(by):
    tests = [t for t in by if any(s.get("ratio_vs_direct") is not None for s in by[t].values())]
    # pinned rows first, then the unpinned ones
    tests.sort(key=lambda t: t.endswith("_unpinned"))
    targets = [t for t in ORDER if t != "direct" and any(t in by[x] for x in tests)]
    bar, gap, left, width, top = 9, 10, 250, 520, 40
    scale_max = 1.2
    y = top
    out = []
    for test in tests:
        present = [t for t in targets if t in by[test]]
        out.append(f'<text x="{left - 8}" y="{y + bar * len(present) / 2 + 4}" text-anchor="end" '
                   f'font-size="12" font-weight="bold">{html.escape(short(test))}</text>')
        for t in present:
            r = by[test][t].get("ratio_vs_direct")
            w = 0 if r is None else min(r, scale_max) / scale_max * width
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 1}" fill="{COLORS.get(t, "#444")}">'
                       f'<title>{html.escape(label(t))}: {fnum(r, "%.3f")} of direct</title></rect>')
            out.append(f'<text x="{left + w + 3:.1f}" y="{y + bar - 1}" font-size="8">{fnum(r, "%.2f")}</text>')
            y += bar
        y += gap
    h = y + 60
    axis = []
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        x = left + v / scale_max * width
        axis.append(f'<line x1="{x:.1f}" y1="{top - 5}" x2="{x:.1f}" y2="{y}" stroke="{"#000" if v == 1.0 else "#ddd"}" '
                    f'stroke-width="{1 if v == 1.0 else 0.5}"/>')
        axis.append(f'<text x="{x:.1f}" y="{top - 8}" font-size="10" text-anchor="middle">{v:g}</text>')
    legend = []
    lx, ly = 10, y + 12
    for t in targets:
        wlab = 14 + 6 * len(label(t)) + 12
        if lx + wlab > left + width + 40:
            lx, ly = 10, ly + 16
        legend.append(f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{COLORS.get(t, "#444")}"/>'
                      f'<text x="{lx + 14}" y="{ly + 9}" font-size="11">{html.escape(label(t))}</text>')
        lx += wlab
    h = ly + 30
    total_w = left + width + 40
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{h}" font-family="sans-serif">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="10" y="16" font-size="13" font-weight="bold">Throughput as a fraction of direct (no proxy = 1), '
            f'median of passes; same machine, same run, same topology</text>\n'
            + "\n".join(axis + out + legend) + "\n</svg>\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--in", dest="inp", required=True)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    res = json.load(open(a.inp))
    by, rows, mem = build(res)
    slow = res.get("slowread", [])
    tg = targets(by, mem, slow)
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
    write("results.md", markdown(res, by, mem, slow, tg))
    write("results.svg", svg(by))
    for t in tg:
        st = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
        print(f"  {st:8} {fnum(t['ratio'], '%.3f'):>7}  [{t['group']}] {t['target']}  [{t['measured']}]")


if __name__ == "__main__":
    main()
