//! A real PgBouncer (Debian's `pgbouncer` package) in front of the tests' PostgreSQL server, for
//! the tests that run the service through a transaction pooler as Supabase and many operators do.
//!
//! Started as the `postgres` user when we are root (PgBouncer refuses to run as root), daemonised
//! with a pid file, and stopped on drop, or by a small reaper once the test process has exited.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::pg;

pub struct PgBouncer {
    dir: PathBuf,
    port: u16,
    user: String,
}

/// The PgBouncer binary: `PGBOUNCER_BIN` (another build, e.g. 1.21+ for
/// `max_prepared_statements`), else the installed one, or why there is none.
pub fn binary() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("PGBOUNCER_BIN").filter(|b| !b.is_empty()) {
        return Ok(PathBuf::from(bin));
    }
    pg::find_in_path("pgbouncer")
        .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.is_file()))
        .ok_or_else(|| {
            "pgbouncer is not installed: `apt-get install pgbouncer` (Debian's package; \
             .ci/run installs it)"
                .to_owned()
        })
}

/// Whether the PgBouncers these tests start track prepared statements: 1.21+ with
/// `PGBOUNCER_MAX_PREPARED_STATEMENTS` above 0 (the service then keeps named statements,
/// `transaction-named`).
pub fn tracks_prepared_statements() -> bool {
    let configured = std::env::var("PGBOUNCER_MAX_PREPARED_STATEMENTS")
        .ok()
        .and_then(|n| n.trim().parse::<u32>().ok())
        .is_some_and(|n| n > 0);
    configured && version().is_ok_and(|v| v >= (1, 21))
}

/// The pool mode the service should find behind these tests' PgBouncers.
pub fn expected_mode() -> &'static str {
    if tracks_prepared_statements() {
        "transaction-named"
    } else {
        "transaction"
    }
}

/// `(major, minor)` of the installed PgBouncer.
pub fn version() -> Result<(u32, u32), String> {
    let out = Command::new(binary()?)
        .arg("--version")
        .output()
        .map_err(|e| format!("pgbouncer --version: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "PgBouncer 1.18.0"
    let v = text
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| format!("unexpected pgbouncer --version: {text}"))?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    Ok((parts.next().unwrap_or(0), parts.next().unwrap_or(0)))
}

impl PgBouncer {
    /// Starts a PgBouncer in transaction mode in front of the server of `server_url` (any database URL on
    /// it), with `pool_size` server connections per database: fewer than the service's clients,
    /// so that every client's transactions move between server connections.
    ///
    /// Blocking (it waits for the port): call it from `spawn_blocking` in async code.
    pub fn start(server_url: &str, pool_size: u32) -> Result<Self, String> {
        let bin = binary()?;
        let server = url::Url::parse(server_url).map_err(|e| format!("server URL: {e}"))?;
        let user = match server.username() {
            "" => "postgres".to_owned(),
            u => u.to_owned(),
        };
        let dir = std::env::temp_dir().join(format!(
            "sms-test-pgbouncer-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        spawn_reaper(&dir);
        std::fs::write(dir.join("userlist.txt"), format!("\"{user}\" \"\"\n"))
            .map_err(|e| e.to_string())?;
        if pg::is_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:"]).arg(&dir);
            pg::run(chown, "chown of the PgBouncer folder to postgres")?;
        }
        let mut last_err = String::new();
        for _ in 0..5 {
            let Some(port) = pg::free_port() else {
                continue;
            };
            let ini = config(&server, &user, port, pool_size, &dir);
            std::fs::write(dir.join("pgbouncer.ini"), ini).map_err(|e| e.to_string())?;
            let start = pg::pg_command(&pg::os(&[&bin, &"-d", &dir.join("pgbouncer.ini")]));
            if let Err(e) = pg::run(start, "pgbouncer -d") {
                last_err = e;
                continue;
            }
            let bouncer = Self {
                dir: dir.clone(),
                port,
                user: user.clone(),
            };
            if bouncer.wait_listening(Duration::from_secs(10)) {
                return Ok(bouncer);
            }
            last_err = format!("not listening on {port}: {}", bouncer.log_tail());
            bouncer.stop();
        }
        Err(format!("could not start PgBouncer: {last_err}"))
    }

    /// Stops PgBouncer for now (its port then refuses connections); [`PgBouncer::resume`] starts
    /// it again on the same port. Blocking.
    pub fn pause(&self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while (pid(&self.dir).is_some()
            || std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a paused PgBouncer again, same port and settings. Blocking.
    pub fn resume(&self) -> Result<(), String> {
        let start = pg::pg_command(&pg::os(&[
            &binary()?,
            &"-d",
            &self.dir.join("pgbouncer.ini"),
        ]));
        pg::run(start, "pgbouncer -d")?;
        if self.wait_listening(Duration::from_secs(10)) {
            Ok(())
        } else {
            Err(format!("not listening again: {}", self.log_tail()))
        }
    }

    /// A URL of database `db` through this PgBouncer.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{db}", self.user, self.port)
    }

    /// The last lines of PgBouncer's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Lines of PgBouncer's log that report a problem (`WARNING`, `ERROR`, `FATAL`).
    pub fn problems(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("pgbouncer.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARNING ") || l.contains(" ERROR ") || l.contains(" FATAL "))
            .map(str::to_owned)
            .collect()
    }

    fn wait_listening(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn stop(&self) {
        if let Some(pid) = pid(&self.dir) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// `pgbouncer.ini`: transaction mode in front of `server`, listening on `port`, `pool_size` server
/// connections per database, files in `dir`. No `ignore_startup_parameters`: PgBouncer as
/// installed, which refuses a startup parameter it does not know (sqlx's default
/// `extra_float_digits` among them). `PGBOUNCER_MAX_PREPARED_STATEMENTS` makes it track prepared
/// statements (1.21+); unset, it keeps none, as 1.18 and Supabase's transaction pooler.
fn config(server: &url::Url, user: &str, port: u16, pool_size: u32, dir: &Path) -> String {
    let prepared = std::env::var("PGBOUNCER_MAX_PREPARED_STATEMENTS")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .map(|n| format!("max_prepared_statements = {}\n", n.trim()))
        .unwrap_or_default();
    let password = server
        .password()
        .map(|p| format!(" password={p}"))
        .unwrap_or_default();
    format!(
        "[databases]\n\
         * = host={host} port={server_port} user={user}{password}\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {port}\n\
         unix_socket_dir =\n\
         auth_type = trust\n\
         auth_file = {dir}/userlist.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {pool_size}\n\
         max_client_conn = 2000\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n\
         {prepared}",
        host = server.host_str().unwrap_or("127.0.0.1"),
        server_port = server.port().unwrap_or(5432),
        dir = dir.display(),
    )
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("pgbouncer.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Stops PgBouncer and removes its folder once this test process has exited (detached, like the
/// cluster's reaper).
fn spawn_reaper(dir: &Path) {
    let pid = std::process::id();
    let dir = pg::sh_quote(dir.as_os_str());
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; \
         p=$(cat {dir}/pgbouncer.pid 2>/dev/null) && kill \"$p\"; sleep 1; rm -rf {dir}"
    );
    pg::spawn_detached(&script);
}
