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

/// reqwest's resolver: every answer vetted by the guard.
pub struct Vetting {
    pub guard: Guard,
    pub resolver: std::sync::Arc<dyn Resolver>,
}

impl reqwest::dns::Resolve for Vetting {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (guard, resolver) = (self.guard.clone(), self.resolver.clone());
        let host = name.as_str().to_string();
        Box::pin(async move {
            // The port is set by reqwest after resolving; any will do here.
            let url = url::Url::parse(&format!("http://{host}/"))?;
            let addrs: Vec<SocketAddr> = guard.resolve(&url, &*resolver).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// What the deny list says of a block.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Never called (unless allowed).
    Refuse(&'static str),
    /// The block embeds an IPv4 address (NAT64, 6to4): judged by that
    /// address.
    Embeds(&'static str, fn(Ipv6Addr) -> Ipv4Addr),
}

/// IPv4 blocks replyd does not call: every block of IANA's IPv4
/// Special-Purpose Address Registry that is not globally reachable, and
/// multicast. Most specific first; the first block that contains an
/// address decides.
const V4_BLOCKS: &[(&str, Rule)] = &[
    ("0.0.0.0/8", Rule::Refuse("\"this network\" (0.0.0.0/8)")),
    ("10.0.0.0/8", Rule::Refuse("private (RFC 1918)")),
    (
        "100.64.0.0/10",
        Rule::Refuse("shared (CGNAT, 100.64.0.0/10)"),
    ),
    ("127.0.0.0/8", Rule::Refuse("loopback")),
    (
        "169.254.0.0/16",
        Rule::Refuse("link-local (cloud metadata lives here)"),
    ),
    ("172.16.0.0/12", Rule::Refuse("private (RFC 1918)")),
    (
        "192.0.0.0/24",
        Rule::Refuse("IETF protocol assignments (192.0.0.0/24)"),
    ),
    ("192.0.2.0/24", Rule::Refuse("documentation (TEST-NET-1)")),
    (
        "192.88.99.0/24",
        Rule::Refuse("deprecated 6to4 relay anycast (192.88.99.0/24)"),
    ),
    ("192.168.0.0/16", Rule::Refuse("private (RFC 1918)")),
    (
        "198.18.0.0/15",
        Rule::Refuse("benchmarking (198.18.0.0/15)"),
    ),
    (
        "198.51.100.0/24",
        Rule::Refuse("documentation (TEST-NET-2)"),
    ),
    ("203.0.113.0/24", Rule::Refuse("documentation (TEST-NET-3)")),
    ("224.0.0.0/4", Rule::Refuse("multicast")),
    ("255.255.255.255/32", Rule::Refuse("broadcast")),
    ("240.0.0.0/4", Rule::Refuse("reserved (240.0.0.0/4)")),
];

/// IPv6 blocks replyd does not call, or judges by the IPv4 address they
/// embed: every block of IANA's IPv6 Special-Purpose Address Registry
/// that is not globally reachable, IPv4 in IPv6 in every form (mapped and
/// SIIT-translated addresses are refused whatever they embed: no public
/// name resolves to one), multicast and the deprecated site-local block.
const V6_BLOCKS: &[(&str, Rule)] = &[
    ("::/128", Rule::Refuse("unspecified (::)")),
    ("::1/128", Rule::Refuse("loopback")),
    ("::ffff:0:0/96", Rule::Refuse("IPv4-mapped IPv6")),
    (
        "::ffff:0:0:0/96",
        Rule::Refuse("IPv4-translated IPv6 (SIIT)"),
    ),
    ("::/96", Rule::Refuse("IPv4-compatible IPv6 (deprecated)")),
    (
        "64:ff9b::/96",
        Rule::Embeds("NAT64 of a forbidden IPv4 address", low_32),
    ),
    (
        "64:ff9b:1::/48",
        Rule::Refuse("local-use IPv4/IPv6 translation (64:ff9b:1::/48)"),
    ),
    ("100::/64", Rule::Refuse("discard-only (100::/64)")),
    (
        "100:0:0:1::/64",
        Rule::Refuse("dummy IPv6 prefix (100:0:0:1::/64)"),
    ),
    ("2001::/32", Rule::Refuse("Teredo (2001::/32)")),
    ("2001:2::/48", Rule::Refuse("benchmarking (2001:2::/48)")),
    (
        "2001:db8::/32",
        Rule::Refuse("documentation (2001:db8::/32)"),
    ),
    (
        "2001::/23",
        Rule::Refuse("IETF protocol assignments (2001::/23)"),
    ),
    (
        "2002::/16",
        Rule::Embeds("6to4 of a forbidden IPv4 address", bits_16_to_48),
    ),
    ("3fff::/20", Rule::Refuse("documentation (3fff::/20)")),
    (
        "5f00::/16",
        Rule::Refuse("segment routing SIDs (5f00::/16)"),
    ),
    ("fc00::/7", Rule::Refuse("unique local (fc00::/7)")),
    ("fe80::/10", Rule::Refuse("link-local (fe80::/10)")),
    (
        "fec0::/10",
        Rule::Refuse("site-local (deprecated, fec0::/10)"),
    ),
    ("ff00::/8", Rule::Refuse("multicast")),
];

/// The IPv4 address in the last 32 bits (NAT64).
fn low_32(ip: Ipv6Addr) -> Ipv4Addr {
    let s = ip.segments();
    Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32)
}

/// The IPv4 address after the first 16 bits (6to4).
fn bits_16_to_48(ip: Ipv6Addr) -> Ipv4Addr {
    let s = ip.segments();
    Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32)
}

fn blocks(table: &'static [(&'static str, Rule)]) -> Vec<(IpNet, Rule)> {
    table
        .iter()
        .map(|(net, rule)| (net.parse().expect("a valid block in the table"), *rule))
        .collect()
}

/// The kind of address replyd never calls unless allowed, if `addr` is one.
pub fn forbidden(addr: IpAddr) -> Option<&'static str> {
    static V4: std::sync::LazyLock<Vec<(IpNet, Rule)>> =
        std::sync::LazyLock::new(|| blocks(V4_BLOCKS));
    static V6: std::sync::LazyLock<Vec<(IpNet, Rule)>> =
        std::sync::LazyLock::new(|| blocks(V6_BLOCKS));
    let table = match addr {
        IpAddr::V4(_) => &*V4,
        IpAddr::V6(_) => &*V6,
    };
    let (_, rule) = table.iter().find(|(net, _)| net.contains(&addr))?;
    match (rule, addr) {
        (Rule::Refuse(kind), _) => Some(kind),
        (Rule::Embeds(kind, inner), IpAddr::V6(ip)) => {
            forbidden(IpAddr::V4(inner(ip))).map(|_| *kind)
        }
        (Rule::Embeds(..), IpAddr::V4(_)) => None,
    }
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

    /// Every block of IANA's special-purpose registries that is not
    /// globally reachable (written out here from the registries, not from
    /// the guard's table), and the other forms of IPv4 inside IPv6: its
    /// first, a middle and its last address are refused; public addresses
    /// next to them pass. Judged at the seam, nothing resolved or reached.
    #[test]
    fn every_special_purpose_block_that_is_not_global_is_refused() {
        let refused_blocks = [
            // IPv4 Special-Purpose Address Registry, "Globally Reachable" false or N/A.
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.0.0/29",
            "192.0.0.8/32",
            "192.0.0.170/31",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
            "255.255.255.255/32",
            "224.0.0.0/4",
            // IPv6 Special-Purpose Address Registry, the same.
            "::1/128",
            "::/128",
            "::ffff:0:0/96",
            "::ffff:0:0:0/96",
            "::/96",
            "64:ff9b:1::/48",
            "100::/64",
            "100:0:0:1::/64",
            "2001::/23",
            "2001::/32",
            "2001:2::/48",
            "2001:db8::/32",
            "3fff::/20",
            "5f00::/16",
            "fc00::/7",
            "fe80::/10",
            "fec0::/10",
            "ff00::/8",
            // IPv4 embedded in NAT64 and 6to4 addresses, when it is refused.
            "64:ff9b::7f00:0/104",
            "64:ff9b::a9fe:0/112",
            "64:ff9b::a00:0/104",
            "2002:7f00::/24",
            "2002:a9fe::/32",
            "2002:c0a8::/32",
        ];
        for block in refused_blocks {
            let net: IpNet = block.parse().unwrap();
            let (first, last) = (net.network(), net.broadcast());
            let middle = match (first, last) {
                (IpAddr::V4(a), IpAddr::V4(b)) => {
                    IpAddr::V4(Ipv4Addr::from(u32::from(a) / 2 + u32::from(b) / 2))
                }
                (IpAddr::V6(a), IpAddr::V6(b)) => {
                    IpAddr::V6(Ipv6Addr::from(u128::from(a) / 2 + u128::from(b) / 2))
                }
                _ => unreachable!(),
            };
            for addr in [first, middle, last] {
                assert!(
                    forbidden(addr).is_some(),
                    "{addr} (in {block}) must be refused"
                );
                assert!(
                    matches!(Guard::default().check(addr), Err(Refused::Address { .. })),
                    "{addr}"
                );
            }
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:4860:4860::8888",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let addr: IpAddr = public.parse().unwrap();
            assert_eq!(forbidden(addr), None, "{addr} is public");
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
