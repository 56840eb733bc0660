//! The console's files, built into the binary from the top-level
//! `console/` folder: two pages, one stylesheet, and the script modules.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

macro_rules! file {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../console/",
            $name
        ))
    };
}

pub const INDEX: &[u8] = file!("index.html");
pub const PORTAL: &[u8] = file!("portal.html");

/// A file under `/ui/assets/`.
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
    pub etag: String,
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: LazyLock<Vec<(&'static str, Asset)>> = LazyLock::new(|| {
    let files: [(&str, &str, &'static [u8]); 8] = [
        ("app.css", "text/css; charset=utf-8", file!("app.css")),
        ("app.js", JS, file!("app.js")),
        ("api.js", JS, file!("api.js")),
        ("jobs.js", JS, file!("jobs.js")),
        ("queues.js", JS, file!("queues.js")),
        ("deliveries.js", JS, file!("deliveries.js")),
        ("charts.js", JS, file!("charts.js")),
        ("dom.js", JS, file!("dom.js")),
    ];
    files
        .into_iter()
        .map(|(name, content_type, body)| {
            let digest = Sha256::digest(body);
            let etag = format!("\"{}\"", hex(&digest[..12]));
            (
                name,
                Asset {
                    content_type,
                    body,
                    etag,
                },
            )
        })
        .collect()
});

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|(n, _)| *n == name).map(|(_, a)| a)
}
