//! A serializer that writes nothing and keeps the message of a custom error.
//!
//! postcard drops the text a `Serialize` implementation gives to `Error::custom` (and
//! the one [`strict`](crate::codec::strict) gives a skipped field); when it reports such an
//! error, the value is run through this probe to recover the text for the task's error.

use std::fmt;

use serde::Serialize;
use serde::ser;

/// The message `v`'s serialization fails with, if it fails.
pub(crate) fn custom_message<T: Serialize + ?Sized>(v: &T) -> Option<String> {
    v.serialize(Probe).err().map(|e| e.0)
}

#[derive(Debug)]
struct ProbeError(String);

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProbeError {}

impl ser::Error for ProbeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

struct Probe;

/// A struct (or struct variant) being probed, by name.
struct Named(&'static str);

type R = Result<(), ProbeError>;

macro_rules! ignore {
    ($($name:ident: $t:ty),* $(,)?) => {
        $(fn $name(self, _: $t) -> R { Ok(()) })*
    };
}

impl ser::Serializer for Probe {
    type Ok = ();
    type Error = ProbeError;
    type SerializeSeq = Probe;
    type SerializeTuple = Probe;
    type SerializeTupleStruct = Probe;
    type SerializeTupleVariant = Probe;
    type SerializeMap = Probe;
    type SerializeStruct = Named;
    type SerializeStructVariant = Named;

    ignore!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_i128: i128, serialize_u8: u8, serialize_u16: u16,
        serialize_u32: u32, serialize_u64: u64, serialize_u128: u128, serialize_f32: f32,
        serialize_f64: f64, serialize_char: char, serialize_str: &str,
        serialize_bytes: &[u8], serialize_unit_struct: &'static str,
    );

    fn serialize_none(self) -> R {
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, v: &T) -> R {
        v.serialize(Probe)
    }
    fn serialize_unit(self) -> R {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, v: &T) -> R {
        v.serialize(Probe)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &T,
    ) -> R {
        v.serialize(Probe)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple(self, _: usize) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Probe, ProbeError> {
        Ok(Probe)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Named, ProbeError> {
        Ok(Named(name))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Named, ProbeError> {
        Ok(Named(variant))
    }
}

macro_rules! compound {
    ($($tr:ident :: $m:ident),*) => {
        $(impl ser::$tr for Probe {
            type Ok = ();
            type Error = ProbeError;
            fn $m<T: ?Sized + Serialize>(&mut self, v: &T) -> R {
                v.serialize(Probe)
            }
            fn end(self) -> R {
                Ok(())
            }
        })*
    };
}

compound!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl ser::SerializeMap for Probe {
    type Ok = ();
    type Error = ProbeError;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, k: &T) -> R {
        k.serialize(Probe)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, v: &T) -> R {
        v.serialize(Probe)
    }
    fn end(self) -> R {
        Ok(())
    }
}

macro_rules! fields {
    ($($tr:ident),*) => {
        $(impl ser::$tr for Named {
            type Ok = ();
            type Error = ProbeError;
            fn serialize_field<T: ?Sized + Serialize>(&mut self, _: &'static str, v: &T) -> R {
                v.serialize(Probe)
            }
            fn skip_field(&mut self, key: &'static str) -> R {
                Err(ProbeError(crate::codec::strict::skipped_message(self.0, key)))
            }
            fn end(self) -> R {
                Ok(())
            }
        })*
    };
}

fields!(SerializeStruct, SerializeStructVariant);

#[cfg(test)]
mod tests {
    use super::*;

    struct Nope;
    impl Serialize for Nope {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(ser::Error::custom("nope, not today"))
        }
    }

    #[test]
    fn finds_a_nested_custom_message() {
        assert_eq!(
            custom_message(&(1u8, vec![Some(Nope)])).as_deref(),
            Some("nope, not today")
        );
        assert_eq!(custom_message(&(1u8, "fine")), None);
    }
}
