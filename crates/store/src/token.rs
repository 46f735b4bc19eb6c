//! Names of the store's databases and the read-your-writes token.
//!
//! A [`ConsistencyToken`] is handed out with every write to a database that
//! has replicas: the database and the primary's WAL position right after the
//! commit. A read that presents it is served by a replica only if that
//! replica has replayed at least that far, else by the primary; so a client
//! that passes its last token along never reads data older than its own
//! writes, while every other read still goes to the replicas.
//!
//! The text form is `shard-3:0/16B3748` (PostgreSQL's LSN notation after the
//! database's name): short, opaque to clients, and readable in a log.

use std::fmt;
use std::str::FromStr;

/// One database of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DbId {
    /// The unsharded catalog.
    Catalog,
    /// User shard N.
    Shard(u16),
}

impl fmt::Display for DbId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbId::Catalog => f.write_str("catalog"),
            DbId::Shard(i) => write!(f, "shard-{i}"),
        }
    }
}

impl FromStr for DbId {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "catalog" {
            return Ok(DbId::Catalog);
        }
        s.strip_prefix("shard-")
            .filter(|n| !n.starts_with('+'))
            .and_then(|n| n.parse().ok())
            .map(DbId::Shard)
            .ok_or(TokenError)
    }
}

/// Proof of a write: the database it went to and the WAL position of its
/// commit on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConsistencyToken {
    /// The database written.
    pub db: DbId,
    /// The primary's WAL position after the commit (a byte offset).
    pub lsn: u64,
}

/// A token that does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a consistency token looks like `shard-3:0/16B3748`")]
pub struct TokenError;

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{:X}/{:X}",
            self.db,
            self.lsn >> 32,
            self.lsn & 0xffff_ffff
        )
    }
}

impl FromStr for ConsistencyToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (db, lsn) = s.split_once(':').ok_or(TokenError)?;
        let (hi, lo) = lsn.split_once('/').ok_or(TokenError)?;
        let hex = |part: &str| {
            if part.is_empty() || part.len() > 8 || part.starts_with('+') {
                return Err(TokenError);
            }
            u32::from_str_radix(part, 16).map_err(|_| TokenError)
        };
        Ok(ConsistencyToken {
            db: db.parse()?,
            lsn: (u64::from(hex(hi)?) << 32) | u64::from(hex(lo)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_read_like_lsns() {
        let token = ConsistencyToken {
            db: DbId::Shard(3),
            lsn: (1 << 32) | 0x16B_3748,
        };
        assert_eq!(token.to_string(), "shard-3:1/16B3748");
        assert_eq!(
            "catalog:0/0".parse::<ConsistencyToken>().unwrap().db,
            DbId::Catalog
        );
        for bad in [
            "",
            "shard-3",
            "shard-3:12",
            "shard-x:0/1",
            "shard-1:0/1/2",
            "shard-1:/1",
            "shard-1:0/123456789",
            "shard-+1:0/1",
            "users:0/1",
        ] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn tokens_round_trip(shard: u16, lsn: u64, catalog: bool) {
            let token = ConsistencyToken {
                db: if catalog { DbId::Catalog } else { DbId::Shard(shard) },
                lsn,
            };
            prop_assert_eq!(token.to_string().parse::<ConsistencyToken>(), Ok(token));
        }
    }
}
