//! The OpenAPI document at /openapi.json and the page at /docs: the document covers every route
//! the ingress serves, each documented operation is served, and its documented security is what
//! the service enforces.

use std::path::Path;

use harness::{
    app::{Settings, TestApp},
    pg,
};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const METHODS: &[&str] = &[
    "get", "post", "put", "patch", "delete", "head", "options", "trace",
];

/// A route added with plain axum calls in the ingress's source, bypassing `routes!`.
#[derive(Debug, PartialEq)]
struct PlainRoute {
    file: String,
    /// Lowercase methods; empty when the call serves every method (`route_service`, `nest`).
    methods: Vec<String>,
    path: String,
}

/// Finds `.route("/path", get(a).post(b))`, `.route_service(...)`, `.nest(...)` and
/// `.nest_service(...)` calls in Rust source (comment lines skipped).
fn plain_routes(file: &str, source: &str) -> Vec<PlainRoute> {
    let code: String = source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for call in [".route(", ".route_service(", ".nest(", ".nest_service("] {
        for (at, _) in code.match_indices(call) {
            let args_start = at + call.len();
            // The call's arguments: up to the parenthesis that closes it.
            let mut depth = 1;
            let mut end = args_start;
            for (i, c) in code[args_start..].char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = args_start + i;
                    break;
                }
            }
            let args = code[args_start..end].trim_start();
            let path = match args.strip_prefix('"').and_then(|a| a.split_once('"')) {
                Some((path, _)) => path.to_owned(),
                None => format!("<not a literal: {}>", args.lines().next().unwrap_or("")),
            };
            let methods = if call == ".route(" {
                METHODS
                    .iter()
                    .filter(|m| {
                        args.match_indices(&format!("{m}(")).any(|(i, _)| {
                            i == 0
                                || !args[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                        })
                    })
                    .map(|m| m.to_string())
                    .collect()
            } else {
                Vec::new()
            };
            found.push(PlainRoute {
                file: file.to_owned(),
                methods,
                path,
            });
        }
    }
    found
}

fn rust_sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path.display().to_string(), text));
        }
    }
}

/// The document's operations as (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            if METHODS.contains(&method.as_str()) {
                ops.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

/// Every `$ref` in `value` (recursively).
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// A concrete URL path for a templated one: each `{name}` replaced by the parameter's example,
/// a nil UUID for UUIDs, or `x`.
fn concrete_path(path: &str, op: &Value) -> String {
    let mut out = path.to_owned();
    for p in op["parameters"].as_array().into_iter().flatten() {
        if p["in"] != "path" {
            continue;
        }
        let name = p["name"].as_str().unwrap();
        let value = match (&p["example"], p["schema"]["format"].as_str()) {
            (Value::String(e), _) => e.clone(),
            (_, Some("uuid")) => uuid::Uuid::nil().to_string(),
            _ => "x".to_owned(),
        };
        out = out.replace(&format!("{{{name}}}"), &value);
    }
    out
}

#[test]
fn the_route_scanner_finds_plain_routes() {
    let source = r#"
        // .route("/commented", get(h))
        Router::new()
            .route("/a/{id}", get(a::list).post(a::create))
            .route(
                "/b",
                axum::routing::delete(b::delete),
            )
            .route("/c", get(c::get_thing))
            .nest("/d", inner)
    "#;
    let found = plain_routes("x.rs", source);
    let summary: Vec<(Vec<String>, String)> =
        found.into_iter().map(|r| (r.methods, r.path)).collect();
    let s = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
    assert_eq!(
        summary,
        vec![
            (s(&["get", "post"]), "/a/{id}".to_owned()),
            (s(&["delete"]), "/b".to_owned()),
            (s(&["get"]), "/c".to_owned()),
            (vec![], "/d".to_owned()),
        ]
    );
}

#[tokio::test]
async fn the_document_covers_every_route_and_matches_what_is_served() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;

    // Served without a key, and the same document the code generates.
    let resp = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "OpenAPI 3.x, got {}",
        doc["openapi"]
    );
    assert_eq!(
        doc,
        serde_json::to_value(ingress::openapi::document()).unwrap()
    );
    let ops = operations(&doc);

    // Routes added with plain axum calls escape `routes!`: each must still be documented.
    let mut sources = Vec::new();
    rust_sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../ingress/src"),
        &mut sources,
    );
    assert!(sources.len() > 5, "read the ingress's source");
    // The console's HTML pages are for people, not part of the API's document.
    sources.retain(|(file, _)| !file.contains("/console/"));
    assert!(
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .all(|p| !p.starts_with("/console")),
        "the console is not in the API document"
    );
    let mut undocumented = Vec::new();
    for (file, text) in &sources {
        for route in plain_routes(file, text) {
            let item = &doc["paths"][&route.path];
            let documented = if route.methods.is_empty() {
                false
            } else {
                route.methods.iter().all(|m| item.get(m).is_some())
            };
            if !documented {
                undocumented.push(route);
            }
        }
    }
    assert!(
        undocumented.is_empty(),
        "routes served but not in /openapi.json (annotate the handler with #[utoipa::path] and \
         register it with routes!(...) in ingress::api()): {undocumented:#?}"
    );

    // The routes this issue lists, at least.
    for (method, path) in [
        ("post", "/webhook/twilio/sms"),
        ("post", "/webhook/twilio/status"),
        ("post", "/sms/send"),
        ("delete", "/sms/{message_id}"),
        ("get", "/conversations/{phone_number}"),
        ("get", "/routes"),
        ("post", "/routes"),
        ("delete", "/routes/{id}"),
        ("get", "/unroutable"),
        ("post", "/unroutable/{message_id}/replay"),
        ("get", "/usage"),
        ("get", "/opt-outs"),
        ("post", "/opt-outs"),
        ("get", "/tenants/{tenant_id}/phones"),
        ("post", "/tenants/{tenant_id}/phones"),
        ("delete", "/tenants/{tenant_id}/phones/{phone_number}"),
        ("get", "/api-keys"),
        ("post", "/api-keys"),
        ("delete", "/api-keys/{id}"),
        ("get", "/health"),
        ("get", "/health/ready"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
    ] {
        assert!(
            doc["paths"][path].get(method).is_some(),
            "{method} {path} documented"
        );
    }

    // Every reference resolves.
    let mut all_refs = Vec::new();
    refs(&doc, &mut all_refs);
    for r in all_refs {
        let pointer = r.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }

    let mut operation_ids = std::collections::HashSet::new();
    let schemes = &doc["components"]["securitySchemes"];
    let read = app.api_key(&["read"], None).await;
    let send = app.api_key(&["send"], None).await;
    let admin = app.api_key(&["admin"], None).await;
    for (method, path, op) in &ops {
        let name = format!("{} {path}", method.to_uppercase());
        assert!(
            operation_ids.insert(op["operationId"].as_str().unwrap().to_owned()),
            "{name}: operationId unique"
        );
        assert!(op["summary"].is_string(), "{name}: has a summary");
        // Every `{param}` of the path is a documented path parameter.
        for segment in path.split('/') {
            if let Some(param) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let declared = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["in"] == "path" && p["name"] == param && p["required"] == true);
                assert!(declared, "{name}: path parameter {param} documented");
            }
        }
        for status in op["responses"].as_object().unwrap().keys() {
            let code: u16 = status.parse().expect("explicit status codes");
            assert!(
                StatusCode::from_u16(code).is_ok(),
                "{name}: status {status}"
            );
        }

        // Served, and protected as documented: without credentials, an API operation answers 401
        // and a webhook 403; the rest answer without any.
        let url = app.url(&concrete_path(path, op));
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let resp = app.http.request(method.clone(), &url).send().await.unwrap();
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_ne!(status, 405, "{name}: served with this method");
        assert!(
            !(status == 404 && body.is_empty()),
            "{name}: served (the router's own 404 has no body)"
        );
        let security: Vec<(String, Vec<String>)> = op["security"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|req| req.as_object().unwrap().clone())
            .map(|(scheme, scopes)| {
                let scopes = scopes
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect();
                (scheme, scopes)
            })
            .collect();
        match security.as_slice() {
            [] => assert!(status.is_success(), "{name}: public, got {status}"),
            [(scheme, _)] if scheme == ingress::openapi::TWILIO_SIGNATURE => {
                assert_eq!(status, 403, "{name}: unsigned webhook refused");
                assert_eq!(schemes[scheme]["name"], "X-Twilio-Signature");
            }
            [(scheme, scopes)] if scheme == ingress::openapi::API_KEY => {
                assert_eq!(status, 401, "{name}: no key");
                let error: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(error["code"], "unauthorized", "{name}");
                assert!(
                    op["responses"].get("401").is_some(),
                    "{name}: 401 documented"
                );
                assert!(
                    op["responses"].get("403").is_some(),
                    "{name}: 403 documented"
                );
                // The documented scope is the one enforced: a key with it gets past the check,
                // a key with only the other (non-admin) scopes does not.
                let [scope] = scopes.as_slice() else {
                    panic!("{name}: one scope, got {scopes:?}")
                };
                let (with, without) = match scope.as_str() {
                    "read" => (&read, vec![&send]),
                    "send" => (&send, vec![&read]),
                    "admin" => (&admin, vec![&read, &send]),
                    other => panic!("{name}: unknown scope {other}"),
                };
                let status_with = |key: &String| {
                    app.http
                        .request(method.clone(), &url)
                        .bearer_auth(key)
                        .send()
                };
                let allowed = status_with(with).await.unwrap().status();
                assert!(
                    allowed != 401 && allowed != 403,
                    "{name}: a {scope} key gets past the scope check, got {allowed}"
                );
                for key in without {
                    let refused = status_with(key).await.unwrap();
                    assert_eq!(refused.status(), 403, "{name}: needs {scope}");
                }
            }
            other => panic!("{name}: unexpected security {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_docs_page_renders_the_document_offline() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let resp = app.http.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
    );
    let html = resp.text().await.unwrap();
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains(r#"const SPEC_URL = "/openapi.json";"#));
    assert!(html.contains("fetch(SPEC_URL)"));
    // Nothing loaded from elsewhere: the page works without a network.
    for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(!html.contains(external), "the page loads {external}...");
    }
}

/// The rules a client can read from the schemas: every text a client sends states it takes no
/// NUL (or has a format, enumeration or pattern of its own); a route names exactly one target;
/// a send has a visible body or media. Each stated rule is what the server enforces (the
/// handlers' tests); a schema-based fuzzer then finds only rules that depend on stored data.
#[test]
fn request_schemas_state_the_rules_between_fields_and_refuse_nul() {
    let doc = serde_json::to_value(ingress::openapi::document()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let rule = |name: &str, of: &str| {
        schemas[name]["allOf"]
            .as_array()
            .and_then(|parts| parts.iter().find_map(|p| p[of].as_array()))
            .map(|variants| {
                variants
                    .iter()
                    .map(|v| v["required"][0].as_str().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            })
    };
    assert_eq!(
        rule("NewRoute", "oneOf"),
        Some(vec![
            "tenant_id".into(),
            "workflow_type".into(),
            "default".into()
        ])
    );
    assert_eq!(
        rule("SendRequest", "anyOf"),
        Some(vec!["body".into(), "media_urls".into()])
    );
    // Every string schema reachable from a request (components and parameters).
    fn strings<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
        match v {
            Value::Object(map) => {
                let is_string = match map.get("type") {
                    Some(Value::String(t)) => t == "string",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
                    _ => false,
                };
                if is_string {
                    out.push(v);
                }
                map.values().for_each(|v| strings(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let ops = operations(&doc);
    let mut found = Vec::new();
    strings(schemas, &mut found);
    for (_, _, op) in &ops {
        strings(&op["parameters"], &mut found);
    }
    let open: Vec<&&Value> = found
        .iter()
        .filter(|s| {
            ["format", "enum", "pattern"]
                .iter()
                .all(|k| s.get(k).is_none())
        })
        .collect();
    assert!(found.len() > 20, "string schemas found: {}", found.len());
    assert!(open.is_empty(), "strings that may carry NUL: {open:?}");
}
