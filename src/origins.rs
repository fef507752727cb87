//! `outer.allowed-origins`: which web pages may open sessions.
//!
//! A browser tells the server which page opened a WebSocket (`Origin`), and lets any page open
//! one to any server; without a check, a page on another site could use a visitor's browser to
//! connect. Clients other than browsers send no `Origin` (or any they like), so the check
//! protects browsers' users only: an upgrade without `Origin` passes, one with an origin not on
//! the list gets 403.

use std::fmt;

/// One allowed origin: `https://app.example.com` exactly, or `https://*.example.com` for any
/// subdomain of `example.com` (not `example.com` itself), with an optional `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    scheme: String,
    /// The host, or with a wildcard the suffix after `*` (starting with `.`).
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

/// The allowed origins; empty allows every origin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedOrigins(Vec<Pattern>);

impl AllowedOrigins {
    /// Parses a comma-separated list; empty text allows every origin.
    pub fn parse(text: &str) -> Result<AllowedOrigins, String> {
        let mut patterns = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            patterns.push(parse_pattern(entry)?);
        }
        Ok(AllowedOrigins(patterns))
    }

    /// Whether an upgrade with this `Origin` header (if any) may go on.
    pub fn allows(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else { return true };
        if self.0.is_empty() {
            return true;
        }
        let Ok(origin) = parse_origin(origin) else {
            return false;
        };
        self.0.iter().any(|pattern| {
            pattern.scheme == origin.scheme
                && pattern.port == origin.port
                && if pattern.wildcard {
                    origin.host.len() > pattern.host.len() && origin.host.ends_with(&pattern.host)
                } else {
                    origin.host == pattern.host
                }
        })
    }

    /// Whether no origin is restricted.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for AllowedOrigins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|p| {
                let star = if p.wildcard { "*" } else { "" };
                let port = p.port.map(|port| format!(":{port}")).unwrap_or_default();
                format!("{}://{star}{}{port}", p.scheme, p.host)
            })
            .collect();
        f.write_str(&entries.join(","))
    }
}

/// An origin as a browser sends it: `scheme://host[:port]`, lower-cased, default ports dropped.
fn parse_origin(text: &str) -> Result<Pattern, String> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| format!("{text:?} is not scheme://host[:port]"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("{text:?}: the scheme must be http or https"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(format!("{text:?} is not scheme://host[:port] (no path)"));
    }
    // An IPv6 host is bracketed: the port, if any, follows the bracket.
    let (host, port) = match rest.find(']') {
        Some(end) if rest.starts_with('[') => (&rest[..=end], rest[end + 1..].strip_prefix(':')),
        _ => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let port = port
        .map(|port| {
            port.parse::<u16>()
                .map_err(|_| format!("{text:?}: bad port {port:?}"))
        })
        .transpose()?;
    let default_port = if scheme == "https" { 443 } else { 80 };
    Ok(Pattern {
        host: host.to_ascii_lowercase(),
        port: port.filter(|p| *p != default_port),
        wildcard: false,
        scheme,
    })
}

fn parse_pattern(entry: &str) -> Result<Pattern, String> {
    let mut pattern = parse_origin(entry)?;
    if let Some(suffix) = pattern.host.strip_prefix('*') {
        if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
            return Err(format!(
                "{entry:?}: a wildcard is written https://*.example.com"
            ));
        }
        pattern.host = suffix.to_owned();
        pattern.wildcard = true;
    } else if pattern.host.contains('*') {
        return Err(format!(
            "{entry:?}: a wildcard is written https://*.example.com"
        ));
    }
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_origins() {
        let allowed = AllowedOrigins::parse(
            "https://app.example.com, https://*.example.org, http://localhost:8080",
        )
        .unwrap();
        assert!(allowed.allows(None), "no Origin: not a browser");
        assert!(allowed.allows(Some("https://app.example.com")));
        assert!(allowed.allows(Some("HTTPS://App.Example.com:443")));
        assert!(
            !allowed.allows(Some("http://app.example.com")),
            "scheme matters"
        );
        assert!(
            !allowed.allows(Some("https://app.example.com:8443")),
            "port matters"
        );
        assert!(!allowed.allows(Some("https://evil-app.example.com")));
        assert!(allowed.allows(Some("https://a.example.org")));
        assert!(allowed.allows(Some("https://b.a.example.org")));
        assert!(
            !allowed.allows(Some("https://example.org")),
            "a wildcard means a subdomain"
        );
        assert!(!allowed.allows(Some("https://evilexample.org")));
        assert!(allowed.allows(Some("http://localhost:8080")));
        assert!(!allowed.allows(Some("null")), "opaque origins are refused");
        assert!(
            AllowedOrigins::parse("")
                .unwrap()
                .allows(Some("https://anything.test"))
        );
        let v6 = AllowedOrigins::parse("http://[::1]:8080").unwrap();
        assert!(v6.allows(Some("http://[::1]:8080")));
        assert!(!v6.allows(Some("http://[::1]")));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "example.com",
            "ftp://x",
            "https://x/path",
            "https://*x.com",
            "https://a.*.com",
            "https://x:port",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
