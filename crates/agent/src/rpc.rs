//! The framing of Myelin's local APIs, from `myelin-api`: JSON lines on a
//! unix socket, errors as typed answers.

pub use myelin_api::framing::*;
