//! A process's cache of the shared values it received (see the module docs for the rule).

use std::any::Any;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::{Arrived, Backing, Kind};

/// Most values a worker keeps cached.
///
/// ```
/// // Past this many values, a worker drops the one it used least recently.
/// assert_eq!(procpool::shared::CACHE_ENTRIES, 64);
/// ```
pub const CACHE_ENTRIES: usize = 64;

/// Default of the most bytes a process keeps cached of the shared values it received
/// ([`set_cache_bytes`] changes it): 4 GiB, counted as the values hold them (decoded,
/// see the [module docs](crate::shared#caching-in-workers-and-when-memory-is-released)).
///
/// ```
/// assert_eq!(procpool::shared::CACHE_BYTES, 4 << 30); // 4 GiB
/// ```
pub const CACHE_BYTES: usize = 4 << 30;

/// The bound in force (see [`set_cache_bytes`]).
static LIMIT: AtomicUsize = AtomicUsize::new(CACHE_BYTES);

/// Sets the most bytes this process keeps cached of the shared values it received,
/// counted decoded (default [`CACHE_BYTES`]); values beyond it are let go, least
/// recently used first, at once and from then on. Call it in a pool's
/// [initializer](crate::Builder::initializer) to set it in each worker.
///
/// # Examples
///
/// ```no_run
/// fn setup(bytes: usize) {
///     procpool::shared::set_cache_bytes(bytes);
/// }
///
/// procpool::init();
/// let pool = procpool::Pool::builder()
///     .initializer(setup, 512 << 20) // each worker caches at most 512 MiB of values
///     .build()
///     .unwrap();
/// # drop(pool);
/// ```
pub fn set_cache_bytes(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
    let mut c = cache();
    let dropped = evict_over_budget(&mut c, None);
    COUNT.store(c.entries.len(), Ordering::Relaxed);
    drop(c);
    drop(dropped);
}

/// The most bytes this process keeps cached of the shared values it received (see
/// [`set_cache_bytes`]).
///
/// ```
/// assert_eq!(procpool::shared::cache_bytes(), procpool::shared::CACHE_BYTES);
/// ```
pub fn cache_bytes() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// What names a received value: its kind, its maker's id, and its memfd's file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) kind: Kind,
    pub(crate) id: u64,
    pub(crate) file: (u64, u64),
}

struct Entry {
    obj: Arc<dyn Any + Send + Sync>,
    backing: Arc<Backing>,
    /// What the value holds in this process (see [`Footprint`]).
    held: usize,
    used: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Entry>,
    bytes: usize,
    clock: u64,
}

/// Entries cached (read without the lock: `sweep` costs nothing while it is 0).
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn cache() -> MutexGuard<'static, Cache> {
    static C: OnceLock<Mutex<Cache>> = OnceLock::new();
    C.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The value `arrived` names: from the cache, or made by `make` (from its backing) and
/// cached.
///
/// # Errors
/// `make`'s, or when a cached value of another type has the same key.
pub(crate) fn get_or_make<V: Any + Send + Sync>(
    arrived: Arrived,
    make: impl FnOnce(Arc<Backing>) -> Result<V, String>,
) -> Result<Arc<V>, String> {
    let key = arrived.key;
    if let Some(v) = lookup::<V>(&key) {
        return v;
    }
    let backing = Arc::new(arrived.backing);
    let before = Footprint::now();
    let made = Arc::new(make(backing.clone())?);
    let held = Footprint::now().grown_since(&before).max(backing.len);
    let mut c = cache();
    c.clock += 1;
    let used = c.clock;
    if let Some(e) = c.entries.get_mut(&key) {
        // Made meanwhile on another thread: keep the first.
        e.used = used;
        return downcast(e.obj.clone());
    }
    c.bytes += held;
    c.entries.insert(
        key,
        Entry {
            obj: made.clone(),
            backing,
            held,
            used,
        },
    );
    let dropped = evict_over_budget(&mut c, Some(key));
    COUNT.store(c.entries.len(), Ordering::Relaxed);
    drop(c);
    // Freed outside the lock.
    drop(dropped);
    Ok(made)
}

fn lookup<V: Any + Send + Sync>(key: &Key) -> Option<Result<Arc<V>, String>> {
    let mut c = cache();
    c.clock += 1;
    let now = c.clock;
    let e = c.entries.get_mut(key)?;
    e.used = now;
    Some(downcast(e.obj.clone()))
}

fn downcast<V: Any + Send + Sync>(obj: Arc<dyn Any + Send + Sync>) -> Result<Arc<V>, String> {
    obj.downcast::<V>().map_err(|_| {
        format!(
            "a shared value arrived as a `{}`, but this process holds it as another type",
            std::any::type_name::<V>()
        )
    })
}

/// What this process holds, read before and after a value is made: the growth is what
/// the value holds. Two readings, the larger growth wins: bytes allocated (glibc's
/// `mallinfo2`, exact whatever memory the allocator reuses, blind to another global
/// allocator) and resident memory (`VmRSS`, which sees any allocator but not reused
/// memory). Other threads allocating meanwhile can only make a value look larger.
struct Footprint {
    allocated: Option<usize>,
    resident: Option<usize>,
}

impl Footprint {
    fn now() -> Self {
        Footprint {
            allocated: allocated(),
            resident: resident(),
        }
    }

    fn grown_since(&self, before: &Footprint) -> usize {
        let grew = |a: Option<usize>, b: Option<usize>| match (a, b) {
            (Some(a), Some(b)) => a.saturating_sub(b),
            _ => 0,
        };
        grew(self.allocated, before.allocated).max(grew(self.resident, before.resident))
    }
}

/// Bytes in use from glibc's allocator (small blocks and mapped ones), when the process
/// runs on a glibc that has `mallinfo2` (2.33 and later; looked up at run time, so that
/// procpool still links against an older one).
#[cfg(target_env = "gnu")]
fn allocated() -> Option<usize> {
    type Mallinfo2 = unsafe extern "C" fn() -> libc::mallinfo2;
    static FUNC: OnceLock<Option<Mallinfo2>> = OnceLock::new();
    let f = (*FUNC.get_or_init(|| {
        // SAFETY: looks a symbol up by a NUL-terminated name.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"mallinfo2".as_ptr()) };
        // SAFETY: glibc's `mallinfo2` has this signature (malloc.h).
        (!p.is_null()).then(|| unsafe { std::mem::transmute::<*mut libc::c_void, Mallinfo2>(p) })
    }))?;
    // SAFETY: `mallinfo2` only reads the allocator's statistics (under its locks).
    let m = unsafe { f() };
    Some(m.uordblks.saturating_add(m.hblkhd))
}

#[cfg(not(target_env = "gnu"))]
fn allocated() -> Option<usize> {
    None
}

/// This process's resident memory in bytes (`VmRSS` of `/proc/self/status`), if it can
/// be read.
fn resident() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Takes out least recently used entries (never `keep`) while over a bound, and gives
/// them back to be dropped outside the lock.
fn evict_over_budget(c: &mut Cache, keep: Option<Key>) -> Vec<Entry> {
    let limit = cache_bytes();
    let mut out = Vec::new();
    while c.entries.len() > CACHE_ENTRIES || (c.bytes > limit && c.entries.len() > 1) {
        let Some(oldest) = c
            .entries
            .iter()
            .filter(|(k, _)| Some(**k) != keep)
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| *k)
        else {
            break;
        };
        out.extend(remove(c, &oldest));
    }
    out
}

fn remove(c: &mut Cache, key: &Key) -> Option<Entry> {
    let e = c.entries.remove(key)?;
    c.bytes -= e.held;
    Some(e)
}

/// How many values this process has cached, and the bytes they hold as counted against
/// [`cache_bytes`].
///
/// ```
/// assert_eq!(procpool::shared::cached(), (0, 0));
/// ```
pub fn cached() -> (usize, usize) {
    let c = cache();
    (c.entries.len(), c.bytes)
}

/// Drops the cached values whose makers let go of them (their lease is released). Costs
/// nothing when the cache is empty, one `poll` otherwise.
pub(crate) fn sweep() {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut c = cache();
    let keys: Vec<Key> = c.entries.keys().copied().collect();
    let gone = {
        let watchers: Vec<_> = keys
            .iter()
            .map(|k| c.entries[k].backing.watcher.as_fd())
            .collect();
        match procpool_engine::shm::released(&watchers) {
            Ok(g) => g,
            Err(_) => return,
        }
    };
    let dropped: Vec<Entry> = keys
        .iter()
        .zip(gone)
        .filter(|(_, g)| *g)
        .filter_map(|(k, _)| remove(&mut c, k))
        .collect();
    COUNT.store(c.entries.len(), Ordering::Relaxed);
    drop(c);
    // Unmapped and closed outside the lock.
    drop(dropped);
}

/// How many values this process has cached (for tests).
#[cfg(test)]
pub(crate) fn len() -> usize {
    cache().entries.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use procpool_engine::shm;

    /// A value as a worker receives it: its holder stays with the test.
    fn arrive(id: u64) -> (Arrived, std::os::fd::OwnedFd) {
        let memfd = shm::sealed_file("t", &[1, 2, 3]).unwrap();
        let (holder, watcher) = shm::lease().unwrap();
        let file = shm::file_id(memfd.as_fd()).unwrap();
        let arrived = Arrived {
            key: Key {
                kind: Kind::Value,
                id,
                file,
            },
            codec: 1,
            backing: Backing {
                id,
                len: 3,
                memfd,
                watcher,
                _holder: None,
            },
        };
        (arrived, holder)
    }

    #[test]
    fn the_cache_is_bounded_and_lets_go_of_released_values() {
        let mut holders = Vec::new();
        let mut made = 0;
        for id in 0..(CACHE_ENTRIES as u64 + 10) {
            let (a, h) = arrive(id);
            holders.push(h);
            let v = get_or_make(a, |_| {
                made += 1;
                Ok(id)
            })
            .unwrap();
            assert_eq!(*v, id);
        }
        assert_eq!(len(), CACHE_ENTRIES);
        // The most recent is cached: not made again.
        let key = {
            let (a, h) = arrive(CACHE_ENTRIES as u64 + 9);
            holders.push(h);
            a
        };
        // Another memfd under the same id is another value.
        let v = get_or_make(key, |_| Ok(0u64)).unwrap();
        assert_eq!(*v, 0);
        assert_eq!(made, CACHE_ENTRIES + 10);
        drop(holders);
        sweep();
        assert_eq!(len(), 0);
    }
}
