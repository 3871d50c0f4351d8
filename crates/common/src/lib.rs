//! `#[repr(C)]` types shared by Myelin's kernel programs and user space.
#![no_std]
