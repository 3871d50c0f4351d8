//! The framing of Myelin's local APIs (the agent's, the lab supervisor's):
//! one JSON request per line on a unix socket, answered by one JSON line
//! holding `{"Ok": ...}` or `{"Err": {"kind": ..., "message": ...}}`.

use std::future::Future;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::{ApiError, ErrorKind};

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
    #[error(transparent)]
    Remote(ApiError),
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
    let read = BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(io)?;
    if read == 0 {
        // The server went away mid-request (it stopped or was killed).
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection before it answered",
        )));
    }
    let answer: Result<Resp, ApiError> =
        serde_json::from_str(&answer).map_err(|source| ClientError::Decode {
            path: path.clone(),
            cause: source,
        })?;
    answer.map_err(ClientError::Remote)
}

/// Serves requests on one connection until the peer closes it, answering
/// each with `handle`. A handler's plain `String` error is a
/// [`ErrorKind::Failed`] answer.
pub async fn serve_connection<Req, Resp, E, F, Fut>(stream: UnixStream, handle: F)
where
    Req: DeserializeOwned,
    Resp: Serialize,
    E: Into<ApiError>,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Result<Resp, E>>,
{
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer: Result<Resp, ApiError> = match serde_json::from_str::<Req>(&line) {
            Ok(request) => handle(request).await.map_err(Into::into),
            Err(e) => Err(ApiError::new(
                ErrorKind::Malformed,
                format!("malformed request: {e}; are client and server the same version?"),
            )),
        };
        let text = serde_json::to_string(&answer).unwrap_or_else(|e| {
            let error: Result<(), ApiError> = Err(ApiError::new(
                ErrorKind::Failed,
                format!("cannot encode the answer: {e}"),
            ));
            serde_json::to_string(&error).unwrap_or_default()
        });
        if write
            .write_all(format!("{text}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_with_typed_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, |n: u32| async move {
                    match n {
                        0 => Err(ApiError::new(
                            ErrorKind::Invalid,
                            "zero is not allowed; send 1 or more",
                        )),
                        1 => Err(ApiError::from("the server broke".to_string())),
                        n => Ok(n * 2),
                    }
                }));
            }
        });
        let doubled: u32 = call(&socket, &21u32).await.expect("call");
        assert_eq!(doubled, 42);
        let Err(ClientError::Remote(invalid)) = call::<u32, u32>(&socket, &0).await else {
            panic!("an error answer");
        };
        assert_eq!(invalid.kind, ErrorKind::Invalid);
        assert_eq!(invalid.to_string(), "zero is not allowed; send 1 or more");
        let Err(ClientError::Remote(failed)) = call::<u32, u32>(&socket, &1).await else {
            panic!("an error answer");
        };
        assert_eq!(failed.kind, ErrorKind::Failed);
        let Err(ClientError::Remote(malformed)) = call::<&str, u32>(&socket, &"x").await else {
            panic!("an error answer");
        };
        assert_eq!(malformed.kind, ErrorKind::Malformed);
        let quiet = dir.path().join("quiet.sock");
        let closing = tokio::net::UnixListener::bind(&quiet).expect("bind");
        tokio::spawn(async move {
            // Reads the request, then goes away without an answer.
            if let Ok((stream, _)) = closing.accept().await {
                let mut line = String::new();
                let _ = BufReader::new(stream).read_line(&mut line).await;
            }
        });
        let Err(ClientError::Io { cause, .. }) = call::<u32, u32>(&quiet, &1).await else {
            panic!("an I/O error");
        };
        assert_eq!(cause.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(cause.to_string().contains("before it answered"), "{cause}");
        let missing = call::<u32, u32>(&dir.path().join("nope.sock"), &1)
            .await
            .unwrap_err();
        assert!(matches!(missing, ClientError::Connect { .. }));
    }
}
