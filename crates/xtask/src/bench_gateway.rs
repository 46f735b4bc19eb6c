//! `cargo xtask bench gateway`: the scalestack gateway side by side with
//! NGINX and HAProxy as reverse proxies, on one machine, in one run.
//!
//! Starts a trivial upstream (an NGINX `return 200` server with one
//! worker), then three proxies in front of it with the same number of worker
//! threads: NGINX (`proxy_pass` to an upstream block with `keepalive`),
//! HAProxy (`http-reuse always`) and `scalestack gateway` (one pool, round
//! robin). Each proxy is measured in interleaved rounds, so that load from
//! elsewhere on the machine hits all three alike:
//!
//! * saturation with wrk and with `scalestack bench` (closed model): RPS,
//!   p50/p99, CPU per request of the proxy's process tree (utime + stime
//!   from /proc over the run, divided by the requests served), and that CPU
//!   split into user and system (kernel) time per request;
//! * a fixed rate with `scalestack bench` (open model, latency from each
//!   request's due time): p50/p99 and CPU per request, split likewise;
//! * RSS of the proxy with 10,000 idle keep-alive clients (each sent one
//!   request and keeps its connection open).
//!
//! It prints the tables, the ratios to NGINX and the targets, and
//! appends them to `BENCHMARKS.md` unless `--no-append`. Short flags
//! (`--seconds 2 --warmup 1 --rounds 1 --idle-clients 500 --no-append`)
//! make a smoke test.

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use scalestack_telemetry::procfs;

use crate::report;
use crate::{cargo, ensure_program, root, run as run_cmd};

/// Options of the gateway benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Worker threads of every proxy: NGINX worker processes, HAProxy
    /// threads, gateway threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Connections of the saturating clients.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Seconds of each measured run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of wrk warm-up per proxy before the rounds.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// Rounds; each measures every proxy once with every client. 0 skips the
    /// throughput and latency runs (memory only).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Fixed rate in requests per second; 0 means half the lowest saturated
    /// wrk RPS of the three proxies in this run.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Idle keep-alive clients for the memory measurement; 0 skips it.
    #[arg(long, default_value_t = 10_000)]
    idle_clients: usize,
    /// Print only; do not append to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
}

/// A server process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
}

impl Server {
    fn start(
        name: &'static str,
        addr: SocketAddr,
        command: &mut Command,
        log: &Path,
    ) -> Result<Server> {
        let log = std::fs::File::create(log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        let server = Server { name, addr, child };
        let deadline = Instant::now() + Duration::from_secs(20);
        while get_status(addr).ok() != Some(200) {
            if Instant::now() > deadline {
                bail!("{name} did not answer 200 on {addr} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time of the proxy's process tree so far, user and kernel apart.
    fn cpu(&self) -> CpuSplit {
        procfs::process_tree(self.pid())
            .into_iter()
            .filter_map(|p| procfs::stat(p).ok())
            .map(|s| CpuSplit {
                user: s.user,
                sys: s.sys,
            })
            .fold(CpuSplit::default(), CpuSplit::plus)
    }

    fn rss_bytes(&self) -> u64 {
        procfs::process_tree(self.pid())
            .into_iter()
            .filter_map(|p| procfs::stat(p).ok())
            .map(|s| s.rss_bytes)
            .sum()
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // NGINX's master stops its workers on SIGTERM; a SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time of processes, split into user time (`utime`) and system time
/// (`stime`) as `procfs::stat` reads them. System time is the kernel working in
/// the process's context: its system calls, the TCP stack on their behalf,
/// and network softirq work that runs on its way out of the kernel (on
/// loopback that includes part of the peer's receive path, which every proxy
/// pays alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct CpuSplit {
    user: Duration,
    sys: Duration,
}

impl CpuSplit {
    fn plus(self, other: CpuSplit) -> CpuSplit {
        CpuSplit {
            user: self.user + other.user,
            sys: self.sys + other.sys,
        }
    }

    /// What was spent since `before`.
    fn since(self, before: CpuSplit) -> CpuSplit {
        CpuSplit {
            user: self.user.saturating_sub(before.user),
            sys: self.sys.saturating_sub(before.sys),
        }
    }

    fn total(self) -> Duration {
        self.user + self.sys
    }

    /// Microseconds per request: (user, sys).
    fn per_request(self, requests: f64) -> (f64, f64) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / requests.max(1.0);
        (per(self.user), per(self.sys))
    }
}

/// `GET /` on a fresh connection; the status.
fn get_status(addr: SocketAddr) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")
}

/// One measurement of one proxy with one client.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU (user + system) µs per request.
    cpu_us: f64,
    /// User CPU µs per request.
    user_us: f64,
    /// System (kernel) CPU µs per request.
    sys_us: f64,
    errors: u64,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    ensure_program("wrk", "wrk")?;
    ensure_program("nginx", "nginx")?;
    ensure_program("haproxy", "haproxy")?;
    run_cmd(cargo().args(["build", "--release", "-p", "scalestack-cli"]))?;
    let exe = root().join("target/release/scalestack");
    let fds = raise_fd_limit();
    let dir = tempfile::tempdir().context("create a temporary directory")?;
    let port = |_: ()| scalestack_testkit::ports::free_addr();
    let threads = args.threads.max(1);

    let upstream_addr = port(());
    let upstream = Server::start(
        "upstream",
        upstream_addr,
        &mut nginx(
            dir.path(),
            "upstream",
            1,
            &format!(
                "server {{ listen {upstream_addr} reuseport backlog=4096; location / {{ return 200 'ok\\n'; }} }}"
            ),
        )?,
        &dir.path().join("upstream.log"),
    )?;

    let nginx_addr = port(());
    let haproxy_addr = port(());
    let gateway_addr = port(());
    let proxies = vec![
        Server::start(
            "NGINX",
            nginx_addr,
            &mut nginx(dir.path(), "proxy", threads, &format!(
                "upstream backend {{ server {upstream_addr}; keepalive 256; keepalive_requests 1000000; }}
                 server {{ listen {nginx_addr} reuseport backlog=4096;
                   location / {{ proxy_pass http://backend; proxy_http_version 1.1;
                                 proxy_set_header Connection \"\"; }} }}"
            ))?,
            &dir.path().join("nginx.log"),
        )?,
        Server::start(
            "HAProxy",
            haproxy_addr,
            &mut haproxy(dir.path(), threads, fds, haproxy_addr, upstream_addr)?,
            &dir.path().join("haproxy.log"),
        )?,
        Server::start(
            "scalestack",
            gateway_addr,
            &mut gateway(dir.path(), &exe, threads, gateway_addr, upstream_addr)?,
            &dir.path().join("gateway.log"),
        )?,
    ];

    for proxy in proxies.iter().filter(|_| args.rounds > 0) {
        eprintln!("xtask: warming up {} for {} s", proxy.name, args.warmup);
        wrk(proxy, args.connections, args.warmup)?;
    }
    let mut wrk_samples = vec![Vec::new(); proxies.len()];
    let mut bench_samples = vec![Vec::new(); proxies.len()];
    for round in 0..args.rounds {
        for (i, proxy) in proxies.iter().enumerate() {
            eprintln!("xtask: round {round}: wrk → {}", proxy.name);
            wrk_samples[i].push(wrk(proxy, args.connections, args.seconds)?);
        }
        for (i, proxy) in proxies.iter().enumerate() {
            eprintln!("xtask: round {round}: scalestack bench → {}", proxy.name);
            bench_samples[i].push(bench_closed(
                &exe,
                dir.path(),
                proxy,
                args.connections,
                args.seconds,
            )?);
        }
    }
    let wrk_med: Vec<Sample> = wrk_samples.iter().map(|s| median(s)).collect();
    let bench_med: Vec<Sample> = bench_samples.iter().map(|s| median(s)).collect();

    let rate = if args.rounds == 0 {
        0.0
    } else if args.rate > 0.0 {
        args.rate
    } else {
        (wrk_med.iter().map(|s| s.rps).fold(f64::INFINITY, f64::min) / 2.0).floor()
    };
    let mut fixed_samples = vec![Vec::new(); proxies.len()];
    for round in 0..args.rounds {
        for (i, proxy) in proxies.iter().enumerate() {
            eprintln!(
                "xtask: round {round}: {rate:.0} requests/s → {}",
                proxy.name
            );
            fixed_samples[i].push(bench_rate(&exe, dir.path(), proxy, rate, args.seconds)?);
        }
    }
    let fixed_med: Vec<Sample> = fixed_samples.iter().map(|s| median(s)).collect();

    let mut memory = Vec::new();
    if args.idle_clients > 0 {
        // HAProxy holds at most `maxconn` connections; more clients would
        // wait in its queue for ever. Every proxy gets the same number.
        let clients = args
            .idle_clients
            .min(haproxy_maxconn(fds).saturating_sub(50));
        if clients < args.idle_clients {
            eprintln!(
                "xtask: the open-file limit ({fds}) lets HAProxy hold {} connections: \
                 measuring memory with {clients} idle clients instead of {} \
                 (raise the limit, e.g. `ulimit -n 65536`, for the full count)",
                haproxy_maxconn(fds),
                args.idle_clients
            );
        }
        for proxy in &proxies {
            eprintln!("xtask: {clients} idle keep-alive clients → {}", proxy.name);
            memory.push(idle_rss(proxy, clients)?);
        }
    }
    drop(proxies);
    drop(upstream);

    let names = ["NGINX", "HAProxy", "scalestack"];
    let report = render(
        args, rate, &names, &wrk_med, &bench_med, &fixed_med, &memory,
    );
    println!("{report}");
    if !args.no_append {
        append(args, &report)?;
    }
    Ok(())
}

/// Raises this process's open-file limit (the proxies inherit it): 10,000
/// idle clients need 10,000 descriptors on each side, and HAProxy wants two
/// per connection up front. Root may raise the hard limit; anyone else gets
/// the hard limit. Returns the limit in force.
fn raise_fd_limit() -> u64 {
    let pid = std::process::id().to_string();
    let limit = |kind: &str| {
        Command::new("sh")
            .args(["-c", &format!("ulimit -{kind}n")])
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(1024)
    };
    let raised = Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=65536:65536"])
        .status()
        .is_ok_and(|s| s.success());
    if !raised {
        let hard = limit("H");
        let _ = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
            .status();
    }
    limit("S")
}

fn nginx(dir: &Path, name: &str, workers: usize, http: &str) -> Result<Command> {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs"))?;
    let conf = prefix.join("nginx.conf");
    let p = prefix.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process on; worker_processes {workers}; worker_rlimit_nofile 65536;
             pid {p}/nginx.pid; error_log {p}/logs/error.log warn;
             events {{ worker_connections 20000; }}
             http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
                     client_body_temp_path {p}/t1; proxy_temp_path {p}/t2; fastcgi_temp_path {p}/t3;
                     uwsgi_temp_path {p}/t4; scgi_temp_path {p}/t5;
                     {http} }}\n"
        ),
    )?;
    let mut command = Command::new("nginx");
    command.args(["-p", &p.to_string(), "-c", &conf.display().to_string()]);
    Ok(command)
}

/// The `maxconn` HAProxy starts with under an open-file limit of `fds`: it
/// reserves two descriptors per connection and refuses to start without them.
fn haproxy_maxconn(fds: u64) -> usize {
    usize::try_from((fds.saturating_sub(200) / 2).min(20_000)).unwrap_or(20_000)
}

fn haproxy(
    dir: &Path,
    threads: usize,
    fds: u64,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> Result<Command> {
    // HAProxy reserves two descriptors per connection and refuses to start
    // without them.
    let maxconn = haproxy_maxconn(fds);
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread {threads}\n  maxconn {maxconn}\n\
             defaults\n  mode http\n  option http-keep-alive\n  http-reuse always\n\
             \x20 timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n\
             \x20 timeout http-keep-alive 300s\n\
             frontend fe\n  bind {listen}\n  default_backend be\n\
             backend be\n  server up {upstream}\n"
        ),
    )?;
    let mut command = Command::new("haproxy");
    command.args(["-db", "-f", &conf.display().to_string()]);
    Ok(command)
}

fn gateway(
    dir: &Path,
    exe: &Path,
    threads: usize,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> Result<Command> {
    let mut config = scalestack_config::Config::default();
    config.log.level = "warn".into();
    config.gateway.listen = listen;
    config.gateway.admin_listen = scalestack_testkit::ports::free_addr();
    config.gateway.threads = threads;
    // Idle clients stay connected as long as with the other proxies.
    config.gateway.client.header_read_timeout = Duration::from_secs(300);
    config.gateway.pools[0].endpoints = vec![upstream.to_string().into()];
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config.to_toml())?;
    let mut command = Command::new(exe);
    command
        .args(["gateway", "--config", &path.display().to_string()])
        .env_remove(scalestack_config::CONFIG_ENV);
    Ok(command)
}

/// wrk at saturation (one client thread, so that the client takes no more
/// of the machine than it must).
fn wrk(proxy: &Server, connections: usize, seconds: u64) -> Result<Sample> {
    let before = proxy.cpu();
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            &proxy.url(),
        ])
        .output()
        .context("run wrk")?;
    let cpu = proxy.cpu().since(before);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        .context("wrk printed no request count")?;
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    };
    let errors = text
        .lines()
        .filter(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .flat_map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
        })
        .sum();
    let (user_us, sys_us) = cpu.per_request(requests);
    Ok(Sample {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN),
        p50_ms: field("50%").map_or(f64::NAN, |v| wrk_ms(&v)),
        p99_ms: field("99%").map_or(f64::NAN, |v| wrk_ms(&v)),
        cpu_us: cpu.total().as_secs_f64() * 1e6 / requests.max(1.0),
        user_us,
        sys_us,
        errors,
    })
}

/// `scalestack bench`, closed model.
fn bench_closed(
    exe: &Path,
    dir: &Path,
    proxy: &Server,
    connections: usize,
    seconds: u64,
) -> Result<Sample> {
    bench(
        exe,
        dir,
        proxy,
        &["--connections", &connections.to_string()],
        seconds,
    )
}

/// `scalestack bench`, open model at `rate` requests per second.
fn bench_rate(exe: &Path, dir: &Path, proxy: &Server, rate: f64, seconds: u64) -> Result<Sample> {
    // Enough connections that a slow response never holds the schedule up.
    bench(
        exe,
        dir,
        proxy,
        &["--rate", &format!("{rate:.0}"), "--connections", "256"],
        seconds,
    )
}

/// One run of the release `scalestack bench` (one thread) against `proxy`,
/// with the proxy's CPU measured: the total by the client over its run, the
/// user/system split here around the client's process (which adds its
/// connection set-up and tear-down, a few milliseconds of a run).
fn bench(exe: &Path, dir: &Path, proxy: &Server, extra: &[&str], seconds: u64) -> Result<Sample> {
    let url = proxy.url();
    let mut load = vec!["--url", &url, "--threads", "1"];
    load.extend(extra);
    let before = proxy.cpu();
    let report = report::release_bench(exe, dir, &load, seconds, Some(proxy.pid()))?;
    let (user_us, sys_us) = proxy
        .cpu()
        .since(before)
        .per_request(report.requests as f64);
    Ok(Sample {
        rps: report.rps,
        p50_ms: report.latency.p50_us as f64 / 1e3,
        p99_ms: report.latency.p99_us as f64 / 1e3,
        cpu_us: report
            .target_cpu
            .as_ref()
            .and_then(|c| c.us_per_request)
            .unwrap_or(f64::NAN),
        user_us,
        sys_us,
        errors: report.error_responses() + report.errors.total(),
    })
}

/// Memory of one proxy: RSS at rest, and with `clients` idle keep-alive
/// connections, each of which has sent one request.
#[derive(Debug, Clone, Copy)]
struct Memory {
    rest_mib: f64,
    idle_mib: f64,
    clients: usize,
}

/// Longest wait for one idle client's connection and response.
const IDLE_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

fn idle_rss(proxy: &Server, clients: usize) -> Result<Memory> {
    let rest = proxy.rss_bytes();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = proxy.addr;
    let connections = runtime.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut open = Vec::with_capacity(clients);
        let mut batch = tokio::task::JoinSet::new();
        let mut started = 0;
        while open.len() < clients {
            while started < clients && batch.len() < 256 {
                started += 1;
                batch.spawn(tokio::time::timeout(IDLE_CLIENT_TIMEOUT, async move {
                    let mut stream = tokio::net::TcpStream::connect(addr).await?;
                    stream
                        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                        .await?;
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    // The upstream's body is "ok\n": the response ends with it.
                    while !seen.ends_with(b"ok\n") {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 {
                            return Err(std::io::Error::other("closed before the response"));
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    Ok::<_, std::io::Error>(stream)
                }));
            }
            match batch.join_next().await {
                Some(Ok(Ok(Ok(stream)))) => open.push(stream),
                Some(Ok(Ok(Err(error)))) => {
                    return Err(anyhow::Error::from(error).context("open an idle client"));
                }
                Some(Ok(Err(_elapsed))) => {
                    bail!(
                        "an idle client got no response within {} s after {} were open",
                        IDLE_CLIENT_TIMEOUT.as_secs(),
                        open.len()
                    );
                }
                Some(Err(error)) => return Err(anyhow::Error::from(error)),
                None => break,
            }
        }
        Ok(open)
    })?;
    // Let the proxy settle (buffers released after the responses, if it does).
    std::thread::sleep(Duration::from_secs(2));
    let idle = proxy.rss_bytes();
    drop(connections);
    drop(runtime);
    std::thread::sleep(Duration::from_millis(500));
    Ok(Memory {
        rest_mib: rest as f64 / (1 << 20) as f64,
        idle_mib: idle as f64 / (1 << 20) as f64,
        clients,
    })
}

/// The median of each field over the samples.
fn median(samples: &[Sample]) -> Sample {
    let mid = |f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    Sample {
        rps: mid(|s| s.rps),
        p50_ms: mid(|s| s.p50_ms),
        p99_ms: mid(|s| s.p99_ms),
        cpu_us: mid(|s| s.cpu_us),
        user_us: mid(|s| s.user_us),
        sys_us: mid(|s| s.sys_us),
        errors: samples.iter().map(|s| s.errors).sum(),
    }
}

/// `1.23ms`, `456.78us`, `1.02s` → milliseconds.
fn wrk_ms(v: &str) -> f64 {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e3)
    } else {
        (v, f64::NAN)
    };
    num.parse::<f64>().map_or(f64::NAN, |n| n * scale)
}

#[allow(clippy::too_many_arguments)]
fn render(
    args: &Args,
    rate: f64,
    names: &[&str],
    wrk: &[Sample],
    bench: &[Sample],
    fixed: &[Sample],
    memory: &[Memory],
) -> String {
    let mut t = String::new();
    if args.rounds > 0 {
        render_speed(&mut t, args, rate, names, wrk, bench, fixed);
    }
    if !memory.is_empty() {
        let _ = writeln!(
            t,
            "\nMemory (RSS of the proxy's processes, MiB; each idle client sent one request):\n"
        );
        let _ = writeln!(
            t,
            "| proxy | at rest | with {} idle clients | KiB per client |",
            memory[0].clients
        );
        let _ = writeln!(t, "|---|---:|---:|---:|");
        for (i, name) in names.iter().enumerate() {
            let m = memory[i];
            let _ = writeln!(
                t,
                "| {name} | {:.1} | {:.1} | {:.1} |",
                m.rest_mib,
                m.idle_mib,
                (m.idle_mib - m.rest_mib) * 1024.0 / m.clients as f64
            );
        }
    }
    let _ = writeln!(
        t,
        "\nTargets (scalestack against the others, wrk / scalestack bench):\n"
    );
    if args.rounds > 0 {
        render_targets(&mut t, wrk, bench, fixed);
    }
    if let [nm, _, sm] = memory {
        let _ = writeln!(
            t,
            "- RSS with {} idle clients ≤ NGINX: {:.1} MiB vs {:.1} MiB ({})",
            sm.clients,
            sm.idle_mib,
            nm.idle_mib,
            if sm.idle_mib <= nm.idle_mib {
                "met"
            } else {
                "not met"
            }
        );
    }
    t
}

/// The saturation and fixed-rate tables.
fn render_speed(
    t: &mut String,
    args: &Args,
    rate: f64,
    names: &[&str],
    wrk: &[Sample],
    bench: &[Sample],
    fixed: &[Sample],
) {
    let _ = writeln!(
        t,
        "Saturation ({} connections, medians of {} rounds of {} s):\n",
        args.connections, args.rounds, args.seconds
    );
    let _ = writeln!(
        t,
        "| proxy | wrk RPS | wrk p50 ms | wrk p99 ms | wrk CPU µs/req | wrk user µs/req | wrk sys µs/req | bench RPS | bench p50 ms | bench p99 ms | bench CPU µs/req | bench user µs/req | bench sys µs/req | errors |"
    );
    let _ = writeln!(
        t,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for (i, name) in names.iter().enumerate() {
        let (w, b) = (wrk[i], bench[i]);
        let _ = writeln!(
            t,
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
            w.rps,
            w.p50_ms,
            w.p99_ms,
            w.cpu_us,
            w.user_us,
            w.sys_us,
            b.rps,
            b.p50_ms,
            b.p99_ms,
            b.cpu_us,
            b.user_us,
            b.sys_us,
            w.errors + b.errors
        );
    }
    let _ = writeln!(
        t,
        "\nFixed rate ({rate:.0} requests/s, open model, latency from each request's due time):\n"
    );
    let _ = writeln!(
        t,
        "| proxy | achieved RPS | p50 ms | p99 ms | CPU µs/req | user µs/req | sys µs/req | errors |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for (i, name) in names.iter().enumerate() {
        let f = fixed[i];
        let _ = writeln!(
            t,
            "| {name} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} | {} |",
            f.rps, f.p50_ms, f.p99_ms, f.cpu_us, f.user_us, f.sys_us, f.errors
        );
    }
    render_kernel_share(t, names, wrk, bench, fixed);
}

/// The kernel's share of each proxy's CPU per request, and what NGINX's
/// kernel time means for the CPU target.
fn render_kernel_share(
    t: &mut String,
    names: &[&str],
    wrk: &[Sample],
    bench: &[Sample],
    fixed: &[Sample],
) {
    let share = |s: &Sample| 100.0 * s.sys_us / (s.user_us + s.sys_us);
    let _ = writeln!(
        t,
        "\nKernel share of CPU per request (sys / (user + sys); wrk / bench / fixed rate):\n"
    );
    for (i, name) in names.iter().enumerate() {
        let _ = writeln!(
            t,
            "- {name}: {:.0}% / {:.0}% / {:.0}% ({:.1} / {:.1} / {:.1} µs/req in the kernel)",
            share(&wrk[i]),
            share(&bench[i]),
            share(&fixed[i]),
            wrk[i].sys_us,
            bench[i].sys_us,
            fixed[i].sys_us
        );
    }
    if let Some(n) = wrk.first() {
        let target = 0.7 * n.cpu_us;
        let _ = if target > n.sys_us {
            writeln!(
                t,
                "- Bound (wrk): NGINX spends {:.1} µs/req in the kernel, mostly the loopback TCP \
                 work that every proxy pays; 0.7× NGINX is {target:.1} µs/req, which leaves a \
                 proxy with the same kernel time {:.1} µs/req of user time (NGINX uses {:.1}).",
                n.sys_us,
                target - n.sys_us,
                n.user_us
            )
        } else {
            writeln!(
                t,
                "- Bound (wrk): NGINX spends {:.1} µs/req in the kernel, mostly the loopback TCP \
                 work that every proxy pays, and {:.1} µs/req in user space; 0.7× NGINX is \
                 {target:.1} µs/req, below NGINX's kernel time alone: a proxy with NGINX's kernel \
                 time per request cannot meet it even with no user time; only less kernel work \
                 per request (fewer system calls, fewer and larger reads and writes) can.",
                n.sys_us, n.user_us
            )
        };
    }
}

/// The speed targets of the issue.
fn render_targets(t: &mut String, wrk: &[Sample], bench: &[Sample], fixed: &[Sample]) {
    // Index 0 is NGINX, 1 HAProxy, 2 the gateway.
    let (n, h, s) = (0, 1, 2);
    let mark = |ok: bool| if ok { "met" } else { "not met" };
    let cpu = |x: &[Sample], i: usize| x[i].cpu_us;
    let _ = writeln!(
        t,
        "- CPU per request ≤ 0.7× NGINX: {:.2}× / {:.2}× ({})",
        cpu(wrk, s) / cpu(wrk, n),
        cpu(bench, s) / cpu(bench, n),
        mark(cpu(wrk, s) <= 0.7 * cpu(wrk, n) && cpu(bench, s) <= 0.7 * cpu(bench, n))
    );
    let _ = writeln!(
        t,
        "- CPU per request ≤ HAProxy: {:.2}× / {:.2}× ({})",
        cpu(wrk, s) / cpu(wrk, h),
        cpu(bench, s) / cpu(bench, h),
        mark(cpu(wrk, s) <= cpu(wrk, h) && cpu(bench, s) <= cpu(bench, h))
    );
    let _ = writeln!(
        t,
        "- Saturated throughput ≥ 1.2× NGINX: {:.2}× / {:.2}× ({})",
        wrk[s].rps / wrk[n].rps,
        bench[s].rps / bench[n].rps,
        mark(wrk[s].rps >= 1.2 * wrk[n].rps && bench[s].rps >= 1.2 * bench[n].rps)
    );
    let _ = writeln!(
        t,
        "- p99 at a fixed rate ≤ NGINX: {:.2} ms vs {:.2} ms ({})",
        fixed[s].p99_ms,
        fixed[n].p99_ms,
        mark(fixed[s].p99_ms <= fixed[n].p99_ms)
    );
}

fn append(args: &Args, report: &str) -> Result<()> {
    let machine = report::machine();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let date = report::today();
    let mut text = String::new();
    let _ = write!(
        text,
        "\n## Gateway against NGINX and HAProxy ({date})\n\n\
         Machine: {machine}; load average before the run: {}.\n\
         Upstream: NGINX `return 200` (one worker). Proxies with {} worker threads each: \
         NGINX 1.22 (`proxy_pass`, upstream `keepalive 256`), HAProxy 2.6 (`http-reuse always`), \
         `scalestack gateway` (one pool, round robin). Clients: wrk (1 thread) and \
         `scalestack bench` (1 thread). CPU = utime + stime of the proxy's process tree over the \
         run, divided by the requests served, and split into user and sys (kernel) time from \
         `/proc/<pid>/stat`; every client and server shares the machine.\n\n\
         Command: `cargo xtask bench gateway --threads {} --connections {} --seconds {} --rounds {} --idle-clients {}`\n\n{report}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        args.threads,
        args.threads,
        args.connections,
        args.seconds,
        args.rounds,
        args.idle_clients,
    );
    report::append(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latencies_parse_to_milliseconds() {
        assert_eq!(wrk_ms("1.50ms"), 1.5);
        assert_eq!(wrk_ms("250.00us"), 0.25);
        assert_eq!(wrk_ms("2.00s"), 2000.0);
        assert!(wrk_ms("n/a").is_nan());
    }

    #[test]
    fn cpu_splits_into_user_and_system_time() {
        let split = CpuSplit {
            user: Duration::from_millis(2500),
            sys: Duration::from_millis(1500),
        };
        let later = CpuSplit {
            user: Duration::from_millis(3500),
            sys: Duration::from_millis(1600),
        };
        let spent = later.since(split);
        assert_eq!(spent.total(), Duration::from_millis(1100));
        assert_eq!(spent.per_request(100.0), (10_000.0, 1_000.0));
    }

    #[test]
    fn medians_take_the_middle_sample() {
        let s = |rps: f64| Sample {
            rps,
            errors: 1,
            ..Sample::default()
        };
        let m = median(&[s(3.0), s(1.0), s(2.0)]);
        assert_eq!(m.rps, 2.0);
        assert_eq!(m.errors, 3);
    }
}
