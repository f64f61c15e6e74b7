//! TLS ClientHello sniffing: peek at the first bytes of a downstream connection and pull
//! out the SNI `server_name` and the ALPN list without terminating TLS.
//!
//! This is the gateway's equivalent of Envoy's `envoy.filters.listener.tls_inspector`,
//! which Istio puts on every gateway listener so that `Gateway`/`VirtualService` `tls`
//! routes (SNI match, `PASSTHROUGH`/`AUTO_PASSTHROUGH`) and `filter_chain_match`
//! on `server_names`/`application_protocols` can be decided before any handshake.
//!
//! # Shape of the API
//!
//! [`sniff`] is a pure function over "all bytes read so far". The caller reads from the
//! socket into a buffer, calls [`sniff`] after every read, and stops as soon as the
//! answer is anything but [`Sniff::Incomplete`]. This mirrors linkerd2-proxy's
//! `parse_sni(input) -> Result<Option<ServerId>, Incomplete>`, which answers
//! `Err(Incomplete)` ("read more") until the whole ClientHello record is buffered, and
//! Envoy's tls_inspector, which feeds peeked bytes to BoringSSL until the ClientHello
//! callback fires or the buffer reaches `max_client_hello_size`. Unlike linkerd's parser
//! (which assumes the ClientHello fits in one record) we reassemble a ClientHello
//! fragmented over several records, as BoringSSL does for Envoy.
//!
//! Rules that follow from that design:
//!
//! * **Any prefix of a valid first flight is [`Sniff::Incomplete`]**, however it was cut
//!   by TCP (1 byte, 3 bytes, in the middle of a record header, in the middle of a
//!   record body, between records). Never [`Sniff::NotTls`] for a valid prefix, because
//!   the caller would then route a real TLS client down the plaintext path.
//! * **[`Sniff::NotTls`] is decided as early as the bytes allow**, so that plaintext
//!   protocols (HTTP/1 `GET ...`, PROXY protocol, HTTP/2 preface) don't sit waiting for
//!   bytes that will never come: first byte not `0x16` (handshake record), record
//!   version major not `3`, first handshake byte not `1` (client_hello), ClientHello
//!   `legacy_version` major not `3`, an oversize (> 2^14, but see `TooLarge`) or empty
//!   handshake record, a non-handshake record before the ClientHello is complete, and
//!   finally a ClientHello that `tls-parser` cannot parse.
//! * **[`Sniff::TooLarge`] is decided as soon as it is certain** that the records carrying
//!   the ClientHello cannot all lie within the first [`MAX_CLIENT_HELLO`] bytes of the
//!   stream (Envoy's tls_inspector default `max_client_hello_size` is 64 KiB and it
//!   gives up with `client_hello_too_large` when the buffer fills up). As a consequence,
//!   `Incomplete` is only ever returned for `buf.len() < MAX_CLIENT_HELLO`, so a caller
//!   never needs a read buffer larger than [`MAX_CLIENT_HELLO`]. The "records end past
//!   the cap" check on a record header comes before the record-size sanity check, so a
//!   first record claiming `0xffff` bytes is `TooLarge` (one claiming 20 000 is `NotTls`).
//! * **Verdicts are prefix-stable**: checks run in stream order, so once a prefix gets
//!   a final verdict, every longer buffer gets the same one.
//! * **Bounded work.** One pass over the record headers (at most 64 KiB / 6 records),
//!   at most one copy of the ClientHello (only when it spans several records) and one
//!   `tls-parser` parse of it, which only happens once it is complete. No panics on any
//!   input: all indexing is checked.
//!
//! The record/handshake/extension grammar itself is parsed by `tls-parser`; the only
//! thing done by hand is walking record headers to reassemble a handshake message that
//! was fragmented over several records (RFC 8446 §5.1 allows any fragmentation, and a
//! ClientHello larger than 16 KiB — e.g. a big post-quantum key share plus a session
//! ticket — *must* span several records) and the early checks on partial headers, which
//! a complete-input parser cannot do.
//!
//! # SNI validation
//!
//! The `server_name` extension is validated the way BoringSSL (Envoy's TLS library)
//! validates it in `ext_sni_parse_clienthello`: the list must hold exactly one entry, of
//! type `host_name`, non-empty, at most 255 bytes, with no NUL byte; in addition we
//! require printable ASCII (`0x21..=0x7e`; IDNs travel as A-labels). The name is
//! lowercased (DNS names are case-insensitive, Istio matches hosts lowercased).
//!
//! **A malformed `server_name` extension (or a duplicated `server_name`/ALPN extension,
//! or a malformed ALPN list) makes the whole result [`Sniff::NotTls`]**, rather than
//! "TLS without SNI". BoringSSL and rustls would abort such a handshake with a
//! `decode_error` alert, so no TLS connection can come out of it; reporting "no SNI"
//! instead would send it to the default filter chain, which differs from Envoy's
//! behaviour and opens a gap between what the sniffer saw and what a TLS terminator
//! would see. The caller's NotTls path (plaintext chain, or close) handles it.

use tls_parser::{
    TlsExtension, TlsRecordType, parse_tls_extension_alpn_content, parse_tls_extension_sni_content,
    parse_tls_extension_unknown, parse_tls_handshake_client_hello, parse_tls_record_header,
};

/// Longest ClientHello we wait for (Envoy's tls_inspector caps at 64 KiB).
///
/// Measured on the wire: the records carrying the ClientHello, headers included, must
/// end within the first `MAX_CLIENT_HELLO` bytes of the stream.
pub const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Result of [`sniff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniff {
    /// A complete ClientHello; `sni` is the server_name (host_name type) lowercased, None if absent.
    /// `consumed` = number of bytes of `buf` that made up the records carrying the ClientHello
    /// (the caller forwards ALL bytes it read anyway; this is informational). `alpn` lists the
    /// offered ALPN protocol ids in client order (lossy UTF-8; empty if no ALPN extension).
    ClientHello {
        sni: Option<String>,
        alpn: Vec<String>,
        consumed: usize,
    },
    /// The bytes so far are a valid prefix of a TLS ClientHello; read more.
    Incomplete,
    /// Not a TLS handshake (first byte isn't 0x16, bad version, not a ClientHello, malformed).
    NotTls,
    /// The ClientHello would exceed MAX_CLIENT_HELLO.
    TooLarge,
}

/// TLS record header: type(1) version(2) length(2).
const RECORD_HEADER_LEN: usize = 5;
/// Handshake header: msg_type(1) length(3).
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1 / RFC 5246 §6.2.1: a plaintext fragment is at most 2^14 bytes.
const MAX_PLAINTEXT_RECORD: usize = 1 << 14;
const CONTENT_TYPE_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const TLS_MAJOR_VERSION: u8 = 3;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const SNI_HOST_NAME: u8 = 0;
/// BoringSSL's `TLSEXT_MAXLEN_host_name`.
const MAX_HOST_NAME_LEN: usize = 255;

/// Inspect the first bytes of a connection (everything read so far, from byte 0).
///
/// Returns [`Sniff::Incomplete`] while `buf` is a valid prefix of a TLS ClientHello
/// (read more and call again with the longer buffer), otherwise a final verdict. Bytes
/// after the ClientHello's last record (pipelined early data, a second flight, junk)
/// are ignored. See the module docs for the exact rules.
pub fn sniff(buf: &[u8]) -> Sniff {
    let first = match buf.first() {
        None => return Sniff::Incomplete,
        Some(&b) => b,
    };
    if first != CONTENT_TYPE_HANDSHAKE {
        return Sniff::NotTls;
    }

    // Walk the records, collecting where their handshake payloads are, until the
    // ClientHello (whose length we learn from its first 4 payload bytes) is complete.
    let mut fragments: Vec<(usize, usize)> = Vec::new(); // (start, end) in buf
    let mut hs_head = [0u8; HANDSHAKE_HEADER_LEN + 1]; // msg_type, u24 len, version major
    let mut hs_seen = 0usize; // handshake bytes seen so far, partial records included
    let mut hs_complete = 0usize; // handshake bytes in complete records
    let mut off = 0usize;

    loop {
        // --- record header (possibly partial) ---
        if off + RECORD_HEADER_LEN > MAX_CLIENT_HELLO {
            return Sniff::TooLarge;
        }
        let avail = &buf[off.min(buf.len())..];
        if avail.len() < RECORD_HEADER_LEN {
            return check_partial_header(avail);
        }
        let hdr = match parse_tls_record_header(avail) {
            Ok((_, hdr)) => hdr,
            Err(_) => return Sniff::NotTls,
        };
        if hdr.record_type != TlsRecordType::Handshake
            || (hdr.version.0 >> 8) as u8 != TLS_MAJOR_VERSION
        {
            // Handshake fragments must not be interleaved with other record types.
            return Sniff::NotTls;
        }
        let rec_len = usize::from(hdr.len);
        let body_start = off + RECORD_HEADER_LEN;
        let rec_end = body_start + rec_len;
        // A record that would end past the cap is TooLarge even when it is also
        // over-long (e.g. a first record claiming 0xffff bytes): either way we would
        // have to buffer more than MAX_CLIENT_HELLO, which is what Envoy reports as
        // `client_hello_too_large`.
        if rec_end > MAX_CLIENT_HELLO {
            return Sniff::TooLarge;
        }
        if rec_len == 0 || rec_len > MAX_PLAINTEXT_RECORD {
            // Zero-length handshake fragments are forbidden (RFC 8446 §5.1); longer
            // than 2^14 is a record_overflow (BoringSSL rejects both).
            return Sniff::NotTls;
        }

        // --- record body (possibly partial): early checks on the handshake header ---
        let body = &buf[body_start.min(buf.len())..rec_end.min(buf.len())];
        for (slot, &b) in hs_head.iter_mut().skip(hs_seen).zip(body) {
            *slot = b;
        }
        hs_seen += body.len();
        // ClientHello length (header included), once its first 4 bytes have arrived.
        let hello_len = match check_handshake_head(&hs_head[..hs_seen.min(hs_head.len())]) {
            Ok(len) => len,
            Err(verdict) => return verdict,
        };
        if rec_end > buf.len() {
            return Sniff::Incomplete;
        }

        fragments.push((body_start, rec_end));
        hs_complete += rec_len;
        off = rec_end;
        if let Some(len) = hello_len
            && hs_complete >= len
        {
            return parse_hello(buf, &fragments, len, rec_end);
        }
    }
}

/// Verdict on a partial (< 5 bytes) record header: `Incomplete` if it can still be the
/// start of a handshake record, `NotTls` otherwise.
fn check_partial_header(h: &[u8]) -> Sniff {
    match h {
        [t, ..] if *t != CONTENT_TYPE_HANDSHAKE => Sniff::NotTls,
        [_, major, ..] if *major != TLS_MAJOR_VERSION => Sniff::NotTls,
        _ => Sniff::Incomplete,
    }
}

/// Early verdict on the first (up to 5) bytes of the handshake stream, checked in
/// stream order so that a verdict reached on a prefix never changes with more bytes.
/// `Ok(Some(len))`: the ClientHello is `len` bytes long, header included.
fn check_handshake_head(h: &[u8]) -> Result<Option<usize>, Sniff> {
    if let Some(&t) = h.first()
        && t != HANDSHAKE_CLIENT_HELLO
    {
        return Err(Sniff::NotTls);
    }
    let Some(len_bytes) = h.get(1..HANDSHAKE_HEADER_LEN) else {
        return Ok(None);
    };
    let len = HANDSHAKE_HEADER_LEN + u24(len_bytes);
    // Even packed into maximal records, would the hello's records end past the cap?
    let min_records = len.div_ceil(MAX_PLAINTEXT_RECORD);
    if len + min_records * RECORD_HEADER_LEN > MAX_CLIENT_HELLO {
        return Err(Sniff::TooLarge);
    }
    if let Some(&major) = h.get(HANDSHAKE_HEADER_LEN)
        && major != TLS_MAJOR_VERSION
    {
        return Err(Sniff::NotTls);
    }
    Ok(Some(len))
}

fn u24(b: &[u8]) -> usize {
    b.iter()
        .take(3)
        .fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
}

/// Reassemble the handshake message from the record fragments (borrowing when it sits in
/// one record) and parse it.
fn parse_hello(buf: &[u8], fragments: &[(usize, usize)], len: usize, consumed: usize) -> Sniff {
    let owned: Vec<u8>;
    let msg: &[u8] = match fragments {
        [(s, e)] => match buf.get(*s..*e) {
            Some(b) => b,
            None => return Sniff::NotTls,
        },
        _ => {
            let mut v = Vec::with_capacity(len);
            for &(s, e) in fragments {
                match buf.get(s..e) {
                    Some(b) => v.extend_from_slice(b),
                    None => return Sniff::NotTls,
                }
            }
            owned = v;
            &owned
        }
    };
    // Bytes after the ClientHello inside its last record are ignored (another handshake
    // message in the same record is the TLS terminator's problem, not routing's).
    let Some(body) = msg.get(HANDSHAKE_HEADER_LEN..len) else {
        return Sniff::NotTls;
    };
    match parse_client_hello_body(body) {
        Some((sni, alpn)) => Sniff::ClientHello {
            sni,
            alpn,
            consumed,
        },
        None => Sniff::NotTls,
    }
}

/// Parse a ClientHello body (after the 4-byte handshake header). `None` = malformed.
fn parse_client_hello_body(body: &[u8]) -> Option<(Option<String>, Vec<String>)> {
    let (rest, hello) = parse_tls_handshake_client_hello(body).ok()?;
    // tls-parser treats a truncated extensions block as "no extensions"
    // (`opt(complete(..))`); anything left over means the block was malformed.
    if !rest.is_empty() {
        return None;
    }
    let mut sni = None;
    let mut alpn = None;
    let mut exts = hello.ext.unwrap_or_default();
    while !exts.is_empty() {
        // Generic type/length/data split, so that an extension we don't care about (or
        // that tls-parser knows an older draft of) can never fail the parse.
        let (rest, ext) = parse_tls_extension_unknown(exts).ok()?;
        exts = rest;
        let TlsExtension::Unknown(ext_type, data) = ext else {
            return None;
        };
        match ext_type.0 {
            EXT_SERVER_NAME => {
                if sni.is_some() {
                    return None; // duplicate extension
                }
                sni = Some(parse_sni(data)?);
            }
            EXT_ALPN => {
                if alpn.is_some() {
                    return None; // duplicate extension
                }
                alpn = Some(parse_alpn(data)?);
            }
            _ => {}
        }
    }
    Some((sni, alpn.unwrap_or_default()))
}

/// `server_name` extension data → the host name, lowercased. `None` = malformed.
fn parse_sni(data: &[u8]) -> Option<String> {
    let (rest, ext) = parse_tls_extension_sni_content(data).ok()?;
    let TlsExtension::SNI(names) = ext else {
        return None;
    };
    // tls-parser ignores trailing bytes inside the list; insist they add up exactly:
    // u16 list length + one (type u8, len u16, name) entry.
    let [(name_type, name)] = names.as_slice() else {
        return None; // empty list, or several names (BoringSSL rejects both)
    };
    if !rest.is_empty()
        || name_type.0 != SNI_HOST_NAME
        || data.len() != 2 + 3 + name.len()
        || name.is_empty()
        || name.len() > MAX_HOST_NAME_LEN
        || !name.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return None;
    }
    // All printable ASCII, so this is valid UTF-8.
    Some(String::from_utf8_lossy(name).to_ascii_lowercase())
}

/// ALPN extension data → protocol ids. `None` = malformed (RFC 7301: non-empty list of
/// non-empty names).
fn parse_alpn(data: &[u8]) -> Option<Vec<String>> {
    let (rest, ext) = parse_tls_extension_alpn_content(data).ok()?;
    let TlsExtension::ALPN(protos) = ext else {
        return None;
    };
    let listed: usize = protos.iter().map(|p| 1 + p.len()).sum();
    if !rest.is_empty()
        || protos.is_empty()
        || data.len() != 2 + listed
        || protos.iter().any(|p| p.is_empty())
    {
        return None;
    }
    Some(
        protos
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect(),
    )
}

#[cfg(test)]
mod tests;
