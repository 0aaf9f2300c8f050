//! How `DATABASE_URL` pools connections when `DATABASE_POOL_MODE` does not say, found again at
//! run time. The start-up probe (`db::settle_pool_mode`) may have had no answer (the database or
//! its pooler down) and assumed sessions; then the first database failures of this process make
//! it ask again, and once a transaction pooler answers, every pool switches to transaction mode:
//! new connections without the statement cache, connections made before the switch closed when
//! next acquired, the listening pool closed (workers then poll). Logged once, with the setting
//! that says so.
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

/// At most one probe per this long, however many requests fail at once.
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// A probe without an answer in this long is abandoned (the next failure may start another).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Set when the mode was assumed at start-up: the URL to probe and the pools to switch.
static WATCH: OnceLock<Watch> = OnceLock::new();
/// When transaction mode was found at run time.
static SWITCHED: OnceLock<Instant> = OnceLock::new();

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
            // client's statement of the same name), and other protocol violations.
            "08P01" => Evidence::Probe,
            code if code.starts_with("08") || code.starts_with("57P") => Evidence::Probe,
            _ => Evidence::Nothing,
        },
        // A notification that reached a client that never listened ("unexpected message:
        // NotificationResponse"), a connection closed under us.
        sqlx::Error::Protocol(_) | sqlx::Error::Io(_) => Evidence::Probe,
        _ => Evidence::Nothing,
    }
}

/// The mode assumed at start-up (`found_sessions`: the probe said so; else it had no answer):
/// from now on failures are watched. Called by `settle_pool_mode`.
pub(crate) fn watch(url: &str, found_sessions: bool) {
    let _ = WATCH.set(Watch {
        url: url.to_owned(),
        found_sessions,
        probing: AtomicBool::new(false),
        last_probe: Mutex::new(None),
        pools: Mutex::new(Vec::new()),
    });
}

/// Whether the mode was assumed (so pools must be able to switch).
pub(crate) fn watching() -> bool {
    WATCH.get().is_some()
}

/// Whether a worker may LISTEN on `DATABASE_URL` in session mode: not while its pooling is
/// unknown. A LISTEN through a transaction pooler stays on the server connection after the client
/// leaves (PgBouncer resets server connections only in session mode), and its notifications
/// then reach other clients' statements (`unexpected message: NotificationResponse`) for good.
pub fn may_listen_on_database_url() -> bool {
    !switched() && WATCH.get().is_none_or(|w| w.found_sessions)
}

/// Whether transaction mode was found at run time.
pub fn switched() -> bool {
    SWITCHED.get().is_some()
}

/// `configured`, or transaction mode once found at run time.
pub fn effective(configured: PoolMode) -> PoolMode {
    if switched() {
        PoolMode::Transaction
    } else {
        configured
    }
}

/// A connection of this `age` was opened before the switch (with the statement cache on, or
/// listening): not to be used again.
pub(crate) fn predates_switch(age: Duration) -> bool {
    SWITCHED.get().is_some_and(|at| age > at.elapsed())
}

/// Registers a pool to switch; `listen`: a session pool for LISTEN, closed by the switch.
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
/// configured or already switched (nothing to do).
pub fn observe(err: &sqlx::Error) {
    let Some(watch) = WATCH.get() else { return };
    if switched() {
        return;
    }
    match evidence(err) {
        Evidence::TransactionPooler => switch("prepared statements fail as behind one"),
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
        if watch.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        *last = Some(Instant::now());
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        watch.probing.store(false, Ordering::Release);
        return;
    };
    runtime.spawn(async move {
        let found =
            tokio::time::timeout(PROBE_TIMEOUT, crate::db::detect_pool_mode(&watch.url)).await;
        if let Ok(Ok(PoolMode::Transaction)) = found {
            switch("two client connections were served by one server connection");
        }
        watch.probing.store(false, Ordering::Release);
    });
}

/// Transaction mode from now on, for every registered pool. Idempotent.
pub fn switch(why: &str) {
    if SWITCHED.set(Instant::now()).is_err() {
        return;
    }
    tracing::warn!(
        why,
        "DATABASE_URL is a transaction pooler (detected at run time): switching to transaction mode; set DATABASE_POOL_MODE=transaction to say so"
    );
    let Some(watch) = WATCH.get() else { return };
    for (pool, listen) in watch.pools.lock().expect("pools").iter() {
        if *listen {
            // Notifications through a transaction pooler reach other clients: stop listening.
            let pool = pool.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { pool.close().await });
            }
        } else {
            let options = (*pool.connect_options())
                .clone()
                .statement_cache_capacity(0);
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
