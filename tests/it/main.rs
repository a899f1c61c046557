//! The integration suite: one binary, each test against a real gateway on an ephemeral
//! port with real mTLS certificates (certs-example/) and its own SQLite file.

mod common;

mod access;
mod admin;
mod aggregates;
mod audit;
mod backend_sim;
mod behaviour;
mod bulk_files;
mod call_level;
mod certs_cli;
mod chunking;
mod cli_tree;
mod config;
mod dead_letters;
mod durability;
mod edge_limits;
mod fees;
mod forwarding;
mod grants;
mod group_commit;
mod input_rules;
mod logs;
mod operations;
mod pii;
mod proto_docs;
mod pulls;
mod readme;
mod records;
mod replicas;
mod revisions;
mod revocation;
mod roles_cli;
mod statements;
mod status_cli;
mod store;
mod submit_cli;
