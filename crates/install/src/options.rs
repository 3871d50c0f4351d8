//! What a user chooses for `myelin install`, and the checks that refuse a value the
//! API server (or the agent) would refuse later, naming the option.

use std::fmt;
use std::str::FromStr;

/// The namespace the agent's objects go to unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "myelin-system";

/// The cluster name unless told otherwise (the agent's `--cluster-name` default).
pub const DEFAULT_CLUSTER_NAME: &str = "default";

/// The smallest pod MTU accepted: IPv6's minimum link MTU (RFC 8200).
pub const MIN_POD_MTU: u32 = 1280;

/// The largest pod MTU accepted: a jumbo frame.
pub const MAX_POD_MTU: u32 = 9216;

/// The image the DaemonSet runs unless told otherwise: one built locally for this
/// version (`localhost/` is what buildah and podman name local images).
pub fn default_image() -> String {
    format!("localhost/myelin:{}", env!("CARGO_PKG_VERSION"))
}

/// What `myelin install` was asked for, unchecked: [`crate::manifests`] checks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The namespace of the ServiceAccount, ConfigMap and DaemonSet (`--namespace`).
    pub namespace: String,
    /// The container image of the agent, proxy and CNI installer (`--image`).
    pub image: String,
    /// The cluster's name (`--cluster-name`).
    pub cluster_name: String,
    /// How packets to other nodes' pods travel: `tunnel` or `native` (`--routing`).
    pub routing: String,
    /// The MTU of pods' interfaces; without it the agent derives it from the routing
    /// mode (`--pod-mtu`).
    pub pod_mtu: Option<u32>,
    /// Whether to print Cilium's policy CRDs too, for clusters without Cilium
    /// (`--with-cilium-crds`).
    pub with_cilium_crds: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE.to_owned(),
            image: default_image(),
            cluster_name: DEFAULT_CLUSTER_NAME.to_owned(),
            routing: Routing::Tunnel.to_string(),
            pod_mtu: None,
            with_cilium_crds: false,
        }
    }
}

/// How packets to other nodes' pods travel (the agent's `--routing`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// VXLAN between nodes; the agent routes other nodes' pod CIDRs into it.
    Tunnel,
    /// The nodes' own routes carry pod traffic.
    Native,
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tunnel => "tunnel",
            Self::Native => "native",
        })
    }
}

impl FromStr for Routing {
    type Err = Error;

    fn from_str(value: &str) -> Result<Self, Error> {
        match value {
            "tunnel" => Ok(Self::Tunnel),
            "native" => Ok(Self::Native),
            _ => Err(Error::invalid(
                "--routing",
                value,
                "expected `tunnel` or `native`",
            )),
        }
    }
}

/// Options after their checks: what the manifests are built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// A valid namespace name.
    pub namespace: String,
    /// A non-empty image reference without whitespace.
    pub image: String,
    /// A valid cluster name.
    pub cluster_name: String,
    /// The routing mode.
    pub routing: Routing,
    /// The pod MTU, when one was given, within [`MIN_POD_MTU`]..=[`MAX_POD_MTU`].
    pub pod_mtu: Option<u32>,
    /// Whether Cilium's policy CRDs are printed.
    pub with_cilium_crds: bool,
}

/// Why `myelin install` refuses its options.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// An option's value the cluster or the agent would not take.
    #[error("invalid value {value:?} for {option}: {reason}")]
    InvalidOption {
        /// The option, as the command line spells it.
        option: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    fn invalid(option: &'static str, value: &str, reason: impl Into<String>) -> Self {
        Self::InvalidOption {
            option,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

impl Options {
    /// Checks every option, the first bad one being the error.
    pub fn check(&self) -> Result<Checked, Error> {
        check_dns_label("--namespace", &self.namespace)?;
        check_dns_label("--cluster-name", &self.cluster_name)?;
        if self.image.is_empty() || self.image.chars().any(char::is_whitespace) {
            return Err(Error::invalid(
                "--image",
                &self.image,
                "an image reference is not empty and has no whitespace",
            ));
        }
        if let Some(mtu) = self.pod_mtu
            && !(MIN_POD_MTU..=MAX_POD_MTU).contains(&mtu)
        {
            return Err(Error::invalid(
                "--pod-mtu",
                &mtu.to_string(),
                format!("expected {MIN_POD_MTU} to {MAX_POD_MTU}"),
            ));
        }
        Ok(Checked {
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            cluster_name: self.cluster_name.clone(),
            routing: self.routing.parse()?,
            pod_mtu: self.pod_mtu,
            with_cilium_crds: self.with_cilium_crds,
        })
    }
}

/// The longest DNS label (RFC 1123), the limit of namespace names.
const MAX_DNS_LABEL: usize = 63;

/// A DNS label as RFC 1123 defines it for Kubernetes names: at most 63 lowercase
/// letters, digits and `-`, starting and ending with a letter or digit.
fn check_dns_label(option: &'static str, value: &str) -> Result<(), Error> {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let reason = if value.is_empty() {
        "it is empty"
    } else if value.len() > MAX_DNS_LABEL {
        "it is longer than 63 characters"
    } else if !value.chars().all(|c| alphanumeric(c) || c == '-') {
        "only lowercase letters, digits and '-' are allowed"
    } else if !value.starts_with(alphanumeric) || !value.ends_with(alphanumeric) {
        "it must start and end with a letter or digit"
    } else {
        return Ok(());
    };
    Err(Error::invalid(
        option,
        value,
        format!("not an RFC 1123 DNS label: {reason}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(change: impl FnOnce(&mut Options)) -> Result<Checked, Error> {
        let mut options = Options::default();
        change(&mut options);
        options.check()
    }

    #[test]
    fn the_defaults_pass() {
        let checked = Options::default().check().expect("defaults are valid");
        assert_eq!(checked.namespace, "myelin-system");
        assert_eq!(checked.routing, Routing::Tunnel);
        assert_eq!(
            checked.image,
            format!("localhost/myelin:{}", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn a_namespace_that_is_no_dns_label_is_refused_by_name_and_value() {
        for bad in [
            "My-Namespace",
            "-lead",
            "trail-",
            "",
            "dots.are.out",
            &"a".repeat(64),
        ] {
            let error = with(|o| o.namespace = bad.to_owned()).expect_err(bad);
            let Error::InvalidOption { option, value, .. } = &error;
            assert_eq!((*option, value.as_str()), ("--namespace", bad));
            let message = error.to_string();
            assert!(message.contains("--namespace"), "{message}");
            assert!(message.contains(&format!("{bad:?}")), "{message}");
        }
        assert!(with(|o| o.namespace = "a".repeat(63)).is_ok());
        assert!(with(|o| o.namespace = "kube-1".into()).is_ok());
    }

    #[test]
    fn a_routing_mode_other_than_tunnel_or_native_is_refused() {
        assert_eq!(
            with(|o| o.routing = "native".into()).map(|c| c.routing),
            Ok(Routing::Native)
        );
        let error = with(|o| o.routing = "direct".into()).expect_err("direct");
        assert_eq!(
            error.to_string(),
            "invalid value \"direct\" for --routing: expected `tunnel` or `native`"
        );
    }

    #[test]
    fn other_bad_values_name_their_option() {
        let option_of = |result: Result<Checked, Error>| match result {
            Err(Error::InvalidOption { option, .. }) => option,
            Ok(_) => "accepted",
        };
        assert_eq!(
            option_of(with(|o| o.cluster_name = "Prod_1".into())),
            "--cluster-name"
        );
        assert_eq!(option_of(with(|o| o.image = "my image".into())), "--image");
        assert_eq!(option_of(with(|o| o.image = String::new())), "--image");
        assert_eq!(option_of(with(|o| o.pod_mtu = Some(68))), "--pod-mtu");
        assert_eq!(option_of(with(|o| o.pod_mtu = Some(1400))), "accepted");
    }
}
