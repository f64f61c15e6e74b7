//! Telemetry `accessLogging[].filter.expression` (`telemetry::filter`).
//!
//! Input: the expression, then optionally a NUL byte and bytes that make the record.
//! - Parsing never panics (however deep the nesting).
//! - A filter that parses evaluates any record without panicking.
#![no_main]

use arbitrary::Unstructured;
use gateway::telemetry::filter::Filter;
use gateway_fuzz::{record, text_and_rest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (text, rest) = text_and_rest(data);
    let Ok(filter) = Filter::parse(&text) else {
        return;
    };
    let Ok(rec) = record(&mut Unstructured::new(rest)) else {
        return;
    };
    let _ = filter.matches(&rec);
});
