//! Flows, filters, the Hubble-compatible observer API, metrics and the service map.

/// Code generated from the protos in `proto/`, with Hubble's package names.
pub mod proto {
    /// Hubble's `flow` package: the Flow message and its parts, and FlowFilter.
    #[allow(missing_docs, clippy::all)]
    pub mod flow {
        tonic::include_proto!("flow");
    }
    /// Hubble's `relay` package (only the node status types GetFlows uses).
    #[allow(missing_docs, clippy::all)]
    pub mod relay {
        tonic::include_proto!("relay");
    }
    /// Hubble's `observer` package: the Observer service and its messages.
    #[allow(missing_docs, clippy::all)]
    pub mod observer {
        tonic::include_proto!("observer");
    }
}
