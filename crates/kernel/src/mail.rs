//! Outgoing email. With `SMTP_URL` set, messages go to that SMTP server; without
//! it (the embedded default) each message is written as an `.eml` file into
//! `<data_dir>/mail`, where an operator (or a test) can read it.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::BoxError;

/// A plain-text message.
#[derive(Debug, Clone)]
pub struct Email {
    /// Recipient address.
    pub to: String,
    /// Subject line.
    pub subject: String,
    /// Body (plain text).
    pub text: String,
}

/// Sends email.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Sends one message.
    async fn send(&self, email: &Email) -> Result<(), BoxError>;
    /// `smtp` or `directory`.
    fn kind(&self) -> &'static str;
}

/// Opens the mailer the configuration names.
pub fn open(
    smtp_url: Option<&str>,
    from: &str,
    data_dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn Mailer>, String> {
    if from.contains(['\r', '\n']) {
        return Err("the sender address may not contain line breaks".into());
    }
    match smtp_url {
        None => Ok(std::sync::Arc::new(DirMailer { dir: data_dir.join("mail"), from: from.to_string() })),
        Some(url) => {
            let rest = url.strip_prefix("smtp://").ok_or_else(|| {
                format!("{url:?}: expected smtp://HOST:PORT (a relay on a trusted network)")
            })?;
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains('@') {
                return Err(format!("{url:?}: expected smtp://HOST:PORT without credentials"));
            }
            let addr = if host.contains(':') { host.to_string() } else { format!("{host}:25") };
            Ok(std::sync::Arc::new(SmtpMailer { addr, from: from.to_string() }))
        }
    }
}

/// The address part of `Name <addr>` (or the whole string).
fn address(s: &str) -> &str {
    match (s.rfind('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => &s[a + 1..b],
        _ => s.trim(),
    }
}

fn message(from: &str, e: &Email) -> Result<String, BoxError> {
    if [&e.to, &e.subject].iter().any(|h| h.contains(['\r', '\n'])) {
        return Err("a header contains a line break".into());
    }
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    let id = uuid::Uuid::new_v4();
    let body = e.text.replace("\r\n", "\n").replace('\n', "\r\n");
    Ok(format!(
        "From: {from}\r\nTo: {}\r\nSubject: {}\r\nDate: {date}\r\nMessage-ID: <{id}@signpost>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n",
        e.to, e.subject
    ))
}

/// Writes each message to a file.
pub struct DirMailer {
    dir: PathBuf,
    from: String,
}

#[async_trait]
impl Mailer for DirMailer {
    async fn send(&self, email: &Email) -> Result<(), BoxError> {
        let text = message(&self.from, email)?;
        tokio::fs::create_dir_all(&self.dir).await?;
        let name = format!("{}.eml", uuid::Uuid::now_v7());
        let tmp = self.dir.join(format!(".{name}"));
        tokio::fs::write(&tmp, text).await?;
        tokio::fs::rename(&tmp, self.dir.join(&name)).await?;
        tracing::info!(dir = %self.dir.display(), file = %name, "email written (no SMTP_URL configured)");
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "directory"
    }
}

/// Relays through an SMTP server (RFC 5321, no authentication: a local relay).
pub struct SmtpMailer {
    addr: String,
    from: String,
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: &Email) -> Result<(), BoxError> {
        let text = message(&self.from, email)?;
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(&self.addr).await?;
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            expect(&mut r, 220).await?;
            for (cmd, code) in [
                ("EHLO signpost".to_string(), 250),
                (format!("MAIL FROM:<{}>", address(&self.from)), 250),
                (format!("RCPT TO:<{}>", address(&email.to)), 250),
                ("DATA".to_string(), 354),
            ] {
                w.write_all(format!("{cmd}\r\n").as_bytes()).await?;
                expect(&mut r, code).await?;
            }
            // Dot-stuffing: a line that starts with '.' gets another.
            let stuffed =
                text.split("\r\n").map(|l| if l.starts_with('.') { format!(".{l}") } else { l.to_string() });
            let mut data = stuffed.collect::<Vec<_>>().join("\r\n");
            data.push_str(".\r\n");
            w.write_all(data.as_bytes()).await?;
            expect(&mut r, 250).await?;
            w.write_all(b"QUIT\r\n").await?;
            Ok::<(), BoxError>(())
        };
        tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .map_err(|_| -> BoxError { "SMTP timed out".into() })?
    }

    fn kind(&self) -> &'static str {
        "smtp"
    }
}

/// Reads a (possibly multi-line) reply and checks its code.
async fn expect<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, code: u16) -> Result<(), BoxError> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            return Err("SMTP server closed the connection".into());
        }
        let got: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or("malformed SMTP reply")?;
        if line.as_bytes().get(3) == Some(&b'-') {
            continue;
        }
        if got != code {
            return Err(format!("SMTP: expected {code}, got {}", line.trim_end()).into());
        }
        return Ok(());
    }
}
