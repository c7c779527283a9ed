//! A serializer wrapper that refuses to skip a field.
//!
//! `#[serde(skip_serializing_if = "...")]` leaves a field out of some values only (an
//! `Option` that is `None`, say); serde then tells the serializer so through
//! `SerializeStruct::skip_field`, which postcard ignores. A postcard reader cannot know a
//! field is missing: it reads the next field in its place, and the value arrives wrong.
//! The round-trip check of [`roundtrip`](crate::codec::roundtrip) sees only the first value of a
//! type, so every value postcard encodes goes through this wrapper, which turns a skipped
//! field into an error naming it. It forwards everything else unchanged, so the bytes are
//! postcard's own and the cost is a few inlined calls.

use serde::ser::{self, Error as _, Serialize, Serializer};

/// The start of the message of a skipped field (the probe of custom messages gives the
/// same one).
pub(crate) fn skipped_message(ty: &str, key: &str) -> String {
    format!(
        "field `{key}` of `{ty}` was left out (skip_serializing_if), which the postcard \
         codec cannot express: the reader would take the next field for it. Send this type \
         with Codec::MessagePack (Builder::codec or Pool::with_codec)"
    )
}

/// Serializes `v` into `inner`, refusing skipped fields.
#[inline]
pub(crate) fn serialize<T: Serialize + ?Sized, S: Serializer>(
    v: &T,
    inner: S,
) -> Result<S::Ok, S::Error> {
    v.serialize(Strict(inner))
}

struct Strict<S>(S);

/// A struct (or struct variant) being serialized, with its name for errors.
struct Named<S> {
    inner: S,
    name: &'static str,
}

/// A value to serialize through [`Strict`].
struct Wrap<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Wrap<'_, T> {
    #[inline]
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(Strict(s))
    }
}

macro_rules! forward {
    ($($m:ident($($a:ident: $t:ty),*);)*) => {$(
        #[inline]
        fn $m(self, $($a: $t),*) -> Result<S::Ok, S::Error> {
            self.0.$m($($a),*)
        }
    )*};
}

impl<S: Serializer> Serializer for Strict<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    type SerializeSeq = Strict<S::SerializeSeq>;
    type SerializeTuple = Strict<S::SerializeTuple>;
    type SerializeTupleStruct = Strict<S::SerializeTupleStruct>;
    type SerializeTupleVariant = Strict<S::SerializeTupleVariant>;
    type SerializeMap = Strict<S::SerializeMap>;
    type SerializeStruct = Named<S::SerializeStruct>;
    type SerializeStructVariant = Named<S::SerializeStructVariant>;

    forward! {
        serialize_bool(v: bool); serialize_i8(v: i8); serialize_i16(v: i16);
        serialize_i32(v: i32); serialize_i64(v: i64); serialize_i128(v: i128);
        serialize_u8(v: u8); serialize_u16(v: u16); serialize_u32(v: u32);
        serialize_u64(v: u64); serialize_u128(v: u128); serialize_f32(v: f32);
        serialize_f64(v: f64); serialize_char(v: char); serialize_str(v: &str);
        serialize_bytes(v: &[u8]); serialize_none(); serialize_unit();
        serialize_unit_struct(name: &'static str);
        serialize_unit_variant(name: &'static str, index: u32, variant: &'static str);
    }

    #[inline]
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> Result<S::Ok, S::Error> {
        self.0.serialize_some(&Wrap(v))
    }

    #[inline]
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0.serialize_newtype_struct(name, &Wrap(v))
    }

    #[inline]
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<S::Ok, S::Error> {
        self.0
            .serialize_newtype_variant(name, index, variant, &Wrap(v))
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, S::Error> {
        self.0.serialize_seq(len).map(Strict)
    }

    #[inline]
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, S::Error> {
        self.0.serialize_tuple(len).map(Strict)
    }

    #[inline]
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, S::Error> {
        self.0.serialize_tuple_struct(name, len).map(Strict)
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, S::Error> {
        self.0
            .serialize_tuple_variant(name, index, variant, len)
            .map(Strict)
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Self::SerializeMap, S::Error> {
        self.0.serialize_map(len).map(Strict)
    }

    #[inline]
    fn serialize_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStruct, S::Error> {
        let inner = self.0.serialize_struct(name, len)?;
        Ok(Named { inner, name })
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, S::Error> {
        let inner = self.0.serialize_struct_variant(name, index, variant, len)?;
        Ok(Named {
            inner,
            name: variant,
        })
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! compound {
    ($($tr:ident :: $m:ident),*) => {$(
        impl<S: ser::$tr> ser::$tr for Strict<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            #[inline]
            fn $m<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), S::Error> {
                self.0.$m(&Wrap(v))
            }
            #[inline]
            fn end(self) -> Result<S::Ok, S::Error> {
                self.0.end()
            }
        }
    )*};
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<S: ser::SerializeMap> ser::SerializeMap for Strict<S> {
    type Ok = S::Ok;
    type Error = S::Error;
    #[inline]
    fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> Result<(), S::Error> {
        self.0.serialize_key(&Wrap(k))
    }
    #[inline]
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> Result<(), S::Error> {
        self.0.serialize_value(&Wrap(v))
    }
    #[inline]
    fn end(self) -> Result<S::Ok, S::Error> {
        self.0.end()
    }
}

macro_rules! fields {
    ($($tr:ident),*) => {$(
        impl<S: ser::$tr> ser::$tr for Named<S> {
            type Ok = S::Ok;
            type Error = S::Error;
            #[inline]
            fn serialize_field<T: ?Sized + Serialize>(
                &mut self,
                key: &'static str,
                v: &T,
            ) -> Result<(), S::Error> {
                self.inner.serialize_field(key, &Wrap(v))
            }
            #[cold]
            fn skip_field(&mut self, key: &'static str) -> Result<(), S::Error> {
                Err(S::Error::custom(skipped_message(self.name, key)))
            }
            #[inline]
            fn end(self) -> Result<S::Ok, S::Error> {
                self.inner.end()
            }
        }
    )*};
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Msg {
        #[serde(skip_serializing_if = "Option::is_none")]
        a: Option<u8>,
        b: (u8, Vec<Option<String>>),
    }

    fn strict_bytes<T: Serialize>(v: &T) -> postcard::Result<Vec<u8>> {
        let mut ser = postcard::Serializer {
            output: postcard::ser_flavors::AllocVec::new(),
        };
        serialize(v, &mut ser)?;
        ser.output.finalize()
    }

    use postcard::ser_flavors::Flavor;

    #[test]
    fn the_bytes_are_postcards_own_and_a_skipped_field_is_refused() {
        let v = Msg {
            a: Some(3),
            b: (1, vec![None, Some("x".into())]),
        };
        assert_eq!(
            strict_bytes(&v).unwrap(),
            postcard::to_allocvec(&v).unwrap()
        );
        let v = Msg { a: None, ..v };
        assert!(
            postcard::to_allocvec(&v).is_ok(),
            "postcard alone says nothing"
        );
        assert!(strict_bytes(&v).is_err());
    }
}
