//! The domain of replyd: what a job is, how it moves between states, what
//! each move records, and the traits the outer layers implement.
//!
//! Architecture invariant: this crate does no IO. It knows no HTTP, no SQL and
//! no wire format (`replyd-proto` owns that). Every state change is computed
//! here by [`job::JobRecord::apply`], a pure function that the stores call
//! inside their transactions, so that SQLite and PostgreSQL share one set of
//! rules.

pub mod clock;
pub mod event;
pub mod ids;
pub mod job;
pub mod kind;
pub mod ops;
pub mod outbox;
pub mod reply;
pub mod schedule;
pub mod store;
pub mod stream;
pub mod trace;

pub use clock::Clock;
pub use event::{EventId, EventKind, EventRecord};
pub use ids::{JobId, LeaseId, Tenant};
pub use job::{Command, JobError, JobRecord, JobState, NewJob, Progress, RetryPolicy};
pub use store::{Store, StoreError};
