//! [`SharedSlice`]: plain numbers in sealed shared memory, read in place.

use std::fmt;
use std::marker::PhantomData;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::sync::Arc;

use bytemuck::Pod;
use procpool_engine::shm::{self, Mapping};
use serde::de::Error as _;

use super::{Backing, Kind, SharedError, cache};

/// A slice of plain data (`T: bytemuck::Pod`: numbers, arrays of them, `#[repr(C)]`
/// structs of them) in sealed shared memory, read in place by every process: no decode
/// and no copy, in the maker or in a worker.
///
/// Like [`Shared`](crate::Shared): cheap to clone, a few bytes and two descriptors to pass
/// to a task, mapped once per worker (see the [module docs](crate::shared)), never
/// writable by anyone (sealed memfd, read-only mappings), released when the last handle
/// in every process is gone. `SharedSlice<u8>` holds bytes.
///
/// # Examples
///
/// ```no_run
/// use procpool::{Pool, SharedSlice};
///
/// fn sum_every((table, step): (SharedSlice<u64>, usize)) -> u64 {
///     table.iter().step_by(step).sum()
/// }
///
/// procpool::init();
/// let table = SharedSlice::new(&(0..1_000_000u64).collect::<Vec<_>>()).unwrap();
/// let pool = Pool::new().unwrap();
/// let sums = pool.map(sum_every, (1..=4).map(|s| (table.clone(), s))).unwrap();
/// assert_eq!(sums[0], 499_999_500_000);
/// ```
pub struct SharedSlice<T> {
    inner: Arc<Inner>,
    _t: PhantomData<fn() -> T>,
}

struct Inner {
    backing: Arc<Backing>,
    map: Mapping,
}

impl<T: Pod> SharedSlice<T> {
    /// Copies `data` into sealed shared memory.
    ///
    /// # Errors
    /// [`SharedError::Memory`] when the system refuses the memory.
    ///
    /// # Examples
    ///
    /// ```
    /// let s = procpool::SharedSlice::new(&[1.5f64, 2.5]).unwrap();
    /// assert_eq!(s[1], 2.5);
    /// ```
    pub fn new(data: &[T]) -> Result<Self, SharedError> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let memfd = shm::sealed_file("procpool-shared-slice", bytes)?;
        let map = Mapping::read_only(memfd.as_fd(), bytes.len())?;
        let backing = Backing::new(memfd, bytes.len())?;
        Ok(SharedSlice {
            inner: Arc::new(Inner {
                backing: Arc::new(backing),
                map,
            }),
            _t: PhantomData,
        })
    }

    /// The elements, read in place.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let s = procpool::SharedSlice::new(&[1.5f64, 2.5])?;
    /// assert_eq!(s.as_slice(), [1.5, 2.5]);
    /// # Ok(()) }
    /// ```
    pub fn as_slice(&self) -> &[T] {
        let map = &self.inner.map;
        if map.is_empty() {
            return &[];
        }
        // SAFETY: `len` readable bytes of a sealed memfd, which nobody can change, alive
        // as long as `self`.
        let bytes = unsafe { std::slice::from_raw_parts(map.as_ptr(), map.len()) };
        // The mapping is page-aligned, and its length a multiple of `T`'s size (checked
        // on arrival, and true of what `new` wrote).
        bytemuck::cast_slice(bytes)
    }
}

impl<T> Clone for SharedSlice<T> {
    fn clone(&self) -> Self {
        SharedSlice {
            inner: self.inner.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Deref for SharedSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for SharedSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedSlice")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T> serde::Serialize for SharedSlice<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::serialize_handle(s, Kind::Slice, 0, &self.inner.backing)
    }
}

impl<'de, T: Pod> serde::Deserialize<'de> for SharedSlice<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let arrived = super::deserialize_handle(d, Kind::Slice)?;
        let size = std::mem::size_of::<T>();
        if size == 0 || arrived.backing.len % size != 0 {
            return Err(D::Error::custom(format!(
                "a shared slice of {} bytes cannot hold elements of {size} bytes",
                arrived.backing.len
            )));
        }
        let inner = cache::get_or_make(arrived, |backing| {
            let map = Mapping::read_only(backing.memfd.as_fd(), backing.len)
                .map_err(|e| format!("a shared slice's memory could not be mapped: {e}"))?;
            Ok(Inner { backing, map })
        })
        .map_err(D::Error::custom)?;
        Ok(SharedSlice {
            inner,
            _t: PhantomData,
        })
    }
}
