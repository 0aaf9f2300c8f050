//! Which tenant is behind a phone number: our `tenant_profiles` first (any of a tenant's numbers),
//! then the Collections Monitor. Answers, found and not found, are cached with a TTL.

use std::{
    collections::HashMap,
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

/// For each number (given as its written forms), the tenants whose profile lists any of them, in
/// the order that decides who a shared number (a household sharing a phone) belongs to: the
/// tenant that listed it first (oldest profile), then by id (at most 5 each). Stable: activity on
/// a profile never changes the answer. One statement for all of them: a chunk's senders cost one
/// round trip, not one each (through a pooler, each round trip is a hop more).
pub async fn owners_of_each(
    pool: &PgPool,
    numbers: &[Vec<String>],
) -> Result<Vec<Vec<String>>, sqlx::Error> {
    let (index, variants): (Vec<i32>, Vec<&str>) = numbers
        .iter()
        .enumerate()
        .flat_map(|(i, vs)| vs.iter().map(move |v| (i as i32, v.as_str())))
        .unzip();
    let rows = sqlx::query!(
        // Each number's owners by the directory's GIN index (26 us a number for a chunk of 128,
        // against 0.38 ms for a statement of its own; without statistics on the table the
        // planner scans it for each number instead: ANALYZE after a bulk load of tenants).
        r#"WITH n AS (
               SELECT i, array_agg(variant) AS variants
               FROM UNNEST($1::int4[], $2::text[]) AS u(i, variant) GROUP BY i
           )
           SELECT n.i AS "i!", o.tenant_ids AS "tenant_ids!"
           FROM n CROSS JOIN LATERAL (
               SELECT COALESCE(array_agg(t.tenant_id ORDER BY t.created_at, t.tenant_id), '{}') AS tenant_ids
               FROM (SELECT tenant_id, created_at FROM tenant_profiles
                     WHERE phone_numbers ?| n.variants
                     ORDER BY created_at, tenant_id LIMIT 5) t
           ) o"#,
        &index,
        &variants as &[&str]
    )
    .fetch_all(pool)
    .await?;
    let mut owners = vec![Vec::new(); numbers.len()];
    for row in rows {
        if let Some(slot) = owners.get_mut(row.i as usize) {
            *slot = row.tenant_ids;
        }
    }
    Ok(owners)
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
        let mut answers = self.resolve_many(&[(raw, e164)]).await?;
        Ok(answers.pop().unwrap_or(Resolution::Unknown))
    }

    /// Resolves several numbers, an answer for each in their order: cached answers first, then
    /// one directory statement for all the others ([`owners_of_each`]), then the Monitor for
    /// those the directory does not list. Answers as [`Self::resolve`] gives them one by one.
    pub async fn resolve_many(
        &self,
        numbers: &[(&str, Option<&E164>)],
    ) -> Result<Vec<Resolution>, sqlx::Error> {
        let keys: Vec<String> = numbers
            .iter()
            .map(|(raw, e164)| {
                e164.map_or_else(|| raw.trim().to_owned(), |e| e.as_str().to_owned())
            })
            .collect();
        let mut cached: Vec<Option<Resolution>> = Vec::with_capacity(numbers.len());
        // The first position of each key not cached: asked once, however often it appears.
        let mut missing: Vec<usize> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, key) in keys.iter().enumerate() {
            let hit = self.cache.get(key).await;
            if hit.is_some() {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
            } else if seen.insert(key.as_str()) {
                self.counters.misses.fetch_add(1, Ordering::Relaxed);
                missing.push(i);
            }
            cached.push(hit.map(|c| match c {
                Cached::Found(t) => Resolution::Found(t),
                Cached::NotFound => Resolution::Unknown,
            }));
        }
        let mut asked: HashMap<&str, Resolution> = HashMap::new();
        if !missing.is_empty() {
            let variants: Vec<Vec<String>> = missing
                .iter()
                .map(|&i| phone::lookup_variants(numbers[i].0, numbers[i].1))
                .collect();
            let listed = owners_of_each(&self.pool, &variants).await?;
            for ((&i, variants), local) in missing.iter().zip(&variants).zip(listed) {
                let resolution = self.answer_for(local, variants, numbers[i].1).await?;
                let key = &keys[i];
                match &resolution {
                    Resolution::Found(t) => {
                        self.cache
                            .insert(key.clone(), Cached::Found(t.clone()))
                            .await
                    }
                    Resolution::Unknown => self.cache.insert(key.clone(), Cached::NotFound).await,
                    Resolution::Unavailable => {}
                }
                asked.insert(key.as_str(), resolution);
            }
        }
        Ok(keys
            .iter()
            .zip(cached)
            .map(|(key, hit)| {
                hit.or_else(|| asked.get(key.as_str()).cloned())
                    .unwrap_or(Resolution::Unavailable)
            })
            .collect())
    }

    /// A number's answer from what the directory lists for it (`local`, first-listed first),
    /// else from the Monitor.
    async fn answer_for(
        &self,
        local: Vec<String>,
        variants: &[String],
        e164: Option<&E164>,
    ) -> Result<Resolution, sqlx::Error> {
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
