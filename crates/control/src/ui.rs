//! The dashboard (CONTRACT.md §12): three files built into the binary and
//! served at `/ui` by the [`Gate`](crate::server), nothing fetched from
//! anywhere else. The page talks to the node like any client: JSON-RPC over
//! one WebSocket, its token passed as the subprotocol `bearer.<token>`.

use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/app.css");

/// Only this node: scripts, styles, and connections (HTTP and WebSocket) to
/// the origin the page came from; no frames, no forms posted elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The asset at `path` (`/ui`, `/ui/`, `/ui/app.js`, `/ui/app.css`), as a
/// complete response; `None` for any other path.
pub fn asset(path: &str) -> Option<http::Response<String>> {
    let (body, content_type) = match path {
        "/ui" | "/ui/" | "/ui/index.html" => (INDEX, "text/html; charset=utf-8"),
        "/ui/app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut response = http::Response::new(body.to_string());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    // A new zest binary serves a new page: never a stale script.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    Some(response)
}

/// The token a browser's WebSocket offers as the subprotocol `bearer.<token>`
/// (`Sec-WebSocket-Protocol` lists subprotocols, comma-separated), with the
/// exact subprotocol to echo back.
pub fn subprotocol_token(offered: Option<&HeaderValue>) -> Option<(String, String)> {
    let offered = offered?.to_str().ok()?;
    offered.split(',').map(str::trim).find_map(|protocol| {
        let token = protocol.strip_prefix("bearer.")?;
        (!token.is_empty()).then(|| (token.to_string(), protocol.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_served_with_a_policy_that_allows_only_this_node() {
        for path in ["/ui", "/ui/", "/ui/app.js", "/ui/app.css"] {
            let response = asset(path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(response.headers()[CONTENT_SECURITY_POLICY], POLICY);
            assert!(!response.body().is_empty());
        }
        assert!(asset("/ui/../etc/passwd").is_none() && asset("/uix").is_none());
        // Every file the page loads is one of ours, by an absolute path.
        for line in INDEX.lines().filter(|l| l.contains("src=") || l.contains("href=")) {
            assert!(
                line.contains("\"/ui/app.") || line.contains("href=\"data:,\""),
                "the page loads something else: {line}"
            );
        }
    }

    #[test]
    fn a_bearer_subprotocol_names_the_token() {
        let offered = HeaderValue::from_static("chat, bearer.s3cret");
        assert_eq!(subprotocol_token(Some(&offered)), Some(("s3cret".into(), "bearer.s3cret".into())));
        assert_eq!(subprotocol_token(Some(&HeaderValue::from_static("bearer."))), None);
        assert_eq!(subprotocol_token(Some(&HeaderValue::from_static("graphql-ws"))), None);
        assert_eq!(subprotocol_token(None), None);
    }
}
