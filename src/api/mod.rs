//! Thin tonic services: translate wire types to domain calls and back; every rule
//! lives elsewhere.

pub mod admin;
pub mod paging;
pub mod platform;
pub mod pull;
