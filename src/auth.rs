//! Client tokens (`auth.secret`, `auth.public-key`): when either is set, every upgrade must
//! carry a signed token naming its channel id and role, with an expiry; the session is closed
//! (4003) when the token expires.
//!
//! The token is a JWT (RFC 7519) signed with HS256 under `auth.secret`, or with ES256 or RS256
//! under the private key of `auth.public-key`, and carries `channelId`, `role` and `exp`. A
//! backend that issues channel ids issues the tokens with them, so that knowing an id is no
//! longer enough to take its slot. It comes in the query (`token=...`) or, for browsers that
//! cannot add a query parameter to a URL they were given, as an offered subprotocol
//! `wspair.token.<JWT>` (never echoed back). Tokens are checked before the claim: a refused
//! client never disturbs the session holding the slot. A wspair.v1 client can hand its session
//! a fresh token without reconnecting (a `token` NODE frame, PROTOCOL.md §2.5); a raw client
//! reconnects with one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::pair::{ChannelId, Role};

/// The prefix of a token offered as a subprotocol.
pub const TOKEN_SUBPROTOCOL_PREFIX: &str = "wspair.token.";

/// The settings, as configured; [`Auth::new`] turns them into keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// `auth.secret`: the HS256 secret; empty when unset.
    pub secret: String,
    /// `auth.public-key`: a PEM file with an EC (P-256) or RSA public key.
    pub public_key: Option<PathBuf>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.secret.is_empty() {
            ""
        } else {
            "<redacted>"
        };
        f.debug_struct("AuthConfig")
            .field("secret", &secret)
            .field("public_key", &self.public_key)
            .finish()
    }
}

impl AuthConfig {
    /// Whether tokens are required.
    pub fn is_on(&self) -> bool {
        !self.secret.is_empty() || self.public_key.is_some()
    }
}

/// Why a setting cannot be used, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct AuthConfigError {
    pub key: &'static str,
    pub problem: String,
}

/// The verification keys of the configured algorithms.
pub struct Auth {
    keys: Vec<(Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|(alg, _)| *alg).collect();
        f.debug_struct("Auth")
            .field("algorithms", &algorithms)
            .finish()
    }
}

/// What a token must say.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(rename = "channelId")]
    channel_id: String,
    role: String,
    /// Seconds since the Unix epoch; a fractional value (as `Date.now() / 1000` gives) is
    /// accepted.
    exp: f64,
}

impl Auth {
    /// The keys of `config`; `None` when tokens are off.
    pub fn new(config: &AuthConfig) -> Result<Option<Auth>, AuthConfigError> {
        let mut keys = Vec::new();
        if !config.secret.is_empty() {
            if config.secret.len() < 32 {
                return Err(AuthConfigError {
                    key: "auth.secret",
                    problem: format!("must be 32 bytes or more, got {}", config.secret.len()),
                });
            }
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(config.secret.as_bytes()),
            ));
        }
        if let Some(path) = &config.public_key {
            keys.push(public_key(path)?);
        }
        Ok((!keys.is_empty()).then_some(Auth { keys }))
    }

    /// Checks `token` for `channel_id` and `role`; returns when it expires (`None`: beyond
    /// what the clock can represent, so never).
    pub fn check(
        &self,
        token: Option<&str>,
        channel_id: &ChannelId,
        role: Role,
    ) -> Result<Option<SystemTime>, String> {
        let token = token.ok_or(
            "missing token: give it as the query parameter `token`, or offer the subprotocol wspair.token.<token>",
        )?;
        let header = decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let key = self
            .keys
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, key)| key)
            .ok_or_else(|| format!("token algorithm {:?} is not accepted here", header.alg))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = decode::<Claims>(token, key, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_owned(),
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    "token not valid yet (nbf)".to_owned()
                }
                jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                    "token signature does not verify".to_owned()
                }
                _ => format!("invalid token: {e}"),
            })?
            .claims;
        if claims.channel_id != channel_id.as_str() {
            return Err(format!(
                "token is for channel {:?}, not {channel_id}",
                claims.channel_id
            ));
        }
        if claims.role != role.to_string() {
            return Err(format!("token is for role {:?}, not {role}", claims.role));
        }
        // jsonwebtoken checked that `exp` is a number in the future.
        Ok(Duration::try_from_secs_f64(claims.exp)
            .ok()
            .and_then(|after| UNIX_EPOCH.checked_add(after)))
    }
}

/// When a session whose token expires at `expiry` must close, on the runtime's clock. A token
/// already past its expiry (by a hair) closes at once; one too far ahead for the clock never
/// does (`None`).
pub fn deadline(expiry: SystemTime) -> Option<Instant> {
    let left = expiry.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now().checked_add(left)
}

/// `time` in seconds since the Unix epoch, as tokens and the `welcome` frame state it.
pub fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// An EC (P-256, for ES256) or RSA (for RS256) public key from a PEM file.
fn public_key(path: &Path) -> Result<(Algorithm, DecodingKey), AuthConfigError> {
    let error = |problem: String| AuthConfigError {
        key: "auth.public-key",
        problem,
    };
    let pem = std::fs::read(path).map_err(|e| error(format!("{}: {e}", path.display())))?;
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((Algorithm::ES256, key));
    }
    DecodingKey::from_rsa_pem(&pem)
        .map(|key| (Algorithm::RS256, key))
        .map_err(|e| {
            error(format!(
                "{}: not a PEM EC (P-256) or RSA public key: {e}",
                path.display()
            ))
        })
}
