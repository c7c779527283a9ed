//! Shipping functions to workers.
//!
//! A worker runs the parent's own executable, so a function's code sits at the same
//! offset from any fixed symbol in both processes, whatever address-space randomization
//! did. A function reference is therefore three numbers: a kind, the offset of a
//! *trampoline* (a function monomorphized for the argument and result types, which decodes,
//! calls and encodes), and the offset of the user's `fn` pointer. The handshake checks the
//! executable's fingerprint, so both sides are known to be the same file.
//!
//! One job carries a *chunk*: one or more arguments. The trampoline runs the function on
//! each, catching each panic on its own, and encodes one [`ItemOut`] per argument.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;

use procpool_engine::{Failure, Runner};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::codec::{self, Value};

/// The outcome of one item of a chunk, as encoded by the worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ItemOut<R> {
    Ok(R),
    Panic {
        message: String,
        location: Option<String>,
        backtrace: Option<String>,
    },
    Codec(String),
}

/// The encoding of [`ItemOut::Ok`]'s variant index.
pub(crate) const OK_TAG: u8 = 0;

/// [`ItemOut`]'s failures, for encoding (same encoding).
#[derive(Serialize)]
enum ItemOutRef<'a, R> {
    #[allow(dead_code)]
    Ok(&'a R),
    Panic {
        message: String,
        location: Option<String>,
        backtrace: Option<String>,
    },
    Codec(String),
}

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
pub(crate) fn init_ref<A: DeserializeOwned>(f: fn(A)) -> Arc<[u8]> {
    encode_ref(KIND_INIT, run_init::<A>, f as usize)
}

fn codec_failure(what: &str, e: postcard::Error) -> Failure {
    Failure::Codec {
        message: format!("{what}: {e}"),
    }
}

/// How a chunk's items (or results) are laid out after the header.
const MODE_ENCODED: u8 = 0;
/// Plain values, packed (see [`codec::plain_size`]); for results, all succeeded.
const MODE_PLAIN: u8 = 1;

/// Decodes a chunk of arguments, runs `f` on each, and encodes the results: a mode byte,
/// then either the packed values (plain results, all succeeded) or one [`ItemOut`] per
/// item.
fn run_chunk<A: Value, R: Value>(
    f: usize,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Failure> {
    // SAFETY: `f` is the address of a `fn(A) -> R` taken in the parent (see `chunk_ref`),
    // which runs the same executable (fingerprint checked at handshake), and this
    // trampoline was monomorphized for the same `A` and `R`.
    let f = unsafe { std::mem::transmute::<usize, fn(A) -> R>(f) };
    let (count, mode, rest) = split_header(payload)?;
    let decode_err = |e| codec_failure("the argument could not be deserialized", e);
    let mut plain_args = match (mode, codec::plain_size::<A>()) {
        (MODE_PLAIN, Some(n)) if rest.len() == n * count as usize => Some(rest.chunks_exact(n)),
        (MODE_PLAIN, _) => {
            return Err(Failure::Codec {
                message: "packed arguments of the wrong size".into(),
            });
        }
        _ => None,
    };
    let mut rest = rest;
    let mut next_arg = || -> Result<A, Failure> {
        match &mut plain_args {
            Some(it) => it
                .next()
                .map(codec::read_plain::<A>)
                .ok_or_else(|| Failure::Codec {
                    message: "fewer packed arguments than counted".into(),
                }),
            None => {
                let (a, r) = codec::take_value::<A>(rest).map_err(decode_err)?;
                rest = r;
                Ok(a)
            }
        }
    };
    let call = |a: A| panic::catch_unwind(AssertUnwindSafe(|| f(a)));
    if codec::plain_size::<R>().is_some() {
        // Plain results go out packed while all succeed; the first failure turns what
        // was packed into one `ItemOut` per item, and the rest follow that way.
        out.push(MODE_PLAIN);
        for done in 0..count {
            match call(next_arg()?) {
                Ok(v) => codec::put_plain(out, &v),
                Err(p) => {
                    let packed = std::mem::take(out);
                    out.push(MODE_ENCODED);
                    for v in codec::plain_values::<R>(&packed[1..]) {
                        encode_item::<R>(out, Ok(v))?;
                    }
                    encode_item::<R>(out, Err(p))?;
                    for _ in done + 1..count {
                        encode_item(out, call(next_arg()?))?;
                    }
                    return Ok(());
                }
            }
        }
        return Ok(());
    }
    out.push(MODE_ENCODED);
    for _ in 0..count {
        encode_item(out, call(next_arg()?))?;
    }
    Ok(())
}

/// Appends one item's [`ItemOut`].
fn encode_item<R: Value>(out: &mut Vec<u8>, r: std::thread::Result<R>) -> Result<(), Failure> {
    let encoded = match &r {
        Ok(r) => {
            // Same bytes as `ItemOutRef::Ok(r)`: the variant's index, then the value.
            let mark = out.len();
            out.push(OK_TAG);
            codec::append_value(out, r).inspect_err(|_| out.truncate(mark))
        }
        Err(p) => {
            let (message, location) =
                procpool_engine::take_last_panic().unwrap_or_else(|| (payload_message(&**p), None));
            let backtrace = procpool_engine::take_last_backtrace();
            let v: ItemOutRef<'_, R> = ItemOutRef::Panic {
                message,
                location,
                backtrace,
            };
            codec::append(out, &v)
        }
    };
    if let Err(e) = encoded {
        let e = match &r {
            Ok(v) => codec::explain(&e, v),
            Err(_) => e.to_string(),
        };
        let msg = format!("the result could not be serialized: {e}");
        let v: ItemOutRef<'_, R> = ItemOutRef::Codec(msg);
        codec::append(out, &v).map_err(|e| codec_failure("encoding an error", e))?;
    }
    Ok(())
}

/// A chunk's payload: a little-endian `u32` count, a mode byte, then the arguments.
fn split_header(payload: &[u8]) -> Result<(u32, u8, &[u8]), Failure> {
    match payload.split_first_chunk::<5>() {
        Some((h, rest)) => Ok((u32::from_le_bytes([h[0], h[1], h[2], h[3]]), h[4], rest)),
        None => Err(Failure::Codec {
            message: "chunk payload shorter than its header".into(),
        }),
    }
}

/// Starts a chunk payload of `A`s; [`end_chunk`] writes its count.
pub(crate) fn begin_chunk<A: Value>(buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&[0; 4]);
    buf.push(if codec::plain_size::<A>().is_some() {
        MODE_PLAIN
    } else {
        MODE_ENCODED
    });
}

/// Appends one argument to a chunk payload begun by [`begin_chunk`].
///
/// # Errors
/// The codec's error, in which case `buf` is left as it was.
#[inline]
pub(crate) fn push_arg<A: Value>(buf: &mut Vec<u8>, a: &A) -> Result<(), String> {
    if codec::plain_size::<A>().is_some() {
        codec::put_plain(buf, a);
        return Ok(());
    }
    codec::append_value(buf, a).map_err(|e| codec::explain(&e, a))
}

/// Writes the count of a chunk payload.
pub(crate) fn end_chunk(buf: &mut [u8], count: u32) {
    buf[..4].copy_from_slice(&count.to_le_bytes());
}

/// Splits a chunk's results: packed plain values (all succeeded), or [`ItemOut`]s.
pub(crate) fn split_results(bytes: &[u8]) -> Option<(bool, &[u8])> {
    let (&mode, rest) = bytes.split_first()?;
    match mode {
        MODE_PLAIN => Some((true, rest)),
        MODE_ENCODED => Some((false, rest)),
        _ => None,
    }
}

fn payload_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "Box<dyn Any>".to_owned())
}

fn run_init<A: DeserializeOwned>(
    f: usize,
    payload: &[u8],
    _out: &mut Vec<u8>,
) -> Result<(), Failure> {
    // SAFETY: as in `run_chunk`, for a `fn(A)` taken in `init_ref`.
    let f = unsafe { std::mem::transmute::<usize, fn(A)>(f) };
    let a: A = postcard::from_bytes(payload)
        .map_err(|e| codec_failure("the initializer's argument could not be deserialized", e))?;
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

    fn double(x: u64) -> u64 {
        x * 2
    }

    fn boom(x: u64) -> u64 {
        if x == 3 {
            panic!("three is bad");
        }
        x
    }

    fn run(func: &[u8], args: &[u64]) -> Vec<ItemOut<u64>> {
        let mut payload = Vec::new();
        begin_chunk::<u64>(&mut payload);
        for a in args {
            push_arg(&mut payload, a).unwrap();
        }
        end_chunk(&mut payload, args.len() as u32);
        let mut out = Vec::new();
        FnRunner.run(func, &payload, &mut out).unwrap();
        let (packed, mut rest) = split_results(&out).unwrap();
        if packed {
            let values = codec::take_plain_all::<u64>(rest).unwrap();
            return values.into_iter().map(ItemOut::Ok).collect();
        }
        let mut v = Vec::new();
        while !rest.is_empty() {
            let (item, r) = postcard::take_from_bytes::<ItemOut<u64>>(rest).unwrap();
            v.push(item);
            rest = r;
        }
        v
    }

    #[test]
    fn a_reference_resolves_in_the_same_process() {
        let out = run(&chunk_ref(double), &[1, 2, 3]);
        let got: Vec<u64> = out
            .into_iter()
            .map(|o| match o {
                ItemOut::Ok(v) => v,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, vec![2, 4, 6]);
    }

    #[test]
    fn a_panicking_item_fails_alone() {
        let out = run(&chunk_ref(boom), &[2, 3, 4]);
        assert!(matches!(out[0], ItemOut::Ok(2)));
        assert!(matches!(&out[1], ItemOut::Panic { message, .. } if message == "three is bad"));
        assert!(matches!(out[2], ItemOut::Ok(4)));
    }

    #[test]
    fn malformed_references_are_refused() {
        assert!(FnRunner.run(&[1, 2, 3], &[], &mut Vec::new()).is_err());
    }
}
