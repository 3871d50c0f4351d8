//! The DNS wire format, read and written with `hickory-proto`: one question
//! in, A/AAAA answers out (RFC 1035, RFC 3596), EDNS(0) echoed (RFC 6891).
//!
//! The header is decoded on its own first, so that a query whose body is
//! broken can still be answered FORMERR under its own id, and so that a
//! header claiming thousands of questions is refused before anything is
//! allocated for them.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Header, Message, MessageType, Metadata, OpCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable as _, BinDecoder, DecodeError};

pub use hickory_proto::op::ResponseCode;

/// Largest UDP reply the responder sends to an EDNS client, whatever larger
/// size it offers: the DNS flag day 2020 value, which avoids IP fragmentation.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// Largest UDP reply to a client without EDNS (RFC 1035 §2.3.4).
const CLASSIC_UDP_PAYLOAD: u16 = 512;

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

impl From<hickory_proto::rr::RecordType> for RecordType {
    fn from(value: hickory_proto::rr::RecordType) -> Self {
        match value {
            hickory_proto::rr::RecordType::A => Self::A,
            hickory_proto::rr::RecordType::AAAA => Self::Aaaa,
            other => Self::Other(u16::from(other)),
        }
    }
}

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Transaction id.
    pub id: u16,
    /// Recursion desired, echoed back.
    pub recursion_desired: bool,
    /// The name, dotted, without the trailing dot, in the case it was sent.
    pub name: String,
    /// The type asked for.
    pub record_type: RecordType,
    /// The request's header fields, the base of the response's.
    metadata: Metadata,
    /// The question as received, echoed back (name in its original case).
    question: hickory_proto::op::Query,
    /// The request's EDNS, when it had an OPT record.
    edns: Option<Edns>,
}

impl Query {
    /// Whether the question is of class IN, the only one the cluster's names live in.
    pub fn is_internet_class(&self) -> bool {
        self.question.query_class() == DNSClass::IN
    }

    /// The largest UDP reply this client takes: its EDNS payload size (at
    /// least 512, at most [`MAX_UDP_PAYLOAD`]), or 512 without EDNS.
    pub fn max_udp_payload(&self) -> u16 {
        self.edns.as_ref().map_or(CLASSIC_UDP_PAYLOAD, |edns| {
            edns.max_payload()
                .clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
        })
    }
}

/// Why a datagram is not an answerable query.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WireError {
    /// Shorter than the 12-byte header: nothing to answer to.
    #[error("truncated message: no complete DNS header")]
    Truncated,
    /// A response: never answered, so that two responders cannot loop.
    #[error("not a query: the response bit is set")]
    NotAQuery,
    /// An opcode other than QUERY (NOTIMP).
    #[error("query {} has opcode {}, only QUERY is served", .metadata.id, .metadata.op_code)]
    UnsupportedOpcode {
        /// The request's header.
        metadata: Metadata,
    },
    /// Other than exactly one question (FORMERR, RFC 9619).
    #[error("query {} has {count} questions, one expected", .metadata.id)]
    QuestionCount {
        /// The request's header.
        metadata: Metadata,
        /// The question count the header claims.
        count: u16,
    },
    /// The body does not decode: a truncated record, a bad name, a
    /// compression loop, a duplicate OPT record (FORMERR).
    #[error("query {} is malformed: {source}", .metadata.id)]
    Malformed {
        /// The request's header.
        metadata: Metadata,
        /// What the decoder found wrong.
        source: DecodeError,
    },
    /// An EDNS version other than 0 (BADVERS, RFC 6891 §6.1.3).
    #[error("query {} asks for EDNS version {version}, only 0 is served", .metadata.id)]
    UnsupportedEdnsVersion {
        /// The request's header.
        metadata: Metadata,
        /// The version asked for.
        version: u8,
    },
    /// A reply could not be encoded.
    #[error("reply not encodable: {0}")]
    Encode(String),
}

impl WireError {
    /// The response code a client gets for this error, with the header it
    /// answers to; `None` when the datagram is dropped unanswered.
    fn reply_code(&self) -> Option<(&Metadata, ResponseCode)> {
        match self {
            Self::Truncated | Self::NotAQuery | Self::Encode(_) => None,
            Self::UnsupportedOpcode { metadata } => Some((metadata, ResponseCode::NotImp)),
            Self::QuestionCount { metadata, .. } | Self::Malformed { metadata, .. } => {
                Some((metadata, ResponseCode::FormErr))
            }
            Self::UnsupportedEdnsVersion { metadata, .. } => {
                Some((metadata, ResponseCode::BADVERS))
            }
        }
    }
}

/// Parses a query datagram.
pub fn parse_query(message: &[u8]) -> Result<Query, WireError> {
    let header = Header::read(&mut BinDecoder::new(message)).map_err(|_| WireError::Truncated)?;
    let metadata = header.metadata;
    if metadata.message_type == MessageType::Response {
        return Err(WireError::NotAQuery);
    }
    if metadata.op_code != OpCode::Query {
        return Err(WireError::UnsupportedOpcode { metadata });
    }
    if header.counts.queries != 1 {
        return Err(WireError::QuestionCount {
            metadata,
            count: header.counts.queries,
        });
    }
    let mut parsed =
        Message::from_vec(message).map_err(|source| WireError::Malformed { metadata, source })?;
    if let Some(edns) = &parsed.edns
        && edns.version() != 0
    {
        return Err(WireError::UnsupportedEdnsVersion {
            metadata,
            version: edns.version(),
        });
    }
    let question = parsed
        .queries
        .pop()
        .ok_or(WireError::QuestionCount { metadata, count: 0 })?;
    Ok(Query {
        id: metadata.id,
        recursion_desired: metadata.recursion_desired,
        name: dotted(question.name()),
        record_type: question.query_type().into(),
        metadata,
        question,
        edns: parsed.edns,
    })
}

/// A name as dotted text without the trailing dot; bytes that are not UTF-8
/// are replaced, which cannot match a cluster name.
fn dotted(name: &hickory_proto::rr::Name) -> String {
    name.iter()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

/// Builds the UDP response to `query` with `code` and one record per
/// address (TTL [`crate::TTL_SECONDS`]). The question is echoed, the answer
/// is authoritative, an EDNS query gets an OPT record back, and an answer
/// larger than the client takes ([`Query::max_udp_payload`]) is sent without
/// records and with the TC bit, so the client may retry over TCP.
pub fn answer(
    query: &Query,
    code: ResponseCode,
    addresses: &[IpAddr],
) -> Result<Vec<u8>, WireError> {
    let mut message = response_to(&query.metadata, code);
    message.add_query(query.question.clone());
    let name = query.question.name().clone();
    message.add_answers(addresses.iter().map(|address| {
        let data = match address {
            IpAddr::V4(v4) => RData::A(A(*v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
        };
        Record::from_rdata(name.clone(), crate::TTL_SECONDS, data)
    }));
    if query.edns.is_some() {
        message.set_edns(server_edns());
    }
    let bytes = encode(&message)?;
    if bytes.len() <= usize::from(query.max_udp_payload()) {
        return Ok(bytes);
    }
    encode(&message.truncate())
}

/// The reply to a datagram that failed to parse: FORMERR, NOTIMP or BADVERS
/// under the request's id (no question: it may be what was broken). `None`
/// when the datagram is to be dropped.
pub fn error_reply(error: &WireError) -> Option<Result<Vec<u8>, WireError>> {
    let (metadata, code) = error.reply_code()?;
    let mut message = response_to(metadata, code);
    // BADVERS needs the OPT record's extended code bits (hickory fills them
    // in), and the client learns from it which version is served (RFC 6891 §6.1.3).
    if code == ResponseCode::BADVERS {
        message.set_edns(server_edns());
    }
    Some(encode(&message))
}

/// A response header for `request`: same id and opcode, RD and CD echoed,
/// authoritative, no recursion offered.
fn response_to(request: &Metadata, code: ResponseCode) -> Message {
    let mut message = Message::response(request.id, request.op_code);
    message.metadata = Metadata::response_from_request(request);
    message.metadata.authoritative = true;
    message.metadata.response_code = code;
    message
}

/// The OPT record the responder sends: version 0, its payload size, no DNSSEC.
fn server_edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(MAX_UDP_PAYLOAD).set_version(0);
    edns
}

fn encode(message: &Message) -> Result<Vec<u8>, WireError> {
    message
        .to_vec()
        .map_err(|e| WireError::Encode(e.to_string()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as a stub resolver sends it, built by hand so the parser is
    /// checked against bytes it did not write itself.
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

    /// `query` with an OPT record (payload size `payload`, EDNS `version`) appended.
    pub(crate) fn with_edns(mut query: Vec<u8>, payload: u16, version: u8) -> Vec<u8> {
        query[11] += 1; // ARCOUNT
        query.push(0); // root name
        query.extend_from_slice(&41u16.to_be_bytes());
        query.extend_from_slice(&payload.to_be_bytes());
        query.extend_from_slice(&[0, version, 0, 0]);
        query.extend_from_slice(&0u16.to_be_bytes());
        query
    }

    fn decode(reply: &[u8]) -> Message {
        Message::from_vec(reply).expect("the reply decodes")
    }

    #[test]
    fn parses_a_query() {
        let q = parse_query(&query_bytes(7, "a.b.cluster.local", 28)).expect("query");
        assert_eq!(
            (q.id, q.name.as_str(), q.record_type),
            (7, "a.b.cluster.local", RecordType::Aaaa)
        );
        assert!(q.recursion_desired);
        assert!(q.is_internet_class());
        assert_eq!(q.max_udp_payload(), 512);
    }

    #[test]
    fn rejects_malformed_input() {
        let good = query_bytes(7, "a.b", 1);
        for cut in 0..good.len() {
            assert!(parse_query(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut response = good.clone();
        response[2] |= 0x80;
        assert!(matches!(parse_query(&response), Err(WireError::NotAQuery)));
        let mut long_label = good;
        long_label[12] = 64;
        assert!(parse_query(&long_label).is_err());
    }

    #[test]
    fn answers_echo_the_question() {
        let q = parse_query(&query_bytes(9, "X.cluster.local", 28)).expect("query");
        let r =
            answer(&q, ResponseCode::NoError, &["fd00::1".parse().expect("ip")]).expect("encodes");
        let question_len = "X.cluster.local".len() + 2 + 4;
        assert_eq!(&r[0..2], &[0, 9]);
        assert_eq!(r[2] & 0x80, 0x80);
        assert_eq!(
            &r[12..12 + question_len],
            &query_bytes(9, "X.cluster.local", 28)[12..]
        );
        // The answer's name is a compression pointer to the question.
        assert_eq!(r.len(), 12 + question_len + 2 + 10 + 16);
        let reply = decode(&r);
        assert!(reply.metadata.authoritative && reply.metadata.recursion_desired);
        assert_eq!(reply.answers[0].ttl, crate::TTL_SECONDS);
        assert_eq!(reply.answers[0].name, *q.question.name());
    }

    #[test]
    fn edns_is_echoed_and_bounds_the_reply() {
        let q =
            parse_query(&with_edns(query_bytes(3, "a.cluster.local", 1), 4096, 0)).expect("query");
        assert_eq!(q.max_udp_payload(), MAX_UDP_PAYLOAD);
        let reply = decode(&answer(&q, ResponseCode::NoError, &[]).expect("encodes"));
        let edns = reply.edns.expect("OPT in the reply");
        assert_eq!((edns.version(), edns.max_payload()), (0, MAX_UDP_PAYLOAD));

        let tiny =
            parse_query(&with_edns(query_bytes(3, "a.cluster.local", 1), 100, 0)).expect("query");
        assert_eq!(tiny.max_udp_payload(), 512, "sizes below 512 count as 512");
    }

    #[test]
    fn an_answer_too_large_for_the_client_is_truncated() {
        let q = parse_query(&query_bytes(4, "many.cluster.local", 1)).expect("query");
        let addresses: Vec<IpAddr> = (0..40u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let r = answer(&q, ResponseCode::NoError, &addresses).expect("encodes");
        assert!(r.len() <= 512);
        let reply = decode(&r);
        assert!(reply.metadata.truncation);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.queries.len(), 1);

        let roomy = parse_query(&with_edns(query_bytes(4, "many.cluster.local", 1), 1232, 0))
            .expect("query");
        let reply = decode(&answer(&roomy, ResponseCode::NoError, &addresses).expect("encodes"));
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), 40);
    }

    fn error_code(datagram: &[u8]) -> Option<(u16, ResponseCode)> {
        let error = parse_query(datagram).expect_err("not answerable");
        let reply = decode(&error_reply(&error)?.expect("encodes"));
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        Some((reply.metadata.id, reply.metadata.response_code))
    }

    #[test]
    fn a_header_without_a_usable_body_gets_formerr_under_its_id() {
        let good = query_bytes(0x4242, "a.cluster.local", 1);
        for cut in 12..good.len() {
            assert_eq!(
                error_code(&good[..cut]),
                Some((0x4242, ResponseCode::FormErr)),
                "cut at {cut}"
            );
        }
        for cut in 0..12 {
            assert_eq!(error_code(&good[..cut]), None, "cut at {cut}");
        }
        // An answer count the body does not hold.
        let mut claims_answers = good.clone();
        claims_answers[7] = 3;
        assert_eq!(
            error_code(&claims_answers),
            Some((0x4242, ResponseCode::FormErr))
        );
    }

    #[test]
    fn compression_loops_are_formerr() {
        let mut q = query_bytes(5, "a", 1);
        // The name at 12 is a pointer to itself, then one pointing forward.
        for name in [[0xc0, 12], [0xc0, 14]] {
            q.truncate(12);
            q.extend_from_slice(&name);
            q.extend_from_slice(&[0, 1, 0, 1]);
            assert_eq!(error_code(&q), Some((5, ResponseCode::FormErr)));
        }
        // Two labels whose pointers point at each other.
        let mut mutual = query_bytes(5, "a", 1);
        mutual.truncate(12);
        mutual.extend_from_slice(&[1, b'x', 0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(error_code(&mutual), Some((5, ResponseCode::FormErr)));
    }

    #[test]
    fn names_up_to_the_maximum_length_parse_and_longer_ones_do_not() {
        // 63 + 63 + 63 + 61 bytes of labels and 4 length bytes + the root = 255.
        let longest = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        let q = parse_query(&query_bytes(6, &longest, 1)).expect("a 255-byte name parses");
        assert_eq!(q.name, longest);
        let reply = decode(&answer(&q, ResponseCode::NXDomain, &[]).expect("encodes"));
        assert_eq!(reply.queries[0].name().to_ascii().len(), 254);

        let too_long = format!("{longest}x");
        assert_eq!(
            error_code(&query_bytes(6, &too_long, 1)),
            Some((6, ResponseCode::FormErr))
        );
    }

    #[test]
    fn other_than_one_question_is_formerr() {
        for count in [0u16, 2, u16::MAX] {
            let mut q = query_bytes(8, "a.cluster.local", 1);
            q[4..6].copy_from_slice(&count.to_be_bytes());
            assert!(matches!(
                parse_query(&q),
                Err(WireError::QuestionCount { count: c, .. }) if c == count
            ));
            assert_eq!(error_code(&q), Some((8, ResponseCode::FormErr)));
        }
    }

    #[test]
    fn other_opcodes_are_not_implemented_and_responses_dropped() {
        let mut notify = query_bytes(10, "a.cluster.local", 1);
        notify[2] |= 4 << 3;
        assert_eq!(error_code(&notify), Some((10, ResponseCode::NotImp)));
        let mut response = query_bytes(10, "a.cluster.local", 1);
        response[2] |= 0x80;
        assert_eq!(error_code(&response), None);
    }

    #[test]
    fn edns_versions_other_than_zero_get_badvers() {
        let q = with_edns(query_bytes(11, "a.cluster.local", 1), 1232, 1);
        let error = parse_query(&q).expect_err("version 1");
        let reply = decode(&error_reply(&error).expect("answered").expect("encodes"));
        // Code 16 is BADVERS in an OPT record; hickory names it after BADSIG on the way in.
        assert_eq!(u16::from(reply.metadata.response_code), 16);
        assert_eq!(reply.edns.expect("OPT in the reply").version(), 0);

        let two_opts = with_edns(with_edns(query_bytes(11, "a", 1), 1232, 0), 1232, 0);
        assert_eq!(error_code(&two_opts), Some((11, ResponseCode::FormErr)));
    }
}
