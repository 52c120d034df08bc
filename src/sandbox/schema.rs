//! JSON value validation by socket kind (gc-protocol.md §3.7), with the platform's error texts.
