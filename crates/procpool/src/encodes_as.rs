//! What a call's items (and a single call's argument) may be: the argument type itself,
//! a reference or a smart pointer to it, or a borrowed form whose serde encoding is the
//! same as the argument's (`&Path` for `PathBuf`, `&str` for `String`, `&[T]` for
//! `Vec<T>`).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use procpool_engine::TaskErrorKind;

use crate::codec::Value;
use crate::job::items::{self, Layout};

/// An item a pool call accepts for an argument of type `A`: an `A`, a reference or
/// smart pointer to one, or a borrowed form that serializes exactly as `A` does.
///
/// | argument `A` | items accepted |
/// |---|---|
/// | any | `A`, `&A`, `&mut A`, `Box<A>`, `Rc<A>`, `Arc<A>`, `Cow<A>` |
/// | `String` | `&str`, `Box<str>`, `Rc<str>`, `Arc<str>`, `Cow<str>` |
/// | `PathBuf` | `&Path`, `Box<Path>`, `Cow<Path>`, `&str`, `String` |
/// | `Vec<T>` | `&[T]`, `Box<[T]>`, `Cow<[T]>` (with `T: Clone`) |
///
/// and a `&` to each of these: the items of a borrowed collection (`pool.map(f, &paths)`
/// with `paths: Vec<&Path>` gives `&&Path` items).
///
/// Each pair makes the same serde calls (a string, or a sequence of the same elements),
/// so the worker reads the item as an `A` whatever the codec (postcard or MessagePack).
/// A borrowed form is encoded as it is, without making an `A` (no copy), and checked
/// like an `A` (size limit, round trip). Checked at compile time: an item of another
/// type does not compile. The trait is sealed.
///
/// ```
/// use std::path::{Path, PathBuf};
///
/// fn name_len(p: PathBuf) -> usize {
///     p.file_name().map_or(0, |n| n.len())
/// }
///
/// fn main() -> Result<(), procpool::Error> {
///     procpool::init();
///     let pool = procpool::Pool::builder().workers(1).build()?;
///     let paths: Vec<&Path> = vec![Path::new("/tmp/a.txt"), Path::new("/etc/hosts")];
///     assert_eq!(pool.map(name_len, &paths)?, [5, 5]); // items are &&Path
///     assert_eq!(pool.apply(|s: String| s.len(), "four")?, 4); // &str for a String
///     let words: &[u8] = &[1, 2, 3];
///     assert_eq!(pool.apply(|v: Vec<u8>| v.len(), words)?, 3); // &[u8] for a Vec<u8>
///     Ok(())
/// }
/// ```
///
/// An item that does not encode as the argument is refused by the compiler:
///
/// ```compile_fail,E0277
/// # fn main() -> Result<(), procpool::Error> {
/// # let pool = procpool::Pool::builder().workers(1).build()?;
/// // an array is a tuple to serde, a Vec a sequence: not the same bytes
/// pool.apply(|v: Vec<u8>| v.len(), [1u8, 2, 3])?;
/// # Ok(()) }
/// ```
pub trait EncodesAs<A: Value>: sealed::Sealed<A> {}

impl<A: Value, T: sealed::Sealed<A> + ?Sized> EncodesAs<A> for T {}

pub(crate) mod sealed {
    /// The item as its argument type (the seal of [`EncodesAs`](super::EncodesAs)).
    pub trait Sealed<A> {
        /// What `self` is encoded as when it holds no `A`: a borrowed form of one.
        type Form: serde::Serialize + ?Sized;

        /// The `A` that `self` holds, or its borrowed form (encoded as an `A` is,
        /// without making one).
        fn form(&self) -> Result<&A, &Self::Form>;

        /// `self` as an `A`.
        fn to_arg(&self) -> Arg<'_, A>;
    }

    /// An item as its argument type: borrowed when it holds one, else built from it.
    #[derive(Debug)]
    pub enum Arg<'a, A> {
        /// The item holds an `A`.
        Borrowed(&'a A),
        /// An `A` made from the item.
        Owned(A),
    }

    impl<A> std::ops::Deref for Arg<'_, A> {
        type Target = A;

        fn deref(&self) -> &A {
            match self {
                Arg::Borrowed(a) => a,
                Arg::Owned(a) => a,
            }
        }
    }
}

use sealed::{Arg, Sealed};

/// Appends `item` to a chunk as an argument of type `A`: an `A` it holds as
/// [`items::push_arg`] does, a borrowed form encoded directly as an `A`.
///
/// # Errors
/// As [`items::push_arg`].
#[inline]
pub(crate) fn push_arg<A: Value, T: Sealed<A> + ?Sized>(
    buf: &mut Vec<u8>,
    layout: Layout,
    item: &T,
) -> Result<(), TaskErrorKind> {
    match item.form() {
        Ok(a) => items::push_arg(buf, layout, a),
        Err(form) => items::push_arg_as::<A, T::Form>(buf, layout, form),
    }
}

impl<A: Value> Sealed<A> for A {
    type Form = A;

    #[inline]
    fn form(&self) -> Result<&A, &A> {
        Ok(self)
    }

    #[inline]
    fn to_arg(&self) -> Arg<'_, A> {
        Arg::Borrowed(self)
    }
}

/// References and smart pointers to an `A`, and references to those (the items of a
/// borrowed collection of them).
macro_rules! pointers {
    ($($p:ty),* $(,)?) => {$(
        impl<A: Value> Sealed<A> for $p {
            type Form = A;

            #[inline]
            fn form(&self) -> Result<&A, &A> {
                Ok(self)
            }

            #[inline]
            fn to_arg(&self) -> Arg<'_, A> {
                Arg::Borrowed(self)
            }
        }
    )*};
}

pointers!(
    &A,
    &&A,
    &mut A,
    Box<A>,
    &Box<A>,
    Rc<A>,
    &Rc<A>,
    Arc<A>,
    &Arc<A>
);

impl<A: Value + Clone> Sealed<A> for Cow<'_, A> {
    type Form = A;

    #[inline]
    fn form(&self) -> Result<&A, &A> {
        Ok(self)
    }

    #[inline]
    fn to_arg(&self) -> Arg<'_, A> {
        Arg::Borrowed(self)
    }
}

impl<A: Value + Clone> Sealed<A> for &Cow<'_, A> {
    type Form = A;

    #[inline]
    fn form(&self) -> Result<&A, &A> {
        Ok(self)
    }

    #[inline]
    fn to_arg(&self) -> Arg<'_, A> {
        Arg::Borrowed(self)
    }
}

/// Borrowed forms of `$owned` (each serializes as `$owned` does), each seen as a
/// `&$unsized` and owned by `$own`.
macro_rules! borrowed_forms {
    ($owned:ty, $unsized:ty, $own:path: $($t:ty),* $(,)?) => {$(
        impl Sealed<$owned> for $t {
            type Form = $unsized;

            #[inline]
            fn form(&self) -> Result<&$owned, &$unsized> {
                Err(AsRef::<$unsized>::as_ref(self))
            }

            #[inline]
            fn to_arg(&self) -> Arg<'_, $owned> {
                Arg::Owned($own(AsRef::<$unsized>::as_ref(self)))
            }
        }
    )*};
}

// `String` and `str` both serialize as a string.
borrowed_forms!(
    String, str, str::to_owned:
    &str, &&str, Box<str>, &Box<str>, Rc<str>, &Rc<str>, Arc<str>, &Arc<str>,
    Cow<'_, str>, &Cow<'_, str>,
);
// `PathBuf` and `Path` serialize as a string (an error if the path is not UTF-8, the
// same for both), and so does a `str`.
borrowed_forms!(
    PathBuf, Path, Path::to_path_buf:
    &Path, &&Path, Box<Path>, &Box<Path>, Cow<'_, Path>, &Cow<'_, Path>,
    &str, &&str, String, &String,
);

/// `[T]` and `Vec<T>` serialize as a sequence of their elements.
macro_rules! slices {
    ($($t:ty),* $(,)?) => {$(
        impl<T: Value + Clone> Sealed<Vec<T>> for $t {
            type Form = [T];

            #[inline]
            fn form(&self) -> Result<&Vec<T>, &[T]> {
                Err(AsRef::<[T]>::as_ref(self))
            }

            #[inline]
            fn to_arg(&self) -> Arg<'_, Vec<T>> {
                Arg::Owned(self.to_vec())
            }
        }
    )*};
}

slices!(
    &[T],
    &&[T],
    Box<[T]>,
    &Box<[T]>,
    Cow<'_, [T]>,
    &Cow<'_, [T]>
);

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::*;
    use crate::codec::format::Codec;

    /// postcard's and MessagePack's bytes of a value.
    fn bytes<T: Serialize + ?Sized>(v: &T) -> (Vec<u8>, Vec<u8>) {
        (
            postcard::to_allocvec(v).unwrap(),
            rmp_serde::to_vec_named(v).unwrap(),
        )
    }

    #[test]
    fn each_borrowed_form_encodes_as_its_argument() {
        let s = String::from("héllo");
        assert_eq!(bytes(&s), bytes("héllo"));
        let p = PathBuf::from("/tmp/a b.txt");
        assert_eq!(bytes(&p), bytes(Path::new("/tmp/a b.txt")));
        assert_eq!(bytes(&p), bytes("/tmp/a b.txt"));
        let v = vec![1u32, 300, 70_000];
        assert_eq!(bytes(&v), bytes(&v[..]));
        let b = vec![0u8, 255, 7];
        assert_eq!(bytes(&b), bytes(&b[..]));
        // An array is a tuple to serde: not the bytes of a Vec, so not accepted.
        assert_ne!(bytes(&v).0, bytes(&[1u32, 300, 70_000]).0);
    }

    /// A chunk entry of `item` as an `A`, with `codec`.
    fn entry<A: Value, T: Sealed<A> + ?Sized>(codec: Codec, item: &T) -> Vec<u8> {
        let layout = Layout {
            codec,
            limit: 1 << 20,
        };
        let mut buf = Vec::new();
        push_arg::<A, T>(&mut buf, layout, item).unwrap();
        buf
    }

    #[test]
    fn a_borrowed_form_is_written_as_its_argument_would_be() {
        for c in [Codec::Postcard, Codec::MessagePack] {
            let s = String::from("héllo");
            assert_eq!(entry::<String, _>(c, &s), entry::<String, _>(c, &"héllo"));
            let p = PathBuf::from("/tmp/a b");
            let owned = entry::<PathBuf, _>(c, &p);
            assert_eq!(owned, entry::<PathBuf, _>(c, &Path::new("/tmp/a b")));
            assert_eq!(owned, entry::<PathBuf, _>(c, &"/tmp/a b"));
            let v = vec![1u32, 300, 70_000];
            assert_eq!(
                entry::<Vec<u32>, _>(c, &v),
                entry::<Vec<u32>, _>(c, &&v[..])
            );
            // `Vec<u8>` takes a fast path of its own: a `&[u8]` writes the same bytes.
            let b = vec![0u8, 255, 7];
            assert_eq!(entry::<Vec<u8>, _>(c, &b), entry::<Vec<u8>, _>(c, &&b[..]));
        }
    }

    #[test]
    fn a_borrowed_form_is_checked_as_its_argument() {
        let layout = Layout {
            codec: Codec::Postcard,
            limit: 8,
        };
        let mut buf = vec![9];
        let r = push_arg::<String, _>(&mut buf, layout, &"longer than eight");
        assert!(matches!(r, Err(TaskErrorKind::TooLarge { .. })), "{r:?}");
        assert_eq!(buf, [9], "a refused item leaves the chunk as it was");
    }

    #[test]
    fn items_become_their_argument() {
        fn arg<A: Value + Clone, T: Sealed<A> + ?Sized>(t: &T) -> A {
            (*t.to_arg()).clone()
        }
        let p = Path::new("/x/y");
        assert_eq!(arg::<PathBuf, _>(&p), PathBuf::from("/x/y"));
        assert_eq!(arg::<PathBuf, _>(&&p), PathBuf::from("/x/y"));
        assert_eq!(arg::<PathBuf, _>(&"/x/y"), PathBuf::from("/x/y"));
        assert_eq!(arg::<String, _>(&"s"), "s");
        assert_eq!(arg::<String, _>(&Arc::<str>::from("s")), "s");
        assert_eq!(arg::<Vec<u8>, _>(&&[1u8, 2][..]), [1, 2]);
        assert_eq!(arg::<u64, _>(&Box::new(5u64)), 5);
    }
}
