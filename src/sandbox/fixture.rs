//! The sandbox's seeded world: users and tokens, sockets, archives, reader studies and existing items.

/// A parsed fixture file, or the built-in demo world.
#[derive(Debug, Clone, Default)]
pub struct Fixture {}
