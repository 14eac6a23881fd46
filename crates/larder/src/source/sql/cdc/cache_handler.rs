//! A [`Cache`](crate::Cache) as the [`ChangeHandler`] of its own table.

use super::ChangeHandler;
use crate::error::Result;
use async_trait::async_trait;

/// A cache is its own change handler: changed ids are invalidated in the
/// store and in every near cache (over the bus); a TRUNCATE or a gap
/// purges the whole entity (its generation is bumped, so every entry
/// cached before counts as a miss, in the store too).
///
/// A purge reaches only caches that stamp their entries: build a cache fed
/// by change notifications with `.bus(true)` (or with a near cache or a
/// tagger, which turn the bus on). Without stamps a gap is an error, which
/// the listener logs and retries.
#[async_trait]
impl<K, V> ChangeHandler for crate::Cache<K, V>
where
    K: crate::CacheKey + ?Sized + 'static,
    V: Send + Sync + 'static,
{
    async fn changed(&self, _entity: &str, ids: &[String]) -> Result<()> {
        self.invalidate_ids(ids).await
    }

    async fn truncated(&self, _entity: &str) -> Result<()> {
        self.purge_or_refuse().await
    }

    async fn gap(&self, _entity: &str) -> Result<()> {
        self.purge_or_refuse().await
    }
}

/// A set, a feed or a leaderboard is the change handler of its table's owner channel
/// (`SqlSetSource::install_change_triggers`,
/// `SqlFeedSource::install_change_triggers`): each notified owner's cached
/// collection is invalidated; a TRUNCATE or a gap purges every owner
/// (`purge`, a scan of the store).
macro_rules! owner_handler {
    ($($collection:ty),*) => {$(
        #[async_trait]
        impl ChangeHandler for $collection {
            async fn changed(&self, _name: &str, owners: &[String]) -> Result<()> {
                for owner in owners {
                    self.invalidate(owner).await?;
                }
                Ok(())
            }

            async fn truncated(&self, _name: &str) -> Result<()> {
                self.purge().await.map(drop)
            }

            async fn gap(&self, _name: &str) -> Result<()> {
                self.purge().await.map(drop)
            }
        }
    )*};
}

owner_handler!(crate::SetCache, crate::FeedCache, crate::Leaderboard);
