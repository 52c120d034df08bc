//! The API token. It is a secret: it can be sent to the platform and nowhere else.
//!
//! `Token` has no `Display`, its `Debug` prints `Token(***)`, and the only ways to the bytes are
//! [`Token::header_value`] and the crate-internal header builder, used when building the `Authorization`
//! header of a request to the platform's own host (never to S3, never to a redirect target elsewhere).

use std::fmt;
use std::path::Path;

use reqwest::header::HeaderValue;

use crate::error::GcError;

/// The environment variable gcapi reads the token from; we honour the same one.
pub const TOKEN_ENV: &str = "GRAND_CHALLENGE_AUTHORIZATION";

#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl Token {
    /// gcapi's rules (gc-protocol.md §1.3): a bare token or `"<anything> <token>"`; repeated spaces collapse
    /// and the last space-separated part is the token. `None` when nothing is left.
    pub fn parse(raw: &str) -> Option<Token> {
        raw.split_whitespace().last().map(|t| Token(t.to_owned()))
    }

    /// Find the token: the token file first (its content trimmed), then the environment variable
    /// [`TOKEN_ENV`] (pass its value, so that the caller decides whether the environment is read), then the
    /// token written inline in the configuration. A configured token file that cannot be read is an error,
    /// not a reason to fall back silently to another source.
    pub fn from_sources(
        token_file: Option<&Path>,
        env: Option<String>,
        inline: Option<String>,
    ) -> Result<Token, GcError> {
        if let Some(path) = token_file {
            let raw = std::fs::read_to_string(path).map_err(|e| {
                GcError::Config(format!(
                    "cannot read the token file {}: {e}",
                    path.display()
                ))
            })?;
            return Token::checked(&raw).ok_or_else(|| {
                GcError::Config(format!(
                    "the token file {} holds no usable token",
                    path.display()
                ))
            });
        }
        if let Some(raw) = env.filter(|v| !v.trim().is_empty()) {
            return Token::checked(&raw).ok_or_else(|| {
                GcError::Config(format!(
                    "the environment variable {TOKEN_ENV} holds no usable token"
                ))
            });
        }
        if let Some(raw) = inline.filter(|v| !v.trim().is_empty()) {
            return Token::checked(&raw).ok_or_else(|| {
                GcError::Config("the token in the configuration is not usable".into())
            });
        }
        Err(GcError::Config(format!(
            "no API token: set server.token_file, the environment variable {TOKEN_ENV}, or server.token \
             (create one at https://grand-challenge.org/settings/api-tokens/)"
        )))
    }

    /// Parse, and refuse what cannot travel in an HTTP header (control characters, non-ASCII), so that the
    /// problem shows up when the configuration is read rather than on the first request.
    fn checked(raw: &str) -> Option<Token> {
        Token::parse(raw).filter(|t| t.0.chars().all(|c| c.is_ascii_graphic()))
    }

    /// `Bearer <token>`: the only place the secret leaves this type as text.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// The `Authorization` header, marked sensitive so that HTTP-level logging redacts it.
    pub(crate) fn header(&self) -> Result<HeaderValue, GcError> {
        let mut value = HeaderValue::from_str(&self.header_value()).map_err(|_| {
            GcError::Config("the API token contains characters that cannot be sent".into())
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parse_follows_gcapi() {
        assert_eq!(
            Token::parse(SECRET).unwrap().header_value(),
            format!("Bearer {SECRET}")
        );
        assert_eq!(
            Token::parse(&format!("Bearer   {SECRET}\n")).unwrap(),
            Token::parse(SECRET).unwrap()
        );
        assert_eq!(
            Token::parse(&format!("anything at all {SECRET}")).unwrap(),
            Token::parse(SECRET).unwrap()
        );
        assert!(Token::parse("   ").is_none());
        assert!(Token::parse("").is_none());
    }

    #[test]
    fn sources_are_tried_file_then_env_then_inline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("  {SECRET}\n")).unwrap();
        let from_file = Token::from_sources(
            Some(&file),
            Some("Bearer env".into()),
            Some("inline".into()),
        )
        .unwrap();
        assert_eq!(from_file.header_value(), format!("Bearer {SECRET}"));

        let from_env =
            Token::from_sources(None, Some("Bearer env".into()), Some("inline".into())).unwrap();
        assert_eq!(from_env.header_value(), "Bearer env");

        let blank_env =
            Token::from_sources(None, Some("  ".into()), Some("inline".into())).unwrap();
        assert_eq!(blank_env.header_value(), "Bearer inline");
    }

    #[test]
    fn missing_or_unreadable_sources_give_clear_errors_without_the_secret() {
        let none = Token::from_sources(None, None, None)
            .unwrap_err()
            .to_string();
        assert!(
            none.contains(TOKEN_ENV) && none.contains("token_file"),
            "{none}"
        );

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = Token::from_sources(Some(&missing), Some(SECRET.into()), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read the token file"), "{err}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = Token::from_sources(Some(&empty), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no usable token"), "{err}");

        let bad = Token::from_sources(None, Some(format!("{SECRET}\u{e9}")), None)
            .unwrap_err()
            .to_string();
        assert!(!bad.contains(SECRET), "{bad}");
    }

    #[test]
    fn debug_and_header_hide_the_secret() {
        let t = Token::parse(SECRET).unwrap();
        assert_eq!(format!("{t:?}"), "Token(***)");
        assert!(t.header().unwrap().is_sensitive());
    }
}
