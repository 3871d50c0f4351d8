//! Label selectors, identity allocation and policy resolution into per-endpoint entries.
