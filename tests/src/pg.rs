//! A real PostgreSQL server for tests.
//!
//! With `DATABASE_URL` set, test databases are created on that server. Otherwise one throwaway
//! cluster is started per test process from the installed PostgreSQL binaries (as the `postgres`
//! user when running as root) and stopped and deleted by a small reaper once the process exits.
//!
//! Every test gets its own database, cloned from a template migrated once per process (once per
//! server and migration set with `DATABASE_URL`), and dropped again when the test's runtime shuts
//! down. With `DATABASE_URL`, a failed test's database is kept for inspection (its name is printed)
//! and removed by a later run after a day.
//!
//! Only URLs live in statics: every `#[tokio::test]` has its own runtime, so pools are per test.

use std::{
    ffi::{OsStr, OsString},
    future::Future,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, postgres::PgPoolOptions};

/// One test's database: its URL (for the service's `DATABASE_URL`), a small pool on it, and its
/// name.
pub struct TestDb {
    pub url: String,
    pub pool: PgPool,
    pub name: String,
}

/// Pool size of [`fresh_db`]; many tests run in parallel on one server.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// Advisory lock key guarding template creation across test processes sharing one server.
const TEMPLATE_LOCK: i64 = 0x736d_735f_746d_706c;

/// `max_connections` of the throwaway cluster.
const CLUSTER_MAX_CONNECTIONS: u32 = 300;

/// Test databases older than this, left behind on a `DATABASE_URL` server, are dropped.
const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// The admin URL, or why there is no server (kept so every test fails fast with the same message).
static SERVER: OnceLock<Result<String, String>> = OnceLock::new();
/// Name of the migrated template database on that server.
static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// Admin URL (database `postgres`) of the server tests run on. The first call may start the
/// throwaway cluster, which blocks for a few seconds.
pub fn server_url() -> String {
    let server = SERVER.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => with_database(url.trim(), "postgres")
            .map_err(|e| format!("DATABASE_URL is not a usable URL: {e}")),
        _ => start_cluster(),
    });
    match server {
        Ok(url) => url.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// A fresh, migrated database for one test. When `DATABASE_URL` is set, databases are created on
/// that server; otherwise a throwaway cluster is started once per test process from the installed
/// PostgreSQL binaries.
pub async fn fresh_db() -> TestDb {
    fresh_db_with(DEFAULT_MAX_CONNECTIONS).await
}

/// [`fresh_db`] with a pool of `max_connections`.
pub async fn fresh_db_with(max_connections: u32) -> TestDb {
    // Starting the cluster runs initdb and pg_ctl: keep that off the test's runtime.
    let server = match tokio::task::spawn_blocking(server_url).await {
        Ok(url) => url,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("starting the test database server: {e}"),
    };
    let template = TEMPLATE
        .get_or_init(|| create_template(&server))
        .await
        .clone();

    // A UUIDv7 carries its creation time, which lets a later run spot leftovers.
    let name = format!("test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = connect(&server).await;
    // Cloning needs the template idle; another process may just be finishing its migration.
    let create = format!(r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#);
    execute(&mut admin, &create, &["55006"]).await;
    let _ = admin.close().await;

    let url = with_database(&server, &name).expect("server URL is a URL");
    let pool = retry(&format!("connect to test database {name}"), &[], || {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
    })
    .await;

    // The database lives as long as the test's runtime: this task is dropped when it shuts down.
    let guard = DropDatabase {
        server,
        name: name.clone(),
    };
    tokio::spawn(async move {
        let _guard = guard;
        std::future::pending::<()>().await
    });

    TestDb { url, pool, name }
}

/// Drops a test database when the test's runtime shuts down (kept when the test failed and the
/// server is not our throwaway cluster).
struct DropDatabase {
    server: String,
    name: String,
}

impl Drop for DropDatabase {
    fn drop(&mut self) {
        if std::thread::panicking() && using_external_server() {
            let url = with_database(&self.server, &self.name).unwrap_or_default();
            eprintln!(
                "test failed: keeping its database {} for inspection: {}",
                self.name,
                redacted(&url)
            );
            return;
        }
        let (server, name) = (self.server.clone(), self.name.clone());
        let (done, wait) = std::sync::mpsc::channel();
        // We are inside a runtime's shutdown: drop the database from a thread of its own, and
        // wait a little so that the test binary does not exit before it is gone.
        let spawned = std::thread::Builder::new()
            .name(format!("drop {name}"))
            .spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(drop_database(&server, &name, true));
                }
                let _ = done.send(());
            });
        if spawned.is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(10));
        }
    }
}

fn using_external_server() -> bool {
    std::env::var("DATABASE_URL").is_ok_and(|u| !u.trim().is_empty())
}

/// Best effort: `DROP DATABASE`, with `FORCE` (PostgreSQL 13+) to end the test's leftover
/// connections.
async fn drop_database(server: &str, name: &str, force: bool) {
    let Ok(mut admin) = PgConnection::connect(server).await else {
        return;
    };
    let plain = format!(r#"DROP DATABASE IF EXISTS "{name}""#);
    let sql = if force {
        format!("{plain} WITH (FORCE)")
    } else {
        plain.clone()
    };
    if let Err(e) = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await
        && force
        && sql_state(&e).as_deref() == Some("42601")
    {
        // Before PostgreSQL 13 there is no FORCE.
        let _ = sqlx::query(AssertSqlSafe(plain)).execute(&mut admin).await;
    }
    let _ = admin.close().await;
}

/// Creates (unless it exists) the migrated template. Serialised within the process by the
/// `OnceCell` and across processes by an advisory lock; named after the migrations so that a
/// server shared by several checkouts never hands out a stale schema, and renamed into place only
/// once complete.
async fn create_template(server: &str) -> String {
    let name = format!("sms_template_{}", migrations_hash());
    let mut admin = connect(server).await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await
        .expect("take the template advisory lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("look up the template database");
    if !exists {
        let building = format!("{name}_build");
        for sql in [
            format!(r#"DROP DATABASE IF EXISTS "{building}""#),
            format!(r#"CREATE DATABASE "{building}""#),
        ] {
            execute(&mut admin, &sql, &[]).await;
        }
        let url = with_database(server, &building).expect("server URL is a URL");
        let pool = retry("connect to the template database", &[], || {
            PgPoolOptions::new().max_connections(2).connect(&url)
        })
        .await;
        let migrated = shared::db::migrate(&pool).await;
        // Nobody may stay connected to a template, or cloning it fails.
        pool.close().await;
        if let Err(e) = migrated {
            panic!("migrations failed on the test template database: {e:#}");
        }
        // No connections also keeps autovacuum away, which would block cloning.
        for sql in [
            format!(r#"ALTER DATABASE "{building}" WITH ALLOW_CONNECTIONS false"#),
            format!(r#"ALTER DATABASE "{building}" RENAME TO "{name}""#),
        ] {
            execute(&mut admin, &sql, &["55006"]).await;
        }
    }
    if using_external_server() {
        drop_stale_test_databases(&mut admin, server).await;
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(TEMPLATE_LOCK)
        .execute(&mut admin)
        .await
        .expect("release the template advisory lock");
    let _ = admin.close().await;
    name
}

/// Drops `test_<uuidv7>` databases created more than [`STALE_AFTER`] ago (kept by failed tests or
/// left by killed runs) on a `DATABASE_URL` server.
async fn drop_stale_test_databases(admin: &mut PgConnection, server: &str) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT datname FROM pg_database WHERE datname LIKE 'test\\_%' ORDER BY datname",
    )
    .fetch_all(&mut *admin)
    .await
    else {
        return;
    };
    let cutoff = SystemTime::now()
        .checked_sub(STALE_AFTER)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    for name in names {
        let Some(hex) = name.strip_prefix("test_").filter(|h| h.len() == 32) else {
            continue;
        };
        let Ok(id) = uuid::Uuid::try_parse(hex) else {
            continue;
        };
        if id.get_version_num() != 7 {
            continue;
        }
        if id.get_timestamp().is_some_and(|t| t.to_unix().0 < cutoff) {
            drop_database(server, &name, false).await;
        }
    }
}

/// Hash of everything that decides the template's schema: our migrations, the code that applies
/// them, and the apalis-postgres version (its tables are created by `migrate` too).
fn migrations_hash() -> String {
    use sha2::{Digest, Sha256};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("migrations"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files.push(root.join("shared/src/db.rs"));
    let mut h = Sha256::new();
    for f in &files {
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(std::fs::read(f).unwrap_or_default());
    }
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == r#"name = "apalis-postgres""# {
            h.update(lines.next().unwrap_or_default());
        }
    }
    hex::encode(&h.finalize()[..6])
}

/// `url` with its database (path) replaced by `db`.
fn with_database(url: &str, db: &str) -> Result<String, url::ParseError> {
    let mut u = url::Url::parse(url)?;
    u.set_path(&format!("/{db}"));
    Ok(u.to_string())
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

fn sql_state(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// Runs `op` until it succeeds, retrying for up to 30 s on the SQLSTATEs in `transient` and on
/// "too many connections" / "starting up"; panics with `what` otherwise.
async fn retry<T, F, Fut>(what: &str, transient: &[&str], mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if retryable(&e, transient) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// Errors worth waiting out: the SQLSTATEs in `transient`, too many connections, starting up.
fn retryable(e: &sqlx::Error, transient: &[&str]) -> bool {
    sql_state(e)
        .as_deref()
        .is_some_and(|s| transient.contains(&s) || s == "53300" || s == "57P03")
}

/// Runs one statement, retrying (see [`retry`]) on the SQLSTATEs in `transient`.
async fn execute(conn: &mut PgConnection, sql: &str, transient: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await {
            Ok(_) => return,
            Err(e) if retryable(&e, transient) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

async fn connect(server: &str) -> PgConnection {
    let source = if using_external_server() {
        " (from DATABASE_URL)"
    } else {
        ""
    };
    retry(
        &format!(
            "connect to the test PostgreSQL server {}{source}",
            redacted(server)
        ),
        &[],
        || PgConnection::connect(server),
    )
    .await
}

// ---- the throwaway cluster ----

/// Directory holding `initdb` and `pg_ctl`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`, else `PATH`.
fn bin_dir() -> Result<PathBuf, String> {
    let usable = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|(_, d)| usable(d));
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir);
    }
    if let Some(dir) = find_in_path("initdb").and_then(|p| p.parent().map(Path::to_path_buf))
        && usable(&dir)
    {
        return Ok(dir);
    }
    Err(
        "the tests need a PostgreSQL server, but no PostgreSQL server binaries (initdb, pg_ctl) \
         were found: install them (Debian/Ubuntu: `apt-get install postgresql`) or set \
         DATABASE_URL to a server where the tests may create databases"
            .to_owned(),
    )
}

pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Whether the effective user is root (`initdb` and `pg_ctl` refuse to run as root).
pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        let from_proc = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Uid:"))?;
                // Uid: real effective saved filesystem
                line.split_whitespace().nth(2).map(|u| u == "0")
            });
        from_proc.unwrap_or_else(|| {
            Command::new("id")
                .arg("-u")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        })
    })
}

/// Quotes `s` for `sh`.
pub(crate) fn sh_quote(s: &OsStr) -> String {
    format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"))
}

fn sh_join(args: &[OsString]) -> String {
    args.iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A command running `args` (program first), as the `postgres` user when we are root.
pub(crate) fn pg_command(args: &[OsString]) -> Command {
    if !is_root() {
        let mut c = Command::new(&args[0]);
        c.args(&args[1..]);
        return c;
    }
    if let Some(runuser) = find_in_path("runuser") {
        let mut c = Command::new(runuser);
        c.args(["-u", "postgres", "--"]).args(args);
        c
    } else {
        let mut c = Command::new("su");
        c.args(["postgres", "-s", "/bin/sh", "-c"])
            .arg(sh_join(args));
        c
    }
}

/// The same as a shell command line (for the reaper).
pub(crate) fn pg_shell_command(args: &[OsString]) -> String {
    if !is_root() {
        sh_join(args)
    } else if let Some(runuser) = find_in_path("runuser") {
        format!(
            "{} -u postgres -- {}",
            sh_quote(runuser.as_os_str()),
            sh_join(args)
        )
    } else {
        format!(
            "su postgres -s /bin/sh -c {}",
            sh_quote(OsStr::new(&sh_join(args)))
        )
    }
}

pub(crate) fn os(parts: &[&dyn AsRef<OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_owned()).collect()
}

/// A port nothing listens on right now (free for a moment: bind it soon).
pub fn free_port() -> Option<u16> {
    Some(
        TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port(),
    )
}

pub(crate) fn run(mut cmd: Command, what: &str) -> Result<(), String> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!("{what}: cannot run it: {e}")),
    }
}

/// Starts the per-process cluster and returns its admin URL.
fn start_cluster() -> Result<String, String> {
    let bin = bin_dir()?;
    if is_root()
        && !Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        return Err(
            "running as root, so the test PostgreSQL cluster must run as the `postgres` \
                    user, which does not exist: create it (`useradd --system --user-group \
                    postgres`), install PostgreSQL (`apt-get install postgresql`), or set \
                    DATABASE_URL"
                .to_owned(),
        );
    }
    let dir = std::env::temp_dir().join(format!(
        "sms-test-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let data = dir.join("data");
    // From here on the folder (and any server in it) goes away with this process.
    spawn_reaper(&bin, &dir, &data);
    let result = init_and_start(&bin, &dir, &data);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn init_and_start(bin: &Path, dir: &Path, data: &Path) -> Result<String, String> {
    initdb(bin, dir, data)?;
    let mut last_err = String::new();
    for _ in 0..5 {
        let Some(port) = free_port() else { continue };
        match pg_ctl_start(bin, dir, data, port, CLUSTER_MAX_CONNECTIONS) {
            Ok(()) => return Ok(format!("postgres://postgres@127.0.0.1:{port}/postgres")),
            Err(e) => last_err = e,
        }
    }
    Err(format!(
        "could not start the test PostgreSQL cluster: {last_err}\nserver log:\n{}",
        log_tail(dir)
    ))
}

fn initdb(bin: &Path, dir: &Path, data: &Path) -> Result<(), String> {
    if is_root() {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:"]).arg(dir);
        run(chown, "chown of the test cluster folder to postgres")?;
    }
    let mut initdb = pg_command(&os(&[
        &bin.join("initdb"),
        &"-D",
        &data,
        &"-A",
        &"trust",
        &"-U",
        &"postgres",
        &"--no-sync",
        &"-E",
        &"UTF8",
        &"--locale=C",
    ]));
    initdb.current_dir(dir);
    run(initdb, "initdb").map_err(|e| {
        format!(
            "{e}\n(the cluster folder {} must be writable by the user running initdb)",
            dir.display()
        )
    })
}

/// `pg_ctl start` on `port`, waiting until the server accepts connections.
fn pg_ctl_start(
    bin: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    max_connections: u32,
) -> Result<(), String> {
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections={max_connections} \
         -c shared_buffers=128MB",
        dir.display()
    );
    let mut start = pg_command(&os(&[
        &bin.join("pg_ctl"),
        &"-D",
        &data,
        &"-o",
        &opts,
        &"-l",
        &dir.join("server.log"),
        &"-w",
        &"start",
    ]));
    start.current_dir(dir);
    run(start, "pg_ctl start")
}

/// The last lines of a cluster's server log, for error messages.
fn log_tail(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log"))
        .map(|l| {
            let lines: Vec<&str> = l.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        })
        .unwrap_or_default()
}

// ---- a cluster of one test's own ----

/// A PostgreSQL cluster owned by one test, which may stop and start it (fault tests: a database
/// restart must not disturb the other tests sharing the per-process cluster). Always local, from
/// the installed binaries, even when `DATABASE_URL` is set. Stopped and deleted on drop (and by
/// the reaper if the test process dies first).
pub struct OwnCluster {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
}

/// `max_connections` of an [`OwnCluster`].
const OWN_CLUSTER_MAX_CONNECTIONS: u32 = 100;

impl OwnCluster {
    /// initdb and start on a free port (blocking; call it from `spawn_blocking` in async code).
    pub fn start_new() -> Result<Self, String> {
        let bin = bin_dir()?;
        let dir = std::env::temp_dir().join(format!(
            "sms-test-own-pg-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let data = dir.join("data");
        spawn_reaper(&bin, &dir, &data);
        initdb(&bin, &dir, &data)?;
        let mut last_err = String::new();
        for _ in 0..5 {
            let Some(port) = free_port() else { continue };
            match pg_ctl_start(&bin, &dir, &data, port, OWN_CLUSTER_MAX_CONNECTIONS) {
                Ok(()) => {
                    return Ok(Self {
                        bin,
                        dir,
                        data,
                        port,
                    });
                }
                Err(e) => last_err = e,
            }
        }
        Err(format!(
            "could not start a test's own PostgreSQL cluster: {last_err}\nserver log:\n{}",
            log_tail(&dir)
        ))
    }

    /// URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates and migrates database `db`; returns a [`TestDb`] on it with a pool of
    /// `max_connections`.
    pub async fn create_db(&self, db: &str, max_connections: u32) -> TestDb {
        let mut admin = connect(&self.url("postgres")).await;
        execute(&mut admin, &format!(r#"CREATE DATABASE "{db}""#), &[]).await;
        let _ = admin.close().await;
        let url = self.url(db);
        let pool = retry(&format!("connect to {db}"), &[], || {
            PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&url)
        })
        .await;
        shared::db::migrate(&pool)
            .await
            .unwrap_or_else(|e| panic!("migrations failed on {db}: {e:#}"));
        TestDb {
            url,
            pool,
            name: db.to_owned(),
        }
    }

    /// `pg_ctl stop -m fast`: clients are disconnected, the server is down when this returns.
    pub fn stop(&self) -> Result<(), String> {
        self.pg_ctl_stop("fast")
    }

    /// Starts the stopped server again on the same port and data.
    pub fn start(&self) -> Result<(), String> {
        pg_ctl_start(
            &self.bin,
            &self.dir,
            &self.data,
            self.port,
            OWN_CLUSTER_MAX_CONNECTIONS,
        )
        .map_err(|e| format!("{e}\nserver log:\n{}", log_tail(&self.dir)))
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        let mut stop = pg_command(&os(&[
            &self.bin.join("pg_ctl"),
            &"-D",
            &self.data,
            &"-m",
            &mode,
            &"-w",
            &"stop",
        ]));
        stop.current_dir(&self.dir);
        run(stop, "pg_ctl stop")
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops the cluster and removes its folder once this test process has exited. Detached: its own
/// process group (a Ctrl-C of the tests does not kill it) and no inherited stdio (it must not hold
/// the test's output pipe open).
fn spawn_reaper(bin: &Path, dir: &Path, data: &Path) {
    let pid = std::process::id();
    let stop = pg_shell_command(&os(&[
        &bin.join("pg_ctl"),
        &"-D",
        &data,
        &"-m",
        &"immediate",
        &"-w",
        &"stop",
    ]));
    let pidfile = sh_quote(data.join("postmaster.pid").as_os_str());
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         {stop} || {{ p=$(head -n 1 {pidfile} 2>/dev/null) && kill -9 \"$p\"; }}; \
         rm -rf {}",
        sh_quote(dir.as_os_str())
    );
    spawn_detached(&script);
}

/// Runs a shell script detached from this test process: its own process group (a Ctrl-C of the
/// tests does not kill it) and no inherited stdio (it must not hold the test's output pipe open),
/// so it outlives the process it watches.
pub fn spawn_detached(script: &str) {
    let _ = Command::new("sh")
        .args(["-c", script])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}
