//! S3 multipart uploads (gc-protocol.md §2): streamed from disk in parts, bounded concurrency, ETags kept
//! verbatim, resumable via list-parts after a crash.
