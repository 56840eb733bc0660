//! The SSRF guard: which outbound URLs replyd may call.
//!
//! A webhook URL comes from a client; calling it blindly would let anyone
//! make replyd reach its own loopback, the private network, or a cloud
//! metadata service. So a URL is vetted twice: at submit (a clear 400) and
//! at delivery, where the name is resolved again and the connection goes
//! only to an address that passed ([`Guard::resolve`]), so a name that
//! changes its answer (DNS rebinding) cannot slip through.
//!
//! Addresses are judged after parsing the URL the way browsers do (WHATWG,
//! the `url` crate): `http://2130706433/`, `http://0177.0.0.1/` and
//! `http://127.1/` are all 127.0.0.1, and are judged as such.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use async_trait::async_trait;
use ipnet::IpNet;
use url::{Host, Url};

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a valid URL: {0}")]
    Malformed(String),
    #[error("only http and https URLs may be called, not {0:?}")]
    Scheme(String),
    #[error("URLs with credentials (user:password@) are not allowed")]
    Credentials,
    #[error("{addr} is a {kind} address, which replyd does not call (an operator may allow it)")]
    Address { addr: IpAddr, kind: &'static str },
    #[error("{host} does not resolve")]
    Unresolved { host: String },
    #[error("cannot resolve {host}: {error}")]
    Resolver { host: String, error: String },
}

/// Turns a host name into addresses. The system resolver in production; a
/// table in tests, so that no test ever looks up or reaches a real
/// address.
#[async_trait]
pub trait Resolver: Send + Sync {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The operating system's resolver.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// Vets outbound URLs against the built-in deny list and the operator's
/// allow-list.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Networks that are allowed even though the deny list names them
    /// (`webhooks.allow_networks`, e.g. `127.0.0.0/8` for development).
    allow: Vec<IpNet>,
}

impl Guard {
    pub fn new(allow: Vec<IpNet>) -> Guard {
        Guard { allow }
    }

    /// Checks what can be checked without resolving: the scheme, no
    /// credentials, and the address when the host is an IP literal.
    pub fn parse(&self, raw: &str) -> Result<Url, Refused> {
        let url = Url::parse(raw).map_err(|e| Refused::Malformed(e.to_string()))?;
        match url.scheme() {
            "http" | "https" => {}
            other => return Err(Refused::Scheme(other.to_string())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Refused::Credentials);
        }
        match url.host() {
            None => return Err(Refused::Malformed("the URL has no host".into())),
            Some(Host::Ipv4(ip)) => self.check(IpAddr::V4(ip))?,
            Some(Host::Ipv6(ip)) => self.check(IpAddr::V6(ip))?,
            Some(Host::Domain(_)) => {}
        }
        Ok(url)
    }

    /// Whether replyd may connect to `addr`.
    pub fn check(&self, addr: IpAddr) -> Result<(), Refused> {
        match forbidden(addr) {
            Some(kind) if !self.allow.iter().any(|n| n.contains(&addr)) => {
                Err(Refused::Address { addr, kind })
            }
            _ => Ok(()),
        }
    }

    /// Every address `url` may be reached at, each vetted. The caller
    /// connects to these and nothing else. One refused address refuses the
    /// whole name: a name that mixes public and private answers is a
    /// rebinding attempt, not a choice to make for it.
    pub async fn resolve(
        &self,
        url: &Url,
        resolver: &dyn Resolver,
    ) -> Result<Vec<SocketAddr>, Refused> {
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs = match url.host() {
            None => return Err(Refused::Malformed("the URL has no host".into())),
            Some(Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Some(Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Some(Host::Domain(name)) => {
                resolver
                    .lookup(name, port)
                    .await
                    .map_err(|e| Refused::Resolver {
                        host: name.to_string(),
                        error: e.to_string(),
                    })?
            }
        };
        if addrs.is_empty() {
            return Err(Refused::Unresolved {
                host: url.host_str().unwrap_or("").to_string(),
            });
        }
        for a in &addrs {
            self.check(a.ip())?;
        }
        Ok(addrs)
    }
}

/// The kind of address replyd never calls unless allowed, if `addr` is one.
pub fn forbidden(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(ip) => forbidden_v4(ip),
        IpAddr::V6(ip) => {
            // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible forms reach
            // the IPv4 address: judge that.
            if let Some(v4) = ip.to_ipv4_mapped() {
                return forbidden_v4(v4).or(Some("IPv4-mapped IPv6"));
            }
            forbidden_v6(ip)
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "\"this network\" (0.0.0.0/8)",
        [127, ..] => "loopback",
        [10, ..] => "private (RFC 1918)",
        [172, b, ..] if (16..=31).contains(&b) => "private (RFC 1918)",
        [192, 168, ..] => "private (RFC 1918)",
        [169, 254, ..] => "link-local (cloud metadata lives here)",
        [100, b, ..] if (64..=127).contains(&b) => "shared (CGNAT, 100.64.0.0/10)",
        [192, 0, 0, _] => "IETF protocol assignments (192.0.0.0/24)",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking (198.18.0.0/15)",
        [a, ..] if (224..=239).contains(&a) => "multicast",
        [255, 255, 255, 255] => "broadcast",
        [a, ..] if a >= 240 => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    Some(match s[0] {
        0xfc00..=0xfdff => "unique local (fc00::/7)",
        0xfe80..=0xfebf => "link-local (fe80::/10)",
        0xfec0..=0xfeff => "site-local (deprecated, fec0::/10)",
        0xff00..=0xffff => "multicast",
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        // NAT64 (64:ff9b::/96) embeds an IPv4 address: judge it.
        0x0064 if s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] => {
            let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            return forbidden_v4(v4).map(|_| "NAT64 of a forbidden IPv4 address");
        }
        // 6to4 (2002::/16) embeds an IPv4 address too.
        0x2002 => {
            let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
            return forbidden_v4(v4).map(|_| "6to4 of a forbidden IPv4 address");
        }
        // IPv4-compatible (::a.b.c.d, deprecated).
        0 if s[1..6] == [0, 0, 0, 0, 0] => "IPv4-compatible IPv6 (deprecated)",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// A resolver the test controls; it records every lookup and never
    /// touches the network.
    #[derive(Default)]
    struct Table {
        names: HashMap<&'static str, Vec<IpAddr>>,
        asked: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Resolver for Table {
        async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            self.asked.lock().unwrap().push(host.to_string());
            Ok(self
                .names
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .unwrap_or_default())
        }
    }

    fn refused(g: &Guard, url: &str) -> bool {
        matches!(g.parse(url), Err(Refused::Address { .. }))
    }

    #[test]
    fn forbidden_literals_are_refused_case_by_case() {
        let g = Guard::default();
        for url in [
            "http://127.0.0.1/",
            "http://127.255.255.254:8080/x",
            "http://[::1]/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://172.31.255.255/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://100.64.0.1/",
            "http://100.127.255.255/",
            "http://0.0.0.0/",
            "http://0.1.2.3/",
            "http://224.0.0.1/",
            "http://239.255.255.250/",
            "http://255.255.255.255/",
            "http://240.0.0.1/",
            "http://[fc00::1]/",
            "http://[fd12:3456::1]/",
            "http://[fe80::1]/",
            "http://[ff02::1]/",
            "http://[::]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
            "http://[2002:a9fe:a9fe::1]/",
            // Odd IPv4 spellings, parsed the WHATWG way.
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://0177.1/",
            "http://127.1/",
            "http://127.0.1/",
            "http://017700000001/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://2852039166/",
        ] {
            assert!(
                refused(&g, url),
                "{url} must be refused: {:?}",
                g.parse(url)
            );
        }
    }

    #[test]
    fn public_addresses_and_names_pass_the_literal_check() {
        let g = Guard::default();
        for url in [
            "https://93.184.215.14/hook",
            "http://8.8.8.8:8080/",
            "https://[2606:4700::1111]/",
            "https://hooks.example.com/x?y=1",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "http://169.255.0.1/",
        ] {
            assert!(g.parse(url).is_ok(), "{url}: {:?}", g.parse(url));
        }
    }

    #[test]
    fn schemes_credentials_and_garbage_are_refused() {
        let g = Guard::default();
        assert!(matches!(
            g.parse("ftp://example.com/"),
            Err(Refused::Scheme(_))
        ));
        assert!(matches!(
            g.parse("file:///etc/passwd"),
            Err(Refused::Scheme(_))
        ));
        assert!(matches!(g.parse("gopher://x/"), Err(Refused::Scheme(_))));
        assert!(matches!(
            g.parse("http://u:p@example.com/"),
            Err(Refused::Credentials)
        ));
        assert!(matches!(g.parse("not a url"), Err(Refused::Malformed(_))));
        assert!(matches!(g.parse("http://"), Err(Refused::Malformed(_))));
    }

    #[test]
    fn the_allow_list_lets_chosen_networks_through() {
        let g = Guard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
        ]);
        assert!(g.parse("http://127.0.0.1:9000/hook").is_ok());
        assert!(g.parse("http://[fd00::5]/").is_ok());
        assert!(refused(&g, "http://10.0.0.1/"));
        assert!(refused(&g, "http://169.254.169.254/"));
    }

    #[tokio::test]
    async fn names_are_judged_by_every_address_they_resolve_to() {
        let mut table = Table::default();
        let public: IpAddr = "93.184.215.14".parse().unwrap();
        table.names.insert("good.test", vec![public]);
        table
            .names
            .insert("meta.test", vec!["169.254.169.254".parse().unwrap()]);
        table
            .names
            .insert("mixed.test", vec![public, "10.0.0.7".parse().unwrap()]);
        table
            .names
            .insert("mapped.test", vec!["::ffff:127.0.0.1".parse().unwrap()]);
        table
            .names
            .insert("ula.test", vec!["fd00::1".parse().unwrap()]);
        let g = Guard::default();
        let url = g.parse("https://good.test/hook").unwrap();
        let addrs = g.resolve(&url, &table).await.unwrap();
        assert_eq!(addrs, vec![SocketAddr::new(public, 443)]);
        for name in ["meta.test", "mixed.test", "mapped.test", "ula.test"] {
            let url = g.parse(&format!("http://{name}/")).unwrap();
            let r = g.resolve(&url, &table).await;
            assert!(matches!(r, Err(Refused::Address { .. })), "{name}: {r:?}");
        }
        let url = g.parse("http://nowhere.test/").unwrap();
        assert!(matches!(
            g.resolve(&url, &table).await,
            Err(Refused::Unresolved { .. })
        ));
        // A rebinding name: public at submit, private at delivery. Each
        // resolution is vetted, and the caller connects only to what
        // `resolve` returned, so the second answer is refused.
        table.names.insert("rebind.test", vec![public]);
        let url = g.parse("http://rebind.test/").unwrap();
        assert!(g.resolve(&url, &table).await.is_ok());
        table
            .names
            .insert("rebind.test", vec!["127.0.0.1".parse().unwrap()]);
        assert!(g.resolve(&url, &table).await.is_err());
        // IP literals are never looked up.
        let before = table.asked.lock().unwrap().len();
        let url = Guard::new(vec!["127.0.0.0/8".parse().unwrap()])
            .parse("http://127.0.0.1:1/")
            .unwrap();
        Guard::new(vec!["127.0.0.0/8".parse().unwrap()])
            .resolve(&url, &table)
            .await
            .unwrap();
        assert_eq!(table.asked.lock().unwrap().len(), before);
    }
}
