//! How `DATABASE_URL` pools connections when `DATABASE_POOL_MODE` does not say, settled at run
//! time when start-up could not tell (`db::settle_pool_mode`):
//!
//! - The start-up probe had no answer (the database or its pooler down): the process runs in
//!   `transaction` mode, which is correct behind anything (unnamed statements, no LISTEN), and asks
//!   again every few seconds until an answer comes; then it switches to what it found (named,
//!   cached statements for Postgres itself, a session pooler, or a pooler that tracks them).
//! - The probe found sessions: the process runs in `session` mode and watches its failures; one
//!   that only a transaction pooler causes switches it to `transaction` at once, one that could be a
//!   pooler's starts a probe.
//!
//! On a switch every registered pool takes the new connection options, connections opened before
//! it are closed when next acquired, and a pool listening on `DATABASE_URL` is closed (workers then
//! poll). Logged once, with the setting that says so.
//!
//! Process-wide on purpose: a process has one `DATABASE_URL`, and a fact about it learnt by one
//! pool holds for all of them.

use std::{
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::PgPool;

use crate::config::PoolMode;

/// At most one probe per this long, however many requests fail at once; and the period of the
/// probes while start-up's question has no answer.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A probe without an answer in this long is abandoned.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// sqlx's default statement cache, restored when a switch finds named statements usable.
const STATEMENT_CACHE: usize = 100;

/// Set when the mode was not configured: the URL to probe and the pools to switch.
static WATCH: OnceLock<Watch> = OnceLock::new();
/// When the mode was settled at run time, and to what.
static SWITCHED: OnceLock<(Instant, PoolMode)> = OnceLock::new();
/// A switch closed a pool listening on `DATABASE_URL`.
static LISTENING_STOPPED: AtomicBool = AtomicBool::new(false);

struct Watch {
    url: String,
    /// The start-up probe found sessions (rather than having no answer).
    found_sessions: bool,
    probing: AtomicBool,
    last_probe: Mutex<Option<Instant>>,
    /// Pools to switch, and whether each is a listening (session) pool.
    pools: Mutex<Vec<(PgPool, bool)>>,
}

/// What a failure says about the pooler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Only a transaction pooler produces this: switch now.
    TransactionPooler,
    /// Could be a pooler, could be anything: ask it (at most every [`PROBE_EVERY`]).
    Probe,
    /// A problem with the statement or its data: says nothing about pooling.
    Nothing,
}

/// The rule, one function: which failures say what (tested as a table).
pub fn evidence(err: &sqlx::Error) -> Evidence {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref().unwrap_or_default() {
            // "prepared statement ... does not exist" / "already exists": a named statement met
            // another client's server connection.
            "26000" | "42P05" => Evidence::TransactionPooler,
            // "bind message supplies 2 parameters, but prepared statement requires 3" (another
            // client's statement of the same name), other protocol violations, lost connections.
            code if code.starts_with("08") || code.starts_with("57P") => Evidence::Probe,
            _ => Evidence::Nothing,
        },
        // A notification that reached a client that never listened ("unexpected message:
        // NotificationResponse"), a connection closed under us.
        sqlx::Error::Protocol(_) | sqlx::Error::Io(_) => Evidence::Probe,
        _ => Evidence::Nothing,
    }
}

/// The mode was not configured: from now on it is watched (`found_sessions`: the start-up probe
/// said sessions; else it had no answer, and is asked again until it has). Called by
/// `settle_pool_mode` before any pool is built.
pub(crate) fn watch(url: &str, found_sessions: bool) {
    let _ = WATCH.set(Watch {
        url: url.to_owned(),
        found_sessions,
        probing: AtomicBool::new(false),
        last_probe: Mutex::new(None),
        pools: Mutex::new(Vec::new()),
    });
    if !found_sessions
        && let (Some(watch), Ok(runtime)) = (WATCH.get(), tokio::runtime::Handle::try_current())
    {
        runtime.spawn(probe_until_answered(watch));
    }
}

/// Whether pools must be able to switch.
pub(crate) fn watching() -> bool {
    WATCH.get().is_some()
}

/// Whether a worker may LISTEN on `DATABASE_URL` in session mode: only when sessions are known
/// (configured, or found by the start-up probe). A LISTEN through a transaction pooler stays on
/// the server connection after the client leaves (PgBouncer resets server connections only in
/// session mode), and its notifications then reach other clients' statements (`unexpected
/// message: NotificationResponse`) for good.
pub fn may_listen_on_database_url() -> bool {
    !switched() && WATCH.get().is_none_or(|w| w.found_sessions)
}

/// Whether the mode was settled at run time.
pub fn switched() -> bool {
    SWITCHED.get().is_some()
}

/// Whether a switch closed the pool listening on `DATABASE_URL` (workers then poll).
pub fn listening_stopped() -> bool {
    LISTENING_STOPPED.load(Ordering::Acquire)
}

/// `configured`, or the mode settled at run time.
pub fn effective(configured: PoolMode) -> PoolMode {
    SWITCHED.get().map_or(configured, |(_, mode)| *mode)
}

/// A connection of this `age` was opened before the switch (with the options of before): not to
/// be used again.
pub(crate) fn predates_switch(age: Duration) -> bool {
    SWITCHED.get().is_some_and(|(at, _)| age > at.elapsed())
}

/// Registers a pool to switch; `listen`: a session pool for LISTEN, closed by a switch to a mode
/// that shares server connections.
pub(crate) fn register(pool: &PgPool, listen: bool) {
    if let Some(watch) = WATCH.get() {
        watch
            .pools
            .lock()
            .expect("pools")
            .push((pool.clone(), listen));
    }
}

/// A database failure seen anywhere in the process: evidence of a transaction pooler switches at
/// once; a failure that could be one starts a probe in the background. Cheap when the mode was
/// configured or already settled (nothing to do).
pub fn observe(err: &sqlx::Error) {
    let Some(watch) = WATCH.get() else { return };
    if switched() {
        return;
    }
    match evidence(err) {
        Evidence::TransactionPooler => switch(
            PoolMode::Transaction,
            "prepared statements fail as behind one",
        ),
        Evidence::Probe => probe(watch),
        Evidence::Nothing => {}
    }
}

/// Something failed in a way that hides its error (a queue's worker stopped): probe, as for a
/// failure that could be a pooler's.
pub fn suspect() {
    if let Some(watch) = WATCH.get()
        && !switched()
    {
        probe(watch);
    }
}

fn probe(watch: &'static Watch) {
    {
        let mut last = watch.last_probe.lock().expect("last probe");
        if last.is_some_and(|at| at.elapsed() < PROBE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(probe_once(watch));
    }
}

/// One probe (none while another runs). A transaction pooler found switches to its mode; sessions
/// found switch only when start-up had no answer (when it found sessions, they are the mode
/// already). `None`: no answer.
async fn probe_once(watch: &'static Watch) -> Option<PoolMode> {
    if watch.probing.swap(true, Ordering::AcqRel) {
        return None;
    }
    let found = tokio::time::timeout(PROBE_TIMEOUT, crate::db::detect_pool_mode(&watch.url)).await;
    watch.probing.store(false, Ordering::Release);
    let mode = found.ok()?.ok()?;
    if mode.shares_server_connections() {
        switch(
            mode,
            "two client connections were served by one server connection",
        );
    } else if !watch.found_sessions {
        switch(mode, "each client connection kept its own server session");
    }
    Some(mode)
}

/// While the start-up probe's question has no answer, asks again every [`PROBE_EVERY`] until one
/// comes (the process runs in transaction mode meanwhile, correct behind anything).
async fn probe_until_answered(watch: &'static Watch) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if switched() || probe_once(watch).await.is_some() {
            return;
        }
    }
}

/// `to` from now on, for every registered pool: its connection options (statement cache off for
/// `Transaction`, on otherwise; older connections are closed when next acquired), and listening
/// pools closed when `to` shares server connections. The first call wins.
pub fn switch(to: PoolMode, why: &str) {
    if SWITCHED.set((Instant::now(), to)).is_err() {
        return;
    }
    let setting = to.as_str();
    if to.shares_server_connections() {
        tracing::warn!(
            why,
            setting,
            "DATABASE_URL is a transaction pooler (detected at run time): switching to {setting} mode; set DATABASE_POOL_MODE={setting} to say so"
        );
    } else {
        tracing::info!(
            why,
            setting,
            "DATABASE_URL keeps sessions (detected at run time): switching to {setting} mode (named statements; LISTEN after a restart); set DATABASE_POOL_MODE={setting} to say so"
        );
    }
    let Some(watch) = WATCH.get() else { return };
    let cache = if to == PoolMode::Transaction {
        0
    } else {
        STATEMENT_CACHE
    };
    for (pool, listen) in watch.pools.lock().expect("pools").iter() {
        if *listen {
            if to.shares_server_connections() {
                // Notifications through a transaction pooler reach other clients: stop listening.
                LISTENING_STOPPED.store(true, Ordering::Release);
                let pool = pool.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move { pool.close().await });
                }
            }
        } else {
            let options = (*pool.connect_options())
                .clone()
                .statement_cache_capacity(cache);
            pool.set_connect_options(options);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Db(&'static str);
    impl std::fmt::Display for Db {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Db {}
    impl sqlx::error::DatabaseError for Db {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn what_each_failure_says_about_the_pooler() {
        let db = |code| sqlx::Error::Database(Box::new(Db(code)));
        let io = || sqlx::Error::Io(std::io::Error::other("reset"));
        let cases: Vec<(sqlx::Error, Evidence)> = vec![
            (db("26000"), Evidence::TransactionPooler),
            (db("42P05"), Evidence::TransactionPooler),
            (db("08P01"), Evidence::Probe),
            (db("08006"), Evidence::Probe),
            (db("57P01"), Evidence::Probe),
            (
                sqlx::Error::Protocol("unexpected message: NotificationResponse".into()),
                Evidence::Probe,
            ),
            (io(), Evidence::Probe),
            (db("23505"), Evidence::Nothing),
            (db("22021"), Evidence::Nothing),
            (db("42703"), Evidence::Nothing),
            (db("40001"), Evidence::Nothing),
            (sqlx::Error::RowNotFound, Evidence::Nothing),
            (sqlx::Error::PoolTimedOut, Evidence::Nothing),
        ];
        for (err, expected) in cases {
            assert_eq!(evidence(&err), expected, "{err}");
        }
    }

    #[test]
    fn only_connections_older_than_the_switch_predate_it() {
        // Before any switch (this test process never switches), nothing predates it.
        assert!(!predates_switch(Duration::from_secs(3600)));
        assert_eq!(effective(PoolMode::Session), PoolMode::Session);
    }
}
