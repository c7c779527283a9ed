//! Items in the borrowed forms people hold: `&Path` for a `PathBuf` argument, `&str` for
//! a `String`, `&[T]` for a `Vec<T>`, through `map`, `imap`, `imap_unordered`, `apply`,
//! `spawn` and a one-off `procpool::spawn`, with both codecs.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use procpool::{Codec, Pool};

procpool::enable_test_support!();

fn path_text(p: PathBuf) -> String {
    p.to_str().unwrap().to_owned()
}

fn shout(s: String) -> String {
    s.to_uppercase()
}

fn total(v: Vec<u32>) -> u32 {
    v.iter().sum()
}

fn byte_count(v: Vec<u8>) -> usize {
    v.len()
}

fn pools() -> Vec<Pool> {
    let pool = Pool::builder().workers(2).build().unwrap();
    let msgpack = Pool::builder()
        .workers(1)
        .codec(Codec::MessagePack)
        .build()
        .unwrap();
    vec![pool, msgpack]
}

#[test]
fn paths() {
    let owned = [PathBuf::from("/tmp/a b"), PathBuf::from("relative/é")];
    let paths: Vec<&Path> = owned.iter().map(PathBuf::as_path).collect();
    let want = ["/tmp/a b", "relative/é"];
    for pool in pools() {
        assert_eq!(pool.map(path_text, &paths).unwrap(), want); // &&Path
        assert_eq!(pool.map(path_text, paths.clone()).unwrap(), want); // &Path
        assert_eq!(pool.map(path_text, &owned).unwrap(), want); // &PathBuf
        assert_eq!(pool.map(path_text, want).unwrap(), want); // &str
        let got: Vec<String> = pool.imap(path_text, &paths).map(Result::unwrap).collect();
        assert_eq!(got, want);
        let mut got: Vec<(usize, String)> = pool
            .imap_unordered(path_text, paths.iter().copied())
            .map(|(i, r)| (i, r.unwrap()))
            .collect();
        got.sort();
        assert_eq!(got, [(0, want[0].into()), (1, want[1].into())]);
        assert_eq!(pool.apply(path_text, paths[0]).unwrap(), want[0]);
        assert_eq!(
            pool.apply(path_text, Cow::Borrowed(paths[1])).unwrap(),
            want[1]
        );
        assert_eq!(
            pool.spawn(path_text, paths[1]).unwrap().join().unwrap(),
            want[1]
        );
    }
    let p = procpool::spawn(path_text, Path::new("/one/off")).unwrap();
    assert_eq!(p.join().unwrap(), "/one/off");
}

#[test]
fn strings() {
    let words: Vec<&str> = vec!["ab", "ßc"];
    let want = ["AB", "SSC"];
    for pool in pools() {
        assert_eq!(pool.map(shout, &words).unwrap(), want); // &&str
        assert_eq!(pool.map(shout, words.clone()).unwrap(), want); // &str
        let boxed: Vec<Box<str>> = words.iter().map(|&w| w.into()).collect();
        assert_eq!(pool.map(shout, boxed).unwrap(), want);
        let shared: Vec<Arc<str>> = words.iter().map(|&w| w.into()).collect();
        assert_eq!(pool.map(shout, &shared).unwrap(), want);
        let got: Vec<String> = pool.imap(shout, &words).map(Result::unwrap).collect();
        assert_eq!(got, want);
        assert_eq!(pool.apply(shout, "x").unwrap(), "X");
        assert_eq!(pool.spawn(shout, "y").unwrap().join().unwrap(), "Y");
    }
    assert_eq!(procpool::spawn(shout, "z").unwrap().join().unwrap(), "Z");
}

#[test]
fn slices() {
    let data = [vec![1u32, 2], vec![300, 70_000]];
    let slices: Vec<&[u32]> = data.iter().map(Vec::as_slice).collect();
    let bytes: &[u8] = &[0, 255, 7];
    for pool in pools() {
        assert_eq!(pool.map(total, &slices).unwrap(), [3, 70_300]); // &&[u32]
        assert_eq!(pool.map(total, slices.clone()).unwrap(), [3, 70_300]); // &[u32]
        let got: Vec<u32> = pool.imap(total, &slices).map(Result::unwrap).collect();
        assert_eq!(got, [3, 70_300]);
        assert_eq!(pool.apply(total, slices[1]).unwrap(), 70_300);
        // Vec<u8> takes a fast path of its own: a &[u8] item follows it.
        assert_eq!(pool.apply(byte_count, bytes).unwrap(), 3);
        assert_eq!(pool.map(byte_count, [bytes, &[]]).unwrap(), [3, 0]);
        assert_eq!(pool.spawn(total, slices[0]).unwrap().join().unwrap(), 3);
    }
    assert_eq!(
        procpool::spawn(total, &[5u32, 6][..])
            .unwrap()
            .join()
            .unwrap(),
        11
    );
}

/// What `Borrow<A>` accepted before still goes: values, references, smart pointers.
#[test]
fn owned_values_references_and_pointers() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let names = vec!["a".to_string(), "bc".to_string()];
    assert_eq!(pool.map(shout, &names).unwrap(), ["A", "BC"]);
    assert_eq!(pool.map(shout, names.clone()).unwrap(), ["A", "BC"]);
    assert_eq!(pool.apply(shout, Box::new("q".to_string())).unwrap(), "Q");
    assert_eq!(pool.apply(shout, Arc::new("r".to_string())).unwrap(), "R");
    assert_eq!(pool.map(|x: u64| x + 1, [1u64, 2].iter()).unwrap(), [2, 3]);
    assert_eq!(pool.map(|x: u64| x + 1, 0..3).unwrap(), [1, 2, 3]);
}

/// A path that is not UTF-8 cannot be a `PathBuf` argument: that item fails alone with a
/// codec error, as the owned path would, and the others run.
#[test]
fn a_path_that_is_not_utf8_fails_alone() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let pool = Pool::builder().workers(1).build().unwrap();
    let bad = Path::new(OsStr::from_bytes(b"/tmp/\xff"));
    let paths = [Path::new("/ok"), bad, Path::new("/also")];
    let got: Vec<_> = pool.imap(path_text, &paths).collect();
    assert_eq!(got[0].as_ref().unwrap(), "/ok");
    assert_eq!(got[2].as_ref().unwrap(), "/also");
    let e = got[1].as_ref().unwrap_err().as_task().unwrap();
    assert!(
        matches!(e.kind(), procpool::TaskErrorKind::Codec { message } if message.contains("UTF-8")),
        "{e}"
    );
    let owned = pool.apply(path_text, bad.to_path_buf()).unwrap_err();
    assert!(matches!(
        owned.as_task().unwrap().kind(),
        procpool::TaskErrorKind::Codec { .. }
    ));
}

fn twice(x: u64) -> u64 {
    x * 2
}

fn halve(x: f32) -> f64 {
    f64::from(x) / 2.0
}

fn negate(x: i8) -> i16 {
    -i16::from(x)
}

/// Numbers are packed into a chunk's payload straight from whatever holds them: owned,
/// borrowed, boxed or shared, over enough items to make several chunks.
#[test]
fn numbers_held_any_way() {
    let owned: Vec<u64> = (0..50_000).collect();
    let want: Vec<u64> = owned.iter().map(|x| x * 2).collect();
    let refs: Vec<&u64> = owned.iter().collect();
    let boxed: Vec<Box<u64>> = owned.iter().copied().map(Box::new).collect();
    let shared: Vec<Arc<u64>> = owned.iter().copied().map(Arc::new).collect();
    let floats: Vec<f32> = (0..30_000).map(|i| i as f32 * 0.25).collect();
    let small: Vec<i8> = (0..20_000).map(|i| (i % 256 - 128) as i8).collect();
    for pool in pools() {
        assert_eq!(pool.map(twice, owned.clone()).unwrap(), want);
        assert_eq!(pool.map(twice, &owned).unwrap(), want); // &u64
        assert_eq!(pool.map(twice, &refs).unwrap(), want); // &&u64
        assert_eq!(pool.map(twice, &boxed).unwrap(), want); // &Box<u64>
        assert_eq!(pool.map(twice, shared.clone()).unwrap(), want); // Arc<u64>
        let got: Vec<u64> = pool.imap(twice, &owned).map(Result::unwrap).collect();
        assert_eq!(got, want);
        let got = pool.map(halve, &floats).unwrap();
        assert!(
            got.iter()
                .zip(&floats)
                .all(|(g, f)| *g == f64::from(*f) / 2.0)
        );
        let got = pool.map(negate, &small).unwrap();
        assert!(got.iter().zip(&small).all(|(g, s)| *g == -i16::from(*s)));
    }
}
