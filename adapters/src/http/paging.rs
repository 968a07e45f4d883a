//! Pagination of list endpoints: `?page=1&perPage=50` (at most 200 per page).

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::problem::ApiError;

/// Largest page.
pub const MAX_PER_PAGE: i64 = 200;

/// Query parameters common to lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1-based page number (default 1).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1_000_000)]
    page: Option<String>,
    /// Items per page (default 50, at most 200).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    per_page: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: i64,
    /// Items per page.
    pub per_page: i64,
}

impl Page {
    /// Rows to skip.
    #[must_use]
    pub fn offset(self) -> i64 {
        (self.page - 1).saturating_mul(self.per_page)
    }
}

impl TryFrom<&PageQuery> for Page {
    type Error = ApiError;

    fn try_from(q: &PageQuery) -> Result<Self, ApiError> {
        let number = |field: &str,
                      value: Option<&String>,
                      default: i64,
                      max: i64|
         -> Result<i64, ApiError> {
            match value {
                None => Ok(default),
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => Err(ApiError::field(
                        field,
                        format!("must be a whole number from 1 to {max}"),
                    )),
                },
            }
        };
        Ok(Self {
            page: number("page", q.page.as_ref(), 1, 1_000_000)?,
            per_page: number("perPage", q.per_page.as_ref(), 50, MAX_PER_PAGE)?,
        })
    }
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Paged<T> {
    /// The items.
    pub items: Vec<T>,
    /// This page's number.
    pub page: i64,
    /// Items per page.
    pub per_page: i64,
    /// Items in all pages.
    pub total: i64,
}

impl<T> Paged<T> {
    /// A page of `items` out of `total`.
    pub fn new(items: Vec<T>, page: Page, total: i64) -> Self {
        Self {
            items,
            page: page.page,
            per_page: page.per_page,
            total,
        }
    }
}

/// One page of a list filtered by tenant and one more value: `count` and `select` bind `$1`
/// the tenant (`None`: every tenant) and `$2` the other filter (`None`: no filter); `select`
/// also binds `$3` LIMIT and `$4` OFFSET.
pub(super) async fn filtered_page<T, F>(
    pool: &PgPool,
    count: &str,
    select: &str,
    (tenant, filter): (Option<Uuid>, Option<F>),
    page: Page,
) -> Result<Paged<T>, ApiError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    F: for<'q> sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres> + Copy + Send,
{
    let total: i64 = sqlx::query_scalar(count)
        .bind(tenant)
        .bind(filter)
        .fetch_one(pool)
        .await?;
    let items: Vec<T> = sqlx::query_as(select)
        .bind(tenant)
        .bind(filter)
        .bind(page.per_page)
        .bind(page.offset())
        .fetch_all(pool)
        .await?;
    Ok(Paged::new(items, page, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(page: Option<&str>, per_page: Option<&str>) -> PageQuery {
        PageQuery {
            page: page.map(str::to_owned),
            per_page: per_page.map(str::to_owned),
        }
    }

    #[test]
    fn defaults_bounds_and_offsets() {
        assert_eq!(
            Page::try_from(&q(None, None)).ok(),
            Some(Page {
                page: 1,
                per_page: 50
            })
        );
        assert_eq!(
            Page::try_from(&q(Some("3"), Some("20")))
                .map(Page::offset)
                .ok(),
            Some(40)
        );
        for (p, pp) in [
            (Some("0"), None),
            (Some("x"), None),
            (None, Some("201")),
            (None, Some("-1")),
        ] {
            assert!(Page::try_from(&q(p, pp)).is_err());
        }
    }
}
