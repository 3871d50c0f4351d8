//! Flows, filters, the Hubble-compatible observer API, metrics and the service map.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

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
    /// Hubble's `peer` package: the Peer service a relay discovers nodes with.
    #[allow(missing_docs, clippy::all)]
    pub mod peer {
        tonic::include_proto!("peer");
    }
}

pub mod cel_filter;
pub mod cli;
pub mod filter;
pub mod filter_flags;
pub mod flows;
pub mod json;
pub mod mask;
pub mod metrics;
pub mod observer;
pub mod peer;
pub mod printer;
pub mod relay;
pub mod server;
pub mod servicemap;
pub mod tls;
pub mod wire_check;

pub use cli::{AgentEventsArgs, ObserveArgs, ObserveCommand, run};
pub use filter::{FilterError, FilterSet};
pub use filter_flags::{FilterArgs, FilterFlag};
pub use metrics::Metrics;
pub use observer::{Observer, ObserverConfig, RingStatus};
pub use printer::{OutputFormat, PrintOptions, Printer, TimeFormat};
pub use server::{BoundServer, ServeConfig, ServeError, bind, serve};
pub use tls::{ClientTls, ServerTls, TlsError};
