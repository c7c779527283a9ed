//! Iterators over a [`Receiver`]'s messages.

use super::ends::Receiver;
use crate::codec::Value;

/// A blocking iterator over a receiver's messages ([`Receiver::iter`]).
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// let (tx, rx) = procpool::channel::<u32>()?;
/// tx.send(1)?;
/// tx.send(2)?;
/// drop(tx);
/// let all: Vec<u32> = rx.iter().collect(); // ends when every sender is gone
/// assert_eq!(all, [1, 2]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Iter<'a, T> {
    pub(super) rx: &'a Receiver<T>,
}

impl<T: Value> Iterator for Iter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// A non-blocking iterator over the messages waiting now ([`Receiver::try_iter`]).
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// let (tx, rx) = procpool::channel::<u32>()?;
/// tx.send(1)?;
/// let now: Vec<u32> = rx.try_iter().collect(); // does not wait for more
/// assert_eq!(now, [1]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TryIter<'a, T> {
    pub(super) rx: &'a Receiver<T>,
}

impl<T: Value> Iterator for TryIter<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

/// A blocking iterator that owns its receiver (`for msg in rx`); it ends as
/// [`Receiver::iter`] does: when every sender is gone, or at the first message that
/// cannot be read.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// let (tx, rx) = procpool::channel::<u32>()?;
/// tx.send(3)?;
/// drop(tx);
/// let mut got = Vec::new();
/// for msg in rx {
///     got.push(msg);
/// }
/// assert_eq!(got, [3]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct IntoIter<T> {
    rx: Receiver<T>,
}

impl<T: Value> Iterator for IntoIter<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.rx.recv().ok()
    }
}

impl<T: Value> IntoIterator for Receiver<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;

    fn into_iter(self) -> IntoIter<T> {
        IntoIter { rx: self }
    }
}

impl<'a, T: Value> IntoIterator for &'a Receiver<T> {
    type Item = T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}
