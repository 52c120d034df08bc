//! Time as the agent writes it for people and files: RFC 3339 in UTC.

/// Now, as an RFC 3339 UTC timestamp (receipts, alerts, the journal's text columns).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp; the number itself if it is out of range.
pub fn rfc3339_of_unix(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}
