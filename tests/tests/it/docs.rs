//! The docs cannot drift from the code: every link resolves, every setting the code reads is in
//! the settings table and `.env.example` (and nothing else is), every endpoint of the OpenAPI
//! document and every metric is documented (and nothing else is), and every curl example in the
//! README and `docs/` runs against the real binaries.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use clap::CommandFactory;
use harness::{
    app::{Settings, wait_until, workspace_binary},
    fleet::Service,
    pg,
};
use shared::config;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// The README and every page of `docs/`, as (path relative to the root, text).
fn pages() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    names.extend(docs);
    names
        .into_iter()
        .map(|n| {
            let text = std::fs::read_to_string(Path::new(ROOT).join(&n)).unwrap();
            (n, text)
        })
        .collect()
}

fn page(name: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(name)).unwrap()
}

/// Lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// The fenced blocks of language `lang`.
fn blocks(text: &str, lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let t = line.trim_start();
        match &mut current {
            None if t.starts_with("```") && t[3..].trim() == lang => current = Some(String::new()),
            Some(b) if t.starts_with("```") => {
                out.push(std::mem::take(b));
                current = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    prose(text)
        .into_iter()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// Targets of Markdown links `[text](target)` in the prose.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose(text) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap_or(after.len());
            out.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_link_in_the_readme_and_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for (name, text) in pages() {
        let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
        for target in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            checked += 1;
            let (file, frag) = target.split_once('#').unwrap_or((&target, ""));
            let path: PathBuf = if file.is_empty() {
                PathBuf::from(&name)
            } else {
                dir.join(file)
            };
            let full = Path::new(ROOT).join(&path);
            if !full.exists() {
                broken.push(format!("{name}: {target} (no file {})", path.display()));
                continue;
            }
            if !frag.is_empty() && !anchors(&std::fs::read_to_string(&full).unwrap()).contains(frag)
            {
                broken.push(format!("{name}: {target} (no heading #{frag})"));
            }
        }
    }
    assert!(checked > 20, "links found: {checked}");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The README stays a front page: the picture, the two commands, the tour and the map.
#[test]
fn the_readme_is_short_and_maps_every_page_of_the_docs() {
    let readme = page("README.md");
    let lines = readme.lines().count();
    assert!(lines <= 150, "README.md has {lines} lines");
    for (name, _) in pages().into_iter().skip(1) {
        assert!(
            readme.contains(&format!("({name})")),
            "README.md does not link {name}"
        );
    }
}

/// A `Source` that answers from a map and records every key it was asked for.
struct Recording {
    values: HashMap<String, String>,
    asked: Mutex<BTreeSet<String>>,
}

impl config::Source for Recording {
    fn get(&self, key: &str) -> Option<String> {
        self.asked.lock().unwrap().insert(key.to_owned());
        self.values.get(key).cloned()
    }
}

/// Every environment variable the binaries read: through `config::Source` when loading every
/// setting of the ingress, of a worker running every queue and of tracing, plus the variables
/// clap reads for command-line options. Settings of earlier versions that a worker only warns
/// about are left out.
fn settings_the_code_reads() -> BTreeSet<String> {
    let values: HashMap<String, String> = [
        ("DATABASE_URL", "postgres://u@localhost:5432/db"),
        ("PUBLIC_URL", "https://sms.example.com"),
        ("TWILIO_AUTH_TOKEN", "token"),
        ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000"),
        ("TWILIO_PHONE_NUMBER", "+15550001000"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let rec = Recording {
        values,
        asked: Mutex::new(BTreeSet::new()),
    };
    config::Ingress::load(&rec).expect("ingress settings load");
    worker::cli::resolve(&worker::cli::Cli { queues: None }, &rec).expect("worker settings load");
    shared::telemetry::OtlpSettings::load(&rec, "sms-test").expect("tracing settings load");
    let mut read = rec.asked.into_inner().unwrap();
    fn envs(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            envs(sub, out);
        }
    }
    envs(&ingress::cli::Cli::command(), &mut read);
    envs(&worker::cli::Cli::command(), &mut read);
    for retired in config::RETIRED_WORKER_SETTINGS {
        read.remove(*retired);
    }
    read
}

/// Read by libraries straight from the environment rather than through `config::Source`:
/// tracing-subscriber's filter and the OpenTelemetry SDK.
const READ_BY_LIBRARIES: &[&str] = &[
    "RUST_LOG",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_RESOURCE_ATTRIBUTES",
];

/// The backticked names in the first column of the table under `heading` in `text`.
fn first_column(text: &str, heading: &str, name_ok: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let lines = prose(text);
    let start = lines
        .iter()
        .position(|l| l.starts_with('#') && l.contains(heading))
        .unwrap_or_else(|| panic!("no heading {heading}"));
    let mut out = BTreeSet::new();
    for line in &lines[start + 1..] {
        if line.starts_with('#') {
            break;
        }
        let Some(cell) = line.strip_prefix('|').and_then(|r| r.split('|').next()) else {
            continue;
        };
        for (i, part) in cell.split('`').enumerate() {
            if i % 2 == 1 && name_ok(part) {
                out.insert(part.to_owned());
            }
        }
    }
    out
}

fn is_setting(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        && s.starts_with(|c: char| c.is_ascii_uppercase())
}

fn diff(a: &BTreeSet<String>, b: &BTreeSet<String>) -> Vec<String> {
    a.difference(b).cloned().collect()
}

#[test]
fn every_setting_the_code_reads_is_in_the_table_and_env_example_and_nothing_else() {
    let code = settings_the_code_reads();
    assert!(code.len() > 50, "settings read: {code:?}");
    let mut expected = code.clone();
    expected.extend(READ_BY_LIBRARIES.iter().map(|s| s.to_string()));

    let table = first_column(&page("docs/configuration.md"), "Settings", is_setting);
    assert!(
        table == expected,
        "docs/configuration.md's settings table and the code disagree.\n\
         read by the code, not in the table: {:?}\n\
         in the table, read by nothing: {:?}",
        diff(&expected, &table),
        diff(&table, &expected),
    );

    let example: BTreeSet<String> = page(".env.example")
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches('#').trim();
            let (name, _) = l.split_once('=')?;
            is_setting(name).then(|| name.to_owned())
        })
        .collect();
    assert!(
        example == expected,
        ".env.example and the code disagree.\n\
         read by the code, not in .env.example: {:?}\n\
         in .env.example, read by nothing: {:?}",
        diff(&expected, &example),
        diff(&example, &expected),
    );
}

/// Every metric the code registers (its name in a metrics module) is in the metrics table of
/// docs/operations.md, and the table names nothing else.
#[test]
fn every_metric_is_in_the_table_and_nothing_else() {
    let mut code = BTreeSet::new();
    for file in [
        "ingress/src/metrics.rs",
        "worker/src/metrics.rs",
        "shared/src/metrics.rs",
    ] {
        let text = page(file);
        for (i, part) in text.split('"').enumerate() {
            if i % 2 == 1 && part.starts_with("sms_") && !part.contains(' ') {
                code.insert(part.to_owned());
            }
        }
        for line in text.lines() {
            if let Some(rest) = line.trim().strip_prefix("# TYPE ") {
                code.insert(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    }
    assert!(code.len() >= 15, "metrics found: {code:?}");
    let table = first_column(&page("docs/operations.md"), "Metrics", |s| {
        s.starts_with("sms_")
    });
    assert!(
        table == code,
        "docs/operations.md's metrics table and the code disagree.\n\
         registered, not in the table: {:?}\n\
         in the table, registered nowhere: {:?}",
        diff(&code, &table),
        diff(&table, &code),
    );
}

/// (method, path) of every request the docs show: `METHOD /path` in backticks, and every curl
/// command to the ingress (`-X`, else POST with a body, else GET).
fn documented_requests(text: &str) -> BTreeSet<(String, String)> {
    const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
    let mut out = BTreeSet::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1
            && let Some((m, p)) = part.split_once(' ')
            && METHODS.contains(&m)
            && p.starts_with('/')
        {
            out.insert((m.to_owned(), p.split('?').next().unwrap().to_owned()));
        }
    }
    for block in blocks(text, "sh") {
        let joined = block.replace("\\\n", " ");
        for line in joined.lines() {
            for cmd in line.split("curl ").skip(1) {
                let cmd = cmd.split(" | ").next().unwrap_or("");
                let cmd = cmd.split(" #").next().unwrap_or("");
                let Some(at) = cmd.find("http://127.0.0.1:8080") else {
                    continue;
                };
                let url = cmd[at + "http://127.0.0.1:8080".len()..]
                    .split(['"', ' ', '\'', '?'])
                    .next()
                    .unwrap();
                let method = if let Some(x) = cmd.split("-X ").nth(1) {
                    x.split_whitespace().next().unwrap().to_owned()
                } else if cmd.contains(" -d ") || cmd.contains("--data") {
                    "POST".to_owned()
                } else {
                    "GET".to_owned()
                };
                out.insert((method, url.to_owned()));
            }
        }
    }
    out
}

/// Whether a documented path (`/routes/$ROUTE_ID`, `/tenants/{id}/phones`) is an instance of an
/// OpenAPI path template.
fn matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
}

#[test]
fn every_endpoint_of_the_openapi_document_is_documented_and_nothing_else() {
    let doc = serde_json::to_value(ingress::openapi::document()).unwrap();
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    assert!(operations.len() >= 15, "operations: {operations:?}");
    let api = page("docs/api.md");
    let shown = documented_requests(&api);
    let missing: Vec<_> = operations
        .iter()
        .filter(|(m, t)| !shown.iter().any(|(dm, dp)| dm == m && matches(t, dp)))
        .collect();
    assert!(
        missing.is_empty(),
        "in the OpenAPI document, not in docs/api.md: {missing:?}"
    );
    // Pages for people and the operations endpoints are outside the API's document.
    let outside = [
        "/console",
        "/console/login",
        "/docs",
        "/openapi.json",
        "/metrics",
    ];
    let mut everywhere = BTreeSet::new();
    for (_, text) in pages() {
        everywhere.extend(documented_requests(&text));
    }
    let unknown: Vec<_> = everywhere
        .iter()
        .filter(|(m, p)| {
            !outside.contains(&p.as_str())
                && !operations.iter().any(|(om, t)| om == m && matches(t, p))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "documented, but no such operation in the OpenAPI document: {unknown:?}"
    );
}

/// Every sh block with a curl command in the README and `docs/` runs, as written, against the
/// real binaries started as `scripts/run-local.sh` starts them (the simulator playing Twilio,
/// the Monitor with its demo tenants and the agents). Addresses are the local run's, moved to
/// free ports; `$KEY`, `$ADMIN_KEY`, `$READ_KEY`, `$KEY_ID` and `$MESSAGE_ID` are what the
/// local run's reader has (a key, another key's id, a sent message). A curl that answers 4xx
/// or 5xx fails the block.
#[tokio::test]
async fn every_curl_example_in_the_docs_runs_against_the_real_service() {
    let examples: Vec<(String, String)> = pages()
        .into_iter()
        .flat_map(|(name, text)| {
            blocks(&text, "sh")
                .into_iter()
                .filter(|b| b.contains("curl "))
                .map(move |b| (name.clone(), b))
        })
        .collect();
    assert!(examples.len() >= 15, "examples: {}", examples.len());

    let db = pg::fresh_db().await;
    let logs = tempdir("sms-docs");
    let [ingress_port, ops_port, worker_port, sim_port] =
        [(); 4].map(|_| pg::free_port().expect("a free port"));
    let ingress_base = format!("http://127.0.0.1:{ingress_port}");
    let sim_base = format!("127.0.0.1:{sim_port}");
    let settings = Settings::new(&db)
        .set("TWILIO_AUTH_TOKEN", "local-dev-token")
        .set("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000000000")
        .set("TWILIO_PHONE_NUMBER", "+15550001000")
        .set("TWILIO_API_BASE", format!("http://{sim_base}"))
        .set("MONITOR_API_URL", format!("http://{sim_base}"))
        .set("METRICS_ADDR", format!("127.0.0.1:{ops_port}"))
        .set("WORKER_METRICS_ADDR", format!("127.0.0.1:{worker_port}"))
        .set("PUBLIC_URL", &ingress_base)
        .set("SEND_RATE_PER_SENDER", "5");
    let _sim = Service::sim("sim", &settings, sim_port, &logs).await;
    let migrate = std::process::Command::new(workspace_binary("sms-ingress"))
        .arg("migrate")
        .env("DATABASE_URL", &db.url)
        .status()
        .unwrap();
    assert!(migrate.success());
    let _ingress = Service::ingress("ingress", &settings, ingress_port, &ingress_base, &logs).await;
    let _worker = Service::worker("worker", &settings, "all", &logs);

    let cli = |args: &[&str]| -> String {
        let out = std::process::Command::new(workspace_binary("sms-ingress"))
            .args(args)
            .envs(&settings.0)
            .env("AGENT_SIGNING_SECRET", "local-agent-secret")
            .output()
            .unwrap();
        assert!(out.status.success(), "sms-ingress {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    // What the reader of a local run has: its key, a default route to the echo agent, a
    // conversation with a demo tenant (the tour's first step) and one from an unknown number
    // in the quarantine.
    let key = cli(&[
        "api-key",
        "create",
        "--name",
        "local-dev",
        "--scope",
        "read",
        "--scope",
        "send",
        "--scope",
        "admin",
    ]);
    let read_key = cli(&[
        "api-key",
        "create",
        "--name",
        "prometheus",
        "--scope",
        "read",
    ]);
    cli(&[
        "api-key",
        "create",
        "--name",
        "to-revoke",
        "--scope",
        "send",
    ]);
    let sim_agent = format!("http://{sim_base}/agent/echo");
    cli(&["route", "add", "--default", "--url", &sim_agent]);
    let send_one = |from: &str| {
        let out = std::process::Command::new(workspace_binary("sms-sim"))
            .args([
                "send-one",
                "--url",
                &format!("{ingress_base}/webhook/twilio/sms"),
            ])
            .args([
                "--auth-token",
                "local-dev-token",
                "--from",
                from,
                "--body",
                "Sí, gracias",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "sms-sim send-one: {out:?}");
    };
    send_one("+14155550101");
    let http = reqwest::Client::new();
    let routed = wait_until(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND route_status = 'routed'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap_or(0);
        n >= 1
    })
    .await;
    assert!(routed.is_ok(), "the tour's message was never routed");
    // A number no tenant has: no tenant, so no route takes it, and it waits in the quarantine.
    send_one("+14155550177");
    let unroutable = wait_until(Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sms_unroutable")
            .fetch_one(&db.pool)
            .await
            .unwrap_or(0);
        n >= 1
    })
    .await;
    assert!(unroutable.is_ok(), "nothing reached the quarantine");
    let key_id: String =
        sqlx::query_scalar("SELECT id::text FROM api_keys WHERE name = 'to-revoke'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let sent: serde_json::Value = http
        .post(format!("{ingress_base}/sms/send"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"to": "+14155550102", "body": "Your receipt is ready"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message_id = sent["message_id"]
        .as_str()
        .expect("a sent message")
        .to_owned();

    let work = tempdir("sms-docs-run");
    let bin_dir = workspace_binary("sms-ingress")
        .parent()
        .unwrap()
        .to_path_buf();
    let mut failures = Vec::new();
    for (name, block) in &examples {
        let script = block
            .replace("http://127.0.0.1:8080", &ingress_base)
            .replace("127.0.0.1:9090", &format!("127.0.0.1:{ops_port}"))
            .replace("127.0.0.1:9091", &format!("127.0.0.1:{worker_port}"))
            .replace("127.0.0.1:8089", &sim_base)
            .replace("localhost:8089", &sim_base)
            .replace("target/release/", &format!("{}/", bin_dir.display()));
        // Output goes to a file and is then printed, so a reader like `head` that stops early
        // cannot fail curl with a broken pipe; 4xx and 5xx fail the block.
        let prelude = "set -euo pipefail\n\
             curl() { local out rc=0; out=$(mktemp); command curl --fail-with-body --max-time 20 \"$@\" >\"$out\" || rc=$?; cat \"$out\" || true; rm -f \"$out\"; return $rc; }\n";
        let out = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .current_dir(&work)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    bin_dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .env("KEY", &key)
            .env("ADMIN_KEY", &key)
            .env("READ_KEY", &read_key)
            .env("KEY_ID", &key_id)
            .env("MESSAGE_ID", &message_id)
            .output()
            .await
            .unwrap();
        if !out.status.success() {
            failures.push(format!(
                "{name}: exit {:?}\n{script}\nstdout: {}\nstderr: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    println!(
        "{} of {} curl examples ran",
        examples.len() - failures.len(),
        examples.len()
    );
    assert!(
        failures.is_empty(),
        "examples that failed:\n{}",
        failures.join("\n\n")
    );
}

fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
