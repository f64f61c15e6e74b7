use super::*;

#[test]
fn request_ids_are_uuid_v4() {
    let a = request_id();
    assert_eq!(a.len(), 36);
    let parts: Vec<&str> = a.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
    assert!(parts[2].starts_with('4'), "{a}");
    assert!(matches!(&parts[3][..1], "8" | "9" | "a" | "b"), "{a}");
    assert_ne!(a, request_id());
}

#[test]
fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
    let mut h = HeaderMap::new();
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-secret"),
    );
    h.insert("x-secret", HeaderValue::from_static("1"));
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    h.insert("x-kept", HeaderValue::from_static("1"));
    strip_hop_by_hop(&mut h);
    assert_eq!(h.len(), 1);
    assert!(h.contains_key("x-kept"));
}
