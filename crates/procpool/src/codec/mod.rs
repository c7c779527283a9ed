//! How values travel between processes: encoded by the codec chosen per pool or call
//! ([`format`](mod@format): postcard or MessagePack), checked once per type to survive the trip
//! ([`roundtrip`]), with a field postcard would skip refused ([`strict`]) and the text of
//! a custom error kept where postcard drops it ([`probe`], [`deprobe`]).
//!
//! This module holds [`Value`] and the postcard fast paths, which write the very same
//! bytes as postcard.
//!
//! postcard encodes a `Vec<u8>` as a varint length followed by the bytes, but serde hands
//! it over one byte at a time, which runs at about 1 GB/s each way; a plain number costs a
//! call through serde's machinery and a short copy. For `Vec<u8>` and the primitive
//! numbers this module writes and reads postcard's encoding directly (one copy for
//! bytes), so bulk data moves at memory speed and small numbers cost nanoseconds. Every
//! other type goes through postcard unchanged.

mod deprobe;
pub(crate) mod format;
mod probe;
pub(crate) mod roundtrip;
mod strict;

use std::any::{Any, TypeId};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type that can be sent to a worker or back: `serde` both ways, and owned (no
/// borrowed data), as any value crossing a process boundary must be.
///
/// It is implemented for every such type; there is nothing to implement. Which serde
/// features each codec supports is said at [`Codec`](crate::Codec).
///
/// A function's argument is an owned value: take `String`, not `&str`, and `Vec<T>`, not
/// `&[T]` (the worker decodes a fresh value and hands it over). The items passed to
/// `map` and the others may still be borrowed: `pool.map(f, &names)` for a
/// `fn(String) -> R` encodes each `&String` without a copy, and an item may be a
/// borrowed form that serializes as the argument does (`&str` for a `String`, `&Path`
/// for a `PathBuf`, `&[T]` for a `Vec<T>`: see [`EncodesAs`](crate::EncodesAs)).
///
/// A borrowed argument type is refused at compile time, in rustc's words "implementation
/// of `Deserialize` is not general enough":
///
/// ```compile_fail
/// fn len(s: &str) -> usize {
///     s.len()
/// }
/// # fn main() -> Result<(), procpool::Error> {
/// let pool = procpool::Pool::new()?;
/// pool.map(len, ["a", "b"])?; // error: `&str` is not an owned value
/// # Ok(()) }
/// ```
///
/// ```
/// fn len(s: String) -> usize {
///     s.len()
/// }
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// let names = vec!["a".to_string(), "bc".to_string()];
/// assert_eq!(pool.map(len, &names)?, [1, 2]); // items borrowed, arguments owned
/// # Ok(()) }
/// ```
pub trait Value: Serialize + DeserializeOwned + 'static {}

impl<T: Serialize + DeserializeOwned + 'static> Value for T {}

/// Appends the encoding of `v` to `buf`; on error `buf` is left as it was. A field left
/// out by `skip_serializing_if` is an error (see [`strict`]).
#[inline]
pub(crate) fn append<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    v: &T,
) -> Result<(), postcard::Error> {
    let mark = buf.len();
    let r = {
        let mut ser = postcard::Serializer {
            output: Appender(buf),
        };
        crate::codec::strict::serialize(v, &mut ser)
    };
    if r.is_err() {
        buf.truncate(mark);
    }
    r
}

/// Whether `T` is `U` (decided at compile time).
#[inline(always)]
fn is<T: 'static, U: 'static>() -> bool {
    TypeId::of::<T>() == TypeId::of::<U>()
}

/// `v` as a `U`, for a `T` that [`is`] `U`.
#[inline(always)]
fn cast<T: 'static, U: Copy + 'static>(v: &T) -> U {
    assert!(is::<T, U>());
    // SAFETY: `T` and `U` are the same type (asserted above, and folded away by the
    // compiler), and `U` is `Copy`.
    unsafe { std::mem::transmute_copy::<T, U>(v) }
}

/// `v` as a `T`, for a `T` that [`is`] `U`.
#[inline(always)]
fn uncast<T: 'static, U: Copy + 'static>(v: U) -> T {
    assert!(is::<T, U>());
    // SAFETY: as in `cast`.
    unsafe { std::mem::transmute_copy::<U, T>(&v) }
}

/// The size of a *plain* type: a primitive number, which a chunk carries as a packed
/// array of its in-memory bytes instead of one encoding per item. Parent and workers run
/// the same binary on the same machine, so the byte order is the same.
#[inline(always)]
pub(crate) fn plain_size<T: 'static>() -> Option<usize> {
    macro_rules! sizes {
        ($($t:ty),*) => {$(
            if is::<T, $t>() {
                return Some(std::mem::size_of::<$t>());
            }
        )*};
    }
    sizes!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, f32, f64);
    None
}

/// Whether values of `T` take a fast path (the same bytes with any codec): primitive
/// numbers and `Vec<u8>`.
#[inline(always)]
pub(crate) fn has_fast_path<T: 'static>() -> bool {
    plain_size::<T>().is_some() || is::<T, Vec<u8>>()
}

/// Appends the bytes of a plain value.
#[inline(always)]
pub(crate) fn put_plain<T: 'static>(buf: &mut Vec<u8>, v: &T) {
    let n = plain_size::<T>().expect("put_plain takes plain types only");
    // SAFETY: `T` is a primitive number (checked above): `n` initialized bytes, no padding.
    let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), n) };
    buf.extend_from_slice(bytes);
}

/// Reads one plain value from exactly its size of bytes.
#[inline(always)]
pub(crate) fn read_plain<T: 'static>(bytes: &[u8]) -> T {
    let n = plain_size::<T>().expect("read_plain takes plain types only");
    assert_eq!(bytes.len(), n);
    // SAFETY: `T` is a primitive number (checked above): any `n` bytes are a valid value;
    // the read is unaligned-safe.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
}

/// The plain values packed in `bytes` (a whole number of them).
pub(crate) fn plain_values<T: 'static>(bytes: &[u8]) -> impl Iterator<Item = T> + '_ {
    let n = plain_size::<T>().expect("plain_values takes plain types only");
    bytes.chunks_exact(n).map(read_plain::<T>)
}

/// Reads plain values packed in `bytes` (whose length must be a multiple of the size).
#[cfg(test)]
pub(crate) fn take_plain_all<T: 'static>(bytes: &[u8]) -> Option<Vec<T>> {
    let n = plain_size::<T>()?;
    if !bytes.len().is_multiple_of(n) {
        return None;
    }
    let count = bytes.len() / n;
    let mut v: Vec<T> = Vec::with_capacity(count);
    // SAFETY: `T` is a primitive number: every bit pattern is a valid value, and the
    // vector has room for `count` of them, which is exactly `bytes.len()` bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr().cast::<u8>(), bytes.len());
        v.set_len(count);
    }
    Some(v)
}

/// The bytes of plain values, for writing them out at once.
#[cfg(test)]
pub(crate) fn plain_bytes<T: 'static>(v: &[T]) -> &[u8] {
    let n = plain_size::<T>().expect("plain_bytes takes plain types only");
    // SAFETY: primitive numbers: `v.len() * n` initialized bytes without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), v.len() * n) }
}

/// Appends the encoding of a value: byte vectors with one copy, plain numbers directly,
/// anything else through postcard.
#[inline]
pub(crate) fn append_value<T: Value>(buf: &mut Vec<u8>, v: &T) -> Result<(), postcard::Error> {
    macro_rules! unsigned {
        ($($t:ty),*) => {$(
            if is::<T, $t>() {
                put_varint(buf, cast::<T, $t>(v) as u64);
                return Ok(());
            }
        )*};
    }
    macro_rules! signed {
        ($($t:ty),*) => {$(
            if is::<T, $t>() {
                let x = cast::<T, $t>(v) as i64;
                put_varint(buf, ((x << 1) ^ (x >> 63)) as u64);
                return Ok(());
            }
        )*};
    }
    macro_rules! float {
        ($($t:ty),*) => {$(
            if is::<T, $t>() {
                buf.extend_from_slice(&cast::<T, $t>(v).to_le_bytes());
                return Ok(());
            }
        )*};
    }
    unsigned!(u64, u32, u16, usize);
    signed!(i64, i32, i16, isize);
    float!(f64, f32);
    if let Some(bytes) = (v as &dyn Any).downcast_ref::<Vec<u8>>() {
        put_varint(buf, bytes.len() as u64);
        buf.extend_from_slice(bytes);
        return Ok(());
    }
    append(buf, v)
}

/// Words for a failure to encode `v`: postcard's message, or the one `v`'s `Serialize`
/// gave, which postcard does not keep.
#[cold]
pub(crate) fn explain<T: Serialize + ?Sized>(e: &postcard::Error, v: &T) -> String {
    match e {
        postcard::Error::SerdeSerCustom => {
            crate::codec::probe::custom_message(v).unwrap_or_else(|| e.to_string())
        }
        postcard::Error::SerializeSeqLengthUnknown => format!(
            "{e}: `{}` writes a map or sequence without saying its length first, as \
             #[serde(flatten)] does, which postcard cannot express: send it with \
             Codec::MessagePack",
            std::any::type_name::<T>()
        ),
        _ => e.to_string(),
    }
}

/// Words for a failure to decode a `T` from `bytes`: the message `T`'s `Deserialize`
/// gave (which postcard does not keep), or postcard's, with what it likely means.
#[cold]
pub(crate) fn explain_de<T: DeserializeOwned>(e: &postcard::Error, bytes: &[u8]) -> String {
    match e {
        postcard::Error::SerdeDeCustom => {
            crate::codec::deprobe::custom_message::<T>(bytes).unwrap_or_else(|| e.to_string())
        }
        postcard::Error::WontImplement => format!(
            "`{}` needs a self-describing format (its Deserialize calls deserialize_any, as \
             untagged and internally tagged enums, flatten and serde_json::Value do), which \
             postcard is not: send it with Codec::MessagePack",
            std::any::type_name::<T>()
        ),
        _ => e.to_string(),
    }
}

/// Where the bytes of an encoded `Vec<u8>` that fills all of `encoded` start.
pub(crate) fn bytes_start(encoded: &[u8]) -> Option<usize> {
    let (len, rest) = take_varint(encoded, usize::MAX as u64).ok()?;
    (len == rest.len() as u64).then(|| encoded.len() - rest.len())
}

/// Decodes a value from the front of `bytes`; returns it and the rest. The fast paths of
/// [`append_value`] read exactly what postcard would, with the same checks.
#[inline]
pub(crate) fn take_value<T: Value>(bytes: &[u8]) -> Result<(T, &[u8]), postcard::Error> {
    macro_rules! unsigned {
        ($($t:ty),*) => {$(
            if is::<T, $t>() {
                let (v, rest) = take_varint(bytes, <$t>::MAX as u64)?;
                return Ok((uncast::<T, $t>(v as $t), rest));
            }
        )*};
    }
    macro_rules! signed {
        ($($t:ty),*) => {$(
            if is::<T, $t>() {
                let (z, rest) = take_varint(bytes, (<$t>::MAX as u64) * 2 + 1)?;
                let v = ((z >> 1) as i64) ^ -((z & 1) as i64);
                return Ok((uncast::<T, $t>(v as $t), rest));
            }
        )*};
    }
    macro_rules! float {
        ($($t:ty),*) => {$(
            if is::<T, $t>() {
                const N: usize = std::mem::size_of::<$t>();
                let (head, rest) = bytes
                    .split_first_chunk::<N>()
                    .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
                return Ok((uncast::<T, $t>(<$t>::from_le_bytes(*head)), rest));
            }
        )*};
    }
    unsigned!(u64, u32, u16, usize);
    signed!(i64, i32, i16, isize);
    float!(f64, f32);
    if is::<T, Vec<u8>>() {
        let (len, rest) = take_varint(bytes, usize::MAX as u64)?;
        let len = len as usize;
        if len > rest.len() {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        let mut slot: Option<T> = None;
        if let Some(out) = (&mut slot as &mut dyn Any).downcast_mut::<Option<Vec<u8>>>() {
            *out = Some(rest[..len].to_vec());
        }
        if let Some(v) = slot {
            return Ok((v, &rest[len..]));
        }
    }
    postcard::take_from_bytes(bytes)
}

/// Appends the postcard varint of `v` to `buf` (at most 10 bytes).
#[inline(always)]
pub(crate) fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    buf.reserve(10);
    let len = buf.len();
    let spare = buf.spare_capacity_mut();
    let mut n = 0;
    while v >= 0x80 {
        spare[n].write((v as u8) | 0x80);
        v >>= 7;
        n += 1;
    }
    spare[n].write(v as u8);
    // SAFETY: the `n + 1` bytes after `len` were just written (within the 10 reserved).
    unsafe { buf.set_len(len + n + 1) };
}

/// Reads a postcard varint no larger than `max` from the start of `bytes`: its value and
/// the bytes after it.
#[inline(always)]
pub(crate) fn take_varint(bytes: &[u8], max: u64) -> Result<(u64, &[u8]), postcard::Error> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let part = u64::from(b & 0x7f);
        if i == 9 && part > 1 {
            return Err(postcard::Error::DeserializeBadVarint);
        }
        v |= part << (7 * i);
        if b & 0x80 == 0 {
            if v > max {
                return Err(postcard::Error::DeserializeBadVarint);
            }
            return Ok((v, &bytes[i + 1..]));
        }
    }
    if bytes.len() < 10 {
        Err(postcard::Error::DeserializeUnexpectedEnd)
    } else {
        Err(postcard::Error::DeserializeBadVarint)
    }
}

/// A postcard flavor appending to a borrowed buffer, slices at a time.
struct Appender<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let n = data.len();
        if n > 16 {
            self.0.extend_from_slice(data);
            return Ok(());
        }
        // Varints, numbers and short strings: a call to memcpy (or a push per byte, each
        // checking the capacity) costs more than the field. Two word copies, which may
        // overlap, cover any length up to 16.
        let buf = &mut *self.0;
        buf.reserve(16);
        let len = buf.len();
        // SAFETY: 16 bytes of room past `len` are reserved above; each copy reads within
        // `data` (the two reads of a pair cover `data` from both ends) and writes within
        // `len..len + n`.
        unsafe {
            let src = data.as_ptr();
            let dst = buf.as_mut_ptr().add(len);
            if n >= 8 {
                let a = src.cast::<u64>().read_unaligned();
                let b = src.add(n - 8).cast::<u64>().read_unaligned();
                dst.cast::<u64>().write_unaligned(a);
                dst.add(n - 8).cast::<u64>().write_unaligned(b);
            } else if n >= 4 {
                let a = src.cast::<u32>().read_unaligned();
                let b = src.add(n - 4).cast::<u32>().read_unaligned();
                dst.cast::<u32>().write_unaligned(a);
                dst.add(n - 4).cast::<u32>().write_unaligned(b);
            } else {
                for i in 0..n {
                    *dst.add(i) = *src.add(i);
                }
            }
            buf.set_len(len + n);
        }
        Ok(())
    }

    #[inline(always)]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_appender_copies_every_short_length_exactly() {
        use postcard::ser_flavors::Flavor;
        let data: Vec<u8> = (1..=40).collect();
        for n in 0..=40 {
            for pre in [0usize, 3, 13] {
                let mut buf = vec![0xAA; pre];
                buf.shrink_to_fit();
                Appender(&mut buf).try_extend(&data[..n]).unwrap();
                Appender(&mut buf).try_extend(&data[..n]).unwrap();
                let mut want = vec![0xAA; pre];
                want.extend_from_slice(&data[..n]);
                want.extend_from_slice(&data[..n]);
                assert_eq!(buf, want, "{n} bytes after {pre}");
            }
        }
    }

    #[test]
    fn the_byte_path_writes_what_postcard_writes() {
        for n in [0usize, 1, 127, 128, 300, 70_000] {
            let v: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut fast = Vec::new();
            append_value(&mut fast, &v).unwrap();
            assert_eq!(fast, postcard::to_allocvec(&v).unwrap());
            let (back, rest): (Vec<u8>, _) = take_value(&fast).unwrap();
            assert_eq!(back, v);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn a_short_byte_vector_is_an_error() {
        let mut b = Vec::new();
        append_value(&mut b, &vec![1u8; 10]).unwrap();
        assert!(take_value::<Vec<u8>>(&b[..5]).is_err());
        assert!(take_value::<Vec<u8>>(&[0xff; 12]).is_err());
    }

    #[test]
    fn number_paths_match_postcard() {
        fn check<T: Value + PartialEq + std::fmt::Debug + Copy>(vals: &[T]) {
            for &v in vals {
                let mut fast = Vec::new();
                append_value(&mut fast, &v).unwrap();
                assert_eq!(fast, postcard::to_allocvec(&v).unwrap(), "{v:?}");
                let (back, rest): (T, _) = take_value(&fast).unwrap();
                assert_eq!(back, v);
                assert!(rest.is_empty());
            }
        }
        check(&[0u64, 1, 127, 128, 300, u64::MAX]);
        check(&[0u32, 1, 70_000, u32::MAX]);
        check(&[0u16, 300, u16::MAX]);
        check(&[0usize, 5, usize::MAX]);
        check(&[0i64, -1, 1, i64::MIN, i64::MAX]);
        check(&[0i32, -70_000, i32::MIN, i32::MAX]);
        check(&[0i16, -3, i16::MIN]);
        check(&[0isize, isize::MIN]);
        check(&[0.0f64, -1.5, f64::MAX]);
        check(&[0.0f32, 3.25]);
    }

    #[test]
    fn varints_match_postcard() {
        for v in [0u64, 1, 127, 128, 300, 1 << 20, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b, postcard::to_allocvec(&v).unwrap());
            assert_eq!(take_varint(&b, u64::MAX).ok(), Some((v, &[][..])));
        }
        assert!(take_varint(&[0x80], u64::MAX).is_err());
        assert!(take_varint(&[0xff; 10], u64::MAX).is_err());
    }

    #[test]
    fn out_of_range_varints_are_errors() {
        let big = postcard::to_allocvec(&(u64::from(u32::MAX) + 1)).unwrap();
        assert!(take_value::<u32>(&big).is_err());
        assert!(take_value::<u64>(&[0x80; 3]).is_err());
        assert!(take_value::<u64>(&[0xff; 11]).is_err());
        assert!(take_value::<f64>(&[1, 2, 3]).is_err());
    }

    #[test]
    fn plain_values_round_trip_in_packed_arrays() {
        let v: Vec<i32> = vec![-1, 0, 7, i32::MAX];
        let mut b = Vec::new();
        for x in &v {
            put_plain(&mut b, x);
        }
        assert_eq!(b, plain_bytes(&v));
        assert_eq!(take_plain_all::<i32>(&b), Some(v));
        assert_eq!(take_plain_all::<i32>(&b[..3]), None);
        assert_eq!(plain_size::<String>(), None);
        assert_eq!(plain_size::<f64>(), Some(8));
    }

    #[test]
    fn other_types_use_postcard() {
        let mut b = Vec::new();
        append_value(&mut b, &(7u32, "x".to_string())).unwrap();
        let (v, _): ((u32, String), _) = take_value(&b).unwrap();
        assert_eq!(v, (7, "x".to_string()));
    }
}
