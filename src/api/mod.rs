//! The robot.k8s4r.io/v1alpha1 API: types, defaults, validation and decoding.
//! Shared by the agent and the control plane; does no I/O.

pub mod agent_protocol;
pub mod agent_release;
pub mod assignment_set;
pub mod decode;
pub mod findings;
pub mod hex;
pub mod job_expansion;
pub mod meta;
pub mod rfc3339;
pub mod robot_channel;
pub mod robot_labels;
pub mod rollout;
#[cfg(feature = "server")]
mod schema;
pub mod types;
pub mod units;
pub mod update_strategy;
pub mod validate;

pub use decode::{decode_all, AnyObject, DecodeError, Decoded};
pub use findings::{FieldError, Findings};
pub use meta::{Object, ObjectMeta, OwnerReference, API_VERSION};
pub use types::*;
pub use units::{Duration, Quantity};
pub use validate::{review, validate};
