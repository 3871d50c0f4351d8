//! `#[repr(C)]` types shared by Myelin's kernel programs and user space: map
//! keys and values, and the records the programs write to the event ring.
//!
//! Every type here is plain old data with explicit padding, so that the
//! kernel and user space agree on its layout byte for byte.
#![no_std]

pub mod event;
pub mod maps;

pub use event::{EventKind, ObservationPoint, TraceEvent};
pub use maps::{Direction, EndpointInfo, PacketStats, StatsKey};
