//! Where `wspair client` connects: a full `/channel?type=…&channelId=…` URL, or a base URL
//! with `--channel` and `--role`, resolved into one [`Target`].
//!
//! Both modes need the parts apart: a raw connection uses the whole URL, while the v1 library
//! takes a base URL, the channel id and the role, and adds the query itself.

use std::fmt;

/// Which side of the pair to connect as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// `type=app`.
    App,
    /// `type=web`.
    Web,
}

impl RoleArg {
    /// The value of the `type` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleArg::App => "app",
            RoleArg::Web => "web",
        }
    }
}

/// A resolved connection target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `ws://host:port/path`, with query parameters other than `type` and `channelId`.
    pub base: String,
    /// The channel id, as given (the server, not this tool, says whether it is valid).
    pub channel_id: String,
    /// The side of the pair.
    pub role: RoleArg,
}

impl Target {
    /// Resolves `url` (with its query) and the flags. `path` is used when the URL has none;
    /// a `type` or `channelId` both in the query and in a flag is an error, so that no value
    /// silently wins.
    pub fn resolve(
        url: &str,
        channel: Option<&str>,
        role: Option<RoleArg>,
        path: &str,
    ) -> Result<Target, String> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("wss://"))
            .ok_or_else(|| format!("the URL must start with ws:// or wss://, got {url:?}"))?;
        let scheme_len = url.len() - rest.len();
        let (location, query) = match url.split_once('?') {
            Some((location, query)) => (location, query),
            None => (url, ""),
        };
        let mut base = location.to_owned();
        if !location[scheme_len..].contains('/') {
            base.push_str(path);
        }
        let mut query_role = None;
        let mut query_channel = None;
        let mut others = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "type" => query_role = Some(value.into_owned()),
                "channelId" => query_channel = Some(value.into_owned()),
                _ => {
                    others.append_pair(&key, &value);
                }
            }
        }
        let others = others.finish();
        if !others.is_empty() {
            base = format!("{base}?{others}");
        }
        let role = match (query_role, role) {
            (Some(_), Some(_)) => return Err("`type` is both in the URL and --role".into()),
            (Some(text), None) => match text.as_str() {
                "app" => RoleArg::App,
                "web" => RoleArg::Web,
                _ => return Err(format!("`type` must be app or web, got {text:?}")),
            },
            (None, Some(role)) => role,
            (None, None) => return Err("no role: give `type=` in the URL, or --role".into()),
        };
        let channel_id = match (query_channel, channel) {
            (Some(_), Some(_)) => {
                return Err("`channelId` is both in the URL and --channel".into());
            }
            (Some(id), None) => id,
            (None, Some(id)) => id.to_owned(),
            (None, None) => {
                return Err("no channel id: give `channelId=` in the URL, or --channel".into());
            }
        };
        Ok(Target {
            base,
            channel_id,
            role,
        })
    }
}

impl fmt::Display for Target {
    /// The full upgrade URL of a raw connection.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("type", self.role.as_str())
            .append_pair("channelId", &self.channel_id)
            .finish();
        let separator = if self.base.contains('?') { '&' } else { '?' };
        write!(f, "{}{separator}{query}", self.base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_full_url_is_taken_apart_and_put_back_together() {
        let url = format!("ws://h:1024/channel?type=app&channelId={ID}&token=x");
        let target = Target::resolve(&url, None, None, "/channel").unwrap();
        assert_eq!(target.base, "ws://h:1024/channel?token=x");
        assert_eq!(target.channel_id, ID);
        assert_eq!(target.role, RoleArg::App);
        assert_eq!(
            target.to_string(),
            format!("ws://h:1024/channel?token=x&type=app&channelId={ID}")
        );
    }

    #[test]
    fn flags_complete_a_base_url_and_the_path_defaults() {
        let target = Target::resolve("ws://h:1024", Some(ID), Some(RoleArg::Web), "/channel");
        assert_eq!(
            target.unwrap().to_string(),
            format!("ws://h:1024/channel?type=web&channelId={ID}")
        );
        let target = Target::resolve("ws://h/x", Some(ID), Some(RoleArg::Web), "/channel");
        assert_eq!(target.unwrap().base, "ws://h/x");
    }

    #[test]
    fn missing_or_doubled_parts_are_usage_errors() {
        assert!(Target::resolve("http://h", Some(ID), Some(RoleArg::App), "/c").is_err());
        assert!(Target::resolve("ws://h", Some(ID), None, "/c").is_err());
        assert!(Target::resolve("ws://h", None, Some(RoleArg::App), "/c").is_err());
        assert!(Target::resolve("ws://h/c?type=app", None, Some(RoleArg::App), "/c").is_err());
        assert!(Target::resolve("ws://h/c?type=pc&channelId=x", None, None, "/c").is_err());
    }
}
