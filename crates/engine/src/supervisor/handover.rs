//! Handing a running app over to another image of herd (the in-place
//! upgrade, `crate::upgrade`): freezing the app task into plain data plus
//! the fds it names ([`Frozen`]), and resuming an app task from that.
//!
//! Freezing goes in two steps. First the app *settles*: it stops accepting
//! client connections (round-robin) and taking requests, and runs on until
//! no spawn is under way and no exited worker's output is still draining
//! and every message queued for a worker is written (bounded by
//! [`SETTLE_LIMIT`]; else the freeze is refused and the app goes on as
//! before). Then, with nothing in flight that could start a
//! process, it stops its helpers, each at a clean point: the channel
//! writers send what is queued; the readers stop between messages and hand
//! back the bytes they read and did not deliver; the output pumps stop
//! between reads, or while they wait for room, and hand back the lines
//! they hold and the unfinished one. What the helpers had passed on but the
//! task had not taken yet (worker messages, exits, `READY=1`s, the task's
//! own events) is kept as it is. Then the state is data: the machine,
//! listeners, workers, cluster and timers (see `app::AppState`), and these
//! leftovers ([`Leftovers`]). The workers notice nothing: their sockets,
//! pipes and channels stay open, and whatever they write waits in the
//! kernel until the next image reads it.
//!
//! Resuming builds the wiring again from that: the notify socket, each
//! worker's channel tasks and pumps (starting from what the previous ones
//! held), the accept loops, then feeds the leftovers in, reaps whatever
//! exited meanwhile, and runs the app loop as before.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::app::{App, AppState, FromTask, Inbox, Request, Wiring};
use super::events::{Events, Stream, Timed, EVENT_QUEUE};
use super::fd;
use super::ipc::{FromWorker, Unread, MESSAGE_QUEUE};
use super::output::{start_pump, Pump};
use crate::exit::ExitStatus;
use crate::machine::{Input, WorkerId};
use crate::os::channel::Channel;
use crate::os::notify::NotifySocket;

/// How long an app may take to settle (spawns under way, exits draining)
/// before a freeze is refused.
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Why an app could not be frozen; it runs on as before.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    #[error("the app did not settle within {}s (workers kept starting or exiting); try again once it is steady", SETTLE_LIMIT.as_secs())]
    Busy,
    #[error("the app finished before it could be handed over")]
    Finished,
    #[error("the app is not running")]
    Gone,
}

/// Why a handed-over state could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum ThawError {
    #[error("the state does not read: {0}")]
    Format(#[from] serde_json::Error),
    #[error("the state names fd {0}, which was not handed over")]
    MissingFd(RawFd),
    #[error("the state has a worker whose start was under way; a frozen app never has one")]
    Spawning,
    #[error("cannot set up the app again: {0}")]
    Io(#[from] std::io::Error),
}

/// What the app task had in hand besides its state when it froze.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Leftovers {
    /// Its own events not yet taken by the consumer.
    pending: Vec<Timed>,
    /// Worker messages read and not yet handled, in order.
    worker_messages: Vec<FromWorker>,
    /// Helper news not yet handled, in order.
    tasks: Vec<SavedTask>,
    /// Per worker: where its channel reader stopped.
    channels: BTreeMap<WorkerId, Unread>,
    /// Per worker, stdout then stderr: what its pump held (`None`: the pipe
    /// had ended, and its fd is not handed over).
    output: BTreeMap<WorkerId, [Option<Vec<u8>>; 2]>,
}

/// A helper's news, as data.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SavedTask {
    Exited {
        worker: WorkerId,
        status: ExitStatus,
    },
    Notify {
        pid: i32,
        text: String,
    },
}

/// The written form of a frozen app (fds as their numbers).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FrozenApp {
    pub(crate) state: AppState,
    #[serde(default)]
    pub(crate) leftovers: Leftovers,
}

/// The triggers of an app that has none armed, as data (for reading a
/// state written before there were triggers).
pub(crate) fn no_triggers() -> serde_json::Value {
    serde_json::to_value(super::triggers::Triggers::default()).expect("plain data")
}

/// A frozen app: its whole state as data, and the fds that state names.
/// Resume it with [`super::resume`] (in this process, or in the next image
/// of herd after [`Frozen::write`] / [`Frozen::read`]). Dropping it closes
/// every fd, which ends the workers' channels: resume it.
#[derive(Debug)]
pub struct Frozen {
    pub(crate) app: FrozenApp,
    /// The fds the state names by plain number (notify socket, channels,
    /// output pipes), by number; the others are inside `app` ([`fd::Fd`]).
    held: BTreeMap<RawFd, OwnedFd>,
}

impl Frozen {
    /// The app's name.
    pub fn name(&self) -> &str {
        &self.app.state.spec.name
    }

    /// The pids of its workers (for a caller that reports them).
    pub fn worker_pids(&self) -> Vec<u32> {
        self.app
            .state
            .workers
            .running_workers()
            .map(|(_, _, pid)| pid.as_raw() as u32)
            .collect()
    }

    /// Write the state as JSON; the numbers of every fd it names (all of
    /// which must reach the next image, at the same numbers).
    pub(crate) fn write(&self) -> Result<(Vec<u8>, Vec<RawFd>), serde_json::Error> {
        let (json, mut fds) = fd::writing(|| serde_json::to_vec(&self.app));
        fds.extend(self.held.keys().copied());
        Ok((json?, fds.into_iter().collect()))
    }

    /// The same app, with its state read from JSON: `read` parses it (with
    /// [`serde_json::from_slice`] or an older version's reader), adopting
    /// the fds it names from `fds`. An fd handed over that the state does
    /// not name is closed.
    pub(crate) fn read(
        fds: Vec<OwnedFd>,
        read: impl FnOnce() -> Result<FrozenApp, serde_json::Error>,
    ) -> Result<Frozen, ThawError> {
        let (app, left) = fd::adopting(fds, read);
        let app = app?;
        let mut left: BTreeMap<RawFd, OwnedFd> =
            left.into_iter().map(|fd| (fd.as_raw_fd(), fd)).collect();
        let mut held = BTreeMap::new();
        let mut take = |n: RawFd| -> Result<(), ThawError> {
            let fd = left.remove(&n).ok_or(ThawError::MissingFd(n))?;
            held.insert(n, fd);
            Ok(())
        };
        take(app.state.notify.fd)?;
        if app.state.workers.any_spawning() {
            return Err(ThawError::Spawning);
        }
        for (worker, _, _, channel, output) in app.state.workers.running_fds() {
            take(channel)?;
            let open = app.leftovers.output.get(&worker);
            for (i, fd) in output.into_iter().enumerate() {
                if open.is_none_or(|o| o[i].is_some()) {
                    take(fd)?;
                }
            }
        }
        // Anything else handed over is nobody's: `left` closes it.
        Ok(Frozen { app, held })
    }
}

impl App {
    /// A freeze was asked for: stop accepting, take no more requests, and
    /// freeze once settled (the run loop checks [`App::settled`]).
    pub(super) fn begin_freeze(&mut self, reply: oneshot::Sender<Result<Frozen, FreezeError>>) {
        if self.wire.freezing.is_some() {
            let _ = reply.send(Err(FreezeError::Busy));
            return;
        }
        self.wire.accepting.clear();
        self.wire.freezing = Some((reply, tokio::time::Instant::now() + SETTLE_LIMIT));
    }

    /// Nothing is under way that would start a process or report an exit,
    /// and every message queued for a worker is written (a worker that does
    /// not read its channel keeps the app from settling: the freeze is
    /// refused rather than wait on it).
    pub(super) fn settled(&self) -> bool {
        !self.state.workers.any_spawning()
            && self.wire.draining == 0
            && self.wire.workers.values().all(|w| w.all_sent())
    }

    /// The freeze cannot happen: say why, and go on as before.
    #[inline(never)]
    pub(super) fn freeze_failed(&mut self, why: FreezeError) {
        if let Some((reply, _)) = self.wire.freezing.take() {
            let _ = reply.send(Err(why));
        }
        self.with_cluster(|cluster, cx| cluster.resume_accepting(cx));
    }

    /// Stop the helpers (see the module docs) and make the app data.
    pub(super) async fn freeze_now(
        mut self,
        tasks: &mut mpsc::UnboundedReceiver<FromTask>,
        messages: &mut mpsc::Receiver<FromWorker>,
        notify_task: tokio::task::JoinHandle<()>,
    ) -> Frozen {
        notify_task.abort();
        let _ = notify_task.await;
        let mut leftovers = Leftovers::default();
        // Connections already accepted go to the books (and to workers);
        // the rest is kept as it came.
        while let Ok(msg) = tasks.try_recv() {
            match msg {
                FromTask::Exited { worker, status } => {
                    leftovers.tasks.push(SavedTask::Exited { worker, status })
                }
                FromTask::Notify { pid, text } => leftovers.tasks.push(SavedTask::Notify {
                    pid: pid.as_raw(),
                    text,
                }),
                other => self.task_message(other),
            }
        }
        let wirings = std::mem::take(&mut self.wire.workers);
        let mut channels = BTreeMap::new();
        let mut held = BTreeMap::new();
        let mut stopping = Vec::new();
        // The writers send what is queued, then end.
        for (worker, w) in wirings {
            drop(w.outbox);
            let _ = w.writer.await;
            stopping.push((worker, w.stop_reader, w.reader, w.pumps));
        }
        // What the readers had made and not delivered follows what is queued.
        let mut undelivered = Vec::new();
        for (worker, stop_reader, reader, pumps) in stopping {
            let _ = stop_reader.send(());
            if let Ok(end) = reader.await {
                leftovers
                    .channels
                    .insert(worker, end.unread.unwrap_or_default());
                undelivered.extend(end.undelivered);
                channels.insert(worker, end.channel);
            }
            let [out, err] = pumps;
            let mut kept: [Option<Vec<u8>>; 2] = [None, None];
            for (i, pump) in [out.pause().await, err.pause().await]
                .into_iter()
                .enumerate()
            {
                if let Some(paused) = pump {
                    kept[i] = Some(paused.unsent);
                    held.insert(paused.fd.as_raw_fd(), paused.fd);
                }
            }
            leftovers.output.insert(worker, kept);
        }
        while let Ok(msg) = messages.try_recv() {
            leftovers.worker_messages.push(msg);
        }
        leftovers.worker_messages.extend(undelivered);
        for (_, channel) in channels {
            // The writer and the reader have ended: this is the last copy.
            if let Some(fd) = Arc::into_inner(channel).and_then(|c| c.into_fd().ok()) {
                held.insert(fd.as_raw_fd(), fd);
            }
        }
        // The watcher is wiring: changes while the app is handed over are
        // not seen (the next image watches again).
        self.wire.watcher = None;
        let Wiring {
            notify, pending, ..
        } = self.wire;
        if let Some(fd) = Arc::into_inner(notify).and_then(|n| n.into_fd().ok()) {
            held.insert(fd.as_raw_fd(), fd);
        }
        leftovers.pending = pending.into_iter().collect();
        Frozen {
            app: FrozenApp {
                state: self.state,
                leftovers,
            },
            held,
        }
    }

    /// An app task from a frozen app: its wiring made again, then its loop.
    pub(super) fn resume(
        frozen: Frozen,
    ) -> Result<(mpsc::UnboundedSender<Request>, Events), ThawError> {
        let Frozen { app, mut held } = frozen;
        let FrozenApp {
            state,
            mut leftovers,
        } = app;
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (requests, requests_rx) = mpsc::unbounded_channel();
        let (tasks, tasks_rx) = mpsc::unbounded_channel();
        let (messages, messages_rx) = mpsc::channel(MESSAGE_QUEUE);
        let (watch_wake, watch_rx) = mpsc::channel(1);
        let mut take = |n: RawFd| held.remove(&n).ok_or(ThawError::MissingFd(n));
        let notify = NotifySocket::from_fd(take(state.notify.fd)?, state.notify.name.clone())?;
        let mut channels = Vec::new();
        for (worker, slot, pid, channel_fd, output_fds) in state.workers.running_fds() {
            let channel = Arc::new(Channel::new(take(channel_fd)?)?);
            // No entry (an older state): both pipes open, nothing held.
            let kept = leftovers
                .output
                .remove(&worker)
                .unwrap_or([Some(Vec::new()), Some(Vec::new())]);
            let mut pipes = Vec::new();
            for (i, unsent) in kept.into_iter().enumerate() {
                pipes.push(match unsent {
                    Some(unsent) => Some((take(output_fds[i])?, unsent)),
                    None => None,
                });
            }
            channels.push((worker, slot, pid, channel, pipes));
        }
        let mut app = App {
            state,
            wire: Wiring {
                notify: Arc::new(notify),
                events,
                pending: std::mem::take(&mut leftovers.pending).into(),
                tasks,
                messages,
                workers: BTreeMap::new(),
                accepting: BTreeMap::new(),
                watcher: None,
                watch_wake,
                draining: 0,
                freezing: None,
                keep_sockets: None,
            },
        };
        for (worker, slot, pid, channel, mut pipes) in channels {
            let raw_pid = pid.as_raw() as u32;
            let mut pump = |i: usize, stream| match pipes[i].take() {
                Some((fd, unsent)) => {
                    start_pump(fd, slot, raw_pid, stream, app.wire.events.clone(), unsent)
                }
                None => Pump::ended(),
            };
            let pumps = [pump(0, Stream::Stdout), pump(1, Stream::Stderr)];
            let from = leftovers.channels.remove(&worker).unwrap_or_default();
            let wiring = app.wire_worker(worker, channel, pumps, from);
            app.wire.workers.insert(worker, wiring);
        }
        let inbox = Inbox {
            requests: requests_rx,
            tasks: tasks_rx,
            messages: messages_rx,
            watch: watch_rx,
        };
        // Boxed, as in `App::spawn`.
        tokio::spawn(Box::pin(app.run(inbox, Some(leftovers))));
        Ok((requests, Events::new(events_rx)))
    }

    /// First steps of a resumed app: accept again, take in what the
    /// previous image had in hand, and look for exits missed meanwhile.
    #[inline(never)]
    pub(super) fn resumed(&mut self, leftovers: Leftovers) {
        self.with_cluster(|cluster, cx| cluster.resume_accepting(cx));
        self.rewire_watcher();
        for task in leftovers.tasks {
            match task {
                SavedTask::Exited { worker, status } => {
                    self.input(Input::Exited { worker, status })
                }
                SavedTask::Notify { pid, text } => self.task_message(FromTask::Notify {
                    pid: Pid::from_raw(pid),
                    text,
                }),
            }
        }
        for msg in leftovers.worker_messages {
            self.worker_message(msg);
        }
        self.reap();
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;
    use std::time::Instant;

    use super::*;
    use crate::config::AppSpec;
    use crate::machine::{Command, Report, Snapshot};
    use crate::supervisor::{self, Event, Events};

    /// Read events until `want` says it saw enough; panics if the app ends.
    pub(crate) async fn until(events: &mut Events, mut want: impl FnMut(&Event) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .expect("in time")
                .expect("the app runs");
            if want(&event) {
                return;
            }
        }
    }

    /// Hand a frozen app over as a new image would get it: written out, its
    /// fds left open at their numbers, read back.
    pub(crate) fn across_exec(frozen: Frozen) -> Frozen {
        let (json, fds) = frozen.write().unwrap();
        // The fds stay open, as across execve; their owners are forgotten.
        std::mem::forget(frozen);
        // SAFETY: open fds whose owner was just forgotten.
        let fds = fds
            .iter()
            .map(|&n| unsafe { OwnedFd::from_raw_fd(n) })
            .collect();
        Frozen::read(fds, || serde_json::from_slice(&json)).expect("the state reads back")
    }

    fn workers_of(s: &Snapshot) -> Vec<(usize, Option<u32>, u64, Duration)> {
        s.slots
            .iter()
            .map(|slot| {
                let w = slot.current.as_ref().unwrap();
                (slot.slot, w.pid, slot.restarts, w.uptime)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_frozen_app_resumes_with_the_same_workers_counters_uptimes_and_output() {
        let dir = std::env::temp_dir().join(format!("herd-handover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("crashed");
        let mut spec = AppSpec::new("handover", "/bin/sh");
        // One worker crashes once (a restart to count); each prints
        // numbered lines in two pieces and answers messages on its channel.
        let script = format!(
            "if [ $HERD_WORKER_ID = 1 ] && ! [ -e {m} ]; then touch {m}; exit 1; fi; \
             i=0; while :; do i=$((i+1)); printf 'n%d' $i; sleep 0.01; printf ' end\\n'; done",
            m = marker.display()
        );
        spec.args = vec!["-c".into(), script];
        spec.instances = 2;
        spec.listeners.push("web=127.0.0.1:0".parse().unwrap());
        spec.ready.ready_delay = Duration::from_millis(50);
        let (handle, mut events) = supervisor::start(spec).unwrap();
        let mut lines: BTreeMap<usize, Vec<u8>> = BTreeMap::new();
        let record = |e: &Event, lines: &mut BTreeMap<usize, Vec<u8>>| {
            if let Event::Output { slot, lines: l, .. } = e {
                lines.entry(*slot).or_default().extend_from_slice(l);
            }
        };
        let mut ready = 0;
        until(&mut events, |e| {
            record(e, &mut lines);
            ready += matches!(e, Event::Lifecycle(Report::Ready { .. })) as usize;
            ready == 2
        })
        .await;
        let before = handle.status().await.unwrap();
        let at = Instant::now();
        assert_eq!(
            before.machine.slots.iter().map(|s| s.restarts).sum::<u64>(),
            1
        );
        // Freeze while reading the events, as a host does, to their end.
        let (frozen, ()) = tokio::join!(handle.freeze(), async {
            while let Some(e) = events.recv().await {
                record(&e, &mut lines);
            }
        });
        let frozen = across_exec(frozen.expect("frozen"));
        let (handle, mut events) = supervisor::resume(frozen).unwrap();
        let after = handle.status().await.unwrap();
        let elapsed = at.elapsed();
        for (b, a) in workers_of(&before.machine)
            .into_iter()
            .zip(workers_of(&after.machine))
        {
            assert_eq!((b.0, b.1, b.2), (a.0, a.1, a.2), "same slot, pid, restarts");
            assert!(
                a.3 >= b.3 && a.3 <= b.3 + elapsed + Duration::from_millis(20),
                "the uptime runs on: {:?} then {:?} after {elapsed:?}",
                b.3,
                a.3
            );
        }
        assert_eq!(after.listeners, before.listeners);
        // Output goes on: let each worker print a few more lines, then stop.
        until(&mut events, |e| {
            record(e, &mut lines);
            lines.values().all(|l| l.len() > 2000)
        })
        .await;
        handle.command(Command::Stop);
        while let Some(e) = events.recv().await {
            record(&e, &mut lines);
        }
        for (slot, text) in lines {
            let text = String::from_utf8(text).unwrap();
            let count = text.lines().count();
            for (i, line) in text.lines().enumerate() {
                let (n, tail) = line.split_once(' ').unwrap_or((line, ""));
                assert_eq!(n, format!("n{}", i + 1), "slot {slot}: line {i}: {line:?}");
                // The last line may be cut by the stop.
                assert!(tail == "end" || i + 1 == count, "slot {slot}: {line:?}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
