//! Webhooks (API.md §2, issue 5): the SSRF guard that vets every outbound
//! URL, and Standard Webhooks signing. The outbox and its dispatcher build
//! on these.

pub mod deliver;
pub mod signing;
pub mod ssrf;
