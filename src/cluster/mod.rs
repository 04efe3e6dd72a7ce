//! Several nodes serving one registry from shared S3 storage (issue 12): the join file that
//! gives a new node the cluster's identity ([`join`]), the S3 credentials file the operator
//! puts on each node ([`credentials`]), and the bounded wait for such a file ([`wait`]).
//!
//! Client additions and revocations travel between nodes through the shared storage
//! (`regimage cluster sync`, in `lifecycle`).

pub mod credentials;
pub mod join;
pub mod wait;

pub use credentials::S3Keys;
pub use join::JoinFile;
