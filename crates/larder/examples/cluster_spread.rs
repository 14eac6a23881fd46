//! How evenly an entity's ids spread over a Redis Cluster's masters: the
//! README's scaling figures. Each id's shard is `xxh3_64(id) mod shards`
//! (larder's recorded, stable layout); each shard is one hash tag
//! `{<entity>:<shard>}`, so one slot (CRC16 of the tag, as Redis computes
//! it); each slot belongs to a master. The masters own the ranges
//! `redis-cli --cluster create` gives N masters (16384 slots in N equal
//! runs). Pure computation, no server.
//!
//! ```sh
//! cargo run -p larder --example cluster_spread -- [ids, default 1000000] [shards, default 64]
//! ```

use redis::cluster_routing::Slot;
use xxhash_rust::xxh3::xxh3_64;

/// Redis Cluster's slot of a hash tag: CRC16/XMODEM mod 16384 (checked
/// against redis-rs' own `Slot::for_key` for every tag below).
fn slot_of(tag: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in tag {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The master of `slot` among `masters` equal runs of the 16384 slots (as
/// `redis-cli --cluster create` assigns them).
fn master_of(slot: u16, masters: u32) -> usize {
    let per = 16384.0 / f64::from(masters);
    ((f64::from(slot) / per).floor() as usize).min(masters as usize - 1)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let ids: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let shards: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let mut per_shard = vec![0u64; shards as usize];
    for id in 0..ids {
        per_shard[(xxh3_64(id.to_string().as_bytes()) % shards) as usize] += 1;
    }
    let (lo, hi) = (
        per_shard.iter().min().copied().unwrap_or(0),
        per_shard.iter().max().copied().unwrap_or(0),
    );
    let mean = ids as f64 / shards as f64;
    println!(
        "{ids} ids over {shards} shards: {lo}..{hi} per shard ({:+.2}%..{:+.2}% of the mean)",
        (lo as f64 / mean - 1.0) * 100.0,
        (hi as f64 / mean - 1.0) * 100.0
    );
    for masters in [3u32, 6, 12] {
        let mut keys = vec![0u64; masters as usize];
        let mut tags = vec![0u64; masters as usize];
        for (shard, n) in per_shard.iter().enumerate() {
            let tag = format!("users:{shard}");
            let slot = slot_of(tag.as_bytes());
            let key = format!("app:{{{tag}}}:v:1");
            assert_eq!(
                Slot::new(slot),
                Some(Slot::for_key(key.as_bytes())),
                "{key}"
            );
            let m = master_of(slot, masters);
            keys[m] += n;
            tags[m] += 1;
        }
        let fair = ids as f64 / f64::from(masters);
        let worst = keys.iter().copied().max().unwrap_or(0) as f64 / fair;
        println!(
            "{masters:>2} masters: shards per master {tags:?}, ids per master {keys:?}; \
             the busiest master holds {worst:.2}x its fair share"
        );
    }
}
