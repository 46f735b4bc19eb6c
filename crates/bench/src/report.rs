//! The result of a run: [`BenchReport`], serialisable for `--json FILE`
//! (and read back by `compare` and `scalestack plan --from`), rendered as a
//! terminal table here and as HTML in `html`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cpu::CpuUsage;
use crate::schedule::Schedule;
use crate::stats::{
    ErrorCounts, KindStats, LatencySummary, PercentilePoint, TimelineRow, Totals, spectrum,
};
use crate::target::RequestKind;
use crate::{KeyDist, KeyRange, Protocol, Stage};

/// What was run, as resolved (e.g. `threads` is the real thread count).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSettings {
    /// The URL template (the origin, with a scenario).
    pub url: String,
    /// The request method; `MIX` for a scenario.
    pub method: String,
    /// The key range (of the single request; see `kinds` for a scenario).
    pub keys: KeyRange,
    /// The key distribution (of the single request).
    pub dist: KeyDist,
    /// Concurrent connections.
    pub connections: usize,
    /// Load threads of the generator.
    pub threads: usize,
    /// How long new requests were started for, in seconds.
    pub duration_s: f64,
    /// Per-request timeout, in seconds.
    pub timeout_s: f64,
    /// `closed` or `open`.
    #[serde(default = "closed")]
    pub model: String,
    /// Open model: the stages of the rate (one hold for a constant rate).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
    /// HTTP version.
    #[serde(default)]
    pub protocol: Protocol,
    /// Seed of the random streams; the same seed draws the same keys.
    #[serde(default)]
    pub seed: u64,
}

fn closed() -> String {
    "closed".into()
}

/// The open model's own figures: did the generator keep its schedule?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenModelReport {
    /// Requests the schedule asked for.
    pub scheduled: u64,
    /// `scheduled` over the duration.
    pub target_rps: f64,
    /// Requests actually sent.
    pub sent: u64,
    /// `sent` over the duration: the arrival rate the target really saw.
    pub achieved_rps: f64,
    /// Requests sent more than `late_after_us` after their due time.
    pub late: u64,
    /// The lateness threshold, microseconds.
    pub late_after_us: u64,
    /// Due requests never sent: every connection was busy (or failing to
    /// connect) until the run ended. More connections, or a lower rate.
    pub dropped: u64,
    /// How long after its due time each request was sent.
    pub send_lag: LatencySummary,
}

/// What one request type of the mix saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    /// Its name.
    pub name: String,
    /// Its method.
    pub method: String,
    /// Its path template.
    pub path: String,
    /// Its weight in the mix.
    pub weight: u32,
    /// Statuses it expects, e.g. `201` or `2xx/3xx`.
    pub expect: String,
    /// Complete responses.
    pub requests: u64,
    /// `requests / elapsed_s`.
    pub rps: f64,
    /// Responses by status.
    pub status_counts: BTreeMap<u16, u64>,
    /// Responses with a status it does not expect.
    pub unexpected: u64,
    /// Transport errors.
    pub errors: ErrorCounts,
    /// Latency (open model: from the due time).
    pub latency: LatencySummary,
    /// Open model: latency from the actual send, which hides waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_uncorrected: Option<LatencySummary>,
    /// Response body bytes.
    pub body_bytes: u64,
}

/// Everything a run measured.
///
/// Counting rule: a request in flight when the duration ends is allowed to
/// finish (within the timeout) and is counted like any other; `elapsed_s`
/// runs until the last of them finished. So every response the target sent
/// is in the report, and `rps` is over the time actually spent. The probe
/// request sent before the load is not counted.
///
/// Fields added after the first release default when absent, so reports
/// written by older versions still load (for `compare`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// What was run.
    pub settings: BenchSettings,
    /// Wall-clock time from the first request to the last response, in seconds.
    pub elapsed_s: f64,
    /// Complete responses, whatever their status.
    pub requests: u64,
    /// `requests / elapsed_s`.
    pub rps: f64,
    /// Responses by status code.
    pub status_counts: BTreeMap<u16, u64>,
    /// Responses whose status their request type does not expect (by
    /// default: anything but 2xx and 3xx).
    #[serde(default)]
    pub unexpected: u64,
    /// Transport errors by kind (not included in `requests`).
    pub errors: ErrorCounts,
    /// Latency of complete responses. Open model: from each request's due
    /// time, so time spent waiting for a free connection counts.
    pub latency: LatencySummary,
    /// Open model: latency from the actual send (what a generator with
    /// coordinated omission would report), shown beside for comparison.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_uncorrected: Option<LatencySummary>,
    /// Open model: schedule keeping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenModelReport>,
    /// Response body bytes received (headers are not counted).
    pub body_bytes: u64,
    /// Connections re-opened after the target or an error closed one.
    pub reconnects: u64,
    /// CPU time of the load generator's own process over the run; `None` if
    /// `/proc` could not be read.
    pub client_cpu: Option<CpuUsage>,
    /// CPU time of the process trees of `cpu_pids` over the run; `None` if
    /// none were given.
    pub target_cpu: Option<CpuUsage>,
    /// Per request type.
    #[serde(default)]
    pub kinds: Vec<KindReport>,
    /// Latency percentile spectrum of all responses.
    #[serde(default)]
    pub spectrum: Vec<PercentilePoint>,
    /// Open model: the spectrum of the uncorrected latency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spectrum_uncorrected: Vec<PercentilePoint>,
    /// One row per second.
    #[serde(default)]
    pub timeline: Vec<TimelineRow>,
}

/// What [`assemble`] builds a report from.
pub(crate) struct Parts<'a> {
    pub(crate) settings: BenchSettings,
    pub(crate) kinds: &'a [RequestKind],
    pub(crate) schedule: Option<&'a Schedule>,
    pub(crate) duration: Duration,
    pub(crate) elapsed: Duration,
    pub(crate) totals: &'a Totals,
    pub(crate) overall: &'a KindStats,
    pub(crate) timeline: Vec<TimelineRow>,
    pub(crate) client_cpu: Option<CpuUsage>,
    pub(crate) target_cpu: Option<CpuUsage>,
}

fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

pub(crate) fn assemble(p: Parts<'_>) -> BenchReport {
    let elapsed_s = p.elapsed.as_secs_f64();
    let duration_s = p.duration.as_secs_f64();
    let overall = p.overall;
    let requests = overall.responses();
    let kinds = p
        .kinds
        .iter()
        .zip(&p.totals.kinds)
        .map(|(kind, stats)| KindReport {
            name: kind.name.clone(),
            method: kind.method.to_string(),
            path: kind.path_source.clone(),
            weight: kind.weight,
            expect: kind.expect.describe(),
            requests: stats.responses(),
            rps: per_second(stats.responses(), elapsed_s),
            status_counts: stats.status_map(),
            unexpected: stats.unexpected,
            errors: stats.errors,
            latency: LatencySummary::from_histogram(&stats.latency),
            latency_uncorrected: stats
                .uncorrected
                .as_ref()
                .map(LatencySummary::from_histogram),
            body_bytes: stats.body_bytes,
        })
        .collect();
    let open = p.schedule.map(|schedule| OpenModelReport {
        scheduled: schedule.requests(),
        target_rps: per_second(schedule.requests(), duration_s),
        sent: p.totals.sent,
        achieved_rps: per_second(p.totals.sent, duration_s),
        late: p.totals.late,
        late_after_us: crate::engine::LATE_AFTER.as_micros() as u64,
        dropped: p.totals.dropped,
        send_lag: LatencySummary::from_histogram(&p.totals.send_lag),
    });
    BenchReport {
        settings: p.settings,
        elapsed_s,
        requests,
        rps: per_second(requests, elapsed_s),
        status_counts: overall.status_map(),
        unexpected: overall.unexpected,
        errors: overall.errors,
        latency: LatencySummary::from_histogram(&overall.latency),
        latency_uncorrected: overall
            .uncorrected
            .as_ref()
            .map(LatencySummary::from_histogram),
        open,
        body_bytes: overall.body_bytes,
        reconnects: p.totals.reconnects,
        client_cpu: p.client_cpu,
        target_cpu: p.target_cpu,
        kinds,
        spectrum: spectrum(&overall.latency),
        spectrum_uncorrected: overall
            .uncorrected
            .as_ref()
            .map(spectrum)
            .unwrap_or_default(),
        timeline: p.timeline,
    }
}

impl BenchReport {
    /// Responses with a status their request type does not expect (by
    /// default anything but 2xx and 3xx). Reports of older versions, which
    /// did not record this, count statuses other than 2xx and 3xx.
    pub fn error_responses(&self) -> u64 {
        if self.unexpected > 0 || !self.kinds.is_empty() {
            return self.unexpected;
        }
        self.status_counts
            .iter()
            .filter(|&(&s, _)| !(200..400).contains(&s))
            .map(|(_, n)| n)
            .sum()
    }

    /// The report as an aligned table for a terminal.
    pub fn render_table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(out, "{} {}", s.method, s.url);
        let load = if s.model == "open" {
            let stages: Vec<String> = s.stages.iter().map(Stage::to_string).collect();
            format!("open model, rate {}", stages.join(", "))
        } else {
            "closed model".to_owned()
        };
        let _ = writeln!(
            out,
            "{load} · {} · keys {} {} · {} connections · {} threads · {} s (timeout {} s)",
            s.protocol,
            s.keys,
            s.dist,
            s.connections,
            s.threads,
            trim_float(s.duration_s),
            trim_float(s.timeout_s),
        );
        out.push('\n');

        let mut summary = vec![
            row([
                "requests",
                &self.requests.to_string(),
                &format!("{:.1} req/s", self.rps),
            ]),
            row(["elapsed", &format!("{:.3} s", self.elapsed_s), ""]),
            row(["received", &bytes(self.body_bytes), "response bodies"]),
            row(["reconnects", &self.reconnects.to_string(), ""]),
        ];
        let transport = self.errors.total();
        let bad = self.error_responses();
        summary.push(row([
            "errors",
            &(transport + bad).to_string(),
            "unexpected statuses + transport",
        ]));
        out.push_str(&table(&summary, &[Align::Left, Align::Right, Align::Left]));
        out.push('\n');

        let total = self.requests.max(1) as f64;
        let mut statuses = vec![row(["status", "count", "share"])];
        for (status, &n) in &self.status_counts {
            statuses.push(row([
                &status.to_string(),
                &n.to_string(),
                &format!("{:.1}%", n as f64 * 100.0 / total),
            ]));
        }
        if self.status_counts.is_empty() {
            statuses.push(row(["(none)", "0", ""]));
        }
        out.push_str(&table(
            &statuses,
            &[Align::Left, Align::Right, Align::Right],
        ));
        out.push('\n');

        let e = &self.errors;
        let errors = vec![
            row(["transport errors", "count"]),
            row(["connect", &e.connect.to_string()]),
            row(["timeout", &e.timeout.to_string()]),
            row(["io", &e.io.to_string()]),
        ];
        out.push_str(&table(&errors, &[Align::Left, Align::Right]));
        out.push('\n');

        if let Some(o) = &self.open {
            let schedule = vec![
                row(["schedule", "requests", "req/s", ""]),
                row([
                    "target",
                    &o.scheduled.to_string(),
                    &format!("{:.1}", o.target_rps),
                    "",
                ]),
                row([
                    "sent",
                    &o.sent.to_string(),
                    &format!("{:.1}", o.achieved_rps),
                    &format!(
                        "{:.2}% of target",
                        100.0 * o.achieved_rps / o.target_rps.max(1e-9)
                    ),
                ]),
                row([
                    "late",
                    &o.late.to_string(),
                    "",
                    &format!(
                        "sent > {} ms after due",
                        trim_float(o.late_after_us as f64 / 1000.0)
                    ),
                ]),
                row(["dropped", &o.dropped.to_string(), "", "due, never sent"]),
                row([
                    "send lag",
                    "",
                    "",
                    &format!(
                        "p50 {} ms · p99 {} ms · max {} ms",
                        ms(o.send_lag.p50_us as f64),
                        ms(o.send_lag.p99_us as f64),
                        ms(o.send_lag.max_us as f64)
                    ),
                ]),
            ];
            out.push_str(&table(
                &schedule,
                &[Align::Left, Align::Right, Align::Right, Align::Left],
            ));
            out.push('\n');
        }

        let mut latency = vec![row([
            "latency (ms)",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
            "mean",
        ])];
        let label = if self.latency_uncorrected.is_some() {
            "from due time"
        } else {
            ""
        };
        latency.push(latency_row(label, &self.latency));
        if let Some(u) = &self.latency_uncorrected {
            latency.push(latency_row("from send (uncorrected)", u));
        }
        let mut align = vec![Align::Right; 7];
        align[0] = Align::Left;
        out.push_str(&table(&latency, &align));

        if self.kinds.len() > 1 {
            out.push('\n');
            let mut kinds = vec![row([
                "request",
                "weight",
                "requests",
                "req/s",
                "unexpected",
                "errors",
                "p50 ms",
                "p99 ms",
                "expect",
            ])];
            for k in &self.kinds {
                kinds.push(row([
                    &k.name,
                    &k.weight.to_string(),
                    &k.requests.to_string(),
                    &format!("{:.1}", k.rps),
                    &k.unexpected.to_string(),
                    &k.errors.total().to_string(),
                    &ms(k.latency.p50_us as f64),
                    &ms(k.latency.p99_us as f64),
                    &k.expect,
                ]));
            }
            let mut align = vec![Align::Right; 9];
            align[0] = Align::Left;
            align[8] = Align::Left;
            out.push_str(&table(&kinds, &align));
        }

        if self.client_cpu.is_some() || self.target_cpu.is_some() {
            out.push('\n');
            let mut cpu = vec![row(["cpu", "processes", "total ms", "µs/request"])];
            for (name, usage) in [("client", &self.client_cpu), ("targets", &self.target_cpu)] {
                if let Some(u) = usage {
                    cpu.push(row([
                        name,
                        &u.processes.to_string(),
                        &format!("{:.1}", u.cpu_us as f64 / 1000.0),
                        &u.us_per_request
                            .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}")),
                    ]));
                }
            }
            out.push_str(&table(
                &cpu,
                &[Align::Left, Align::Right, Align::Right, Align::Right],
            ));
        }
        out
    }
}

fn latency_row(label: &str, l: &LatencySummary) -> Vec<String> {
    row([
        label,
        &ms(l.p50_us as f64),
        &ms(l.p90_us as f64),
        &ms(l.p99_us as f64),
        &ms(l.p999_us as f64),
        &ms(l.max_us as f64),
        &ms(l.mean_us),
    ])
}

/// Milliseconds from microseconds, with precision that suits the size: µs
/// resolution below 100 ms, 0.1 ms above.
pub(crate) fn ms(us: f64) -> String {
    let ms = us / 1000.0;
    if ms < 100.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.1}")
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

/// `20` rather than `20.0`, `0.5` stays.
pub(crate) fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

pub(crate) fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// Pads every column to its widest cell, two spaces between columns, no
/// trailing blanks.
pub(crate) fn table(rows: &[Vec<String>], align: &[Align]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            let pad = widths[c] - cell.chars().count();
            match align.get(c).copied().unwrap_or(Align::Left) {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BenchReport {
        BenchReport {
            settings: BenchSettings {
                url: "http://127.0.0.1:8080/users/{id}".into(),
                method: "GET".into(),
                keys: "1..100000".parse().unwrap(),
                dist: "zipf:1.1".parse().unwrap(),
                connections: 64,
                threads: 2,
                duration_s: 20.0,
                timeout_s: 10.0,
                model: "closed".into(),
                stages: Vec::new(),
                protocol: Protocol::Http1,
                seed: 1,
            },
            elapsed_s: 20.0012,
            requests: 1_234_567,
            rps: 61_724.6,
            status_counts: BTreeMap::from([(200, 1_200_000), (404, 34_567)]),
            unexpected: 34_567,
            latency_uncorrected: None,
            open: None,
            kinds: Vec::new(),
            spectrum: Vec::new(),
            spectrum_uncorrected: Vec::new(),
            timeline: Vec::new(),
            errors: ErrorCounts {
                connect: 0,
                timeout: 3,
                io: 1,
            },
            latency: LatencySummary {
                count: 1_234_567,
                min_us: 95,
                mean_us: 903.2,
                stdev_us: 300.0,
                p50_us: 812,
                p90_us: 1_204,
                p99_us: 2_998,
                p999_us: 7_310,
                max_us: 125_100,
            },
            body_bytes: 123 * 1024 * 1024,
            reconnects: 5,
            client_cpu: Some(CpuUsage::new(
                vec![1],
                1,
                std::time::Duration::from_millis(12_345),
                1_234_567,
            )),
            target_cpu: Some(CpuUsage::new(
                vec![2],
                3,
                std::time::Duration::from_millis(45_678),
                1_234_567,
            )),
        }
    }

    #[test]
    fn table_shows_every_figure() {
        let text = sample().render_table();
        for want in [
            "GET http://127.0.0.1:8080/users/{id}",
            "closed model · HTTP/1.1 · keys 1..=100000 zipf:1.1 · 64 connections · 2 threads · 20 s (timeout 10 s)",
            "1234567",
            "61724.6 req/s",
            "20.001 s",
            "123.0 MiB",
            "34571",
            "97.2%",
            "2.8%",
            "0.812",
            "1.204",
            "2.998",
            "7.310",
            "125.1",
            "0.903",
            "12345.0",
            "45678.0",
            "37.0",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "trailing blanks in\n{text}"
        );
    }

    #[test]
    fn columns_line_up() {
        let text = sample().render_table();
        let lines: Vec<&str> = text.lines().collect();
        let status = lines
            .iter()
            .position(|l| l.trim_start().starts_with("status"))
            .unwrap();
        // Counts are right-aligned: the three rows end their count column at
        // the same position.
        let end = |l: &str, word: &str| l.find(word).unwrap() + word.len();
        let col = end(lines[status], "count");
        assert_eq!(end(lines[status + 1], "1200000"), col);
        assert_eq!(end(lines[status + 2], "34567"), col);
        let latency = lines
            .iter()
            .position(|l| l.trim_start().starts_with("latency"))
            .unwrap();
        assert_eq!(end(lines[latency], "p99"), end(lines[latency + 1], "2.998"));
    }

    #[test]
    fn json_round_trips() {
        let report = sample();
        let json = serde_json::to_string_pretty(&report).unwrap();
        assert!(
            json.contains("\"keys\": \"1..=100000\"") && json.contains("\"dist\": \"zipf:1.1\""),
            "{json}"
        );
        assert!(json.contains("\"404\": 34567"), "{json}");
        assert_eq!(serde_json::from_str::<BenchReport>(&json).unwrap(), report);
    }

    #[test]
    fn counts_error_responses() {
        let mut report = sample();
        assert_eq!(report.error_responses(), 34_567);
        // An old report without the field counts non-2xx/3xx statuses.
        report.unexpected = 0;
        report.status_counts.insert(503, 10);
        report.status_counts.insert(302, 7);
        assert_eq!(report.error_responses(), 34_577);
    }

    #[test]
    fn open_model_reports_show_the_schedule_and_both_latencies() {
        let mut report = sample();
        report.settings.model = "open".into();
        report.settings.stages = vec![Stage::hold(5000.0, Duration::from_secs(20))];
        report.latency_uncorrected = Some(LatencySummary {
            p99_us: 1_111,
            ..report.latency
        });
        report.open = Some(OpenModelReport {
            scheduled: 100_000,
            target_rps: 5000.0,
            sent: 99_500,
            achieved_rps: 4975.0,
            late: 12,
            late_after_us: 1000,
            dropped: 500,
            send_lag: LatencySummary::default(),
        });
        let text = report.render_table();
        for want in [
            "open model, rate 5000/20s",
            "99.50% of target",
            "dropped",
            "500",
            "from due time",
            "from send (uncorrected)",
            "1.111",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<BenchReport>(&json).unwrap(), report);
    }

    #[test]
    fn reports_of_the_first_version_still_load() {
        let mut json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        for key in ["unexpected", "kinds", "spectrum", "timeline"] {
            json.as_object_mut().unwrap().remove(key);
        }
        for key in ["model", "stages", "protocol", "seed"] {
            json["settings"].as_object_mut().unwrap().remove(key);
        }
        let report: BenchReport = serde_json::from_value(json).unwrap();
        assert_eq!(report.settings.model, "closed");
        assert_eq!(report.error_responses(), 34_567);
    }

    #[test]
    fn formats_units() {
        assert_eq!(ms(812.0), "0.812");
        assert_eq!(ms(99_999.0), "99.999");
        assert_eq!(ms(125_100.0), "125.1");
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(trim_float(0.5), "0.5");
        assert_eq!(trim_float(20.0), "20");
    }
}
