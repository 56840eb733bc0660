//! `[console]`: the web console at `/ui/` and its portal links.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Console {
    /// Serve the console (`/ui/`, `/` redirecting there). On by default.
    pub enabled: bool,
    /// Seconds a console sign-in lasts.
    pub session_ttl: f64,
    /// Origins that may show a portal link in a frame (CSP
    /// `frame-ancestors`), such as `https://app.example.com`. None by
    /// default: no page of the console can be framed.
    pub frame_ancestors: Vec<String>,
}

impl Default for Console {
    fn default() -> Self {
        Console {
            enabled: true,
            session_ttl: 12.0 * 3600.0,
            frame_ancestors: Vec::new(),
        }
    }
}

impl Console {
    pub fn check(&self) -> Result<(), String> {
        if !(60.0..=30.0 * 86_400.0).contains(&self.session_ttl) {
            return Err("console.session_ttl must be between 60 and 2592000 seconds".into());
        }
        for a in &self.frame_ancestors {
            if !is_origin(a) {
                return Err(format!(
                    "console.frame_ancestors: {a:?} is not an origin such as https://app.example.com"
                ));
            }
        }
        Ok(())
    }
}

/// `http(s)://host[:port]`, with nothing a CSP directive could be broken
/// out of (no path, space, quote, comma or semicolon).
fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest.len() <= 253
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_origins_may_frame_the_portal() {
        for good in [
            "https://app.example.com",
            "http://127.0.0.1:3000",
            "https://*.example.com",
        ] {
            assert!(is_origin(good), "{good}");
        }
        for bad in [
            "app.example.com",
            "https://",
            "https://a.com/path",
            "https://a.com; script-src *",
            "https://a.com 'unsafe-inline'",
            "javascript:alert(1)",
        ] {
            assert!(!is_origin(bad), "{bad}");
        }
    }
}
