//! A minimal HTTP/1.1 client with keep-alive, enough to post webhooks to
//! the service in tests and the webhook load bench without another crate.
#![allow(dead_code)]

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One connection; requests are sent one after another on it.
pub struct Client {
    stream: BufReader<TcpStream>,
    host: String,
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Client {
    pub async fn connect(addr: std::net::SocketAddr) -> std::io::Result<Client> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Client {
            stream: BufReader::new(s),
            host: addr.to_string(),
        })
    }

    /// POSTs `body` to `path` with `headers`; reads the whole response.
    pub async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let s = self.stream.get_mut();
        s.write_all(req.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await?;
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&buf).into_owned(),
        })
    }
}

/// Seconds since the epoch, as Customer.io sends in X-CIO-Timestamp.
pub fn now() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string()
}

/// A Customer.io reporting webhook body ("delivered" email) for person `n`.
pub fn reporting_webhook(n: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "data": {"action_id": 96, "campaign_id": 23, "customer_id": format!("user-{n}"),
                 "delivery_id": format!("d-{n}"),
                 "identifiers": {"id": format!("user-{n}"), "email": format!("Person{n}@Example.com")},
                 "recipient": format!("person{n}@example.com"), "subject": "Hi Jane"},
        "event_id": format!("ev-{n}"), "metric": "delivered", "object_type": "email",
        "timestamp": 1_700_000_000 + n
    }))
    .unwrap()
}

/// A free TCP port on loopback (for a service's `http.listen`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain blocking HTTP GET against a service's port: (status, body).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split_once("\r\n\r\n")?.1.to_string()))
}
