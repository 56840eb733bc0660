//! `[streams]`: Server-Sent Events and WebSockets.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Streams {
    /// Seconds between SSE keep-alive comments on a quiet stream.
    pub keepalive: f64,
    /// Milliseconds an EventSource waits before it reconnects (`retry:`).
    pub retry_ms: u64,
    /// Events held for one connection that is not reading; past that the
    /// connection is closed as a slow consumer (it resumes from its last id).
    pub buffer: usize,
    /// Seconds between WebSocket Ping frames; a peer that answers none of
    /// two is dropped.
    pub ping_interval: f64,
    /// Seconds a write to a peer may stall before the peer is dropped.
    pub write_timeout: f64,
    /// Subscriptions one WebSocket connection may hold.
    pub max_subscriptions: usize,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            keepalive: 15.0,
            retry_ms: 1000,
            buffer: 256,
            ping_interval: 20.0,
            write_timeout: 30.0,
            max_subscriptions: 100,
        }
    }
}

impl Streams {
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("streams.keepalive", self.keepalive),
            ("streams.ping_interval", self.ping_interval),
            ("streams.write_timeout", self.write_timeout),
        ] {
            if !(v > 0.0 && v < 86_400.0) {
                return Err(format!("{what} must be a positive number of seconds"));
            }
        }
        if !(1..=1_000_000).contains(&self.buffer) {
            return Err("streams.buffer must be between 1 and 1000000 events".into());
        }
        if !(1..=100_000).contains(&self.max_subscriptions) {
            return Err("streams.max_subscriptions must be between 1 and 100000".into());
        }
        if self.retry_ms > 3_600_000 {
            return Err("streams.retry_ms must be at most 3600000".into());
        }
        Ok(())
    }
}
