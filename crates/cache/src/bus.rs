//! The invalidation bus: after a write, tell every other instance to drop its
//! L1 copy of the key.
//!
//! Two transports carry the same messages:
//!
//! * **Redis pub/sub** when an L2 is configured: one channel per namespace;
//!   any node of a cluster receives what is published anywhere in it.
//! * **UDP datagrams to the peers** in the embedded stack, where there is no
//!   Redis but the api instances are processes of one binary whose addresses
//!   are in the config. Each instance receives on the UDP port with the same
//!   number as its HTTP (TCP) port, so no new port needs configuring and the
//!   supervisor's port preflight already covers it.
//!
//! Both transports can lose messages (a full socket buffer, a dropped Redis
//! connection). Loss is made *detectable* instead of impossible: every sender
//! numbers its messages (`origin`, a random id per process start, and `seq`),
//! and also sends a heartbeat carrying its last number. A receiver that sees a
//! number jump, or a heartbeat ahead of what it received, purges its whole L1:
//! a burst of misses instead of stale data. A message that failed to send
//! still consumed its number, so the gap shows up as soon as the next message
//! or heartbeat arrives. The Redis subscriber also hears its own heartbeats;
//! when they stop coming back it declares the bus down, purges its L1, and
//! keeps new entries no longer than one heartbeat interval until they return.
//!
//! Messages only ever remove entries, so a forged or replayed datagram can
//! cost a reload but never serve a wrong value; datagrams are accepted only
//! from the configured peer addresses.
//!
//! This module owns the wire format, the numbering and the receive loops; what
//! an event does to the L1 is [`crate::cache::Inner::receive`]'s business.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::cache::Inner;
use crate::key::Id;
use crate::l2::L2;
use crate::metrics::INVALIDATIONS;

/// Version of the wire format; messages of another version are ignored.
const WIRE_VERSION: u8 = 1;

/// Most origins remembered; beyond it the table is cleared (which can cost
/// one spurious purge per live peer, never a missed invalidation).
const MAX_ORIGINS: usize = 1024;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Event {
    /// Nothing; carries the sender's last message number.
    Heartbeat,
    /// Drop one key.
    Invalidate {
        /// Resource name.
        resource: String,
        /// Entry id.
        id: Id,
    },
    /// Drop every key whose `resource:id` starts with the prefix ("" = all).
    Purge {
        /// Logical key prefix.
        prefix: String,
    },
}

/// One message on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) version: u8,
    pub(crate) origin: u64,
    pub(crate) seq: u64,
    /// Wall-clock send time in microseconds since the epoch, for the lag metric.
    pub(crate) sent_us: u64,
    pub(crate) event: Event,
}

impl Envelope {
    pub(crate) fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("envelopes always serialize")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Envelope> {
        rmp_serde::from_slice::<Envelope>(bytes)
            .ok()
            .filter(|e| e.version == WIRE_VERSION)
    }
}

pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Where messages go.
pub(crate) enum Outbound {
    Off,
    Udp {
        socket: Arc<UdpSocket>,
        peers: Vec<SocketAddr>,
    },
    Redis {
        l2: Arc<L2>,
        channel: String,
    },
}

/// The sending side.
pub(crate) struct Bus {
    pub(crate) origin: u64,
    seq: AtomicU64,
    out: Outbound,
}

impl Bus {
    pub(crate) fn new(out: Outbound) -> Self {
        Self {
            origin: rand::random::<u64>(),
            seq: AtomicU64::new(0),
            out,
        }
    }

    /// `udp`, `redis` or `off`: the metric label.
    pub(crate) fn transport(&self) -> &'static str {
        match self.out {
            Outbound::Off => "off",
            Outbound::Udp { .. } => "udp",
            Outbound::Redis { .. } => "redis",
        }
    }

    pub(crate) fn is_off(&self) -> bool {
        matches!(self.out, Outbound::Off)
    }

    /// Numbers and sends one event. A failed send is not retried: its number
    /// is spent, so receivers notice the gap and purge.
    pub(crate) async fn send(&self, event: Event) {
        if self.is_off() {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.deliver(seq, event).await;
    }

    /// Sends the last number used, so that receivers can spot lost messages.
    pub(crate) async fn heartbeat(&self) {
        if self.is_off() {
            return;
        }
        let seq = self.seq.load(Ordering::Acquire);
        self.deliver(seq, Event::Heartbeat).await;
    }

    async fn deliver(&self, seq: u64, event: Event) {
        let envelope = Envelope {
            version: WIRE_VERSION,
            origin: self.origin,
            seq,
            sent_us: now_us(),
            event,
        };
        let bytes = envelope.encode();
        let transport = self.transport();
        match &self.out {
            Outbound::Off => return,
            Outbound::Udp { socket, peers } => {
                for peer in peers {
                    if let Err(error) = socket.send_to(&bytes, peer).await {
                        tracing::debug!(%peer, %error, "invalidation datagram not sent");
                    }
                }
            }
            Outbound::Redis { l2, channel } => {
                l2.publish(channel, &bytes).await;
            }
        }
        metrics::counter!(INVALIDATIONS, "direction" => "sent", "transport" => transport)
            .increment(1);
    }
}

/// Last message number seen per origin.
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    last: HashMap<u64, u64>,
}

impl GapTracker {
    /// Records a message; `true` if messages of this origin were lost before it.
    pub(crate) fn observe(&mut self, origin: u64, seq: u64, heartbeat: bool) -> bool {
        if !self.last.contains_key(&origin) && self.last.len() >= MAX_ORIGINS {
            self.last.clear();
        }
        let last = self.last.entry(origin).or_insert(0);
        let expected = if heartbeat { *last } else { *last + 1 };
        let gap = seq > expected;
        if seq > *last {
            *last = seq;
        }
        gap
    }
}

/// Receives datagrams from the peers until shutdown.
pub(crate) async fn udp_loop(
    socket: Arc<UdpSocket>,
    peers: Vec<SocketAddr>,
    inner: Weak<Inner>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peers: HashSet<SocketAddr> = peers.into_iter().collect();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { continue };
                if !peers.contains(&from) {
                    tracing::debug!(%from, "invalidation datagram from an unknown address ignored");
                    continue;
                }
                let Some(envelope) = Envelope::decode(&buf[..n]) else { continue };
                let Some(inner) = inner.upgrade() else { return };
                inner.receive(envelope, "udp").await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Subscribes to the channel, reconnecting until shutdown, and watches the
/// subscription through this process's own heartbeats.
pub(crate) async fn redis_loop(
    urls: Vec<String>,
    channel: String,
    heartbeat: Duration,
    inner: Weak<Inner>,
    mut shutdown: watch::Receiver<bool>,
) {
    let silence = heartbeat * 3;
    let mut attempt = 0usize;
    loop {
        let url = urls[attempt % urls.len().max(1)].clone();
        attempt += 1;
        let subscribed = tokio::time::timeout(silence, async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = subscribed {
            let mut stream = pubsub.into_on_message();
            loop {
                tokio::select! {
                    next = tokio::time::timeout(silence, stream.next()) => {
                        // Closed, or not even our own heartbeat for three
                        // intervals: the subscription is not working.
                        let Ok(Some(msg)) = next else { break };
                        let Some(envelope) = Envelope::decode(msg.get_payload_bytes()) else {
                            continue;
                        };
                        let Some(inner) = inner.upgrade() else { return };
                        if envelope.origin == inner.bus.origin {
                            inner.set_bus_up(true);
                            continue;
                        }
                        inner.receive(envelope, "redis").await;
                    }
                    _ = shutdown.changed() => return,
                }
            }
        }
        match inner.upgrade() {
            Some(inner) => inner.set_bus_up(false),
            None => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(heartbeat.min(Duration::from_secs(1))) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Sends a heartbeat every `interval` until shutdown.
pub(crate) async fn heartbeat_loop(
    interval: Duration,
    inner: Weak<Inner>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                inner.bus.heartbeat().await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_messages_are_not_gaps() {
        let mut t = GapTracker::default();
        assert!(!t.observe(1, 1, false));
        assert!(!t.observe(1, 2, false));
        assert!(!t.observe(1, 2, true), "heartbeat at the last number");
        assert!(!t.observe(2, 1, false), "origins are independent");
    }

    #[test]
    fn a_skipped_number_is_a_gap() {
        let mut t = GapTracker::default();
        assert!(!t.observe(1, 1, false));
        assert!(t.observe(1, 3, false));
        assert!(!t.observe(1, 4, false));
        assert!(
            !t.observe(1, 2, false),
            "a late duplicate is applied, not a gap"
        );
    }

    #[test]
    fn a_heartbeat_ahead_of_the_messages_is_a_gap() {
        let mut t = GapTracker::default();
        assert!(!t.observe(1, 0, true), "a fresh sender");
        assert!(t.observe(1, 2, true), "two messages never arrived");
        assert!(!t.observe(1, 2, true));
    }

    #[test]
    fn the_first_message_of_an_unknown_sender_after_others_is_a_gap() {
        let mut t = GapTracker::default();
        assert!(t.observe(9, 5, false));
    }

    #[test]
    fn envelopes_round_trip_and_foreign_versions_are_ignored() {
        let e = Envelope {
            version: WIRE_VERSION,
            origin: 7,
            seq: 3,
            sent_us: 1,
            event: Event::Invalidate {
                resource: "users".into(),
                id: Id::Int(42),
            },
        };
        assert_eq!(Envelope::decode(&e.encode()), Some(e.clone()));
        let other = Envelope { version: 9, ..e };
        assert_eq!(Envelope::decode(&other.encode()), None);
        assert_eq!(Envelope::decode(b"garbage"), None);
    }
}
