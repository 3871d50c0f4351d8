//! Errors as the CNI spec shapes them: a code the runtime acts on, a short
//! `msg` and `details` for the operator, printed on stdout as JSON with a
//! non-zero exit.

use serde::Serialize;

/// The spec's error codes (and Myelin's own, from 100 on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1: the configuration's `cniVersion` is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a field of the configuration this plugin does not support.
    UnsupportedField,
    /// 3: the container (its attachment) is unknown or does not exist.
    UnknownContainer,
    /// 4: a `CNI_*` variable the command needs is missing or wrong.
    InvalidEnvironment,
    /// 5: an I/O failure (talking to the agent, netlink).
    Io,
    /// 6: the input (configuration, `prevResult`, the agent's answer) could
    /// not be decoded.
    Decode,
    /// 7: the network configuration is not valid.
    InvalidConfig,
    /// 11: a transient condition: the runtime should try again later.
    TryAgainLater,
    /// 50 (STATUS): the plugin cannot serve ADDs.
    NotAvailable,
    /// 100: the agent refused or failed the request; its reason is the
    /// details.
    AgentFailed,
    /// 101 (CHECK): the container's attachment is not what ADD returned.
    AttachmentDiffers,
}

impl Code {
    /// The number the spec gives it.
    pub fn number(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::Io => 5,
            Self::Decode => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::NotAvailable => 50,
            Self::AgentFailed => 100,
            Self::AttachmentDiffers => 101,
        }
    }
}

/// A failed command, as the runtime reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    /// What kind of failure.
    pub code: Code,
    /// A short description.
    pub msg: String,
    /// What went wrong in full and what to do.
    pub details: String,
}

impl CniError {
    /// An error of `code`.
    pub fn new(code: Code, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON the spec prescribes, for a configuration of `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Shape<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        let shape = Shape {
            cni_version,
            code: self.code.number(),
            msg: &self.msg,
            details: &self.details,
        };
        // Strings and a number: serialising cannot fail.
        serde_json::to_string(&shape).unwrap_or_default()
    }
}

/// The error for a call to the agent that failed, during `what` (`ADD`, ...).
pub fn from_agent(what: &str, socket: &str, error: myelin_api::ClientError) -> CniError {
    use myelin_api::{ClientError, ErrorKind};
    match error {
        ClientError::Connect { cause, .. } => CniError::new(
            Code::TryAgainLater,
            format!("Myelin agent not reachable ({what})"),
            format!(
                "cannot reach the Myelin agent at {socket}: {cause}; is the agent running on \
                 this node?"
            ),
        ),
        ClientError::Io { cause, .. } => CniError::new(
            Code::Io,
            format!("talking to the Myelin agent failed ({what})"),
            format!("{socket}: {cause}; did the agent stop or restart?"),
        ),
        ClientError::Decode { cause, .. } => CniError::new(
            Code::Decode,
            format!("the Myelin agent's answer was not understood ({what})"),
            format!("{socket}: {cause}; are the plugin and the agent of the same Myelin version?"),
        ),
        ClientError::Remote(remote) => {
            let code = match remote.kind {
                ErrorKind::Unavailable => Code::TryAgainLater,
                ErrorKind::NotFound => Code::UnknownContainer,
                ErrorKind::Invalid => Code::InvalidConfig,
                ErrorKind::Malformed => Code::Decode,
                ErrorKind::Failed => Code::AgentFailed,
            };
            CniError::new(
                code,
                format!("the Myelin agent refused {what}"),
                remote.message,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_api::{ApiError, ClientError, ErrorKind};

    #[test]
    fn errors_print_as_the_spec_shapes_them() {
        let error = CniError::new(Code::TryAgainLater, "not now", "the agent restarts");
        let json: serde_json::Value = serde_json::from_str(&error.to_json("1.0.0")).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "cniVersion": "1.0.0", "code": 11, "msg": "not now",
                "details": "the agent restarts"
            })
        );
    }

    #[test]
    fn the_agents_answers_map_to_codes_a_runtime_acts_on() {
        let remote = |kind| ClientError::Remote(ApiError::new(kind, "why"));
        let code = |e| from_agent("ADD", "/run/a.sock", e).code;
        assert_eq!(code(remote(ErrorKind::Unavailable)), Code::TryAgainLater);
        assert_eq!(code(remote(ErrorKind::NotFound)), Code::UnknownContainer);
        assert_eq!(code(remote(ErrorKind::Invalid)), Code::InvalidConfig);
        assert_eq!(code(remote(ErrorKind::Failed)), Code::AgentFailed);
        let down = from_agent(
            "ADD",
            "/run/a.sock",
            ClientError::Connect {
                path: "/run/a.sock".into(),
                cause: std::io::Error::from(std::io::ErrorKind::NotFound),
            },
        );
        assert_eq!(down.code, Code::TryAgainLater);
        assert!(down.details.contains("/run/a.sock"), "{}", down.details);
        assert!(down.msg.contains("not reachable"), "{}", down.msg);
        let numbers: Vec<u32> = [
            Code::IncompatibleVersion,
            Code::UnsupportedField,
            Code::UnknownContainer,
            Code::InvalidEnvironment,
            Code::Io,
            Code::Decode,
            Code::InvalidConfig,
            Code::TryAgainLater,
            Code::NotAvailable,
            Code::AgentFailed,
            Code::AttachmentDiffers,
        ]
        .map(Code::number)
        .to_vec();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7, 11, 50, 100, 101]);
    }
}
