//! The framing of Myelin's local APIs (the agent's, the lab supervisor's):
//! one JSON request per line on a unix socket, answered by one JSON line
//! holding `{"Ok": ...}` or `{"Err": "what went wrong and what to do"}`.

use std::future::Future;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot reach {path}: {cause}; is it running?")]
    Connect {
        /// The socket path.
        path: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The conversation broke.
    #[error("talking to {path}: {cause}")]
    Io {
        /// The socket path.
        path: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// The answer was not understood.
    #[error(
        "{path} answered something this binary does not understand ({cause}); are both the same version?"
    )]
    Decode {
        /// The socket path.
        path: String,
        /// The cause.
        cause: serde_json::Error,
    },
    /// The server answered with an error.
    #[error("{0}")]
    Remote(String),
}

/// Sends one request and returns the answer.
pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
    socket: &Path,
    request: &Req,
) -> Result<Resp, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        cause: source,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.clone(),
            cause: source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(|source| ClientError::Decode {
        path: path.clone(),
        cause: source,
    })?;
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(io)?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    let answer: Result<Resp, String> =
        serde_json::from_str(&answer).map_err(|source| ClientError::Decode {
            path: path.clone(),
            cause: source,
        })?;
    answer.map_err(ClientError::Remote)
}

/// Serves requests on one connection until the peer closes it, answering
/// each with `handle`.
pub async fn serve_connection<Req, Resp, F, Fut>(stream: UnixStream, handle: F)
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Result<Resp, String>>,
{
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer: Result<Resp, String> = match serde_json::from_str::<Req>(&line) {
            Ok(request) => handle(request).await,
            Err(e) => Err(format!("malformed request: {e}")),
        };
        let mut text = serde_json::to_string(&answer)
            .unwrap_or_else(|e| format!("{{\"Err\":\"cannot encode the answer: {e}\"}}"));
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_with_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, |n: u32| async move {
                    if n == 0 {
                        Err("zero is not allowed; send 1 or more".to_string())
                    } else {
                        Ok(n * 2)
                    }
                }));
            }
        });
        let doubled: u32 = call(&socket, &21u32).await.expect("call");
        assert_eq!(doubled, 42);
        let err = call::<u32, u32>(&socket, &0).await.unwrap_err();
        assert_eq!(err.to_string(), "zero is not allowed; send 1 or more");
        let missing = call::<u32, u32>(&dir.path().join("nope.sock"), &1)
            .await
            .unwrap_err();
        assert!(matches!(missing, ClientError::Connect { .. }));
    }
}
