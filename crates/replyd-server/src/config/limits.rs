//! `[limits]`: sizes, deadlines, and what clients may hold and how fast
//! they may submit (the runtime's `limits` module counts against these).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Bytes of a request body (a submission, a worker call).
    pub max_body: usize,
    /// Bytes of a worker's result.
    pub max_result: usize,
    /// Highest `max_attempts` a submission may ask for.
    pub max_attempts: u32,
    /// Longest `ttl` a submission may ask for, in seconds.
    pub max_ttl: f64,
    /// Furthest ahead a submission may schedule its job (`delay`,
    /// `run_at`), in seconds.
    pub max_delay: f64,
    /// Recurring schedules a tenant may keep by API (each fires at most
    /// a job a second).
    pub max_schedules: usize,
    /// Seconds a client may take to send a request's headers (slowloris),
    /// and the longest a connection may stay idle between requests
    /// (HTTP/1.1 keep-alive and HTTP/2 alike).
    pub header_timeout: f64,
    /// Seconds a client may take to send a request's body, from the end of
    /// its headers (408 after that).
    pub body_timeout: f64,
    /// Connections open at once. Default: seven eighths of the process's
    /// open-file limit (which replyd raises to its hard limit and logs at
    /// start), at most 100,000; the rest is kept for the database, brokers
    /// and outbound calls. 0: no limit.
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address (an IPv6 client:
    /// its /64). Default: an eighth of `max_connections`. 0: no limit
    /// (behind a reverse proxy every connection has the proxy's address).
    pub max_connections_per_ip: Option<usize>,
    /// Jobs a tenant may submit per second, on average (HTTP, WebSocket,
    /// gateway; a token bucket); 0: no limit.
    pub submit_rate: f64,
    /// Jobs a tenant may submit at once after being quiet (the bucket's
    /// size). Default: twice `submit_rate`.
    pub submit_burst: Option<f64>,
    /// Appends to Durable Streams a tenant may make per second, on average
    /// (a token bucket); 0: no limit.
    pub append_rate: f64,
    /// Appends a tenant may make at once after being quiet. Default: twice
    /// `append_rate`.
    pub append_burst: Option<f64>,
    /// Server-Sent Events streams open at once.
    pub streams: Quota,
    /// WebSocket sessions open at once.
    pub websockets: Quota,
    /// WebSocket subscriptions held at once, over all sessions.
    pub subscriptions: Quota,
    /// Requests held waiting at once: long polls (`Prefer: wait`) and
    /// lease requests that wait for work.
    pub waits: Quota,
    /// A tenant's own submission rate, in place of the above.
    pub tenants: BTreeMap<String, TenantLimits>,
}

/// How many of something may be held at once: in all, from one client
/// address, by one tenant. 0: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub total: usize,
    pub per_ip: usize,
    pub per_tenant: usize,
}

impl Quota {
    pub const fn new(total: usize, per_ip: usize, per_tenant: usize) -> Quota {
        Quota {
            total,
            per_ip,
            per_tenant,
        }
    }

    /// No limit at all.
    pub const UNLIMITED: Quota = Quota::new(0, 0, 0);
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    pub submit_rate: Option<f64>,
    pub submit_burst: Option<f64>,
    pub append_rate: Option<f64>,
    pub append_burst: Option<f64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1024 * 1024,
            max_result: 10 * 1024 * 1024,
            max_attempts: 100,
            max_ttl: 30.0 * 86_400.0,
            max_delay: 366.0 * 86_400.0,
            max_schedules: 100,
            header_timeout: 30.0,
            body_timeout: 60.0,
            max_connections: None,
            max_connections_per_ip: None,
            submit_rate: 1000.0,
            submit_burst: None,
            append_rate: 20_000.0,
            append_burst: None,
            streams: Quota::new(10_000, 500, 5_000),
            websockets: Quota::new(10_000, 500, 5_000),
            subscriptions: Quota::new(100_000, 5_000, 50_000),
            waits: Quota::new(10_000, 1_000, 5_000),
            tenants: BTreeMap::new(),
        }
    }
}

impl Limits {
    /// No limit on what clients hold or how fast they submit (the size
    /// and time limits stay): for a load the operator trusts, such as a
    /// benchmark's.
    pub fn unbounded(self) -> Limits {
        Limits {
            max_connections: Some(0),
            max_connections_per_ip: Some(0),
            submit_rate: 0.0,
            append_rate: 0.0,
            streams: Quota::UNLIMITED,
            websockets: Quota::UNLIMITED,
            subscriptions: Quota::UNLIMITED,
            waits: Quota::UNLIMITED,
            ..self
        }
    }

    /// Connections at once, in all and per client address, given the
    /// open-file limit in force (0: no limit).
    pub fn connections(&self, nofile: u64) -> (usize, usize) {
        let total = self.max_connections.unwrap_or_else(|| {
            let usable = nofile.saturating_sub(nofile / 8).min(100_000) as usize;
            usable.max(64)
        });
        let per_ip = self
            .max_connections_per_ip
            .unwrap_or_else(|| (total / 8).max(16));
        (total, per_ip)
    }

    /// A tenant's submission bucket: (jobs per second, burst); a rate of 0
    /// is no limit.
    pub fn submit_bucket(&self, tenant: &str) -> (f64, f64) {
        let own = self.tenants.get(tenant);
        let rate = own.and_then(|t| t.submit_rate).unwrap_or(self.submit_rate);
        let burst = own
            .and_then(|t| t.submit_burst)
            .or(self.submit_burst)
            .unwrap_or(rate * 2.0);
        (rate, burst.max(1.0))
    }

    /// A tenant's Durable Streams append bucket: (appends per second,
    /// burst); a rate of 0 is no limit.
    pub fn append_bucket(&self, tenant: &str) -> (f64, f64) {
        let own = self.tenants.get(tenant);
        let rate = own.and_then(|t| t.append_rate).unwrap_or(self.append_rate);
        let burst = own
            .and_then(|t| t.append_burst)
            .or(self.append_burst)
            .unwrap_or(rate * 2.0);
        (rate, burst.max(1.0))
    }
}

impl Limits {
    pub fn check(&self) -> Result<(), String> {
        for (what, v) in [
            ("limits.header_timeout", self.header_timeout),
            ("limits.body_timeout", self.body_timeout),
        ] {
            if !(v > 0.0 && v < 86_400.0) {
                return Err(format!("{what} must be a positive number of seconds"));
            }
        }
        let rates = [
            ("limits", "submit", self.submit_rate, self.submit_burst),
            ("limits", "append", self.append_rate, self.append_burst),
        ]
        .into_iter()
        .chain(self.tenants.values().flat_map(|t| {
            [
                (
                    "limits.tenants",
                    "submit",
                    t.submit_rate.unwrap_or(0.0),
                    t.submit_burst,
                ),
                (
                    "limits.tenants",
                    "append",
                    t.append_rate.unwrap_or(0.0),
                    t.append_burst,
                ),
            ]
        }));
        for (at, what, rate, burst) in rates {
            if !(0.0..=1e9).contains(&rate) || burst.is_some_and(|b| !(1.0..=1e9).contains(&b)) {
                return Err(format!(
                    "{at}: {what}_rate must be 0 to 1e9 per second and {what}_burst 1 to 1e9"
                ));
            }
        }
        if self.max_body < 1024 || self.max_result < 1024 {
            return Err("limits.max_body and limits.max_result must be at least 1024 bytes".into());
        }
        Ok(())
    }
}
