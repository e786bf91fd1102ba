//! Cheap per-thread random numbers for identifiers that must be unique and unguessable
//! enough for correlation (request ids, trace and span ids) but protect nothing: no syscall
//! and no DRBG per request. Keys, nonces and tokens use `aws_lc_rs::rand`.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    // RandomState is seeded from the OS once per thread; a UUIDv7 adds time, so two threads
    // (or two processes) never start from the same state.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.write(uuid::Uuid::now_v7().as_bytes());
    h.finish() | 1
}

/// The next 64 random bits of this thread (SplitMix64).
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut z = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// Fills `out` with random bytes.
pub fn fill(out: &mut [u8]) {
    for chunk in out.chunks_mut(8) {
        let bytes = next_u64().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successive_values_differ_and_fill_covers_every_byte() {
        let a = next_u64();
        let b = next_u64();
        assert_ne!(a, b);
        // 10 bytes: one whole chunk and a partial one; a part never written stays zero.
        let (mut head, mut tail) = (false, false);
        for _ in 0..64 {
            let mut buf = [0u8; 10];
            fill(&mut buf);
            head |= buf[..8] != [0; 8];
            tail |= buf[8..] != [0; 2];
        }
        assert!(head && tail);
    }

    #[test]
    fn threads_start_from_different_states() {
        let here = next_u64();
        let there = std::thread::spawn(next_u64).join().unwrap();
        assert_ne!(here, there);
    }
}
