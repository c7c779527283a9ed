//! Feeds arbitrary bytes to `split_frame`, once as they are and once as a reader would:
//! splitting frame after frame off a buffer that fills a few bytes at a time, decoding
//! each body in both directions, and passing each incomplete frame to `check_up_prefix`
//! as the parent does with a worker's bytes.
//!
//! Checks that neither panics, that what `split_frame` returns agrees with the header,
//! and that how the bytes arrive changes nothing about the frames a reader gets.

#![no_main]

use libfuzzer_sys::fuzz_target;
use procpool_engine::wire::{
    FRAME_HEADER, WireError, check_up_prefix, decode_down, decode_up, split_frame,
};

/// The limit a reader uses.
const MAX_BODY: usize = 1 << 20;

/// Checks one answer of `split_frame(buf, max)` against the header in `buf`.
fn check(buf: &[u8], max: usize, split: &Result<Option<(&[u8], usize)>, WireError>) {
    let len = buf
        .get(..FRAME_HEADER)
        .map(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize);
    match (split, len) {
        (Ok(None), None) => {}
        (Ok(None), Some(len)) => {
            assert!(
                len > 0 && len <= max,
                "bad length {len} (limit {max}) not refused"
            );
            assert!(
                buf.len() < FRAME_HEADER + len,
                "whole frame of {len} bytes not split"
            );
        }
        (Ok(Some((body, used))), Some(len)) => {
            assert!(
                len > 0 && len <= max,
                "bad length {len} (limit {max}) accepted"
            );
            assert_eq!(*used, FRAME_HEADER + len);
            assert_eq!(*body, &buf[FRAME_HEADER..*used]);
        }
        (Ok(Some(_)), None) => panic!("frame split off {} bytes", buf.len()),
        (Err(_), Some(len)) => assert!(len == 0 || len > max, "good length {len} refused"),
        (Err(e), None) => panic!("{e} on {} bytes, less than a header", buf.len()),
    }
}

/// What a reader got from a stream: the frames it split off (offset and length), and
/// whether the stream ended in an error.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    frames: Vec<(usize, usize)>,
    failed: bool,
}

/// Reads `data` as a reader would, the bytes arriving `step` at a time. `in_flight` and
/// `due` stand for the jobs the worker holds.
fn read(data: &[u8], step: usize, in_flight: usize, due: Option<u64>) -> Read {
    let mut got = Read {
        frames: Vec::new(),
        failed: false,
    };
    let mut start = 0; // first byte not yet consumed
    let mut end = 0; // bytes arrived so far
    loop {
        let buf = &data[start..end];
        let split = split_frame(buf, MAX_BODY);
        check(buf, MAX_BODY, &split);
        match split {
            Ok(Some((body, used))) => {
                let _ = decode_up(body);
                let _ = decode_down(body);
                got.frames.push((start, used));
                start += used;
            }
            Ok(None) => {
                // Only for not panicking: whether the parent gives up early on a frame
                // depends on its jobs, which this reader does not model.
                if check_up_prefix(buf, in_flight, due).is_err() {
                    assert!(buf.len() > FRAME_HEADER, "refused before the tag");
                }
                if end == data.len() {
                    return got;
                }
                end = (end + step).min(data.len());
            }
            Err(_) => {
                got.failed = true;
                return got;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The bytes as they are, against a few limits (the first byte picks a small one).
    let small = data.first().map_or(0, |&b| usize::from(b));
    for max in [0, small, MAX_BODY, u32::MAX as usize, usize::MAX] {
        let split = split_frame(data, max);
        check(data, max, &split);
    }

    // As a stream: all at once, and in small pieces.
    let in_flight = small % 4;
    let due = (small & 4 != 0).then_some(u64::from(data.get(1).copied().unwrap_or(0)));
    let whole = read(data, data.len().max(1), in_flight, due);
    let step = 1 + small % 7;
    assert_eq!(
        read(data, step, in_flight, due),
        whole,
        "pieces of {step} bytes read differently"
    );
});
