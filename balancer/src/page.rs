//! The chat page, embedded in the binary so it needs no build step and no
//! CDN: `GET /` on the public listener.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

const INDEX_HTML: &str = include_str!("../assets/index.html");

pub async fn serve(session: &mut Session) -> Result<()> {
    let mut header = ResponseHeader::build(200, Some(4))?;
    header.insert_header("content-type", "text/html; charset=utf-8")?;
    header.insert_header("content-length", INDEX_HTML.len().to_string())?;
    header.insert_header("cache-control", "no-cache")?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from_static(INDEX_HTML.as_bytes())), true)
        .await
}
