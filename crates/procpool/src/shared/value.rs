//! [`Shared`]: any value, encoded once into sealed shared memory.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::de::Error as _;

use super::{Backing, Kind, SharedError, cache};
use crate::codec::Value;
use crate::codec::format::{self, Codec};
use crate::codec::roundtrip::{self, Refusal};

/// A value written once to sealed shared memory and handed to any number of tasks without
/// a copy per task.
///
/// [`Shared::new`] encodes the value (with the pool's default codec, postcard) into a
/// sealed memfd. Cloning a `Shared` is cheap (a reference count); passing one to a task,
/// as (part of) its argument, costs a few bytes and two descriptors. Each worker maps the
/// memory once, decodes the value once and keeps it (see the [module docs](crate::shared)
/// for when it lets go), so a 1 GiB table sent with 10 000 tasks is decoded once per
/// worker, not 10 000 times. The process that made it keeps the value itself too (no
/// decode there). It dereferences to the value (`Deref<Target = T>`): `table.get(&k)` is
/// the table's own `get`.
///
/// Nobody can change the value: the memory is sealed against writes and workers map it
/// read-only. It lives until the last handle in every process is gone; nothing is left in
/// `/dev/shm` or anywhere in a file system.
///
/// A `Shared` goes only to procpool processes, as (part of) a task's argument: it cannot
/// be a task's result, and serializing it elsewhere (serde_json, say) fails and says so.
/// For plain numbers read in place without any decode, see [`SharedSlice`](crate::SharedSlice).
///
/// # Examples
///
/// ```no_run
/// use std::collections::HashMap;
/// use procpool::{Pool, Shared};
///
/// fn lookup((table, key): (Shared<HashMap<u64, f64>>, u64)) -> f64 {
///     table.get(&key).copied().unwrap_or(0.0)
/// }
///
/// procpool::init();
/// let table: HashMap<u64, f64> = (0..1000).map(|k| (k, k as f64 / 2.0)).collect();
/// let table = Shared::new(table).unwrap();
/// let pool = Pool::new().unwrap();
/// let got = pool.map(lookup, (0..10).map(|k| (table.clone(), k))).unwrap();
/// assert_eq!(got[4], 2.0);
/// ```
pub struct Shared<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    backing: Arc<Backing>,
    codec: Codec,
    value: T,
}

impl<T: Value + Send + Sync> Shared<T> {
    /// Encodes `value` with postcard into sealed shared memory.
    ///
    /// # Errors
    /// [`SharedError::Codec`] when the value cannot be encoded or its type does not
    /// survive postcard (see [`Codec`]; use [`with_codec`](Self::with_codec) with
    /// [`Codec::MessagePack`] then); [`SharedError::Memory`] when the system refuses the
    /// memory.
    pub fn new(value: T) -> Result<Self, SharedError> {
        Self::with_codec(value, Codec::Postcard)
    }

    /// Like [`new`](Self::new), encoding with `codec`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Examples
    ///
    /// ```
    /// let s = procpool::Shared::with_codec(vec![1u32, 2], procpool::Codec::MessagePack).unwrap();
    /// assert_eq!(s.len(), 2);
    /// ```
    pub fn with_codec(value: T, codec: Codec) -> Result<Self, SharedError> {
        let mut bytes = Vec::new();
        let codec_err = |message| SharedError::Codec { message };
        format::encode(codec, &mut bytes, &value).map_err(codec_err)?;
        roundtrip::check::<T>(codec, &bytes).map_err(|r| match r {
            Refusal::Type(m) | Refusal::Value(m) => SharedError::Codec { message: m },
        })?;
        let memfd = procpool_engine::shm::sealed_file("procpool-shared", &bytes)?;
        let backing = Backing::new(memfd, bytes.len())?;
        Ok(Shared {
            inner: Arc::new(Inner {
                backing: Arc::new(backing),
                codec,
                value,
            }),
        })
    }
}

impl<T> Shared<T> {
    /// Bytes of its encoding in shared memory. (An associated function, as `Arc`'s are,
    /// so that every method call on a `Shared` reaches the value.)
    ///
    /// # Examples
    ///
    /// ```
    /// let s = procpool::Shared::new(String::from("abc")).unwrap();
    /// assert_eq!(s.len(), 3); // the String's own method
    /// assert_eq!(procpool::Shared::encoded_len(&s), 4);
    /// ```
    pub fn encoded_len(this: &Self) -> usize {
        this.inner.backing.len
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared {
            inner: self.inner.clone(),
        }
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner.value
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Shared").field(&self.inner.value).finish()
    }
}

fn codec_byte(c: Codec) -> u8 {
    match c {
        Codec::MessagePack => 2,
        _ => 1,
    }
}

fn byte_codec(b: u8) -> Option<Codec> {
    match b {
        1 => Some(Codec::Postcard),
        2 => Some(Codec::MessagePack),
        _ => None,
    }
}

impl<T> serde::Serialize for Shared<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let codec = codec_byte(self.inner.codec);
        super::serialize_handle(s, Kind::Value, codec, &self.inner.backing)
    }
}

impl<'de, T: Value + Send + Sync> serde::Deserialize<'de> for Shared<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let arrived = super::deserialize_handle(d, Kind::Value)?;
        let codec = byte_codec(arrived.codec).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown codec {} for a shared value",
                arrived.codec
            ))
        })?;
        let inner = cache::get_or_make(arrived, |backing| {
            let map = procpool_engine::shm::Mapping::read_only(
                std::os::fd::AsFd::as_fd(&backing.memfd),
                backing.len,
            )
            .map_err(|e| format!("a shared value's memory could not be mapped: {e}"))?;
            // SAFETY: `len` readable bytes of a sealed memfd: they never change.
            let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
            let value = format::decode::<T>(codec, bytes)
                .map_err(|m| format!("a shared value could not be deserialized: {m}"))?;
            // The decoded value needs the mapping no more.
            drop(map);
            Ok(Inner {
                backing,
                codec,
                value,
            })
        })
        .map_err(D::Error::custom)?;
        Ok(Shared { inner })
    }
}
