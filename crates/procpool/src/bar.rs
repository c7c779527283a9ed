//! The progress bar of [`Call::with_progress`](crate::Call::with_progress), drawn with
//! `indicatif` from the progress callback.

use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};
use procpool_engine::Progress;

const WITH_TOTAL: &str = "{bar:40} {pos}/{len} [{elapsed_precise}] {per_sec} eta {eta} {msg}";
const WITHOUT_TOTAL: &str = "{spinner} {pos} [{elapsed_precise}] {per_sec} {msg}";

/// A bar made at the first report, when the total is known.
#[derive(Debug, Default)]
pub(crate) struct Bar {
    bar: Mutex<Option<ProgressBar>>,
}

impl Bar {
    pub(crate) fn show(&self, p: Progress) {
        let mut slot = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        let bar = slot.get_or_insert_with(|| make(p.total));
        bar.set_position(p.done);
        if p.failed > 0 {
            bar.set_message(format!("{} failed", p.failed));
        }
        if p.finished {
            if p.failed > 0 || p.total.is_some_and(|t| p.done < t) {
                bar.abandon();
            } else {
                bar.finish();
            }
        }
    }
}

fn make(total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(n) => (ProgressBar::new(n), WITH_TOTAL),
        None => (ProgressBar::new_spinner(), WITHOUT_TOTAL),
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn report(done: u64, failed: u64, finished: bool) -> Progress {
        Progress {
            done,
            total: Some(10),
            failed,
            elapsed: Duration::from_millis(5),
            finished,
        }
    }

    #[test]
    fn the_bar_finishes_on_success_and_stays_on_failure() {
        let ok = Bar::default();
        ok.show(report(4, 0, false));
        ok.show(report(10, 0, true));
        let b = ok.bar.lock().unwrap().clone().unwrap();
        assert!(b.is_finished());
        assert_eq!((b.position(), b.length()), (10, Some(10)));

        let failed = Bar::default();
        failed.show(report(3, 1, true));
        let b = failed.bar.lock().unwrap().clone().unwrap();
        assert!(b.is_finished());
        assert_eq!(b.message(), "1 failed");
        assert_eq!(b.position(), 3);
    }
}
