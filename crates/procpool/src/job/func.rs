//! Shipping functions to workers.
//!
//! A worker runs the parent's own executable, so a function's code sits at the same
//! offset from any fixed symbol in both processes, whatever address-space randomization
//! did. A function reference is therefore three numbers: a kind, the offset of a
//! *trampoline* (a function monomorphized for the argument and result types, which decodes,
//! calls and encodes), and the offset of the user's `fn` pointer. The handshake checks the
//! executable's fingerprint, so both sides are known to be the same file.
//!
//! One job carries a *chunk*: one or more arguments (laid out as [`items`] says). The
//! trampoline decodes, runs and encodes each item on its own, catching each panic, so
//! that an item fails alone.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use crate::codec::Value;
use crate::codec::format::{self, Codec};
use crate::job::items;
use crate::passfd;
use procpool_engine::{Failure, Runner};

type Trampoline = fn(usize, &[u8], &mut Vec<u8>) -> Result<(), Failure>;

const KIND_CHUNK: u8 = 1;
const KIND_INIT: u8 = 2;
const REF_LEN: usize = 17;

/// A fixed point of the executable that offsets are measured from.
#[inline(never)]
fn anchor() -> usize {
    std::hint::black_box(0x5eed)
}

fn offset(addr: usize) -> i64 {
    (addr as i64).wrapping_sub(anchor as *const () as usize as i64)
}

fn encode_ref(kind: u8, tramp: Trampoline, f: usize) -> Arc<[u8]> {
    let mut v = Vec::with_capacity(REF_LEN);
    v.push(kind);
    v.extend_from_slice(&offset(tramp as usize).to_le_bytes());
    v.extend_from_slice(&offset(f).to_le_bytes());
    v.into()
}

/// The reference of `f` applied to chunks of `A`.
pub(crate) fn chunk_ref<A: Value, R: Value>(f: fn(A) -> R) -> Arc<[u8]> {
    encode_ref(KIND_CHUNK, run_chunk::<A, R>, f as usize)
}

/// The reference of an initializer.
pub(crate) fn init_ref<A: Value>(f: fn(A)) -> Arc<[u8]> {
    encode_ref(KIND_INIT, run_init::<A>, f as usize)
}

/// Runs `f` on each argument of a chunk and writes one result per item (see
/// [`items`]). Decoding an argument, running `f` and encoding its result are one task:
/// a failure or a panic in any of them fails that item alone.
fn run_chunk<A: Value, R: Value>(
    f: usize,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    // SAFETY: `f` is the address of a `fn(A) -> R` taken in the parent (see `chunk_ref`),
    // which runs the same executable (fingerprint checked at handshake), and this
    // trampoline was monomorphized for the same `A` and `R`.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(f) };
    let (h, body) = items::read_header(payload)?;
    let mut args = items::Args::new::<A>(&h, body)?;
    // Descriptors that came with the job, for the values that hold one (see `passfd`).
    let mut slots = passfd::job_slots();
    // Shared values whose makers let go of them leave this worker's cache.
    crate::shared::sweep();
    if let Some(n) = crate::codec::plain_size::<R>() {
        // Packed results: room for all at once (every item takes at least a byte of the
        // payload, so the count cannot ask for more than the payload's size).
        out.reserve(1 + n * (h.count as usize).min(body.len()));
    }
    let mut results = items::Results::begin::<R>(out, h.layout);
    // Each finished item is recorded, so that a crash in the next one costs that one item.
    let mut recorded = results.finished();
    // Numbers in and out: a loop without per-item choices, as far as it goes.
    let mut first = 0;
    if slots.is_empty()
        && let Some(packed) = args.packed_rest()
    {
        first = results.run_packed(f, packed, &mut recorded);
        args.skip_packed(first);
    }
    for k in first..h.count {
        if k > 0 && (results.full() || !recorded) {
            results.stop::<R>();
            break;
        }
        let bytes = args.next_bytes()?;
        let decoded = if slots.is_empty() {
            args.decode::<A>(h.layout.codec, bytes)
        } else {
            passfd::decoding(&mut slots, || args.decode::<A>(h.layout.codec, bytes))
        };
        match decoded {
            Ok(a) => match panic::catch_unwind(AssertUnwindSafe(|| f(a))) {
                Ok(v) => results.push_ok(v),
                Err(p) => results.push_err::<R>(items::panicked(&*p)),
            },
            Err(kind) => results.push_err::<R>(kind),
        }
        recorded = results.finished();
    }
    Ok(())
}

fn run_init<A: Value>(f: usize, payload: &[u8], _out: &mut Vec<u8>) -> Result<(), Failure> {
    // SAFETY: as in `run_chunk`, for a `fn(A)` taken in `init_ref`.
    let f = unsafe { std::mem::transmute::<usize, fn(A)>(f) };
    let a: A = format::decode(Codec::Postcard, payload).map_err(|m| Failure::Codec {
        message: format!("the initializer's argument could not be deserialized: {m}"),
    })?;
    f(a);
    Ok(())
}

/// The runner of Rust functions inside a worker.
#[derive(Debug, Default)]
pub(crate) struct FnRunner;

impl Runner for FnRunner {
    fn run(&mut self, func: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
        let Some((kind, tramp, f)) = decode_ref(func) else {
            return Err(Failure::Codec {
                message: format!("malformed function reference of {} bytes", func.len()),
            });
        };
        if kind != KIND_CHUNK && kind != KIND_INIT {
            return Err(Failure::Codec {
                message: format!("unknown function kind {kind}"),
            });
        }
        let base = anchor as *const () as usize as i64;
        // SAFETY: the offset was made by `encode_ref` in the parent from a `Trampoline`,
        // and the executable is the same (fingerprint checked), so the address is that
        // trampoline's.
        let tramp =
            unsafe { std::mem::transmute::<usize, Trampoline>(base.wrapping_add(tramp) as usize) };
        tramp(base.wrapping_add(f) as usize, payload, out)
    }
}

fn decode_ref(func: &[u8]) -> Option<(u8, i64, i64)> {
    if func.len() != REF_LEN {
        return None;
    }
    let tramp = i64::from_le_bytes(func[1..9].try_into().ok()?);
    let f = i64::from_le_bytes(func[9..17].try_into().ok()?);
    Some((func[0], tramp, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use procpool_engine::TaskErrorKind;

    fn double(x: u64) -> u64 {
        x * 2
    }

    fn boom(x: u64) -> u64 {
        if x == 3 {
            panic!("three is bad");
        }
        x
    }

    const LAYOUT: items::Layout = items::Layout {
        codec: crate::codec::format::Codec::Postcard,
        limit: 1 << 20,
    };

    fn run(func: &[u8], args: &[u64]) -> Vec<Result<u64, TaskErrorKind>> {
        let mut payload = Vec::new();
        items::begin_chunk::<u64>(&mut payload, LAYOUT);
        for a in args {
            items::push_arg(&mut payload, LAYOUT, a).unwrap();
        }
        items::end_chunk(&mut payload, args.len() as u32);
        let mut out = Vec::new();
        FnRunner.run(func, &payload, &mut out).unwrap();
        let (packed, mut rest) = items::split_results(&out).unwrap();
        if packed {
            let values = crate::codec::take_plain_all::<u64>(rest).unwrap();
            return values.into_iter().map(Ok).collect();
        }
        let mut v = Vec::new();
        while !rest.is_empty() {
            match items::next_entry::<u64>(LAYOUT.codec, &mut rest).unwrap() {
                items::Entry::Item(r) => v.push(r),
                items::Entry::Stop => panic!("stopped"),
            }
        }
        v
    }

    #[test]
    fn a_reference_resolves_in_the_same_process() {
        let out = run(&chunk_ref(double), &[1, 2, 3]);
        let got: Vec<u64> = out.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, vec![2, 4, 6]);
    }

    #[test]
    fn a_panicking_item_fails_alone() {
        let out = run(&chunk_ref(boom), &[2, 3, 4]);
        assert!(matches!(out[0], Ok(2)));
        assert!(
            matches!(&out[1], Err(TaskErrorKind::Panic { message, .. }) if message == "three is bad")
        );
        assert!(matches!(out[2], Ok(4)));
    }

    fn boom_often(x: u64) -> u64 {
        assert!(x != 0 && x % 4 != 3, "bad {x}");
        x * 2
    }

    #[test]
    fn panics_first_last_and_in_between_of_a_packed_chunk_fail_their_items_alone() {
        let args: Vec<u64> = (0..12).collect();
        let out = run(&chunk_ref(boom_often), &args);
        assert_eq!(out.len(), 12);
        for (x, r) in args.iter().zip(&out) {
            if *x == 0 || x % 4 == 3 {
                assert!(
                    matches!(r, Err(TaskErrorKind::Panic { message, .. }) if *message == format!("bad {x}")),
                    "{x}: {r:?}"
                );
            } else {
                assert_eq!(r, &Ok(x * 2), "{x}");
            }
        }
        let out = run(&chunk_ref(boom_often), &[1, 2, 4, 7]);
        assert_eq!(out[..3], [Ok(2), Ok(4), Ok(8)]);
        assert!(out[3].is_err(), "the last item");
    }

    #[test]
    fn malformed_references_are_refused() {
        assert!(FnRunner.run(&[1, 2, 3], &[], &mut Vec::new()).is_err());
    }
}
