//! The `email` group: an order confirmation (or a rejection notice) for every
//! order event, written into the mail sink; and the sink itself, which the
//! jobs of `POST /emails` write to as well.
//!
//! The sink is a directory of RFC 5322 `.eml` files, the form any mail
//! transfer agent or test inbox accepts. Each email's file name is its
//! identity (`order-1234.eml`, `order-1234-rejected.eml`, `job-7.eml`): the
//! file is written under a temporary name and then hard-linked to its final
//! name, which fails if the name exists. That link is the dedupe record and
//! the effect in one atomic operation, so a redelivered event never makes a
//! second email, and a crash mid-write leaves at most a temporary file (which
//! the next write of that email replaces). Like the embedded queue's
//! default, files are not fsynced: a killed process loses nothing, a power
//! cut may.
//!
//! This module must not send mail over the network: a relay to SMTP would
//! read the sink.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use scalestack_config::Config;
use scalestack_queue::{BatchHandler, Delivery, HandlerError};
use scalestack_store::{Consistency, ProductRecord, StockOutcome, Store, UserRecord};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

use super::{EMAIL, OrderEvent, count_effects, record_latency, store_failure};

/// Whether a delivery to the sink wrote a new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// The email is new and now in the sink.
    Created,
    /// An email of that identity was already there; nothing was written.
    AlreadyThere,
}

/// A directory that receives emails as `.eml` files.
#[derive(Debug, Clone)]
pub struct MailSink {
    dir: PathBuf,
    from: Arc<str>,
}

impl MailSink {
    /// The sink of `worker.email`.
    pub fn from_config(config: &Config) -> Self {
        Self::new(
            config.worker.email.sink_path(&config.data_dir),
            &config.worker.email.from,
        )
    }

    /// A sink in `dir`, sending from `from`.
    pub fn new(dir: impl Into<PathBuf>, from: &str) -> Self {
        Self {
            dir: dir.into(),
            from: from.into(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sender address.
    pub fn from_address(&self) -> &str {
        &self.from
    }

    /// Writes `content` as `name` unless an email of that name is there.
    /// Blocking: call it from a blocking thread.
    pub fn deliver(&self, name: &str, content: &[u8]) -> std::io::Result<Delivered> {
        let path = self.dir.join(name);
        if path.exists() {
            return Ok(Delivered::AlreadyThere);
        }
        std::fs::create_dir_all(&self.dir)?;
        // Unique among this process's writers (the counter) and among
        // processes (the pid), so that two writers never share a temporary.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(content)?;
            file.flush()
        })();
        if let Err(error) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(error);
        }
        let linked = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Delivered::Created),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Delivered::AlreadyThere),
            Err(e) => Err(e),
        }
    }
}

// === rendering ===

/// An email, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Its file name in the sink (its identity).
    pub file: String,
    /// The whole message: headers, blank line, body.
    pub text: String,
}

/// A header value on one line: no CR or LF can start another header.
fn header_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `"Display Name" <address>`, with the name quoted.
fn mailbox(name: &str, address: &str) -> String {
    let name = header_value(name)
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!("\"{name}\" <{}>", header_value(address))
}

fn rfc2822(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc2822).ok())
        .unwrap_or_else(|| "Thu, 01 Jan 1970 00:00:00 +0000".into())
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, (cents % 100).abs())
}

/// Renders a whole message.
#[allow(clippy::too_many_arguments)]
fn message(
    from: &str,
    to: &str,
    subject: &str,
    date_ms: i64,
    message_id: &str,
    extra: &[(&str, String)],
    body: &str,
) -> String {
    let mut text = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {}\r\nDate: {}\r\nMessage-ID: <{}@scalestack>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n",
        header_value(subject),
        rfc2822(date_ms),
        header_value(message_id),
    );
    for (name, value) in extra {
        text.push_str(&format!("{name}: {}\r\n", header_value(value)));
    }
    text.push_str("\r\n");
    for line in body.lines() {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text
}

/// The email of an order event for `user`, about `product` (when known).
pub fn render_order(
    sink: &MailSink,
    event: &OrderEvent,
    message_id: &str,
    user: &UserRecord,
    product: Option<&ProductRecord>,
) -> Email {
    let order = event.order();
    let item = product.map_or_else(
        || format!("product {}", order.product_id),
        |p| p.name.clone(),
    );
    let line = format!(
        "  {} x {item} at {} = {}",
        order.quantity,
        money(order.unit_price_cents),
        money(order.total_cents)
    );
    let from = mailbox("scalestack orders", sink.from_address());
    let to = mailbox(&user.name, &user.email);
    let extra = [("X-Scalestack-Order", order.id.to_string())];
    match event {
        OrderEvent::Placed(_) => Email {
            file: format!("order-{}.eml", order.id),
            text: message(
                &from,
                &to,
                &format!("We received your order {}", order.id),
                order.created_at,
                message_id,
                &extra,
                &format!(
                    "Hello {},\n\nthank you for your order {}:\n\n{line}\n\n\
                     We will write again if it cannot be fulfilled.\n",
                    user.name, order.id
                ),
            ),
        },
        OrderEvent::Rejected(_, reason) => {
            let why = match reason {
                StockOutcome::UnknownProduct => "the product is no longer in our catalog",
                _ => "the product is out of stock",
            };
            Email {
                file: format!("order-{}-rejected.eml", order.id),
                text: message(
                    &from,
                    &to,
                    &format!("Your order {} could not be fulfilled", order.id),
                    scalestack_store::now_ms(),
                    message_id,
                    &extra,
                    &format!(
                        "Hello {},\n\nwe are sorry: your order {} could not be fulfilled \
                         because {why}. You have not been charged.\n\n{line}\n",
                        user.name, order.id
                    ),
                ),
            }
        }
    }
}

/// The email of a `POST /emails` job.
pub fn render_job(
    sink: &MailSink,
    job_id: i64,
    to: &str,
    subject: &str,
    body: &str,
    created_at: i64,
) -> Email {
    Email {
        file: format!("job-{job_id}.eml"),
        text: message(
            &mailbox("scalestack", sink.from_address()),
            &header_value(to),
            subject,
            created_at,
            &format!("job-{job_id}"),
            &[("X-Scalestack-Job", job_id.to_string())],
            body,
        ),
    }
}

// === the handler ===

/// The `email` group's handler.
#[derive(Debug, Clone)]
pub struct EmailHandler {
    store: Store,
    sink: MailSink,
}

impl EmailHandler {
    /// A handler reading users and products from `store`, writing to `sink`.
    pub fn new(store: Store, sink: MailSink) -> Self {
        Self { store, sink }
    }

    /// A user by id: from a replica, and from the primary if the replica has
    /// not seen the user yet.
    async fn user(&self, id: i64) -> Result<Option<UserRecord>, HandlerError> {
        match self.store.get_user(id, Consistency::Eventual).await {
            Ok(Some(user)) => Ok(Some(user)),
            Ok(None) => self
                .store
                .get_user(id, Consistency::Primary)
                .await
                .map_err(|e| store_failure(&e)),
            Err(e) => Err(store_failure(&e)),
        }
    }
}

impl BatchHandler for EmailHandler {
    async fn handle<'a>(&'a self, batch: &'a [Delivery]) -> Vec<Result<(), HandlerError>> {
        let events: Vec<Result<OrderEvent, HandlerError>> =
            batch.iter().map(OrderEvent::decode).collect();
        // Each user and product once per batch.
        let mut users: HashMap<i64, Result<Option<UserRecord>, HandlerError>> = HashMap::new();
        let mut products: HashMap<i64, Option<ProductRecord>> = HashMap::new();
        for event in events.iter().flatten() {
            let order = event.order();
            if let Entry::Vacant(slot) = users.entry(order.user_id) {
                slot.insert(self.user(order.user_id).await);
            }
            if let Entry::Vacant(slot) = products.entry(order.product_id) {
                // The product only names the item; an email goes out without it.
                let product = self
                    .store
                    .get_product(order.product_id, Consistency::Eventual)
                    .await
                    .ok()
                    .flatten();
                slot.insert(product);
            }
        }
        let mut plan: Vec<Result<Email, HandlerError>> = Vec::with_capacity(batch.len());
        for (delivery, event) in batch.iter().zip(&events) {
            let email = match event {
                Err(e) => Err(e.clone()),
                Ok(event) => {
                    let order = event.order();
                    match &users[&order.user_id] {
                        Err(e) => Err(e.clone()),
                        Ok(None) => Err(HandlerError::permanent(format!(
                            "user {} of order {} does not exist",
                            order.user_id, order.id
                        ))),
                        Ok(Some(user)) => Ok(render_order(
                            &self.sink,
                            event,
                            &delivery.message.id,
                            user,
                            products[&order.product_id].as_ref(),
                        )),
                    }
                }
            };
            plan.push(email);
        }
        let sink = self.sink.clone();
        let written = tokio::task::spawn_blocking(move || {
            plan.into_iter()
                .map(|email| {
                    let email = email?;
                    sink.deliver(&email.file, email.text.as_bytes())
                        .map_err(|e| {
                            HandlerError::transient(format!(
                                "cannot write {} to the mail sink {}: {e}",
                                email.file,
                                sink.dir().display()
                            ))
                        })
                })
                .collect::<Vec<_>>()
        })
        .await;
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                let error = HandlerError::transient(format!("the mail writer failed: {e}"));
                return vec![Err(error); batch.len()];
            }
        };
        let (mut applied, mut duplicates) = (0, 0);
        let results = written
            .into_iter()
            .zip(&events)
            .map(|(outcome, event)| match outcome {
                Ok(Delivered::Created) => {
                    applied += 1;
                    if let Ok(OrderEvent::Placed(order)) = event {
                        record_latency(EMAIL, order.created_at);
                    }
                    Ok(())
                }
                Ok(Delivered::AlreadyThere) => {
                    duplicates += 1;
                    Ok(())
                }
                Err(e) => Err(e),
            })
            .collect();
        count_effects(EMAIL, applied, duplicates);
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scalestack_store::OrderRecord;

    fn order() -> OrderRecord {
        OrderRecord {
            id: 1025,
            user_id: 1,
            product_id: 9,
            quantity: 2,
            unit_price_cents: 1999,
            total_cents: 3998,
            status: "placed".into(),
            created_at: 1_700_000_000_000,
        }
    }

    fn user() -> UserRecord {
        UserRecord {
            id: 1,
            email: "ada@example.com".into(),
            name: "Ada \"the\" Countess\r\nBcc: evil@example.com".into(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn an_order_email_has_headers_on_one_line_each() {
        let sink = MailSink::new("/nonexistent", "orders@example.com");
        let email = render_order(
            &sink,
            &OrderEvent::Placed(order()),
            "shard-1-7",
            &user(),
            None,
        );
        assert_eq!(email.file, "order-1025.eml");
        let (head, body) = email.text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(
                "To: \"Ada \\\"the\\\" Countess  Bcc: evil@example.com\" <ada@example.com>"
            ),
            "{head}"
        );
        assert!(!head.lines().any(|l| l.starts_with("Bcc:")), "{head}");
        assert!(
            head.contains("Message-ID: <shard-1-7@scalestack>"),
            "{head}"
        );
        assert!(
            head.contains("Date: Tue, 14 Nov 2023 22:13:20 +0000"),
            "{head}"
        );
        assert!(body.contains("2 x product 9 at 19.99 = 39.98"), "{body}");
        let rejected = render_order(
            &sink,
            &OrderEvent::Rejected(order(), StockOutcome::OutOfStock),
            "shard-1-8",
            &user(),
            None,
        );
        assert_eq!(rejected.file, "order-1025-rejected.eml");
        assert!(rejected.text.contains("out of stock"));
    }

    #[test]
    fn the_sink_writes_an_email_once() {
        let dir = tempfile::tempdir().unwrap();
        let sink = MailSink::new(dir.path().join("mail"), "a@b");
        assert_eq!(sink.deliver("x.eml", b"one").unwrap(), Delivered::Created);
        assert_eq!(
            sink.deliver("x.eml", b"two").unwrap(),
            Delivered::AlreadyThere
        );
        assert_eq!(
            std::fs::read(dir.path().join("mail/x.eml")).unwrap(),
            b"one"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path().join("mail"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
        // A sink that cannot be created is an error, not a panic.
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(MailSink::new(&file, "a@b").deliver("y.eml", b"").is_err());
    }
}
