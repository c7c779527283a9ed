//! Encoding values with postcard, with a copy-speed path for byte vectors.
//!
//! postcard encodes a `Vec<u8>` as a varint length followed by the bytes, but serde hands
//! it over one byte at a time, which runs at about 1 GB/s each way. For `Vec<u8>` this
//! module writes and reads the very same bytes with one copy, so bulk data moves at memory
//! speed; every other type goes through postcard unchanged.

use std::any::{Any, TypeId};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A type that can be sent to a worker or back: `serde` both ways, and owned (no
/// borrowed data), as any value crossing a process boundary must be.
///
/// It is implemented for every such type; there is nothing to implement.
pub trait Value: Serialize + DeserializeOwned + 'static {}

impl<T: Serialize + DeserializeOwned + 'static> Value for T {}

/// Appends the encoding of `v` to `buf`; on error `buf` is left as it was.
#[inline]
pub(crate) fn append<T: Serialize + ?Sized>(
    buf: &mut Vec<u8>,
    v: &T,
) -> Result<(), postcard::Error> {
    let mark = buf.len();
    postcard::serialize_with_flavor(v, Appender(buf)).inspect_err(|_| buf.truncate(mark))
}

/// Appends the encoding of a value, byte vectors with one copy.
#[inline]
pub(crate) fn append_value<T: Value>(buf: &mut Vec<u8>, v: &T) -> Result<(), postcard::Error> {
    match (v as &dyn Any).downcast_ref::<Vec<u8>>() {
        Some(bytes) => {
            put_varint(buf, bytes.len() as u64);
            buf.extend_from_slice(bytes);
            Ok(())
        }
        None => append(buf, v),
    }
}

/// Words for a failure to encode `v`: postcard's message, or the one `v`'s `Serialize`
/// gave, which postcard does not keep.
#[cold]
pub(crate) fn explain<T: Serialize + ?Sized>(e: &postcard::Error, v: &T) -> String {
    match e {
        postcard::Error::SerdeSerCustom => {
            crate::probe::custom_message(v).unwrap_or_else(|| e.to_string())
        }
        _ => e.to_string(),
    }
}

/// Decodes a value from the front of `bytes`; returns it and the rest.
#[inline]
pub(crate) fn take_value<T: Value>(bytes: &[u8]) -> Result<(T, &[u8]), postcard::Error> {
    if TypeId::of::<T>() != TypeId::of::<Vec<u8>>() {
        return postcard::take_from_bytes(bytes);
    }
    let (len, rest) = take_varint(bytes)?;
    let len = usize::try_from(len).map_err(|_| postcard::Error::DeserializeBadVarint)?;
    if len > rest.len() {
        return Err(postcard::Error::DeserializeUnexpectedEnd);
    }
    let boxed: Box<dyn Any> = Box::new(rest[..len].to_vec());
    match boxed.downcast::<T>() {
        Ok(v) => Ok((*v, &rest[len..])),
        Err(_) => postcard::take_from_bytes(bytes),
    }
}

fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn take_varint(bytes: &[u8]) -> Result<(u64, &[u8]), postcard::Error> {
    let mut v: u64 = 0;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, &bytes[i + 1..]));
        }
    }
    Err(postcard::Error::DeserializeBadVarint)
}

/// A postcard flavor appending to a borrowed buffer, slices at a time.
struct Appender<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Appender<'_> {
    type Output = ();

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
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
    fn other_types_use_postcard() {
        let mut b = Vec::new();
        append_value(&mut b, &(7u32, "x".to_string())).unwrap();
        let (v, _): ((u32, String), _) = take_value(&b).unwrap();
        assert_eq!(v, (7, "x".to_string()));
    }
}
