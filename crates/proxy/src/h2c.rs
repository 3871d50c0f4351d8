//! HTTP/2 over cleartext by upgrade (`Upgrade: h2c`, RFC 7540 §3.2).
//!
//! hyper's server has no h2c upgrade, so the proxy does it around hyper: it answers the
//! HTTP/1.1 upgrade request with `101 Switching Protocols`, reads the client's connection
//! preface and first SETTINGS frame, and then puts them back in front of the stream followed
//! by the upgrade request re-encoded as a HEADERS frame on stream 1, the stream RFC 7540
//! assigns to it. hyper's HTTP/2 server then sees an ordinary HTTP/2 connection whose first
//! request is the upgrade request, so policy, events and metrics treat it like any other
//! HTTP/2 request and the response goes out on stream 1 as the client expects.
//!
//! The replayed header block uses only HPACK literals without indexing, so it leaves the
//! server's decoding table exactly as the client's encoder assumes it to be.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The client connection preface every HTTP/2 connection starts with.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The header carrying the client's base64url-encoded SETTINGS payload.
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Frame types and flags used here (RFC 9113 §6).
const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// The frame payload size every HTTP/2 endpoint accepts before its settings are known.
const DEFAULT_MAX_FRAME_SIZE: usize = 16_384;

/// Why the bytes after `101 Switching Protocols` are not the start of an HTTP/2 connection.
#[derive(Debug, thiserror::Error)]
pub enum PrefaceError {
    /// Reading from the client failed or it closed the connection.
    #[error("reading the HTTP/2 preface: {0}")]
    Io(#[from] std::io::Error),
    /// The first 24 bytes are not `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
    #[error("the client did not send the HTTP/2 connection preface")]
    BadPreface,
    /// The first frame is not a SETTINGS frame on stream 0, or its length is not a multiple
    /// of 6 or exceeds the default frame size.
    #[error("the first HTTP/2 frame is not a valid SETTINGS frame")]
    BadSettings,
}

/// Whether `request` asks to upgrade to h2c in a way this proxy honours: HTTP/1.1, an
/// `Upgrade` list naming `h2c`, `Connection` naming both `Upgrade` and `HTTP2-Settings`,
/// exactly one well-formed `HTTP2-Settings` header, and no request body. A request with a
/// body is served as HTTP/1.1 instead (RFC 9110 lets a server ignore `Upgrade`): its body
/// would have to be replayed as stream 1 data before flow control is set up.
pub fn is_upgrade_request<B: hyper::body::Body>(request: &Request<B>) -> bool {
    let headers = request.headers();
    // Cheap checks first: this runs for every HTTP/1.1 request.
    if request.version() != Version::HTTP_11
        || !headers.contains_key(header::UPGRADE)
        || !request.body().is_end_stream()
    {
        return false;
    }
    let tokens = |name: &HeaderName| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    let upgrade = tokens(&header::UPGRADE);
    let connection = tokens(&header::CONNECTION);
    let mut settings = headers.get_all(HTTP2_SETTINGS).iter();
    let one_valid_settings = match (settings.next(), settings.next()) {
        (Some(value), None) => is_settings_payload(value.as_bytes()),
        _ => false,
    };
    upgrade.iter().any(|t| t == "h2c")
        && connection.iter().any(|t| t == "upgrade")
        && connection.iter().any(|t| t == "http2-settings")
        && one_valid_settings
}

/// Whether `value` is base64url (padding optional) of a whole number of 6-byte settings.
fn is_settings_payload(value: &[u8]) -> bool {
    let data = value
        .iter()
        .position(|b| *b == b'=')
        .map_or(value, |end| &value[..end]);
    let padding_ok = value[data.len()..].iter().all(|b| *b == b'=') && value.len() - data.len() < 3;
    let alphabet_ok = data
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    // Four characters carry three bytes; a lone trailing character carries none.
    let decoded = data.len() / 4 * 3 + (data.len() % 4).saturating_sub(1);
    padding_ok && alphabet_ok && data.len() % 4 != 1 && decoded % 6 == 0
}

/// The `101 Switching Protocols` answer that accepts the upgrade.
pub fn switching_protocols<B: Default>() -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
    response
}

/// Reads the client's connection preface and its first SETTINGS frame, returned whole so
/// they can be put back in front of the stream.
pub async fn read_preface<R: AsyncRead + Unpin>(io: &mut R) -> Result<BytesMut, PrefaceError> {
    let mut buf = BytesMut::with_capacity(PREFACE.len() + 9 + 64);
    buf.resize(PREFACE.len() + 9, 0);
    io.read_exact(&mut buf).await?;
    if &buf[..PREFACE.len()] != PREFACE {
        return Err(PrefaceError::BadPreface);
    }
    let frame = &buf[PREFACE.len()..];
    let length = usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
    let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
    if frame[3] != FRAME_SETTINGS
        || frame[4] & FLAG_ACK != 0
        || stream != 0
        || length % 6 != 0
        || length > DEFAULT_MAX_FRAME_SIZE
    {
        return Err(PrefaceError::BadSettings);
    }
    let start = buf.len();
    buf.resize(start + length, 0);
    io.read_exact(&mut buf[start..]).await?;
    Ok(buf)
}

/// The upgrade request as the HTTP/2 frames that open stream 1: a HEADERS frame (plus
/// CONTINUATION frames for a large header block) ending the stream, since the request has
/// no body. Connection-specific headers are left out, `Host` becomes `:authority`.
pub fn stream_one<B>(request: &Request<B>) -> Bytes {
    let uri = request.uri();
    let headers = request.headers();
    let mut block = BytesMut::new();
    literal(&mut block, b":method", request.method().as_str().as_bytes());
    literal(&mut block, b":scheme", b"http");
    let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
    if let Some(authority) = host.or_else(|| uri.authority().map(|a| a.as_str().as_bytes())) {
        literal(&mut block, b":authority", authority);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    literal(&mut block, b":path", path.as_bytes());
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in headers {
        let connection_specific = matches!(
            name.as_str(),
            "host"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "transfer-encoding"
                | "upgrade"
                | "http2-settings"
        ) || named.iter().any(|n| n == name.as_str());
        // HTTP/2 allows TE only with the value `trailers`.
        let bad_te = name == header::TE && !value.as_bytes().eq_ignore_ascii_case(b"trailers");
        if !connection_specific && !bad_te {
            literal(&mut block, name.as_str().as_bytes(), value.as_bytes());
        }
    }

    let mut frames = BytesMut::with_capacity(block.len() + 9 * (1 + block.len() / 16_384));
    let mut chunks = block.chunks(DEFAULT_MAX_FRAME_SIZE).peekable();
    let mut kind = FRAME_HEADERS;
    let mut flags = FLAG_END_STREAM;
    // An empty block still needs its HEADERS frame.
    let first = chunks.next().unwrap_or_default();
    let mut chunk = first;
    loop {
        let last = chunks.peek().is_none();
        let end_headers = if last { FLAG_END_HEADERS } else { 0 };
        frame_header(&mut frames, chunk.len(), kind, flags | end_headers, 1);
        frames.extend_from_slice(chunk);
        match chunks.next() {
            Some(next) => chunk = next,
            None => break,
        }
        kind = FRAME_CONTINUATION;
        flags = 0;
    }
    frames.freeze()
}

fn frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, stream: u32) {
    // Callers never exceed DEFAULT_MAX_FRAME_SIZE, well inside the 24-bit length.
    let length = u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&length[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A header field as an HPACK literal without indexing and with a literal name
/// (RFC 7541 §6.2.2), strings without Huffman coding.
fn literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_u8(0x00);
    string(out, name);
    string(out, value);
}

fn string(out: &mut BytesMut, data: &[u8]) {
    integer(out, 0x00, 7, data.len());
    out.extend_from_slice(data);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn integer(out: &mut BytesMut, high_bits: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        // value < max ≤ 127, so the cast is exact.
        out.put_u8(high_bits | value as u8);
        return;
    }
    out.put_u8(high_bits | max as u8);
    value -= max;
    while value >= 128 {
        out.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<http_body_util::Empty<Bytes>> {
        let mut builder = Request::get("/a?b=c");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(http_body_util::Empty::new()).unwrap()
    }

    const UPGRADE: [(&str, &str); 4] = [
        ("host", "deathstar"),
        ("connection", "Upgrade, HTTP2-Settings"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
    ];

    #[test]
    fn recognises_a_complete_upgrade_request_only() {
        assert!(is_upgrade_request(&request(&UPGRADE)));
        // Without HTTP2-Settings in Connection, or twice, or malformed: no upgrade.
        let mut missing = UPGRADE;
        missing[1] = ("connection", "Upgrade");
        assert!(!is_upgrade_request(&request(&missing)));
        let mut twice = UPGRADE.to_vec();
        twice.push(("http2-settings", "AAMAAABk"));
        assert!(!is_upgrade_request(&request(&twice)));
        let mut malformed = UPGRADE;
        malformed[3] = ("http2-settings", "AAMAA+Bk");
        assert!(!is_upgrade_request(&request(&malformed)));
        let mut websocket = UPGRADE;
        websocket[2] = ("upgrade", "websocket");
        assert!(!is_upgrade_request(&request(&websocket)));
        let mut http10 = request(&UPGRADE);
        *http10.version_mut() = Version::HTTP_10;
        assert!(!is_upgrade_request(&http10));
    }

    #[test]
    fn settings_payload_lengths() {
        assert!(is_settings_payload(b""));
        assert!(is_settings_payload(b"AAMAAABk"));
        assert!(is_settings_payload(b"AAMAAABkAARAAAAAAAIAAAAA"));
        assert!(!is_settings_payload(b"AAMAAA"));
        assert!(!is_settings_payload(b"AAMAAABkA"));
        assert!(!is_settings_payload(b"AAMAAABk==="));
    }

    #[test]
    fn hpack_integers_follow_rfc_7541_examples() {
        let mut out = BytesMut::new();
        integer(&mut out, 0, 5, 10);
        assert_eq!(&out[..], &[0b0000_1010]);
        let mut out = BytesMut::new();
        integer(&mut out, 0, 5, 1337);
        assert_eq!(&out[..], &[0b0001_1111, 0b1001_1010, 0b0000_1010]);
        let mut out = BytesMut::new();
        integer(&mut out, 0, 7, 127);
        assert_eq!(&out[..], &[0x7f, 0x00]);
    }

    #[test]
    fn stream_one_leaves_out_connection_headers_and_splits_large_blocks() {
        let mut headers = UPGRADE.to_vec();
        headers.push(("te", "gzip"));
        let big = "v".repeat(40_000);
        headers.push(("x-big", &big));
        let frames = stream_one(&request(&headers));
        let mut rest = &frames[..];
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let length =
                usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            seen.push((rest[3], rest[4], length));
            assert_eq!(&rest[5..9], &[0, 0, 0, 1]);
            rest = &rest[9 + length..];
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(seen[0].0, FRAME_HEADERS);
        assert_eq!(seen[0].1, FLAG_END_STREAM);
        assert_eq!(seen[1], (FRAME_CONTINUATION, 0, DEFAULT_MAX_FRAME_SIZE));
        assert_eq!(seen[2].0, FRAME_CONTINUATION);
        assert_eq!(seen[2].1, FLAG_END_HEADERS);
        let text = String::from_utf8_lossy(&frames);
        for absent in [
            "connection",
            "upgrade",
            "http2-settings",
            "\x02te",
            "\x04host",
        ] {
            assert!(!text.contains(absent), "{absent} must not be replayed");
        }
        for present in [":authority", "deathstar", ":path", "/a?b=c", "x-big"] {
            assert!(text.contains(present), "{present} must be replayed");
        }
    }
}
