//! The outbound allow-list: which origins a function may call through
//! `wasi:http/outgoing-handler`. One parser for the packer (which refuses a
//! bad entry at build time) and the loader (which matches each request
//! against the signed list), so they agree by construction.
//!
//! An entry is `scheme://host[:port]`: scheme `http` or `https`, a DNS name
//! or an IP literal (IPv6 in brackets), and a port (default: the scheme's).
//! A host `*.example.com` matches every name below `example.com` (not
//! `example.com` itself). No paths, users or queries: the list names
//! destinations, not URLs.

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    /// Lower-case; without the `*.` of a wildcard entry.
    pub host: String,
    /// Whether `host` is the parent of the allowed names (`*.host`).
    pub wildcard: bool,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Longest entry accepted (a DNS name is at most 253 bytes).
const MAX_ENTRY: usize = 300;

impl Origin {
    /// Parse one entry of `allowed-outbound-hosts`.
    pub fn parse(entry: &str) -> Result<Origin, String> {
        let bad = |why: &str| -> Result<Origin, String> {
            Err(format!("allowed outbound host {}: {why} (expected scheme://host[:port], e.g. \"https://api.example.com\")", crate::untrusted(entry)))
        };
        if entry.len() > MAX_ENTRY {
            return bad("too long");
        }
        let Some((scheme, rest)) = entry.split_once("://") else { return bad("no scheme") };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return bad("the scheme must be http or https"),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("only an origin is allowed: no path, query, user or spaces");
        }
        let Some((host, port)) = split_host_port(rest) else { return bad("malformed host or port") };
        let port = match port {
            None => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return bad("the port must be 1-65535"),
            },
        };
        let host = host.to_ascii_lowercase();
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(h) => (true, h.to_string()),
            None => (false, host),
        };
        if host.is_empty() || host.contains('*') || !valid_host(&host) {
            return bad("not a host name or IP address");
        }
        Ok(Origin { scheme, host, wildcard, port })
    }

    /// Whether a request to `scheme://authority` may go out.
    pub fn allows(&self, scheme: Scheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || port != self.port {
            return false;
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.wildcard {
            host.len() > self.host.len() + 1 && host.ends_with(&self.host) && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// `host[:port]`, IPv6 literals in brackets.
pub fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        return match after {
            "" => Some((h, None)),
            p => Some((h, Some(p.strip_prefix(':')?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h, Some(p))),
        Some(_) => None,
        None => Some((s, None)),
    }
}

fn valid_host(h: &str) -> bool {
    if h.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    h.len() <= 253 && h.split('.').all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Parse a whole list (the manifest's or the crate metadata's).
pub fn parse_list(entries: &[String]) -> Result<Vec<Origin>, String> {
    entries.iter().map(|e| Origin::parse(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_match_exactly() {
        let o = Origin::parse("https://api.example.com").unwrap();
        assert!(o.allows(Scheme::Https, "API.example.com", 443));
        assert!(!o.allows(Scheme::Http, "api.example.com", 443));
        assert!(!o.allows(Scheme::Https, "api.example.com", 8443));
        assert!(!o.allows(Scheme::Https, "evil-api.example.com", 443));
        assert!(!o.allows(Scheme::Https, "api.example.com.evil.net", 443));
        let w = Origin::parse("http://*.example.com:8080").unwrap();
        assert!(w.allows(Scheme::Http, "a.b.example.com", 8080));
        assert!(!w.allows(Scheme::Http, "example.com", 8080));
        assert!(!w.allows(Scheme::Http, "badexample.com", 8080));
        let ip = Origin::parse("http://127.0.0.1:9000").unwrap();
        assert!(ip.allows(Scheme::Http, "127.0.0.1", 9000));
        let v6 = Origin::parse("http://[::1]:9000").unwrap();
        assert!(v6.allows(Scheme::Http, "::1", 9000));
        for bad in ["api.example.com", "ftp://x", "https://x/path", "https://u@x", "https://x:0", "https://x:99999", "https://*", "https://a.*.com", "https://"]
        {
            assert!(Origin::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
