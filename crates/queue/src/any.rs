//! The backend chosen by the configuration (`queue.backend`).
//!
//! Processes that only know the configuration (the api servers, the worker,
//! the CLI) open an [`AnyQueue`] and use it through [`Backend`]; code that
//! knows its backend (tests, benchmarks) uses the concrete type directly.

use std::time::Duration;

use scalestack_config::{Config, QueueBackendKind};

use crate::dlq::{DeadLetter, DlqScope, DlqTarget};
use crate::embedded::{EmbeddedOptions, EmbeddedQueue};
use crate::jetstream::{JetStreamOptions, JetStreamQueue};
use crate::{Backend, Delivery, Failure, GroupStats, Message, Published, QueueError, TopicSpec};

/// Either backend.
#[derive(Debug, Clone)]
pub enum AnyQueue {
    /// The embedded SQLite queue.
    Embedded(EmbeddedQueue),
    /// NATS JetStream.
    Nats(JetStreamQueue),
}

impl AnyQueue {
    /// Opens the backend that `config.queue.backend` names.
    pub async fn open(config: &Config) -> Result<Self, QueueError> {
        Ok(match config.queue.backend {
            QueueBackendKind::Embedded => {
                AnyQueue::Embedded(EmbeddedQueue::open(EmbeddedOptions::from_config(config)).await?)
            }
            QueueBackendKind::Nats => AnyQueue::Nats(
                JetStreamQueue::connect(JetStreamOptions::from_config(config)).await?,
            ),
        })
    }
}

/// Forwards a call to whichever backend this is.
macro_rules! forward {
    ($self:ident, $q:ident => $call:expr) => {
        match $self {
            AnyQueue::Embedded($q) => $call.await,
            AnyQueue::Nats($q) => $call.await,
        }
    };
}

impl Backend for AnyQueue {
    fn kind(&self) -> &'static str {
        match self {
            AnyQueue::Embedded(q) => q.kind(),
            AnyQueue::Nats(q) => q.kind(),
        }
    }

    fn ack_deadline(&self) -> Duration {
        match self {
            AnyQueue::Embedded(q) => q.ack_deadline(),
            AnyQueue::Nats(q) => q.ack_deadline(),
        }
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), QueueError> {
        forward!(self, q => q.ensure_topic(spec))
    }

    async fn prepare_group(
        &self,
        topic: &str,
        group: &str,
        batch_size: usize,
    ) -> Result<(), QueueError> {
        forward!(self, q => q.prepare_group(topic, group, batch_size))
    }

    async fn publish(
        &self,
        topic: &str,
        messages: &[Message],
    ) -> Result<Vec<Published>, QueueError> {
        forward!(self, q => q.publish(topic, messages))
    }

    async fn fetch(
        &self,
        topic: &str,
        group: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        forward!(self, q => q.fetch(topic, group, max, wait))
    }

    async fn ack(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        forward!(self, q => q.ack(deliveries))
    }

    async fn nak(
        &self,
        delivery: &Delivery,
        delay: Duration,
        failure: &Failure,
    ) -> Result<(), QueueError> {
        forward!(self, q => q.nak(delivery, delay, failure))
    }

    async fn extend(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        forward!(self, q => q.extend(deliveries))
    }

    async fn dead_letter(&self, delivery: &Delivery, failure: &Failure) -> Result<(), QueueError> {
        forward!(self, q => q.dead_letter(delivery, failure))
    }

    async fn group_stats(&self, topic: &str, group: &str) -> Result<GroupStats, QueueError> {
        forward!(self, q => q.group_stats(topic, group))
    }

    async fn dlq_list(
        &self,
        scope: &DlqScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, QueueError> {
        forward!(self, q => q.dlq_list(scope, after, limit))
    }

    async fn dlq_get(&self, id: u64) -> Result<Option<DeadLetter>, QueueError> {
        forward!(self, q => q.dlq_get(id))
    }

    async fn dlq_depth(&self, scope: &DlqScope) -> Result<u64, QueueError> {
        forward!(self, q => q.dlq_depth(scope))
    }

    async fn dlq_redrive(&self, target: &DlqTarget) -> Result<u64, QueueError> {
        forward!(self, q => q.dlq_redrive(target))
    }

    async fn dlq_purge(&self, target: &DlqTarget) -> Result<u64, QueueError> {
        forward!(self, q => q.dlq_purge(target))
    }
}
