//! `proxy-config xdp` and `proxy-config splice`: the admin API's `/xdp` and
//! `/debug/splice` views as plain tables (no istioctl counterpart to mirror).
use serde_json::Value;

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(x: &Value) -> String {
    match x {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// `proxy-config splice`: the admin `/debug/splice` view as tables.
pub fn render_splice(v: &Value, json: bool) -> String {
    if json {
        return format!("{v:#}\n");
    }
    let s = cell;
    let mut out = format!("MODE: {}", s(&v["mode"]));
    if let Some(b) = v["budget"].as_u64() {
        out += &format!("   BUDGET: {} KiB per direction", b / 1024);
    }
    if v["offload"].is_object() {
        out += &format!(
            "   OFFLOAD: after {} bytes at >= {} bytes per read",
            s(&v["offload"]["min_bytes"]),
            s(&v["offload"]["min_chunk"])
        );
    }
    out += "\n\n";
    let rows = ["kernel", "splice", "uring", "copy"]
        .iter()
        .map(|p| {
            let c = &v["paths"][p];
            vec![
                p.to_string(),
                s(&c["active"]),
                s(&c["flows"]),
                s(&c["bytes"]),
            ]
        })
        .collect();
    out += &table(&["PATH", "ACTIVE", "FLOWS", "BYTES"], rows);
    out += "\n";
    let mut rows = vec![
        vec!["offloads".to_string(), s(&v["offloads"])],
        vec!["pauses".to_string(), s(&v["pauses"])],
        vec!["paused now".to_string(), s(&v["paused_now"])],
    ];
    if let Some(f) = v["fallbacks"].as_object() {
        rows.extend(f.iter().map(|(k, n)| vec![format!("fallback {k}"), s(n)]));
    }
    if let Some(k) = v["kernel"].as_object() {
        rows.extend(k.iter().map(|(k, n)| vec![format!("kernel {k}"), s(n)]));
    }
    if let Some(m) = v["maps"].as_object() {
        rows.extend(
            m.iter()
                .map(|(k, n)| vec![format!("map {k} entries"), s(n)]),
        );
    }
    out += &table(&["COUNTER", "VALUE"], rows);
    out
}

/// `gateway proxy-config xdp`: the compiled (port, source prefix) verdicts, then the
/// kernel's counters per rule and port.
pub fn render_xdp(v: &Value, json: bool) -> String {
    if json {
        return format!("{v:#}\n");
    }
    let s = cell;
    let list = |x: &Value| x.as_array().cloned().unwrap_or_default();
    let ifaces: Vec<String> = list(&v["interfaces"])
        .iter()
        .map(|i| format!("{} ({})", s(&i["name"]), s(&i["mode"])))
        .collect();
    let mut out = format!(
        "MODE: {}{}\n\n",
        s(&v["mode"]),
        if ifaces.is_empty() {
            String::new()
        } else {
            format!(" on {}", ifaces.join(", "))
        }
    );
    let rows = list(&v["entries"])
        .iter()
        .map(|e| {
            vec![
                s(&e["port"]),
                s(&e["prefix"]),
                s(&e["action"]),
                s(&e["rule"]),
            ]
        })
        .collect();
    out += &table(&["PORT", "SOURCE PREFIX", "ACTION", "RULE"], rows);
    let counters = list(&v["counters"]["rules"]);
    if !counters.is_empty() {
        let rows = counters
            .iter()
            .map(|c| {
                vec![
                    s(&c["rule"]),
                    s(&c["port"]),
                    s(&c["action"]),
                    s(&c["pass_packets"]),
                    s(&c["drop_packets"]),
                    s(&c["drop_bytes"]),
                ]
            })
            .collect();
        out += "\n";
        out += &table(
            &[
                "RULE",
                "PORT",
                "ACTION",
                "PASSED PKTS",
                "DROPPED PKTS",
                "DROPPED BYTES",
            ],
            rows,
        );
    }
    out
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}
