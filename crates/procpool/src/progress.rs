//! Progress of a call: the callback and interval a call reports with (set by
//! [`Call::on_progress`](crate::Call::on_progress); with the `indicatif` feature,
//! `Call::with_progress` draws a bar through it) and, with the `tracing` feature, the span
//! of each `map`, `imap` and `imap_unordered` call.
//!
//! The engine's feed counts finished items per job and calls back at most once per
//! interval (50 ms by default) and once at the end, also when the call stops on an error
//! or its iterator is dropped: never per item.

use std::time::Duration;

use procpool_engine::ProgressFn;

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
