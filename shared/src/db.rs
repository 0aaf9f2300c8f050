//! Connection pool and migrations.

use std::time::Duration;

use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::config::Common;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A pool that connects lazily, so a process starts (and answers health checks and 503s) while the
/// database is down, and recovers by itself when it returns.
pub fn lazy_pool(common: &Common) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(common.database_max_connections)
        .acquire_timeout(common.database_acquire_timeout)
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy(common.database_url.expose())
}

/// Applies our migrations and apalis-postgres's (kept in its own `apalis` schema and history
/// table). Both take an advisory lock, so concurrent runs are safe, and applied ones are skipped.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    apalis_postgres::PostgresStorage::setup(pool).await?;
    Ok(())
}

/// Whether an error means the database could not be reached (as opposed to a query problem).
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}
