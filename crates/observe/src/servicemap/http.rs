//! The live page and its JSON API over HTTP/1.1, and the small client the
//! CLI fetches the map with.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE,
    HeaderValue, SET_COOKIE, WWW_AUTHENTICATE,
};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::printer::{PrintOptions, compact_line, verdict_text};

use super::ServiceMapError;
use super::shared::SharedServiceMap;
use super::token::{AccessToken, TOKEN_COOKIE};
use super::view::{EdgeFlows, FlowLine, MapView};

/// The page, its script and its style, compiled into the binary so that the
/// agent serves everything the page needs (no CDN, no files to install).
const INDEX_HTML: &str = include_str!("../../assets/servicemap.html");
const SCRIPT_JS: &str = include_str!("../../assets/servicemap.js");
const STYLE_CSS: &str = include_str!("../../assets/servicemap.css");

/// Only this server's own resources may load: the page works offline, and
/// a browser refuses any attempt to reach elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";

/// Path of the map's JSON.
pub const API_MAP_PATH: &str = "/api/servicemap";

type Body = Full<Bytes>;

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", message)
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = response(StatusCode::OK, "application/json", body);
            // The page polls; a cached answer would freeze it.
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(error) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer failed: {error}\n"),
        ),
    }
}

/// The answer to one request; every path of the API is here.
fn route(map: &SharedServiceMap, method: &Method, path: &str) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not supported; use GET\n"),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/" | "/index.html" => response(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
        "/servicemap.js" => response(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT_JS),
        "/servicemap.css" => response(StatusCode::OK, "text/css; charset=utf-8", STYLE_CSS),
        API_MAP_PATH => json(&map.view()),
        _ => match path
            .strip_prefix("/api/edges/")
            .and_then(|rest| rest.strip_suffix("/flows"))
        {
            Some(id) => edge_flows(map, id),
            None => text(
                StatusCode::NOT_FOUND,
                format!("no such page: {path}; the map is at / and {API_MAP_PATH}\n"),
            ),
        },
    }
}

fn edge_flows(map: &SharedServiceMap, id: &str) -> Response<Body> {
    let Ok(id) = id.parse::<u64>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("edge id {id:?} is not a number; ids are in {API_MAP_PATH}\n"),
        );
    };
    let Some(flows) = map.edge_flows(id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("no edge {id} (it may have expired); ids are in {API_MAP_PATH}\n"),
        );
    };
    let opts = PrintOptions::default();
    json(&EdgeFlows {
        id,
        flows: flows
            .iter()
            .map(|f| FlowLine {
                line: compact_line(f, &opts),
                verdict: verdict_text(f),
            })
            .collect(),
    })
}

/// How a request proves it may read the map.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    /// By the cookie or an `Authorization: Bearer` header.
    Granted,
    /// By `?token=` in the URL: the answer sets the cookie.
    FromQuery,
    /// Not at all.
    Refused,
}

fn access<B>(token: &AccessToken, request: &Request<B>) -> Access {
    let headers = request.headers();
    let bearer = headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok()?.strip_prefix("Bearer "))
        .any(|given| token.matches(given.trim()));
    let cookie = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
        .any(|given| token.matches(given));
    if bearer || cookie {
        return Access::Granted;
    }
    let query = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.strip_prefix("token="))
        .any(|given| token.matches(given));
    if query {
        Access::FromQuery
    } else {
        Access::Refused
    }
}

fn refused() -> Response<Body> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "the service map needs its access token: open the URL `myelin servicemap --url` prints \
         (as root), or send `Authorization: Bearer <token>`\n"
            .to_string(),
    );
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

async fn handle(
    map: SharedServiceMap,
    token: AccessToken,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let access = access(&token, &request);
    if access == Access::Refused {
        return Ok(refused());
    }
    let mut answer = route(&map, request.method(), request.uri().path());
    if access == Access::FromQuery {
        // Kept by the browser for this server only, out of the page's scripts' reach.
        let cookie = format!(
            "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            token.as_str()
        );
        if let Ok(cookie) = HeaderValue::from_str(&cookie) {
            answer.headers_mut().insert(SET_COOKIE, cookie);
        }
    }
    if request.method() == Method::HEAD {
        *answer.body_mut() = Full::new(Bytes::new());
    }
    Ok(answer)
}

/// Serves the page (`GET /`), the map (`GET /api/servicemap`) and an edge's
/// recent flows (`GET /api/edges/<id>/flows`) on `listener`, until the task
/// is dropped or accepting fails. Every request must carry `token` (see
/// [`AccessToken`]); others are answered 401.
pub async fn serve_servicemap(
    listener: TcpListener,
    map: SharedServiceMap,
    token: AccessToken,
) -> std::io::Result<()> {
    loop {
        let (stream, peer): (_, SocketAddr) = listener.accept().await?;
        let (map, token) = (map.clone(), token.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(map.clone(), token.clone(), req));
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, %error, "service map connection ended with an error");
            }
        });
    }
}

/// `host:port` from `host:port`, `http://host:port` or `http://host:port/`.
pub(super) fn authority(server: &str) -> Result<&str, ServiceMapError> {
    if server.starts_with("https://") {
        return Err(ServiceMapError::Address {
            server: server.to_string(),
            reason: "the service map is served over plain HTTP".to_string(),
        });
    }
    let rest = server.strip_prefix("http://").unwrap_or(server);
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') {
        return Err(ServiceMapError::Address {
            server: server.to_string(),
            reason: "expected host:port or http://host:port".to_string(),
        });
    }
    Ok(rest)
}

/// Fetches the map from the server at `server` (`host:port` or
/// `http://host:port`) with its access token.
pub async fn fetch_view(server: &str, token: &AccessToken) -> Result<MapView, ServiceMapError> {
    let authority = authority(server)?;
    let stream =
        TcpStream::connect(authority)
            .await
            .map_err(|source| ServiceMapError::Connect {
                server: server.to_string(),
                source,
            })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(ServiceMapError::Http)?;
    let connection = tokio::spawn(connection);
    let request = Request::get(API_MAP_PATH)
        .header(http::header::HOST, authority)
        .header(AUTHORIZATION, format!("Bearer {}", token.as_str()))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| ServiceMapError::Address {
            server: server.to_string(),
            reason: e.to_string(),
        })?;
    let answer = sender
        .send_request(request)
        .await
        .map_err(ServiceMapError::Http)?;
    let status = answer.status();
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(ServiceMapError::Http)?
        .to_bytes();
    connection.abort();
    if status != StatusCode::OK {
        return Err(ServiceMapError::Status {
            server: server.to_string(),
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    serde_json::from_slice(&body).map_err(|source| ServiceMapError::Decode {
        server: server.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_forms() {
        assert_eq!(authority("127.0.0.1:12000").ok(), Some("127.0.0.1:12000"));
        assert_eq!(authority("http://localhost:1/").ok(), Some("localhost:1"));
        assert!(authority("https://x:1").is_err());
        assert!(authority("http://x:1/api").is_err());
        assert!(authority("nohost").is_err());
    }

    #[test]
    fn only_requests_with_the_token_are_served() {
        let token = AccessToken::new("secret".to_string());
        let request = |uri: &str, header: Option<(http::HeaderName, &str)>| {
            let mut builder = Request::get(uri);
            if let Some((name, value)) = header {
                builder = builder.header(name, value);
            }
            builder.body(()).expect("request")
        };
        assert_eq!(access(&token, &request("/", None)), Access::Refused);
        assert_eq!(
            access(&token, &request("/?token=wrong", None)),
            Access::Refused
        );
        assert_eq!(
            access(&token, &request("/?a=1&token=secret", None)),
            Access::FromQuery
        );
        let cookie = format!("x=1; {TOKEN_COOKIE}=secret");
        assert_eq!(
            access(&token, &request(API_MAP_PATH, Some((COOKIE, &cookie)))),
            Access::Granted
        );
        assert_eq!(
            access(
                &token,
                &request(API_MAP_PATH, Some((AUTHORIZATION, "Bearer secret")))
            ),
            Access::Granted
        );
        assert_eq!(
            access(
                &token,
                &request(API_MAP_PATH, Some((AUTHORIZATION, "Bearer secrets")))
            ),
            Access::Refused
        );
    }
}
