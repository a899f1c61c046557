//! oip-gateway: the data-exchange point between platform enterprises and the
//! government systems of China's occupational injury protection for gig workers
//! (新就业形态人员职业伤害保障).
//!
//! A request travels: TLS handshake (`tls`) → caller identity (`identity`) → grant
//! check (`access`) → field rules (`validate`) → rules between records
//! (`crosscheck`) → one transaction in the store (`store`) → per-record outcomes.
//! `api` holds the thin tonic services; `app` assembles everything from `config`.

#![forbid(unsafe_code)]

pub mod access;
pub mod admission;
pub mod api;
pub mod app;
pub mod audit;
pub mod backend_sim;
pub mod bulk;
pub mod certs;
pub mod cli;
pub mod codec;
pub mod config;
pub mod connections;
pub mod crosscheck;
pub mod deadline;
pub mod domain;
pub mod edge;
pub mod error;
pub mod forward;
pub mod identity;
pub mod ingest;
pub mod loadgen;
pub mod metrics;
pub mod ops;
pub mod pii;
// Generated from proto/oip/v1/*.proto, whose comments use <placeholders> and
// [names] as plain text (they are also the API's documentation for other languages).
#[allow(
    rustdoc::invalid_html_tags,
    rustdoc::broken_intra_doc_links,
    rustdoc::bare_urls
)]
pub mod proto;
pub mod reference;
pub mod store;
pub mod submit;
pub mod telemetry;
pub mod tls;
pub mod validate;
pub mod vault;
