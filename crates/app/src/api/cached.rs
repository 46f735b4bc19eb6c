//! The reference service's cache: one [`Cache`] per api process (L1, the
//! Redis L2 when configured, invalidation among the stack's processes) and a
//! typed resource per kind of cached record, each with the strategy of its
//! `[cache.<resource>]` table:
//!
//! * `users`: profiles; cache-aside by default, or write-through, or
//!   write-behind (a PATCH is acknowledged once in the local log, and
//!   flushed to the shard in batches, last write winning by `updated_at`);
//! * `products`: the catalog; cache-aside or write-through;
//! * `user_activity`: last-seen times; write-behind by default, flushed as
//!   "the later time wins", so a replayed batch changes nothing.
//!
//! Every read of these records goes through here (with negative caching of
//! ids that do not exist), every write through [`Resource::write_with`] or
//! [`Resource::write`], so that no write can forget to invalidate.
//!
//! This module builds the resources and their batch writers; the handlers
//! decide what to read and write. It talks to data only through the store
//! and the cache crates.

use std::sync::Arc;

use futures::future::BoxFuture;
use scalestack_cache::{
    BatchWriter, BoxError, Cache, CacheError, Id, Peers, Resource, ResourceOptions, WriteError,
    WriteStrategy,
};
use scalestack_config::{Config, ResourceCacheConfig};
use scalestack_store::{ProductRecord, Store, StoreError, UserActivity, UserRecord};

use super::error::ApiError;

/// The cache and its resources; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) cache: Cache,
    pub(crate) users: Resource<UserRecord>,
    pub(crate) products: Resource<ProductRecord>,
    pub(crate) activity: Resource<UserActivity>,
}

/// Where one api process keeps what only it knows: its name (its
/// write-behind log lives under `cache.write_behind.dir/<instance>`) and,
/// in the embedded stack, the processes it exchanges invalidations with.
#[derive(Debug, Clone)]
pub(crate) struct Placement<'a> {
    pub(crate) instance: &'a str,
    pub(crate) peers: Option<Peers>,
}

impl Cached {
    /// Builds the cache of `config.cache` and opens every resource; a
    /// write-behind log left by an earlier run of this instance is replayed
    /// (and flushed) here.
    pub(crate) async fn build(
        config: &Config,
        store: &Store,
        at: Placement<'_>,
    ) -> Result<Self, CacheError> {
        let settings = &config.cache;
        let mut builder = Cache::builder(settings).write_behind_dir(
            settings
                .write_behind
                .instance_dir(&config.data_dir, at.instance),
        );
        if let Some(peers) = at.peers {
            builder = builder.peers(peers);
        }
        let cache = builder.build().await?;
        let users = match options(&cache, &settings.users) {
            opts if opts.strategy == WriteStrategy::WriteBehind => {
                cache
                    .write_behind_resource("users", opts, weigh_user, ProfileWriter(store.clone()))
                    .await?
            }
            opts => cache.resource_with("users", opts, weigh_user)?,
        };
        let products = cache.resource_with(
            "products",
            options(&cache, &settings.products),
            weigh_product,
        )?;
        let activity = match options(&cache, &settings.user_activity) {
            opts if opts.strategy == WriteStrategy::WriteBehind => {
                cache
                    .write_behind_resource(
                        "user_activity",
                        opts,
                        |_: &UserActivity| 0,
                        SeenWriter(store.clone()),
                    )
                    .await?
            }
            opts => cache.resource_with("user_activity", opts, |_: &UserActivity| 0)?,
        };
        Ok(Self {
            cache,
            users,
            products,
            activity,
        })
    }
}

/// A resource's settings; without a cache there is nothing to write
/// behind, so such a resource is written straight to the store.
fn options(cache: &Cache, config: &ResourceCacheConfig) -> ResourceOptions {
    let opts = ResourceOptions::from_config(config);
    if !cache.is_enabled() && opts.strategy == WriteStrategy::WriteBehind {
        return ResourceOptions {
            strategy: WriteStrategy::CacheAside,
            ..opts
        };
    }
    opts
}

/// Heap bytes of a user beyond the struct itself.
fn weigh_user(u: &UserRecord) -> usize {
    u.email.len() + u.name.len()
}

/// Heap bytes of a product beyond the struct itself.
fn weigh_product(p: &ProductRecord) -> usize {
    p.name.len() + p.description.len()
}

/// The error a client sees when a write was not acknowledged.
pub(crate) fn write_error(error: WriteError<StoreError>) -> ApiError {
    match error {
        WriteError::Store(e) => e.into(),
        WriteError::Log(e) => {
            // The client may retry: nothing was acknowledged.
            tracing::error!(error = %e, "write-behind log refused a write");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "write_log_unavailable",
                "the write could not be logged; nothing was changed, retry later",
            )
        }
    }
}

fn int_ids<V>(batch: &[(Id, Arc<V>)]) -> impl Iterator<Item = (i64, &V)> {
    batch.iter().filter_map(|(id, v)| match id {
        Id::Int(id) => Some((*id, &**v)),
        // Only integer ids are ever written; a string id cannot be a user.
        Id::Str(_) => None,
    })
}

// === batch writers ===

/// Flushes write-behind profiles: a profile replaces the stored one only if
/// it is at least as new, so replays and out-of-order flushes are harmless.
struct ProfileWriter(Store);

impl BatchWriter<UserRecord> for ProfileWriter {
    fn write_batch<'a>(
        &'a self,
        batch: &'a [(Id, Arc<UserRecord>)],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let users: Vec<UserRecord> = int_ids(batch).map(|(_, u)| u.clone()).collect();
            self.0.write_user_profiles(&users).await?;
            Ok(())
        })
    }
}

/// Flushes last-seen times: the later time wins, so a batch written twice
/// (delivery is at least once) or flushed after a newer one changes nothing.
struct SeenWriter(Store);

impl BatchWriter<UserActivity> for SeenWriter {
    fn write_batch<'a>(
        &'a self,
        batch: &'a [(Id, Arc<UserActivity>)],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let seen: Vec<(i64, i64)> = int_ids(batch)
                .filter_map(|(id, a)| Some((id, a.last_seen_at?)))
                .collect();
            self.0.record_last_seen(&seen).await?;
            Ok(())
        })
    }
}
