//! Read-your-writes over HTTP: the `Consistency-Token` header.
//!
//! Every write to a database with replicas answers with a
//! `Consistency-Token` header (see `scalestack_store::ConsistencyToken`). A
//! client that sends its tokens back (comma-separated, one per database it
//! wrote to) on later reads never sees data older than its own writes: a read
//! of a database it holds a token for skips the cache and goes to a replica
//! that has replayed the write, or to the primary. Reads without a token are
//! served from the cache and the replicas as usual.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Response};
use scalestack_store::{Consistency, ConsistencyToken, DbId};

use super::error::ApiError;

/// The header that carries tokens, in both directions.
pub const HEADER: &str = "consistency-token";

/// The tokens a request carries (possibly none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens(pub Vec<ConsistencyToken>);

impl Tokens {
    /// How fresh a read of database `db` must be.
    pub fn for_db(&self, db: DbId) -> Consistency {
        self.0
            .iter()
            .filter(|t| t.db == db)
            .max_by_key(|t| t.lsn)
            .map_or(Consistency::Eventual, |t| Consistency::AtLeast(*t))
    }

    /// Whether the request holds a token for `db` (and so must skip caches).
    pub fn covers(&self, db: DbId) -> bool {
        self.0.iter().any(|t| t.db == db)
    }

    /// How fresh a read of several databases must be: the primaries when
    /// the request holds any token (one read cannot honour several tokens).
    pub fn for_all(&self) -> Consistency {
        if self.0.is_empty() {
            Consistency::Eventual
        } else {
            Consistency::Primary
        }
    }
}

/// Parses the `Consistency-Token` headers of a request.
pub fn parse(values: &[&str]) -> Result<Tokens, ApiError> {
    let mut tokens = Vec::new();
    for value in values {
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let token = part.parse::<ConsistencyToken>().map_err(|e| {
                ApiError::bad_request("invalid_consistency_token", format!("{e}; got {part:?}"))
                    .with_field("Consistency-Token")
            })?;
            tokens.push(token);
        }
    }
    Ok(Tokens(tokens))
}

impl<S: Send + Sync> FromRequestParts<S> for Tokens {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let values: Vec<&str> = parts
            .headers
            .get_all(HEADER)
            .iter()
            .map(|v| {
                v.to_str().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_consistency_token",
                        "the Consistency-Token header is not ASCII",
                    )
                    .with_field("Consistency-Token")
                })
            })
            .collect::<Result<_, _>>()?;
        parse(&values)
    }
}

/// Adds the token of a write to its response.
pub fn attach<B>(response: &mut Response<B>, token: Option<ConsistencyToken>) {
    if let Some(token) = token
        && let Ok(value) = HeaderValue::from_str(&token.to_string())
    {
        response.headers_mut().insert(HEADER, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_pick_their_database() {
        let tokens = parse(&["shard-1:0/10, shard-1:0/20", "catalog:0/5"]).unwrap();
        assert_eq!(tokens.0.len(), 3);
        assert!(matches!(tokens.for_db(DbId::Shard(1)), Consistency::AtLeast(t) if t.lsn == 0x20));
        assert_eq!(tokens.for_db(DbId::Shard(2)), Consistency::Eventual);
        assert!(tokens.covers(DbId::Catalog));
        assert_eq!(tokens.for_all(), Consistency::Primary);
        assert_eq!(parse(&[]).unwrap().for_all(), Consistency::Eventual);
        let err = parse(&["shard-1"]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("Consistency-Token"));
    }
}
