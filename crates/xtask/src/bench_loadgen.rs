//! `cargo xtask bench loadgen`: is `scalestack bench` a load generator that
//! can keep up, and does its open model keep time?
//!
//! Against one nginx serving a small static file (one worker process), in
//! one run:
//!
//! 1. **Throughput per core**, HTTP/1.1: `wrk -t1` and `scalestack bench
//!    --threads 1`, same connections and duration, alternating for several
//!    rounds. Each client's CPU time (user + system, from bash's `times`,
//!    the same accounting for both) gives requests per CPU-second; the
//!    ratio of medians is the figure (target: ≥ 1.0×).
//! 2. **HTTP/2**: `h2load -t1` and `scalestack bench --http2`, same
//!    connections and streams.
//! 3. **Open-model accuracy**: `scalestack bench --rate R`; achieved rate
//!    against target (target: within 1%), late and dropped sends, send lag.
//! 4. With `--callgrind`: both HTTP/1.1 clients under valgrind's callgrind
//!    for a few seconds, user-space instructions per request — a figure
//!    that stays put on a loaded machine, unlike times.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use scalestack_testkit::ports::free_port;

use crate::report;
use crate::{cargo, ensure_program, root, run as run_cmd};

/// Options of the load generator benchmark.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Connections of each client.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per client per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Rounds of the HTTP/1.1 comparison (clients alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// HTTP/2 streams per connection.
    #[arg(long, default_value_t = 10)]
    streams: usize,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    h2_connections: usize,
    /// Open-model rate, requests per second.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Also count instructions per request under callgrind.
    #[arg(long)]
    callgrind: bool,
    /// Seconds per client under callgrind.
    #[arg(long, default_value_t = 3)]
    callgrind_seconds: u64,
    /// Print only; do not append to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
}

/// One client run.
#[derive(Debug, Clone)]
struct Run {
    requests: f64,
    rps: f64,
    cpu_s: f64,
}

impl Run {
    fn per_cpu_second(&self) -> f64 {
        self.requests / self.cpu_s.max(1e-9)
    }
}

/// nginx on two free ports (HTTP/1.1 and h2c) serving one small file.
struct Nginx {
    child: Child,
    h1: u16,
    h2: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir().context("create a directory for nginx")?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("logs"))?;
        std::fs::create_dir_all(d.join("html"))?;
        std::fs::write(d.join("html/hello.txt"), "hello, scalestack\n")?;
        let (h1, h2) = (free_port(), free_port());
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process on;\npid {p}/nginx.pid;\n\
             error_log {p}/logs/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
               client_body_temp_path {p}/tmp-body;\n  proxy_temp_path {p}/tmp-proxy;\n\
               fastcgi_temp_path {p}/tmp-fcgi;\n  uwsgi_temp_path {p}/tmp-uwsgi;\n\
               scgi_temp_path {p}/tmp-scgi;\n\
               server {{\n    listen 127.0.0.1:{h1};\n    listen 127.0.0.1:{h2} http2;\n\
                 root {p}/html;\n    location / {{ try_files /hello.txt =404; }}\n  }}\n}}\n",
            p = d.display()
        );
        std::fs::write(d.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .args(["-p", &d.display().to_string(), "-c"])
            .arg(d.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start nginx")?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", h1)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", h2)).is_ok()
            {
                return Ok(Self {
                    child,
                    h1,
                    h2,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not start listening on 127.0.0.1:{h1} and :{h2}")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // nginx stops gracefully on SIGQUIT; the child is ours by its pid.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Runs `command` under bash followed by `times`, and returns its stdout,
/// stderr and the CPU seconds of its children (bash's second `times` line).
fn timed(command: &str) -> Result<(String, String, f64)> {
    let out = Command::new("bash")
        .args(["-c", &format!("{command}; status=$?; times; exit $status")])
        .output()
        .with_context(|| format!("run {command}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("{command} failed ({}):\n{stdout}\n{stderr}", out.status);
    }
    let cpu = stdout
        .lines()
        .rev()
        .find(|l| l.contains('m') && l.trim_end().ends_with('s'))
        .map(|l| l.split_whitespace().map(bash_secs).sum())
        .context("bash printed no times")?;
    Ok((stdout, stderr, cpu))
}

/// `0m1.234s` → seconds.
fn bash_secs(v: &str) -> f64 {
    let Some((m, s)) = v.trim_end_matches('s').split_once('m') else {
        return 0.0;
    };
    m.parse::<f64>().unwrap_or(0.0) * 60.0 + s.parse::<f64>().unwrap_or(0.0)
}

fn wrk(port: u16, args: &Args) -> Result<Run> {
    let (out, _, cpu) = timed(&format!(
        "wrk -t1 -c{} -d{}s http://127.0.0.1:{port}/users/1",
        args.connections, args.seconds
    ))?;
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .context("wrk printed no request count")?;
    let rps = out
        .lines()
        .find(|l| l.trim_start().starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .context("wrk printed no rate")?;
    Ok(Run {
        requests,
        rps,
        cpu_s: cpu,
    })
}

fn h2load(port: u16, args: &Args) -> Result<Run> {
    let (out, _, cpu) = timed(&format!(
        "h2load -t1 -c{} -m{} -D {} http://127.0.0.1:{port}/users/1",
        args.h2_connections, args.streams, args.seconds
    ))?;
    let requests = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .and_then(|l| {
            let done = l.split(',').find(|p| p.contains("done"))?;
            done.split_whitespace().next()?.parse::<f64>().ok()
        })
        .context("h2load printed no request count")?;
    let rps = out
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(',').nth(1)?.split_whitespace().next()?.parse().ok())
        .context("h2load printed no rate")?;
    Ok(Run {
        requests,
        rps,
        cpu_s: cpu,
    })
}

/// `scalestack bench` with `extra` flags; returns the run and its report.
fn ours(exe: &Path, url: &str, extra: &str, json: &Path) -> Result<(Run, serde_json::Value)> {
    let (_, _, cpu) = timed(&format!(
        "{} bench --url {url} --threads 1 --quiet --json {} {extra} > /dev/null",
        exe.display(),
        json.display()
    ))?;
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    let requests = report["requests"]
        .as_f64()
        .context("no requests in the report")?;
    let rps = report["rps"].as_f64().context("no rps in the report")?;
    Ok((
        Run {
            requests,
            rps,
            cpu_s: cpu,
        },
        report,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Instructions from callgrind's summary line (`Collected : N`).
fn collected(stderr: &str) -> Option<f64> {
    stderr
        .lines()
        .find(|l| l.contains("Collected :"))
        .and_then(|l| l.rsplit(':').next()?.trim().parse().ok())
}

pub(crate) fn run(args: &Args) -> Result<()> {
    ensure_program("nginx", "nginx")?;
    ensure_program("wrk", "wrk")?;
    ensure_program("h2load", "nghttp2-client")?;
    if args.callgrind {
        ensure_program("valgrind", "valgrind")?;
    }
    if args.rounds == 0 || args.seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    run_cmd(cargo().args(["build", "--release", "-p", "scalestack-cli"]))?;
    let exe = root().join("target/release/scalestack");
    let nginx = Nginx::start()?;
    let scratch = tempfile::tempdir()?;
    let json = scratch.path().join("report.json");
    let h1_url = format!("http://127.0.0.1:{}/users/1", nginx.h1);
    let h2_url = format!("http://127.0.0.1:{}/users/1", nginx.h2);
    let closed = format!(
        "--connections {} --duration {}s",
        args.connections, args.seconds
    );

    // Warm nginx up (accept queues, page cache) before measuring.
    wrk(
        nginx.h1,
        &Args {
            seconds: 1,
            ..args.clone()
        },
    )?;

    let mut theirs = Vec::new();
    let mut mine = Vec::new();
    for round in 1..=args.rounds {
        eprintln!(
            "xtask: round {round}/{}: wrk, then scalestack bench",
            args.rounds
        );
        theirs.push(wrk(nginx.h1, args)?);
        mine.push(ours(&exe, &h1_url, &closed, &json)?.0);
    }

    eprintln!("xtask: HTTP/2: h2load, then scalestack bench --http2");
    let h2_theirs = h2load(nginx.h2, args)?;
    let (h2_mine, _) = ours(
        &exe,
        &h2_url,
        &format!(
            "--http2 --streams {} --connections {} --duration {}s",
            args.streams, args.h2_connections, args.seconds
        ),
        &json,
    )?;

    eprintln!("xtask: open model at {} req/s", args.rate);
    let (_, open) = ours(
        &exe,
        &h1_url,
        &format!(
            "--rate {} --connections {} --duration {}s",
            args.rate, args.connections, args.seconds
        ),
        &json,
    )?;

    let callgrind = if args.callgrind {
        eprintln!("xtask: callgrind, {} s per client", args.callgrind_seconds);
        let cg = scratch.path().join("callgrind.out");
        let vg = format!(
            "valgrind --tool=callgrind --callgrind-out-file={}",
            cg.display()
        );
        let (out, err, _) = timed(&format!(
            "{vg} wrk -t1 -c{} -d{}s {h1_url}",
            args.connections, args.callgrind_seconds
        ))?;
        let wrk_requests = out
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
            .context("wrk printed no request count")?;
        let wrk_ir = collected(&err).context("callgrind printed no instruction count")?;
        let (_, err, _) = timed(&format!(
            "{vg} {} bench --url {h1_url} --threads 1 --quiet --json {} --connections {} --duration {}s > /dev/null",
            exe.display(),
            json.display(),
            args.connections,
            args.callgrind_seconds
        ))?;
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
        let our_requests = report["requests"]
            .as_f64()
            .context("no requests in the report")?;
        let our_ir = collected(&err).context("callgrind printed no instruction count")?;
        Some(((wrk_ir, wrk_requests), (our_ir, our_requests)))
    } else {
        None
    };
    drop(nginx);

    let table = render(args, &theirs, &mine, &h2_theirs, &h2_mine, &open, callgrind);
    println!("{table}");
    if !args.no_append {
        append(args, &table)?;
    }
    Ok(())
}

type Instructions = ((f64, f64), (f64, f64));

fn render(
    args: &Args,
    theirs: &[Run],
    mine: &[Run],
    h2_theirs: &Run,
    h2_mine: &Run,
    open: &serde_json::Value,
    callgrind: Option<Instructions>,
) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| client | protocol | RPS (median) | CPU µs/req | requests per CPU-second |\n|---|---|---:|---:|---:|"
    );
    let row = |t: &mut String, client: &str, proto: &str, runs: &[Run]| {
        let rps = median(runs.iter().map(|r| r.rps).collect());
        let per = median(runs.iter().map(Run::per_cpu_second).collect());
        let _ = writeln!(
            t,
            "| {client} | {proto} | {rps:.0} | {:.2} | {per:.0} |",
            1e6 / per
        );
        (rps, per)
    };
    let (wrk_rps, wrk_per) = row(&mut t, "wrk -t1", "HTTP/1.1", theirs);
    let (our_rps, our_per) = row(&mut t, "scalestack bench --threads 1", "HTTP/1.1", mine);
    let (h2l_rps, h2l_per) = row(&mut t, "h2load -t1", "h2c", std::slice::from_ref(h2_theirs));
    let (h2o_rps, h2o_per) = row(
        &mut t,
        "scalestack bench --threads 1 --http2",
        "h2c",
        std::slice::from_ref(h2_mine),
    );
    let _ = writeln!(
        t,
        "\nscalestack bench / wrk: requests per CPU-second {:.2}×, RPS {:.2}× (target ≥ 1.0×); \
         / h2load over h2c: {:.2}× per CPU-second, RPS {:.2}×.",
        our_per / wrk_per,
        our_rps / wrk_rps,
        h2o_per / h2l_per,
        h2o_rps / h2l_rps
    );
    let rounds: Vec<String> = theirs
        .iter()
        .zip(mine)
        .map(|(w, s)| format!("{:.0}/{:.0}", s.per_cpu_second(), w.per_cpu_second()))
        .collect();
    let _ = writeln!(
        t,
        "Per round, requests per CPU-second scalestack/wrk: {}.",
        rounds.join(", ")
    );
    let o = &open["open"];
    let target = o["target_rps"].as_f64().unwrap_or(f64::NAN);
    let achieved = o["achieved_rps"].as_f64().unwrap_or(f64::NAN);
    let _ = writeln!(
        t,
        "\n| open model | target req/s | achieved req/s | achieved / target | late (>1 ms) | dropped | send lag p99 ms | p99 from due ms | p99 from send ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let ms = |v: &serde_json::Value| v.as_f64().map_or(f64::NAN, |us| us / 1000.0);
    let _ = writeln!(
        t,
        "| {} req/s, {} connections | {target:.1} | {achieved:.1} | {:.3}% | {} | {} | {:.3} | {:.3} | {:.3} |",
        args.rate,
        args.connections,
        100.0 * achieved / target,
        o["late"],
        o["dropped"],
        ms(&o["send_lag"]["p99_us"]),
        ms(&open["latency"]["p99_us"]),
        ms(&open["latency_uncorrected"]["p99_us"]),
    );
    if let Some(((wrk_ir, wrk_n), (our_ir, our_n))) = callgrind {
        let _ = writeln!(
            t,
            "\n| callgrind, {} s, HTTP/1.1 | requests | instructions | per request |\n|---|---:|---:|---:|\n\
             | wrk -t1 | {wrk_n:.0} | {wrk_ir:.0} | {:.0} |\n| scalestack bench --threads 1 | {our_n:.0} | {our_ir:.0} | {:.0} |\n\n\
             Instructions per request scalestack/wrk: {:.3}× (user space only; both make one write and one read per request, wrk also two epoll_ctl).",
            args.callgrind_seconds,
            wrk_ir / wrk_n,
            our_ir / our_n,
            (our_ir / our_n) / (wrk_ir / wrk_n)
        );
    }
    t
}

fn append(args: &Args, table: &str) -> Result<()> {
    let machine = report::machine();
    let date = report::today();
    let mut command = format!(
        "cargo xtask bench loadgen --connections {} --seconds {} --rounds {} --rate {}",
        args.connections, args.seconds, args.rounds, args.rate
    );
    if args.callgrind {
        let _ = write!(
            command,
            " --callgrind --callgrind-seconds {}",
            args.callgrind_seconds
        );
    }
    let mut text = String::new();
    let _ = write!(
        text,
        "\n## Load generator: scalestack bench against wrk and h2load ({date})\n\n\
         Machine: {machine}; nginx (1 worker) and the client share it.\n\
         Target: nginx serving an 18-byte static file; HTTP/1.1 keep-alive, {} connections; \
         h2c with {} connections × {} streams; {} s per client; {} alternating HTTP/1.1 rounds.\n\
         Client CPU = utime + stime of the client process (bash `times`, the same for every client).\n\n\
         Command: `{command}`\n\n{table}",
        args.connections, args.h2_connections, args.streams, args.seconds, args.rounds,
    );
    report::append(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_callgrind_summaries() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(
            collected("==1== Events    : Ir\n==1== Collected : 309582674\n"),
            Some(309_582_674.0)
        );
        assert_eq!(collected("nothing"), None);
        assert!((bash_secs("1m2.500s") - 62.5).abs() < 1e-9);
    }
}
