//! The protocol sniffer on arbitrary first bytes: must not panic, and must never call a
//! prefix of a non-HTTP stream HTTP once it has said NotHttp.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myelin_proxy::io::{Sniff, sniff};

fuzz_target!(|data: &[u8]| {
    let verdict = sniff(data);
    if verdict == Sniff::NotHttp {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b" / HTTP/1.1\r\n");
        assert_eq!(sniff(&longer), Sniff::NotHttp);
    }
});
