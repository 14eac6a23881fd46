//! The dashboard: one page at `GET /` and `GET /ui`, embedded in the binary.
//!
//! Why a page of our own, with no chart library: it must work on a machine
//! with no network (nothing is fetched at build or run time) and stay small
//! enough to read. `dashboard.html`, `dashboard.css` and `dashboard.js` are
//! compiled in with `include_str!` and served as one HTML document; the
//! script polls `/v1/stats` every second with `fetch`, keeps the last five
//! minutes of samples in the tab, and draws each entity's reads by outcome
//! on a canvas.
//!
//! The page itself is public, like `/health` (it holds no data); its data
//! requests need the read token when one is configured. The page says
//! whether one is (a `larder-auth` meta tag), so it asks for the token
//! before its first request instead of provoking a 401; it keeps the token
//! in `sessionStorage`, for the tab only, and sends it as
//! `Authorization: Bearer`. (`EventSource` cannot send headers, which is why
//! the page polls.)

use crate::serve::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use std::sync::LazyLock;

const SHELL: &str = include_str!("dashboard.html");
const STYLE: &str = include_str!("dashboard.css");
const SCRIPT: &str = include_str!("dashboard.js");

fn build(auth: &str) -> String {
    SHELL
        .replacen("/*AUTH*/", auth, 1)
        .replacen("/*STYLE*/", STYLE, 1)
        .replacen("/*SCRIPT*/", SCRIPT, 1)
}

static OPEN: LazyLock<String> = LazyLock::new(|| build("none"));
static LOCKED: LazyLock<String> = LazyLock::new(|| build("token"));

/// The dashboard's HTML; `needs_token` when the service has a token.
pub fn page(needs_token: bool) -> &'static str {
    if needs_token {
        &LOCKED
    } else {
        &OPEN
    }
}

/// The header set of the page: everything it needs is in it, and it talks
/// only to this service.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `GET /` and `GET /ui`: the dashboard.
pub async fn dashboard(State(state): State<AppState>) -> Response {
    let mut res = Html(page(state.token().is_some())).into_response();
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_has_its_style_and_script_in_place() {
        for needs_token in [false, true] {
            let page = super::page(needs_token);
            assert!(page.starts_with("<!doctype html>"), "{}", &page[..40]);
            for hole in ["/*AUTH*/", "/*STYLE*/", "/*SCRIPT*/"] {
                assert!(!page.contains(hole), "{hole}");
            }
            assert!(page.contains("v1/stats"));
            let auth = if needs_token { "token" } else { "none" };
            assert!(page.contains(&format!(r#"<meta name="larder-auth" content="{auth}">"#)));
            assert!(
                !page.contains("http://") && !page.contains("https://"),
                "nothing is fetched from elsewhere"
            );
        }
    }
}
