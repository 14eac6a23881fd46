//! The row the multi-get benchmark and its instruction-count example read:
//! about 256 bytes as JSON, so both measure the same work.

use serde::{Deserialize, Serialize};

/// A user profile of about 256 bytes as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// The key.
    pub id: u64,
    /// `user <id>`.
    pub name: String,
    /// `user<id>@example.com`.
    pub email: String,
    /// `id % 17`.
    pub team: u32,
    /// Always `Lisbon`.
    pub city: String,
    /// 150 characters.
    pub bio: String,
}

/// The profile of `id`.
pub fn profile(id: u64) -> Profile {
    Profile {
        id,
        name: format!("user {id}"),
        email: format!("user{id}@example.com"),
        team: (id % 17) as u32,
        city: "Lisbon".into(),
        bio: format!("{:0<150}", format!("writes about caches ({id})")),
    }
}
