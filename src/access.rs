//! Grants: who may do what to which data. A certificate proves who is calling; the
//! grant table decides what the caller may do. Deny by default.

use std::fmt;
use std::sync::Arc;

use crate::domain::PlatformProfile;
use crate::domain::grant::{Grant, Role};
use crate::domain::time::Millis;
use crate::error::ApiError;
use crate::identity::Principal;
use crate::reference::Reference;
use crate::store::Store;

/// Checks a grant an administrator is about to make: the identity is a gateway
/// identity of the same role, and the scope fits the role (the platform's own
/// USCC; a known division; `*` for an administrator). Returns why not.
pub fn check_grant(grant: &Grant, reference: &Reference) -> Result<(), String> {
    let principal = Principal::from_uri(&grant.identity).map_err(|e| e.to_string())?;
    if principal.role != grant.role {
        return Err(format!(
            "{} is a {} identity and cannot hold the {} role",
            crate::domain::outcome::quoted(&grant.identity),
            principal.role,
            grant.role
        ));
    }
    if grant.role == Role::Tax
        && let Some(county) = reference.division(&grant.scope).filter(|d| d.is_county())
    {
        return Err(county_for_tax(reference, county));
    }
    let fits = match grant.role {
        Role::Platform => grant.scope == principal.subject,
        Role::Tax | Role::SocialSecurity => reference.serves(&grant.scope),
        Role::Admin => grant.scope == "*",
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "scope {} does not fit the {} role (expected {})",
            crate::domain::outcome::quoted(&grant.scope),
            grant.role,
            match grant.role {
                Role::Platform => "the platform's own USCC",
                Role::Tax | Role::SocialSecurity =>
                    "a known division code this gateway serves (reference.served_divisions)",
                Role::Admin => "\"*\"",
            }
        ))
    }
}

/// Why a county is no scope or filter for tax: statements and declarations are per city
/// or province (domain.md, division codes: counties roll up to their city), so it would
/// match nothing. Names the city to use instead.
pub fn county_for_tax(reference: &Reference, county: &crate::reference::Division) -> String {
    let city = reference
        .city_of(&county.code)
        .map(|c| format!("{} ({})", c.code, c.name))
        .unwrap_or_else(|| "its city".to_string());
    format!(
        "division {} ({}) is a county: tax statements and declarations are per city or province (counties roll up to their city), so use {city}",
        county.code, county.name
    )
}

use crate::domain::platform::division_prefix;

/// Divisions a caller may read: each covers itself and everything under it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DivisionScope(Vec<String>);

impl DivisionScope {
    pub fn new(divisions: impl IntoIterator<Item = String>) -> Self {
        let mut v: Vec<String> = divisions.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    pub fn divisions(&self) -> &[String] {
        &self.0
    }

    /// `division` is one of the scope's divisions or lies under one.
    pub fn covers(&self, division: &str) -> bool {
        self.0
            .iter()
            .any(|d| division.len() == d.len() && division.starts_with(division_prefix(d)))
    }

    /// The requested divisions when each lies within the scope (all of the scope when
    /// none are requested); else the first that does not.
    pub fn narrow(&self, requested: &[String]) -> Result<DivisionScope, String> {
        if requested.is_empty() {
            return Ok(self.clone());
        }
        match requested.iter().find(|r| !self.covers(r)) {
            Some(outside) => Err(outside.clone()),
            None => Ok(DivisionScope::new(requested.iter().cloned())),
        }
    }
}

impl fmt::Display for DivisionScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// Decides calls against the grant table. Administrators' and readers' grants are read
/// on every call; a platform caller's grants and registration are kept for
/// `access.cache_ms` (every order passes here), and forgotten at once when they are
/// changed through this gateway ([`Access::invalidate`]).
#[derive(Clone)]
pub struct Access {
    store: Arc<dyn Store>,
    /// A platform caller's grants and registration, by identity URI, kept for
    /// `access.cache_ms` (the hot path: every call of every platform reads them).
    platforms: moka::sync::Cache<String, Arc<PlatformGrants>>,
    /// Bumped by every invalidation: a read that raced with one is not kept.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

/// What [`Access::platform`] reads for one caller.
#[derive(Debug)]
struct PlatformGrants {
    grants: Vec<Grant>,
    profile: Option<PlatformProfile>,
}

/// Platform callers kept at most (a cache: the others are read again).
const CACHED_CALLERS: u64 = 10_000;

/// PERMISSION_DENIED naming the grant that is missing and the command that makes it.
/// A certificate of another role can never hold it: that is said instead. A grant of
/// the role that has expired (among `held`) is named with its expiry. `scope` is None
/// for a division grant of any division.
fn missing_grant(
    principal: &Principal,
    role: Role,
    scope: Option<&str>,
    held: &[Grant],
) -> ApiError {
    if principal.role != role {
        return ApiError::PermissionDenied(format!(
            "{} is a {} identity; this call needs the {role} role, which only an oip://{role}/... certificate can hold",
            principal.uri, principal.role
        ));
    }
    let expired = held
        .iter()
        .filter(|g| g.role == role && scope.is_none_or(|s| g.scope == s))
        .filter_map(|g| g.expires_at.map(|at| (g.scope.as_str(), at)))
        .max_by_key(|(_, at)| *at);
    let command = |scope: &str| {
        format!(
            "oip-gateway admin grants put --identity {} --role {role} --scope {scope}",
            principal.uri
        )
    };
    match (expired, scope) {
        (Some((s, at)), _) => ApiError::PermissionDenied(format!(
            "{}'s {role} grant over {s} expired at {}; an administrator renews it with: {} [--expires-at TIME]",
            principal.uri,
            crate::domain::time::to_rfc3339(at),
            command(s)
        )),
        (None, Some(scope)) => ApiError::PermissionDenied(format!(
            "{} has no live {role} grant over {scope}; an administrator grants it with: {}",
            principal.uri,
            command(scope)
        )),
        (None, None) => ApiError::PermissionDenied(format!(
            "{} has no live {role} grant over any division; an administrator grants it with: {} (a division code: 320000 for all of Jiangsu, 320500 for one city)",
            principal.uri,
            command("DIVISION")
        )),
    }
}

impl Access {
    /// Access checks over `store`, a platform caller's grants and registration kept for
    /// 1 s (see [`Access::with_cache`]).
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_cache(store, std::time::Duration::from_secs(1))
    }

    /// Access checks that keep a platform caller's grants and registration for `ttl`
    /// (zero: read on every call). Clones share the cache.
    pub fn with_cache(store: Arc<dyn Store>, ttl: std::time::Duration) -> Self {
        let capacity = if ttl.is_zero() { 0 } else { CACHED_CALLERS };
        Self {
            store,
            platforms: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl.max(std::time::Duration::from_millis(1)))
                .build(),
            generation: Arc::default(),
        }
    }

    /// Forgets what is cached: grants or registrations changed.
    pub fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.platforms.invalidate_all();
    }

    async fn platform_grants(
        &self,
        principal: &Principal,
    ) -> Result<Arc<PlatformGrants>, ApiError> {
        if let Some(hit) = self.platforms.get(&principal.uri) {
            return Ok(hit);
        }
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::Acquire);
        let read = Arc::new(PlatformGrants {
            grants: self.store.grants(&principal.uri).await?,
            profile: self.store.platform(&principal.subject).await?,
        });
        self.platforms.insert(principal.uri.clone(), read.clone());
        // A change made while this was read may have been invalidated before the
        // insert: then the read is not kept (the change's own invalidation comes after
        // a later bump, which this check or that invalidation sees).
        if self.generation.load(Ordering::Acquire) != generation {
            self.platforms.invalidate(&principal.uri);
        }
        Ok(read)
    }

    /// An administrator: a live admin grant with scope `*`.
    pub async fn admin(&self, principal: &Principal, now: Millis) -> Result<(), ApiError> {
        let held = if principal.role == Role::Admin {
            self.store.grants(&principal.uri).await?
        } else {
            Vec::new()
        };
        if held
            .iter()
            .any(|g| g.role == Role::Admin && g.scope == "*" && g.is_live(now))
        {
            Ok(())
        } else {
            Err(missing_grant(principal, Role::Admin, Some("*"), &held))
        }
    }

    /// The divisions a tax or social-security caller may read: the scopes of its live
    /// grants of `role` (its certificate must claim that role).
    pub async fn divisions(
        &self,
        principal: &Principal,
        role: Role,
        now: Millis,
    ) -> Result<DivisionScope, ApiError> {
        let held = if principal.role == role {
            self.store.grants(&principal.uri).await?
        } else {
            Vec::new()
        };
        let scope = DivisionScope::new(
            held.iter()
                .filter(|g| g.role == role && g.is_live(now))
                .map(|g| g.scope.clone()),
        );
        if scope.divisions().is_empty() {
            return Err(missing_grant(principal, role, None, &held));
        }
        Ok(scope)
    }

    /// The platform a caller may act as: it needs a live platform grant whose scope is
    /// the USCC in its own certificate, and the platform must be registered.
    pub async fn platform(
        &self,
        principal: &Principal,
        now: Millis,
    ) -> Result<PlatformProfile, ApiError> {
        if principal.role != Role::Platform {
            return Err(missing_grant(
                principal,
                Role::Platform,
                Some(&principal.subject),
                &[],
            ));
        }
        let read = self.platform_grants(principal).await?;
        let grants = &read.grants;
        let denied = || missing_grant(principal, Role::Platform, Some(&principal.subject), grants);
        let granted = grants
            .iter()
            .any(|g| g.role == Role::Platform && g.scope == principal.subject && g.is_live(now));
        if !granted {
            return Err(denied());
        }
        read.profile.clone().ok_or_else(|| {
                ApiError::PermissionDenied(format!(
                    "platform {} is not registered; an administrator registers it with: oip-gateway admin platforms put --uscc {} --name <name> --industry <INDUSTRY> --division <code>=<pilot start>",
                    principal.subject, principal.subject
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(d: &[&str]) -> DivisionScope {
        DivisionScope::new(d.iter().map(|s| s.to_string()))
    }

    #[test]
    fn a_division_covers_what_lies_under_it() {
        let province = scope(&["320000"]);
        assert!(province.covers("320000"));
        assert!(province.covers("320100"));
        assert!(province.covers("320506"));
        assert!(!province.covers("330100"));
        let city = scope(&["320500"]);
        assert!(city.covers("320500"));
        assert!(city.covers("320506"));
        assert!(
            !city.covers("320000"),
            "a city grant does not see province-wide data"
        );
        assert!(!city.covers("320100"));
        assert!(!city.covers("3205"), "codes are whole");
    }

    #[test]
    fn narrowing_refuses_what_lies_outside() {
        let city = scope(&["320100", "320500"]);
        assert_eq!(city.narrow(&[]), Ok(city.clone()));
        assert_eq!(city.narrow(&["320500".into()]), Ok(scope(&["320500"])));
        assert_eq!(
            city.narrow(&["320500".into(), "320200".into()]),
            Err("320200".to_string())
        );
    }

    #[test]
    fn grants_fit_their_role() {
        let r = Reference::builtin();
        let g = |identity: &str, role, scope: &str| Grant {
            identity: identity.into(),
            role,
            scope: scope.into(),
            expires_at: None,
        };
        assert!(check_grant(&g("oip://tax/js-tax", Role::Tax, "320100"), &r).is_ok());
        assert!(check_grant(&g("oip://tax/js-tax", Role::Tax, "999999"), &r).is_err());
        assert!(check_grant(&g("oip://tax/js-tax", Role::Admin, "*"), &r).is_err());
        assert!(check_grant(&g("oip://admin/ops", Role::Admin, "*"), &r).is_ok());
        assert!(check_grant(&g("oip://admin/ops", Role::Admin, "320000"), &r).is_err());
        let a = "oip://platform/91320100MA1DEMA010";
        assert!(check_grant(&g(a, Role::Platform, "91320100MA1DEMA010"), &r).is_ok());
        assert!(check_grant(&g(a, Role::Platform, "91320500MA1DEMB02D"), &r).is_err());
        assert!(check_grant(&g("tax/x", Role::Tax, "320100"), &r).is_err());
    }
}
