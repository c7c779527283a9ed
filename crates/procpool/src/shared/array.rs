//! [`SharedArray`]: plain numbers in shared memory that every process may write, with
//! atomic element access.

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use procpool_engine::shm::{self, Mapping};
use serde::de::Error as _;

use super::{Backing, Kind, SharedError, cache};

mod sealed {
    pub trait Sealed {}
}

/// An element type of a [`SharedArray`]: an integer with a matching atomic type
/// (`u32`, `u64`, `i32`, `i64`, `usize`).
///
/// ```
/// use procpool::{Element, SharedArray};
///
/// fn zeroed<T: Element>(n: usize) -> Result<SharedArray<T>, procpool::SharedError> {
///     SharedArray::new(n)
/// }
///
/// assert_eq!(zeroed::<i64>(3).unwrap().to_vec(), [0, 0, 0]);
/// assert_eq!(zeroed::<usize>(1).unwrap().to_vec(), [0]);
/// ```
pub trait Element: Copy + Default + fmt::Debug + Send + Sync + 'static + sealed::Sealed {
    /// The matching atomic type.
    #[doc(hidden)]
    type Atomic: Send + Sync;
    /// Atomic load.
    #[doc(hidden)]
    fn load(a: &Self::Atomic) -> Self;
    /// Atomic store.
    #[doc(hidden)]
    fn store(a: &Self::Atomic, v: Self);
    /// Atomic wrapping add.
    #[doc(hidden)]
    fn fetch_add(a: &Self::Atomic, v: Self) -> Self;
    /// Atomic compare-and-exchange.
    #[doc(hidden)]
    fn compare_exchange(a: &Self::Atomic, current: Self, new: Self) -> Result<Self, Self>;
}

macro_rules! element {
    ($($t:ty => $a:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            type Atomic = $a;
            fn load(a: &$a) -> $t {
                a.load(Ordering::SeqCst)
            }
            fn store(a: &$a, v: $t) {
                a.store(v, Ordering::SeqCst)
            }
            fn fetch_add(a: &$a, v: $t) -> $t {
                a.fetch_add(v, Ordering::SeqCst)
            }
            fn compare_exchange(a: &$a, current: $t, new: $t) -> Result<$t, $t> {
                a.compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            }
        }
    )*};
}

element!(u32 => AtomicU32, u64 => AtomicU64, i32 => AtomicI32, i64 => AtomicI64,
    usize => AtomicUsize);

/// A fixed-length array of integers in shared memory that the maker and every task it is
/// passed to read and write, element by element, atomically (sequentially consistent):
/// Python's `multiprocessing.Array`, for results tasks write in place.
///
/// Cheap to clone, a few bytes and two descriptors to pass to a task; each worker maps it
/// once (see the [module docs](crate::shared)). Its size is sealed: no process can shrink
/// it under another. Memory is released when the last handle in every process is gone;
/// nothing appears in a file system. Indices are checked: one past the end panics, as a
/// slice's does (in a task, the task fails alone).
///
/// # Examples
///
/// ```no_run
/// use procpool::{Pool, SharedArray};
///
/// fn count((hits, k): (SharedArray<u64>, usize)) {
///     hits.fetch_add(k % 4, 1);
/// }
///
/// procpool::init();
/// let hits = SharedArray::<u64>::new(4).unwrap();
/// let pool = Pool::new().unwrap();
/// pool.map(count, (0..1000).map(|k| (hits.clone(), k))).unwrap();
/// assert_eq!(hits.to_vec(), vec![250, 250, 250, 250]);
/// ```
pub struct SharedArray<T> {
    inner: Arc<Inner>,
    _t: PhantomData<fn() -> T>,
}

struct Inner {
    backing: Arc<Backing>,
    map: Mapping,
}

impl<T: Element> SharedArray<T> {
    /// An array of `len` zeros.
    ///
    /// # Errors
    /// [`SharedError::Memory`] when the system refuses the memory.
    ///
    /// # Examples
    ///
    /// ```
    /// let a = procpool::SharedArray::<i32>::new(3).unwrap();
    /// a.store(2, -7);
    /// assert_eq!(a.to_vec(), vec![0, 0, -7]);
    /// ```
    pub fn new(len: usize) -> Result<Self, SharedError> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .ok_or_else(|| std::io::Error::other("array size overflows"))?;
        let memfd = shm::fixed_size_file("procpool-shared-array", bytes)?;
        let map = Mapping::read_write(memfd.as_fd(), bytes)?;
        let backing = Backing::new(memfd, bytes)?;
        Ok(SharedArray {
            inner: Arc::new(Inner {
                backing: Arc::new(backing),
                map,
            }),
            _t: PhantomData,
        })
    }

    /// An array holding `values`.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let a = procpool::SharedArray::from_slice(&[1u32, 2, 3])?;
    /// assert_eq!(a.to_vec(), [1, 2, 3]);
    /// # Ok(()) }
    /// ```
    pub fn from_slice(values: &[T]) -> Result<Self, SharedError> {
        let a = Self::new(values.len())?;
        for (i, v) in values.iter().enumerate() {
            a.store(i, *v);
        }
        Ok(a)
    }

    /// Number of elements.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// assert_eq!(procpool::SharedArray::<u64>::new(5)?.len(), 5);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.inner.map.len() / std::mem::size_of::<T>()
    }

    /// Whether it has no elements.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// assert!(procpool::SharedArray::<u64>::new(0)?.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn at(&self, i: usize) -> &T::Atomic {
        let len = self.len();
        assert!(
            i < len,
            "index {i} out of range for a shared array of {len} elements"
        );
        // SAFETY: in bounds (checked above); the mapping is page-aligned, so element `i`
        // is aligned for `T` (whose atomic has `T`'s size and alignment); the memory
        // lives as long as `self` and is only accessed through atomics.
        unsafe { &*self.inner.map.as_ptr().cast::<T::Atomic>().add(i) }
    }

    /// Element `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let a = procpool::SharedArray::from_slice(&[7i32, 8])?;
    /// assert_eq!(a.load(1), 8);
    /// # Ok(()) }
    /// ```
    pub fn load(&self, i: usize) -> T {
        T::load(self.at(i))
    }

    /// Sets element `i`.
    ///
    /// # Panics
    /// If `i >= len()`.
    ///
    /// ```
    /// use procpool::SharedArray;
    ///
    /// fn mark((a, i): (SharedArray<u32>, usize)) {
    ///     a.store(i, 1); // seen by every process holding the array
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let a = SharedArray::<u32>::new(3)?;
    /// let pool = procpool::Pool::builder().workers(1).build()?;
    /// pool.map(mark, [(a.clone(), 0), (a.clone(), 2)])?;
    /// assert_eq!(a.to_vec(), [1, 0, 1]);
    /// # Ok(()) }
    /// ```
    pub fn store(&self, i: usize, v: T) {
        T::store(self.at(i), v)
    }

    /// Adds `v` to element `i` (wrapping), returning the previous value.
    ///
    /// # Panics
    /// If `i >= len()`.
    ///
    /// ```
    /// use procpool::SharedArray;
    ///
    /// fn count((hits, k): (SharedArray<u64>, u64)) {
    ///     hits.fetch_add((k % 2) as usize, 1); // atomic: no update is lost
    /// }
    ///
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let hits = SharedArray::<u64>::new(2)?;
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// pool.map(count, (0..100).map(|k| (hits.clone(), k)))?;
    /// assert_eq!(hits.to_vec(), [50, 50]);
    /// # Ok(()) }
    /// ```
    pub fn fetch_add(&self, i: usize, v: T) -> T {
        T::fetch_add(self.at(i), v)
    }

    /// Sets element `i` to `new` if it is `current`: `Ok(previous)` if it was, else
    /// `Err(actual)`.
    ///
    /// # Panics
    /// If `i >= len()`.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let a = procpool::SharedArray::from_slice(&[5u64])?;
    /// assert_eq!(a.compare_exchange(0, 5, 6), Ok(5)); // it was 5: now 6
    /// assert_eq!(a.compare_exchange(0, 5, 7), Err(6)); // it was not 5: unchanged
    /// # Ok(()) }
    /// ```
    pub fn compare_exchange(&self, i: usize, current: T, new: T) -> Result<T, T> {
        T::compare_exchange(self.at(i), current, new)
    }

    /// A copy of all elements (each read atomically).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// let a = procpool::SharedArray::<u32>::new(2)?;
    /// a.store(1, 9);
    /// assert_eq!(a.to_vec(), [0, 9]);
    /// # Ok(()) }
    /// ```
    pub fn to_vec(&self) -> Vec<T> {
        (0..self.len()).map(|i| self.load(i)).collect()
    }
}

impl<T> Clone for SharedArray<T> {
    fn clone(&self) -> Self {
        SharedArray {
            inner: self.inner.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: Element> fmt::Debug for SharedArray<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedArray")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T> serde::Serialize for SharedArray<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::serialize_handle(s, Kind::Array, 0, &self.inner.backing)
    }
}

impl<'de, T: Element> serde::Deserialize<'de> for SharedArray<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let arrived = super::deserialize_handle(d, Kind::Array)?;
        let size = std::mem::size_of::<T>();
        if arrived.backing.len % size != 0 {
            return Err(D::Error::custom(format!(
                "a shared array of {} bytes cannot hold elements of {size} bytes",
                arrived.backing.len
            )));
        }
        let inner = cache::get_or_make(arrived, |backing| {
            let map = Mapping::read_write(backing.memfd.as_fd(), backing.len)
                .map_err(|e| format!("a shared array's memory could not be mapped: {e}"))?;
            Ok(Inner { backing, map })
        })
        .map_err(D::Error::custom)?;
        Ok(SharedArray {
            inner,
            _t: PhantomData,
        })
    }
}
