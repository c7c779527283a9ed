//! Progress of a call: a callback ([`Call::on_progress`]) and, with the `indicatif`
//! feature, a progress bar ([`Call::with_progress`]); and, with the `tracing` feature,
//! the span of each `map`, `imap` and `imap_unordered` call.
//!
//! The engine's feed counts finished items per job and calls back at most once per
//! interval (50 ms by default) and once at the end, also when the call stops on an error
//! or its iterator is dropped: never per item.

use std::sync::Arc;
use std::time::Duration;

use procpool_engine::{DEFAULT_PROGRESS_INTERVAL, Progress, ProgressFn};

use crate::pool::{Call, Pool};

/// A call's progress callback and how often it may run.
#[derive(Clone)]
pub(crate) struct Watch {
    pub(crate) callback: ProgressFn,
    pub(crate) interval: Duration,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Calls that report their progress to `f` (see [`Call::on_progress`]).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// let last = Arc::new(AtomicU64::new(0));
    /// let seen = last.clone();
    /// let v = pool
    ///     .on_progress(move |p| seen.store(p.done, Ordering::Relaxed))
    ///     .map(|x: u64| x + 1, 0..1000u64)?;
    /// assert_eq!(v.len(), 1000);
    /// assert_eq!(last.load(Ordering::Relaxed), 1000);
    /// # Ok(()) }
    /// ```
    pub fn on_progress(&self, f: impl Fn(Progress) + Send + Sync + 'static) -> Call<'_> {
        self.call().on_progress(f)
    }

    /// Calls that show a progress bar on standard error: items done of the total (when
    /// the input's length is known), rate and time left (see [`Call::with_progress`]).
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// let v = pool.with_progress().map(|x: u64| x * 2, 0..100u64)?;
    /// assert_eq!(v[99], 198);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "indicatif")]
    #[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
    pub fn with_progress(&self) -> Call<'_> {
        self.call().with_progress()
    }
}

impl Call<'_> {
    /// Reports the progress of `map`, `imap` and `imap_unordered` calls to `f`: items
    /// done, the total when the input's length is known, failures and time elapsed.
    ///
    /// `f` runs on the calling thread (from inside the call, or the iterator's `next`),
    /// at most once per [`progress_interval`](Self::progress_interval) (50 ms by default)
    /// while items finish, and once more at the end with
    /// [`finished`](Progress::finished) set: when the input is done, and also when the
    /// call stops on an error or its iterator is dropped. `apply` and `spawn` do not
    /// report. Keep it short: it delays the call while it runs.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// let pool = procpool::Pool::builder().workers(2).build()?;
    /// pool.with_chunk_size(10)
    ///     .on_progress(|p| {
    ///         if p.finished {
    ///             eprintln!("{} of {:?} done in {:?}", p.done, p.total, p.elapsed);
    ///         }
    ///     })
    ///     .map(|x: u32| x, 0..100u32)?;
    /// # Ok(()) }
    /// ```
    pub fn on_progress(mut self, f: impl Fn(Progress) + Send + Sync + 'static) -> Self {
        let interval = self
            .progress
            .as_ref()
            .map_or(DEFAULT_PROGRESS_INTERVAL, |w| w.interval);
        self.progress = Some(Watch {
            callback: Arc::new(f),
            interval,
        });
        self
    }

    /// The shortest time between two progress reports (see
    /// [`on_progress`](Self::on_progress)); 50 ms by default.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// use std::time::Duration;
    /// pool.on_progress(|p| println!("{}", p.done))
    ///     .progress_interval(Duration::from_secs(1))
    ///     .map(|x: u8| x, [1, 2, 3])?;
    /// # Ok(()) }
    /// ```
    pub fn progress_interval(mut self, interval: Duration) -> Self {
        if let Some(w) = &mut self.progress {
            w.interval = interval;
        }
        self
    }

    /// Shows a progress bar on standard error for `map`, `imap` and `imap_unordered`:
    /// items done of the total (a spinner when the input's length is unknown), rate and
    /// time left. The bar is drawn at most 20 times a second from the progress callback
    /// (so it costs nothing per item), hides itself when standard error is not a
    /// terminal, and is left in place, with the count of failures, when the call stops
    /// on an error.
    ///
    /// ```
    /// # fn main() -> Result<(), procpool::Error> {
    /// # procpool::init();
    /// # let pool = procpool::Pool::builder().workers(1).build()?;
    /// let v: Vec<u32> = pool.with_timeout(std::time::Duration::from_secs(5))
    ///     .with_progress()
    ///     .map(|x: u32| x, 0..10u32)?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "indicatif")]
    #[cfg_attr(docsrs, doc(cfg(feature = "indicatif")))]
    pub fn with_progress(self) -> Self {
        let bar = crate::bar::Bar::default();
        self.on_progress(move |p| bar.show(p))
    }
}

/// The span of a `map`, `imap` or `imap_unordered` call, with its item count when known.
#[cfg(feature = "tracing")]
pub(crate) fn call_span(name: &'static str, hint: (usize, Option<usize>)) -> tracing::Span {
    let items = (Some(hint.0) == hint.1).then_some(hint.0 as u64);
    match name {
        "map" => tracing::info_span!(target: "procpool", "map", items),
        "imap" => tracing::info_span!(target: "procpool", "imap", items),
        _ => tracing::info_span!(target: "procpool", "imap_unordered", items),
    }
}
