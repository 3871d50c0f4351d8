//! Size limits on what Myelin reads: those of a Kubernetes API server with its default etcd.
//! Input a cluster would refuse is refused here too, before it is parsed, so that the memory
//! parsing takes stays proportional to what a cluster accepts.

/// Largest document (one object): 1.5 MiB, etcd's default `--max-request-bytes`, which bounds
/// every object the API server stores. Measured on the document's text as written.
pub const MAX_OBJECT_BYTES: usize = 1_572_864;

/// Largest input read at once (one file, or standard input): 3 MiB, the API server's limit on
/// a request body.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// Why a document of `size` bytes is refused, or `None` when it is within the object limit.
pub fn object_too_large(size: usize) -> Option<String> {
    (size > MAX_OBJECT_BYTES).then(|| {
        format!(
            "the document is {size} bytes, over the limit of {MAX_OBJECT_BYTES} bytes (1.5 MiB) \
             that etcd sets on one Kubernetes object; split it into several objects (a policy \
             with many rules into several policies)"
        )
    })
}

/// Why an input of `size` bytes is refused, or `None` when it is within the request limit.
pub fn request_too_large(size: u64) -> Option<String> {
    (size > MAX_REQUEST_BYTES as u64).then(|| {
        format!(
            "the input is {size} bytes, over the limit of {MAX_REQUEST_BYTES} bytes (3 MiB) \
             that the Kubernetes API server sets on one request; split it into several files"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_are_inclusive() {
        assert_eq!(object_too_large(MAX_OBJECT_BYTES), None);
        let message = object_too_large(MAX_OBJECT_BYTES + 10).expect("over");
        assert!(message.contains("1572874 bytes"), "{message}");
        assert!(message.contains("1572864"), "{message}");
        assert_eq!(request_too_large(MAX_REQUEST_BYTES as u64), None);
        let message = request_too_large(50_000_000).expect("over");
        assert!(
            message.starts_with("the input is 50000000 bytes, over the limit of 3145728"),
            "{message}"
        );
    }
}
