//! `scalestack seed`: fills the store with users and products for benchmarks.
//!
//! Rows are generated deterministically from their ids and written with
//! multi-row statements, one transaction per shard and batch, all shards in
//! parallel. User ids are reserved from the catalog sequence first, so on a
//! fresh data set `--users N` creates ids `1..=N`.

use std::ops::Range;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use scalestack_config::Config;
use scalestack_store::shard::mix64;
use scalestack_store::{NewProduct, Store, UserRecord, now_ms};

use crate::AppError;

/// Users written per batch (all shards together).
const USER_BATCH: usize = 20_000;
/// Products written per batch.
const PRODUCT_BATCH: usize = 5_000;

/// What a seed run wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedReport {
    /// Sequence values of the users created: their ids, except under a
    /// geographic shard map.
    pub users: Range<i64>,
    /// Number of products created.
    pub products: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Creates `users` users and `products` products; shows a progress bar when
/// `progress` is set.
pub async fn run(
    config: &Config,
    users: u64,
    products: u64,
    progress: bool,
) -> Result<SeedReport, AppError> {
    let started = Instant::now();
    let store = Store::open(config).await?;
    let bar = if progress {
        let bar = ProgressBar::new(users + products);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:40}] {human_pos}/{human_len} rows ({per_sec}, eta {eta})")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let ids = store.reserve_user_ids(users as i64).await?;
    let now = now_ms();
    let mut next = ids.start;
    while next < ids.end {
        let end = (next + USER_BATCH as i64).min(ids.end);
        // Under hash and range maps a sequence value is the user id; under a
        // geographic map it becomes the id of a user of the first region.
        let batch: Vec<UserRecord> = (next..end)
            .map(|seq| Ok(fake_user(store.shard_map().user_id(seq, None)?, now)))
            .collect::<Result<_, scalestack_store::StoreError>>()?;
        store.insert_users(&batch).await?;
        bar.inc(batch.len() as u64);
        next = end;
    }

    let mut written = 0u64;
    while written < products {
        let n = (products - written).min(PRODUCT_BATCH as u64);
        let batch: Vec<NewProduct> = (written..written + n).map(fake_product).collect();
        store.insert_products(&batch).await?;
        bar.inc(n);
        written += n;
    }
    bar.finish_and_clear();
    store.close().await;
    Ok(SeedReport {
        users: ids,
        products,
        elapsed: started.elapsed(),
    })
}

fn fake_user(id: i64, now: i64) -> UserRecord {
    UserRecord {
        id,
        email: format!("user{id}@example.com"),
        name: format!("User {id}"),
        created_at: now,
        updated_at: now,
    }
}

fn fake_product(n: u64) -> NewProduct {
    let h = mix64(n.wrapping_add(0x5eed));
    NewProduct {
        name: format!("Product {}", n + 1),
        description: format!("Seeded product number {}", n + 1),
        price_cents: 100 + (h % 99_900) as i64,
        stock: 100 + ((h >> 32) % 9_900) as i64,
    }
}
