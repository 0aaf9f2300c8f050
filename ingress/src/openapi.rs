//! The OpenAPI 3 document at `GET /openapi.json`, generated from the handlers' `#[utoipa::path]`
//! annotations as [`crate::api`] registers them, and a self-contained page at `GET /docs` that
//! renders it (no assets from elsewhere, so it works offline).

use std::sync::LazyLock;

use axum::{
    http::header,
    response::{Html, IntoResponse},
};
use utoipa::{
    Modify, OpenApi, PartialSchema, ToResponse, ToSchema,
    openapi::{
        Content, HeaderBuilder, Ref, RefOr, ResponseBuilder,
        response::Response,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::error::ErrorBody;

/// The security scheme of API keys (`Authorization: Bearer <key>`).
pub const API_KEY: &str = "api_key";
/// The security scheme of Twilio's webhooks (`X-Twilio-Signature`).
pub const TWILIO_SIGNATURE: &str = "twilio_signature";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sms-ingress",
        description = "Twilio webhooks and the SMS HTTP API of the SMS Foundation. Errors are JSON \
            `{\"code\", \"detail\"}` (see the `ApiError` schema); `code` is stable, `detail` is for \
            people. API endpoints need a key created with `sms-ingress api-key create`, sent as \
            `Authorization: Bearer <key>`; its scopes (`read`, `send`, `admin`, where `admin` \
            implies the others) are listed on each operation's security requirement. A key \
            confined to a tenant sees only that tenant's data: anything else answers 404."
    ),
    modifiers(&SecuritySchemes),
    components(
        schemas(ErrorBody),
        responses(Unauthorized, MissingScope, Unavailable, Internal)
    ),
    tags(
        (name = "webhooks", description = "Called by Twilio; authenticated by signature."),
        (name = "messages", description = "Sending SMS and reading conversations."),
        (name = "routing", description = "Which agent receives a tenant's messages, and the quarantine of those that could not be routed."),
        (name = "tenants", description = "Tenants' phone numbers and usage."),
        (name = "opt-outs", description = "The opt-out ledger: every opt-out and opt-in received, and ones recorded by hand."),
        (name = "keys", description = "API keys: list, create (optionally expiring), revoke."),
        (name = "operations", description = "Health, metrics and this documentation; no key needed."),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("sk_<48 hex digits>")
                    .description(Some(
                        "An API key: `Authorization: Bearer sk_...`. Only its SHA-256 is stored. \
                         The values in an operation's requirement are the scopes it needs \
                         (`admin` implies `read` and `send`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            TWILIO_SIGNATURE,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Twilio-Signature",
                "Twilio's signature: base64 of HMAC-SHA1, keyed with TWILIO_AUTH_TOKEN (or \
                 TWILIO_AUTH_TOKEN_SECONDARY), over PUBLIC_URL + path + query followed by each \
                 form parameter's name and value sorted by name; for a JSON body the URL carries \
                 `bodySHA256` instead. Missing or wrong: 403 and nothing is stored.",
            ))),
        );
    }
}

/// Content of an error answer: the `ApiError` schema.
fn error_content() -> Content {
    Content::new(Some(Ref::from_schema_name(ErrorBody::name())))
}

/// An error response with this description (for reusable responses).
fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", error_content())
}

/// 401 `unauthorized`.
pub struct Unauthorized;

impl<'r> ToResponse<'r> for Unauthorized {
    fn response() -> (&'r str, RefOr<Response>) {
        let r = error_response(
            "`unauthorized`: no `Authorization: Bearer` header, or an unknown or revoked key.",
        );
        ("Unauthorized", r.build().into())
    }
}

/// 403 `forbidden` (the key lacks the scope) or `unscoped_admin_only` (a global resource asked
/// for with a tenant-scoped key): the authorization policy's refusals.
pub struct MissingScope;

impl<'r> ToResponse<'r> for MissingScope {
    fn response() -> (&'r str, RefOr<Response>) {
        let r = error_response(
            "`forbidden`: the key lacks the scope this operation needs; `unscoped_admin_only`: \
             a global resource (default or workflow route, a key without a tenant) asked for with \
             a tenant-scoped key. See docs/security.md.",
        );
        ("MissingScope", r.build().into())
    }
}

/// 503 `unavailable` with `Retry-After`.
pub struct Unavailable;

impl<'r> ToResponse<'r> for Unavailable {
    fn response() -> (&'r str, RefOr<Response>) {
        let r = error_response(
            "`unavailable`: the database did not answer (or no connection was free within \
             DATABASE_ACQUIRE_TIMEOUT_MS). Nothing was done; retry.",
        )
        .header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(u32::schema())
                .description(Some("Seconds to wait before retrying (5)."))
                .build(),
        );
        ("Unavailable", r.build().into())
    }
}

/// 500 `internal`.
pub struct Internal;

impl<'r> ToResponse<'r> for Internal {
    fn response() -> (&'r str, RefOr<Response>) {
        let r = error_response(
            "`internal`: an unexpected server-side failure (logged; no internals in the answer).",
        );
        ("Internal", r.build().into())
    }
}

/// The fields of Twilio's inbound SMS webhook that the ingress reads. Every field sent is stored
/// as received (`sms_messages.raw_webhook_data`), including ones not listed here; a repeated field
/// is stored as an array.
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct TwilioInboundSms {
    /// Twilio's message id; a replay of a stored one changes nothing. `SmsMessageSid` is
    /// accepted instead.
    #[schema(example = "SM0123456789abcdef0123456789abcdef")]
    MessageSid: String,
    #[schema(example = "AC00000000000000000000000000000000")]
    AccountSid: Option<String>,
    /// The sender, in any written form.
    #[schema(example = "+15551230001")]
    From: Option<String>,
    /// Our number.
    #[schema(example = "+15550001000")]
    To: Option<String>,
    #[schema(example = "Sí, gracias")]
    Body: Option<String>,
    NumSegments: Option<String>,
    NumMedia: Option<String>,
}

/// The fields of Twilio's status callback that the ingress reads; every field is stored.
#[derive(ToSchema)]
#[allow(non_snake_case, dead_code)]
pub struct TwilioStatusCallback {
    /// `SmsSid` is accepted instead.
    #[schema(example = "SMabc0000000000000000000000000000")]
    MessageSid: String,
    /// queued, sending, sent, delivered, undelivered, failed, read, accepted, scheduled,
    /// canceled, receiving, received. `SmsStatus` is accepted instead.
    #[schema(example = "delivered")]
    MessageStatus: String,
    /// Twilio's error code on undelivered/failed (e.g. 30003); stored.
    ErrorCode: Option<String>,
    AccountSid: Option<String>,
}

/// The document, generated once from the registered routes.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(|| {
        let mut doc = crate::api().into_openapi();
        state_cross_field_rules(&mut doc);
        state_no_nul(doc)
    });
    &DOC
}

/// Every text refuses NUL (400 `invalid_text`: Postgres cannot store it): stated on every string
/// a client sends (request schemas and parameters) without a format, enumeration or pattern of
/// its own.
fn state_no_nul(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema, SchemaType, Type};
    fn walk(schema: &mut RefOr<Schema>) {
        let RefOr::T(schema) = schema else { return };
        match schema {
            Schema::Object(o) => {
                let is_string = match &o.schema_type {
                    SchemaType::Type(t) => *t == Type::String,
                    SchemaType::Array(ts) => ts.contains(&Type::String),
                    SchemaType::AnyValue => false,
                };
                if is_string && o.format.is_none() && o.enum_values.is_none() && o.pattern.is_none()
                {
                    o.pattern = Some(NO_NUL.to_owned());
                }
                o.properties.values_mut().for_each(walk);
                if let Some(AdditionalProperties::RefOr(values)) =
                    o.additional_properties.as_deref_mut()
                {
                    walk(values);
                }
                if let Some(names) = o.property_names.take() {
                    let mut names = RefOr::T(*names);
                    walk(&mut names);
                    if let RefOr::T(names) = names {
                        o.property_names = Some(Box::new(names));
                    }
                }
            }
            Schema::Array(a) => {
                if let ArrayItems::RefOrSchema(items) = &mut a.items {
                    walk(items);
                }
            }
            Schema::OneOf(c) => c.items.iter_mut().for_each(walk),
            Schema::AllOf(c) => c.items.iter_mut().for_each(walk),
            Schema::AnyOf(c) => c.items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    if let Some(components) = doc.components.as_mut() {
        components.schemas.values_mut().for_each(walk);
    }
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            for p in op.parameters.iter_mut().flatten() {
                p.schema.iter_mut().for_each(walk);
            }
            for content in op
                .request_body
                .iter_mut()
                .flat_map(|b| b.content.values_mut())
            {
                content.schema.iter_mut().for_each(walk);
            }
        }
    }
    doc
}

/// Any text without NUL (ECMA-262, as JSON Schema reads patterns).
pub const NO_NUL: &str = r"^[^\u0000]*$";

/// The rules between fields that JSON Schema can state, added to the request schemas so that a
/// client (or a schema-based fuzzer) knows them: a route has exactly one target; a send has a
/// body with a visible character or at least one media URL. Rules that depend on the world
/// (a number's validity by libphonenumber's metadata, a window's order, an expiry in the future,
/// the agent fence's verdict on where a name resolves) stay in the operations' descriptions and
/// answer 400 `invalid_request` with the field and the reason.
fn state_cross_field_rules(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::{
        AllOfBuilder, AnyOfBuilder, ArrayBuilder, ObjectBuilder, OneOfBuilder, Type,
    };
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let with = |field: &str, schema: RefOr<utoipa::openapi::schema::Schema>| {
        ObjectBuilder::new().property(field, schema).required(field)
    };
    let route_target = OneOfBuilder::new()
        .description(Some(
            "Exactly one target: a tenant, a workflow type, or the default.",
        ))
        .item(with("tenant_id", string().into()))
        .item(with("workflow_type", string().into()))
        .item(with(
            "default",
            ObjectBuilder::new()
                .schema_type(Type::Boolean)
                .enum_values(Some([true]))
                .into(),
        ));
    let content = AnyOfBuilder::new()
        .description(Some(
            "A body with a visible character, or at least one media URL.",
        ))
        .item(with("body", string().pattern(Some(r"\S")).into()))
        .item(with(
            "media_urls",
            ArrayBuilder::new()
                .items(string())
                .min_items(Some(1))
                .into(),
        ));
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    for (name, rule) in [
        ("NewRoute", RefOr::T(route_target.into())),
        ("SendRequest", RefOr::T(content.into())),
    ] {
        if let Some(schema) = components.schemas.remove(name) {
            let both = AllOfBuilder::new().item(schema).item(rule);
            components
                .schemas
                .insert(name.to_owned(), RefOr::T(both.into()));
        }
    }
}

static DOC_JSON: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_json()
        .expect("the OpenAPI document serialises")
});

/// OpenAPI document
///
/// This API's OpenAPI 3.1 document, generated from the code.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI document.",
               content_type = "application/json", body = inline(std::collections::BTreeMap<String, serde_json::Value>)))
)]
pub async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOC_JSON.as_str(),
    )
}

/// API documentation page
///
/// A self-contained HTML page that renders `/openapi.json`.
#[utoipa::path(
    get,
    path = "/docs",
    tag = "operations",
    operation_id = "docs",
    responses((status = 200, description = "HTML.", content_type = "text/html", body = String))
)]
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

/// A query's time: a day (`YYYY-MM-DD`) or an RFC 3339 time, as `usage::parse_time` reads it.
pub struct TimeOrDay;

impl utoipa::PartialSchema for TimeOrDay {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let of = |format| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(format)))
        };
        OneOfBuilder::new()
            .item(of(KnownFormat::Date))
            .item(of(KnownFormat::DateTime))
            .into()
    }
}

impl utoipa::ToSchema for TimeOrDay {}

/// A usage window's bound: a day (`YYYY-MM-DD`), or an RFC 3339 time at 00:00 UTC (usage is
/// counted per UTC day, so another time is refused rather than rounded).
pub struct DayBound;

impl utoipa::PartialSchema for DayBound {
    fn schema() -> RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type,
        };
        let of = |format| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(format)))
        };
        OneOfBuilder::new()
            .item(of(KnownFormat::Date))
            .item(of(KnownFormat::DateTime).pattern(Some(r"[Tt]00:00:00(\.0+)?([Zz]|[+-]00:00)$")))
            .into()
    }
}

impl utoipa::ToSchema for DayBound {}

#[cfg(test)]
mod tests {
    /// A cursor's pattern in the document is its whole rule: what the API returns matches it, and
    /// whatever matches it is accepted (the decoders' own tables walk the extremes).
    #[test]
    fn cursor_patterns_match_the_cursors_the_api_returns() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let pattern = |path: &str| {
            let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
            let cursor = params.iter().find(|p| p["name"] == "cursor").unwrap();
            regex::Regex::new(cursor["schema"]["pattern"].as_str().unwrap()).unwrap()
        };
        let at = chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
        let message = crate::conversations::encode_cursor(at, uuid::Uuid::now_v7());
        let ledger = crate::conversations::encode_cursor(at, i64::MAX / 10);
        let usage = crate::usage::encode_cursor(&("t.1".into(), "outbound".into(), "sent".into()));
        for (path, cursor) in [
            ("/conversations/{phone_number}", message),
            ("/opt-outs", ledger),
            ("/usage", usage),
        ] {
            assert!(pattern(path).is_match(&cursor), "{path}: {cursor}");
        }
        assert!(!pattern("/usage").is_match("in.x.\0"));
        assert!(!pattern("/opt-outs").is_match("1.x"));
    }

    /// An agent URL the document's pattern allows is one the route's own checks accept (the
    /// fence, which depends on where a name resolves, aside): the schema states the syntax.
    #[test]
    fn agent_url_pattern_allows_only_urls_a_route_accepts() {
        let doc = serde_json::to_value(super::document()).unwrap();
        let route = &doc["components"]["schemas"]["NewRoute"]["allOf"][0];
        let pattern = route["properties"]["agent_url"]["pattern"]
            .as_str()
            .unwrap();
        let re = regex::Regex::new(pattern).unwrap();
        let secret = "s".repeat(16);
        // (url, matches the pattern)
        let cases = [
            ("https://agents.example.com/collections", true),
            ("http://a", true),
            ("http://a-", true),
            ("http://-", false),
            ("http://0-a.b-:65535/", true),
            ("http://10.20.0.5:8080/x?y=1#z", true),
            ("http://255.255.255.255", true),
            ("http://a.0", false),
            ("http://1.2.3.256", false),
            ("http://a:65536", false),
            ("ftp://a", false),
            ("http://", false),
            ("http://a b", false),
            ("http://[::1]", false),
        ];
        for (url, matches) in cases {
            assert_eq!(re.is_match(url), matches, "{url}");
            if matches {
                let errors = crate::agent_routes::validate(None, None, true, url, &secret);
                assert!(errors.is_empty(), "{url}: {errors:?}");
            }
        }
    }
}
