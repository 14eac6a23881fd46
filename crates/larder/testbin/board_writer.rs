//! `larder-board-writer`: a child process for the write-back leaderboard
//! and set crash tests.
//!
//! Not part of the library's interface. By default it builds a write-back
//! leaderboard (board `scores`, owner column `game_id`, member
//! `player_id`, score `points`) over a PostgreSQL table on the given
//! Redis, prints `ready`, then increments members `m0..m<members>` of
//! owner `1` by 1 in turn, printing `try <member>` before and `ack
//! <member>` after each acknowledged increment, until it is killed. With
//! `--kind set` it builds a write-back set instead (set `follows`, owner
//! column `user_id`, member `follower`) and adds the members of owner `1`
//! in turn, then removes them in turn, and so on, printing `try <member>
//! <add|remove>` and `ack <member> <add|remove>`.

use larder::{Leaderboard, SetCache, SqlBoardSource, SqlPool, SqlSetSource, WriteBackOptions};
use std::time::Duration;

#[path = "child.rs"]
mod child;
use child::{arg, say};

#[tokio::main]
async fn main() -> Result<(), String> {
    let members: u64 = arg("members")?
        .parse()
        .map_err(|e| format!("--members: {e}"))?;
    let delay: u64 = arg("max-delay-ms")?
        .parse()
        .map_err(|e| format!("--max-delay-ms: {e}"))?;
    let pool = SqlPool::connect(&arg("pg")?, 2)
        .await
        .map_err(|e| e.to_string())?;
    let store = larder::store::connect_checked(&arg("redis")?)
        .await
        .map_err(|e| e.to_string())?;
    let options = WriteBackOptions {
        max_delay: Duration::from_millis(delay),
        flush_lease: Duration::from_millis(300),
        ..WriteBackOptions::default()
    };
    if arg("kind").is_ok_and(|k| k == "set") {
        let source = SqlSetSource::builder(pool, &arg("table")?)
            .owner("user_id")
            .member("follower")
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let set = SetCache::builder()
            .prefix(&arg("prefix")?)
            .name("follows")
            .shards(4)
            .store(store)
            .source(source)
            .write_back(options)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        say("ready");
        for i in 0_u64.. {
            let member = format!("m{}", i % members);
            let add = (i / members).is_multiple_of(2);
            let op = if add { "add" } else { "remove" };
            say(&format!("try {member} {op}"));
            if add {
                set.add("1", &member).await
            } else {
                set.remove("1", &member).await
            }
            .map_err(|e| e.to_string())?;
            say(&format!("ack {member} {op}"));
        }
        return Ok(());
    }
    let source = SqlBoardSource::builder(pool, &arg("table")?)
        .owner("game_id")
        .member("player_id")
        .score("points")
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let board = Leaderboard::builder()
        .prefix(&arg("prefix")?)
        .name("scores")
        .shards(4)
        .store(store)
        .source(source)
        .write_back(options)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    say("ready");
    for i in 0_u64.. {
        let member = format!("m{}", i % members);
        say(&format!("try {member}"));
        board
            .incr("1", &member, 1.0)
            .await
            .map_err(|e| e.to_string())?;
        say(&format!("ack {member}"));
    }
    Ok(())
}
