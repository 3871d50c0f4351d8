//! Snapshot decoding and compilation on arbitrary bytes: errors are fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myelin_proxy::config::Snapshot;
use myelin_proxy::rules::CompiledSnapshot;

fuzz_target!(|data: &[u8]| {
    if let Ok(snapshot) = serde_json::from_slice::<Snapshot>(data) {
        let _ = CompiledSnapshot::compile(snapshot);
    }
});
