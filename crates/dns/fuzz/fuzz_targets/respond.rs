//! The responder's parse-and-answer path on arbitrary datagrams: any input may
//! be dropped or answered with an error code, but nothing panics, and every
//! reply is a well-formed response to the datagram's id that fits in one UDP
//! reply of the size the responder advertises.
#![no_main]

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use myelin_dns::{MAX_UDP_PAYLOAD, Zone, respond};
use std::sync::OnceLock;

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut zone = Zone::default();
        let name = "deathstar.default.svc.cluster.local";
        zone.insert(name, "10.96.0.10".parse().expect("literal address"));
        zone.insert(name, "fd00:10:96::a".parse().expect("literal address"));
        for i in 0..60u8 {
            zone.insert("many.default.svc.cluster.local", [10, 0, 1, i].into());
        }
        zone
    })
}

fuzz_target!(|data: &[u8]| {
    let Some(reply) = respond(zone(), data) else {
        return;
    };
    assert!(reply.len() <= usize::from(MAX_UDP_PAYLOAD), "reply too large");
    let message = Message::from_vec(&reply).expect("the responder's reply decodes");
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert_eq!(message.metadata.id.to_be_bytes(), [data[0], data[1]]);
    assert!(message.queries.len() <= 1);
});
