//! Tests for [`crate::tls::sni::sniff`].
//!
//! Vectors in `src/tls/testdata/` (see `README.md` there for how each was produced):
//! real first flights captured on loopback from openssl s_client and curl, a real rustls
//! (aws-lc-rs) ClientHello with an X25519MLKEM768 key share, and two derived from the
//! curl capture: padded to 40 000 bytes over 3 records, and cut into 1..=50-byte records.

use crate::tls::sni::{MAX_CLIENT_HELLO, Sniff, sniff};

const SNI: &str = "simple-sni-1.istioinaction.io";

struct Vector {
    name: &'static str,
    bytes: &'static [u8],
    sni: Option<&'static str>,
    alpn: &'static [&'static str],
}

const VECTORS: &[Vector] = &[
    Vector {
        name: "openssl_tls12_sni",
        bytes: include_bytes!("../testdata/openssl_tls12_sni.bin"),
        sni: Some(SNI),
        alpn: &[],
    },
    Vector {
        name: "openssl_tls13_sni",
        bytes: include_bytes!("../testdata/openssl_tls13_sni.bin"),
        sni: Some(SNI),
        alpn: &[],
    },
    Vector {
        name: "curl_tls13_sni_alpn",
        bytes: include_bytes!("../testdata/curl_tls13_sni_alpn.bin"),
        sni: Some(SNI),
        alpn: &["h2", "http/1.1"],
    },
    Vector {
        name: "rustls_x25519mlkem768",
        bytes: include_bytes!("../testdata/rustls_x25519mlkem768.bin"),
        sni: Some(SNI),
        alpn: &["h2", "http/1.1"],
    },
    Vector {
        name: "curl_tls13_padded_40k_3records",
        bytes: include_bytes!("../testdata/curl_tls13_padded_40k_3records.bin"),
        sni: Some(SNI),
        alpn: &["h2", "http/1.1"],
    },
    Vector {
        name: "curl_tls13_tiny_records",
        bytes: include_bytes!("../testdata/curl_tls13_tiny_records.bin"),
        sni: Some(SNI),
        alpn: &["h2", "http/1.1"],
    },
    Vector {
        name: "openssl_nosni",
        bytes: include_bytes!("../testdata/openssl_nosni.bin"),
        sni: None,
        alpn: &[],
    },
];

fn expected(v: &Vector, consumed: usize) -> Sniff {
    Sniff::ClientHello {
        sni: v.sni.map(str::to_owned),
        alpn: v.alpn.iter().map(|s| s.to_string()).collect(),
        consumed,
    }
}

fn vector(name: &str) -> &'static [u8] {
    VECTORS
        .iter()
        .find(|v| v.name == name)
        .map(|v| v.bytes)
        .expect("vector")
}

/// Split a record stream into (header, body) pairs (test helper; inputs are trusted).
fn records(buf: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let len = usize::from(u16::from_be_bytes([buf[off + 3], buf[off + 4]]));
        out.push((&buf[off..off + 5], &buf[off + 5..off + 5 + len]));
        off += 5 + len;
    }
    out
}

/// The handshake message carried by a record stream.
fn handshake(buf: &[u8]) -> Vec<u8> {
    records(buf)
        .into_iter()
        .flat_map(|(_, b)| b.to_vec())
        .collect()
}

/// Wrap a handshake message into handshake records of the given sizes (last size repeats).
fn fragment(hs: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = hs;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i.min(sizes.len() - 1)].min(rest.len());
        out.extend_from_slice(&[0x16, 0x03, 0x01]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    out
}

/// Build a minimal ClientHello handshake message with the given extensions
/// (`None` = no extensions block at all, as a TLS 1.0 client may send).
fn client_hello(exts: Option<&[(u16, Vec<u8>)]>) -> Vec<u8> {
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    if let Some(exts) = exts {
        let mut block = Vec::new();
        for (t, d) in exts {
            block.extend_from_slice(&t.to_be_bytes());
            block.extend_from_slice(&(d.len() as u16).to_be_bytes());
            block.extend_from_slice(d);
        }
        body.extend_from_slice(&(block.len() as u16).to_be_bytes());
        body.extend_from_slice(&block);
    }
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    hs
}

fn sni_ext(entries: &[(u8, &[u8])]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for (t, name) in entries {
        list.push(*t);
        list.extend_from_slice(&(name.len() as u16).to_be_bytes());
        list.extend_from_slice(name);
    }
    let mut d = (list.len() as u16).to_be_bytes().to_vec();
    d.extend_from_slice(&list);
    (0, d)
}

fn alpn_ext(protos: &[&[u8]]) -> (u16, Vec<u8>) {
    let mut list = Vec::new();
    for p in protos {
        list.push(p.len() as u8);
        list.extend_from_slice(p);
    }
    let mut d = (list.len() as u16).to_be_bytes().to_vec();
    d.extend_from_slice(&list);
    (16, d)
}

fn sniff_exts(exts: &[(u16, Vec<u8>)]) -> Sniff {
    sniff(&fragment(&client_hello(Some(exts)), &[16384]))
}

// ---------------------------------------------------------------- real vectors

#[test]
fn every_prefix_is_incomplete_and_full_buffer_parses() {
    for v in VECTORS {
        for n in 0..v.bytes.len() {
            assert_eq!(
                sniff(&v.bytes[..n]),
                Sniff::Incomplete,
                "{}: prefix of {n}/{} bytes",
                v.name,
                v.bytes.len()
            );
        }
        assert_eq!(sniff(v.bytes), expected(v, v.bytes.len()), "{}", v.name);
    }
}

#[test]
fn trailing_pipelined_bytes_are_ignored() {
    let trailers: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // a TLS 1.3 middlebox-compat ChangeCipherSpec + early application data record
        &[
            0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03, 0x00, 0x02, 0xaa, 0xbb,
        ],
        // another handshake record (e.g. a second flight glued on)
        &[0x16, 0x03, 0x03, 0x00, 0x04, 0x14, 0x00, 0x00, 0x00],
        &[0x00],
        &[0xff; 70_000],
    ];
    for v in VECTORS {
        for t in trailers {
            let mut buf = v.bytes.to_vec();
            buf.extend_from_slice(t);
            assert_eq!(sniff(&buf), expected(v, v.bytes.len()), "{}", v.name);
        }
    }
}

#[test]
fn vectors_are_what_they_claim() {
    // TLS 1.2-only client: legacy_version 0x0303 and no supported_versions extension.
    let hs = handshake(vector("openssl_tls12_sni"));
    assert_eq!(&hs[4..6], &[0x03, 0x03]);
    let (_, ch) = tls_parser::parse_tls_handshake_client_hello(&hs[4..]).unwrap();
    let exts = tls_parser::parse_tls_client_hello_extensions(ch.ext.unwrap())
        .unwrap()
        .1;
    assert!(
        !exts
            .iter()
            .any(|e| matches!(e, tls_parser::TlsExtension::SupportedVersions(_)))
    );

    // Post-quantum: an X25519MLKEM768 (0x11ec) key share of 1184 + 32 = 1216 bytes.
    let hs = handshake(vector("rustls_x25519mlkem768"));
    let (_, ch) = tls_parser::parse_tls_handshake_client_hello(&hs[4..]).unwrap();
    let mut exts = ch.ext.unwrap();
    let mut found = false;
    while !exts.is_empty() {
        let (rest, e) = tls_parser::parse_tls_extension_unknown(exts).unwrap();
        exts = rest;
        if let tls_parser::TlsExtension::Unknown(t, d) = e
            && t.0 == 0x0033
        {
            // client_shares<u16>: (group u16, key_exchange<u16>)*
            let mut shares = &d[2..];
            while !shares.is_empty() {
                let group = u16::from_be_bytes([shares[0], shares[1]]);
                let len = usize::from(u16::from_be_bytes([shares[2], shares[3]]));
                if group == 0x11ec {
                    assert_eq!(len, 1216);
                    found = true;
                }
                shares = &shares[4 + len..];
            }
        }
    }
    assert!(found, "no X25519MLKEM768 key share");

    // Over 16 KiB: 3 records, none over 2^14.
    let big = vector("curl_tls13_padded_40k_3records");
    let recs = records(big);
    assert_eq!(recs.len(), 3);
    assert!(recs.iter().all(|(_, b)| b.len() <= 16384));
    assert_eq!(handshake(big).len(), 40_000);

    // Tiny records: many of 1..=50 bytes, same handshake message as the curl capture.
    let tiny = vector("curl_tls13_tiny_records");
    let recs = records(tiny);
    assert!(recs.len() > 10);
    assert!(recs.iter().all(|(_, b)| (1..=50).contains(&b.len())));
    assert_eq!(handshake(tiny), handshake(vector("curl_tls13_sni_alpn")));
}

#[test]
fn verdict_never_changes_once_final() {
    // The incremental contract: once a prefix yields a final verdict, longer buffers
    // yield the same verdict (checked on garbage-appended vectors).
    for v in VECTORS {
        let mut buf = v.bytes.to_vec();
        buf.extend_from_slice(b"\x16\x03\x01\x00\x05junk");
        let full = sniff(&buf);
        for n in v.bytes.len()..=buf.len() {
            assert_eq!(sniff(&buf[..n]), full, "{}", v.name);
        }
    }
}

#[test]
fn refragmented_every_way_still_parses() {
    let hs = handshake(vector("rustls_x25519mlkem768"));
    for size in [1, 2, 3, 4, 5, 7, 100, 1000, 16384] {
        let buf = fragment(&hs, &[size]);
        assert_eq!(
            sniff(&buf),
            expected(&VECTORS[3], buf.len()),
            "records of {size}"
        );
        // spot-check prefixes around record boundaries
        for n in (0..buf.len()).step_by(size.clamp(1, 97)) {
            assert_eq!(sniff(&buf[..n]), Sniff::Incomplete, "size {size} n {n}");
        }
    }
}

// ---------------------------------------------------------------- not TLS

#[test]
fn plaintext_protocols_are_not_tls_from_the_first_byte() {
    let inputs: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: simple-sni-1.istioinaction.io\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n",
        b"\r\n\r\n\0\r\nQUIT\n",
        // SSLv2-compatible ClientHello header (not supported by Envoy/BoringSSL either)
        &[0x80, 0x2e, 0x01, 0x03, 0x01],
        // TLS alert / application data records
        &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
        &[0x17, 0x03, 0x03],
    ];
    for input in inputs {
        assert_eq!(sniff(&input[..1]), Sniff::NotTls, "{input:?}");
        assert_eq!(sniff(input), Sniff::NotTls, "{input:?}");
    }
}

#[test]
fn random_bytes_are_not_tls() {
    for seed in 1..=64u64 {
        let mut rng = XorShift(seed);
        let mut buf: Vec<u8> = (0..512).map(|_| rng.next() as u8).collect();
        assert_eq!(sniff(&buf), Sniff::NotTls, "seed {seed}");
        // ... also when it starts like a handshake record
        buf[0] = 0x16;
        assert_ne!(sniff(&buf), Sniff::Incomplete, "seed {seed}");
        assert!(
            !matches!(sniff(&buf), Sniff::ClientHello { .. }),
            "seed {seed}"
        );
    }
}

#[test]
fn handshake_byte_followed_by_nonsense() {
    let cases: &[(&[u8], Sniff)] = &[
        (&[0x16], Sniff::Incomplete),
        (&[0x16, 0x03], Sniff::Incomplete),
        (&[0x16, 0x03, 0x01], Sniff::Incomplete),
        (&[0x16, 0x03, 0x01, 0x02], Sniff::Incomplete),
        (&[0x16, 0x03, 0x01, 0x02, 0x00], Sniff::Incomplete),
        (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], Sniff::Incomplete),
        // record major version != 3
        (&[0x16, 0x02], Sniff::NotTls),
        (&[0x16, 0x99, 0x01, 0x02, 0x00], Sniff::NotTls),
        (b"\x16Hello world", Sniff::NotTls),
        // handshake type != client_hello (here server_hello, finished)
        (&[0x16, 0x03, 0x01, 0x00, 0x30, 0x02], Sniff::NotTls),
        (&[0x16, 0x03, 0x03, 0x00, 0x30, 0x14, 0x00], Sniff::NotTls),
        // client_hello legacy_version major != 3
        (
            &[0x16, 0x03, 0x01, 0x00, 0x30, 0x01, 0x00, 0x00, 0x2c, 0x02],
            Sniff::NotTls,
        ),
        // empty handshake record
        (&[0x16, 0x03, 0x01, 0x00, 0x00], Sniff::NotTls),
        // record over 2^14 (but ending within MAX_CLIENT_HELLO)
        (&[0x16, 0x03, 0x01, 0x40, 0x01, 0x01], Sniff::NotTls),
        // complete record, complete (tiny) hello that is garbage
        (
            &[
                0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0x03, 0x03, 0x00, 0x00,
            ],
            Sniff::NotTls,
        ),
    ];
    for (input, want) in cases {
        assert_eq!(&sniff(input), want, "{input:02x?}");
    }
}

#[test]
fn truncated_then_corrupted() {
    let v = vector("curl_tls13_sni_alpn");
    for cut in [1usize, 2, 6, 10, 100, 300, 516] {
        let prefix = &v[..cut];
        assert_eq!(sniff(prefix), Sniff::Incomplete);
        for (pos, byte) in [(0usize, 0x17u8), (1, 0x04), (5, 0x02), (9, 0x02)] {
            if pos < cut {
                let mut bad = prefix.to_vec();
                bad[pos] = byte;
                assert_eq!(sniff(&bad), Sniff::NotTls, "cut {cut} pos {pos}");
            }
        }
    }
    // Non-handshake record between two fragments of the ClientHello.
    let tiny = vector("curl_tls13_tiny_records");
    let first = 5 + records(tiny)[0].1.len();
    let mut bad = tiny[..first].to_vec();
    bad.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
    bad.extend_from_slice(&tiny[first..]);
    assert_eq!(sniff(&bad[..first + 1]), Sniff::NotTls);
    assert_eq!(sniff(&bad), Sniff::NotTls);
    // Second record with a bad version major.
    let mut bad = tiny.to_vec();
    bad[first + 1] = 0x04;
    assert_eq!(sniff(&bad[..first + 2]), Sniff::NotTls);
}

#[test]
fn corrupted_lengths_inside_the_hello() {
    let v = vector("openssl_tls13_sni");
    let hs = handshake(v);
    // Extensions block length off by one either way: tls-parser would either see no
    // extensions or a leftover byte; both are malformed.
    let ext_len_pos = {
        let b = &hs[4..];
        let mut p = 2 + 32;
        p += 1 + usize::from(b[p]);
        p += 2 + usize::from(u16::from_be_bytes([b[p], b[p + 1]]));
        p += 1 + usize::from(b[p]);
        4 + p
    };
    for delta in [1i32, -1] {
        let mut bad = hs.clone();
        let len = u16::from_be_bytes([bad[ext_len_pos], bad[ext_len_pos + 1]]) as i32 + delta;
        bad[ext_len_pos..ext_len_pos + 2].copy_from_slice(&(len as u16).to_be_bytes());
        assert_eq!(sniff(&fragment(&bad, &[16384])), Sniff::NotTls, "{delta}");
    }
    // Handshake length longer than what is sent: waits for more (it's a valid prefix).
    let mut longer = hs.clone();
    longer[3] = longer[3].wrapping_add(10);
    longer[2] = longer[2].wrapping_add(u8::from(longer[3] < 10));
    assert_eq!(sniff(&fragment(&longer, &[16384])), Sniff::Incomplete);
}

// ---------------------------------------------------------------- too large

#[test]
fn handshake_header_claiming_100k_is_too_large() {
    let buf = [0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x01, 0x86, 0xa0];
    assert_eq!(sniff(&buf[..8]), Sniff::Incomplete);
    assert_eq!(sniff(&buf), Sniff::TooLarge);
    // Split so that the length arrives in a second record.
    let split = [
        0x16, 0x03, 0x01, 0x00, 0x02, 0x01, 0x01, 0x16, 0x03, 0x01, 0x00, 0x10, 0x86, 0xa0,
    ];
    assert_eq!(sniff(&split[..13]), Sniff::Incomplete);
    assert_eq!(sniff(&split), Sniff::TooLarge);
    // The largest u24 as well.
    assert_eq!(
        sniff(&[0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0xff, 0xff, 0xff]),
        Sniff::TooLarge
    );
    // A length that fits in 64 KiB of payload but not with its record headers.
    let len = MAX_CLIENT_HELLO - 4 - 10;
    let l = (len as u32).to_be_bytes();
    assert_eq!(
        sniff(&[0x16, 0x03, 0x01, 0x40, 0x00, 0x01, l[1], l[2], l[3]]),
        Sniff::TooLarge
    );
}

#[test]
fn record_claiming_past_the_cap_is_too_large() {
    // A single record header claiming 0xffff bytes: 5 + 65535 > 64 KiB.
    assert_eq!(sniff(&[0x16, 0x03, 0x01, 0xff, 0xff]), Sniff::TooLarge);

    // A 60 000-byte hello in full-size records: the 4th record would end at
    // 4 * 16389 = 65556 > 65536, so it is rejected on its header.
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(60_000u32 - 4).to_be_bytes()[1..]);
    hs.extend_from_slice(&[0x03, 0x03]);
    hs.resize(60_000, 0);
    let buf = fragment(&hs, &[16384]);
    let fourth = 3 * (5 + 16384);
    assert_eq!(sniff(&buf[..fourth]), Sniff::Incomplete);
    assert_eq!(sniff(&buf[..fourth + 4]), Sniff::Incomplete);
    let mut claim = buf[..fourth + 5].to_vec();
    claim[fourth + 3..fourth + 5].copy_from_slice(&16384u16.to_be_bytes());
    assert_eq!(sniff(&claim), Sniff::TooLarge);

    // Small records eat the budget with headers: 1-byte records of a 12 000-byte hello.
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(12_000u32 - 4).to_be_bytes()[1..]);
    hs.extend_from_slice(&[0x03, 0x03]);
    hs.resize(12_000, 0);
    let buf = fragment(&hs, &[1]);
    assert_eq!(sniff(&buf), Sniff::TooLarge);
    // 6-byte records: the one at 65 532 would end past 65 536, so once the previous
    // record is complete the verdict is certain without reading its header.
    let last_fit = MAX_CLIENT_HELLO / 6 * 6;
    assert_eq!(sniff(&buf[..last_fit - 1]), Sniff::Incomplete);
    assert_eq!(sniff(&buf[..last_fit]), Sniff::TooLarge);
}

// ---------------------------------------------------------------- extensions

#[test]
fn sni_and_alpn_extraction() {
    let buf = fragment(
        &client_hello(Some(&[
            alpn_ext(&[b"h2", b"http/1.1"]),
            sni_ext(&[(0, b"Simple-SNI-1.IstioInAction.IO")]),
        ])),
        &[16384],
    );
    assert_eq!(
        sniff(&buf),
        Sniff::ClientHello {
            sni: Some(SNI.into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
            consumed: buf.len(),
        }
    );
    // No extensions block at all.
    let buf = fragment(&client_hello(None), &[16384]);
    assert_eq!(
        sniff(&buf),
        Sniff::ClientHello {
            sni: None,
            alpn: vec![],
            consumed: buf.len()
        }
    );
    // Empty extensions block, unknown extensions, GREASE.
    assert!(matches!(
        sniff_exts(&[]),
        Sniff::ClientHello { sni: None, .. }
    ));
    assert!(matches!(
        sniff_exts(&[(0x0a0a, vec![]), (0xfe0d, vec![1, 2, 3]), sni_ext(&[(0, b"a.b")])]),
        Sniff::ClientHello { sni: Some(s), .. } if s == "a.b"
    ));
    // Non-UTF-8 ALPN ids are kept, lossily.
    assert!(matches!(
        sniff_exts(&[alpn_ext(&[&[0xff, b'x']])]),
        Sniff::ClientHello { alpn, .. } if alpn == ["\u{fffd}x"]
    ));
}

#[test]
fn malformed_server_name_is_not_tls() {
    let long = vec![b'a'; 256];
    let bad: Vec<Vec<(u16, Vec<u8>)>> = vec![
        vec![sni_ext(&[])],                                                 // empty list
        vec![(0, vec![])],                                                  // empty extension data
        vec![sni_ext(&[(0, b"")])],                                         // empty name
        vec![sni_ext(&[(0, b"a\0b.example")])],                             // NUL
        vec![sni_ext(&[(0, "bücher.example".as_bytes())])],                 // non-ASCII
        vec![sni_ext(&[(0, b"a b")])],                                      // space
        vec![sni_ext(&[(0, &long)])],                                       // > 255 bytes
        vec![sni_ext(&[(1, b"a.example")])],                                // not host_name
        vec![sni_ext(&[(0, b"a.example"), (0, b"b.example")])],             // two names
        vec![sni_ext(&[(0, b"a.example")]), sni_ext(&[(0, b"b.example")])], // duplicate ext
        vec![(0, vec![0x00, 0x20, 0x00, 0x00, 0x03, b'a', b'.', b'b'])],    // list len lies
        vec![(
            0,
            vec![0x00, 0x06, 0x00, 0x00, 0x03, b'a', b'.', b'b', 0x00],
        )], // trailing
        vec![(
            0,
            vec![0x00, 0x07, 0x00, 0x00, 0x03, b'a', b'.', b'b', 0x00],
        )], // junk entry
        vec![alpn_ext(&[])],                                                // empty ALPN list
        vec![alpn_ext(&[b"h2", b""])],                                      // empty protocol
        vec![alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])],                       // duplicate ALPN
        vec![(16, vec![0x00, 0x03, 0x02, b'h', b'2', 0x00])],               // ALPN trailing byte
    ];
    for exts in &bad {
        assert_eq!(sniff_exts(exts), Sniff::NotTls, "{exts:?}");
    }
    let ok = vec![b'a'; 255];
    assert!(matches!(
        sniff_exts(&[sni_ext(&[(0, &ok)])]),
        Sniff::ClientHello { sni: Some(s), .. } if s.len() == 255
    ));
}

#[test]
fn extra_handshake_bytes_in_the_last_record_are_ignored() {
    let mut hs = handshake(vector("openssl_tls12_sni"));
    let hello_len = hs.len();
    hs.extend_from_slice(&[0x10, 0x00, 0x00, 0x01, 0x00]); // a stray ClientKeyExchange
    let buf = fragment(&hs, &[16384]);
    assert!(matches!(sniff(&buf), Sniff::ClientHello { consumed, .. } if consumed == buf.len()));
    // ... and the record must be complete before we answer.
    assert_eq!(sniff(&buf[..5 + hello_len]), Sniff::Incomplete);
}

// ---------------------------------------------------------------- fuzz

/// xorshift64 (Marsaglia), enough for deterministic mutation.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    let mut buf = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(8) {
            0 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] ^= 1 << rng.below(8);
            }
            1 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                buf[i] = rng.next() as u8;
            }
            2 => buf.truncate(rng.below(buf.len() + 1)),
            3 => {
                let i = rng.below(buf.len() + 1);
                let junk: Vec<u8> = (0..rng.below(16)).map(|_| rng.next() as u8).collect();
                buf.splice(i..i, junk);
            }
            4 if !buf.is_empty() => {
                let i = rng.below(buf.len());
                let n = rng.below(32).min(buf.len() - i);
                buf.drain(i..i + n);
            }
            5 if buf.len() > 12 => {
                // Tamper with a length field near the front (record, handshake, sid...).
                let i = [3, 4, 6, 7, 8, 43, 44][rng.below(7)].min(buf.len() - 1);
                buf[i] = [0x00, 0xff, 0x40, 0x01, buf[i].wrapping_add(1)][rng.below(5)];
            }
            6 if buf.len() > 40 => {
                // Flip a byte in the extensions area, where SNI/ALPN parsing lives.
                let i = buf.len() - 1 - rng.below(buf.len() / 2);
                buf[i] = rng.next() as u8;
            }
            _ => {}
        }
    }
    buf
}

#[test]
fn fuzz_mutated_vectors_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut seen = [0usize; 4];
    // SNI_FUZZ_ITERS=1000000 cargo test --release fuzz  for a longer run.
    let iters = std::env::var("SNI_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000usize);
    for iter in 0..iters {
        let v = &VECTORS[rng.below(VECTORS.len())];
        let buf = mutate(&mut rng, v.bytes);
        let got = sniff(&buf);
        match &got {
            Sniff::ClientHello { consumed, sni, .. } => {
                seen[0] += 1;
                assert!(*consumed <= buf.len() && *consumed > 5, "iter {iter}");
                if let Some(s) = sni {
                    assert!(s.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                    assert!(!s.bytes().any(|b| b.is_ascii_uppercase()));
                }
            }
            Sniff::Incomplete => {
                seen[1] += 1;
                assert!(buf.len() < MAX_CLIENT_HELLO, "iter {iter}");
            }
            Sniff::NotTls => seen[2] += 1,
            Sniff::TooLarge => seen[3] += 1,
        }
        // Prefix stability: a final verdict on a prefix stands for the whole buffer.
        let cut = rng.below(buf.len() + 1);
        let early = sniff(&buf[..cut]);
        if early != Sniff::Incomplete {
            assert_eq!(early, got, "iter {iter} cut {cut}");
        }
    }
    // The mutator should exercise every outcome.
    assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
}
