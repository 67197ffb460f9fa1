//! A client of one app's supervisor (what the daemon will use to manage and
//! adopt supervisors; tests and tools too): connect and exchange hellos,
//! then ask for the status or the definition, give commands (each answered
//! by its own ticket), or follow the app's events.

use std::path::{Path, PathBuf};

use herd_protocol::supervisor::{
    AppFile, Command, Event, Hello, Request, Response, Status, Ticket, Welcome, PROTOCOL, VERSION,
};
use herd_protocol::{Connection, FrameError};
use tokio::net::UnixStream;

/// Why talking to a supervisor failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the app's supervisor at {path}: {error}; is it running (apps/<id>.pid is locked while it is)?")]
    Connect {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a herd app supervisor's socket (its first answer was not a {PROTOCOL} welcome)")]
    NotASupervisor { path: PathBuf },
    #[error("the supervisor refused: {0}")]
    Refused(String),
    #[error("the supervisor (pid {pid}) speaks {PROTOCOL} protocol {theirs}, and this herd speaks {VERSION}: use the herd that started it, or restart the app's supervisor with this herd")]
    Version { pid: u32, theirs: u32 },
    #[error("the connection to the supervisor failed: {0}")]
    Frame(FrameError),
    #[error("the supervisor answered {answer} to {request}")]
    Unexpected {
        request: &'static str,
        answer: String,
    },
    #[error("the supervisor says: {0}")]
    Supervisor(String),
}

// Not `#[from]`: the frame error is told in the message, not again as a cause.
impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        ClientError::Frame(e)
    }
}

/// One connection to a supervisor, past the hello.
pub struct Client {
    conn: Connection,
    pid: u32,
}

impl Client {
    /// Connect to the supervisor's socket (`apps/<id>.sock`) and say hello.
    pub async fn connect(path: &Path) -> Result<Client, ClientError> {
        Client::connect_as(path, Hello::new()).await
    }

    /// [`connect`](Self::connect) with a hello of one's choosing (to test
    /// how a supervisor meets another version).
    #[doc(hidden)]
    pub async fn connect_as(path: &Path, hello: Hello) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|error| ClientError::Connect {
                path: path.to_path_buf(),
                error,
            })?;
        Client::handshake(Connection::new(stream), hello, path).await
    }

    async fn handshake(
        mut conn: Connection,
        hello: Hello,
        path: &Path,
    ) -> Result<Client, ClientError> {
        let ours = hello.version;
        conn.send(&hello).await?;
        let welcome: Welcome = match conn.recv().await {
            Ok(w) => w,
            Err(FrameError::Json(_)) => {
                return Err(ClientError::NotASupervisor {
                    path: path.to_path_buf(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        if welcome.protocol != PROTOCOL {
            return Err(ClientError::NotASupervisor {
                path: path.to_path_buf(),
            });
        }
        if let Some(why) = welcome.refused {
            return Err(ClientError::Refused(why));
        }
        if welcome.version != ours {
            return Err(ClientError::Version {
                pid: welcome.pid,
                theirs: welcome.version,
            });
        }
        Ok(Client {
            conn,
            pid: welcome.pid,
        })
    }

    /// The supervisor's pid, as its welcome said.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    async fn ask(&mut self, request: Request) -> Result<Response, ClientError> {
        self.conn.send(&request).await?;
        match self.conn.recv().await? {
            Response::Error { message } => Err(ClientError::Supervisor(message)),
            response => Ok(response),
        }
    }

    /// The app and its supervisor as they are now.
    pub async fn status(&mut self) -> Result<Status, ClientError> {
        match self.ask(Request::Status).await? {
            Response::Status { status } => Ok(*status),
            other => Err(unexpected("status", &other)),
        }
    }

    /// The app's file: definition, id, name, desired state.
    pub async fn definition(&mut self) -> Result<AppFile, ClientError> {
        match self.ask(Request::Definition).await? {
            Response::Definition { app } => Ok(*app),
            other => Err(unexpected("definition", &other)),
        }
    }

    /// Give a command and wait for its ticket (a reload's may take a while;
    /// ask for the status on another connection meanwhile).
    pub async fn command(&mut self, command: Command) -> Result<Ticket, ClientError> {
        match self.ask(Request::Command { command }).await? {
            Response::Ticket { ticket } => Ok(ticket),
            other => Err(unexpected("command", &other)),
        }
    }

    /// Follow the app's events from now on (this connection then carries
    /// only them).
    pub async fn follow(mut self) -> Result<Follower, ClientError> {
        self.conn.send(&Request::Follow).await?;
        Ok(Follower { conn: self.conn })
    }
}

fn unexpected(request: &'static str, answer: &Response) -> ClientError {
    let answer = serde_json::to_string(answer).unwrap_or_else(|_| format!("{answer:?}"));
    ClientError::Unexpected { request, answer }
}

/// The app's events, as they happen.
pub struct Follower {
    conn: Connection,
}

impl Follower {
    /// The next event; `None` once the supervisor closed the stream (it
    /// exited, or the app was deleted).
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        match self.conn.recv().await {
            Ok(Response::Event { event }) => Ok(Some(event)),
            Ok(Response::Error { message }) => Err(ClientError::Supervisor(message)),
            Ok(other) => Err(unexpected("follow", &other)),
            Err(FrameError::Closed) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake supervisor that answers the hello with `welcome`.
    async fn meet(welcome: serde_json::Value) -> Result<Client, ClientError> {
        let (ours, theirs) = UnixStream::pair().unwrap();
        tokio::spawn(async move {
            let mut conn = Connection::new(theirs);
            let _: serde_json::Value = conn.recv().await.unwrap();
            conn.send(&welcome).await.unwrap();
            let _ = conn.recv::<serde_json::Value>().await;
        });
        Client::handshake(Connection::new(ours), Hello::new(), Path::new("test.sock")).await
    }

    #[tokio::test]
    async fn a_supervisor_of_another_version_is_a_clear_error_not_a_misparse() {
        let err = meet(serde_json::json!({
            "protocol": PROTOCOL, "version": VERSION + 1, "pid": 77, "new_field": [1, 2]
        }))
        .await
        .err()
        .unwrap();
        let text = err.to_string();
        assert!(
            matches!(err, ClientError::Version { pid: 77, .. }),
            "{text}"
        );
        assert!(
            text.contains(&format!("protocol {}", VERSION + 1))
                && text.contains(&format!("speaks {VERSION}")),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_daemon_or_anything_else_is_not_a_supervisor() {
        let err = meet(serde_json::json!({"response": "hello", "version": 1, "pid": 1}))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::NotASupervisor { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_refusal_is_passed_on_in_the_supervisors_words() {
        let err = meet(serde_json::json!({
            "protocol": PROTOCOL, "version": VERSION, "pid": 5, "refused": "not you"
        }))
        .await
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "the supervisor refused: not you");
    }
}
