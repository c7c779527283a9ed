//! The codecs values travel in, chosen per pool or per call: postcard (the default) and
//! MessagePack (self-describing, for types that need serde features postcard lacks).
//!
//! Whatever the codec, `Vec<u8>` and the primitive numbers take the fast paths of
//! [`codec`](crate::codec): a value of exactly those types has no serde attributes, so
//! the codec cannot matter for them.

use crate::codec::{self, Value};

/// How arguments and results are encoded on their way to a worker and back.
///
/// postcard, the default, is compact and fast but not self-describing: the bytes carry no
/// field names or types, so a `Deserialize` must read exactly what the `Serialize` wrote,
/// in the same order. serde features that rely on the data describing itself do not work
/// with it:
///
/// - `#[serde(skip_serializing_if = "...")]` (the field is left out, and the reader, who
///   cannot know, reads the next field in its place);
/// - `#[serde(untagged)]` enums, `#[serde(flatten)]`, internally or adjacently tagged
///   enums (`#[serde(tag = "...")]`), and any `Deserialize` that calls
///   `deserialize_any` (`serde_json::Value` among them);
/// - `#[serde(skip_deserializing)]` on a field that is serialized.
///
/// Such a value fails its task with a [`Codec`](crate::TaskErrorKind::Codec) error that
/// names the type and the likely cause, instead of arriving as a wrong value: a field
/// left out by `skip_serializing_if` is refused as each value is encoded; a
/// `Deserialize` that needs `deserialize_any`, or a map or sequence of unknown length
/// (`flatten`), fails and says so; a value whose decoding leaves bytes unread fails; and
/// the first value of each type (in each process) is decoded and encoded again, and a
/// type whose bytes do not survive that trip is refused from then on. Choose
/// [`Codec::MessagePack`] for such types (structs travel as maps with their field
/// names).
///
/// ```
/// use procpool::Codec;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Msg {
///     #[serde(skip_serializing_if = "Option::is_none")]
///     a: Option<u8>,
///     b: u8,
/// }
///
/// fn b_of(m: Msg) -> u8 {
///     m.b
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = procpool::Pool::builder().workers(1).build()?;
///     let m = || Msg { a: None, b: 5 };
///     assert!(pool.apply(b_of, m()).is_err()); // postcard cannot express the missing field
///     assert_eq!(pool.with_codec(Codec::MessagePack).apply(b_of, m())?, 5);
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// postcard: compact, fast, not self-describing. The default.
    #[default]
    Postcard,
    /// MessagePack (`rmp-serde`), structs as maps with their field names:
    /// self-describing, so every serde feature works, at some cost in size and speed.
    MessagePack,
}

impl Codec {
    /// The byte that names the codec in a chunk's header.
    pub(crate) fn to_byte(self) -> u8 {
        match self {
            Codec::Postcard => 0,
            Codec::MessagePack => 1,
        }
    }

    pub(crate) fn from_byte(b: u8) -> Option<Codec> {
        match b {
            0 => Some(Codec::Postcard),
            1 => Some(Codec::MessagePack),
            _ => None,
        }
    }
}

/// Appends the encoding of `v`; on error `buf` is left as it was, and the error is the
/// codec's message (the one `v`'s `Serialize` gave, when it gave one).
#[inline]
pub(crate) fn encode<T: Value>(c: Codec, buf: &mut Vec<u8>, v: &T) -> Result<(), String> {
    if c == Codec::Postcard || codec::has_fast_path::<T>() {
        return codec::append_value(buf, v).map_err(|e| codec::explain(&e, v));
    }
    let mark = buf.len();
    rmp_serde::encode::write_named(buf, v).map_err(|e| {
        buf.truncate(mark);
        e.to_string()
    })
}

/// Appends the encoding of a `T` given as `form`, a value whose serde calls are a `T`'s
/// (see [`EncodesAs`](crate::EncodesAs)): the bytes [`encode`] writes for that `T`. A
/// `T` with a fast path (`Vec<u8>`) is written in postcard whatever the codec, as
/// [`encode`] does; postcard's serde encoding of a byte sequence is the fast path's.
#[inline]
pub(crate) fn encode_as<T: Value, S: serde::Serialize + ?Sized>(
    c: Codec,
    buf: &mut Vec<u8>,
    form: &S,
) -> Result<(), String> {
    if c == Codec::Postcard || codec::has_fast_path::<T>() {
        return codec::append(buf, form).map_err(|e| codec::explain(&e, form));
    }
    let mark = buf.len();
    rmp_serde::encode::write_named(buf, form).map_err(|e| {
        buf.truncate(mark);
        e.to_string()
    })
}

/// Decodes a value that fills `bytes` exactly.
#[inline]
pub(crate) fn decode<T: Value>(c: Codec, bytes: &[u8]) -> Result<T, String> {
    let (v, left) = if c == Codec::Postcard || codec::has_fast_path::<T>() {
        let (v, rest) =
            codec::take_value::<T>(bytes).map_err(|e| codec::explain_de::<T>(&e, bytes))?;
        (v, rest.len())
    } else {
        let mut de = rmp_serde::Deserializer::new(bytes);
        let v = serde::Deserialize::deserialize(&mut de).map_err(|e| e.to_string())?;
        (v, de.get_ref().len())
    };
    if left > 0 {
        return Err(unread::<T>(left, bytes.len()));
    }
    Ok(v)
}

#[cold]
fn unread<T>(left: usize, len: usize) -> String {
    format!(
        "{left} of its {len} bytes were left unread: `{}` reads other fields than it writes \
         (serde attributes such as skip_serializing_if or skip_deserializing, or a hand-written \
         impl; with the postcard codec, choose Codec::MessagePack for such a type)",
        std::any::type_name::<T>()
    )
}
