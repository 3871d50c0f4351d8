//! Names the lab makes up as Kubernetes does: a Deployment's pods are
//! `<deployment>-<template hash>-<suffix>`.

use myelin_model::workload::Deployment;

/// A template hash as Kubernetes prints it: 10 characters from a safe alphabet.
pub fn template_hash(deployment: &Deployment) -> String {
    let text = serde_json::to_string(&deployment.spec.template).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    encode_safe(hash, 10)
}

pub fn random_suffix() -> String {
    encode_safe(rand::random::<u64>(), 5)
}

/// Kubernetes' alphabet for generated names: no vowels, no look-alikes.
fn encode_safe(mut value: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len)
        .map(|_| {
            let c = ALPHABET[(value % ALPHABET.len() as u64) as usize] as char;
            value /= ALPHABET.len() as u64;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_use_the_safe_alphabet() {
        let s = encode_safe(123_456_789, 10);
        assert_eq!(s.len(), 10);
        assert!(
            s.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        assert_eq!(encode_safe(0, 3), "bbb");
    }
}
