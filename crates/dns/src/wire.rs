//! The DNS wire format, as much as a responder for A/AAAA needs (RFC 1035,
//! RFC 3596): one question in, answers out.

use std::net::IpAddr;

/// A record type asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Anything else, by number; answered with no data.
    Other(u16),
}

impl RecordType {
    fn from_u16(value: u16) -> Self {
        match value {
            1 => Self::A,
            28 => Self::Aaaa,
            other => Self::Other(other),
        }
    }
}

/// Response codes the responder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseCode {
    /// The name exists (answers may be empty).
    NoError = 0,
    /// The name does not exist.
    NxDomain = 3,
    /// Not ours to answer.
    Refused = 5,
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Transaction id.
    pub id: u16,
    /// Recursion desired, echoed back.
    pub recursion_desired: bool,
    /// The name, dotted, without the trailing dot.
    pub name: String,
    /// The type asked for.
    pub record_type: RecordType,
    /// The question exactly as received (name, type, class), echoed back.
    question: Vec<u8>,
}

/// Why a datagram is not an answerable query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than its own headers say.
    #[error("truncated message")]
    Truncated,
    /// A response, or a query with other than one question.
    #[error("not a single-question query")]
    NotAQuery,
    /// A label longer than 63 or a compression pointer in a question.
    #[error("malformed name")]
    BadName,
}

/// Parses a query datagram.
pub fn parse_query(message: &[u8]) -> Result<Query, WireError> {
    if message.len() < 12 {
        return Err(WireError::Truncated);
    }
    let flags = u16::from_be_bytes([message[2], message[3]]);
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0x0f;
    let questions = u16::from_be_bytes([message[4], message[5]]);
    if is_response || opcode != 0 || questions != 1 {
        return Err(WireError::NotAQuery);
    }
    let mut offset = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*message.get(offset).ok_or(WireError::Truncated)?);
        offset += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return Err(WireError::BadName);
        }
        let label = message
            .get(offset..offset + len)
            .ok_or(WireError::Truncated)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        offset += len;
    }
    let tail = message
        .get(offset..offset + 4)
        .ok_or(WireError::Truncated)?;
    let record_type = RecordType::from_u16(u16::from_be_bytes([tail[0], tail[1]]));
    Ok(Query {
        id: u16::from_be_bytes([message[0], message[1]]),
        recursion_desired: flags & 0x0100 != 0,
        name: labels.join("."),
        record_type,
        question: message[12..offset + 4].to_vec(),
    })
}

/// Builds the response to `query` with `code` and one record per address.
pub fn answer(query: &Query, code: ResponseCode, addresses: &[IpAddr]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + query.question.len() + addresses.len() * 28);
    out.extend_from_slice(&query.id.to_be_bytes());
    // QR=1, AA=1, RD echoed, RA=0.
    let flags: u16 =
        0x8000 | 0x0400 | if query.recursion_desired { 0x0100 } else { 0 } | code as u16;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&query.question);
    for address in addresses {
        // A pointer to the question's name at offset 12.
        out.extend_from_slice(&[0xc0, 12]);
        let (record_type, data): (u16, Vec<u8>) = match address {
            IpAddr::V4(v4) => (1, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28, v6.octets().to_vec()),
        };
        out.extend_from_slice(&record_type.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&crate::TTL_SECONDS.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as a stub resolver sends it.
    pub(crate) fn query_bytes(id: u16, name: &str, record_type: u16) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&record_type.to_be_bytes());
        q.extend_from_slice(&1u16.to_be_bytes());
        q
    }

    #[test]
    fn parses_a_query() {
        let q = parse_query(&query_bytes(7, "a.b.cluster.local", 28)).expect("query");
        assert_eq!(
            (q.id, q.name.as_str(), q.record_type),
            (7, "a.b.cluster.local", RecordType::Aaaa)
        );
        assert!(q.recursion_desired);
    }

    #[test]
    fn rejects_malformed_input() {
        let good = query_bytes(7, "a.b", 1);
        for cut in 0..good.len() {
            assert!(parse_query(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(parse_query(&response), Err(WireError::NotAQuery));
        let mut long_label = good;
        long_label[12] = 64;
        assert!(parse_query(&long_label).is_err());
    }

    #[test]
    fn answers_echo_the_question() {
        let q = parse_query(&query_bytes(9, "x.cluster.local", 28)).expect("query");
        let r = answer(&q, ResponseCode::NoError, &["fd00::1".parse().expect("ip")]);
        assert_eq!(&r[0..2], &[0, 9]);
        assert_eq!(r[2] & 0x80, 0x80);
        assert_eq!(&r[12..12 + q.question.len()], q.question.as_slice());
        assert_eq!(r.len(), 12 + q.question.len() + 2 + 10 + 16);
    }
}
