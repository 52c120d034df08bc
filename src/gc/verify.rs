//! Verification: a PATCH only schedules imports, so delivery ends when every socket shows its new value
//! (gc-protocol.md §4.6), or when an import session reports `Failed`.
