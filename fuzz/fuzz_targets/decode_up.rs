//! Feeds arbitrary bytes to `decode_up` as a frame body read from an untrusted worker.
//!
//! Beyond "never panics": whatever the decoder accepts must re-encode to exactly the bytes
//! it was given, so no byte is ignored and no message has two encodings.

#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_engine::wire::{FRAME_HEADER, decode_up, encode_up};

fuzz_target!(|body: &[u8]| {
    if let Ok(msg) = decode_up(body) {
        let mut out = Vec::with_capacity(FRAME_HEADER + body.len());
        encode_up(&mut out, &msg);
        assert_eq!(
            &out[FRAME_HEADER..],
            body,
            "accepted {msg:?} re-encodes differently"
        );
    }
});
