//! Stable value identities: the name and version a value is stored under, given by the user
//! ([`CacheValue`]) rather than derived from the Rust type's path.
//!
//! `std::any::type_name` changes when a type moves between modules or crates, and differs
//! between types serde would read the same way (`&str` and `String`), so keyed on it a
//! refactor flushed the cache and `set("k", &"hello")` could never be read back. An identity
//! is what the application says the value is: a name and a version it bumps when the shape
//! changes. Containers and std types compose theirs from their elements' (`list<string@0>`), so
//! a `Vec<Product>` written here is read as a `Vec<Product>` anywhere, and borrowed and owned
//! forms (`&str`/`String`, `[T]`/`Vec<T>`) share one identity.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;

/// A type whose values the typed cache stores: its stable name and schema version.
///
/// The envelope of every stored value carries a fingerprint of this identity (and of the
/// cache's [`schema_version`](crate::CacheBuilder::schema_version)); a value under another
/// identity is a miss that the next write replaces, never deleted by a read, so two types
/// sharing a key, or two deploys of one type, do not destroy each other's values. Moving the
/// type to another module keeps its identity, and its hits.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tower_redis_cache::CacheValue;
///
/// #[derive(Serialize, Deserialize)]
/// struct Product { id: u32, name: String }
///
/// impl CacheValue for Product {
///     const NAME: &'static str = "product";
///     // Bump when the shape changes in a way serde would still read (or misread).
///     const VERSION: u32 = 2;
/// }
/// ```
///
/// Implemented for the std types values are commonly made of: `String` and `str` (one
/// identity, `string`), the integers, floats, `bool`, `char`, `()`, and `Vec`, slices,
/// `VecDeque`, `Option`, `Box`, maps, sets and tuples of identities. For a type of another crate
/// (which the orphan rule keeps you from implementing this for), name it on the handle:
/// [`Cache::typed_as`](crate::Cache::typed_as).
pub trait CacheValue {
    /// The stable name of the type in the cache (not necessarily unique across the
    /// application: two types with one name and version read each other's values).
    const NAME: &'static str;
    /// The schema version (default 0): bump it when the stored shape changes, so values of
    /// the old shape are misses instead of decode errors.
    const VERSION: u32 = 0;

    /// Writes the identity's canonical text; containers compose their elements'.
    #[doc(hidden)]
    fn describe(out: &mut String) {
        describe_named(out, Self::NAME, Self::VERSION);
    }
}

/// `name@version`, the text of a named identity (also [`Cache::typed_as`](crate::Cache::typed_as)'s).
pub(crate) fn describe_named(out: &mut String, name: &str, version: u32) {
    out.push_str(name);
    let _ = write!(out, "@{version}");
}

/// The identity's text for `T`.
pub(crate) fn describe<T: CacheValue + ?Sized>() -> String {
    let mut out = String::new();
    T::describe(&mut out);
    out
}

macro_rules! named {
    ($($ty:ty => $name:literal),* $(,)?) => {
        $(impl CacheValue for $ty {
            const NAME: &'static str = $name;
        })*
    };
}

named! {
    bool => "bool", char => "char", () => "unit",
    u8 => "u8", u16 => "u16", u32 => "u32", u64 => "u64", u128 => "u128", usize => "u64",
    i8 => "i8", i16 => "i16", i32 => "i32", i64 => "i64", i128 => "i128", isize => "i64",
    f32 => "f32", f64 => "f64",
    String => "string", str => "string",
}

impl CacheValue for Cow<'_, str> {
    const NAME: &'static str = "string";
}

/// A container's identity: `kind<element, ...>`.
macro_rules! composed {
    ($kind:literal, $out:ident, $($elem:ty),+) => {{
        $out.push_str(concat!($kind, "<"));
        let mut first = true;
        $(
            if !std::mem::take(&mut first) {
                $out.push(',');
            }
            <$elem>::describe($out);
        )+
        $out.push('>');
    }};
}

impl<T: CacheValue + ?Sized> CacheValue for &T {
    const NAME: &'static str = T::NAME;
    const VERSION: u32 = T::VERSION;
    fn describe(out: &mut String) {
        T::describe(out);
    }
}

impl<T: CacheValue + ?Sized> CacheValue for Box<T> {
    const NAME: &'static str = T::NAME;
    const VERSION: u32 = T::VERSION;
    fn describe(out: &mut String) {
        T::describe(out);
    }
}

macro_rules! list {
    ($($ty:ty),*) => {
        $(impl<T: CacheValue> CacheValue for $ty {
            const NAME: &'static str = "list";
            fn describe(out: &mut String) {
                composed!("list", out, T);
            }
        })*
    };
}

list!(Vec<T>, [T], VecDeque<T>);

impl<T: CacheValue, const N: usize> CacheValue for [T; N] {
    const NAME: &'static str = "list";
    fn describe(out: &mut String) {
        composed!("list", out, T);
    }
}

impl<T: CacheValue> CacheValue for Option<T> {
    const NAME: &'static str = "option";
    fn describe(out: &mut String) {
        composed!("option", out, T);
    }
}

impl<K: CacheValue, V: CacheValue, S> CacheValue for HashMap<K, V, S> {
    const NAME: &'static str = "map";
    fn describe(out: &mut String) {
        composed!("map", out, K, V);
    }
}

impl<K: CacheValue, V: CacheValue> CacheValue for BTreeMap<K, V> {
    const NAME: &'static str = "map";
    fn describe(out: &mut String) {
        composed!("map", out, K, V);
    }
}

impl<T: CacheValue, S> CacheValue for HashSet<T, S> {
    const NAME: &'static str = "set";
    fn describe(out: &mut String) {
        composed!("set", out, T);
    }
}

impl<T: CacheValue> CacheValue for BTreeSet<T> {
    const NAME: &'static str = "set";
    fn describe(out: &mut String) {
        composed!("set", out, T);
    }
}

macro_rules! tuple {
    ($($elem:ident),+) => {
        impl<$($elem: CacheValue),+> CacheValue for ($($elem,)+) {
            const NAME: &'static str = "tuple";
            fn describe(out: &mut String) {
                composed!("tuple", out, $($elem),+);
            }
        }
    };
}

tuple!(A);
tuple!(A, B);
tuple!(A, B, C);
tuple!(A, B, C, D);

#[cfg(test)]
mod tests {
    use super::*;

    struct Product;
    impl CacheValue for Product {
        const NAME: &'static str = "product";
        const VERSION: u32 = 3;
    }

    #[test]
    fn borrowed_and_owned_forms_share_an_identity_and_containers_compose() {
        assert_eq!(describe::<&str>(), describe::<String>());
        assert_eq!(describe::<&&str>(), "string@0");
        assert_eq!(describe::<[u8]>(), describe::<Vec<u8>>());
        assert_eq!(describe::<Product>(), "product@3");
        assert_eq!(
            describe::<Option<Vec<Product>>>(),
            "option<list<product@3>>"
        );
        assert_eq!(
            describe::<HashMap<String, (u32, Product)>>(),
            "map<string@0,tuple<u32@0,product@3>>"
        );
        assert_ne!(describe::<i32>(), describe::<u64>());
    }
}
