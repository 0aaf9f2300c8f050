//! A real PostgreSQL server for tests. With DATABASE_URL set, tests use that server; otherwise one
//! throwaway cluster is started per test process from the installed PostgreSQL binaries and
//! removed when the process exits. Every test gets a fresh database cloned from a migrated
//! template.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

// Database names below are generated here (uuids, hashes), never taken from input.
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, postgres::PgPoolOptions};

pub struct TestDb {
    pub url: String,
    pub name: String,
    pub pool: PgPool,
}

static SERVER: OnceLock<String> = OnceLock::new();
static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// Admin URL (database `postgres`) of the server tests run on.
pub fn server_url() -> String {
    SERVER
        .get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => with_database(&url, "postgres"),
            _ => start_cluster(),
        })
        .clone()
}

/// A fresh, migrated database for one test.
pub async fn fresh_db() -> TestDb {
    fresh_db_with(10).await
}

pub async fn fresh_db_with(max_connections: u32) -> TestDb {
    let server = server_url();
    let template = TEMPLATE
        .get_or_init(|| async { create_template(&server).await })
        .await
        .clone();
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&server).await.expect("connect to test server");
    // Cloning needs the template idle; another process's migration may briefly hold it.
    let mut tries = 0;
    loop {
        match sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {template}")))
            .execute(&mut admin)
            .await
        {
            Ok(_) => break,
            Err(e) if tries < 50 && e.to_string().contains("being accessed by other users") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create test database: {e}"),
        }
    }
    let url = with_database(&server, &name);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(&url)
        .await
        .expect("connect to test database");
    TestDb { url, name, pool }
}

/// Migrates a template database once per server (guarded across processes by an advisory lock)
/// and per migration set (its name carries a hash of the migration files).
async fn create_template(server: &str) -> String {
    let name = format!("sms_template_{}", migrations_hash());
    let mut admin = PgConnection::connect(server).await.expect("connect to test server");
    sqlx::query("SELECT pg_advisory_lock(727274)")
        .execute(&mut admin)
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    if !exists {
        let building = format!("{name}_building");
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {building}")))
            .execute(&mut admin)
            .await
            .unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {building}")))
            .execute(&mut admin)
            .await
            .unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(&with_database(server, &building))
            .await
            .unwrap();
        shared::db::migrate(&pool).await.expect("migrations apply");
        pool.close().await;
        // Renamed only once complete, so no process clones a half-migrated template.
        sqlx::query(AssertSqlSafe(format!("ALTER DATABASE {building} RENAME TO {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    sqlx::query("SELECT pg_advisory_unlock(727274)")
        .execute(&mut admin)
        .await
        .unwrap();
    name
}

fn migrations_hash() -> String {
    use sha2::{Digest, Sha256};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("migrations folder")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        h.update(std::fs::read(&f).unwrap());
    }
    hex::encode(&h.finalize()[..6])
}

fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

fn bin_dir() -> PathBuf {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.retain(|p| p.join("initdb").exists());
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = versions.pop() {
        return dir;
    }
    panic!(
        "no PostgreSQL server binaries found (initdb): install them (Debian: apt-get install postgresql) or set DATABASE_URL to a server the tests may create databases on"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root (initdb refuses root).
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_cluster() -> String {
    let bin = bin_dir();
    let dir = std::env::temp_dir().join(format!(
        "sms-test-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "chown of the test cluster folder to postgres failed (does the postgres user exist?)");
    }
    let data = dir.join("data");
    let out = pg_command(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut last_err = String::new();
    for _ in 0..5 {
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=500 -c shared_buffers=128MB",
            dir.display()
        );
        let out = pg_command(&bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(dir.join("server.log"))
            .args(["-w", "start"])
            .output()
            .expect("run pg_ctl");
        if out.status.success() {
            spawn_reaper(&bin, &dir, &data);
            return format!("postgres://postgres@127.0.0.1:{port}/postgres");
        }
        last_err = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    panic!("could not start the test PostgreSQL cluster: {last_err}");
}

/// Stops the cluster and removes its folder once this test process has exited.
fn spawn_reaper(bin: &Path, dir: &Path, data: &Path) {
    let pid = std::process::id();
    let pg_ctl = bin.join("pg_ctl");
    let stop = if is_root() {
        format!(
            "runuser -u postgres -- {} -D {} -m immediate stop",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!("{} -D {} -m immediate stop", pg_ctl.display(), data.display())
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop} >/dev/null 2>&1; rm -rf {}",
        dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
