//! The ClientHello sniffer (`gateway::tls::sni::sniff`) on arbitrary first flights.
//!
//! - It never panics.
//! - Verdicts are prefix-stable: the caller calls `sniff` on everything read so far after
//!   every read, so the input is fed as a growing buffer cut at arbitrary points (chosen
//!   from the input itself); every prefix is `Incomplete` or already the final verdict,
//!   and `Incomplete` only ever comes back for buffers shorter than `MAX_CLIENT_HELLO`.
//! - A found ClientHello agrees with tls-parser's full parse of the same bytes
//!   (reassembled here independently of the sniffer): the SNI it reports is a host_name
//!   entry of the `server_name` extension tls-parser sees, "no SNI" means tls-parser sees
//!   no `server_name` extension, and the ALPN lists are the same.
#![no_main]

use gateway::tls::sni::{MAX_CLIENT_HELLO, Sniff, sniff};
use libfuzzer_sys::fuzz_target;
use tls_parser::{
    TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions,
    parse_tls_message_handshake,
};

fuzz_target!(|data: &[u8]| {
    let verdict = sniff(data);
    if verdict == Sniff::Incomplete {
        assert!(
            data.len() < MAX_CLIENT_HELLO,
            "Incomplete for a {}-byte buffer",
            data.len()
        );
    }
    check_prefixes(data, &verdict);
    if let Sniff::ClientHello {
        sni,
        alpn,
        consumed,
    } = &verdict
    {
        check_against_tls_parser(data, sni.as_deref(), alpn, *consumed);
    }
});

/// Feeds `data` as TCP might deliver it: the 1..=6-byte prefixes (partial record and
/// handshake headers), then chunks whose sizes come from a generator seeded by the input.
fn check_prefixes(data: &[u8], full: &Sniff) {
    let mut cuts: Vec<usize> = (1..=6).filter(|&n| n < data.len()).collect();
    let mut seed = data.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let mut at = 0usize;
    while cuts.len() < 64 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Mostly small chunks (header-sized), sometimes a whole record's worth.
        let step = match seed >> 62 {
            0 => 1 + (seed >> 40) as usize % 8,
            1 | 2 => 1 + (seed >> 40) as usize % 512,
            _ => 1 + (seed >> 40) as usize % 20_000,
        };
        at += step;
        if at >= data.len() {
            break;
        }
        cuts.push(at);
    }
    cuts.sort_unstable();
    cuts.dedup();
    let mut settled: Option<(usize, Sniff)> = None;
    for &n in &cuts {
        let v = sniff(&data[..n]);
        if let Some((m, s)) = &settled {
            assert_eq!(&v, s, "verdict at {m} bytes changed at {n} bytes");
        } else if v != Sniff::Incomplete {
            assert_eq!(
                &v, full,
                "verdict at {n} bytes differs from the whole input's"
            );
            settled = Some((n, v));
        }
    }
}

/// Reassembles the handshake message from the records (independently of the sniffer)
/// and asks tls-parser what it contains.
fn check_against_tls_parser(data: &[u8], sni: Option<&str>, alpn: &[String], consumed: usize) {
    let mut msg = Vec::new();
    let mut off = 0;
    let mut need = None;
    while need.is_none_or(|n| msg.len() < n) {
        let hdr = data
            .get(off..off + 5)
            .expect("ClientHello verdict on a cut record header");
        assert_eq!(hdr[0], 0x16, "non-handshake record inside the ClientHello");
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        let body = data
            .get(off + 5..off + 5 + len)
            .expect("ClientHello verdict on a cut record");
        msg.extend_from_slice(body);
        off += 5 + len;
        if need.is_none() && msg.len() >= 4 {
            need = Some(
                4 + (usize::from(msg[1]) << 16 | usize::from(msg[2]) << 8 | usize::from(msg[3])),
            );
        }
    }
    assert_eq!(
        consumed, off,
        "consumed is not the end of the ClientHello's last record"
    );
    let need = need.expect("loop ends once the length is known");
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)))) =
        parse_tls_message_handshake(&msg[..need])
    else {
        // tls-parser is stricter in places (e.g. cipher suite list shapes); no opinion.
        return;
    };
    let Ok((rest, exts)) = parse_tls_client_hello_extensions(ch.ext.unwrap_or_default()) else {
        return;
    };
    if !rest.is_empty() {
        return; // an extension tls-parser's typed parsers reject: no full opinion
    }
    let names: Vec<Vec<&[u8]>> = exts
        .iter()
        .filter_map(|e| match e {
            TlsExtension::SNI(list) => Some(list.iter().map(|(_, n)| *n).collect()),
            _ => None,
        })
        .collect();
    match sni {
        Some(sni) => assert!(
            names.len() == 1
                && names[0]
                    .iter()
                    .any(|n| n.eq_ignore_ascii_case(sni.as_bytes())),
            "sniffer says SNI {sni:?}, tls-parser sees server_name extensions {names:?}"
        ),
        None => assert!(
            names.is_empty(),
            "sniffer says no SNI, tls-parser sees server_name extensions {names:?}"
        ),
    }
    let protos: Vec<Vec<String>> = exts
        .iter()
        .filter_map(|e| match e {
            TlsExtension::ALPN(list) => Some(
                list.iter()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    match protos.as_slice() {
        [] => assert!(alpn.is_empty(), "sniffer ALPN {alpn:?}, tls-parser none"),
        [one] => assert_eq!(alpn, one.as_slice(), "ALPN lists differ"),
        more => panic!("sniffer accepted {} ALPN extensions", more.len()),
    }
}
