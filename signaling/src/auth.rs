//! Access tokens: JWT (HS256) signed with the API secret.
//!
//! A token names one room and one identity and grants publish and/or
//! subscribe. Without a secret the server runs in dev mode and accepts
//! anyone (start-up says so loudly).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The API key that signed the token.
    pub iss: String,
    /// The participant's identity.
    pub sub: String,
    pub room: String,
    #[serde(default)]
    pub publish: bool,
    #[serde(default)]
    pub subscribe: bool,
    pub exp: u64,
    #[serde(default)]
    pub nbf: u64,
}

/// What a validated request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    pub identity: Option<String>,
    pub publish: bool,
    pub subscribe: bool,
}

impl Grants {
    fn dev() -> Self {
        Grants {
            identity: None,
            publish: true,
            subscribe: true,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    #[error("a token is required: pass ?token= (WebSocket) or Authorization: Bearer (WHIP/WHEP); make one with `meridian token`")]
    Missing,
    #[error("the token has expired: make a new one with `meridian token`")]
    Expired,
    #[error("the token is not valid yet (nbf in the future)")]
    NotYetValid,
    #[error("the token is invalid: {0}")]
    Invalid(String),
    #[error("the token is for room {token_room:?}, not {room:?}")]
    WrongRoom { token_room: String, room: String },
    #[error("the token does not grant {0}")]
    NotGranted(&'static str),
}

#[derive(Clone)]
pub struct Auth {
    key: String,
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("key", &self.key)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Auth {
    pub fn new(key: impl Into<String>, secret: Option<String>) -> Self {
        Auth {
            key: key.into(),
            secret: secret.filter(|s| !s.is_empty()).map(String::into_bytes),
        }
    }

    pub fn dev_mode(&self) -> bool {
        self.secret.is_none()
    }

    /// Issues a token. Fails in dev mode (nothing to sign with).
    pub fn issue(
        &self,
        room: &str,
        identity: &str,
        publish: bool,
        subscribe: bool,
        ttl: Duration,
    ) -> Result<String, AuthError> {
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| AuthError::Invalid("no API secret is configured".into()))?;
        let now = unix_now();
        let claims = Claims {
            iss: self.key.clone(),
            sub: identity.to_string(),
            room: room.to_string(),
            publish,
            subscribe,
            exp: now + ttl.as_secs(),
            nbf: now.saturating_sub(1),
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))
    }

    /// Checks a token for `room`. In dev mode everything is granted.
    pub fn verify(&self, token: Option<&str>, room: &str) -> Result<Grants, AuthError> {
        let Some(secret) = &self.secret else {
            return Ok(Grants::dev());
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = decode::<Claims>(token, &DecodingKey::from_secret(secret), &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid(e.to_string()),
            }
        })?;
        let c = data.claims;
        if c.room != room {
            return Err(AuthError::WrongRoom {
                token_room: c.room,
                room: room.to_string(),
            });
        }
        Ok(Grants {
            identity: Some(c.sub),
            publish: c.publish,
            subscribe: c.subscribe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_verify() {
        let a = Auth::new("key", Some("secret".into()));
        let t = a
            .issue("r", "alice", true, false, Duration::from_secs(60))
            .unwrap();
        let g = a.verify(Some(&t), "r").unwrap();
        assert_eq!(g.identity.as_deref(), Some("alice"));
        assert!(g.publish && !g.subscribe);
        assert!(matches!(
            a.verify(Some(&t), "other"),
            Err(AuthError::WrongRoom { .. })
        ));
        assert_eq!(a.verify(None, "r"), Err(AuthError::Missing));
        assert!(matches!(
            a.verify(Some("garbage"), "r"),
            Err(AuthError::Invalid(_))
        ));
        let b = Auth::new("key", Some("other-secret".into()));
        assert!(matches!(
            b.verify(Some(&t), "r"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn expired_token_is_refused() {
        let a = Auth::new("key", Some("secret".into()));
        let claims = Claims {
            iss: "key".into(),
            sub: "bob".into(),
            room: "r".into(),
            publish: true,
            subscribe: true,
            exp: unix_now() - 3600,
            nbf: 0,
        };
        let t = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(a.verify(Some(&t), "r"), Err(AuthError::Expired));
    }

    #[test]
    fn dev_mode_grants_everything() {
        let a = Auth::new("key", None);
        assert!(a.dev_mode());
        assert_eq!(a.verify(None, "r"), Ok(Grants::dev()));
    }
}
