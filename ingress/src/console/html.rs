//! HTML for the console: escaping, the page frame, small pieces. Everything the page shows that
//! came from outside (message text, numbers, names) goes through [`esc`].

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};

use super::Operator;

/// Text for an HTML element or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `Some` as escaped text, `None` as a dash.
pub fn opt(s: Option<&str>) -> String {
    s.map_or_else(|| "–".to_owned(), esc)
}

pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A query string value.
pub fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A status word as a badge (its class is the word, so the stylesheet colours it).
pub fn badge(word: &str) -> String {
    let class: String = word
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!(r#"<span class="badge b-{class}">{}</span>"#, esc(word))
}

/// A titled table of already-escaped cells; nothing when there are no rows.
pub fn table(class: &str, title: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let head: String = headers
        .iter()
        .map(|h| format!("<th>{}</th>", esc(h)))
        .collect();
    let body: String = rows
        .iter()
        .map(|r| {
            format!(
                "<tr>{}</tr>",
                r.iter()
                    .map(|c| format!("<td>{c}</td>"))
                    .collect::<String>()
            )
        })
        .collect();
    format!(
        r#"<h4>{}</h4><table class="{class}"><tr>{head}</tr>{body}</table>"#,
        esc(title)
    )
}

/// The hidden CSRF field every form carries.
pub fn csrf_field(token: &str) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(token)
    )
}

/// A whole page: header with navigation (when signed in), the body, no caching.
pub fn page(title: &str, operator: Option<&Operator>, body: &str) -> Response {
    let nav = match operator {
        Some(o) => format!(
            r#"<nav><a href="/console/numbers">Numbers</a><a href="/console/quarantine">Quarantine</a><a href="/console/opt-outs">Opt-outs</a><a href="/console/health">Health</a>
<span class="who">{who}{tenant}</span>
<form method="post" action="/console/logout" class="inline">{csrf}<button type="submit">Sign out</button></form></nav>"#,
            who = esc(&o.key.name),
            tenant = o
                .key
                .tenant_id
                .as_deref()
                .map(|t| format!(" · tenant {}", esc(t)))
                .unwrap_or_default(),
            csrf = csrf_field(&o.csrf),
        ),
        None => String::new(),
    };
    let html = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · SMS console</title><link rel="stylesheet" href="/console/assets/console.css"></head>
<body><header><a class="brand" href="/console/numbers">SMS console</a>{nav}</header>
<main><h1>{title}</h1>
{body}
</main></body></html>"#,
        title = esc(title),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

pub fn error_page(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let mut response = page(
        title,
        None,
        &format!(
            r#"<p class="error">{}</p><p><a href="/console/numbers">Back to the console</a></p>"#,
            esc(detail)
        ),
    );
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_become_markup() {
        let table = [
            (
                "<script>alert(1)</script>",
                "&lt;script&gt;alert(1)&lt;/script&gt;",
            ),
            (r#"" onmouseover="x"#, "&quot; onmouseover=&quot;x"),
            ("it's & done", "it&#39;s &amp; done"),
            ("Olá, não recebi", "Olá, não recebi"),
        ];
        for (raw, want) in table {
            assert_eq!(esc(raw), want);
        }
        assert_eq!(
            badge("delivered"),
            r#"<span class="badge b-delivered">delivered</span>"#
        );
        assert_eq!(
            badge("<x>"),
            r#"<span class="badge b--x-">&lt;x&gt;</span>"#
        );
    }
}
