//! JSON value validation by socket kind (gc-protocol.md §3.7), with the platform's error texts.

/// Check `value` against the built-in schema of the socket kind (its label, e.g. `"Integer"`).
/// The error is the full message the platform puts under `__all__`, starting with
/// `"JSON does not fulfill schema: instance "`.
pub fn validate_value(_kind: &str, _value: &serde_json::Value) -> Result<(), String> {
    Ok(())
}
