//! `scalestack dlq`: list, show, redrive and purge dead letters of the
//! configured queue backend.
//!
//! This module only parses arguments and prints; the operations are the
//! queue crate's ([`scalestack_queue::Backend`]'s `dlq_*` methods), which an
//! admin API would call the same way.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use scalestack_config::Config;
use scalestack_queue::{AnyQueue, Backend, DeadLetter, DlqScope, DlqTarget};

/// Arguments of `scalestack dlq`.
#[derive(Debug, Args)]
pub(crate) struct DlqArgs {
    #[command(flatten)]
    pub(crate) config: crate::ConfigArgs,
    #[command(subcommand)]
    command: DlqCommand,
}

/// Which dead letters: of one topic and/or one group (all when neither).
#[derive(Debug, Args)]
struct ScopeArgs {
    /// Only dead letters of this topic.
    #[arg(long)]
    topic: Option<String>,
    /// Only dead letters of this consumer group.
    #[arg(long)]
    group: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> DlqScope {
        DlqScope {
            topic: self.topic.clone(),
            group: self.group.clone(),
        }
    }
}

/// One dead letter by id, or every one in a scope with `--all`.
#[derive(Debug, Args)]
struct TargetArgs {
    /// The dead letter's id (from `dlq list`).
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<u64>,
    /// Every dead letter in the scope given by --topic and --group.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    scope: ScopeArgs,
}

impl TargetArgs {
    fn target(&self) -> Result<DlqTarget> {
        match (self.id, self.all) {
            (Some(id), false) => {
                if self.scope.topic.is_some() || self.scope.group.is_some() {
                    bail!("--topic and --group select with --all; an id names one dead letter");
                }
                Ok(DlqTarget::One(id))
            }
            (None, true) => Ok(DlqTarget::All(self.scope.scope())),
            _ => bail!("give either a dead letter id or --all"),
        }
    }
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        scope: ScopeArgs,
        /// Start after this id (for paging).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Most dead letters shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter in full: message, error and attempt history.
    Show {
        /// The dead letter's id.
        id: u64,
    },
    /// Deliver dead letters to their group again, as first attempts.
    Redrive(TargetArgs),
    /// Delete dead letters for good.
    Purge(TargetArgs),
}

fn rfc3339(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

/// One line of the list table.
fn row(letter: &DeadLetter) -> String {
    let mut error = letter.error.replace('\n', " ");
    if error.chars().count() > 60 {
        error = error.chars().take(57).collect::<String>() + "...";
    }
    format!(
        "{:>8}  {:<24}  {:<16}  {:<20}  {:>8}  {:<24}  {error}",
        letter.id,
        letter.topic,
        letter.group,
        letter.message_id,
        letter.attempts,
        rfc3339(letter.dead_at_ms)
    )
}

/// Runs `scalestack dlq ...` against the queue of `config`.
pub(crate) fn run(config: &Config, args: DlqArgs) -> Result<()> {
    let rt = crate::runtime(1, "dlq")?;
    rt.block_on(async {
        let queue = AnyQueue::open(config)
            .await
            .context("open the queue named by [queue]")?;
        match args.command {
            DlqCommand::List {
                scope,
                after,
                limit,
                json,
            } => {
                let letters = queue.dlq_list(&scope.scope(), after, limit).await?;
                if json {
                    for letter in &letters {
                        println!("{}", serde_json::to_string(letter)?);
                    }
                } else if letters.is_empty() {
                    println!("no dead letters");
                } else {
                    println!(
                        "{:>8}  {:<24}  {:<16}  {:<20}  {:>8}  {:<24}  error",
                        "id", "topic", "group", "message", "attempts", "dead at"
                    );
                    for letter in &letters {
                        println!("{}", row(letter));
                    }
                }
            }
            DlqCommand::Show { id } => match queue.dlq_get(id).await? {
                Some(letter) => println!("{}", serde_json::to_string_pretty(&letter)?),
                None => bail!("no dead letter with id {id}"),
            },
            DlqCommand::Redrive(target) => {
                let target = target.target()?;
                let n = queue.dlq_redrive(&target).await?;
                if n == 0 && matches!(target, DlqTarget::One(_)) {
                    bail!("no dead letter with that id");
                }
                println!("redrove {n} dead letter(s)");
            }
            DlqCommand::Purge(target) => {
                let target = target.target()?;
                let n = queue.dlq_purge(&target).await?;
                if n == 0 && matches!(target, DlqTarget::One(_)) {
                    bail!("no dead letter with that id");
                }
                println!("purged {n} dead letter(s)");
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use scalestack_queue::{Failure, Message, TopicSpec};

    fn parse(args: &[&str]) -> Result<DlqArgs, clap::Error> {
        let argv = ["scalestack", "dlq"].iter().chain(args).copied();
        match crate::Cli::try_parse_from(argv)?.command {
            crate::Command::Dlq(args) => Ok(args),
            _ => unreachable!("parsed a dlq command"),
        }
    }

    #[test]
    fn list_show_redrive_and_purge_act_on_the_configured_queue() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let rt = crate::runtime(1, "test").unwrap();
        let ids: Vec<u64> = rt.block_on(async {
            let q = AnyQueue::open(&config).await.unwrap();
            q.ensure_topic(&TopicSpec::new("t", 1, &["g"]))
                .await
                .unwrap();
            q.publish(
                "t",
                &[Message::new("a", "k", "1"), Message::new("b", "k", "2")],
            )
            .await
            .unwrap();
            let got = q.fetch("t", "g", 10, Duration::from_secs(5)).await.unwrap();
            for d in &got {
                let failure = Failure {
                    error: "boom".into(),
                    permanent: true,
                    at_ms: 0,
                };
                q.dead_letter(d, &failure).await.unwrap();
            }
            let letters = q.dlq_list(&DlqScope::all(), 0, 10).await.unwrap();
            letters.iter().map(|l| l.id).collect()
        });
        assert_eq!(ids.len(), 2);
        let (a, b) = (ids[0].to_string(), ids[1].to_string());

        run(&config, parse(&["list"]).unwrap()).unwrap();
        run(&config, parse(&["list", "--json", "--group", "g"]).unwrap()).unwrap();
        run(&config, parse(&["show", &a]).unwrap()).unwrap();
        let missing = run(&config, parse(&["show", "999"]).unwrap()).unwrap_err();
        assert!(
            missing.to_string().contains("no dead letter with id 999"),
            "{missing}"
        );
        assert!(parse(&["purge"]).is_err(), "purge without an id or --all");
        assert!(parse(&["purge", &a, "--all"]).is_err());
        assert!(run(&config, parse(&["purge", &a, "--topic", "t"]).unwrap()).is_err());

        run(&config, parse(&["redrive", &a]).unwrap()).unwrap();
        run(
            &config,
            parse(&["purge", "--all", "--topic", "t", "--group", "g"]).unwrap(),
        )
        .unwrap();
        let bad = run(&config, parse(&["redrive", &b]).unwrap()).unwrap_err();
        assert!(bad.to_string().contains("no dead letter"), "{bad}");

        rt.block_on(async {
            let q = AnyQueue::open(&config).await.unwrap();
            assert_eq!(q.dlq_depth(&DlqScope::all()).await.unwrap(), 0);
            let again = q.fetch("t", "g", 10, Duration::from_secs(5)).await.unwrap();
            assert_eq!(again.len(), 1, "the redriven message is delivered again");
            assert_eq!(again[0].message.id, "a");
        });
    }

    #[test]
    fn timestamps_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01.500Z");
    }
}
