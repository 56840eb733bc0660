//! Executors turn queued jobs into results inside the server. They use the
//! same lease protocol as remote workers ([`crate::app::App::lease`] and
//! the same commands), so fencing, retries and cancellation behave alike.

pub mod demo;
pub mod exec;
pub mod http;
pub mod process;
