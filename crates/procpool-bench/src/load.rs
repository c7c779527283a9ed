//! How busy the machine was with other work while we measured: a benchmark on a shared
//! two-core machine is only as good as the quiet it ran in.

use std::time::Instant;

/// A reading of the machine's and our own CPU time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuMark {
    /// CPU seconds all processes spent (from `/proc/stat`).
    machine: f64,
    /// Seconds the host ran something else while our virtual CPUs wanted to run.
    steal: f64,
    /// CPU seconds this process and its reaped children spent.
    ours: f64,
    at: Instant,
}

/// (busy seconds, stolen seconds) of all CPUs since boot.
fn machine_cpu_seconds() -> Option<(f64, f64)> {
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
    let steal = v.get(7).copied().unwrap_or(0);
    let busy: u64 = v.iter().take(7).sum::<u64>() - v[3] - v[4];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (busy as f64 / hz as f64, steal as f64 / hz as f64))
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
    let (machine, steal) = machine_cpu_seconds()?;
    Some(CpuMark {
        machine,
        steal,
        ours: rusage_seconds(libc::RUSAGE_SELF) + rusage_seconds(libc::RUSAGE_CHILDREN),
        at: Instant::now(),
    })
}

/// Shares of the machine's cores (0 to 1) lost between two marks: (used by other
/// processes, stolen by the host of the virtual machine).
pub(crate) fn foreign_share(from: Option<CpuMark>, to: Option<CpuMark>) -> Option<(f64, f64)> {
    let (a, b) = (from?, to?);
    let wall = (b.at - a.at).as_secs_f64();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if wall <= 0.0 {
        return None;
    }
    let other = (b.machine - a.machine) - (b.ours - a.ours);
    let share = |x: f64| (x / (wall * cores)).clamp(0.0, 1.0);
    Some((share(other), share(b.steal - a.steal)))
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

/// The CPUs the calling thread may run on.
fn my_cpus() -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, and sched_getaffinity writes
    // at most its size into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// Restricts the calling thread to `set`.
fn pin(set: &libc::cpu_set_t) -> bool {
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}

/// A set holding only `cpu`.
fn only(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET stays within it for
    // a CPU number below CPU_SETSIZE, which the callers take from an existing set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    }
}

/// Median round trip (µs) of 8 bytes between two threads of this process over a Unix
/// socket pair, with both threads on one core and on two different cores: the floor under
/// any cross-process round trip on this machine. On a virtual machine, waking a thread
/// that sleeps on another core can cost far more than the system calls themselves.
/// `None` where the threads cannot be placed (fewer than two CPUs allowed).
pub(crate) fn socket_round_trip_us(runs: usize) -> Option<(f64, f64)> {
    let all = my_cpus()?;
    // SAFETY: CPU_ISSET reads within the set for numbers below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &all) })
        .take(2)
        .collect();
    let [a, b] = cpus[..] else { return None };
    let same = round_trip(runs, a, a);
    let across = round_trip(runs, a, b);
    pin(&all);
    Some((same?, across?))
}

fn round_trip(runs: usize, mine: usize, theirs: usize) -> Option<f64> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair().ok()?;
    let echo = std::thread::spawn(move || {
        pin(&only(theirs));
        let mut x = [0u8; 8];
        while b.read_exact(&mut x).is_ok() {
            if b.write_all(&x).is_err() {
                break;
            }
        }
    });
    pin(&only(mine));
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
