//! The per-node L7 proxy: transparent listeners, HTTP/1.1, HTTP/2, gRPC policy and visibility.
