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
//!   "the later time wins", so a replayed batch changes nothing;
//! * `responses`: whole API responses, here the pages of `GET /products`
//!   ([`ProductPages`]), with version-based keys: a product written through
//!   the api retires every cached page on every instance at once by changing
//!   one small shared value, the pages' version. Stock taken by orders in the
//!   worker shows in the pages within their short TTL (the single product,
//!   `GET /products/{id}`, is invalidated at once).
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
use scalestack_store::{Consistency, ProductRecord, Store, StoreError, UserActivity, UserRecord};

use super::error::ApiError;

/// The cache and its resources; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Cached {
    pub(crate) cache: Cache,
    pub(crate) users: Resource<UserRecord>,
    pub(crate) products: Resource<ProductRecord>,
    pub(crate) activity: Resource<UserActivity>,
    pub(crate) pages: ProductPages,
}

/// The rows of one page of `GET /products`: one more than the page's limit,
/// which tells whether a next page exists.
pub(crate) type ProductPage = Vec<ProductRecord>;

/// The id, in `response_versions`, of the version of the product pages.
const PRODUCT_PAGES_VERSION: &str = "products";

/// Cached pages of `GET /products`, keyed by `products:{version}:{after}:
/// {limit}`. The version is itself a cached value (resource
/// `response_versions`, shared through the L2 and invalidated like any
/// other), so that retiring every page costs one write and one message,
/// never a scan of Redis; retired pages are never read again and expire by
/// their TTL.
#[derive(Debug, Clone)]
pub(crate) struct ProductPages {
    pub(crate) pages: Resource<ProductPage>,
    versions: Resource<u64>,
}

impl ProductPages {
    /// The current version; a fresh one when no instance has one cached.
    async fn version(&self) -> u64 {
        let fresh = async { Ok::<_, std::convert::Infallible>(Some(fresh_version())) };
        match self
            .versions
            .get_or_load(PRODUCT_PAGES_VERSION, fresh)
            .await
        {
            Ok(Some(version)) => *version,
            // The loader always answers; a fresh version is safe regardless.
            _ => fresh_version(),
        }
    }

    /// The rows of the page after product `after` (`limit + 1` of them at
    /// most), from the cache or the catalog.
    pub(crate) async fn get(
        &self,
        store: &Store,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Arc<ProductPage>, ApiError> {
        let version = self.version().await;
        let key = format!("products:{version:016x}:{}:{limit}", after.unwrap_or(0));
        let load = async {
            store
                .list_products(after, limit + 1, Consistency::Eventual)
                .await
                .map(Some)
        };
        Ok(self.pages.get_or_load(key, load).await?.unwrap_or_default())
    }

    /// Retires every cached page on every instance (after a product write).
    pub(crate) async fn retire(&self) {
        self.versions
            .insert(PRODUCT_PAGES_VERSION, Arc::new(fresh_version()))
            .await;
    }
}

/// A version no instance has used: the clock in nanoseconds plus a
/// process-wide counter, mixed with the process id.
fn fresh_version() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    nanos.wrapping_add(n) ^ (u64::from(std::process::id()) << 44)
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
        let responses = options(&cache, &settings.responses);
        let pages = ProductPages {
            pages: cache.resource_with("responses", responses, weigh_page)?,
            versions: cache.resource_with("response_versions", responses, |_: &u64| 0)?,
        };
        Ok(Self {
            cache,
            users,
            products,
            activity,
            pages,
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

/// Heap bytes of a page of products.
fn weigh_page(page: &ProductPage) -> usize {
    page.iter()
        .map(|p| std::mem::size_of::<ProductRecord>() + weigh_product(p))
        .sum()
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
