//! Which tenant is behind a phone number: our `tenant_profiles` first (any of a tenant's numbers),
//! then the Collections Monitor. Answers, found and not found, are cached with a TTL.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use moka::{Expiry, future::Cache};
use sqlx::PgPool;

use crate::{
    config,
    monitor::{MonitorClient, MonitorError, MonitorTenant},
    phone::{self, E164},
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRef {
    pub tenant_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Found(TenantRef),
    Unknown,
    /// The directory could not answer (Monitor down): unknown for now, not cached, retried later.
    Unavailable,
}

#[derive(Clone)]
enum Cached {
    Found(TenantRef),
    NotFound,
}

struct TtlByAnswer {
    found: Duration,
    not_found: Duration,
}

impl Expiry<String, Cached> for TtlByAnswer {
    fn expire_after_create(&self, _: &String, value: &Cached, _: Instant) -> Option<Duration> {
        Some(match value {
            Cached::Found(_) => self.found,
            Cached::NotFound => self.not_found,
        })
    }
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    monitor_found: AtomicU64,
    monitor_unavailable: AtomicU64,
    shared_numbers: AtomicU64,
}

/// The tenants whose profile lists any of these written forms, in the order that decides who a
/// shared number (a household sharing a phone) belongs to: the tenant that listed it first
/// (oldest profile), then by id. Stable: activity on a profile never changes the answer.
pub async fn owners(pool: &PgPool, variants: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar!(
        "SELECT tenant_id FROM tenant_profiles WHERE phone_numbers ?| $1::text[] ORDER BY created_at, tenant_id LIMIT 5",
        variants
    )
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
    pub monitor_found: u64,
    pub monitor_unavailable: u64,
    /// Directory lookups that found the number listed for more than one tenant.
    pub shared_numbers: u64,
}

#[derive(Clone)]
pub struct TenantResolver {
    pool: PgPool,
    monitor: Option<MonitorClient>,
    cache: Cache<String, Cached>,
    counters: Arc<Counters>,
    region: phonenumber::country::Id,
}

impl TenantResolver {
    pub fn new(
        pool: PgPool,
        monitor: Option<MonitorClient>,
        cfg: &config::TenantCache,
        region: phonenumber::country::Id,
    ) -> Self {
        let cache = Cache::builder()
            .max_capacity(cfg.capacity)
            .expire_after(TtlByAnswer {
                found: cfg.ttl,
                not_found: cfg.negative_ttl,
            })
            .build();
        Self {
            pool,
            monitor,
            cache,
            counters: Arc::default(),
            region,
        }
    }

    pub fn monitor(&self) -> Option<&MonitorClient> {
        self.monitor.as_ref()
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let hits = c.hits.load(Ordering::Relaxed);
        let misses = c.misses.load(Ordering::Relaxed);
        CacheStats {
            hits,
            misses,
            hit_rate: if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            },
            monitor_found: c.monitor_found.load(Ordering::Relaxed),
            monitor_unavailable: c.monitor_unavailable.load(Ordering::Relaxed),
            shared_numbers: c.shared_numbers.load(Ordering::Relaxed),
        }
    }

    /// Forgets a number's cached answer (after the directory changed).
    pub async fn invalidate(&self, key: &str) {
        self.cache.invalidate(key).await;
    }

    /// Drops numbers from the cache as the directory changes (noted in `directory_changes` by a
    /// trigger on `tenant_profiles`), checking every `every`, until `shutdown`: a number moved to
    /// another tenant or removed stops resolving to the old one within about that long on every
    /// worker, not after the cache TTL.
    pub async fn follow_changes(
        self,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut seen: Option<i64> = None;
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match self.apply_changes(seen).await {
                Ok(last) => seen = Some(last),
                Err(e) => tracing::debug!(error = %e, "directory changes not read; next tick"),
            }
        }
    }

    /// Invalidates the numbers changed after `seen` (None: start from now); returns the last id.
    async fn apply_changes(&self, seen: Option<i64>) -> Result<i64, sqlx::Error> {
        let Some(seen) = seen else {
            return sqlx::query_scalar!(
                r#"SELECT COALESCE(max(id), 0) AS "id!" FROM directory_changes"#
            )
            .fetch_one(&self.pool)
            .await;
        };
        let changes = sqlx::query!(
            "SELECT id, phone_number FROM directory_changes WHERE id > $1 ORDER BY id LIMIT 1000",
            seen
        )
        .fetch_all(&self.pool)
        .await?;
        let mut last = seen;
        for c in changes {
            self.cache.invalidate(&c.phone_number).await;
            last = c.id;
        }
        Ok(last)
    }

    /// Resolves the tenant behind `raw` (normalised as `e164` when it parsed).
    pub async fn resolve(&self, raw: &str, e164: Option<&E164>) -> Result<Resolution, sqlx::Error> {
        let key = e164.map_or_else(|| raw.trim().to_owned(), |e| e.as_str().to_owned());
        if let Some(cached) = self.cache.get(&key).await {
            self.counters.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(match cached {
                Cached::Found(t) => Resolution::Found(t),
                Cached::NotFound => Resolution::Unknown,
            });
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let variants = phone::lookup_variants(raw, e164);
        let resolution = self.resolve_uncached(&variants, e164).await?;
        match &resolution {
            Resolution::Found(t) => self.cache.insert(key, Cached::Found(t.clone())).await,
            Resolution::Unknown => self.cache.insert(key, Cached::NotFound).await,
            Resolution::Unavailable => {}
        }
        Ok(resolution)
    }

    async fn resolve_uncached(
        &self,
        variants: &[String],
        e164: Option<&E164>,
    ) -> Result<Resolution, sqlx::Error> {
        let local = owners(&self.pool, variants).await?;
        if local.len() > 1 {
            self.counters.shared_numbers.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                tenants = local.len(),
                "number listed for several tenants; the first listed wins"
            );
        }
        if let Some(tenant_id) = local.into_iter().next() {
            return Ok(Resolution::Found(TenantRef { tenant_id }));
        }
        let Some(monitor) = &self.monitor else {
            return Ok(Resolution::Unknown);
        };
        match monitor.lookup(variants).await {
            Ok(Some(tenant)) => {
                self.counters.monitor_found.fetch_add(1, Ordering::Relaxed);
                self.remember(&tenant, e164).await?;
                Ok(Resolution::Found(TenantRef {
                    tenant_id: tenant.tenant_id,
                }))
            }
            Ok(None) => Ok(Resolution::Unknown),
            Err(err @ MonitorError::Unavailable(_)) | Err(err @ MonitorError::Rejected(_)) => {
                self.counters
                    .monitor_unavailable
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, "tenant directory unavailable; number treated as unknown for now");
                Ok(Resolution::Unavailable)
            }
        }
    }

    /// Copies a tenant the Monitor found into `tenant_profiles`, with its numbers in E.164 and the
    /// number that just matched, so the next lookup is local.
    async fn remember(
        &self,
        tenant: &MonitorTenant,
        e164: Option<&E164>,
    ) -> Result<(), sqlx::Error> {
        let mut numbers: Vec<String> = tenant
            .phone_numbers
            .iter()
            .filter_map(|n| phone::normalize(n, self.region).ok())
            .map(|e| e.as_str().to_owned())
            .collect();
        if let Some(e) = e164 {
            numbers.push(e.as_str().to_owned());
        }
        numbers.sort();
        numbers.dedup();
        let language = tenant
            .language_preference
            .as_deref()
            .map(|l| l.trim().to_ascii_lowercase())
            .filter(|l| ["en", "es", "pt"].contains(&l.as_str()));
        sqlx::query!(
            r#"INSERT INTO tenant_profiles (tenant_id, name, phone_numbers, language_preference, timezone)
               VALUES ($1, $2, to_jsonb($3::text[]), $4, $5)
               ON CONFLICT (tenant_id) DO UPDATE SET
                   name = COALESCE(EXCLUDED.name, tenant_profiles.name),
                   phone_numbers = (
                       SELECT jsonb_agg(DISTINCT n ORDER BY n)
                       FROM jsonb_array_elements(tenant_profiles.phone_numbers || EXCLUDED.phone_numbers) AS n
                   ),
                   -- Our own detections are newer evidence than the directory's stored value.
                   language_preference = COALESCE(tenant_profiles.language_preference, EXCLUDED.language_preference),
                   timezone = COALESCE(EXCLUDED.timezone, tenant_profiles.timezone),
                   updated_at = now()"#,
            tenant.tenant_id,
            tenant.name,
            &numbers,
            language,
            tenant
                .timezone
                .as_deref()
                .and_then(crate::quiet_hours::parse_zone)
                .map(|z| z.name().to_owned())
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
