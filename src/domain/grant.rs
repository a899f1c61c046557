//! Grants: which identity holds which role over which data (spec/README.md, roles).
//! The table itself; what a grant allows is decided in `access`.

use std::fmt;

use crate::domain::time::Millis;

/// The roles of spec/README.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Platform,
    Tax,
    SocialSecurity,
    Admin,
}

impl Role {
    /// The role's name in grants, identities (`oip://<role>/…`) and the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Platform => "platform",
            Role::Tax => "tax",
            Role::SocialSecurity => "social-security",
            Role::Admin => "admin",
        }
    }

    /// The role named `s` (as [`Role::as_str`] writes it), if any.
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
    /// Whether the grant is in force at `now` (unexpired).
    pub fn is_live(&self, now: Millis) -> bool {
        self.expires_at.is_none_or(|e| now < e)
    }
}
