//! Scenarios: a weighted mix of request types, read from TOML.
//!
//! ```toml
//! # Optional: the target's origin (a `--url` given on the command line wins).
//! url = "http://127.0.0.1:8080"
//!
//! [[request]]
//! name = "get user"
//! weight = 80
//! path = "/users/{id}"
//! keys = "1..100000"
//! dist = "zipf:1.1"
//! expect = [200]
//!
//! [[request]]
//! name = "place order"
//! weight = 5
//! method = "POST"
//! path = "/orders"
//! headers = { "Idempotency-Key" = "{uuid}", "Content-Type" = "application/json" }
//! body = '{"user_id": {id}, "product_id": {rand:1..10000}, "quantity": 1}'
//! keys = "1..100000"
//! expect = [201]
//! ```
//!
//! Unknown keys are errors that name the key and where it is
//! (`request[1]: unknown field `wieght``), so a typo cannot silently change
//! the load. This module parses and checks the file's shape; templates and
//! URLs are checked when the run is planned, before any load.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{KeyDist, KeyRange};

/// A weighted mix of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// The target's origin, e.g. `http://127.0.0.1:8080` (a path here is a
    /// prefix of every request's path). Optional: the caller's URL wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The request types, at least one.
    #[serde(rename = "request")]
    pub requests: Vec<RequestSpec>,
}

/// One type of request in a [`Scenario`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Name in reports; defaults to `METHOD path`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Relative weight in the mix (a share of `weight / sum of weights`).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// HTTP method.
    #[serde(default = "default_method")]
    pub method: String,
    /// Path and query, a template (see the crate docs for placeholders).
    pub path: String,
    /// Extra headers; values are templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body, a template; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Keys substituted for `{id}`.
    #[serde(default = "default_keys")]
    pub keys: KeyRange,
    /// How keys are drawn.
    #[serde(default)]
    pub dist: KeyDist,
    /// Statuses that count as success; empty means any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expect: Vec<u16>,
}

fn default_weight() -> u32 {
    1
}

fn default_method() -> String {
    "GET".into()
}

fn default_keys() -> KeyRange {
    KeyRange::new(1, 1).expect("1..=1 is not empty")
}

/// A scenario file that does not parse, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ScenarioError {
    /// Where the text came from (a file name).
    pub origin: String,
    /// What is wrong, starting with the key's path when there is one.
    pub message: String,
}

impl Scenario {
    /// Parses a scenario from TOML text; `origin` names the text in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ScenarioError> {
        let err = |message: String| ScenarioError {
            origin: origin.to_owned(),
            message,
        };
        let de =
            toml::Deserializer::parse(text).map_err(|e| err(e.to_string().trim().to_owned()))?;
        let scenario: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_owned();
            if path.is_empty() || path == "." {
                err(message)
            } else {
                err(format!("{path}: {message}"))
            }
        })?;
        scenario.check().map_err(err)?;
        Ok(scenario)
    }

    /// Checks what the types do not: at least one request, weights that
    /// add up to something, statuses that exist.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.requests.is_empty() {
            return Err("no `[[request]]`: a scenario needs at least one request".into());
        }
        let total: u64 = self.requests.iter().map(|r| u64::from(r.weight)).sum();
        if total == 0 {
            return Err("every request has weight 0: nothing would be sent".into());
        }
        for (i, r) in self.requests.iter().enumerate() {
            if let Some(bad) = r.expect.iter().find(|s| !(100..=599).contains(*s)) {
                return Err(format!(
                    "request[{i}].expect: {bad} is not an HTTP status (100 to 599)"
                ));
            }
            r.dist
                .check()
                .map_err(|reason| format!("request[{i}].dist: {reason}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"
url = "http://127.0.0.1:8080"

[[request]]
name = "get user"
weight = 80
path = "/users/{id}"
keys = "1..100000"
dist = "zipf:1.1"
expect = [200]

[[request]]
weight = 15
path = "/products/{id}"
keys = "1..10000"
dist = "hotspot:90/1"

[[request]]
name = "place order"
weight = 5
method = "POST"
path = "/orders"
headers = { "Idempotency-Key" = "{uuid}", "Content-Type" = "application/json" }
body = '{"user_id": {id}, "product_id": {rand:1..10000}, "quantity": 1}'
keys = "1..100000"
expect = [201]
"#;

    #[test]
    fn parses_a_weighted_mix() {
        let s = Scenario::from_toml(SHOP, "shop.toml").unwrap();
        assert_eq!(s.url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(s.requests.len(), 3);
        assert_eq!(s.requests[0].weight, 80);
        assert_eq!(s.requests[1].method, "GET");
        assert_eq!(s.requests[1].expect, Vec::<u16>::new());
        assert_eq!(s.requests[2].headers["Idempotency-Key"], "{uuid}");
        assert_eq!(s.requests[2].keys.count(), 100_000);
    }

    #[test]
    fn unknown_keys_are_named_with_their_place() {
        let text = SHOP.replace("weight = 15", "wieght = 15");
        let err = Scenario::from_toml(&text, "shop.toml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("shop.toml: request[1]"), "{msg}");
        assert!(msg.contains("wieght"), "{msg}");
        let err = Scenario::from_toml("rate = 5\n[[request]]\npath = \"/\"\n", "x").unwrap_err();
        assert!(err.to_string().contains("rate"), "{err}");
    }

    #[test]
    fn bad_values_are_named_with_their_place() {
        let text = SHOP.replace("dist = \"zipf:1.1\"", "dist = \"zipf:-2\"");
        let msg = Scenario::from_toml(&text, "s").unwrap_err().to_string();
        assert!(
            msg.contains("request[0].dist") && msg.contains("zipf:-2"),
            "{msg}"
        );
        let text = SHOP.replace("expect = [201]", "expect = [2010]");
        let msg = Scenario::from_toml(&text, "s").unwrap_err().to_string();
        assert!(
            msg.contains("request[2].expect") && msg.contains("2010"),
            "{msg}"
        );
        let msg = Scenario::from_toml("url = 'x'", "s")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("request"), "{msg}");
        let msg = Scenario::from_toml("[[request]]\npath='/'\nweight=0\n", "s")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("weight 0"), "{msg}");
        let msg = Scenario::from_toml("[[request]\n", "s")
            .unwrap_err()
            .to_string();
        assert!(msg.starts_with("s: "), "{msg}");
    }
}
