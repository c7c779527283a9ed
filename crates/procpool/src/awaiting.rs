//! Waiting for tasks without blocking a thread, and for many at once.
//!
//! [`TaskHandle`] and [`Process`] are [`Future`]s, runnable on any executor: the pool's
//! supervisor thread wakes the task that awaits a pool task when its result arrives (a
//! one-off process, which has no supervisor, is watched by a short-lived thread while it
//! is awaited). Awaiting needs no runtime and no feature; dropping a future is dropping
//! the handle (a pool task is detached, a one-off process is killed).
//!
//! [`wait_any`] and [`as_completed`] block the calling thread until the first of many
//! handles finishes, as Python's `concurrent.futures.wait(..., FIRST_COMPLETED)` and
//! `as_completed` do. With the `futures` feature, `Imap::into_stream` and
//! `ImapUnordered::into_stream` give their results as `futures_core::Stream`s.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use crate::codec::Value;
use crate::error::Error;
use crate::handle::TaskHandle;
use crate::process::Process;

/// Awaiting a pool task gives its result, as [`TaskHandle::join`] does.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// fn square(x: u64) -> u64 { x * x }
/// let pool = procpool::Pool::builder().workers(2).build()?;
/// let a = pool.spawn(square, 3)?;
/// let b = pool.spawn(square, 4)?;
/// // Any executor: here a minimal one that parks the thread.
/// let sum = procpool::block_on(async { Ok::<_, procpool::Error>(a.await? + b.await?) })?;
/// assert_eq!(sum, 25);
/// # Ok(()) }
/// ```
impl<R: Value> Future for TaskHandle<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_result(cx)
    }
}

/// Awaiting a one-off process gives its result, as [`Process::join`] does.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// fn double(x: u64) -> u64 { x * 2 }
/// let p = procpool::spawn(double, 21)?;
/// assert_eq!(procpool::block_on(p)?, 42);
/// # Ok(()) }
/// ```
impl<R: Value> Future for Process<R> {
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_result(cx)
    }
}

/// Wakes a thread parked in [`block_on`] or [`wait_any`].
struct Unparker(Thread);

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

fn thread_waker() -> Waker {
    Waker::from(Arc::new(Unparker(std::thread::current())))
}

/// Runs a future to completion on the calling thread, parking it while the future waits:
/// a minimal executor, for code that has no runtime (with one, `.await` instead).
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// fn inc(x: u64) -> u64 { x + 1 }
/// let pool = procpool::Pool::builder().workers(1).build()?;
/// let h = pool.spawn(inc, 1)?;
/// assert_eq!(procpool::block_on(h)?, 2);
/// # Ok(()) }
/// ```
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = thread_waker();
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Blocks until the first of `handles` finishes; removes it and returns its position in
/// the vector (as it was) and its result. `None` when `handles` is empty.
///
/// Works with any `Unpin` futures: [`TaskHandle`]s, [`Process`]es, or a mix boxed.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// use std::time::Duration;
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// let pool = procpool::Pool::builder().workers(2).build()?;
/// let mut handles = vec![pool.spawn(nap, 2000)?, pool.spawn(nap, 10)?];
/// let (i, r) = procpool::wait_any(&mut handles).expect("two handles");
/// assert_eq!((i, r?), (1, 10));
/// assert_eq!(handles.len(), 1);
/// # Ok(()) }
/// ```
pub fn wait_any<F: Future + Unpin>(handles: &mut Vec<F>) -> Option<(usize, F::Output)> {
    if handles.is_empty() {
        return None;
    }
    let waker = thread_waker();
    let mut cx = Context::from_waker(&waker);
    loop {
        for (i, h) in handles.iter_mut().enumerate() {
            if let Poll::Ready(v) = Pin::new(h).poll(&mut cx) {
                drop(handles.remove(i));
                return Some((i, v));
            }
        }
        std::thread::park();
    }
}

/// The results of many handles in the order they finish, each with its position in the
/// input: `for (i, r) in procpool::as_completed(handles)`. Blocks the calling thread while
/// it waits. Dropping the iterator drops the handles not yet finished.
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// use std::time::Duration;
/// fn nap(ms: u64) -> u64 { std::thread::sleep(Duration::from_millis(ms)); ms }
/// let pool = procpool::Pool::builder().workers(3).build()?;
/// let handles = [300, 10, 150].map(|ms| pool.spawn(nap, ms)).into_iter().collect::<Result<Vec<_>, _>>()?;
/// let order: Vec<usize> = procpool::as_completed(handles).map(|(i, _)| i).collect();
/// assert_eq!(order, [1, 2, 0]);
/// # Ok(()) }
/// ```
pub fn as_completed<F: Future + Unpin>(handles: impl IntoIterator<Item = F>) -> AsCompleted<F> {
    AsCompleted {
        pending: handles.into_iter().enumerate().collect(),
    }
}

/// The iterator of [`as_completed`].
///
/// ```
/// # fn main() -> Result<(), procpool::Error> {
/// # procpool::init();
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// let handles = vec![pool.spawn(|x: u32| x + 1, 1)?, pool.spawn(|x: u32| x + 1, 2)?];
/// let mut done: Vec<(usize, u32)> = procpool::as_completed(handles)
///     .map(|(i, r)| r.map(|v| (i, v)))
///     .collect::<Result<_, _>>()?;
/// done.sort();
/// assert_eq!(done, [(0, 2), (1, 3)]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct AsCompleted<F> {
    /// Handles not finished yet, with their positions in the input.
    pending: Vec<(usize, F)>,
}

impl<F> AsCompleted<F> {
    /// Handles not finished yet.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let handles = vec![pool.spawn(|x: u32| x, 1)?, pool.spawn(|x: u32| x, 2)?];
    /// let mut it = procpool::as_completed(handles);
    /// assert_eq!(it.remaining(), 2);
    /// it.next();
    /// assert_eq!(it.remaining(), 1);
    /// # Ok(()) }
    /// ```
    pub fn remaining(&self) -> usize {
        self.pending.len()
    }
}

impl<F: Future + Unpin> Iterator for AsCompleted<F> {
    type Item = (usize, F::Output);

    fn next(&mut self) -> Option<Self::Item> {
        if self.pending.is_empty() {
            return None;
        }
        let waker = thread_waker();
        let mut cx = Context::from_waker(&waker);
        loop {
            for k in 0..self.pending.len() {
                if let Poll::Ready(v) = Pin::new(&mut self.pending[k].1).poll(&mut cx) {
                    let (i, _) = self.pending.remove(k);
                    return Some((i, v));
                }
            }
            std::thread::park();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.pending.len(), Some(self.pending.len()))
    }
}

#[cfg(feature = "futures")]
pub use streams::{ImapStream, ImapUnorderedStream};

#[cfg(feature = "futures")]
mod streams {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_core::Stream;

    use crate::codec::Value;
    use crate::encodes_as::EncodesAs;
    use crate::error::Error;
    use crate::iter::{Imap, ImapUnordered};

    /// The results of `imap` as a [`Stream`], in input order: [`Imap::into_stream`].
    /// (A type of its own, so that `next` and `map` are not ambiguous between
    /// `Iterator` and `StreamExt`.)
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// use futures::StreamExt;
    /// let pool = procpool::Pool::builder().workers(1).build()?;
    /// let s = pool.imap(|x: u64| x * 2, 0..3u64).into_stream();
    /// let out: Vec<u64> = futures::executor::block_on(s.map(Result::unwrap).collect());
    /// assert_eq!(out, [0, 2, 4]);
    /// # Ok(()) }
    /// ```
    #[derive(Debug)]
    #[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
    pub struct ImapStream<A, R, I>(Imap<A, R, I>);

    /// The results of `imap_unordered` as a [`Stream`], as they finish, each with its
    /// input index: [`ImapUnordered::into_stream`].
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// use futures::StreamExt;
    /// let pool = procpool::Pool::builder().workers(1).build()?;
    /// let s = pool.imap_unordered(|x: u64| x * 2, 0..3u64).into_stream();
    /// let mut out: Vec<(usize, u64)> =
    ///     futures::executor::block_on(s.map(|(i, r)| (i, r.unwrap())).collect());
    /// out.sort();
    /// assert_eq!(out, [(0, 0), (1, 2), (2, 4)]);
    /// # Ok(()) }
    /// ```
    #[derive(Debug)]
    #[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
    pub struct ImapUnorderedStream<A, R, I>(ImapUnordered<A, R, I>);

    // Never pinned structurally (no field is pinned): moving one is fine whatever the
    // item type, as long as its input may move.
    impl<A, R, I: Unpin> Unpin for ImapStream<A, R, I> {}
    impl<A, R, I: Unpin> Unpin for ImapUnorderedStream<A, R, I> {}

    impl<A, R, I> Imap<A, R, I> {
        /// With the `futures` feature: the same results as a [`Stream`], for async code.
        ///
        /// ```
        /// # fn main() -> Result<(), procpool::Error> {
        /// # procpool::init();
        /// use futures_core::Stream;
        /// fn square(x: u64) -> u64 { x * x }
        /// let pool = procpool::Pool::builder().workers(2).build()?;
        /// let mut s = std::pin::pin!(pool.imap(square, 0..4u64).into_stream());
        /// let mut out = Vec::new();
        /// procpool::block_on(std::future::poll_fn(|cx| loop {
        ///     match s.as_mut().poll_next(cx) {
        ///         std::task::Poll::Ready(Some(r)) => out.push(r.unwrap()),
        ///         std::task::Poll::Ready(None) => return std::task::Poll::Ready(()),
        ///         std::task::Poll::Pending => return std::task::Poll::Pending,
        ///     }
        /// }));
        /// assert_eq!(out, [0, 1, 4, 9]);
        /// # Ok(()) }
        /// ```
        #[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
        pub fn into_stream(self) -> ImapStream<A, R, I> {
            ImapStream(self)
        }
    }

    impl<A, R, I> ImapUnordered<A, R, I> {
        /// With the `futures` feature: the same results as a [`Stream`], for async code.
        ///
        /// ```
        /// # fn main() -> Result<(), procpool::Error> {
        /// # procpool::init();
        /// use futures::StreamExt;
        /// let pool = procpool::Pool::builder().workers(1).build()?;
        /// let s = pool.imap_unordered(|x: u64| x + 1, [1u64, 2]).into_stream();
        /// let n = futures::executor::block_on(s.count());
        /// assert_eq!(n, 2);
        /// # Ok(()) }
        /// ```
        #[cfg_attr(docsrs, doc(cfg(feature = "futures")))]
        pub fn into_stream(self) -> ImapUnorderedStream<A, R, I> {
            ImapUnorderedStream(self)
        }
    }

    impl<A, R, I> Stream for ImapStream<A, R, I>
    where
        A: Value,
        R: Value,
        I: Iterator<Item: EncodesAs<A>> + Unpin,
    {
        type Item = Result<R, Error>;

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.get_mut().0.poll_item(cx)
        }
    }

    impl<A, R, I> Stream for ImapUnorderedStream<A, R, I>
    where
        A: Value,
        R: Value,
        I: Iterator<Item: EncodesAs<A>> + Unpin,
    {
        type Item = (usize, Result<R, Error>);

        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.get_mut().0.poll_item(cx)
        }
    }
}
