//! A minimal client of the PostgreSQL wire protocol for the latency suite:
//! startup without a password, one prepared statement run with a text
//! parameter (Parse once; Bind, Execute, Sync per run), and a simple-query
//! `COPY … TO STDOUT` read as it streams.
//!
//! The Redis and NATS consumers and producers of `subscribe-latency` read
//! and write their sockets in the measuring task. tokio-postgres runs each
//! connection as a task of its own, so with it every Sluice message crossed
//! one more task (often a thread) hand-off on the client's side, on both the
//! producer and the consumer, which the anchors did not pay.

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub struct PgRaw {
    stream: BufReader<TcpStream>,
}

/// One backend message: its type byte and body.
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

impl PgRaw {
    /// Connects as `sluice` to database `sluice` and waits for ReadyForQuery.
    pub async fn connect(port: u16) -> std::io::Result<PgRaw> {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        let mut client = PgRaw {
            stream: BufReader::new(tcp),
        };
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for s in ["user", "sluice", "database", "sluice", ""] {
            cstr(&mut body, s);
        }
        let mut startup = (body.len() as u32 + 4).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        client.stream.get_mut().write_all(&startup).await?;
        client.until_ready().await?;
        Ok(client)
    }

    pub async fn read(&mut self) -> std::io::Result<Message> {
        let tag = self.stream.read_u8().await?;
        let len = self.stream.read_u32().await? as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        self.stream.read_exact(&mut body).await?;
        if tag == b'E' {
            return Err(std::io::Error::other(format!(
                "server error: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        Ok(Message { tag, body })
    }

    /// Reads up to and including ReadyForQuery; an ErrorResponse fails.
    async fn until_ready(&mut self) -> std::io::Result<()> {
        while self.read().await?.tag != b'Z' {}
        Ok(())
    }

    /// Prepares `sql` as the named statement `name`, its parameters typed
    /// by the server.
    pub async fn prepare(&mut self, name: &str, sql: &str) -> std::io::Result<()> {
        let mut parse = Vec::new();
        cstr(&mut parse, name);
        cstr(&mut parse, sql);
        parse.extend_from_slice(&0u16.to_be_bytes());
        let mut out = message(b'P', &parse);
        out.extend(message(b'S', &[]));
        self.stream.get_mut().write_all(&out).await?;
        self.until_ready().await
    }

    /// Runs the prepared statement `name` with `params` in text form and
    /// waits for its completion.
    pub async fn execute(&mut self, name: &str, params: &[&str]) -> std::io::Result<()> {
        let mut bind = Vec::new();
        cstr(&mut bind, "");
        cstr(&mut bind, name);
        bind.extend_from_slice(&0u16.to_be_bytes());
        bind.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            bind.extend_from_slice(&(p.len() as u32).to_be_bytes());
            bind.extend_from_slice(p.as_bytes());
        }
        bind.extend_from_slice(&0u16.to_be_bytes());
        let mut execute = Vec::new();
        cstr(&mut execute, "");
        execute.extend_from_slice(&0u32.to_be_bytes());
        let mut out = message(b'B', &bind);
        out.extend(message(b'E', &execute));
        out.extend(message(b'S', &[]));
        self.stream.get_mut().write_all(&out).await?;
        self.until_ready().await
    }

    /// Starts `copy` (a `COPY … TO STDOUT`) with the simple protocol; its
    /// data then arrives as CopyData (`d`) messages from [`read`](Self::read).
    pub async fn copy_out(&mut self, copy: &str) -> std::io::Result<()> {
        let mut query = Vec::new();
        cstr(&mut query, copy);
        self.stream
            .get_mut()
            .write_all(&message(b'Q', &query))
            .await?;
        loop {
            if self.read().await?.tag == b'H' {
                return Ok(());
            }
        }
    }
}
