//! Loading, attaching and pinning the kernel programs.
