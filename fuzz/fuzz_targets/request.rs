//! Fuzz target: untrusted request bytes, decoded as each platform request and every
//! record validated (`validate::check_request`). It must never panic, and a rejection
//! must stay bounded and free of the record's personal data.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    oip_gateway::validate::check_request(data);
});
