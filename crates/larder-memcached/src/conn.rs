//! One TCP connection to a memcached server, for the classic text commands
//! (`stats settings`, `flush_all`, `lru_crawler metadump`); meta requests go
//! through [`crate::mux`].

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::proto::{ProtoError, MAX_LINE};

/// What can go wrong on a connection. Any of these makes the connection
/// unusable (its stream position is unknown) and counts as a server failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// Connecting, reading or writing failed, or the server closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server sent something that is not the protocol.
    #[error("{0}")]
    Proto(ProtoError),
    /// The deadline passed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// How many responses a request expects.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// Exactly this many.
    Count(usize),
    /// Until `MN` (a pipeline of quiet commands ended by `mn`).
    Mn,
}

/// A connection with its read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    /// Connects.
    pub async fn connect(addr: &str) -> Result<Conn, ConnError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
        })
    }

    async fn fill(&mut self) -> Result<(), ConnError> {
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(ConnError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "memcached closed the connection",
            )));
        }
        Ok(())
    }

    /// Sends a classic text command (`stats settings`, `flush_all`,
    /// `lru_crawler metadump all`) and returns its lines up to and without
    /// the terminator line (`END` or `OK`), or the error line.
    pub async fn text_command(&mut self, line: &str) -> Result<Vec<String>, ConnError> {
        self.stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await?;
        let mut lines = Vec::new();
        loop {
            let l = self.read_line().await?;
            if l == "END" || l == "OK" {
                return Ok(lines);
            }
            if l.starts_with("ERROR")
                || l.starts_with("CLIENT_ERROR")
                || l.starts_with("SERVER_ERROR")
                || l.starts_with("BUSY")
            {
                lines.push(l);
                return Ok(lines);
            }
            lines.push(l);
        }
    }

    async fn read_line(&mut self) -> Result<String, ConnError> {
        loop {
            if let Some(nl) = self.buf.iter().take(MAX_LINE).position(|&b| b == b'\n') {
                let line = self.buf.split_to(nl + 1);
                let text = String::from_utf8_lossy(&line[..nl]);
                return Ok(text.trim_end_matches('\r').to_owned());
            }
            if self.buf.len() >= MAX_LINE {
                return Err(ConnError::Proto(ProtoError::LineTooLong));
            }
            self.fill().await?;
        }
    }
}
