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

/// About the most bytes (of shared memory) a worker keeps cached; a single larger value
/// is still kept while it is the only one.
///
/// ```
/// assert_eq!(procpool::shared::CACHE_BYTES, 4 << 30); // 4 GiB
/// ```
pub const CACHE_BYTES: usize = 4 << 30;

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
    let made = Arc::new(make(backing.clone())?);
    let mut c = cache();
    c.clock += 1;
    let used = c.clock;
    if let Some(e) = c.entries.get_mut(&key) {
        // Made meanwhile on another thread: keep the first.
        e.used = used;
        return downcast(e.obj.clone());
    }
    c.bytes += backing.len;
    c.entries.insert(
        key,
        Entry {
            obj: made.clone(),
            backing,
            used,
        },
    );
    evict_over_budget(&mut c, key);
    COUNT.store(c.entries.len(), Ordering::Relaxed);
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

/// Drops least recently used entries (never `keep`) while over a bound.
fn evict_over_budget(c: &mut Cache, keep: Key) {
    while c.entries.len() > CACHE_ENTRIES || (c.bytes > CACHE_BYTES && c.entries.len() > 1) {
        let Some(oldest) = c
            .entries
            .iter()
            .filter(|(k, _)| **k != keep)
            .min_by_key(|(_, e)| e.used)
            .map(|(k, _)| *k)
        else {
            return;
        };
        remove(c, &oldest);
    }
}

fn remove(c: &mut Cache, key: &Key) {
    if let Some(e) = c.entries.remove(key) {
        c.bytes -= e.backing.len;
    }
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
        .filter_map(|(k, _)| {
            let e = c.entries.remove(k)?;
            c.bytes -= e.backing.len;
            Some(e)
        })
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
