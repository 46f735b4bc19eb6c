//! Dead letters: messages a consumer group gave up on, with why and when.
//!
//! A dead letter belongs to one group of one topic: redriving it delivers it
//! to that group again and to no other. The records serialize to JSON for the
//! CLI (`scalestack dlq`), an admin API and the JetStream backend, which
//! stores each one as a message of its dead-letter stream. The operations
//! themselves are methods of [`crate::Backend`].

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{Delivery, Failure, Message, QueueError};

/// One failed attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Which attempt (1 = first delivery).
    pub attempt: u32,
    /// When it failed, in ms since the Unix epoch.
    pub at_ms: i64,
    /// The handler's error.
    pub error: String,
    /// The backoff chosen before the next attempt; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// A message that went to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Id within the dead-letter queue (used by show, redrive and purge).
    pub id: u64,
    /// The topic it came from.
    pub topic: String,
    /// The group that gave up on it.
    pub group: String,
    /// Its partition.
    pub partition: u32,
    /// Its position in the topic when it failed.
    pub seq: u64,
    /// The message id.
    pub message_id: String,
    /// The partition key.
    pub key: String,
    /// The payload when it is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// The payload in base64 when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// The message's headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// When it was published, ms since the Unix epoch.
    pub published_at_ms: i64,
    /// Deliveries made before giving up.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// True when the handler said retrying cannot help.
    pub permanent: bool,
    /// Every failed attempt, oldest first, the last one included.
    pub history: Vec<AttemptRecord>,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_at_ms: i64,
}

impl DeadLetter {
    /// The record for `delivery`, which failed finally with `failure` after
    /// the earlier failures in `history`.
    pub(crate) fn from_delivery(
        id: u64,
        delivery: &Delivery,
        failure: &Failure,
        mut history: Vec<AttemptRecord>,
    ) -> Self {
        history.push(AttemptRecord {
            attempt: delivery.attempt,
            at_ms: failure.at_ms,
            error: failure.error.clone(),
            retry_in_ms: None,
        });
        let (payload, payload_base64) = encode_payload(&delivery.message.payload);
        Self {
            id,
            topic: delivery.topic.clone(),
            group: delivery.group.clone(),
            partition: delivery.partition,
            seq: delivery.seq,
            message_id: delivery.message.id.clone(),
            key: delivery.message.key.clone(),
            payload,
            payload_base64,
            headers: delivery.message.headers.clone(),
            published_at_ms: delivery.published_at_ms,
            attempts: delivery.attempt,
            error: failure.error.clone(),
            permanent: failure.permanent,
            history,
            dead_at_ms: failure.at_ms,
        }
    }

    /// The payload's bytes, whichever way they were stored.
    pub fn payload_bytes(&self) -> Result<Bytes, QueueError> {
        match (&self.payload, &self.payload_base64) {
            (Some(text), _) => Ok(Bytes::from(text.clone().into_bytes())),
            (None, Some(b64)) => {
                BASE64
                    .decode(b64)
                    .map(Bytes::from)
                    .map_err(|e| QueueError::Decode {
                        what: "dead letter payload",
                        message: e.to_string(),
                    })
            }
            (None, None) => Ok(Bytes::new()),
        }
    }

    /// The message as it was published, for a redrive.
    pub fn message(&self) -> Result<Message, QueueError> {
        Ok(Message {
            id: self.message_id.clone(),
            key: self.key.clone(),
            payload: self.payload_bytes()?,
            headers: self.headers.clone(),
        })
    }
}

/// Splits a payload into its text or base64 form.
fn encode_payload(payload: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(payload) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(payload))),
    }
}

/// Which dead letters an operation looks at: all, one topic's, or one group's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlqScope {
    /// Only this topic.
    pub topic: Option<String>,
    /// Only this group (of any topic unless `topic` is set).
    pub group: Option<String>,
}

impl DlqScope {
    /// Every dead letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// The dead letters of one group of one topic.
    pub fn group(topic: &str, group: &str) -> Self {
        Self {
            topic: Some(topic.to_owned()),
            group: Some(group.to_owned()),
        }
    }

    /// Whether a dead letter of `topic` and `group` is in scope.
    pub fn contains(&self, topic: &str, group: &str) -> bool {
        self.topic.as_deref().is_none_or(|t| t == topic)
            && self.group.as_deref().is_none_or(|g| g == group)
    }

    pub(crate) fn validate(&self) -> Result<(), QueueError> {
        if let Some(topic) = &self.topic {
            crate::validate_name("topic", topic)?;
        }
        if let Some(group) = &self.group {
            crate::validate_name("group", group)?;
        }
        Ok(())
    }
}

/// What a redrive or purge acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqTarget {
    /// One dead letter by id.
    One(u64),
    /// Every dead letter in a scope.
    All(DlqScope),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_as_text_or_base64() {
        for payload in [&b"{\"order\":1}"[..], &[0xff, 0x00, 0xfe][..], &b""[..]] {
            let (text, b64) = encode_payload(payload);
            let letter = DeadLetter {
                id: 1,
                topic: "t".into(),
                group: "g".into(),
                partition: 0,
                seq: 1,
                message_id: "m".into(),
                key: "k".into(),
                payload: text,
                payload_base64: b64,
                headers: BTreeMap::new(),
                published_at_ms: 0,
                attempts: 1,
                error: "e".into(),
                permanent: false,
                history: Vec::new(),
                dead_at_ms: 0,
            };
            let json = serde_json::to_string(&letter).unwrap();
            let back: DeadLetter = serde_json::from_str(&json).unwrap();
            assert_eq!(back.payload_bytes().unwrap().as_ref(), payload);
        }
    }

    #[test]
    fn scope_filters_by_topic_and_group() {
        assert!(DlqScope::all().contains("a", "b"));
        assert!(DlqScope::group("a", "b").contains("a", "b"));
        assert!(!DlqScope::group("a", "b").contains("a", "c"));
        let by_group = DlqScope {
            topic: None,
            group: Some("g".into()),
        };
        assert!(by_group.contains("x", "g") && !by_group.contains("x", "h"));
    }
}
