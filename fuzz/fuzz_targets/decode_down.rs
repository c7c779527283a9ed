//! Feeds arbitrary bytes to `decode_down` as a frame body read by a worker.
//!
//! Beyond "never panics": whatever the decoder accepts must re-encode to exactly the bytes
//! it was given, so no byte is ignored and no message has two encodings.

#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_engine::wire::{FRAME_HEADER, decode_down, encode_down};

fuzz_target!(|body: &[u8]| {
    if let Ok(msg) = decode_down(body) {
        let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
        encode_down(&mut out, &msg);
        assert_eq!(
            &out[FRAME_HEADER..],
            body,
            "accepted {msg:?} re-encodes differently"
        );
    }
});
