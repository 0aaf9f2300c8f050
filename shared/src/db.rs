//! Connection pools and migrations, direct or through a pooler.

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    config::{Common, PoolMode},
    pool_mode,
};

/// Serialises migration runs across replicas (any constant; "sms-migrate" in ASCII).
const MIGRATION_LOCK: i64 = 0x0073_6d73_2d6d_6967;

/// A pool that connects lazily, so a process starts (and answers health checks and 503s) while the
/// database is down, and recovers by itself when it returns.
pub fn lazy_pool(common: &Common) -> Result<PgPool, sqlx::Error> {
    lazy_pool_of(common, common.database_max_connections)
}

/// [`lazy_pool`] with `connections` connections at most.
pub fn lazy_pool_of(common: &Common, connections: u32) -> Result<PgPool, sqlx::Error> {
    let mode = pool_mode::effective(common.database_pool_mode);
    let options = PgPoolOptions::new()
        .max_connections(connections.max(1))
        .acquire_timeout(common.database_acquire_timeout)
        .idle_timeout(Duration::from_secs(300));
    let switchable = pool_mode::watching();
    let pool = switchable_if(options, switchable)
        .connect_lazy_with(connect_options(common.database_url.expose(), mode)?);
    if switchable {
        pool_mode::register(&pool, false);
    }
    Ok(pool)
}

/// With `switchable`, connections opened before a switch to transaction mode (pool_mode.rs) are
/// closed instead of used.
fn switchable_if(options: PgPoolOptions, switchable: bool) -> PgPoolOptions {
    if !switchable {
        return options;
    }
    options.before_acquire(|_, meta| {
        Box::pin(async move { Ok(!pool_mode::predates_switch(meta.age)) })
    })
}

/// A pool whose connections keep their session, for LISTEN: over `DATABASE_SESSION_URL`, else
/// over `DATABASE_URL` when that is known not to be behind a transaction pooler (configured, or
/// found by the start-up probe). `None`: nothing may listen (the workers poll). Always a pool of its own: a listener holds its connection for good, and
/// taking it from the handlers' pool would shrink their budget unseen.
pub fn session_pool(common: &Common, connections: u32) -> Result<Option<PgPool>, sqlx::Error> {
    let mode = pool_mode::effective(common.database_pool_mode);
    let url = match (&common.database_session_url, mode) {
        (Some(url), _) => url.expose(),
        (None, PoolMode::Session) if pool_mode::may_listen_on_database_url() => {
            common.database_url.expose()
        }
        (None, _) => return Ok(None),
    };
    // Listening on DATABASE_URL while its pooling is only assumed: closed if it proves a
    // transaction pooler.
    let switchable = common.database_session_url.is_none() && pool_mode::watching();
    let options = PgPoolOptions::new()
        .max_connections(connections.max(1))
        .acquire_timeout(common.database_acquire_timeout);
    let pool = switchable_if(options, switchable)
        .connect_lazy_with(connect_options(url, PoolMode::Session)?);
    if switchable {
        pool_mode::register(&pool, true);
    }
    Ok(Some(pool))
}

/// The options every connection of ours uses.
///
/// - No `extra_float_digits` startup parameter: PgBouncer refuses unknown startup parameters
///   unless told to ignore them (`ignore_startup_parameters`), and we read floats in binary.
/// - Behind a transaction pooler, no statement cache: our patched sqlx-postgres
///   (vendor/README.md) then sends each statement unnamed, parsed and executed in one
///   extended-query sequence, which no pooler splits between server connections.
pub fn connect_options(url: &str, mode: PoolMode) -> Result<PgConnectOptions, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.extra_float_digits(None);
    Ok(match mode {
        PoolMode::Session | PoolMode::TransactionNamed => options,
        PoolMode::Transaction => options.statement_cache_capacity(0),
    })
}

/// How `url` pools connections, found by asking it: two client connections, a statement on the
/// first, then one on the second. Behind a transaction pooler the server connection the first
/// released serves the second (the same backend PID: PgBouncer hands out the most recently used
/// idle one); with sessions (Postgres itself, a session pooler) each client keeps its own.
/// Three rounds, so one coincidence does not decide. Statements go unnamed, which every mode
/// accepts.
pub async fn detect_pool_mode(url: &str) -> Result<PoolMode, sqlx::Error> {
    use sqlx::Connection;
    let options = connect_options(url, PoolMode::Transaction)?;
    let mut first = sqlx::PgConnection::connect_with(&options).await?;
    let mut second = sqlx::PgConnection::connect_with(&options).await?;
    let mut mode = PoolMode::Session;
    for _ in 0..3 {
        let a: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut first)
            .await?;
        let b: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut second)
            .await?;
        if a == b {
            mode = PoolMode::Transaction;
            break;
        }
    }
    let _ = first.close().await;
    let _ = second.close().await;
    if mode == PoolMode::Transaction && tracks_prepared_statements(url).await? {
        mode = PoolMode::TransactionNamed;
    }
    Ok(mode)
}

/// Whether the transaction pooler at `url` tracks named prepared statements (PgBouncer 1.21+
/// with `max_prepared_statements`: it prepares them again on whichever server connection a
/// client gets, under names of its own). Inside one transaction (one server connection), a
/// statement sqlx prepares as `sqlx_s_N` is listed by the server under another name only then.
/// The probe's statements are closed before the transaction ends, so an untracking pooler keeps
/// none of them on its server connection.
async fn tracks_prepared_statements(url: &str) -> Result<bool, sqlx::Error> {
    use sqlx::{Connection, Executor, SqlSafeStr};
    const PROBE: &str = "SELECT $1::int4 AS sms_pool_mode_probe";
    let mut conn =
        sqlx::PgConnection::connect_with(&connect_options(url, PoolMode::Session)?).await?;
    let mut tx = conn.begin().await?;
    (&mut *tx)
        .prepare(sqlx::AssertSqlSafe(PROBE).into_sql_str())
        .await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pg_prepared_statements WHERE statement = $1")
            .bind(PROBE)
            .fetch_all(&mut *tx)
            .await?;
    tx.clear_cached_statements().await?;
    tx.rollback().await?;
    let _ = conn.close().await;
    Ok(!names.is_empty() && names.iter().all(|n| !n.starts_with("sqlx_s_")))
}

/// Settles `DATABASE_POOL_MODE` when it was not given: probes the database (within 5 s) and
/// runs in transaction mode when a transaction pooler answers, saying once which setting would
/// make that explicit. Sessions found: session mode, watched for failures only a transaction
/// pooler causes. No answer: transaction mode (correct behind anything) until a later probe
/// answers (pool_mode.rs). Call before building pools.
pub async fn settle_pool_mode(common: &mut Common) {
    if common.database_pool_mode_known {
        return;
    }
    let probe = detect_pool_mode(common.database_url.expose());
    let found = tokio::time::timeout(Duration::from_secs(5), probe).await;
    match found {
        Ok(Ok(PoolMode::Session)) => pool_mode::watch(common.database_url.expose(), true),
        Ok(Ok(_)) => {}
        // No answer: transaction mode is correct behind anything; asked again until answered.
        Ok(Err(_)) | Err(_) => {
            common.database_pool_mode = PoolMode::Transaction;
            pool_mode::watch(common.database_url.expose(), false);
        }
    }
    match found {
        Ok(Ok(mode @ (PoolMode::Transaction | PoolMode::TransactionNamed))) => {
            common.database_pool_mode = mode;
            let setting = mode.as_str();
            tracing::warn!(
                setting,
                "DATABASE_URL is a transaction pooler (detected): running in {setting} mode; set DATABASE_POOL_MODE={setting} to say so"
            );
        }
        Ok(Ok(PoolMode::Session)) => {
            tracing::info!("DATABASE_URL keeps sessions (detected): session mode");
        }
        Ok(Err(e)) => tracing::warn!(
            error = %Fault::of(&e).kind(),
            "could not probe how DATABASE_URL pools; transaction mode (correct behind anything) until a probe answers, no LISTEN on it (set DATABASE_POOL_MODE to say)"
        ),
        Err(_) => tracing::warn!(
            "no answer from DATABASE_URL within 5 s to probe how it pools (could not probe); transaction mode (correct behind anything) until a probe answers, no LISTEN on it (set DATABASE_POOL_MODE to say)"
        ),
    }
}

/// Applies apalis-postgres's migrations and ours (apalis's kept in its own `apalis` schema and history
/// table); applied ones are skipped.
///
/// Concurrent runs (several replicas starting) are serialised by a transaction-scoped advisory
/// lock held by an open transaction for the whole run, not by sqlx's session lock: behind a
/// transaction pooler a session lock's unlock lands on another server connection and the lock
/// stays held. A replica that finds the lock taken gives its connection back and tries again, so
/// waiting replicas do not hold the pooler's server connections the migrating one needs. Needs
/// two connections from `pool`.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    let guard = loop {
        let mut tx = pool.begin().await?;
        let locked = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
            MIGRATION_LOCK
        )
        .fetch_one(&mut *tx)
        .await?;
        if locked {
            break tx;
        }
        tx.rollback().await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // apalis's first: ours may index its tables.
    let mut apalis = apalis_postgres::PostgresStorage::migrations();
    apalis.set_locking(false);
    apalis.run(pool).await?;
    let mut ours = sqlx::migrate!("../migrations");
    ours.set_locking(false);
    ours.run(pool).await?;
    guard.commit().await?;
    Ok(())
}

/// Whether an error means the database could not be reached or the connection broke (as opposed
/// to a query problem the server reported). A protocol error is a broken connection too (an
/// unexpected message, as a pooler's mixed-up notification): whether a statement took effect is
/// unknown, so it is never answered as a definite failure.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P") || c.starts_with("08")))
}

/// Why the database cannot be used, for readiness checks: an operator reads this first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Nothing answered in time, or the connection failed.
    Unreachable(String),
    /// The server (or a pooler) answered and refused us: credentials, database name, a startup
    /// parameter, too many clients.
    Refused(String),
    /// Statements behave as behind a transaction pooler while `DATABASE_POOL_MODE` says session.
    TransactionPooler(String),
    /// Any other error from a query.
    Error(String),
}

impl Fault {
    pub fn of(err: &sqlx::Error) -> Self {
        match err {
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let message = db.message().to_owned();
                // 26000 "prepared statement does not exist", 42P05 "already exists": a named
                // statement met another client's server connection.
                if code == "26000" || code == "42P05" {
                    Self::TransactionPooler(format!(
                        "{message}: the database is behind a transaction pooler; set DATABASE_POOL_MODE=transaction"
                    ))
                } else if code.starts_with("08")
                    || code.starts_with("28")
                    || code == "3D000"
                    || code == "53300"
                {
                    Self::Refused(message)
                } else if code.starts_with("57P") {
                    Self::Unreachable(message)
                } else {
                    Self::Error(message)
                }
            }
            sqlx::Error::PoolTimedOut => {
                Self::Unreachable("no connection within DATABASE_ACQUIRE_TIMEOUT_MS".into())
            }
            other => Self::Unreachable(other.to_string()),
        }
    }

    /// The stable word reported in `checks.database`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Refused(_) => "refused",
            Self::TransactionPooler(_) => "transaction_pooler",
            Self::Error(_) => "error",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Unreachable(r)
            | Self::Refused(r)
            | Self::TransactionPooler(r)
            | Self::Error(r) => r,
        }
    }
}
