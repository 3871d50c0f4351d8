//! `myelin install`: prints the manifests a Kubernetes cluster needs, for
//! `kubectl apply -f -`.

use std::io::Write as _;

use anyhow::Context as _;

/// `myelin install --help`'s description: what it prints and that it does not work on a
/// cluster yet.
pub const LONG_ABOUT: &str = "Print the Kubernetes manifests that install Myelin: Namespace, Myelin's \
CRDs, the agent's ServiceAccount, ClusterRole and binding, a ConfigMap with its settings and the \
CNI conflist, and a DaemonSet (agent, proxy, CNI installer).\n\n\
NOT YET FUNCTIONAL ON A CLUSTER: the agent has no Kubernetes mode yet; it does not read pods, \
services or policies from the API server. The manifests are the install shape for that mode, \
checked against the Kubernetes API types. On a real cluster the installed CNI plugin cannot \
give pods addresses yet: apply them only to a cluster you can throw away.";

/// Options of `myelin install`; `myelin_install` checks their values.
#[derive(clap::Args)]
pub struct InstallArgs {
    /// Namespace of the agent's ServiceAccount, ConfigMap and DaemonSet.
    #[arg(long, default_value = myelin_install::options::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Container image of the agent, the proxy and the CNI installer
    /// [default: localhost/myelin:<this version>].
    #[arg(long)]
    image: Option<String>,
    /// The cluster's name, in the agent's settings.
    #[arg(long, default_value = myelin_install::options::DEFAULT_CLUSTER_NAME)]
    cluster_name: String,
    /// How packets to other nodes' pods travel: `tunnel` or `native`.
    #[arg(long, default_value = "tunnel")]
    routing: String,
    /// MTU of pods' interfaces, in the conflist [default: the agent's, from the routing
    /// mode].
    #[arg(long)]
    pod_mtu: Option<u32>,
    /// Also print Cilium's CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy CRDs
    /// (for clusters without Cilium; their schemas keep specs as given).
    #[arg(long)]
    with_cilium_crds: bool,
}

/// Prints the manifests for `args` on standard output.
pub fn run(args: InstallArgs) -> anyhow::Result<()> {
    let options = myelin_install::Options {
        namespace: args.namespace,
        image: args
            .image
            .unwrap_or_else(myelin_install::options::default_image),
        cluster_name: args.cluster_name,
        routing: args.routing,
        pod_mtu: args.pod_mtu,
        with_cilium_crds: args.with_cilium_crds,
    };
    let yaml = myelin_install::render(&options)?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .context("writing the manifests")
}
