//! Data shared with tasks without a copy per task: [`Shared`] (any value, written once,
//! decoded once per worker), [`SharedSlice`] (plain numbers read in place) and
//! [`SharedArray`] (plain numbers that tasks write in place, with atomic access).
//!
//! Each lives in a memfd: memory with no name in any file system, freed when the last
//! descriptor and mapping of it, in every process, are gone. A handle passed to a task
//! costs a few bytes and one descriptor (two, with the lease, below) that travel with
//! the job. `Shared` and `SharedSlice` are sealed (nobody, owner included, can write or
//! resize them) and mapped read-only; `SharedArray` is sealed against resizing only.
//!
//! # Caching in workers, and when memory is released
//!
//! A worker keeps what it received, keyed by the value's id (written by the process that
//! made it) and the memfd's inode, so a value sent with 10 000 tasks is mapped (and for
//! `Shared`, decoded) once per worker. With each value travels a *lease*: the read end
//! of a pipe whose write end only its maker's handles hold. When the maker has dropped
//! its last handle the lease reports it, and a worker drops the value from its cache the
//! next time it starts a task (or when it exits). A handle a task still holds stays valid
//! whatever the cache does.
//!
//! # How much memory a worker holds
//!
//! However many values come and go, a process's cache holds at most [`CACHE_ENTRIES`]
//! (64) values, and at most [`cache_bytes`] bytes of them ([`CACHE_BYTES`], 4 GiB, unless
//! [`set_cache_bytes`] changed it, typically in a pool's initializer): past either, the
//! least recently used goes first (it is received, and decoded, again if it comes back).
//! The bytes are what the values hold *decoded* in that process, measured across each
//! decode as the growth of the bytes allocated (glibc's allocator statistics) or of the
//! process's resident memory, whichever is larger, and never less than the encoding (a
//! `Shared<Vec<u64>>` of 12 MB encoded counts about 96 MB, or the capacity the decoder
//! allocated; a `SharedSlice` or `SharedArray` counts its length). So what to plan for
//! is, per worker: the bound, plus the values the running task holds, plus one value
//! larger than the bound (kept while it is the only one). A pool of N workers holds at
//! most N times that; [`cached`] tells what a process holds now.
//!
//! # Time limits
//!
//! A worker decodes a `Shared` value the first time a task's argument brings it. That is
//! not the task's time: with a time limit ([`Builder::timeout`](crate::Builder::timeout)),
//! the parent counts the decode apart, up to an allowance of its own
//! ([`Builder::shared_decode_timeout`](crate::Builder::shared_decode_timeout), 30 s by
//! default), so a value that takes longer to decode than the limit does not make every
//! task time out. A decode past the allowance kills the worker, and the task fails with
//! [`PreparationTimedOut`](crate::TaskErrorKind::PreparationTimedOut), naming the value's
//! type and encoded size. The parent keeps the clock: a task that claims to be decoding
//! gains the allowance at most.
//!
//! # What "read-only" means
//!
//! The encoding of a `Shared` or `SharedSlice` cannot change; the *decoded* copy of a
//! `Shared` in each process is that process's own (see [`Shared`] on interior
//! mutability).
mod array;
mod cache;
mod slice;
mod value;

use std::hash::BuildHasher;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Serialize};

pub use array::{Element, SharedArray};
pub(crate) use cache::sweep;
pub use cache::{CACHE_BYTES, CACHE_ENTRIES, cache_bytes, cached, set_cache_bytes};
pub use slice::SharedSlice;
pub use value::Shared;

use crate::passfd;

/// Why a shared value could not be made. Its `Debug` reads as its `Display`.
///
/// ```
/// use procpool::{Codec, Shared, SharedError};
///
/// #[derive(Debug, serde::Serialize, serde::Deserialize)]
/// struct Maybe {
///     #[serde(skip_serializing_if = "Option::is_none")]
///     note: Option<String>, // postcard cannot leave a field out
/// }
///
/// let e = Shared::new(Maybe { note: None }).unwrap_err();
/// assert!(matches!(e, SharedError::Codec { .. }), "{e}");
/// // MessagePack describes its fields: fine.
/// assert!(Shared::with_codec(Maybe { note: None }, Codec::MessagePack).is_ok());
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum SharedError {
    /// The value could not be encoded (or does not survive its codec).
    #[error("the shared value could not be serialized: {message}")]
    Codec {
        /// The codec's message.
        message: String,
    },
    /// The system refused the shared memory (out of memory or of descriptors).
    #[error("shared memory could not be set up: {0}")]
    Memory(#[from] std::io::Error),
}

crate::error::debug_as_display!(SharedError);

/// What kind of shared memory a handle names (checked on arrival).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum Kind {
    Value = 1,
    Slice = 2,
    Array = 3,
}

/// The memfd behind a shared value, with its lease.
#[derive(Debug)]
pub(crate) struct Backing {
    pub(crate) id: u64,
    pub(crate) len: usize,
    pub(crate) memfd: OwnedFd,
    /// The lease's read end: travels with the handle.
    pub(crate) watcher: OwnedFd,
    /// The lease's write end: only in the process that made the value.
    pub(crate) _holder: Option<OwnedFd>,
}

impl Backing {
    /// A backing for a new value in `memfd` of `len` bytes.
    pub(crate) fn new(memfd: OwnedFd, len: usize) -> std::io::Result<Self> {
        let (holder, watcher) = procpool_engine::shm::lease()?;
        Ok(Backing {
            id: next_id(),
            len,
            memfd,
            watcher,
            _holder: Some(holder),
        })
    }
}

/// `bytes` for people: "512 B", "12.0 MB", "1.5 GB" (powers of 1000, as `ls -h --si`).
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A process-unique, hard-to-collide id for a new value (random start, then counting).
fn next_id() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        std::collections::hash_map::RandomState::new().hash_one(std::process::id())
    });
    seed.wrapping_add(COUNT.fetch_add(1, Ordering::Relaxed))
}

/// A handle as it is encoded: a few bytes, and two descriptor slots.
#[derive(Serialize, Deserialize)]
#[serde(rename = "procpool::Shared")]
struct Wire {
    kind: u8,
    id: u64,
    len: u64,
    /// The codec of a `Shared` value (0 otherwise).
    codec: u8,
    memfd: u32,
    watcher: u32,
}

/// Encodes a handle to `b`.
pub(crate) fn serialize_handle<S: serde::Serializer>(
    s: S,
    kind: Kind,
    codec: u8,
    b: &Backing,
) -> Result<S::Ok, S::Error> {
    // Every handle to one value in a job shares its two slots (a map's items all carry
    // the same table): keyed by the value's id (unique in this process), and which.
    let key = u128::from(b.id) << 1;
    let memfd = passfd::attach_keyed(key, b.memfd.as_fd()).map_err(S::Error::custom)?;
    let watcher = passfd::attach_keyed(key | 1, b.watcher.as_fd()).map_err(S::Error::custom)?;
    Wire {
        kind: kind as u8,
        id: b.id,
        len: b.len as u64,
        codec,
        memfd,
        watcher,
    }
    .serialize(s)
}

/// What a handle that arrived names: its backing's key and parts, not yet opened.
pub(crate) struct Arrived {
    pub(crate) key: cache::Key,
    pub(crate) codec: u8,
    pub(crate) backing: Backing,
}

/// Decodes a handle of `kind` (the descriptors are taken from the job).
pub(crate) fn deserialize_handle<'de, D: serde::Deserializer<'de>>(
    d: D,
    kind: Kind,
) -> Result<Arrived, D::Error> {
    let w = Wire::deserialize(d)?;
    if w.kind != kind as u8 {
        return Err(D::Error::custom(format!(
            "a shared handle of kind {} arrived where kind {} was expected",
            w.kind, kind as u8
        )));
    }
    let len = usize::try_from(w.len)
        .map_err(|_| D::Error::custom("a shared handle's length does not fit in memory"))?;
    let memfd = passfd::take_dup(w.memfd).map_err(D::Error::custom)?;
    let watcher = passfd::take_dup(w.watcher).map_err(D::Error::custom)?;
    let file = procpool_engine::shm::file_id(memfd.as_fd())
        .map_err(|e| D::Error::custom(format!("a shared handle's memory: {e}")))?;
    Ok(Arrived {
        key: cache::Key {
            kind,
            id: w.id,
            file,
        },
        codec: w.codec,
        backing: Backing {
            id: w.id,
            len,
            memfd,
            watcher,
            _holder: None,
        },
    })
}
