//! The browser client's files, embedded in the binary so the page works
//! offline with no build step: `index.html`, the protocol codec
//! (`codec.js`), the interface (`app.js`), `style.css` and the tab's icon
//! (`favicon.svg`, linked from the page so no browser asks for `/favicon.ico`).

/// One file the page is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml; charset=utf-8";

/// The file served at `path`, if any.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body): (&str, &str) = match path {
        "/" | "/index.html" => (HTML, include_str!("page/index.html")),
        "/codec.js" => (JS, include_str!("page/codec.js")),
        "/app.js" => (JS, include_str!("page/app.js")),
        "/style.css" => (CSS, include_str!("page/style.css")),
        "/favicon.svg" => (SVG, include_str!("page/favicon.svg")),
        _ => return None,
    };
    Some(Asset {
        content_type,
        body: body.as_bytes(),
    })
}
