//! Zeroing without `memset`.
//!
//! A struct initialised with zeros compiles to a call to `memset` here:
//! bpf-linker has LLVM expand `memcpy` in order (`--bpf-expand-memcpy-in-order`,
//! which keeps copies as load/store pairs and the frames small), and that
//! setting also stops LLVM from writing any `memset` inline; aya-ebpf's
//! `memset` then stores one byte per turn of a loop. For the structs every
//! program clears per packet (the parsed packet's 117 bytes, the event
//! context, tunnel keys) that loop was a tenth of a program's run.

/// Sets every byte of `*value` to zero with one 8-byte store per word.
/// Volatile stores are never merged back into a `memset`.
///
/// # Safety
/// `value` must be valid for writes of `T`, and all-zero bytes a valid `T`.
// Inlined: a constant number of stores.
#[inline(always)]
pub(crate) unsafe fn zero_words<T>(value: *mut T) {
    const {
        assert!(core::mem::align_of::<T>() >= 8 && core::mem::size_of::<T>() % 8 == 0);
    }
    let words = value.cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: `T` is word-aligned and a whole number of words long (the
        // assertion above), so each word lies within `*value`.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}
