//! The h2c upgrade path on arbitrary input: the preface reader on arbitrary client bytes,
//! and the stream 1 replay of arbitrary request headers, whose frames must always be well
//! formed (lengths within one frame, stream 1, exactly the last frame ending the headers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use myelin_proxy::h2c::{read_preface, stream_one};

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    if let Ok(preface) = futures::executor::block_on(read_preface(&mut reader)) {
        assert!(data.starts_with(&preface));
    }

    let mut request = http::Request::builder().method("GET").uri("/");
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(&line[..colon]),
            http::header::HeaderValue::from_bytes(&line[colon + 1..]),
        ) {
            request = request.header(name, value);
        }
    }
    let Ok(request) = request.body(()) else {
        return;
    };
    let frames = stream_one(&request);
    let mut rest = &frames[..];
    let mut first = true;
    while !rest.is_empty() {
        assert!(rest.len() >= 9);
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        assert!(length <= 16_384 && rest.len() >= 9 + length);
        assert_eq!(rest[3], if first { 0x1 } else { 0x9 });
        assert_eq!(&rest[5..9], &[0, 0, 0, 1]);
        let end_headers = rest[4] & 0x4 != 0;
        rest = &rest[9 + length..];
        assert_eq!(end_headers, rest.is_empty());
        first = false;
    }
});
