//! The process tree under a child, from `/proc`: to check that a killed child's
//! descendants (a pool's workers) did not outlive it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A process: its id and its start time (clock ticks after boot), which together name it
/// even if the id is reused later.
pub(crate) type Proc = (u32, u64);

/// (parent id, state, start time) of a process, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(u32, char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let ppid = f.get(1)?.parse().ok()?;
    // Field 22 of the line is the start time; `f` starts at field 3.
    let start = f.get(19)?.parse().ok()?;
    Some((ppid, state, start))
}

/// Every living descendant of `root`.
pub(crate) fn descendants(root: u32) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let all: Vec<(u32, u32, u64)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat(pid).map(|(ppid, _, start)| (pid, ppid, start)))
        .collect();
    let mut found = Vec::new();
    let mut parents = vec![root];
    while let Some(p) = parents.pop() {
        for &(pid, ppid, start) in &all {
            if ppid == p && !found.iter().any(|&(q, _)| q == pid) {
                found.push((pid, start));
                parents.push(pid);
            }
        }
    }
    found
}

/// Whether the process still runs (a zombie has ended).
fn alive(&(pid, start): &Proc) -> bool {
    stat(pid).is_some_and(|(_, state, s)| s == start && state != 'Z')
}

/// The processes of `procs` still alive after waiting up to `wait` for them to end.
pub(crate) fn outlived(procs: &HashSet<Proc>, wait: Duration) -> Vec<Proc> {
    let t = Instant::now();
    loop {
        let left: Vec<Proc> = procs.iter().copied().filter(alive).collect();
        if left.is_empty() || t.elapsed() > wait {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the processes (descendants of a child of ours) that are still the same ones.
pub(crate) fn kill_all(procs: &[Proc]) {
    for p in procs.iter().filter(|p| alive(p)) {
        // SAFETY: kill(2) has no memory preconditions; the process was checked to be the
        // one recorded (same id and start time) just before.
        unsafe { libc::kill(p.0 as libc::pid_t, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_and_sees_it_end() {
        let mut c = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        let kids = descendants(me);
        let mine = kids.iter().find(|p| p.0 == c.id()).copied().unwrap();
        assert!(alive(&mine));
        c.kill().unwrap();
        c.wait().unwrap();
        let set: HashSet<Proc> = [mine].into_iter().collect();
        assert!(outlived(&set, Duration::from_secs(2)).is_empty());
    }
}
