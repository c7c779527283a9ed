//! The channels section: messages/s for small messages (a `u64`) and MB/s for 1 MiB
//! messages, from one producer process to a consumer, for procpool's channels, against
//! `std::sync::mpsc` between threads (the in-process bound), `ipc-channel` between
//! processes, and Python's `multiprocessing.Queue` and `Pipe` (`python_channels.py`).
//!
//! Each figure is the best of a few runs; a run's clock starts at the first message
//! received and stops at the last, so process start-up is not counted. Every message is
//! checked (a wrong value is an error, not a figure).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcOneShotServer, IpcReceiver, IpcSender};
use procpool::{Receiver, Sender};

use crate::systems::Res;

/// The flag that makes the benchmark binary an `ipc-channel` producer.
pub(crate) const CHILD_FLAG: &str = "--channels-ipc-child";

const MIB: usize = 1 << 20;
/// The Python script, written next to the other outputs before it runs.
const SCRIPT: &str = include_str!("../python_channels.py");

/// One system's figures.
#[derive(Debug, Default)]
pub(crate) struct Row {
    system: &'static str,
    /// Small messages per second.
    small: Option<f64>,
    /// MB/s of 1 MiB messages.
    large: Option<f64>,
    note: Option<String>,
}

/// The section's rows and what Python it ran.
#[derive(Debug)]
pub(crate) struct Section {
    rows: Vec<Row>,
    python: Option<String>,
    small_n: u64,
    large_n: u64,
}

/// Runs the section.
pub(crate) fn section(quick: bool, python: Option<&str>, out: &Path) -> Section {
    let (small_n, large_n, reps) = if quick {
        (100_000, 100, 1)
    } else {
        (1_000_000, 500, 3)
    };
    let best = |f: &dyn Fn() -> Res<Duration>| -> Res<Duration> {
        (0..reps)
            .map(|_| f())
            .try_fold(Duration::MAX, |b, d| Ok(b.min(d?)))
    };
    let small_rate = |d: Duration| (small_n - 1) as f64 / d.as_secs_f64();
    let large_rate = |d: Duration| ((large_n - 1) * MIB as u64) as f64 / 1e6 / d.as_secs_f64();
    let mut rows = Vec::new();
    let mut measure = |system: &'static str,
                       small: &dyn Fn() -> Res<Duration>,
                       large: &dyn Fn() -> Res<Duration>| {
        let mut row = Row {
            system,
            ..Row::default()
        };
        let mut notes = Vec::new();
        match best(small) {
            Ok(d) => row.small = Some(small_rate(d)),
            Err(e) => notes.push(format!("small: {e}")),
        }
        match best(large) {
            Ok(d) => row.large = Some(large_rate(d)),
            Err(e) => notes.push(format!("1 MiB: {e}")),
        }
        if !notes.is_empty() {
            eprintln!("channels: {system}: {}", notes.join("; "));
            row.note = Some(notes.join("; "));
        }
        eprintln!(
            "channels: {system}: {} msg/s small, {} MB/s 1 MiB",
            show(row.small),
            show(row.large)
        );
        rows.push(row);
    };
    measure("procpool channel", &|| procpool_small(small_n), &|| {
        procpool_large(large_n)
    });
    measure("std mpsc (threads)", &|| mpsc_small(small_n), &|| {
        mpsc_large(large_n)
    });
    measure("ipc-channel", &|| ipc_small(small_n), &|| {
        ipc_large(large_n)
    });
    let mut py_info = None;
    if let Some(py) = python {
        let args: Vec<String> = quick.then(|| "--quick".to_string()).into_iter().collect();
        let limit = Duration::from_secs(if quick { 60 } else { 180 });
        match crate::python::run_script(
            py,
            out,
            "python_channels.py",
            SCRIPT,
            &args,
            limit,
            "python_channels.json",
        ) {
            Ok(v) => {
                py_info = Some(format!(
                    "Python {} ({} start)",
                    v["version"].as_str().unwrap_or("?"),
                    v["start_method"].as_str().unwrap_or("?")
                ));
                for (key, system) in [("queue", "python mp.Queue"), ("pipe", "python mp.Pipe")] {
                    rows.push(Row {
                        system,
                        small: v[key]["small_per_s"].as_f64(),
                        large: v[key]["large_mb_per_s"].as_f64(),
                        note: None,
                    });
                }
            }
            Err(e) => eprintln!("channels: python skipped ({e})"),
        }
    }
    Section {
        rows,
        python: py_info,
        small_n,
        large_n,
    }
}

impl Section {
    /// The table printed at the end of the run.
    pub(crate) fn table(&self) -> String {
        let pp = self.rows.first();
        let mut s = format!(
            "Channels: one producer process to one consumer ({} u64 messages; {} messages of 1 MiB)\n",
            self.small_n, self.large_n
        );
        let _ = writeln!(
            s,
            "{:<20} {:>14} {:>9} {:>12} {:>9}",
            "system", "small msg/s", "vs pp", "1 MiB MB/s", "vs pp"
        );
        for r in &self.rows {
            let ratio = |v: Option<f64>, p: Option<f64>| match (v, p) {
                (Some(v), Some(p)) if p > 0.0 => format!("{:.2}x", v / p),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{:<20} {:>14} {:>9} {:>12} {:>9}{}",
                r.system,
                show(r.small),
                ratio(r.small, pp.and_then(|p| p.small)),
                show(r.large),
                ratio(r.large, pp.and_then(|p| p.large)),
                r.note
                    .as_ref()
                    .map_or(String::new(), |n| format!("  ({n})"))
            );
        }
        if let Some(py) = &self.python {
            let _ = writeln!(s, "python rows: {py}");
        }
        s
    }

    /// Rows for results.csv (same columns as the main table's).
    pub(crate) fn csv(&self) -> String {
        let mut s = String::new();
        for r in &self.rows {
            if let Some(v) = r.small {
                let _ = writeln!(
                    s,
                    "channels,\"small messages\",msg/s,higher,{},{v},",
                    r.system
                );
            }
            if let Some(v) = r.large {
                let _ = writeln!(
                    s,
                    "channels,\"1 MiB messages\",MB/s,higher,{},{v},",
                    r.system
                );
            }
        }
        s
    }
}

fn show(v: Option<f64>) -> String {
    v.map_or("-".into(), crate::report::num)
}

/// Receives `n` messages with `recv`, checking each with `check`; the time from the first
/// to the last.
fn clock<T>(
    n: u64,
    mut recv: impl FnMut() -> Res<T>,
    check: impl Fn(u64, &T) -> bool,
) -> Res<Duration> {
    let first = recv()?;
    if !check(0, &first) {
        return Err("message 0 is wrong".into());
    }
    let t = Instant::now();
    for i in 1..n {
        let v = recv()?;
        if !check(i, &v) {
            return Err(format!("message {i} is wrong"));
        }
    }
    Ok(t.elapsed())
}

fn send_small((tx, n): (Sender<u64>, u64)) {
    for i in 0..n {
        tx.send(i).unwrap();
    }
}

fn send_large((tx, n): (Sender<Vec<u8>>, u64)) {
    let template = vec![7u8; MIB];
    for _ in 0..n {
        tx.send(template.clone()).unwrap();
    }
}

fn procpool_small(n: u64) -> Res<Duration> {
    let (tx, rx) = procpool::channel::<u64>().map_err(|e| e.to_string())?;
    let p = procpool::spawn(send_small, (tx, n)).map_err(|e| e.to_string())?;
    let d = clock(n, || recv(&rx), |i, v| *v == i)?;
    p.join().map_err(|e| e.to_string())?;
    Ok(d)
}

fn procpool_large(n: u64) -> Res<Duration> {
    let (tx, rx) = procpool::channel::<Vec<u8>>().map_err(|e| e.to_string())?;
    let p = procpool::spawn(send_large, (tx, n)).map_err(|e| e.to_string())?;
    let d = clock(n, || recv(&rx), |_, v| v.len() == MIB && v[MIB - 1] == 7)?;
    p.join().map_err(|e| e.to_string())?;
    Ok(d)
}

fn recv<T: procpool::Value>(rx: &Receiver<T>) -> Res<T> {
    rx.recv().map_err(|e| e.to_string())
}

fn mpsc_small(n: u64) -> Res<Duration> {
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let t = std::thread::spawn(move || (0..n).for_each(|i| tx.send(i).unwrap()));
    let d = clock(n, || rx.recv().map_err(|e| e.to_string()), |i, v| *v == i)?;
    t.join().map_err(|_| "the sender thread panicked")?;
    Ok(d)
}

fn mpsc_large(n: u64) -> Res<Duration> {
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let t = std::thread::spawn(move || {
        let template = vec![7u8; MIB];
        (0..n).for_each(|_| tx.send(template.clone()).unwrap())
    });
    let d = clock(
        n,
        || rx.recv().map_err(|e| e.to_string()),
        |_, v| v.len() == MIB && v[MIB - 1] == 7,
    )?;
    t.join().map_err(|_| "the sender thread panicked")?;
    Ok(d)
}

/// Starts this binary as an `ipc-channel` producer of `n` messages (`mode` small or
/// large) that connects to the one-shot server `name`.
fn ipc_child(mode: &str, n: u64, name: &str) -> Res<std::process::Child> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .args([CHILD_FLAG, mode, &n.to_string(), name])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())
}

fn ipc_small(n: u64) -> Res<Duration> {
    let (server, name) = IpcOneShotServer::<IpcReceiver<u64>>::new().map_err(|e| e.to_string())?;
    let mut child = ipc_child("small", n, &name)?;
    let (_, rx) = server.accept().map_err(|e| e.to_string())?;
    let d = clock(n, || rx.recv().map_err(|e| e.to_string()), |i, v| *v == i);
    let status = child.wait().map_err(|e| e.to_string())?;
    let d = d?;
    status
        .success()
        .then_some(d)
        .ok_or(format!("producer: {status}"))
}

fn ipc_large(n: u64) -> Res<Duration> {
    let (server, name) = IpcOneShotServer::<IpcBytesReceiver>::new().map_err(|e| e.to_string())?;
    let mut child = ipc_child("large", n, &name)?;
    let (_, rx) = server.accept().map_err(|e| e.to_string())?;
    let d = clock(
        n,
        || rx.recv().map_err(|e| e.to_string()),
        |_, v| v.len() == MIB && v[MIB - 1] == 7,
    );
    let status = child.wait().map_err(|e| e.to_string())?;
    let d = d?;
    status
        .success()
        .then_some(d)
        .ok_or(format!("producer: {status}"))
}

/// The `ipc-channel` producer (this binary started with [`CHILD_FLAG`]): makes a channel,
/// sends its receiver to the parent's one-shot server, then sends its messages. Small
/// messages go typed (`IpcSender<u64>`); 1 MiB ones raw (`IpcBytesSender`), ipc-channel's
/// fastest path for bytes.
pub(crate) fn ipc_producer() -> ! {
    let args: Vec<String> = std::env::args().collect();
    let (mode, n, name) = match &args[..] {
        [_, _, mode, n, name] => (mode.as_str(), n.parse::<u64>().unwrap_or(0), name.clone()),
        _ => {
            eprintln!("{CHILD_FLAG} needs: MODE N SERVER");
            std::process::exit(2);
        }
    };
    let r: Result<(), String> = (|| {
        if mode == "small" {
            let boot = IpcSender::<IpcReceiver<u64>>::connect(name).map_err(|e| e.to_string())?;
            let (tx, rx) = ipc::channel::<u64>().map_err(|e| e.to_string())?;
            boot.send(rx).map_err(|e| e.to_string())?;
            for i in 0..n {
                tx.send(i).map_err(|e| e.to_string())?;
            }
        } else {
            let boot = IpcSender::<IpcBytesReceiver>::connect(name).map_err(|e| e.to_string())?;
            let (tx, rx) = ipc::bytes_channel().map_err(|e| e.to_string())?;
            boot.send(rx).map_err(|e| e.to_string())?;
            let template = vec![7u8; MIB];
            for _ in 0..n {
                let m = template.clone();
                tx.send(&m).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })();
    match r {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("ipc-channel producer: {e}");
            std::process::exit(1);
        }
    }
}
