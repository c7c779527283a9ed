//! With the `tracing` feature: a subscriber sees the events of workers' lives (died,
//! replaced) and of a task past its time limit, and the span of a `map` call.
//!
//! Run with `cargo test -p procpool --features tracing --test tracing_events`.
#![cfg(feature = "tracing")]

procpool::enable_test_support!();

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use procpool::{Error, Pool, TaskErrorKind};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Collects each event as "message key=value ..." and each span's name and fields.
struct Collect;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for Collect {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = Line(format!("span {}", span.metadata().name()));
        span.record(&mut line);
        LINES.lock().unwrap().push(line.0);
        Id::from_u64(NEXT_ID.fetch_add(1, Ordering::Relaxed))
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut line = Line(String::new());
        event.record(&mut line);
        LINES.lock().unwrap().push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn kill_self(_: u32) -> u32 {
    // SAFETY: getpid and kill have no preconditions.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    0
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn lines_with(what: &str) -> Vec<String> {
    let lines = LINES.lock().unwrap();
    lines.iter().filter(|l| l.contains(what)).cloned().collect()
}

#[test]
fn events_tell_deaths_replacements_and_timeouts() {
    tracing::subscriber::set_global_default(Collect).unwrap();
    let pool = Pool::builder().workers(1).build().unwrap();
    let r = pool.apply(kill_self, 1);
    assert!(
        matches!(r, Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::WorkerDied { .. }))
    );
    let r = pool
        .with_timeout(Duration::from_millis(100))
        .apply(sleep_ms, 10_000);
    assert!(matches!(r, Err(Error::Task(t)) if matches!(t.kind(), TaskErrorKind::TimedOut { .. })));
    assert_eq!(pool.map(sleep_ms, [1u64, 2, 3]).unwrap(), [1, 2, 3]);
    // The replacement after the timeout starts on the supervisor's next turn.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lines_with("worker replaced").len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            LINES.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let died = lines_with("worker died");
    assert_eq!(died.len(), 2, "{died:?}");
    assert!(died[0].contains("SIGKILL"), "{died:?}");
    let timed_out = lines_with("task timed out");
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    assert!(timed_out[0].contains("limit=100ms"), "{timed_out:?}");
    assert_eq!(lines_with("worker started").len(), 1);
    assert!(!lines_with("worker ready").is_empty());
    assert_eq!(
        lines_with("span map items=3").len(),
        1,
        "{:?}",
        LINES.lock().unwrap()
    );
    assert!(lines_with("task retried").is_empty());

    // A pool that runs a task again after its worker dies says so.
    let pool = Pool::builder().workers(1).retries(1).build().unwrap();
    let r = pool.apply(kill_self, 1);
    assert!(matches!(r, Err(Error::Task(t)) if t.attempts() == 2));
    let retried = lines_with("task retried");
    assert_eq!(retried.len(), 1, "{:?}", LINES.lock().unwrap());
}
