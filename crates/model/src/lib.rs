//! Resources Myelin reads: Kubernetes and cilium.io manifests, parsed and validated with field paths.
