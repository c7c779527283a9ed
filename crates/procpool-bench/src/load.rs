//! How busy the machine was with other work while we measured: a benchmark on a shared
//! two-core machine is only as good as the quiet it ran in.

use std::time::Instant;

/// A reading of the machine's and our own CPU time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    /// CPU seconds all processes spent (from `/proc/stat`).
    machine: f64,
    /// CPU seconds this process and its reaped children spent.
    ours: f64,
    at: Instant,
}

fn machine_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    if v.len() < 5 {
        return None;
    }
    let busy: u64 = v.iter().take(8).sum::<u64>() - v[3] - v[4];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| busy as f64 / hz as f64)
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: an all-zero rusage is a valid value, and getrusage writes into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Reads the counters now.
pub(crate) fn mark() -> Option<CpuMark> {
    Some(CpuMark {
        machine: machine_cpu_seconds()?,
        ours: rusage_seconds(libc::RUSAGE_SELF) + rusage_seconds(libc::RUSAGE_CHILDREN),
        at: Instant::now(),
    })
}

/// Share of the machine's cores (0 to 1) that other processes used between two marks.
pub(crate) fn foreign_share(from: Option<CpuMark>, to: Option<CpuMark>) -> Option<f64> {
    let (a, b) = (from?, to?);
    let wall = (b.at - a.at).as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if wall <= 0.0 {
        return None;
    }
    let other = (b.machine - a.machine) - (b.ours - a.ours);
    Some((other / (wall * cores)).clamp(0.0, 1.0))
}

/// The 1-minute load average.
pub(crate) fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Median round trip (µs) of 8 bytes between two threads of this process over a Unix
/// socket pair: the floor under any cross-process round trip on this machine (on a
/// virtual machine, waking a thread on another core can cost far more than the system
/// calls themselves).
pub(crate) fn socket_round_trip_us(runs: usize) -> Option<f64> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair().ok()?;
    let echo = std::thread::spawn(move || {
        let mut x = [0u8; 8];
        while b.read_exact(&mut x).is_ok() {
            if b.write_all(&x).is_err() {
                break;
            }
        }
    });
    let mut x = [0u8; 8];
    let mut us = Vec::with_capacity(runs);
    for i in 0..runs + runs / 10 {
        let t = Instant::now();
        a.write_all(&x).ok()?;
        a.read_exact(&mut x).ok()?;
        if i >= runs / 10 {
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    drop(a);
    let _ = echo.join();
    (!us.is_empty()).then(|| crate::work::median(&mut us))
}
