//! Grants: who may do what to which data. A certificate proves who is calling; the
//! grant table decides what the caller may do. Deny by default.

use std::fmt;
use std::sync::Arc;

use crate::domain::PlatformProfile;
use crate::domain::time::Millis;
use crate::error::ApiError;
use crate::identity::Principal;
use crate::store::Store;

/// The roles of spec/README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Platform,
    Tax,
    SocialSecurity,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Platform => "platform",
            Role::Tax => "tax",
            Role::SocialSecurity => "social-security",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Role::Platform, Role::Tax, Role::SocialSecurity, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the grant table. `scope` is the platform's USCC for the platform role,
/// a division code for tax and social security, `*` for an administrator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub identity: String,
    pub role: Role,
    pub scope: String,
    pub expires_at: Option<Millis>,
}

impl Grant {
    pub fn is_live(&self, now: Millis) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}

/// Decides calls against the grant table, reading it on every call so that a change
/// takes effect on the next call without a restart.
#[derive(Clone)]
pub struct Access {
    store: Arc<dyn Store>,
}

impl Access {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// An administrator: a live admin grant with scope `*`.
    pub async fn admin(&self, principal: &Principal, now: Millis) -> Result<(), ApiError> {
        let granted = principal.role == Role::Admin
            && self
                .store
                .grants(&principal.uri)
                .await?
                .iter()
                .any(|g| g.role == Role::Admin && g.scope == "*" && g.is_live(now));
        if granted {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "{} has no admin grant",
                principal.uri
            )))
        }
    }

    /// The platform a caller may act as: it needs a live platform grant whose scope is
    /// the USCC in its own certificate, and the platform must be registered.
    pub async fn platform(
        &self,
        principal: &Principal,
        now: Millis,
    ) -> Result<PlatformProfile, ApiError> {
        let denied =
            || ApiError::PermissionDenied(format!("{} has no platform grant", principal.uri));
        if principal.role != Role::Platform {
            return Err(denied());
        }
        let grants = self.store.grants(&principal.uri).await?;
        let granted = grants
            .iter()
            .any(|g| g.role == Role::Platform && g.scope == principal.subject && g.is_live(now));
        if !granted {
            return Err(denied());
        }
        self.store
            .platform(&principal.subject)
            .await?
            .ok_or_else(|| {
                ApiError::PermissionDenied(format!(
                    "platform {} is not registered",
                    principal.subject
                ))
            })
    }
}
