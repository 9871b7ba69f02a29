//! Domain types shared by every uphold crate: member and group names, node ids,
//! resource specifications and the clock abstraction. No I/O lives here.

// Purity is checked: clippy.toml lists what deciding code must not call.
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod clock;
pub mod names;
pub mod resource;

pub use clock::{Clock, Millis};
pub use names::{node_id_for, GroupName, NameError, NodeId, NodeName};
pub use resource::{EmergencyStop, ExecResource, IpResource, ResourceSpec};
