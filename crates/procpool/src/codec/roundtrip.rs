//! The check that values of a type survive the trip through their codec.
//!
//! postcard is not self-describing: a type whose `Serialize` leaves a field out
//! (`skip_serializing_if`) or whose `Deserialize` needs to see what comes
//! (`deserialize_any`: untagged or internally tagged enums, `flatten`) either fails to
//! decode or, worse, decodes into other values. So the first value of each type (and
//! codec) that a process encodes is decoded and encoded again, and the two encodings
//! compared; a type that fails is refused from then on, with a message naming it and the
//! likely cause. The verdict is kept, so the check costs one look-up per value after the
//! first, and nothing for `Vec<u8>` and the primitive numbers.
//!
//! Equal bytes are the rule; bytes that differ only in order (the same length, the same
//! bytes) pass too, since a `HashMap` decoded again may list its entries in another
//! order.

use std::any::TypeId;
use std::cell::Cell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, OnceLock};

use crate::codec::format::{self, Codec};
use crate::codec::{self, Value};

type Verdicts = Mutex<HashMap<(TypeId, Codec), Result<(), String>>>;

/// Why a value was refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Values of its type do not survive the codec: the message names the type and the
    /// likely cause.
    Type(String),
    /// This value does not decode (its `Deserialize` refuses it): the codec's message.
    /// Nothing is concluded about the type.
    Value(String),
}

fn verdicts() -> &'static Verdicts {
    static V: OnceLock<Verdicts> = OnceLock::new();
    V.get_or_init(Verdicts::default)
}

thread_local! {
    /// The last type this thread found checked and sound: the common case in one look.
    static LAST_GOOD: Cell<Option<(TypeId, Codec)>> = const { Cell::new(None) };
}

/// Checks that values of `T` survive `codec`, using `bytes` (the encoding of a value) the
/// first time this process sees `T` with that codec.
///
/// # Errors
/// [`Refusal::Type`] for this value and every later value of the type;
/// [`Refusal::Value`] when this value does not decode (the check is then made again on
/// the next value).
#[inline]
pub(crate) fn check<T: Value>(c: Codec, bytes: &[u8]) -> Result<(), Refusal> {
    if codec::has_fast_path::<T>() {
        return Ok(());
    }
    let key = (TypeId::of::<T>(), c);
    if LAST_GOOD.get() == Some(key) {
        return Ok(());
    }
    check_slow::<T>(key, bytes)
}

#[cold]
fn check_slow<T: Value>(key: (TypeId, Codec), bytes: &[u8]) -> Result<(), Refusal> {
    let known = verdicts()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    let verdict = match known {
        Some(v) => v,
        None => {
            let v = trip::<T>(key.1, bytes)?;
            let mut map = verdicts().lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key).or_insert(v).clone()
        }
    };
    if verdict.is_ok() {
        LAST_GOOD.set(Some(key));
    }
    verdict.map_err(Refusal::Type)
}

/// Decodes `bytes` as a `T` and encodes it again: the verdict on the type, or the
/// refusal of this value.
fn trip<T: Value>(c: Codec, bytes: &[u8]) -> Result<Result<(), String>, Refusal> {
    let v: T = match std::panic::catch_unwind(|| format::decode(c, bytes)) {
        Ok(Ok(v)) => v,
        // A type that needs a self-describing format: known from the message.
        Ok(Err(m)) if m.contains("deserialize_any") => return Ok(Err(refusal::<T>(c, &m))),
        // Otherwise a value its own `Deserialize` refuses says nothing of the type.
        Ok(Err(m)) => return Err(Refusal::Value(m)),
        Err(_) => return Err(Refusal::Value("its Deserialize panicked".into())),
    };
    let mut again = Vec::with_capacity(bytes.len());
    let detail =
        match std::panic::catch_unwind(AssertUnwindSafe(|| format::encode(c, &mut again, &v))) {
            Ok(Ok(())) if same(&again, bytes) => return Ok(Ok(())),
            Ok(Ok(())) => format!(
                "a value of {} bytes, decoded and encoded again, gave {} other bytes",
                bytes.len(),
                again.len()
            ),
            Ok(Err(m)) => format!("a value decoded from it does not encode again: {m}"),
            Err(_) => "a value decoded from it panicked when encoded again".into(),
        };
    Ok(Err(refusal::<T>(c, &detail)))
}

/// Equal, or the same bytes in another order.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

#[cold]
fn refusal<T>(c: Codec, detail: &str) -> String {
    let name = std::any::type_name::<T>();
    match c {
        Codec::Postcard => format!(
            "values of type `{name}` do not survive the postcard codec ({detail}); the likely \
             cause is a serde feature postcard cannot express: skip_serializing_if, \
             skip_deserializing, untagged or internally tagged enums, flatten, or a \
             Deserialize that calls deserialize_any. Send this type with Codec::MessagePack \
             (Builder::codec or Pool::with_codec)"
        ),
        Codec::MessagePack => format!(
            "values of type `{name}` do not survive the MessagePack codec ({detail}): its \
             Serialize and Deserialize disagree"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Msg {
        #[serde(skip_serializing_if = "Option::is_none")]
        a: Option<u8>,
        b: u8,
        c: u8,
        d: Vec<u8>,
    }

    #[derive(Serialize, Deserialize)]
    struct Fine {
        a: Option<u8>,
        m: HashMap<u32, String>,
    }

    fn bytes<T: Value>(c: Codec, v: &T) -> Vec<u8> {
        let mut b = Vec::new();
        format::encode(c, &mut b, v).unwrap();
        b
    }

    #[test]
    fn a_skipped_field_is_refused_with_postcard_and_passes_with_messagepack() {
        let m = Msg {
            a: None,
            b: 0,
            c: 5,
            d: vec![1, 7],
        };
        // postcard's own serializer (not procpool's, which refuses the skipped field).
        let raw = postcard::to_allocvec(&m).unwrap();
        let e = trip::<Msg>(Codec::Postcard, &raw).unwrap();
        let e = e.unwrap_err();
        assert!(
            e.contains("Msg") && e.contains("skip_serializing_if"),
            "{e}"
        );
        trip::<Msg>(Codec::MessagePack, &bytes(Codec::MessagePack, &m))
            .unwrap()
            .unwrap();
    }

    #[test]
    fn sound_types_pass_even_with_maps() {
        let m: HashMap<u32, String> = (0..50).map(|i| (i, i.to_string())).collect();
        let v = Fine { a: None, m };
        trip::<Fine>(Codec::Postcard, &bytes(Codec::Postcard, &v))
            .unwrap()
            .unwrap();
        check::<Fine>(Codec::Postcard, &bytes(Codec::Postcard, &v)).unwrap();
        check::<Fine>(Codec::Postcard, &[]).unwrap(); // the verdict is kept
    }
}
