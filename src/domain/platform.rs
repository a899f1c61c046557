//! A registered platform enterprise as the rules see it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;

use super::ids::CreditCode;

/// Instant-delivery fee tier of a platform in a division (domain.md, Fees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryTier {
    A,
    B,
}

impl DeliveryTier {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "A" => Some(Self::A),
            "B" => Some(Self::B),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::A => "A",
            Self::B => "B",
        }
    }
}

/// What the gateway knows about a platform: its industries and, per division, the
/// local date its pilot starts (orders before it are not billable and are rejected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformProfile {
    /// Store key of the platform.
    pub id: i64,
    pub uscc: CreditCode,
    pub name: String,
    pub industries: BTreeSet<String>,
    /// Division code → pilot start date (Asia/Shanghai).
    pub pilot_starts: BTreeMap<String, NaiveDate>,
    /// The platform's instant-delivery tier...
    pub delivery_tier: DeliveryTier,
    /// ...except in these divisions (a city, or a province for all its cities).
    pub delivery_tiers: BTreeMap<String, DeliveryTier>,
}

impl PlatformProfile {
    /// The instant-delivery tier in `division` (its own entry, else its province's,
    /// else the platform's).
    pub fn tier_for(&self, division: &str) -> DeliveryTier {
        let province = format!("{}0000", division.get(..2).unwrap_or(""));
        self.delivery_tiers
            .get(division)
            .or_else(|| self.delivery_tiers.get(&province))
            .copied()
            .unwrap_or(self.delivery_tier)
    }

    /// The pilot start that governs `division`: the division's own entry, else its
    /// prefecture's (`xxxx00`), else its province's (`xx0000`).
    pub fn pilot_start(&self, division: &str) -> Option<NaiveDate> {
        if division.len() != 6 {
            return None;
        }
        let prefecture = format!("{}00", &division[..4]);
        let province = format!("{}0000", &division[..2]);
        [division, prefecture.as_str(), province.as_str()]
            .into_iter()
            .find_map(|d| self.pilot_starts.get(d).copied())
    }
}

/// The significant prefix of a GB/T 2260 division code: `320000` → `32`, `320100` →
/// `3201`, `320506` → `320506`. A code covers every code that starts with its prefix.
pub fn division_prefix(code: &str) -> &str {
    let mut p = code;
    while p.len() > 2 && p.ends_with("00") {
        p = &p[..p.len() - 2];
    }
    p
}

/// Why `division` cannot carry a delivery-tier override of a platform in the pilot in
/// `pilot` (division codes): an override is for a city or a province (`xxxx00`) that
/// covers at least one of them, as the tier applies to a statement's city. `None` when
/// it fits.
pub fn tier_override_problem(division: &str, pilot: &[&str]) -> Option<String> {
    if !division.ends_with("00") {
        return Some(format!(
            "{division} is a county: a tier applies to a city or province"
        ));
    }
    let prefix = division_prefix(division);
    if pilot.iter().any(|d| d.starts_with(prefix)) {
        None
    } else {
        Some(format!(
            "{division} covers none of the platform's pilot divisions ({})",
            pilot.join(", ")
        ))
    }
}
