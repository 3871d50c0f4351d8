//! Resources Myelin reads: Kubernetes and `cilium.io` manifests, parsed and
//! validated with the file, document, field path and value of every error.
//!
//! Parsing is strict about the schema (an unknown field is an error naming it)
//! and lenient where Kubernetes and Cilium are lenient (a port given as a
//! string or as a number).
//!
//! Input is bounded as a Kubernetes API server bounds it ([`limits`]): a file
//! over 3 MiB or a document over 1.5 MiB is refused before it is parsed.

#![forbid(unsafe_code)]

pub mod error;
pub mod limits;
pub mod manifest;
pub mod meta;
pub mod policy;
pub mod workload;
mod yaml;

pub use error::{ManifestError, ManifestErrors};
pub use manifest::{
    Document, FieldError, Parsed, Resource, ResourceKey, Source, load_path, parse_str, typed,
};
pub use meta::{LabelSelector, LabelSelectorRequirement, Metadata, SelectorOperator};
