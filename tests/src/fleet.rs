//! The service as operations run it: `sms-ingress` and `sms-worker` processes (the built
//! binaries), several of each on one database, with their logs kept so a test can check that
//! normal operation logged no error.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    app::{Settings, wait_until, workspace_binary},
    pg,
};

pub struct Service {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
    spawn: Box<dyn Fn(&Path) -> Child + Send + Sync>,
}

impl Service {
    /// An `sms-ingress serve` on `port`; webhooks are signed for `public_url` (one URL in front
    /// of every replica, as behind a load balancer).
    pub async fn ingress(
        name: &str,
        settings: &Settings,
        port: u16,
        public_url: &str,
        log_dir: &Path,
    ) -> Self {
        let settings = settings
            .clone()
            .set("BIND_ADDR", format!("127.0.0.1:{port}"))
            .set("PUBLIC_URL", public_url);
        let s = Self::start(name, log_dir, move |log| {
            let mut cmd = Command::new(workspace_binary("sms-ingress"));
            cmd.arg("serve");
            spawn(cmd, &settings, log)
        });
        let health = format!("http://127.0.0.1:{port}/health");
        wait_until(Duration::from_secs(20), || async {
            reqwest::get(&health).await.is_ok()
        })
        .await
        .unwrap_or_else(|_| panic!("{name} answers /health"));
        s
    }

    /// An `sms-worker --queues <queues>` (`all`: without `--queues`, as by default). Its
    /// `/metrics` listens on `WORKER_METRICS_ADDR` when the settings name one, else on any port.
    pub fn worker(name: &str, settings: &Settings, queues: &str, log_dir: &Path) -> Self {
        let mut settings = settings.clone();
        if !settings.0.contains_key("WORKER_METRICS_ADDR") {
            settings = settings.set("WORKER_METRICS_ADDR", "127.0.0.1:0");
        }
        let queues = queues.to_owned();
        Self::start(name, log_dir, move |log| {
            let mut cmd = Command::new(workspace_binary("sms-worker"));
            if queues != "all" {
                cmd.arg("--queues").arg(&queues);
            }
            spawn(cmd, &settings, log)
        })
    }

    /// An `sms-sim serve --seed-demo` on `port` (Twilio for the settings' account and token,
    /// the Monitor with its demo tenants, the agents), as `scripts/run-local.sh` starts it.
    pub async fn sim(name: &str, settings: &Settings, port: u16, log_dir: &Path) -> Self {
        let settings = settings.clone();
        let s = Self::start(name, log_dir, move |log| {
            let mut cmd = Command::new(workspace_binary("sms-sim"));
            cmd.args([
                "serve",
                "--seed-demo",
                "--bind",
                &format!("127.0.0.1:{port}"),
            ]);
            spawn(cmd, &settings, log)
        });
        let stats = format!("http://127.0.0.1:{port}/_sim/monitor/stats");
        wait_until(Duration::from_secs(20), || async {
            reqwest::get(&stats).await.is_ok()
        })
        .await
        .unwrap_or_else(|_| panic!("{name} answers"));
        s
    }

    fn start(
        name: &str,
        log_dir: &Path,
        spawn: impl Fn(&Path) -> Child + Send + Sync + 'static,
    ) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let spawn = move |log: &Path| {
            let child = spawn(log);
            reap_with_us(child.id());
            child
        };
        let child = spawn(&log);
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
            spawn: Box::new(spawn),
        }
    }

    /// SIGTERM, as an orchestrator stops a replica, and waits for the process to exit, up to
    /// `limit` (then SIGKILL and a panic). Returns its exit code and how long it took.
    pub async fn terminate(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let child = self.child.take().expect("the process is running");
        sigterm(&child);
        wait_exit(child, limit).await
    }

    /// SIGKILL: no shutdown, jobs in flight abandoned.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (after [`kill`](Self::kill)), with the same settings.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some((self.spawn)(&self.log));
    }

    /// Lines logged at ERROR level, every life included (the log is appended to).
    pub fn errors(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(r#""level":"ERROR""#))
            .map(|l| format!("{}: {l}", self.name))
            .collect()
    }

    /// How many lines of every life contain `text`.
    pub fn lines_containing(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(text))
            .count()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Written into a service's log before each of its lives.
const LIFE_MARK: &str = "---- (re)started by the test ----\n";

/// Runs `cmd` with exactly these settings, JSON logs at WARN and above appended to `log`.
fn spawn(mut cmd: Command, settings: &Settings, log: &Path) -> Child {
    cmd.env_clear();
    cmd.env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in &settings.0 {
        cmd.env(k, v);
    }
    cmd.env("LOG_FORMAT", "json").env("RUST_LOG", "warn");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the service log");
    std::io::Write::write_all(&mut file, LIFE_MARK.as_bytes()).expect("write the service log");
    cmd.stdout(file.try_clone().expect("log file handle"))
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the service binary")
}

/// Kills process `pid` once this test process has exited, even when it was killed itself and no
/// `Drop` ran (a detached watcher in its own process group); the watcher ends with `pid`.
fn reap_with_us(pid: u32) {
    let us = std::process::id();
    let script = format!(
        "while kill -0 {us} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         kill -0 {us} 2>/dev/null || kill -9 {pid} 2>/dev/null"
    );
    pg::spawn_detached(&script);
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "SIGTERM delivered to {}", child.id());
}

/// Waits for `child` to exit, up to `limit` (then SIGKILL and a panic); returns its exit code
/// and how long it took.
pub async fn wait_exit(mut child: Child, limit: Duration) -> (Option<i32>, Duration) {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} still running {limit:?} after SIGTERM",
                child.id()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
