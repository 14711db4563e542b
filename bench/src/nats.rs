//! NATS JetStream as a topic anchor: a server with file storage on
//! loopback and a minimal client of the NATS text protocol (CONNECT, PUB
//! with a reply inbox for JetStream acknowledgements, SUB, MSG, PING/PONG).
//! Debian's nats-server 2.9 acknowledges a publish once the message is in
//! its store, before an fsync: the results call it not durable.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::procs::{free_port, wait_until, Member};

pub struct NatsServer {
    pub member: Member,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    pub async fn start(binary: &Path) -> NatsServer {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let port = free_port();
        let args = vec![
            "-js".to_string(),
            "-sd".into(),
            dir.path().join("store").display().to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let mut member = Member::new(binary, args, dir.path().join("nats.log"));
        member.start();
        wait_until("nats answers", Duration::from_secs(30), || async move {
            Nats::connect(port).await.is_some()
        })
        .await;
        NatsServer {
            member,
            port,
            _dir: dir,
        }
    }
}

impl NatsServer {
    /// A server with a file-stored JetStream stream `name` on `subject`.
    pub async fn with_stream(binary: &Path, name: &str, subject: &str) -> NatsServer {
        let server = NatsServer::start(binary).await;
        Nats::connect(server.port)
            .await
            .expect("connect to nats")
            .create_stream(name, subject)
            .await
            .expect("create the JetStream stream");
        server
    }
}

/// One delivered message.
pub struct Msg {
    pub payload: Vec<u8>,
}

pub struct Nats {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    next_sid: u64,
}

impl Nats {
    pub async fn connect(port: u16) -> Option<Nats> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.set_nodelay(true).ok()?;
        let (read, write) = stream.into_split();
        let mut nats = Nats {
            reader: BufReader::new(read),
            writer: write,
            next_sid: 1,
        };
        let mut info = String::new();
        nats.reader.read_line(&mut info).await.ok()?;
        if !info.starts_with("INFO") {
            return None;
        }
        nats.writer
            .write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false}\r\nPING\r\n",
            )
            .await
            .ok()?;
        loop {
            let mut line = String::new();
            nats.reader.read_line(&mut line).await.ok()?;
            if line.starts_with("PONG") {
                return Some(nats);
            }
            if line.is_empty() || line.starts_with("-ERR") {
                return None;
            }
        }
    }

    pub async fn subscribe(&mut self, subject: &str) -> std::io::Result<u64> {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.writer
            .write_all(format!("SUB {subject} {sid}\r\n").as_bytes())
            .await?;
        Ok(sid)
    }

    /// Queues a publish (written by the next flush or write).
    pub fn publish_into(out: &mut Vec<u8>, subject: &str, reply: &str, payload: &[u8]) {
        out.extend_from_slice(format!("PUB {subject} {reply} {}\r\n", payload.len()).as_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }

    pub async fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// The next message, answering the server's PINGs on the way.
    pub async fn next_msg(&mut self) -> std::io::Result<Msg> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::other("nats closed the connection"));
            }
            let line = line.trim_end();
            if line == "PING" {
                self.writer.write_all(b"PONG\r\n").await?;
                continue;
            }
            if line.starts_with("-ERR") {
                return Err(std::io::Error::other(line.to_string()));
            }
            let Some(header) = line.strip_prefix("MSG ") else {
                continue; // +OK, PONG, INFO
            };
            let len: usize = header
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad MSG line {line}")))?;
            let mut payload = vec![0; len + 2];
            self.reader.read_exact(&mut payload).await?;
            payload.truncate(len);
            return Ok(Msg { payload });
        }
    }

    /// A request on `subject` and its reply (JetStream's API).
    pub async fn request(&mut self, subject: &str, body: &str) -> std::io::Result<String> {
        let inbox = format!("_INBOX.req{}", self.next_sid);
        self.subscribe(&inbox).await?;
        let mut out = Vec::new();
        Self::publish_into(&mut out, subject, &inbox, body.as_bytes());
        self.write(&out).await?;
        let reply = String::from_utf8_lossy(&self.next_msg().await?.payload).into_owned();
        if reply.contains("\"error\"") {
            return Err(std::io::Error::other(format!("{subject}: {reply}")));
        }
        Ok(reply)
    }

    pub async fn create_stream(&mut self, name: &str, subject: &str) -> std::io::Result<()> {
        self.request(
            &format!("$JS.API.STREAM.CREATE.{name}"),
            &format!(r#"{{"name":"{name}","subjects":["{subject}"],"storage":"file"}}"#),
        )
        .await
        .map(drop)
    }

    /// An ephemeral push consumer of new messages, delivered to `deliver`.
    pub async fn push_consumer(&mut self, stream: &str, deliver: &str) -> std::io::Result<()> {
        self.request(
            &format!("$JS.API.CONSUMER.CREATE.{stream}"),
            &format!(
                r#"{{"stream_name":"{stream}","config":{{"deliver_subject":"{deliver}","deliver_policy":"new","ack_policy":"none"}}}}"#
            ),
        )
        .await
        .map(drop)
    }
}
