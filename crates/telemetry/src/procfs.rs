//! Readings of `/proc/<pid>/stat`: CPU time and memory of a process.
//!
//! Benchmarks use these to report CPU microseconds per request summed over all
//! processes of a run; `/metrics` uses them for the standard `process_*` series.

use std::time::Duration;

/// Resource usage of one process at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcStat {
    /// User plus system CPU time consumed so far.
    pub cpu: Duration,
    /// The user-space part of `cpu` (`utime`).
    pub user: Duration,
    /// The kernel part of `cpu` (`stime`): the process's system calls and
    /// the network work the kernel does on their behalf.
    pub sys: Duration,
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Number of threads.
    pub threads: u64,
}

/// Errors from reading `/proc`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The process does not exist (any more) or `/proc` is unreadable.
    #[error("cannot read /proc/{pid}/stat: {source}")]
    Read {
        /// The process asked for.
        pid: u32,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file did not have the expected layout.
    #[error("unexpected format of /proc/{pid}/stat")]
    Format {
        /// The process asked for.
        pid: u32,
    },
}

/// Reads the usage of process `pid`.
pub fn stat(pid: u32) -> Result<ProcStat, ProcError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|source| ProcError::Read { pid, source })?;
    parse_stat(&text).ok_or(ProcError::Format { pid })
}

/// Reads the usage of the calling process.
pub fn self_stat() -> Result<ProcStat, ProcError> {
    stat(std::process::id())
}

/// Parses the text of `/proc/<pid>/stat`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may contain spaces, so
    // fields are counted from the last closing parenthesis.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state); field N is at index N - 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    let ticks = rustix::param::clock_ticks_per_second();
    let ticks_to_duration =
        |t: u64| Duration::from_nanos(t.saturating_mul(1_000_000_000) / ticks.max(1));
    let (user, sys) = (ticks_to_duration(field(14)?), ticks_to_duration(field(15)?));
    Some(ProcStat {
        cpu: user + sys,
        user,
        sys,
        threads: field(20)?,
        rss_bytes: field(24)?.saturating_mul(rustix::param::page_size() as u64),
    })
}

/// Children of `pid` (direct ones), from `/proc/<pid>/task/*/children`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// `pid` and all of its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let kids = children(all[i]);
        all.extend(kids);
        i += 1;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_command_with_spaces_and_parens() {
        let line = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 150 0 0 20 0 7 0 \
                    100 2000000 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        let ticks = rustix::param::clock_ticks_per_second();
        assert_eq!(stat.cpu, Duration::from_nanos(400 * 1_000_000_000 / ticks));
        assert_eq!(stat.user, Duration::from_nanos(250 * 1_000_000_000 / ticks));
        assert_eq!(stat.sys, Duration::from_nanos(150 * 1_000_000_000 / ticks));
        assert_eq!(parse_stat("4242 (cut"), None);
        assert_eq!(stat.threads, 7);
        assert_eq!(stat.rss_bytes, 300 * rustix::param::page_size() as u64);
    }

    #[test]
    fn reads_own_process() {
        let stat = self_stat().unwrap();
        assert!(stat.threads >= 1);
        assert!(stat.rss_bytes > 0);
    }

    #[test]
    fn missing_process_is_an_error() {
        assert!(matches!(stat(u32::MAX), Err(ProcError::Read { .. })));
    }
}
