//! Deterministic payloads that a receiver can check without keeping a copy: byte `i` of
//! stream `seed` is a pure function of (seed, i), so any chunking checks the same.

fn word(seed: u64, k: u64) -> u64 {
    // splitmix64 of (seed, word index)
    let mut z = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with bytes `offset..offset + buf.len()` of stream `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut i = 0;
    while i < buf.len() {
        let pos = offset + i as u64;
        let w = word(seed, pos / 8).to_le_bytes();
        let skip = (pos % 8) as usize;
        let n = (8 - skip).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&w[skip..skip + n]);
        i += n;
    }
}

/// The first `len` bytes of stream `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    fill(seed, 0, &mut v);
    v
}

/// Checks a received stream against stream `seed`, chunk by chunk.
pub struct Checker {
    seed: u64,
    scratch: Vec<u8>,
    pub offset: u64,
}

impl Checker {
    pub fn new(seed: u64) -> Checker {
        Checker {
            seed,
            scratch: Vec::new(),
            offset: 0,
        }
    }

    /// Panics at the first byte that differs.
    pub fn check(&mut self, got: &[u8]) {
        self.scratch.resize(got.len(), 0);
        fill(self.seed, self.offset, &mut self.scratch);
        if let Some(i) = got.iter().zip(&self.scratch).position(|(a, b)| a != b) {
            let at = self.offset + i as u64;
            // Say where the bytes found there belong in the stream (a duplicate of earlier
            // bytes, bytes from later: a reordering), to tell the failures apart.
            let from = locate(self.seed, &got[i..], at);
            panic!(
                "byte mismatch at offset {at} ({} bytes of this chunk left): the bytes there belong at {}",
                got.len() - i,
                from.map_or("no offset within 256 MiB".to_string(), |o| format!(
                    "offset {o} ({:+})",
                    o as i64 - at as i64
                ))
            );
        }
        self.offset += got.len() as u64;
    }
}

/// Where in stream `seed` (within 256 MiB of `near`) the first 64 bytes of `got` come
/// from, if anywhere.
fn locate(seed: u64, got: &[u8], near: u64) -> Option<u64> {
    let n = got.len().min(64);
    if n < 16 {
        return None;
    }
    let lo = near.saturating_sub(256 << 20);
    let hi = near + (256 << 20);
    let mut buf = vec![0u8; n];
    // Try every byte offset's alignment: check 8-byte words first, cheaply.
    for start in lo..hi {
        fill(seed, start, &mut buf[..8]);
        if buf[..8] == got[..8] {
            fill(seed, start, &mut buf);
            if buf[..] == got[..n] {
                return Some(start);
            }
        }
    }
    None
}
