//! Failpoints: named places in the flows where a test can make the process
//! die, to prove what a crash at exactly that point leaves behind.
//!
//! They are read once from the environment variable [`FAILPOINTS_ENV`], a
//! comma-separated list of `name=action`:
//!
//! - `exit`: the process exits at once (no destructor, no flush, nothing
//!   settled), like a `kill -9` at that instruction;
//! - `exit-once:PATH`: the same, but only for the first process to get there:
//!   it creates `PATH` first (atomically), and a process that finds `PATH`
//!   existing carries on. A supervisor that restarts the crashed process with
//!   the same environment therefore sees one crash, not a crash loop.
//!
//! Unset (the normal case) a failpoint costs one look at an empty table.
//! This module must not be given any other power than ending the process.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The environment variable that arms failpoints.
pub const FAILPOINTS_ENV: &str = "SCALESTACK_FAILPOINTS";

/// The relay published a batch and has not marked it sent yet.
pub const RELAY_AFTER_PUBLISH: &str = "relay-after-publish";

/// Exit status of a process stopped by a failpoint.
pub const FAILPOINT_EXIT: i32 = 86;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Exit,
    ExitOnce(PathBuf),
}

fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(',')
        .filter_map(|item| {
            let (name, action) = item.trim().split_once('=')?;
            let action = match action {
                "exit" => Action::Exit,
                other => Action::ExitOnce(PathBuf::from(other.strip_prefix("exit-once:")?)),
            };
            Some((name.trim().to_owned(), action))
        })
        .collect()
}

fn table() -> &'static HashMap<String, Action> {
    static TABLE: OnceLock<HashMap<String, Action>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let table = std::env::var(FAILPOINTS_ENV)
            .map(|spec| parse(&spec))
            .unwrap_or_default();
        if !table.is_empty() {
            tracing::warn!(failpoints = ?table.keys().collect::<Vec<_>>(), "failpoints are armed");
        }
        table
    })
}

/// Ends the process here if the failpoint `name` is armed (see the module
/// documentation); otherwise does nothing.
pub fn hit(name: &str) {
    let Some(action) = table().get(name) else {
        return;
    };
    let fire = match action {
        Action::Exit => true,
        Action::ExitOnce(marker) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(marker)
            .is_ok(),
    };
    if fire {
        tracing::error!(failpoint = name, "failpoint reached: exiting");
        // Skipping destructors and every pending write is the point here:
        // the process must end as abruptly as a crash would end it.
        #[allow(clippy::disallowed_methods)]
        std::process::exit(FAILPOINT_EXIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_into_actions() {
        let table = parse("relay-after-publish=exit, other=exit-once:/tmp/m ,bad,x=nope");
        assert_eq!(table.get(RELAY_AFTER_PUBLISH), Some(&Action::Exit));
        assert_eq!(
            table.get("other"),
            Some(&Action::ExitOnce(PathBuf::from("/tmp/m")))
        );
        assert_eq!(table.len(), 2, "malformed items are ignored: {table:?}");
    }

    #[test]
    fn an_unarmed_failpoint_does_nothing() {
        hit("no-such-failpoint");
    }
}
