//! The agent's decoding of binary event batches from the proxy (postcard, the frame after its
//! first byte) on arbitrary bytes: errors are fine, panics and unbounded allocations are not,
//! and whatever decodes must encode back to the same events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myelin_proxy::event::L7Event;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = postcard::from_bytes::<Vec<L7Event>>(data) {
        let encoded = postcard::to_allocvec(&events).expect("decoded events encode again");
        let again: Vec<L7Event> = postcard::from_bytes(&encoded).expect("re-encoded events decode");
        assert_eq!(again, events);
    }
});
