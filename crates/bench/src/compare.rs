//! `scalestack bench compare a.json b.json`: the differences between two
//! reports, figure by figure, with the relative change and whether it is
//! better or worse (for latency and errors less is better, for throughput
//! more). Request types are matched by name.

use std::fmt::Write as _;

use crate::report::{Align, ms, row, table};
use crate::{BenchReport, LatencySummary};

/// Which way a figure should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    Neither,
}

struct Line {
    name: String,
    a: Option<f64>,
    b: Option<f64>,
    better: Better,
    /// Renders a value.
    show: fn(f64) -> String,
}

fn count(v: f64) -> String {
    format!("{v:.0}")
}

fn rate(v: f64) -> String {
    format!("{v:.1}")
}

fn latency(v: f64) -> String {
    ms(v)
}

fn micros(v: f64) -> String {
    format!("{v:.1}")
}

/// Reads one figure off a latency summary.
type Field = fn(&LatencySummary) -> f64;

fn latency_lines(
    prefix: &str,
    a: Option<&LatencySummary>,
    b: Option<&LatencySummary>,
) -> Vec<Line> {
    let pick = |l: Option<&LatencySummary>, f: fn(&LatencySummary) -> f64| l.map(f);
    let fields: [(&str, Field); 6] = [
        ("p50", |l| l.p50_us as f64),
        ("p90", |l| l.p90_us as f64),
        ("p99", |l| l.p99_us as f64),
        ("p99.9", |l| l.p999_us as f64),
        ("max", |l| l.max_us as f64),
        ("mean", |l| l.mean_us),
    ];
    fields
        .iter()
        .map(|(name, f)| Line {
            name: format!("{prefix} {name} ms"),
            a: pick(a, *f),
            b: pick(b, *f),
            better: Better::Lower,
            show: latency,
        })
        .collect()
}

/// The comparison of `a` (the baseline) and `b` as a terminal table.
pub fn compare(a: &BenchReport, b: &BenchReport) -> String {
    let mut out = String::new();
    for (label, r) in [("a", a), ("b", b)] {
        let s = &r.settings;
        let _ = writeln!(
            out,
            "{label}: {} {} · {} model · {} · {} connections · {} s",
            s.method, s.url, s.model, s.protocol, s.connections, s.duration_s
        );
    }
    out.push('\n');

    let errors = |r: &BenchReport| (r.error_responses() + r.errors.total()) as f64;
    let mut lines = vec![
        Line {
            name: "requests".into(),
            a: Some(a.requests as f64),
            b: Some(b.requests as f64),
            better: Better::Neither,
            show: count,
        },
        Line {
            name: "req/s".into(),
            a: Some(a.rps),
            b: Some(b.rps),
            better: Better::Higher,
            show: rate,
        },
        Line {
            name: "errors".into(),
            a: Some(errors(a)),
            b: Some(errors(b)),
            better: Better::Lower,
            show: count,
        },
    ];
    if a.open.is_some() || b.open.is_some() {
        let o = |r: &BenchReport, f: fn(&crate::OpenModelReport) -> f64| r.open.as_ref().map(f);
        lines.push(Line {
            name: "target req/s".into(),
            a: o(a, |o| o.target_rps),
            b: o(b, |o| o.target_rps),
            better: Better::Neither,
            show: rate,
        });
        lines.push(Line {
            name: "achieved req/s".into(),
            a: o(a, |o| o.achieved_rps),
            b: o(b, |o| o.achieved_rps),
            better: Better::Higher,
            show: rate,
        });
        lines.push(Line {
            name: "late sends".into(),
            a: o(a, |o| o.late as f64),
            b: o(b, |o| o.late as f64),
            better: Better::Lower,
            show: count,
        });
        lines.push(Line {
            name: "dropped sends".into(),
            a: o(a, |o| o.dropped as f64),
            b: o(b, |o| o.dropped as f64),
            better: Better::Lower,
            show: count,
        });
    }
    lines.extend(latency_lines("latency", Some(&a.latency), Some(&b.latency)));
    if a.latency_uncorrected.is_some() || b.latency_uncorrected.is_some() {
        lines.extend(
            latency_lines(
                "uncorrected",
                a.latency_uncorrected.as_ref(),
                b.latency_uncorrected.as_ref(),
            )
            .into_iter()
            .filter(|l| l.name.contains("p99 ") || l.name.contains("p50")),
        );
    }
    let cpu = |r: &BenchReport, target: bool| {
        if target { &r.target_cpu } else { &r.client_cpu }
            .as_ref()
            .and_then(|c| c.us_per_request)
    };
    for (name, target) in [("client CPU µs/req", false), ("target CPU µs/req", true)] {
        if cpu(a, target).is_some() || cpu(b, target).is_some() {
            lines.push(Line {
                name: name.into(),
                a: cpu(a, target),
                b: cpu(b, target),
                better: Better::Lower,
                show: micros,
            });
        }
    }
    let mut names: Vec<&str> = a.kinds.iter().map(|k| k.name.as_str()).collect();
    for k in &b.kinds {
        if !names.contains(&k.name.as_str()) {
            names.push(&k.name);
        }
    }
    if names.len() > 1 {
        for name in names {
            let ka = a.kinds.iter().find(|k| k.name == name);
            let kb = b.kinds.iter().find(|k| k.name == name);
            lines.push(Line {
                name: format!("{name}: req/s"),
                a: ka.map(|k| k.rps),
                b: kb.map(|k| k.rps),
                better: Better::Higher,
                show: rate,
            });
            lines.push(Line {
                name: format!("{name}: p99 ms"),
                a: ka.map(|k| k.latency.p99_us as f64),
                b: kb.map(|k| k.latency.p99_us as f64),
                better: Better::Lower,
                show: latency,
            });
        }
    }

    let mut rows = vec![row(["", "a", "b", "change", ""])];
    for l in &lines {
        let show = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), l.show);
        let (change, verdict) = match (l.a, l.b) {
            (Some(a), Some(b)) if a == b => ("=".to_owned(), ""),
            (Some(a), Some(b)) if a != 0.0 => {
                let pct = (b - a) / a * 100.0;
                let verdict = match l.better {
                    _ if pct.abs() < 0.05 => "",
                    Better::Higher if pct > 0.0 => "better",
                    Better::Lower if pct < 0.0 => "better",
                    Better::Neither => "",
                    _ => "worse",
                };
                (format!("{pct:+.1}%"), verdict)
            }
            (Some(_), Some(b)) => {
                let verdict = match l.better {
                    Better::Lower => "worse",
                    Better::Higher => "better",
                    Better::Neither => "",
                };
                (format!("+{}", (l.show)(b)), verdict)
            }
            _ => ("-".to_owned(), ""),
        };
        rows.push(row([&l.name, &show(l.a), &show(l.b), &change, verdict]));
    }
    out.push_str(&table(
        &rows,
        &[
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Left,
        ],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rps: f64, p99_us: u64, errors: u64) -> BenchReport {
        let json = serde_json::json!({
            "settings": {
                "url": "http://127.0.0.1:8080/users/{id}", "method": "GET", "keys": "1..=10",
                "dist": "uniform", "connections": 8, "threads": 2, "duration_s": 10.0,
                "timeout_s": 10.0
            },
            "elapsed_s": 10.0, "requests": (rps * 10.0) as u64, "rps": rps,
            "status_counts": {"200": (rps * 10.0) as u64},
            "errors": {"connect": 0, "timeout": errors, "io": 0},
            "latency": {"count": 1, "min_us": 1, "mean_us": 500.0, "stdev_us": 1.0, "p50_us": 400,
                        "p90_us": 800, "p99_us": p99_us, "p999_us": 3000, "max_us": 9000},
            "body_bytes": 0, "reconnects": 0, "client_cpu": null, "target_cpu": null
        });
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn shows_changes_with_their_direction() {
        let text = compare(&report(1000.0, 2000, 0), &report(1100.0, 1500, 3));
        let line = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in\n{text}"))
                .to_owned()
        };
        let rps = line("req/s");
        assert!(
            rps.contains("1000.0")
                && rps.contains("1100.0")
                && rps.contains("+10.0%")
                && rps.ends_with("better"),
            "{rps}"
        );
        let p99 = line("latency p99 ms");
        assert!(
            p99.contains("2.000")
                && p99.contains("1.500")
                && p99.contains("-25.0%")
                && p99.ends_with("better"),
            "{p99}"
        );
        let errors = line("errors");
        assert!(
            errors.contains("+3") && errors.ends_with("worse"),
            "{errors}"
        );
        let p50 = line("latency p50 ms");
        assert!(p50.contains('='), "{p50}");
        assert!(
            text.starts_with("a: GET http://127.0.0.1:8080/users/{id} · closed model"),
            "{text}"
        );
    }
}
