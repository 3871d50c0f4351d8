//! The spec's commands. Each returns what goes on stdout (nothing for DEL,
//! GC and STATUS), or the error the runtime reads.

use std::path::Path;
use std::time::Duration;

use myelin_api::agent::{Request, Response};
use myelin_api::cni::{AttachmentKey, CniAdd, host_veth_name};
use myelin_api::{ClientError, call};

use crate::config::{Environment, NetConf, SUPPORTED_VERSIONS};
use crate::error::{CniError, Code, from_agent};
use crate::result::CniResult;

/// The node's network namespace: the runtime runs the plugin in it.
const NODE_NETNS: &str = "/proc/self/ns/net";

/// Runs `command` (`CNI_COMMAND`) with the configuration on stdin.
pub fn run(env: &Environment, stdin: &[u8]) -> Result<Option<String>, CniError> {
    let command = Environment::required(&env.command, "CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    match command {
        "ADD" => add(env, &conf).map(Some),
        "DEL" => del(env, &conf).map(|()| None),
        "CHECK" => check(env, &conf).map(|()| None),
        "GC" => gc(&conf).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        other => Err(CniError::new(
            Code::InvalidEnvironment,
            format!("CNI_COMMAND {other} is not a CNI command"),
            "use ADD, DEL, CHECK, GC, STATUS or VERSION",
        )),
    }
}

/// VERSION: the versions this plugin speaks, in the shape of the one asked
/// for (the latest when the input names none this plugin knows).
fn version(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1].to_string());
    serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

/// The runtime's key of the attachment.
fn attachment_key(env: &Environment) -> Result<AttachmentKey, CniError> {
    Ok(AttachmentKey {
        container_id: Environment::required(&env.container_id, "CNI_CONTAINERID")?.to_string(),
        ifname: Environment::required(&env.ifname, "CNI_IFNAME")?.to_string(),
    })
}

/// One request to the agent, on a runtime of its own.
fn ask(conf: &NetConf, request: &Request) -> Result<Response, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|cause| ClientError::Io {
            path: conf.agent_socket.display().to_string(),
            cause,
        })?;
    runtime.block_on(call(&conf.agent_socket, request))
}

fn unexpected(what: &str, response: &Response) -> CniError {
    CniError::new(
        Code::Decode,
        format!("the Myelin agent answered {what} unexpectedly"),
        format!("{response:?}; are the plugin and the agent of the same Myelin version?"),
    )
}

fn add(env: &Environment, conf: &NetConf) -> Result<String, CniError> {
    let key = attachment_key(env)?;
    let netns = Environment::required(&env.netns, "CNI_NETNS")?;
    let request = Request::CniAdd(CniAdd {
        key,
        netns: netns.to_string(),
        namespace: env
            .required_arg("K8S_POD_NAMESPACE", conf.default_pod_namespace.as_deref())?
            .to_string(),
        pod: env.required_arg("K8S_POD_NAME", None)?.to_string(),
        mtu: conf.mtu,
        wait_for_pod_ms: Duration::from_secs(conf.wait_for_pod_seconds).as_millis() as u64,
    });
    let previous = conf.previous_result()?;
    let socket = conf.agent_socket.display().to_string();
    match ask(conf, &request).map_err(|e| from_agent("ADD", &socket, e))? {
        Response::CniAttachment(attachment) => {
            Ok(CniResult::of_attachment(&attachment, previous, &conf.cni_version).to_json())
        }
        other => Err(unexpected("ADD", &other)),
    }
}

/// DEL: the agent removes the attachment; when it is not there, the
/// plugin removes the container's veth itself (the agent frees the
/// addresses once it is back) and the runtime gets a success.
fn del(env: &Environment, conf: &NetConf) -> Result<(), CniError> {
    let key = attachment_key(env)?;
    let socket = conf.agent_socket.display().to_string();
    match ask(conf, &Request::CniDel(key.clone())) {
        Ok(_) => Ok(()),
        Err(ClientError::Connect { cause, .. }) => {
            let veth = host_veth_name(&key);
            let removed =
                myelin_podnet::delete_link(Path::new(NODE_NETNS), &veth).map_err(|e| {
                    CniError::new(
                        Code::Io,
                        "removing the container's veth failed (the Myelin agent is down)",
                        e.to_string(),
                    )
                })?;
            eprintln!(
                "myelin-cni: the agent at {socket} is not reachable ({cause}); {} veth {veth} \
                 myself; the agent frees the addresses when it is back",
                if removed { "removed" } else { "no" }
            );
            Ok(())
        }
        Err(error) => Err(from_agent("DEL", &socket, error)),
    }
}

/// CHECK: the agent's record of the attachment (veth present, endpoint
/// registered) against ADD's result.
fn check(env: &Environment, conf: &NetConf) -> Result<(), CniError> {
    let key = attachment_key(env)?;
    let previous = conf.previous_result()?.ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "CHECK needs prevResult",
            "the runtime passes ADD's result as prevResult for CHECK",
        )
    })?;
    let socket = conf.agent_socket.display().to_string();
    match ask(conf, &Request::CniCheck(key)).map_err(|e| from_agent("CHECK", &socket, e))? {
        Response::CniAttachment(attachment) => {
            let missing = previous.missing_addresses(&attachment);
            if missing.is_empty() {
                Ok(())
            } else {
                Err(CniError::new(
                    Code::AttachmentDiffers,
                    "the container's addresses are not ADD's",
                    format!(
                        "the agent holds {} for it, ADD's result did not",
                        missing.join(", ")
                    ),
                ))
            }
        }
        other => Err(unexpected("CHECK", &other)),
    }
}

/// GC: every attachment the runtime no longer lists goes.
fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        CniError::new(
            Code::InvalidConfig,
            "GC needs cni.dev/valid-attachments",
            "without the list of attachments to keep, GC would remove every pod's",
        )
    })?;
    let valid = valid
        .iter()
        .map(|a| AttachmentKey {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    let socket = conf.agent_socket.display().to_string();
    match ask(conf, &Request::CniGc { valid }).map_err(|e| from_agent("GC", &socket, e))? {
        Response::CniCollected { removed } => {
            for key in removed {
                eprintln!(
                    "myelin-cni: GC removed container {} ({})",
                    key.container_id, key.ifname
                );
            }
            Ok(())
        }
        other => Err(unexpected("GC", &other)),
    }
}

/// STATUS: whether the agent can serve ADDs.
fn status(conf: &NetConf) -> Result<(), CniError> {
    let socket = conf.agent_socket.display().to_string();
    let not_available = |details: String| {
        CniError::new(
            Code::NotAvailable,
            "the Myelin agent cannot serve ADD",
            details,
        )
    };
    match ask(conf, &Request::CniStatus) {
        Ok(Response::CniReadiness(readiness)) if readiness.ready => Ok(()),
        Ok(Response::CniReadiness(readiness)) => Err(not_available(
            readiness.reason.unwrap_or_else(|| "not ready".into()),
        )),
        Ok(other) => Err(unexpected("STATUS", &other)),
        Err(error) => Err(not_available(from_agent("STATUS", &socket, error).details)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(command: &str) -> Environment {
        Environment {
            command: Some(command.into()),
            ..Environment::default()
        }
    }

    #[test]
    fn version_lists_what_is_spoken_in_the_shape_asked_for() {
        let answer = run(&env("VERSION"), br#"{"cniVersion":"1.0.0"}"#)
            .expect("version")
            .expect("output");
        let json: serde_json::Value = serde_json::from_str(&answer).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]})
        );
        let latest = run(&env("VERSION"), b"").expect("version").expect("output");
        assert!(latest.contains(r#""cniVersion":"1.1.0""#), "{latest}");
    }

    #[test]
    fn commands_say_which_variable_is_missing() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"myelin-cni"}"#;
        let error = run(&Environment::default(), conf).expect_err("no command");
        assert_eq!(error.code, Code::InvalidEnvironment);
        let error = run(&env("ADD"), conf).expect_err("no container id");
        assert_eq!(error.code, Code::InvalidEnvironment);
        assert!(error.msg.contains("CNI_CONTAINERID"), "{}", error.msg);
        let error = run(&env("FROB"), conf).expect_err("unknown");
        assert!(error.msg.contains("FROB"), "{}", error.msg);
    }

    #[test]
    fn gc_without_its_list_and_check_without_prev_result_are_refused() {
        let conf = br#"{"cniVersion":"1.1.0","name":"n","type":"myelin-cni"}"#;
        let error = run(&env("GC"), conf).expect_err("no list");
        assert_eq!(error.code, Code::InvalidConfig);
        let mut check = env("CHECK");
        check.container_id = Some("c1".into());
        check.ifname = Some("eth0".into());
        let error = run(&check, conf).expect_err("no prevResult");
        assert_eq!(error.code, Code::InvalidConfig);
    }

    #[test]
    fn status_and_add_with_no_agent_get_codes_a_runtime_retries_on() {
        let dir = std::env::temp_dir().join(format!("myelin-cni-test-{}", std::process::id()));
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"myelin-cni","agentSocket":"{}"}}"#,
            dir.join("absent.sock").display()
        );
        let error = run(&env("STATUS"), conf.as_bytes()).expect_err("no agent");
        assert_eq!(error.code, Code::NotAvailable);
        assert!(error.details.contains("absent.sock"), "{}", error.details);
        let mut add = env("ADD");
        add.container_id = Some("c1".into());
        add.ifname = Some("eth0".into());
        add.netns = Some("/run/netns/none".into());
        add.args = [
            ("K8S_POD_NAMESPACE".to_string(), "default".to_string()),
            ("K8S_POD_NAME".to_string(), "web".to_string()),
        ]
        .into();
        let error = run(&add, conf.as_bytes()).expect_err("no agent");
        assert_eq!(error.code, Code::TryAgainLater);
    }
}
