//! What an idle pool costs: the CPU time procpool's supervisor thread and workers use
//! while nobody calls the pool, right after a burst of calls (so that any spinning a
//! call leaves behind is counted).

use std::time::{Duration, Instant};

use crate::systems::{Procpool, Res, System};

/// CPU used by an idle pool, in % of one core: (supervisor thread, all workers).
pub(crate) fn idle_cpu(idle: Duration) -> Res<(f64, f64)> {
    let mut sys = Procpool::new()?;
    for i in 0..200 {
        sys.apply(i)?;
    }
    let workers = sys.0.worker_pids();
    let supervisors = supervisor_threads();
    if supervisors.is_empty() {
        return Err("no procpool-supervisor thread found in /proc/self/task".into());
    }
    let ticks = |paths: &[String]| -> u64 { paths.iter().filter_map(|p| cpu_ticks(p)).sum() };
    let worker_stats: Vec<String> = workers.iter().map(|p| format!("/proc/{p}/stat")).collect();
    let (s0, w0, t0) = (ticks(&supervisors), ticks(&worker_stats), Instant::now());
    std::thread::sleep(idle);
    let (s1, w1, took) = (ticks(&supervisors), ticks(&worker_stats), t0.elapsed());
    if sys.0.worker_pids() != workers {
        return Err("a worker was replaced while the pool was idle".into());
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let pct = |ticks: u64| ticks as f64 / hz / took.as_secs_f64() * 100.0;
    Ok((pct(s1.saturating_sub(s0)), pct(w1.saturating_sub(w0))))
}

/// The stat files of this process's threads named like procpool's supervisor.
fn supervisor_threads() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .is_ok_and(|c| c.trim_end().starts_with("procpool-superv"))
        })
        .map(|e| e.path().join("stat").display().to_string())
        .collect()
}

/// User plus system time, in clock ticks, from a `stat` file of `/proc`.
fn cpu_ticks(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces), from the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
