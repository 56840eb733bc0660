//! What a client may hold at once, and how fast a tenant may submit.
//!
//! replyd faces the open internet, so everything a client can make it
//! hold is counted here, in one way: connections, Server-Sent Events
//! streams, WebSocket sessions and subscriptions, and waiting requests
//! (long polls, lease waits). Each has a [`Quota`]: at most so many in
//! all, from one client address, and for one tenant; a [`Permit`] holds
//! one place in each until it is dropped. Client addresses are counted
//! before authentication where the request allows it (a connection is
//! counted before anything is read from it), so a stranger with no key
//! is bounded too. IPv6 clients are counted by their /64: one host
//! commonly has a whole /64 to pick addresses from.
//!
//! Submissions are paced per tenant by a token bucket
//! (`limits.submit_rate`, `submit_burst`); [`RateState`] is what the
//! `RateLimit` and `RateLimit-Policy` headers say of it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use replyd_core::Tenant;

use crate::config::{Limits, Quota};

/// Something a client holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Held {
    Connection,
    Stream,
    WebSocket,
    Subscription,
    Wait,
}

impl Held {
    /// Its name in the configuration (`limits.<name>`) and in answers.
    pub fn name(self) -> &'static str {
        match self {
            Held::Connection => "connections",
            Held::Stream => "streams",
            Held::WebSocket => "websockets",
            Held::Subscription => "subscriptions",
            Held::Wait => "waits",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Held::Connection => "connections open",
            Held::Stream => "event streams open",
            Held::WebSocket => "WebSocket sessions open",
            Held::Subscription => "WebSocket subscriptions",
            Held::Wait => "requests waiting",
        }
    }
}

/// A client address as counted: an IPv4 address (also when it arrives
/// mapped into IPv6), or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(IpAddr);

impl ClientIp {
    pub fn of(ip: IpAddr) -> ClientIp {
        ClientIp(match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !0xffff_ffff_ffff_ffff)),
            },
            v4 => v4,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Total(Held),
    Ip(Held, ClientIp),
    Tenant(Held, Tenant),
}

/// Which limit was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Over {
    pub held: Held,
    /// `total`, `per_ip` or `per_tenant`.
    pub scope: &'static str,
    pub limit: usize,
}

impl std::fmt::Display for Over {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whose = match self.scope {
            "total" => "the server has",
            "per_ip" => "this client address has",
            _ => "this tenant has",
        };
        write!(
            f,
            "{whose} {} {} already (limits.{}.{}); try again later",
            self.limit,
            self.held.what(),
            self.held.name(),
            self.scope
        )
    }
}

/// The counts, and the submission buckets, of one server.
pub struct Limiter {
    quotas: HashMap<Held, Quota>,
    counts: Mutex<HashMap<Key, usize>>,
    limits: Limits,
    buckets: Mutex<HashMap<(Rate, Tenant), Bucket>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

/// One place held in every scope it counts in; given back when dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
    keys: Vec<Key>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("keys", &self.keys).finish()
    }
}

impl Permit {
    /// Counts the same place for `tenant` too, once it is known (after
    /// authentication); refused, the permit stays as it was.
    pub fn add_tenant(&mut self, tenant: &Tenant) -> Result<(), Over> {
        let Some(held) = self.keys.first().map(|k| match k {
            Key::Total(h) | Key::Ip(h, _) | Key::Tenant(h, _) => *h,
        }) else {
            return Ok(());
        };
        let limit = self.limiter.quota(held).per_tenant;
        let key = Key::Tenant(held, tenant.clone());
        if self.keys.contains(&key) {
            return Ok(());
        }
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key.clone()).or_insert(0);
        if limit > 0 && *n >= limit {
            if *n == 0 {
                counts.remove(&key);
            }
            refused(held.name(), "per_tenant");
            return Err(Over {
                held,
                scope: "per_tenant",
                limit,
            });
        }
        *n += 1;
        drop(counts);
        self.keys.push(key);
        Ok(())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.release(&self.keys);
    }
}

impl Limiter {
    /// From validated limits; `nofile` is the open-file limit in force,
    /// which sizes the connection limits unless they are configured.
    pub fn new(limits: &Limits, nofile: u64) -> Arc<Limiter> {
        let (total, per_ip) = limits.connections(nofile);
        let quotas = HashMap::from([
            (Held::Connection, Quota::new(total, per_ip, 0)),
            (Held::Stream, limits.streams),
            (Held::WebSocket, limits.websockets),
            (Held::Subscription, limits.subscriptions),
            (Held::Wait, limits.waits),
        ]);
        Arc::new(Limiter {
            quotas,
            counts: Mutex::new(HashMap::new()),
            limits: limits.clone(),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    pub fn quota(&self, held: Held) -> Quota {
        self.quotas.get(&held).copied().unwrap_or(Quota::UNLIMITED)
    }

    /// Holds one `held` for a client at `ip` (if known) and `tenant` (if
    /// known), or says which limit it would pass. Nothing is held when it
    /// is refused.
    pub fn hold(
        self: &Arc<Self>,
        held: Held,
        ip: Option<IpAddr>,
        tenant: Option<&Tenant>,
    ) -> Result<Permit, Over> {
        let q = self.quota(held);
        let mut wanted = Vec::with_capacity(3);
        wanted.push((Key::Total(held), "total", q.total));
        if let Some(ip) = ip {
            wanted.push((Key::Ip(held, ClientIp::of(ip)), "per_ip", q.per_ip));
        }
        if let Some(t) = tenant {
            wanted.push((Key::Tenant(held, t.clone()), "per_tenant", q.per_tenant));
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for (key, scope, limit) in &wanted {
            if *limit > 0 && counts.get(key).copied().unwrap_or(0) >= *limit {
                refused(held.name(), scope);
                return Err(Over {
                    held,
                    scope,
                    limit: *limit,
                });
            }
        }
        let keys: Vec<Key> = wanted.into_iter().map(|(k, _, _)| k).collect();
        for k in &keys {
            *counts.entry(k.clone()).or_insert(0) += 1;
        }
        drop(counts);
        Ok(Permit {
            limiter: self.clone(),
            keys,
        })
    }

    /// How many `held` are held now, in all.
    pub fn held(&self, held: Held) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&Key::Total(held)).copied().unwrap_or(0)
    }

    fn release(&self, keys: &[Key]) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            if let Some(n) = counts.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }

    /// Takes `n` submissions from `tenant`'s bucket at `now`: the bucket's
    /// state after, or, when it holds fewer than `n`, its state and when
    /// `n` will be there. `None`: the tenant's rate is unlimited.
    pub fn take_submit(
        &self,
        tenant: &Tenant,
        n: u32,
        now: Instant,
    ) -> Option<Result<RateState, RateState>> {
        self.take(Rate::Submit, tenant, n, now)
    }

    /// As [`Limiter::take_submit`], from `tenant`'s bucket of `rate`.
    pub fn take(
        &self,
        rate: Rate,
        tenant: &Tenant,
        n: u32,
        now: Instant,
    ) -> Option<Result<RateState, RateState>> {
        let (per_sec, burst) = match rate {
            Rate::Submit => self.limits.submit_bucket(&tenant.0),
            Rate::Append => self.limits.append_bucket(&tenant.0),
        };
        if per_sec <= 0.0 {
            return None;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry((rate, tenant.clone())).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_sec).min(burst);
        b.at = now;
        let n = f64::from(n);
        let taken = b.tokens >= n;
        if taken {
            b.tokens -= n;
        } else {
            refused(rate.limit(), "per_tenant");
        }
        let state = RateState {
            name: rate.name(),
            quota: burst.floor() as u64,
            window: (burst / per_sec).ceil().max(1.0) as u64,
            remaining: b.tokens.floor() as u64,
            full_in: secs_ceil((burst - b.tokens) / per_sec),
            retry_in: secs_ceil((n - b.tokens).max(0.0) / per_sec),
        };
        Some(if taken { Ok(state) } else { Err(state) })
    }
}

/// What a tenant's token buckets count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rate {
    /// Jobs submitted (`limits.submit_rate`).
    Submit,
    /// Appends to Durable Streams (`limits.append_rate`).
    Append,
}

impl Rate {
    /// Its policy's name in the RateLimit headers.
    pub fn name(self) -> &'static str {
        match self {
            Rate::Submit => "submit",
            Rate::Append => "append",
        }
    }

    /// Its setting, as `replyd_limited_total` names it.
    fn limit(self) -> &'static str {
        match self {
            Rate::Submit => "submit_rate",
            Rate::Append => "append_rate",
        }
    }
}

/// Counts a refusal: `replyd_limited_total{limit, scope}`.
fn refused(limit: &'static str, scope: &'static str) {
    metrics::counter!("replyd_limited_total", "limit" => limit, "scope" => scope).increment(1);
}

fn secs_ceil(s: f64) -> u64 {
    Duration::try_from_secs_f64(s)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(0)
}

/// A token bucket: `tokens` as of `at`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A tenant's submission bucket, as the IETF RateLimit headers tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateState {
    /// The policy's name (`submit`, `append`).
    pub name: &'static str,
    /// The bucket's size: the quota of the policy…
    pub quota: u64,
    /// …over this many seconds (the time it takes to fill).
    pub window: u64,
    /// Submissions that can be made now.
    pub remaining: u64,
    /// Seconds until the bucket is full again.
    pub full_in: u64,
    /// Seconds until the refused submission could be made (0 when it was
    /// taken).
    pub retry_in: u64,
}

impl RateState {
    /// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
    pub fn policy(&self) -> String {
        format!("{};q={};w={}", self.name, self.quota, self.window)
    }

    /// `RateLimit`: what remains, and when the quota is whole again (when
    /// nothing remains: when the next submission can be made, as
    /// `Retry-After` says).
    pub fn current(&self) -> String {
        let t = if self.remaining == 0 {
            self.retry_in.max(1)
        } else {
            self.full_in
        };
        format!("{};r={};t={t}", self.name, self.remaining)
    }
}

/// The open-file limit, raised to the hard limit first where it is lower
/// (as Go's runtime does): connections need descriptors.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(quota: Quota) -> Arc<Limiter> {
        let limits = Limits {
            streams: quota,
            ..Limits::default()
        };
        Limiter::new(&limits, 20_000)
    }

    #[test]
    fn each_scope_is_counted_and_given_back() {
        let l = limiter(Quota::new(5, 2, 3));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t = Tenant("t".into());
        let p1 = l.hold(Held::Stream, Some(a), Some(&t)).unwrap();
        let _p2 = l.hold(Held::Stream, Some(a), Some(&t)).unwrap();
        let over = l.hold(Held::Stream, Some(a), None).unwrap_err();
        assert_eq!((over.scope, over.limit), ("per_ip", 2));
        assert!(over.to_string().contains("limits.streams.per_ip"), "{over}");
        let _p3 = l.hold(Held::Stream, Some(b), Some(&t)).unwrap();
        let over = l.hold(Held::Stream, Some(b), Some(&t)).unwrap_err();
        assert_eq!(over.scope, "per_tenant");
        // A refusal holds nothing: b still has room for one without t.
        let _p4 = l.hold(Held::Stream, Some(b), None).unwrap();
        let _p5 = l.hold(Held::Stream, None, None).unwrap();
        assert_eq!(l.hold(Held::Stream, None, None).unwrap_err().scope, "total");
        assert_eq!(l.held(Held::Stream), 5);
        drop(p1);
        assert_eq!(l.held(Held::Stream), 4);
        assert!(l.hold(Held::Stream, Some(a), None).is_ok());
        // Other kinds count apart.
        assert!(l.hold(Held::WebSocket, Some(a), Some(&t)).is_ok());
    }

    #[test]
    fn a_tenant_is_added_once_known() {
        let l = limiter(Quota::new(0, 0, 1));
        let t = Tenant("t".into());
        let mut p = l.hold(Held::Stream, None, None).unwrap();
        p.add_tenant(&t).unwrap();
        p.add_tenant(&t).unwrap();
        let mut q = l.hold(Held::Stream, None, None).unwrap();
        assert_eq!(q.add_tenant(&t).unwrap_err().scope, "per_tenant");
        drop(p);
        q.add_tenant(&t).unwrap();
        drop(q);
        assert!(l.counts.lock().unwrap().is_empty());
    }

    #[test]
    fn nothing_is_left_behind_once_all_is_given_back() {
        let l = limiter(Quota::new(0, 1, 1));
        for i in 0..1000u32 {
            let ip = IpAddr::from([10, 0, (i >> 8) as u8, i as u8]);
            let t = Tenant(format!("t{i}"));
            drop(l.hold(Held::Stream, Some(ip), Some(&t)).unwrap());
        }
        assert!(l.counts.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let l = limiter(Quota::new(0, 1, 0));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _p = l.hold(Held::Stream, Some(one), None).unwrap();
        assert!(l.hold(Held::Stream, Some(same_64), None).is_err());
        assert!(l.hold(Held::Stream, Some(other_64), None).is_ok());
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        let _q = l.hold(Held::Stream, Some(v4), None).unwrap();
        assert!(l.hold(Held::Stream, Some(mapped), None).is_err());
    }

    #[test]
    fn the_submit_bucket_refills_at_its_rate() {
        let limits = Limits {
            submit_rate: 10.0,
            submit_burst: Some(20.0),
            ..Limits::default()
        };
        let l = Limiter::new(&limits, 1024);
        let t = Tenant("t".into());
        let t0 = Instant::now();
        for i in 0..20 {
            let s = l.take_submit(&t, 1, t0).unwrap().unwrap();
            assert_eq!(s.remaining, 19 - i);
        }
        let refused = l.take_submit(&t, 1, t0).unwrap().unwrap_err();
        assert_eq!((refused.remaining, refused.retry_in), (0, 1));
        assert_eq!(refused.policy(), "submit;q=20;w=2");
        assert_eq!(refused.current(), "submit;r=0;t=1");
        // 0.5 s later, five more.
        let later = t0 + Duration::from_millis(500);
        for _ in 0..5 {
            l.take_submit(&t, 1, later).unwrap().unwrap();
        }
        assert!(l.take_submit(&t, 1, later).unwrap().is_err());
        // A batch larger than what is there waits for all of it.
        let e = l.take_submit(&t, 15, later).unwrap().unwrap_err();
        assert_eq!(e.retry_in, 2);
        // Other tenants have their own bucket; a rate of 0 is unlimited.
        assert!(
            l.take_submit(&Tenant("u".into()), 1, later)
                .unwrap()
                .is_ok()
        );
        let free = Limiter::new(
            &Limits {
                submit_rate: 0.0,
                ..Limits::default()
            },
            1024,
        );
        assert!(free.take_submit(&t, 1_000_000, t0).is_none());
    }

    #[test]
    fn connection_limits_follow_the_open_file_limit() {
        let l = Limits::default();
        assert_eq!(l.connections(20_000), (17_500, 2_187));
        assert_eq!(l.connections(1024), (896, 112));
        assert_eq!(l.connections(1 << 20), (100_000, 12_500));
        let set = Limits {
            max_connections: Some(10),
            max_connections_per_ip: Some(0),
            ..Limits::default()
        };
        assert_eq!(set.connections(20_000), (10, 0));
    }
}

/// What each tenant's Durable Streams (job outputs included) hold, against
/// `durable_streams.max_tenant_bytes`: the store's sums, refreshed every
/// few seconds (so they count every node's appends), plus this node's
/// appends since. A soft bound: between two refreshes another node's
/// appends are not seen here. One entry per tenant that holds any.
#[derive(Debug, Default)]
pub struct StreamBytes {
    /// 0: no bound.
    max: u64,
    held: Mutex<HashMap<Tenant, u64>>,
}

impl StreamBytes {
    pub fn new(max: u64) -> StreamBytes {
        StreamBytes {
            max,
            held: Mutex::default(),
        }
    }

    pub fn bounded(&self) -> bool {
        self.max > 0
    }

    /// Counts `n` more bytes for `tenant`, unless that would pass the
    /// bound: then what it holds, and nothing is counted.
    pub fn take(&self, tenant: &Tenant, n: u64) -> Result<(), u64> {
        if self.max == 0 || n == 0 {
            return Ok(());
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = held.get(tenant).copied().unwrap_or(0);
        if now.saturating_add(n) > self.max {
            return Err(now);
        }
        held.insert(tenant.clone(), now + n);
        Ok(())
    }

    /// The store's sums, in place of the counts so far.
    pub fn refresh(&self, sums: Vec<(Tenant, u64)>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = sums.into_iter().collect();
    }

    /// Why `take` refused, for an answer.
    pub fn refusal(&self, held: u64) -> String {
        format!(
            "the tenant's streams hold {held} bytes; durable_streams.max_tenant_bytes is {}",
            self.max
        )
    }
}
