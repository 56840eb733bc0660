//! W3C Trace Context (`traceparent`, `tracestate`): what a job keeps of the
//! trace its submitter was in, and the spans replyd makes in that trace.
//!
//! A job's [`TraceContext`] is read from its submission (an HTTP header, a
//! WebSocket field, a broker message's headers) and kept in its record. A
//! malformed `traceparent` is ignored, as the specification asks: the job
//! is then not part of a trace (or, with telemetry on, starts its own).
//!
//! replyd's own spans have ids derived from the job ([`span_id`]), not
//! drawn at random, so that every node of a cluster names the same span
//! alike: the node that leases attempt 2 hands its worker the id of
//! attempt 2's span, which another node later exports when the attempt
//! ends.

use serde::{Deserialize, Serialize};

use crate::ids::JobId;

/// The longest `tracestate` kept (the specification's limit is 512
/// characters' worth of 32 members; more is cut at a member boundary).
pub const MAX_TRACESTATE: usize = 512;

/// A position in a trace: the trace, the span that is the parent of what
/// comes next, its flags, and the vendors' `tracestate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanContext {
    #[serde(with = "hex16")]
    pub trace_id: [u8; 16],
    #[serde(with = "hex8")]
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// What a job keeps of its trace: where it was submitted from (the
/// submitter's span, if any) and the `tracestate` to pass on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    #[serde(with = "hex16")]
    pub trace_id: [u8; 16],
    /// The submitter's span; `None` when the trace starts at this job.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex8opt")]
    pub parent: Option<[u8; 8]>,
    pub flags: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// The sampled bit of the flags.
pub const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A submitter's context from its headers, or `None` when there is no
    /// `traceparent` or it is malformed (version 00's form; a later
    /// version's first four fields are read, as the specification asks).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let p = parse_traceparent(traceparent)?;
        Some(TraceContext {
            trace_id: p.trace_id,
            parent: Some(p.span_id),
            flags: p.flags,
            state: tracestate.and_then(clean_tracestate),
        })
    }

    /// A new trace that starts at a job, `sampled` or not.
    pub fn root(trace_id: [u8; 16], sampled: bool) -> TraceContext {
        TraceContext {
            trace_id,
            parent: None,
            flags: if sampled { SAMPLED } else { 0 },
            state: None,
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The context whose parent is span `span_id` of this trace.
    pub fn at(&self, span_id: [u8; 8]) -> SpanContext {
        SpanContext {
            trace_id: self.trace_id,
            span_id,
            flags: self.flags,
        }
    }

    /// The submitter's own position, to pass on unchanged when replyd
    /// makes no spans of its own (`None`: the trace starts at this job).
    pub fn submitter(&self) -> Option<SpanContext> {
        self.parent.map(|p| self.at(p))
    }
}

impl SpanContext {
    /// The `traceparent` header's value (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

/// What a span of a job is: its id is derived from the job and this, so
/// that every node names it alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanOf {
    /// The job from acceptance to its end; the parent of the rest.
    Job,
    /// Its acceptance (the submission until durable).
    Submit,
    /// Attempt `n` waiting in its queue.
    Wait(u32),
    /// Attempt `n` running.
    Attempt(u32),
    /// Attempt `n` of the delivery with this id (a webhook, a reply).
    Delivery(i64, u32),
}

/// The span id of `what` of job `job`: a hash of both (never zero).
pub fn span_id(job: JobId, what: SpanOf) -> [u8; 8] {
    let (label, a, b): (u8, i64, u32) = match what {
        SpanOf::Job => (1, 0, 0),
        SpanOf::Submit => (2, 0, 0),
        SpanOf::Wait(n) => (3, 0, n),
        SpanOf::Attempt(n) => (4, 0, n),
        SpanOf::Delivery(d, n) => (5, d, n),
    };
    // FNV-1a over the job's bytes and the label, then SplitMix64's
    // finaliser: stable across versions and nodes, well spread.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(job.0.as_bytes());
    eat(&[label]);
    eat(&a.to_le_bytes());
    eat(&b.to_le_bytes());
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    if z == 0 {
        z = 1;
    }
    z.to_be_bytes()
}

/// A `traceparent`'s fields, if it is well formed.
pub fn parse_traceparent(s: &str) -> Option<SpanContext> {
    let s = s.trim();
    let mut parts = s.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let span = parts.next()?;
    let flags = parts.next()?;
    let rest = parts.next();
    if version.len() != 2 || !is_lower_hex(version) || version == "ff" {
        return None;
    }
    // Version 00 has exactly four fields; a later one may have more.
    if version == "00" && rest.is_some() {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    if !(is_lower_hex(trace) && is_lower_hex(span) && is_lower_hex(flags)) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    unhex(trace, &mut trace_id)?;
    unhex(span, &mut span_id)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext {
        trace_id,
        span_id,
        flags,
    })
}

/// The `tracestate` to pass on: its well-formed members, at most
/// [`MAX_TRACESTATE`] characters of them; `None` if none is left.
fn clean_tracestate(s: &str) -> Option<String> {
    let mut kept = String::new();
    for member in s
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .take(32)
    {
        let Some((key, value)) = member.split_once('=') else {
            continue;
        };
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b));
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && value
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=');
        if !key_ok || !value_ok {
            continue;
        }
        if kept.len() + member.len() + 1 > MAX_TRACESTATE {
            break;
        }
        if !kept.is_empty() {
            kept.push(',');
        }
        kept.push_str(member);
    }
    (!kept.is_empty()).then_some(kept)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn unhex(s: &str, out: &mut [u8]) -> Option<()> {
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(())
}

/// Lower-case hex, as W3C and OTLP's JSON write ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

macro_rules! hex_serde {
    ($name:ident, $n:expr) => {
        mod $name {
            use serde::{Deserialize, Deserializer, Serializer, de::Error};

            pub fn serialize<S: Serializer>(v: &[u8; $n], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&super::hex(v))
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; $n], D::Error> {
                let s = String::deserialize(d)?;
                let mut out = [0u8; $n];
                if s.len() != 2 * $n {
                    return Err(D::Error::custom("wrong length"));
                }
                super::unhex(&s, &mut out).ok_or_else(|| D::Error::custom("not hex"))?;
                Ok(out)
            }
        }
    };
}
hex_serde!(hex16, 16);
hex_serde!(hex8, 8);

mod hex8opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<[u8; 8]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&super::hex(v)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 8]>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::hex8")] [u8; 8]);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let c = TraceContext::parse(TP, Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")).unwrap();
        assert!(c.sampled());
        assert_eq!(c.submitter().unwrap().traceparent(), TP);
        assert_eq!(
            c.state.as_deref(),
            Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE")
        );
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<TraceContext>(&json).unwrap(), c);
        let root = TraceContext::root([7; 16], false);
        let json = serde_json::to_string(&root).unwrap();
        assert!(!json.contains("parent"), "{json}");
        assert_eq!(serde_json::from_str::<TraceContext>(&json).unwrap(), root);
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad}");
        }
        // A later version's first four fields are read.
        assert!(
            TraceContext::parse(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next",
                None
            )
            .is_some()
        );
    }

    #[test]
    fn tracestate_keeps_well_formed_members_within_its_limit() {
        let c = TraceContext::parse(TP, Some("a=1, bad, =x,B=2,c=3")).unwrap();
        assert_eq!(c.state.as_deref(), Some("a=1,c=3"));
        assert!(
            TraceContext::parse(TP, Some("nothing good"))
                .unwrap()
                .state
                .is_none()
        );
        let long: Vec<String> = (0..40)
            .map(|i| format!("k{i}={}", "v".repeat(20)))
            .collect();
        let c = TraceContext::parse(TP, Some(&long.join(","))).unwrap();
        let kept = c.state.unwrap();
        assert!(kept.len() <= MAX_TRACESTATE, "{}", kept.len());
        assert!(kept.starts_with("k0="));
    }

    #[test]
    fn span_ids_are_stable_and_distinct() {
        let job = JobId(uuid::Uuid::from_u128(
            0x0193_b1c4_0000_7000_8000_0000_0000_0001,
        ));
        let all = [
            span_id(job, SpanOf::Job),
            span_id(job, SpanOf::Submit),
            span_id(job, SpanOf::Wait(1)),
            span_id(job, SpanOf::Attempt(1)),
            span_id(job, SpanOf::Attempt(2)),
            span_id(job, SpanOf::Delivery(7, 1)),
            span_id(job, SpanOf::Delivery(7, 2)),
        ];
        let mut sorted = all.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len());
        assert_eq!(span_id(job, SpanOf::Attempt(2)), all[4]);
        assert!(all.iter().all(|s| *s != [0; 8]));
    }
}
