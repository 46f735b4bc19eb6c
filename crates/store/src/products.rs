//! Products: the unsharded catalog, read from its replicas (or primary).

use sqlx::QueryBuilder;

use crate::backend::BeginWrite as _;
use crate::{Consistency, NewProduct, ProductRecord, Store, StoreError, Written, now_ms, on_pool};

/// Fields of a product to change; `None` keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New price in cents.
    pub price_cents: Option<i64>,
    /// New units in stock.
    pub stock: Option<i64>,
}

impl Store {
    /// Creates a product in the catalog.
    pub async fn create_product(
        &self,
        new: &NewProduct,
    ) -> Result<Written<ProductRecord>, StoreError> {
        let catalog = self.catalog();
        let now = now_ms();
        let product = catalog
            .write("create_product", async {
                on_pool!(&catalog.primary.pool, p => sqlx::query_as::<_, ProductRecord>(
                    "INSERT INTO products (name, description, price_cents, stock, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) \
                     RETURNING id, name, description, price_cents, stock, created_at, updated_at",
                )
                .bind(&new.name)
                .bind(&new.description)
                .bind(new.price_cents)
                .bind(new.stock)
                .bind(now)
                .fetch_one(p)
                .await)
            })
            .await?;
        Ok(Written {
            value: product,
            token: catalog.token_after_commit().await,
        })
    }

    /// Changes the given fields of a product; `None` when there is no such
    /// product.
    pub async fn update_product(
        &self,
        id: i64,
        patch: &ProductPatch,
    ) -> Result<Written<Option<ProductRecord>>, StoreError> {
        let catalog = self.catalog();
        let product = catalog
            .write("update_product", async {
                on_pool!(&catalog.primary.pool, p => sqlx::query_as::<_, ProductRecord>(
                    "UPDATE products SET name = COALESCE($2, name), \
                     description = COALESCE($3, description), \
                     price_cents = COALESCE($4, price_cents), stock = COALESCE($5, stock), \
                     updated_at = $6 WHERE id = $1 \
                     RETURNING id, name, description, price_cents, stock, created_at, updated_at",
                )
                .bind(id)
                .bind(patch.name.as_deref())
                .bind(patch.description.as_deref())
                .bind(patch.price_cents)
                .bind(patch.stock)
                .bind(now_ms())
                .fetch_optional(p)
                .await)
            })
            .await?;
        let token = match product {
            Some(_) => catalog.token_after_commit().await,
            None => None,
        };
        Ok(Written {
            value: product,
            token,
        })
    }

    /// Reads a product.
    pub async fn get_product(
        &self,
        id: i64,
        consistency: Consistency,
    ) -> Result<Option<ProductRecord>, StoreError> {
        self.catalog()
            .read("get_product", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, ProductRecord>(
                    "SELECT id, name, description, price_cents, stock, created_at, updated_at \
                     FROM products WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(p)
                .await)
            })
            .await
    }

    /// A page of products in id order, starting after id `after`.
    pub async fn list_products(
        &self,
        after: Option<i64>,
        limit: u32,
        consistency: Consistency,
    ) -> Result<Vec<ProductRecord>, StoreError> {
        let after = after.unwrap_or(0);
        self.catalog()
            .read("list_products", consistency, |pool| async move {
                on_pool!(&pool, p => sqlx::query_as::<_, ProductRecord>(
                    "SELECT id, name, description, price_cents, stock, created_at, updated_at \
                     FROM products WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await)
            })
            .await
    }

    /// Inserts products in one transaction with multi-row statements.
    pub async fn insert_products(&self, products: &[NewProduct]) -> Result<(), StoreError> {
        let catalog = self.catalog();
        let now = now_ms();
        catalog
            .write("insert_products", async {
                on_pool!(&catalog.primary.pool, p, Db => {
                    let mut tx = p.begin_write().await?;
                    for chunk in products.chunks(1000) {
                        let mut q = QueryBuilder::<Db>::new(
                            "INSERT INTO products (name, description, price_cents, stock, created_at, updated_at) ",
                        );
                        q.push_values(chunk, |mut b, p| {
                            b.push_bind(&p.name)
                                .push_bind(&p.description)
                                .push_bind(p.price_cents)
                                .push_bind(p.stock)
                                .push_bind(now)
                                .push_bind(now);
                        });
                        q.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await
                })
            })
            .await
    }
}
