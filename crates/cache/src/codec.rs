//! How values are serialized for the L2 and the write-behind log: MessagePack
//! (rmp-serde) with structs as arrays, which keeps field names out of every
//! value, behind a one-byte tag that also encodes "not found" for negative
//! caching.
//!
//! Because field names are not stored, a changed struct must come with a new
//! resource version (see [`crate::key`]); decoding errors are treated as
//! misses, never as failures of the caller's request.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Tag of a cached "not found".
const ABSENT: u8 = 0;
/// Tag of a present value in MessagePack.
const PRESENT: u8 = 1;

/// Encoder and decoder of one value type, as plain function pointers so that
/// resources stay cheap to clone and need no trait objects.
pub(crate) struct Codec<V> {
    pub(crate) encode: fn(&V) -> Result<Vec<u8>, String>,
    pub(crate) decode: fn(&[u8]) -> Result<V, String>,
}

impl<V> Clone for Codec<V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<V> Copy for Codec<V> {}

impl<V: Serialize + DeserializeOwned> Codec<V> {
    pub(crate) fn msgpack() -> Self {
        Codec {
            encode: |v| rmp_serde::to_vec(v).map_err(|e| e.to_string()),
            decode: |b| rmp_serde::from_slice(b).map_err(|e| e.to_string()),
        }
    }
}

impl<V> Codec<V> {
    /// The L2 payload of a value or of "not found".
    pub(crate) fn encode_l2(&self, value: Option<&V>) -> Result<Vec<u8>, String> {
        match value {
            None => Ok(vec![ABSENT]),
            Some(v) => {
                let body = (self.encode)(v)?;
                let mut out = Vec::with_capacity(body.len() + 1);
                out.push(PRESENT);
                out.extend_from_slice(&body);
                Ok(out)
            }
        }
    }

    /// Decodes an L2 payload: `Ok(None)` is a cached "not found".
    pub(crate) fn decode_l2(&self, bytes: &[u8]) -> Result<Option<V>, String> {
        match bytes.split_first() {
            Some((&ABSENT, [])) => Ok(None),
            Some((&PRESENT, body)) => (self.decode)(body).map(Some),
            _ => Err("unknown cache payload tag".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: i64,
        name: String,
        email: String,
    }

    #[test]
    fn values_round_trip_compactly() {
        let codec = Codec::<User>::msgpack();
        let user = User {
            id: 42,
            name: "Ada".into(),
            email: "ada@example.com".into(),
        };
        let bytes = codec.encode_l2(Some(&user)).unwrap();
        // Tag + array header + 1-byte int + two short strings: no field names.
        assert!(
            bytes.len() < 1 + 1 + 1 + 4 + 16 + 2,
            "{} bytes",
            bytes.len()
        );
        assert_eq!(codec.decode_l2(&bytes).unwrap(), Some(user));
        assert_eq!(
            codec.decode_l2(&codec.encode_l2(None).unwrap()).unwrap(),
            None
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let codec = Codec::<User>::msgpack();
        assert!(codec.decode_l2(&[]).is_err());
        assert!(codec.decode_l2(&[7, 1, 2]).is_err());
        assert!(codec.decode_l2(&[PRESENT, 0xc1]).is_err());
        assert!(codec.decode_l2(&[ABSENT, 0]).is_err());
    }
}
