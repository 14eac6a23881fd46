//! Sets, feeds and leaderboards on their hit path, next to the raw Redis
//! command that answers the same question: a membership read
//! (`SetCache::contains`) against `ZSCORE` on a sorted set of the same
//! members, a 20-item feed page (`FeedCache::page`) against `LRANGE 0 19`
//! of a list holding the same 20 rows (raw JSON, so the raw side moves the
//! same row bytes), and a leaderboard's top 10 of 1,000 members
//! (`Leaderboard::top`) against `ZREVRANGE 0 9 WITHSCORES` of a sorted set
//! of the same scores.
//!
//! From 1 and from 32 concurrent tasks, same run. larder's sets and
//! leaderboards are over SQLite tables and its feeds over a PostgreSQL
//! table (each loaded once, then every read is a hit). Needs Redis on 127.0.0.1:6379 and PostgreSQL
//! (`LARDER_TEST_REDIS_URL`, `LARDER_TEST_PG_URL`).
//!
//! Run: `cargo bench -p larder --bench collections`; the figures are the
//! ratios of `larder_*` to `raw_*` throughput (reads/s).

#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

mod common;

use common::collections::{
    board_top, feed_page, raw_lrange, raw_zrevrange, raw_zscore, set_contains, Collections,
};
use common::concurrent;

fn collections(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let Collections {
        set,
        feed,
        board,
        conn,
        prefix,
    } = rt.block_on(common::collections::collections());
    let mut group = c.benchmark_group("collections");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for tasks in [1u64, 32] {
        let raw = |name: &str| (conn.clone(), format!("{prefix}:raw:{name}"));
        concurrent(
            &mut group,
            &rt,
            ("raw_zscore", tasks),
            raw("set"),
            |(mut raw, key), i| async move { raw_zscore(&mut raw, &key, i).await },
        );
        concurrent(
            &mut group,
            &rt,
            ("larder_set_contains", tasks),
            set.clone(),
            |s, i| async move { set_contains(&s, i).await },
        );
        concurrent(
            &mut group,
            &rt,
            ("raw_lrange_20", tasks),
            raw("feed"),
            |(mut raw, key), _| async move { raw_lrange(&mut raw, &key).await },
        );
        concurrent(
            &mut group,
            &rt,
            ("larder_feed_page_20", tasks),
            feed.clone(),
            |f, _| async move { feed_page(&f).await },
        );
        concurrent(
            &mut group,
            &rt,
            ("raw_zrevrange_10", tasks),
            raw("board"),
            |(mut raw, key), _| async move { raw_zrevrange(&mut raw, &key).await },
        );
        concurrent(
            &mut group,
            &rt,
            ("larder_board_top_10", tasks),
            board.clone(),
            |l, _| async move { board_top(&l).await },
        );
    }
    group.finish();
}

criterion_group!(benches, collections);
criterion_main!(benches);
