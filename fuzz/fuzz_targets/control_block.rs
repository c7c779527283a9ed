//! Feeds arbitrary contents to the shared memory a worker writes and the parent reads:
//! results-ring positions and bytes, and the claim word. The parent must refuse lies
//! with an error, never panic (no arithmetic overflow), never read past what was
//! published, and accept only a claim it could have made.

#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_engine::fuzzing::{check_claim, read_ring};

fuzz_target!(|data: &[u8]| {
    if data.len() < 40 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
    let (read, write, claim, floor, last) = (word(0), word(1), word(2), word(3), word(4));
    if let Ok(entries) = read_ring(read, write, &data[40..]) {
        let published = write.wrapping_sub(read) as usize;
        let taken: usize = entries.iter().map(|e| e.len()).sum();
        assert!(taken <= published, "read {taken} bytes of {published} published");
    }
    if let Ok(c) = check_claim(claim, floor, last) {
        assert!(floor <= c && c <= last, "accepted claim {c} outside {floor}..={last}");
    }
});
