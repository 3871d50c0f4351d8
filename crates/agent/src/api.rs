//! The agent's local API: its types live in `myelin-api` (callers depend on
//! that, not on the agent); this module adds what only the agent needs.

pub use myelin_api::agent::*;

/// The pod's MAC address as the datapath takes it.
pub trait EndpointMac {
    /// [`EndpointSpec::mac`] as bytes; `None` when absent, malformed or all zero.
    fn mac_address(&self) -> Option<[u8; 6]>;
}

impl EndpointMac for EndpointSpec {
    fn mac_address(&self) -> Option<[u8; 6]> {
        myelin_datapath::parse_mac(self.mac.as_deref()?).filter(|mac| *mac != [0; 6])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_or_are_ignored() {
        let mut spec: EndpointSpec = serde_json::from_str(
            r#"{"namespace":"default","pod":"xwing","labels":{},"ifname":"ml1",
                "ipv4":"10.244.1.5","ipv6":null,"ready":true}"#,
        )
        .expect("a spec without a MAC (older callers, stored state)");
        assert_eq!(spec.mac_address(), None);
        spec.mac = Some("0a:58:0A:f4:01:05".into());
        assert_eq!(
            spec.mac_address(),
            Some([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x05])
        );
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:05:06",
            "0a:58:0a:f4:01:5",
            "00:00:00:00:00:00",
        ] {
            spec.mac = Some(bad.into());
            assert_eq!(spec.mac_address(), None, "{bad}");
        }
    }
}
