//! The structured access log: off by default, one line per request when on.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use crate::support::*;

/// Every access-log line of this test binary, as JSON.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter("scalestack_gateway::access=info")
            .with_writer(move || Sink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        lines
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lines_with(path: &str) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["fields"]["path"] == path)
        .collect()
}

#[tokio::test]
async fn the_access_log_has_one_structured_line_per_request_when_on() {
    captured();
    let upstream = Upstream::start("a").await;
    let quiet = RunningGateway::start(&config(&[upstream.addr])).await;
    assert_eq!(get(quiet.addr, "/not-logged?x=1").await.status, 200);

    let mut logged = config(&[upstream.addr]);
    logged.access_log = true;
    let gateway = RunningGateway::start(&logged).await;
    assert_eq!(get(gateway.addr, "/logged?x=1").await.status, 200);
    eventually("the request was logged", || async {
        !lines_with("/logged?x=1").is_empty()
    })
    .await;
    let lines = lines_with("/logged?x=1");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let fields = &lines[0]["fields"];
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["status"], 200);
    assert_eq!(fields["route"], "default");
    assert_eq!(fields["pool"], "api");
    assert_eq!(fields["endpoint"], upstream.addr.to_string().as_str());
    assert_eq!(fields["client"], "127.0.0.1");
    assert!(fields["duration_us"].as_u64().is_some(), "{fields}");
    assert!(
        lines_with("/not-logged?x=1").is_empty(),
        "logging is off by default"
    );
}
