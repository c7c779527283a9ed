//! Feeds arbitrary bytes to `decode_result` as an entry of a worker's results ring (shared
//! memory the worker writes, so untrusted like its socket).
//!
//! Beyond "never panics": an accepted entry re-encodes to exactly the bytes given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_engine::wire::{FRAME_HEADER, Up, decode_result, encode_up};

fuzz_target!(|body: &[u8]| {
    if let Ok(r) = decode_result(body) {
        let mut out = Vec::new();
        encode_up(&mut out, &Up::Results(vec![r.clone()]));
        // A results frame: header, tag, count, then the one result.
        assert_eq!(&out[FRAME_HEADER + 1 + 4..], body, "accepted {r:?} re-encodes differently");
    }
});
