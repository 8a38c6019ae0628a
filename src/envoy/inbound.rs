//! The inbound side of a group's proxy: a task's local port exposed to the
//! network over mTLS, allowing only listed SPIFFE IDs. The manifest field
//! (`network.inbound`) and its validation live in `crate::api`; the plan
//! turns it into a listener with an RBAC filter.

pub use crate::api::Inbound;
