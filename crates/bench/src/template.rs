//! Text templates with placeholders, compiled once and rendered per request.
//!
//! A template is literal bytes with placeholders in braces:
//!
//! * `{id}`: the request's key, drawn from its key range and distribution
//!   (every `{id}` of one request gets the same key);
//! * `{uuid}`: a random version-4 UUID, fresh for each request (every
//!   `{uuid}` of one request gets the same one, so an `Idempotency-Key`
//!   header and a `request_id` in the body agree);
//! * `{seq}`: a number unique to the request within the run;
//! * `{rand:A..B}`: a uniform random integer in `A..=B`, fresh at each
//!   occurrence.
//!
//! A brace that does not open one of these forms (`{"user": 1}` in a JSON
//! body) is literal text, so bodies need no escaping. A brace that *looks*
//! like a placeholder (`{user}`, `{rand:x}`) but is not a known one is an
//! error: a typo must not silently become literal text sent a million times.
//!
//! This module only renders bytes; it knows nothing of HTTP.

use std::fmt;

use rand::distr::{Distribution, Uniform};
use rand::{Rng, RngExt};

/// One piece of a template.
#[derive(Debug, Clone)]
enum Part {
    Literal(Vec<u8>),
    Id,
    Uuid,
    Seq,
    Rand(Uniform<u64>),
}

/// A compiled template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
}

/// Values shared by every template of one request.
#[derive(Debug)]
pub(crate) struct Vars {
    pub(crate) key: u64,
    pub(crate) seq: u64,
    /// Drawn at the first `{uuid}` of the request, then reused.
    uuid: Option<[u8; 36]>,
}

impl Vars {
    pub(crate) fn new(key: u64, seq: u64) -> Self {
        Self {
            key,
            seq,
            uuid: None,
        }
    }
}

/// Why a template does not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateError(pub(crate) String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The placeholders, for error messages.
pub(crate) const KNOWN: &str = "{id}, {uuid}, {seq}, {rand:A..B}";

impl Template {
    /// Compiles `text`.
    pub(crate) fn compile(text: &[u8]) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = Vec::new();
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'{'
                && let Some((part, len)) = placeholder(&text[i..])?
            {
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(part);
                i += len;
                continue;
            }
            literal.push(text[i]);
            i += 1;
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Self { parts })
    }

    /// A template of literal bytes only.
    pub(crate) fn literal(bytes: &[u8]) -> Self {
        Self {
            parts: if bytes.is_empty() {
                Vec::new()
            } else {
                vec![Part::Literal(bytes.to_vec())]
            },
        }
    }

    /// Whether the template is empty (renders nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The literal pieces, for validating what may appear in a path or a
    /// header: placeholders only ever render digits, hex and dashes.
    pub(crate) fn literals(&self) -> impl Iterator<Item = &[u8]> {
        self.parts.iter().filter_map(|p| match p {
            Part::Literal(bytes) => Some(bytes.as_slice()),
            _ => None,
        })
    }

    /// Renders with the largest value every placeholder can take, which is
    /// also the longest rendering: used to validate paths once.
    pub(crate) fn render_longest(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut vars = Vars::new(u64::MAX, u64::MAX);
        vars.uuid = Some(*b"ffffffff-ffff-4fff-bfff-ffffffffffff");
        for part in &self.parts {
            match part {
                Part::Rand(_) => push_u64(&mut out, u64::MAX),
                other => render_part(other, &mut out, &mut vars, &mut NoRng),
            }
        }
        out
    }

    /// Appends the rendering to `out`.
    pub(crate) fn render<R: Rng + ?Sized>(&self, out: &mut Vec<u8>, vars: &mut Vars, rng: &mut R) {
        for part in &self.parts {
            render_part(part, out, vars, rng);
        }
    }
}

fn render_part<R: Rng + ?Sized>(part: &Part, out: &mut Vec<u8>, vars: &mut Vars, rng: &mut R) {
    match part {
        Part::Literal(bytes) => out.extend_from_slice(bytes),
        Part::Id => push_u64(out, vars.key),
        Part::Seq => push_u64(out, vars.seq),
        Part::Rand(uniform) => push_u64(out, uniform.sample(rng)),
        Part::Uuid => {
            let uuid = vars.uuid.get_or_insert_with(|| uuid_v4(rng.random()));
            out.extend_from_slice(uuid);
        }
    }
}

/// An RNG for [`Template::render_longest`], which draws nothing.
struct NoRng;

impl rand::TryRng for NoRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(u32::MAX)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(u64::MAX)
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        dst.fill(0xff);
        Ok(())
    }
}

/// Parses the placeholder at the start of `text` (which starts with `{`).
/// `Ok(None)` means the brace is literal text.
fn placeholder(text: &[u8]) -> Result<Option<(Part, usize)>, TemplateError> {
    // A placeholder is `{` identifier [`:` argument] `}` with no spaces or
    // quotes; anything else (JSON) is literal.
    let Some(close) = text.iter().position(|&b| b == b'}') else {
        return Ok(None);
    };
    let inner = &text[1..close];
    let (name, arg) = match inner.iter().position(|&b| b == b':') {
        Some(colon) => (&inner[..colon], Some(&inner[colon + 1..])),
        None => (inner, None),
    };
    let is_ident = !name.is_empty()
        && name[0].is_ascii_alphabetic()
        && name.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    let arg_ok = arg.is_none_or(|a| {
        a.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'=' | b'_' | b'-'))
    });
    if !is_ident || !arg_ok {
        return Ok(None);
    }
    let shown = String::from_utf8_lossy(&text[..=close]).into_owned();
    let part = match (name, arg) {
        (b"id", None) => Part::Id,
        (b"uuid", None) => Part::Uuid,
        (b"seq", None) => Part::Seq,
        (b"rand", Some(arg)) => {
            let arg = std::str::from_utf8(arg).unwrap_or_default();
            let range: crate::KeyRange = arg.parse().map_err(|_| {
                TemplateError(format!(
                    "`{shown}`: expected `{{rand:A..B}}` with unsigned integers A <= B"
                ))
            })?;
            let uniform = Uniform::new_inclusive(range.first(), range.last())
                .map_err(|e| TemplateError(format!("`{shown}`: {e}")))?;
            Part::Rand(uniform)
        }
        _ => {
            return Err(TemplateError(format!(
                "unknown placeholder `{shown}`; known placeholders are {KNOWN}"
            )));
        }
    };
    Ok(Some((part, close + 1)))
}

/// Appends the decimal digits of `n`.
pub(crate) fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Formats 128 random bits as a version-4, variant-1 UUID.
fn uuid_v4(bits: u128) -> [u8; 36] {
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = b"0123456789abcdef";
    let mut out = [b'-'; 36];
    let mut nibble = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            continue;
        }
        *slot = hex[((bits >> (124 - 4 * nibble)) & 0xf) as usize];
        nibble += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn render(t: &Template, key: u64, seq: u64) -> String {
        let mut out = Vec::new();
        let mut rng = SmallRng::seed_from_u64(3);
        t.render(&mut out, &mut Vars::new(key, seq), &mut rng);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn substitutes_keys_sequence_numbers_and_leaves_json_alone() {
        let t = Template::compile(br#"{"user_id": {id}, "n": {seq}, "x": {"y": 1}}"#).unwrap();
        assert_eq!(
            render(&t, 42, 7),
            r#"{"user_id": 42, "n": 7, "x": {"y": 1}}"#
        );
        let t = Template::compile(b"/users/{id}/orders?u={id}").unwrap();
        assert_eq!(render(&t, 0, 0), "/users/0/orders?u=0");
        assert_eq!(
            render(&t, u64::MAX, 0),
            format!("/users/{0}/orders?u={0}", u64::MAX)
        );
        assert_eq!(render(&Template::compile(b"{").unwrap(), 1, 1), "{");
        assert_eq!(
            render(&Template::compile(b"{ id }").unwrap(), 1, 1),
            "{ id }"
        );
    }

    #[test]
    fn one_uuid_per_request_and_a_fresh_one_for_the_next() {
        let t = Template::compile(b"{uuid} {uuid}").unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut first = Vec::new();
        t.render(&mut first, &mut Vars::new(1, 1), &mut rng);
        let first = String::from_utf8(first).unwrap();
        let (a, b) = first.split_once(' ').unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4", "version nibble: {a}");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"), "variant: {a}");
        let mut second = Vec::new();
        t.render(&mut second, &mut Vars::new(1, 2), &mut rng);
        assert_ne!(String::from_utf8(second).unwrap(), first);
    }

    #[test]
    fn random_integers_stay_in_their_range() {
        let t = Template::compile(b"{rand:5..7}").unwrap();
        let mut rng = SmallRng::seed_from_u64(9);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let mut out = Vec::new();
            t.render(&mut out, &mut Vars::new(0, 0), &mut rng);
            seen.insert(String::from_utf8(out).unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["5", "6", "7"]);
        assert_eq!(
            String::from_utf8(t.render_longest()).unwrap(),
            u64::MAX.to_string()
        );
    }

    #[test]
    fn unknown_or_malformed_placeholders_are_errors() {
        let err = Template::compile(b"/users/{user}").unwrap_err().0;
        assert!(err.contains("`{user}`") && err.contains("{id}"), "{err}");
        let err = Template::compile(b"{rand:9..1}").unwrap_err().0;
        assert!(err.contains("`{rand:9..1}`"), "{err}");
        let err = Template::compile(b"{rand:x..y}").unwrap_err().0;
        assert!(err.contains("rand:A..B"), "{err}");
        assert!(Template::compile(b"{id:3}").is_err());
    }

    #[test]
    fn digits_are_written_without_allocation_surprises() {
        for n in [0, 9, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
        }
    }
}
