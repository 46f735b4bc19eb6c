//! A model test of the embedded queue: random sequences of publishes,
//! fetches, acks, naks, dead letters, abandoned deliveries (a crashed
//! consumer) and clock steps, checked after every step against a simple
//! reference of what each group may be handed, and drained at the end to
//! check that nothing was lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use scalestack_queue::embedded::{EmbeddedOptions, EmbeddedQueue};
use scalestack_queue::{
    Backend, Clock, Delivery, DlqScope, Failure, ManualClock, Message, TopicSpec, partition_of,
};

const PARTITIONS: u32 = 3;
const GROUPS: [&str; 2] = ["a", "b"];
const DEADLINE_MS: i64 = 1_000;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        key: u8,
    },
    Fetch {
        group: usize,
        max: usize,
    },
    Ack {
        group: usize,
        pick: usize,
    },
    Nak {
        group: usize,
        pick: usize,
        delay_ms: u64,
    },
    Dead {
        group: usize,
        pick: usize,
    },
    Abandon {
        group: usize,
        pick: usize,
    },
    Advance {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u8..6).prop_map(|key| Op::Publish { key }),
        4 => (0usize..2, 1usize..5).prop_map(|(group, max)| Op::Fetch { group, max }),
        3 => (0usize..2, any::<usize>()).prop_map(|(group, pick)| Op::Ack { group, pick }),
        1 => (0usize..2, any::<usize>(), 0u64..3_000)
            .prop_map(|(group, pick, delay_ms)| Op::Nak { group, pick, delay_ms }),
        1 => (0usize..2, any::<usize>()).prop_map(|(group, pick)| Op::Dead { group, pick }),
        1 => (0usize..2, any::<usize>()).prop_map(|(group, pick)| Op::Abandon { group, pick }),
        2 => (0u64..2_500).prop_map(|ms| Op::Advance { ms }),
    ]
}

/// Where a message stands for one group, in the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Not yet delivered.
    New,
    /// Held by the delivery of generation `generation` until `until`.
    InFlight {
        until: i64,
        attempt: u32,
        generation: u64,
    },
    /// Waiting for a retry at `due`.
    Scheduled { due: i64, attempt: u32 },
    /// Acknowledged or dead-lettered.
    Done,
}

/// The reference of one group.
#[derive(Debug, Default)]
struct GroupModel {
    state: HashMap<String, State>,
    /// Deliveries the test holds, with their generation.
    held: Vec<(Delivery, u64)>,
    dead: u64,
}

struct Model {
    /// Published ids in order, with their partitions.
    published: Vec<(String, u32)>,
    groups: Vec<GroupModel>,
    generation: u64,
}

impl Model {
    fn live_in_flight(&self, g: usize, partition: u32, now: i64) -> bool {
        self.published.iter().any(|(id, p)| {
            *p == partition
                && matches!(self.groups[g].state[id], State::InFlight { until, .. } if until > now)
        })
    }

    /// Whether a settlement of `generation` still applies to `id`.
    fn current(&self, g: usize, id: &str, generation: u64) -> bool {
        matches!(self.groups[g].state[id], State::InFlight { generation: cur, .. } if cur == generation)
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut options = EmbeddedOptions::new(dir.path().join("q.db"))
        .with_clock(Arc::new(clock.clone()))
        .with_ack_deadline(Duration::from_millis(DEADLINE_MS as u64));
    options.poll_interval = Duration::from_millis(1);
    let q = EmbeddedQueue::open(options).await.unwrap();
    q.ensure_topic(&TopicSpec::new("m", PARTITIONS, &GROUPS))
        .await
        .unwrap();
    let mut model = Model {
        published: Vec::new(),
        groups: (0..GROUPS.len()).map(|_| GroupModel::default()).collect(),
        generation: 0,
    };
    let fail = |at_ms| Failure {
        error: "model".into(),
        permanent: false,
        at_ms,
    };

    for op in ops {
        let now = clock.now_ms();
        match op {
            Op::Publish { key } => {
                let id = format!("m{}", model.published.len());
                let key = format!("k{key}");
                q.publish("m", &[Message::new(id.clone(), key.clone(), "x")])
                    .await
                    .unwrap();
                model
                    .published
                    .push((id.clone(), partition_of(&key, PARTITIONS)));
                for g in &mut model.groups {
                    g.state.insert(id.clone(), State::New);
                }
            }
            Op::Fetch { group, max } => {
                let got = q
                    .fetch("m", GROUPS[group], max, Duration::ZERO)
                    .await
                    .unwrap();
                if got.is_empty() {
                    continue;
                }
                prop_assert!(got.len() <= max);
                let partition = got[0].partition;
                prop_assert!(
                    got.iter().all(|d| d.partition == partition),
                    "mixed partitions"
                );
                prop_assert!(
                    !model.live_in_flight(group, partition, now),
                    "partition {partition} handed out twice"
                );
                // First deliveries must be the partition's oldest new messages, in order.
                let new_of_partition: Vec<&String> = model
                    .published
                    .iter()
                    .filter(|(id, p)| {
                        *p == partition && model.groups[group].state[id] == State::New
                    })
                    .map(|(id, _)| id)
                    .collect();
                let firsts: Vec<&String> = got
                    .iter()
                    .filter(|d| d.attempt == 1)
                    .map(|d| &d.message.id)
                    .collect();
                prop_assert_eq!(&firsts[..], &new_of_partition[..firsts.len()]);
                model.generation += 1;
                let generation = model.generation;
                for d in &got {
                    let state = model.groups[group].state[&d.message.id];
                    let attempt = match state {
                        State::New => 1,
                        State::InFlight { until, attempt, .. } => {
                            prop_assert!(until <= now, "redelivered before its deadline");
                            attempt + 1
                        }
                        State::Scheduled { due, attempt } => {
                            prop_assert!(due <= now, "redelivered before its delay");
                            attempt + 1
                        }
                        State::Done => {
                            return Err(TestCaseError::fail(format!(
                                "{} delivered after it was settled",
                                d.message.id
                            )));
                        }
                    };
                    prop_assert_eq!(d.attempt, attempt);
                    model.groups[group].state.insert(
                        d.message.id.clone(),
                        State::InFlight {
                            until: now + DEADLINE_MS,
                            attempt,
                            generation,
                        },
                    );
                    model.groups[group].held.push((d.clone(), generation));
                }
            }
            Op::Ack { group, pick }
            | Op::Nak { group, pick, .. }
            | Op::Dead { group, pick }
            | Op::Abandon { group, pick } => {
                let held = &mut model.groups[group].held;
                if held.is_empty() {
                    continue;
                }
                let (d, generation) = held.remove(pick % held.len());
                let current = model.current(group, &d.message.id, generation);
                let state = &mut model.groups[group].state;
                match op {
                    Op::Ack { .. } => {
                        q.ack(std::slice::from_ref(&d)).await.unwrap();
                        if current {
                            state.insert(d.message.id.clone(), State::Done);
                        }
                    }
                    Op::Nak { delay_ms, .. } => {
                        q.nak(&d, Duration::from_millis(delay_ms), &fail(now))
                            .await
                            .unwrap();
                        if current {
                            state.insert(
                                d.message.id.clone(),
                                State::Scheduled {
                                    due: now + delay_ms as i64,
                                    attempt: d.attempt,
                                },
                            );
                        }
                    }
                    Op::Dead { .. } => {
                        q.dead_letter(&d, &fail(now)).await.unwrap();
                        if current {
                            state.insert(d.message.id.clone(), State::Done);
                            model.groups[group].dead += 1;
                        }
                    }
                    _ => {}
                }
            }
            Op::Advance { ms } => clock.advance(Duration::from_millis(ms)),
        }
    }

    // Drain: whatever is left comes back and can be finished; nothing is lost.
    for (g, group) in GROUPS.iter().enumerate() {
        clock.advance(Duration::from_secs(3_600));
        loop {
            let got = q.fetch("m", group, 10, Duration::ZERO).await.unwrap();
            if got.is_empty() {
                break;
            }
            for d in &got {
                prop_assert!(
                    model.groups[g].state[&d.message.id] != State::Done,
                    "{} came back after it was settled",
                    d.message.id
                );
                model.groups[g]
                    .state
                    .insert(d.message.id.clone(), State::Done);
            }
            q.ack(&got).await.unwrap();
        }
        let lost: Vec<&String> = model
            .published
            .iter()
            .map(|(id, _)| id)
            .filter(|id| model.groups[g].state[*id] != State::Done)
            .collect();
        prop_assert!(lost.is_empty(), "group {group} lost {lost:?}");
        prop_assert_eq!(q.group_stats("m", group).await.unwrap().lag(), 0);
        prop_assert_eq!(
            q.dlq_depth(&DlqScope::group("m", group)).await.unwrap(),
            model.groups[g].dead
        );
    }
    q.close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn embedded_queue_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
