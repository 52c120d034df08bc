//! The API token. It is a secret: it can be sent to the platform and nowhere else.
//!
//! `Token` has no `Display`, its `Debug` prints `Token(***)`, and the only way to the bytes is
//! [`Token::header_value`], used when building the `Authorization` header.

use std::fmt;

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

    /// `Bearer <token>`: the only place the secret leaves this type.
    pub fn header_value(&self) -> String {
        format!("Bearer {}", self.0)
    }
}
