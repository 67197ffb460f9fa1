//! Running a helper program to its end from async code, with a deadline:
//! its exit is watched through a pidfd in the tokio reactor, its output read
//! from non-blocking pipes. No thread and no SIGCHLD handler are involved
//! (tokio's `process` feature would set up its signal registry in every herd
//! process), and a helper that outlives its deadline, or whose caller goes
//! away, is killed through the pidfd, which cannot reach a reused pid.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, Interest};

/// Run `command` (its stdout and stderr are captured; stdin is left as the
/// command says) until it exits; `TimedOut` if it has not within
/// `deadline`, by when it has been killed and reaped.
pub async fn output(mut command: Command, deadline: Duration) -> io::Result<Output> {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut running = Running::spawn(&mut command)?;
    let stdout = pipe(running.child.stdout.take())?;
    let stderr = pipe(running.child.stderr.take())?;
    let exited = async {
        let (out, err, exit) = tokio::join!(read_all(stdout), read_all(stderr), running.exited());
        Ok::<_, io::Error>((out?, err?, exit?))
    };
    match tokio::time::timeout(deadline, exited).await {
        Ok(Ok((stdout, stderr, ()))) => {
            let status = running.reap()?;
            Ok(Output {
                status,
                stdout,
                stderr,
            })
        }
        Ok(Err(e)) => Err(e), // Running's drop kills and reaps it
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("it did not exit within {} ms", deadline.as_millis()),
        )),
    }
}

/// A started child and its pidfd; killed and reaped on drop unless reaped.
struct Running {
    child: Child,
    pidfd: OwnedFd,
    reaped: bool,
}

impl Running {
    fn spawn(command: &mut Command) -> io::Result<Running> {
        let mut child = command.spawn()?;
        // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
        // The child is not reaped yet (only this struct waits for it), so
        // its pid names it.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        // SAFETY: the kernel just returned this fd; nothing else owns it.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Running {
            child,
            pidfd,
            reaped: false,
        })
    }

    /// Resolves once the child has exited (a pidfd is readable then).
    async fn exited(&self) -> io::Result<()> {
        let fd = self.pidfd.try_clone()?;
        let watched = super::watch(fd, Interest::READABLE)?;
        let _ready = watched.readable().await?;
        Ok(())
    }

    /// Its exit status, once it has exited.
    fn reap(&mut self) -> io::Result<std::process::ExitStatus> {
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: pidfd_send_signal takes a pidfd, a signal, a null info
        // pointer and flags 0; the pidfd names this child even if it exited.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            );
        }
        // Killed: it is gone within moments; reaped so that no zombie stays.
        let _ = self.child.wait();
    }
}

/// A child's output pipe as an async reader.
fn pipe(end: Option<impl Into<OwnedFd>>) -> io::Result<Option<tokio::net::unix::pipe::Receiver>> {
    end.map(|end| tokio::net::unix::pipe::Receiver::from_owned_fd(end.into()))
        .transpose()
}

async fn read_all(pipe: Option<impl AsyncRead + Unpin>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut out).await?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn a_helper_runs_to_its_end_and_says_what_it_printed() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = output(c, Duration::from_secs(10)).await.unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[tokio::test]
    async fn a_helper_past_its_deadline_is_killed_and_reaped() {
        let mut c = Command::new("sh");
        // It holds its pipes open in a child too: the kill must not wait on them.
        c.args(["-c", "echo $$; exec sleep 30"]);
        let started = Instant::now();
        let e = output(c, Duration::from_millis(300)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_is_an_error() {
        let c = Command::new("/nonexistent/herd-helper");
        let e = output(c, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
