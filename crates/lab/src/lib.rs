//! A whole cluster on one machine out of network namespaces.
