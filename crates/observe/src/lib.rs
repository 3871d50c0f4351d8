//! Flows, filters, the Hubble-compatible observer API, metrics and the service map.
