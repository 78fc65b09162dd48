//! Which network addresses `fetch` may connect to.
//!
//! A host name is only a name: `localhost`, a rebinding DNS name or a redirect can all lead to a
//! loopback or private address, where the user's own services live. So the check is made on the
//! addresses a connection will actually use: [`PublicResolver`] resolves names and keeps only
//! public addresses (a name with none fails, naming what it resolved to), and
//! [`check_literal`] covers URLs whose host is already an address, which never reach a resolver.
//! Both apply to the first request and to every redirect. [`PrivateAccess`] (the `allow_private`
//! option) opens all non-public addresses or only the listed ones.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::Deserialize;

/// Which non-public addresses may be reached anyway: the `allow_private` option, `false` (none,
/// the default), `true` (all) or a list of addresses and networks (`"127.0.0.1"`,
/// `"10.0.0.0/8"`, `"::1"`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum PrivateAccess {
    /// Public addresses only.
    #[default]
    None,
    /// Any address.
    All,
    /// Public addresses and these networks.
    Only(Vec<IpNet>),
}

impl PrivateAccess {
    /// Whether a connection to `ip` is allowed; `Err` says why not.
    pub fn check(&self, ip: IpAddr) -> Result<(), &'static str> {
        let Some(kind) = non_public(ip) else {
            return Ok(());
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match self {
            PrivateAccess::All => Ok(()),
            PrivateAccess::Only(nets) if nets.iter().any(|n| n.contains(&ip)) => Ok(()),
            _ => Err(kind),
        }
    }
}

impl<'de> Deserialize<'de> for PrivateAccess {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Spelled {
            Switch(bool),
            List(Vec<String>),
        }
        let spelled = Spelled::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "`allow_private` is true, false or a list of addresses and networks",
            )
        })?;
        Ok(match spelled {
            Spelled::Switch(false) => PrivateAccess::None,
            Spelled::Switch(true) => PrivateAccess::All,
            Spelled::List(entries) => PrivateAccess::Only(
                entries
                    .iter()
                    .map(|e| {
                        e.parse::<IpNet>()
                            .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                            .map_err(|_| {
                                serde::de::Error::custom(format!(
                                    "`allow_private` entry `{e}` is not an address or a \
                                     network like 10.0.0.0/8"
                                ))
                            })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
}

/// Why an address is not public, or `None` when it is.
pub fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (169, 254, _) => "link-local",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (192, 0, 0) => "IETF protocol assignment",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // IPv4 carried inside IPv6 is judged as the IPv4 address it reaches.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    if s[..6] == [0; 6] {
        // IPv4-compatible (deprecated): ::a.b.c.d.
        return non_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32))
            .or(Some("IPv4-compatible"));
    }
    if s[0] == 0x2002 {
        // 6to4 embeds the IPv4 address it tunnels to.
        return non_public_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    Some(match s[0] {
        0x0064 if s[1] == 0xff9b => "NAT64",
        0xfc00..=0xfdff => "unique-local",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        _ => return None,
    })
}

/// Refuses a URL host that is a non-public IP address `access` does not open
/// (`http://127.0.0.1/`, `http://[::1]/`, `http://2130706433/` which URL parsing reads as
/// 127.0.0.1).
pub fn check_literal(url: &reqwest::Url, access: &PrivateAccess) -> Result<(), String> {
    let ip = match url.host() {
        Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
        _ => return Ok(()),
    };
    access
        .check(ip)
        .map_err(|kind| refusal(&ip.to_string(), &[(ip, kind)]))
}

fn refusal(host: &str, refused: &[(IpAddr, &str)]) -> String {
    let list: Vec<String> = refused
        .iter()
        .map(|(ip, kind)| format!("{ip} ({kind})"))
        .collect();
    format!(
        "`{host}` leads only to addresses fetch does not reach: {}; set `allow_private` in the \
         server's options to allow them",
        list.join(", ")
    )
}

/// A resolver that answers only with addresses its [`PrivateAccess`] allows.
pub struct PublicResolver(pub PrivateAccess);

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let access = self.0.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (public, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = found
                .into_iter()
                .partition(|a| access.check(a.ip()).is_ok());
            if public.is_empty() {
                let refused: Vec<(IpAddr, &str)> = refused
                    .iter()
                    .filter_map(|a| access.check(a.ip()).err().map(|kind| (a.ip(), kind)))
                    .collect();
                if refused.is_empty() {
                    return Err(format!("`{host}` has no address").into());
                }
                return Err(refusal(&host, &refused).into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn local_and_private_addresses_are_not_public() {
        for (text, kind) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("10.1.2.3", "private"),
            ("172.31.255.255", "private"),
            ("192.168.0.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("255.255.255.255", "reserved or broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("2002:7f00:1::", "loopback"),
            ("64:ff9b::1.2.3.4", "NAT64"),
            ("fd00::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(non_public(ip(text)), Some(kind), "{text}");
        }
        for public in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(non_public(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn literal_hosts_in_every_spelling_are_checked() {
        for url in [
            "http://127.0.0.1:8080/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://0/",
        ] {
            let parsed = reqwest::Url::parse(url).expect("parses");
            let e = check_literal(&parsed, &PrivateAccess::None).expect_err(url);
            assert!(e.contains("allow_private"), "{url}: {e}");
        }
        let public = reqwest::Url::parse("http://93.184.215.14/").expect("parses");
        assert!(check_literal(&public, &PrivateAccess::None).is_ok());
        let named = reqwest::Url::parse("http://localhost/").expect("parses");
        assert!(
            check_literal(&named, &PrivateAccess::None).is_ok(),
            "names go to the resolver"
        );
    }

    #[test]
    fn allow_private_opens_all_or_the_listed_networks() {
        let access = |v: serde_json::Value| serde_json::from_value::<PrivateAccess>(v);
        assert_eq!(
            access(serde_json::json!(false)).ok(),
            Some(PrivateAccess::None)
        );
        let all = access(serde_json::json!(true)).expect("true");
        assert!(all.check(ip("127.0.0.1")).is_ok());
        let some = access(serde_json::json!(["127.0.0.1", "10.0.0.0/8"])).expect("list");
        assert!(some.check(ip("127.0.0.1")).is_ok());
        assert!(some.check(ip("::ffff:127.0.0.1")).is_ok());
        assert!(some.check(ip("10.9.8.7")).is_ok());
        assert_eq!(some.check(ip("127.0.0.2")), Err("loopback"));
        assert_eq!(some.check(ip("::1")), Err("loopback"));
        assert!(some.check(ip("1.1.1.1")).is_ok());
        let e = access(serde_json::json!(["localhost"])).expect_err("a name");
        assert!(e.to_string().contains("entry `localhost`"), "{e}");
        let e = access(serde_json::json!("yes")).expect_err("a string");
        assert!(e.to_string().contains("true, false or a list"), "{e}");
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_local_addresses() {
        let name: Name = "localhost".parse().expect("a name");
        let e = match PublicResolver(PrivateAccess::None).resolve(name).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("`localhost` leads only to"), "{e}");
        assert!(e.contains("127.0.0.1 (loopback)"), "{e}");
    }
}
