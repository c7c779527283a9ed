//! A reader of postcard's format that keeps the message of a custom error.
//!
//! postcard drops the text a `Deserialize` implementation gives to `Error::custom` (and
//! with it serde's own "invalid value", "unknown variant" and "missing field" texts): it
//! reports only "Serde Deserialization Error". When it does, the bytes are read again by
//! this probe, which reads the same format and keeps the text, for the task's error. It
//! runs only after a failure, so it favours brevity over speed.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// The message a `T` read from `bytes` fails with, if it fails with a custom one.
pub(crate) fn custom_message<T: de::DeserializeOwned>(bytes: &[u8]) -> Option<String> {
    let mut p = Probe { bytes };
    match T::deserialize(&mut p) {
        Err(ProbeError::Custom(m)) => Some(m),
        _ => None,
    }
}

#[derive(Debug)]
enum ProbeError {
    Custom(String),
    /// The bytes are not what the type reads: postcard's own message says it better.
    Format,
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::Custom(m) => f.write_str(m),
            ProbeError::Format => f.write_str("malformed"),
        }
    }
}

impl std::error::Error for ProbeError {}

impl de::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError::Custom(msg.to_string())
    }
}

type R<T> = Result<T, ProbeError>;

struct Probe<'de> {
    bytes: &'de [u8],
}

impl<'de> Probe<'de> {
    fn take(&mut self, n: usize) -> R<&'de [u8]> {
        if n > self.bytes.len() {
            return Err(ProbeError::Format);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> R<u128> {
        let mut v: u128 = 0;
        for i in 0..19 {
            let b = self.byte()?;
            v |= u128::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ProbeError::Format)
    }

    fn unsigned<T: TryFrom<u128>>(&mut self) -> R<T> {
        T::try_from(self.varint()?).map_err(|_| ProbeError::Format)
    }

    fn signed(&mut self) -> R<i128> {
        let z = self.varint()?;
        Ok(((z >> 1) as i128) ^ -((z & 1) as i128))
    }

    fn len(&mut self) -> R<usize> {
        self.unsigned::<usize>()
    }

    fn str(&mut self) -> R<&'de str> {
        let n = self.len()?;
        std::str::from_utf8(self.take(n)?).map_err(|_| ProbeError::Format)
    }
}

macro_rules! numbers {
    ($($m:ident $visit:ident $t:ty = $how:ident;)*) => {$(
        fn $m<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
            let x = numbers!(@ self $how $t);
            v.$visit(x)
        }
    )*};
    (@ $s:ident unsigned $t:ty) => { $s.unsigned::<$t>()? };
    (@ $s:ident signed $t:ty) => { <$t>::try_from($s.signed()?).map_err(|_| ProbeError::Format)? };
    (@ $s:ident float $t:ty) => {{
        const N: usize = std::mem::size_of::<$t>();
        let b: [u8; N] = $s.take(N)?.try_into().map_err(|_| ProbeError::Format)?;
        <$t>::from_le_bytes(b)
    }};
}

impl<'de> de::Deserializer<'de> for &mut Probe<'de> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> R<V::Value> {
        Err(ProbeError::Format)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        match self.byte()? {
            0 => v.visit_bool(false),
            1 => v.visit_bool(true),
            _ => Err(ProbeError::Format),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        let b = self.byte()?;
        v.visit_i8(b as i8)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        let b = self.byte()?;
        v.visit_u8(b)
    }

    numbers! {
        deserialize_i16 visit_i16 i16 = signed;
        deserialize_i32 visit_i32 i32 = signed;
        deserialize_i64 visit_i64 i64 = signed;
        deserialize_i128 visit_i128 i128 = signed;
        deserialize_u16 visit_u16 u16 = unsigned;
        deserialize_u32 visit_u32 u32 = unsigned;
        deserialize_u64 visit_u64 u64 = unsigned;
        deserialize_u128 visit_u128 u128 = unsigned;
        deserialize_f32 visit_f32 f32 = float;
        deserialize_f64 visit_f64 f64 = float;
    }

    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        let mut chars = self.str()?.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => v.visit_char(c),
            _ => Err(ProbeError::Format),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        let s = self.str()?;
        v.visit_borrowed_str(s)
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        self.deserialize_str(v)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        let n = self.len()?;
        let b = self.take(n)?;
        v.visit_borrowed_bytes(b)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        self.deserialize_bytes(v)
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        match self.byte()? {
            0 => v.visit_none(),
            1 => v.visit_some(self),
            _ => Err(ProbeError::Format),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        v.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> R<V::Value> {
        v.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, v: V) -> R<V::Value> {
        v.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        let n = self.len()?;
        v.visit_seq(Counted { p: self, left: n })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, n: usize, v: V) -> R<V::Value> {
        v.visit_seq(Counted { p: self, left: n })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        n: usize,
        v: V,
    ) -> R<V::Value> {
        self.deserialize_tuple(n, v)
    }

    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> R<V::Value> {
        let n = self.len()?;
        v.visit_map(Counted { p: self, left: n })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> R<V::Value> {
        self.deserialize_tuple(fields.len(), v)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> R<V::Value> {
        v.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> R<V::Value> {
        Err(ProbeError::Format)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> R<V::Value> {
        Err(ProbeError::Format)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A sequence, tuple or map of a known number of elements.
struct Counted<'a, 'de> {
    p: &'a mut Probe<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Counted<'_, 'de> {
    type Error = ProbeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> R<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.p).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::MapAccess<'de> for Counted<'_, 'de> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> R<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.p).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> R<V::Value> {
        seed.deserialize(&mut *self.p)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Probe<'de> {
    type Error = ProbeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> R<(V::Value, Self)> {
        let index = self.unsigned::<u32>()?;
        let v = seed.deserialize(index.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Probe<'de> {
    type Error = ProbeError;

    fn unit_variant(self) -> R<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> R<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, n: usize, v: V) -> R<V::Value> {
        de::Deserializer::deserialize_tuple(self, n, v)
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> R<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize)]
    struct Odd(u32);

    impl<'de> Deserialize<'de> for Odd {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            let v = u32::deserialize(d)?;
            if v % 2 == 0 {
                return Err(de::Error::custom(format!("{v} is even")));
            }
            Ok(Odd(v))
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    enum E {
        A(String, Vec<(i64, Option<Odd>)>),
        B {
            x: f64,
            m: std::collections::BTreeMap<char, Odd>,
        },
    }

    #[test]
    fn finds_a_nested_custom_message() {
        let v = E::A(
            "x".into(),
            vec![(-3, Some(Odd(1))), (5, None), (7, Some(Odd(4)))],
        );
        let b = postcard::to_allocvec(&v).unwrap();
        assert!(postcard::from_bytes::<E>(&b).is_err());
        assert_eq!(custom_message::<E>(&b).as_deref(), Some("4 is even"));
        let m = [('a', Odd(3)), ('é', Odd(8))].into_iter().collect();
        let b = postcard::to_allocvec(&E::B { x: 1.5, m }).unwrap();
        assert_eq!(custom_message::<E>(&b).as_deref(), Some("8 is even"));
    }

    #[test]
    fn sound_values_give_no_message() {
        let b = postcard::to_allocvec(&(1u8, -7i16, "ok", Odd(9))).unwrap();
        assert_eq!(custom_message::<(u8, i16, String, Odd)>(&b), None);
    }
}
