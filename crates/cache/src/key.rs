//! Keys: the public [`Id`] of an entry within its resource, the in-process
//! key of the L1, and the namespaced, versioned key strings of the L2.
//!
//! L2 keys read `{namespace}:{resource}:v{version}:{id}`. The namespace lets
//! several stacks share one Redis; the version is the resource's schema
//! version from config, so raising it makes every entry written by older code
//! unreachable at once (they expire by TTL) without scanning Redis.
//!
//! This module knows nothing of Redis connections or of values.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The id of an entry within its resource: a number (a row id) or a string
/// (a session token, a normalised request path).
///
/// `Id::Int(7)` and `Id::Str("7")` are different in L1 but share an L2 key;
/// a resource should use one kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Id {
    /// A numeric id.
    Int(i64),
    /// A string id.
    Str(Arc<str>),
}

impl From<i64> for Id {
    fn from(v: i64) -> Self {
        Id::Int(v)
    }
}

impl From<i32> for Id {
    fn from(v: i32) -> Self {
        Id::Int(i64::from(v))
    }
}

impl From<u32> for Id {
    fn from(v: u32) -> Self {
        Id::Int(i64::from(v))
    }
}

impl From<&str> for Id {
    fn from(v: &str) -> Self {
        Id::Str(Arc::from(v))
    }
}

impl From<String> for Id {
    fn from(v: String) -> Self {
        Id::Str(Arc::from(v))
    }
}

impl From<Arc<str>> for Id {
    fn from(v: Arc<str>) -> Self {
        Id::Str(v)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Int(v) => v.fmt(f),
            Id::Str(s) => f.write_str(s),
        }
    }
}

/// The L1 key: resource name and id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) resource: &'static str,
    pub(crate) id: Id,
}

impl Key {
    pub(crate) fn new(resource: &'static str, id: Id) -> Self {
        Self { resource, id }
    }

    /// `resource:id`: the logical key that purges by prefix and the hot-key
    /// report use.
    pub(crate) fn logical(&self) -> String {
        format!("{}:{}", self.resource, self.id)
    }

    /// Whether the logical key starts with `prefix`, without allocating.
    pub(crate) fn has_prefix(&self, prefix: &str) -> bool {
        match prefix.strip_prefix(self.resource) {
            None => self.resource.starts_with(prefix),
            Some("") => true,
            Some(rest) => match rest.strip_prefix(':') {
                None => false,
                Some(id_prefix) => match &self.id {
                    Id::Str(s) => s.starts_with(id_prefix),
                    Id::Int(v) => v.to_string().starts_with(id_prefix),
                },
            },
        }
    }
}

/// L2 key of one entry.
pub(crate) fn l2_key(namespace: &str, resource: &str, version: u32, id: &Id) -> String {
    format!("{namespace}:{resource}:v{version}:{id}")
}

/// L2 key of the load lock of one entry.
pub(crate) fn lock_key(value_key: &str) -> String {
    format!("{value_key}:lock")
}

/// The Redis `SCAN MATCH` pattern for a purge of the logical prefix `prefix`
/// (`""` for everything, `users` or `users:12`), across every version.
pub(crate) fn l2_pattern(namespace: &str, prefix: &str) -> String {
    let mut pattern = glob_escape(namespace);
    pattern.push(':');
    match prefix.split_once(':') {
        None => pattern.push_str(&glob_escape(prefix)),
        Some((resource, id_prefix)) => {
            pattern.push_str(&glob_escape(resource));
            pattern.push_str(":v*:");
            pattern.push_str(&glob_escape(id_prefix));
        }
    }
    pattern.push('*');
    pattern
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_the_logical_key() {
        let k = Key::new("users", Id::Int(123));
        for yes in ["", "u", "users", "users:", "users:1", "users:123"] {
            assert!(k.has_prefix(yes), "{yes}");
            assert!(k.logical().starts_with(yes), "{yes}");
        }
        for no in ["products", "users:2", "users:1234", "usersx", "users:123:"] {
            assert!(!k.has_prefix(no), "{no}");
            assert!(!k.logical().starts_with(no), "{no}");
        }
    }

    #[test]
    fn l2_keys_are_namespaced_and_versioned() {
        assert_eq!(l2_key("ss", "users", 3, &Id::Int(42)), "ss:users:v3:42");
        assert_eq!(l2_pattern("ss", ""), "ss:*");
        assert_eq!(l2_pattern("ss", "users"), "ss:users*");
        assert_eq!(l2_pattern("ss", "users:4"), "ss:users:v*:4*");
        assert_eq!(l2_pattern("ss", "r:/a*b"), "ss:r:v*:/a\\*b*");
    }
}
