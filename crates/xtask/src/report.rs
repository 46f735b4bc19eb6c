//! What the benchmarks share: the release `scalestack bench` as their load
//! generator, and what they write into `BENCHMARKS.md` (the machine, the
//! date, the section appended at the end of the file).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use scalestack_bench::BenchReport;

use crate::{root, run};

/// This machine as a benchmark section describes it: `2 cores (AMD EPYC …)`.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu})")
}

/// Today's date (UTC), for section headings.
pub(crate) fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

/// Appends `section` (which starts with its own blank line and heading) to
/// `BENCHMARKS.md`.
pub(crate) fn append(section: &str) -> Result<()> {
    let path = root().join("BENCHMARKS.md");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(section);
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    eprintln!("xtask: appended to {}", path.display());
    Ok(())
}

/// The load of the stack benchmarks: `GET {gateway}/users/{id}` over ids
/// `1..=users`, Zipf-distributed (a few hot users, a long tail), on
/// `connections` connections; arguments of [`release_bench`].
pub(crate) fn user_reads(gateway: &str, users: u64, connections: usize) -> Vec<String> {
    [
        "--url".to_owned(),
        format!("{gateway}/users/{{id}}"),
        "--keys".to_owned(),
        format!("1..{users}"),
        "--dist".to_owned(),
        "zipf:1.1".to_owned(),
        "--connections".to_owned(),
        connections.to_string(),
    ]
    .into()
}

/// Drives load with the release `scalestack bench` (`exe`): `args` name the
/// target and the load, `seconds` the duration; with `cpu_pid`, that process
/// tree's CPU time per request is measured. Returns the JSON report, which
/// is written to `dir`.
///
/// The release binary, not `scalestack_bench::run` in this process: xtask is
/// built in the dev profile, where workspace crates are not optimised, and
/// an unoptimised generator would measure itself.
pub(crate) fn release_bench<S: AsRef<std::ffi::OsStr>>(
    exe: &Path,
    dir: &Path,
    args: &[S],
    seconds: u64,
    cpu_pid: Option<u32>,
) -> Result<BenchReport> {
    let json = dir.join("bench.json");
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--quiet"])
        .args(args)
        .args(["--duration", &format!("{seconds}s"), "--json"])
        .arg(&json)
        .stdout(Stdio::null());
    if let Some(pid) = cpu_pid {
        cmd.args(["--cpu-pid", &pid.to_string()]);
    }
    run(&mut cmd)?;
    let text = std::fs::read_to_string(&json).context("read the bench report")?;
    serde_json::from_str(&text).context("parse the bench report")
}
