//! The one way replyd builds an HTTP client for calls it makes on its own
//! (webhook deliveries, `executor = "http"` and gateway upstreams).
//!
//! - Redirects are never followed: a 3xx is an answer, and following it
//!   would take the request somewhere nobody vetted.
//! - Proxy settings from the environment (`HTTP_PROXY`, `HTTPS_PROXY`,
//!   `ALL_PROXY`, their lower-case forms) are ignored: a proxy resolves
//!   and connects by itself, past the SSRF guard, and an environment is
//!   easier to reach than a configuration file. A proxy replyd should use
//!   is named in its configuration.

/// A client builder with replyd's outbound rules; callers add timeouts,
/// a user agent and their resolver.
pub fn client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}
