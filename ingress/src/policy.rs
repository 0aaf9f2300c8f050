//! Who may do what: the one authorization policy. Every API endpoint and console page asks
//! [`authorize`] (or [`confine`], for listings) before it reads or writes anything; no handler
//! decides access by itself.
//!
//! A decision depends on three things only:
//! - the **key**: its scopes (`read`, `send`, `admin`; `admin` implies the others) and whether it
//!   is confined to one tenant;
//! - the **action**: reading, sending (and recording opt changes), administering, or claiming a
//!   phone number for a tenant;
//! - **whose** resource it is, seen from the key: its own tenant's, another tenant's, or global
//!   configuration (default and workflow routes, keys without a tenant, service-wide figures).
//!   A record no tenant owns (an unattributed conversation or message, a number no tenant lists)
//!   is no tenant-scoped key's: it is answered like another tenant's (404), so that a key cannot
//!   even learn that such a record exists.
//!
//! The table ([`decide`]), printed in the README (Security model):
//!
//! | key \ resource          | own tenant | another tenant                 | global                     |
//! |-------------------------|------------|--------------------------------|----------------------------|
//! | unscoped admin          | allowed    | allowed (claim: moves number)  | allowed                    |
//! | unscoped read / send    | its scope  | its scope                      | its scope                  |
//! | tenant admin            | allowed    | 404 (claim: 409 number_claimed)| 403 unscoped_admin_only    |
//! | tenant read / send      | its scope  | 404                            | 403 unscoped_admin_only    |
//!
//! "Its scope": allowed when the key has the action's scope, else 403 `forbidden` (checked first,
//! whatever the resource). Another tenant's resource is answered 404, as if it did not exist, so
//! a key learns nothing about other tenants; a global one 403, since it exists for everyone.

use crate::{auth::ApiKey, error::ApiError};

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reads data (`read` scope).
    Read,
    /// Sends messages, cancels them, records opt changes (`send` scope).
    Send,
    /// Changes configuration: routes, numbers, keys, quarantine (`admin` scope).
    Administer,
    /// Lists a phone number for a tenant (`admin` scope); the resource is the number's current
    /// owner, so claiming another tenant's number is a conflict, not a hidden record.
    ClaimNumber,
}

impl Action {
    pub const ALL: [Action; 4] = [
        Action::Read,
        Action::Send,
        Action::Administer,
        Action::ClaimNumber,
    ];

    /// The scope the action needs.
    pub fn scope(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Send => "send",
            Action::Administer | Action::ClaimNumber => "admin",
        }
    }
}

/// Whose resource a request touches, seen from the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    Own,
    OtherTenant,
    Global,
}

impl Whose {
    pub const ALL: [Whose; 3] = [Whose::Own, Whose::OtherTenant, Whose::Global];
}

/// The answer of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// 403 `forbidden`: the key lacks the action's scope.
    MissingScope,
    /// 404 `not_found`: another tenant's resource does not exist for this key.
    Hidden,
    /// 403 `unscoped_admin_only`: global resources are for keys without a tenant.
    UnscopedOnly,
    /// 409 `number_claimed`: the number is another tenant's.
    NumberClaimed,
}

/// The caller as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub scopes: &'a [String],
    pub tenant: Option<&'a str>,
}

impl<'a> From<&'a ApiKey> for Caller<'a> {
    fn from(key: &'a ApiKey) -> Self {
        Caller {
            scopes: &key.scopes,
            tenant: key.tenant_id.as_deref(),
        }
    }
}

/// Whether a key has the scope an action needs (`admin` implies every scope).
pub fn has_scope(scopes: &[String], action: Action) -> bool {
    scopes.iter().any(|s| s == action.scope() || s == "admin")
}

/// The policy. Pure; tested over every key kind, action and owner.
pub fn decide(caller: Caller<'_>, action: Action, whose: Whose) -> Verdict {
    if !has_scope(caller.scopes, action) {
        return Verdict::MissingScope;
    }
    match (caller.tenant, whose) {
        (None, _) | (Some(_), Whose::Own) => Verdict::Allowed,
        (Some(_), Whose::OtherTenant) if action == Action::ClaimNumber => Verdict::NumberClaimed,
        (Some(_), Whose::OtherTenant) => Verdict::Hidden,
        (Some(_), Whose::Global) => Verdict::UnscopedOnly,
    }
}

/// Who owns what a request touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// A tenant's record or configuration.
    Tenant(&'a str),
    /// A record no tenant owns (an unattributed conversation, message or number).
    Unattributed,
    /// Configuration for every tenant (default and workflow routes, keys without a tenant,
    /// service-wide figures).
    Global,
}

impl<'a> Owner<'a> {
    /// A record: its tenant, or no one's.
    pub fn record(tenant: Option<&'a str>) -> Self {
        tenant.map_or(Owner::Unattributed, Owner::Tenant)
    }

    /// Configuration: a tenant's, or everyone's.
    pub fn config(tenant: Option<&'a str>) -> Self {
        tenant.map_or(Owner::Global, Owner::Tenant)
    }
}

/// Whose `owner`'s resource is, for `caller`.
pub fn whose(caller: Caller<'_>, owner: Owner<'_>) -> Whose {
    match (caller.tenant, owner) {
        (_, Owner::Global) => Whose::Global,
        (None, _) => Whose::Own,
        (Some(own), Owner::Tenant(t)) if own == t => Whose::Own,
        (Some(_), _) => Whose::OtherTenant,
    }
}

impl Verdict {
    /// The answer to give, if not allowed.
    pub fn into_result(self, what: &'static str) -> Result<(), ApiError> {
        match self {
            Verdict::Allowed => Ok(()),
            Verdict::MissingScope => {
                Err(ApiError::Forbidden("this API key lacks the required scope"))
            }
            Verdict::Hidden => Err(ApiError::NotFound(what)),
            Verdict::UnscopedOnly => Err(ApiError::UnscopedOnly),
            Verdict::NumberClaimed => Err(ApiError::Conflict {
                code: "number_claimed",
                detail: "this number is listed by another tenant; an operator can move it".into(),
            }),
        }
    }
}

/// Asks the policy whether `key` may do `action` on what `owner` owns. `what` names the
/// resource in a 404 ("no such conversation").
pub fn authorize(
    key: &ApiKey,
    action: Action,
    owner: Owner<'_>,
    what: &'static str,
) -> Result<(), ApiError> {
    let caller = Caller::from(key);
    decide(caller, action, whose(caller, owner)).into_result(what)
}

/// Asks the policy whether `key` may do `action` at all (before anything is loaded).
pub fn require(key: &ApiKey, action: Action) -> Result<(), ApiError> {
    if has_scope(&key.scopes, action) {
        Ok(())
    } else {
        Verdict::MissingScope.into_result("")
    }
}

/// Whether `key` may see what `owner` owns (listings drop the others).
pub fn sees(key: &ApiKey, action: Action, owner: Owner<'_>) -> bool {
    let caller = Caller::from(key);
    decide(caller, action, whose(caller, owner)) == Verdict::Allowed
}

/// The tenant a listing reads: a tenant-scoped key reads its own tenant (naming another is
/// asking for a tenant that does not exist for it: 404); an unscoped key reads the tenant it
/// names, or every tenant.
pub fn confine(
    key: &ApiKey,
    action: Action,
    asked: Option<String>,
) -> Result<Option<String>, ApiError> {
    require(key, action)?;
    match (&key.tenant_id, asked) {
        (Some(own), Some(asked)) if *own != asked => Err(ApiError::NotFound("no such tenant")),
        (Some(own), _) => Ok(Some(own.clone())),
        (None, asked) => Ok(asked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use Verdict::*;
    use Whose::*;

    /// The six key kinds: (name, scopes, tenant).
    fn kinds() -> Vec<(&'static str, Vec<String>, Option<&'static str>)> {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        vec![
            ("unscoped admin", s(&["admin"]), None),
            ("unscoped read", s(&["read"]), None),
            ("unscoped send", s(&["send"]), None),
            ("tenant admin", s(&["admin"]), Some("t-a")),
            ("tenant read", s(&["read"]), Some("t-a")),
            ("tenant send", s(&["send"]), Some("t-a")),
        ]
    }

    /// The expected verdict, written as the README's table reads.
    fn expected(kind: &str, action: Action, whose: Whose) -> Verdict {
        let scoped = kind.starts_with("tenant");
        let scope_ok = kind.ends_with("admin") || kind.ends_with(action.scope());
        if !scope_ok {
            return MissingScope;
        }
        match (scoped, whose, action) {
            (false, _, _) | (true, Own, _) => Allowed,
            (true, OtherTenant, ClaimNumber) => NumberClaimed,
            (true, OtherTenant, _) => Hidden,
            (true, Global, _) => UnscopedOnly,
        }
    }

    #[test]
    fn every_key_kind_action_and_owner() {
        let mut cases = 0;
        for (kind, scopes, tenant) in kinds() {
            let caller = Caller {
                scopes: &scopes,
                tenant,
            };
            for action in Action::ALL {
                for whose in Whose::ALL {
                    assert_eq!(
                        decide(caller, action, whose),
                        expected(kind, action, whose),
                        "{kind} {action:?} {whose:?}"
                    );
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 72);
    }

    #[test]
    fn some_rows_spelled_out() {
        let admin = vec!["admin".to_string()];
        let read = vec!["read".to_string()];
        let t_admin = Caller {
            scopes: &admin,
            tenant: Some("t-a"),
        };
        // The attacks of issue 19: a tenant admin creating a global route, claiming t-b's number.
        assert_eq!(decide(t_admin, Administer, Global), UnscopedOnly);
        assert_eq!(decide(t_admin, ClaimNumber, OtherTenant), NumberClaimed);
        let t_read = Caller {
            scopes: &read,
            tenant: Some("t-a"),
        };
        assert_eq!(decide(t_read, Administer, Own), MissingScope);
        assert_eq!(decide(t_read, Read, OtherTenant), Hidden);
    }

    #[test]
    fn whose_a_record_is() {
        let admin = vec!["admin".to_string()];
        let scoped = Caller {
            scopes: &admin,
            tenant: Some("t-a"),
        };
        let unscoped = Caller {
            scopes: &admin,
            tenant: None,
        };
        let table = [
            (scoped, Owner::Tenant("t-a"), Own),
            (scoped, Owner::Tenant("t-b"), OtherTenant),
            (scoped, Owner::Unattributed, OtherTenant),
            (scoped, Owner::Global, Global),
            (unscoped, Owner::Tenant("t-a"), Own),
            (unscoped, Owner::Unattributed, Own),
            (unscoped, Owner::Global, Global),
        ];
        for (caller, owner, want) in table {
            assert_eq!(whose(caller, owner), want, "{:?} {owner:?}", caller.tenant);
        }
        assert_eq!(Owner::record(None), Owner::Unattributed);
        assert_eq!(Owner::config(None), Owner::Global);
        assert_eq!(Owner::record(Some("t-a")), Owner::Tenant("t-a"));
    }
}
