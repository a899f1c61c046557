//! Generated gRPC types and services for package `oip.v1` (compiled by build.rs).

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("oip.v1");

/// Encoded descriptor set of every proto file, served through gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/oip_descriptor.bin"));
