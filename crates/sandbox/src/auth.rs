//! Token authentication exactly as the platform does it (gc-protocol.md §1.3): the scheme word is
//! case-insensitive, other schemes are ignored (anonymous), and malformed headers fail loudly with the
//! platform's literal messages. Pure: the token table is passed in.

/// The outcome of reading the `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth<U> {
    /// No (recognised) header: the platform's anonymous user.
    Anonymous,
    User(U),
    /// 401 with this `detail`.
    Failed(&'static str),
}

pub const NO_CREDENTIALS: &str = "Invalid token header. No credentials provided.";
pub const HAS_SPACES: &str = "Invalid token header. Token string should not contain spaces.";
pub const BAD_CHARACTERS: &str =
    "Invalid token header. Token string should not contain invalid characters.";
pub const INVALID_TOKEN: &str = "Invalid token.";
pub const INACTIVE: &str = "User inactive or deleted.";

/// `lookup(token)` returns the user and whether the account is active.
pub fn authenticate<U>(
    header: Option<&[u8]>,
    lookup: impl Fn(&str) -> Option<(U, bool)>,
) -> Auth<U> {
    let Some(header) = header else {
        return Auth::Anonymous;
    };
    let parts: Vec<&[u8]> = header
        .split(|b| b.is_ascii_whitespace())
        .filter(|p| !p.is_empty())
        .collect();
    match parts.first() {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer") => {}
        _ => return Auth::Anonymous,
    }
    match parts.len() {
        1 => return Auth::Failed(NO_CREDENTIALS),
        2 => {}
        _ => return Auth::Failed(HAS_SPACES),
    }
    let Ok(token) = std::str::from_utf8(parts[1]) else {
        return Auth::Failed(BAD_CHARACTERS);
    };
    if !token.is_ascii() {
        return Auth::Failed(BAD_CHARACTERS);
    }
    match lookup(token) {
        None => Auth::Failed(INVALID_TOKEN),
        Some((_, false)) => Auth::Failed(INACTIVE),
        Some((user, true)) => Auth::User(user),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(t: &str) -> Option<(u8, bool)> {
        match t {
            "good" => Some((1, true)),
            "gone" => Some((2, false)),
            _ => None,
        }
    }

    #[test]
    fn the_table_of_the_protocol() {
        let a = |h: &[u8]| authenticate(Some(h), table);
        assert_eq!(authenticate(None, table), Auth::Anonymous);
        assert_eq!(a(b"Bearer good"), Auth::User(1));
        assert_eq!(a(b"BEARER good"), Auth::User(1));
        assert_eq!(a(b"bearer   good"), Auth::User(1));
        assert_eq!(a(b"Bearer"), Auth::Failed(NO_CREDENTIALS));
        assert_eq!(a(b"Bearer a b"), Auth::Failed(HAS_SPACES));
        assert_eq!(
            a("Bearer g\u{f6}od".as_bytes()),
            Auth::Failed(BAD_CHARACTERS)
        );
        assert_eq!(a(b"Bearer \xff\xfe"), Auth::Failed(BAD_CHARACTERS));
        assert_eq!(a(b"Bearer nope"), Auth::Failed(INVALID_TOKEN));
        assert_eq!(a(b"Bearer gone"), Auth::Failed(INACTIVE));
        assert_eq!(a(b"Token good"), Auth::Anonymous);
        assert_eq!(a(b"Baerer good"), Auth::Anonymous);
        assert_eq!(a(b""), Auth::Anonymous);
    }
}
