//! Access-log format strings (`telemetry::format`): MeshConfig `accessLogFormat` as TEXT
//! and as a JSON object, and a Telemetry provider's text format.
//!
//! Input: the format text, then optionally a NUL byte and bytes that make the record.
//! - Parsing never panics.
//! - A format that parses renders any record without panicking: a TEXT line ends with
//!   exactly one newline; a JSON line is one JSON object with the format's keys.
#![no_main]

use arbitrary::Unstructured;
use gateway::{
    config::mesh::AccessLogEncoding,
    telemetry::format::{Format, tokens},
};
use gateway_fuzz::{record, text_and_rest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, rest) = text_and_rest(data);
    let _ = tokens(&text);
    let formats = [
        Format::text(&text),
        Format::for_mesh(AccessLogEncoding::Text, &text),
        Format::for_mesh(AccessLogEncoding::Json, &text),
    ];
    if formats.iter().all(Result::is_err) {
        return;
    }
    let Ok(rec) = record(&mut Unstructured::new(rest)) else {
        return;
    };
    for f in formats.into_iter().flatten() {
        let line = f.render(&rec);
        assert!(line.ends_with('\n'), "no newline at the end of {line:?}");
        if let Format::Json(fields) = &f {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("JSON line does not parse ({e}): {line:?}"));
            let obj = v.as_object().expect("a JSON object");
            assert!(
                fields.iter().all(|(k, _)| obj.contains_key(k)),
                "keys missing from {line:?}"
            );
            assert_eq!(line.matches('\n').count(), 1, "JSON line split: {line:?}");
        }
    }
});
