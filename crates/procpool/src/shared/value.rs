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
/// Nobody can change its encoding: the memory is sealed against writes and workers map
/// it read-only. It lives until the last handle in every process is gone; nothing is left
/// in `/dev/shm` or anywhere in a file system.
///
/// # One copy per process
///
/// Each process works on its own copy of the value: the maker on the value it gave
/// [`new`](Self::new), each worker on one it decoded from the sealed encoding. `Shared`
/// hands out only `&T`, so for most types the copies are the same value everywhere. A
/// type with interior mutability (atomics, `Cell`, `Mutex`, `OnceLock`, a memo table
/// behind a `RefCell`) can still be changed through `&T`, and such a change stays in
/// the process that made it: tasks that run later in the same worker see it, the
/// parent and other workers never do, and a worker's copy goes back to the encoded
/// value whenever its cache lets go of it (see the [module docs](crate::shared)) or a new
/// worker takes over. (A `Shared<AtomicU64>` of 100, incremented by three tasks on one
/// worker, shows 100, 101, 102 to them and 100 to the parent; the test
/// `shared_interior::a_change_through_interior_mutability_stays_in_its_process` pins
/// this.) Use it for what may be lost (a per-worker memo); for numbers that tasks
/// change together use [`SharedArray`](crate::SharedArray), whose writes every process
/// sees; for results, the task's return value or a [channel](crate::channel()).
///
/// Interior mutability is not refused at compile time: Rust has no stable way to name
/// "no interior mutability" (`Freeze` is unstable), and a marker trait of procpool's own
/// would shut out every type of another crate (the orphan rule lets neither that crate
/// nor the user implement it), which is most of what is worth sharing.
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
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use procpool::Shared;
    ///
    /// fn price((prices, item): (Shared<HashMap<String, u32>>, String)) -> u32 {
    ///     prices[&item] // decoded once per worker, not once per task
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let prices = Shared::new(HashMap::from([("tea".to_string(), 3), ("cake".to_string(), 5)]))?;
    /// let pool = procpool::Pool::builder().workers(1).build()?;
    /// let order = ["tea", "cake", "tea"].map(|i| (prices.clone(), i.to_string()));
    /// assert_eq!(pool.map(price, order)?, [3, 5, 3]);
    /// # Ok(()) }
    /// ```
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
            // Not the task's time: the parent counts it apart (see `shared_decode_timeout`).
            let _decoding = procpool_engine::preparing(&describe::<T>(backing.len));
            let map = procpool_engine::shm::Mapping::read_only(
                std::os::fd::AsFd::as_fd(&backing.memfd),
                backing.len,
            )
            .map_err(|e| format!("a shared value's memory could not be mapped: {e}"))?;
            // SAFETY: `len` readable bytes of a sealed memfd: they never change.
            let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
            let value = format::decode::<T>(codec, bytes)
                .map_err(|m| format!("{} failed: {m}", describe::<T>(backing.len)))?;
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

/// What decoding a value of `len` encoded bytes is, for errors: "decoding the shared
/// value `Vec<u64>` of 12.0 MB (encoded)".
fn describe<T>(len: usize) -> String {
    format!(
        "decoding the shared value `{}` of {} (encoded)",
        short_type_name::<T>(),
        super::human_bytes(len as u64)
    )
}

/// A type's name without module paths: `alloc::vec::Vec<u64>` → `Vec<u64>`.
fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or(&word));
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or(&word));
    out
}
