//! Gives freed heap memory back to the kernel once connections have gone.
//!
//! glibc's malloc keeps memory a program frees: only the top of each arena is returned
//! on `free` (M_TRIM_THRESHOLD), so after 12,000 connections open and close the
//! gateway's RSS stays at its high-water mark (the soak measured 30 MiB → 199 MiB after
//! 3,000 spliced flows + 3,000 HTTP connections were closed) although nothing holds the
//! memory: every byte of it is free chunks inside the arenas. `malloc_trim(0)` walks
//! every arena and `madvise(MADV_DONTNEED)`s each whole free page, not just the top
//! (glibc malloc/malloc.c: mtrim); with it the same soak returned to 31.5 MiB.
//!
//! Envoy does the same with tcmalloc under its overload manager
//! (`envoy.overload_actions.shrink_heap` → `ReleaseFreeMemory`). Here a background task
//! looks every `--heap-trim-interval` at how much the arenas hold free (`mallinfo2`) and
//! trims when that is worth it: at least [`MIN_FREE`] and an eighth of what is in use,
//! so a gateway whose connection count is steady (and whose free chunks are reused at
//! once) is left alone. The trim runs on a blocking thread: it takes each arena's lock
//! in turn, for a few milliseconds at most on a few hundred MiB.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Free bytes below which a trim is not worth a walk over the arenas.
pub const MIN_FREE: u64 = 8 << 20;

/// What the trimmer did, for `/stats/prometheus` (the arenas' free and in-use bytes are
/// read at scrape, [`usage`]).
#[derive(Debug, Default)]
pub struct HeapStats {
    pub trims: AtomicU64,
    /// Time spent in malloc_trim, summed.
    pub trim_micros: AtomicU64,
    /// Free bytes found before each trim, summed: an upper bound of what was returned.
    pub trimmed_bytes: AtomicU64,
}

/// Free and in-use bytes of the malloc arenas (main heap and per-thread arenas; large
/// blocks are mmapped and unmapped on free, so they never count as free).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn usage() -> (u64, u64) {
    // SAFETY: mallinfo2 (glibc ≥ 2.33) takes no arguments, only reads malloc's own state
    // under its arena locks and returns a plain struct by value.
    let m = unsafe { libc::mallinfo2() };
    (m.fordblks as u64, m.uordblks as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn usage() -> (u64, u64) {
    (0, 0)
}

/// Whether `free` bytes held beside `in_use` are worth a trim.
pub fn worth_trimming(free: u64, in_use: u64) -> bool {
    free >= MIN_FREE && free >= in_use / 8
}

/// Returns every whole free page of every arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() {
    // SAFETY: malloc_trim is thread-safe (it locks each arena while it walks it) and
    // only releases pages that lie entirely inside free chunks; pad 0 keeps nothing
    // spare at the top of the main heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}

/// One look: reads the arenas' usage and trims when worth it. Returns the free bytes
/// trimmed, if it trimmed.
pub fn look(stats: &HeapStats) -> Option<u64> {
    let (free, in_use) = usage();
    if !worth_trimming(free, in_use) {
        return None;
    }
    let t = Instant::now();
    trim();
    stats.trims.fetch_add(1, Ordering::Relaxed);
    stats
        .trim_micros
        .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
    stats.trimmed_bytes.fetch_add(free, Ordering::Relaxed);
    tracing::debug!(
        free_mib = free >> 20,
        in_use_mib = in_use >> 20,
        took_us = t.elapsed().as_micros() as u64,
        "heap trimmed"
    );
    Some(free)
}

/// Calls `look` (on a blocking thread) every `interval` until the process ends.
pub async fn run(interval: Duration, look: impl Fn() + Clone + Send + 'static) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if tokio::task::spawn_blocking(look.clone()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_large_free_share_is_worth_a_trim() {
        assert!(!worth_trimming(MIN_FREE - 1, 0));
        assert!(worth_trimming(MIN_FREE, 8 * MIN_FREE));
        assert!(!worth_trimming(MIN_FREE, 8 * MIN_FREE + 8));
        assert!(worth_trimming(200 << 20, 30 << 20));
    }

    /// Many small blocks allocated and freed leave free chunks throughout the heap
    /// (what closed connections leave behind); a look trims them and the arenas then
    /// hold less free memory than before.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_look_after_many_frees_trims() {
        // 64 MiB in 16 KiB blocks; the last one kept so the heap's top cannot shrink
        // on its own.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|i| vec![i as u8; 16 << 10]).collect();
        let keep: Vec<Vec<u8>> = blocks.iter_mut().skip(4095).map(std::mem::take).collect();
        drop(blocks);
        let stats = HeapStats::default();
        let (free_before, _) = usage();
        assert!(
            free_before >= MIN_FREE,
            "free after the drop: {free_before}"
        );
        assert!(
            look(&stats).is_some(),
            "a look with {free_before} bytes free trims"
        );
        assert_eq!(stats.trims.load(Ordering::Relaxed), 1);
        drop(keep);
    }
}
