//! `[durable_streams]`: the Durable Streams server at `/v1/stream/{path}`.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurableStreams {
    /// Seconds a long-poll read waits for data before answering 204.
    pub long_poll: f64,
    /// Seconds an SSE read stays open before the server closes it (the
    /// client reconnects from its last offset; CDNs collapse readers).
    pub sse_lifetime: f64,
    /// Bytes one append may carry.
    pub max_append: usize,
    /// Bytes one read answers at most (at least one append's worth).
    pub read_chunk: usize,
    /// Streams one tenant may keep at once; 0: no limit.
    pub max_streams_per_tenant: u64,
    /// Bytes one stream may hold; 0: no limit.
    pub max_stream_bytes: u64,
    /// Bytes one tenant's streams (job outputs included) may hold in all;
    /// 0: no limit. Checked against sums the store gives every few
    /// seconds, plus this node's appends since.
    pub max_tenant_bytes: u64,
    /// Seconds between a job's `job.output` events (each announces all of
    /// the output appended since the one before); 0: no such events.
    pub output_events: f64,
}

impl Default for DurableStreams {
    fn default() -> Self {
        DurableStreams {
            long_poll: 15.0,
            sse_lifetime: 60.0,
            max_append: 4 * 1024 * 1024,
            read_chunk: 1024 * 1024,
            max_streams_per_tenant: 100_000,
            max_stream_bytes: 1 << 30,
            max_tenant_bytes: 10 << 30,
            output_events: 0.25,
        }
    }
}

impl DurableStreams {
    /// What a tenant's streams may hold.
    pub fn limits(&self) -> replyd_core::stream::StreamLimits {
        replyd_core::stream::StreamLimits {
            streams: self.max_streams_per_tenant,
            bytes: self.max_stream_bytes,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("durable_streams.long_poll", self.long_poll),
            ("durable_streams.sse_lifetime", self.sse_lifetime),
        ] {
            if !(v > 0.0 && v <= 3600.0) {
                return Err(format!("{what} must be between 0 and 3600 seconds"));
            }
        }
        if !(self.output_events >= 0.0 && self.output_events <= 3600.0) {
            return Err("durable_streams.output_events must be between 0 and 3600 seconds".into());
        }
        if !(1024..=(1 << 30)).contains(&self.max_append) {
            return Err(
                "durable_streams.max_append must be between 1024 and 1073741824 bytes".into(),
            );
        }
        if !(1024..=(1 << 30)).contains(&self.read_chunk) {
            return Err(
                "durable_streams.read_chunk must be between 1024 and 1073741824 bytes".into(),
            );
        }
        Ok(())
    }
}
