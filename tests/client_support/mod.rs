//! Helpers of the CLI client tests: run the real `ehr` binary, and a canned HTTP server.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The result of one `ehr` run.
#[derive(Debug)]
pub struct Run {
    /// Exit status code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// Runs `ehr args...` in `dir` with a clean client environment.
pub fn ehr(dir: &Path, args: &[&str]) -> Run {
    Command::new(env!("CARGO_BIN_EXE_ehr"))
        .args(args)
        .current_dir(dir)
        .env_remove("EHR_IDENTITY")
        .env_remove("EHR_NODE")
        .env_remove("EHR_CONSORTIUM")
        .env("RUST_LOG", "warn")
        .output()
        .expect("the ehr binary runs")
        .into()
}

/// A canned HTTP/1.1 server on 127.0.0.1 (ephemeral port): answers each connection with the
/// next `(status, content type, body)` and keeps the request heads it saw.
pub struct Canned {
    /// Its base URL.
    pub url: String,
    /// The request heads received, in order.
    pub heads: Arc<Mutex<Vec<String>>>,
}

/// Starts a [`Canned`] server on the current tokio runtime.
pub async fn canned(responses: Vec<(u16, &'static str, String)>) -> Canned {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    tokio::spawn(async move {
        for (status, ctype, body) in responses {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let req = read_request(&mut sock).await;
            h.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&req).into_owned());
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {ctype}\r\nx-request-id: req-7\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    Canned { url, heads }
}

/// Reads one request: the head, then `content-length` bytes of body.
async fn read_request(sock: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut req = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return req,
            Ok(n) => n,
        };
        req.extend_from_slice(&buf[..n]);
        let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if req.len() >= end + 4 + len {
            return req;
        }
    }
}
