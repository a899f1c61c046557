//! Fuzz target: one line of an untrusted bulk file, as `submit` decodes it
//! (`bulk::content` then `bulk::parse_line`). It must never panic, and a refusal must
//! stay bounded and free of the line's content.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oip_gateway::bulk;

fuzz_target!(|data: &[u8]| {
    bulk::check_line(data);
});
