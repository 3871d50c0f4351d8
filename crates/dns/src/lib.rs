//! The node's DNS responder for cluster service and pod names.
