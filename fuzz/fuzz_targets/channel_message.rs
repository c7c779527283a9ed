//! Feeds arbitrary packets, with or without a memfd of arbitrary bytes and other
//! descriptors, to a channel receiver's checks and decoder
//! (`procpool::channel_fuzzing::open_message`), as any process holding a channel's
//! sending end could send them.
//!
//! Input: byte 0 chooses whether a memfd comes along (bit 0), whether the value is a
//! `Vec<u8>` (bit 1, read from a memfd on a path of its own) or a tuple that may hold a
//! channel end, and how many more descriptors come (bits 2-7); bytes 1-2 (little-endian) split the rest into the packet
//! and the memfd's contents (its state word, then the payload). Beyond "never panics": an
//! error is a sentence, and a shared-memory packet is accepted only with a payload
//! that fits in its memfd.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let (split, rest) = match rest.split_first_chunk::<2>() {
        Some((s, rest)) => (u16::from_le_bytes(*s) as usize, rest),
        None => (rest.len(), &[][..]),
    };
    let split = split.min(rest.len());
    let (packet, data) = rest.split_at(split);
    let attached = (flags & 1 == 1).then_some(data);
    match procpool::channel_fuzzing::open_message(packet, attached, flags >> 2, flags & 2 == 2) {
        Ok(_) => {
            if let (Some(data), Some(0xC2)) = (attached, packet.first()) {
                let len = u64::from_le_bytes(packet[2..10].try_into().unwrap());
                assert!(8 + len <= data.len() as u64, "a payload beyond the memfd was accepted");
            }
        }
        Err(m) => assert!(!m.is_empty()),
    }
});
