//! One app's supervisor process (`herd supervise`), started by hand as the
//! daemon will start it: a definition file in a temporary home, the real
//! binary, real workers (the fixture server), its socket and protocol
//! through the client the daemon will use. Every test ends what it started:
//! the supervisor by its pid, the app's processes by the cgroup or process
//! groups the supervisor recorded (`apps/<id>.groups`).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command as Process, Output};
use std::time::{Duration, Instant};

use herd_engine::config::AppSpec;
use herd_engine::machine::Report;
use herd_home::Home;
use herd_protocol::supervisor::{
    AppFile, Command, Containment, Desired, Event, Hello, Status, Ticket, PROTOCOL, VERSION,
};
use herd_protocol::{AppDef, AppState, WorkerRole, WorkerState};
use herd_supervisor::client::{Client, ClientError, Follower};
use herd_supervisor::contain::{self, Record};
use herd_supervisor::files::AppFiles;
use herd_testkit::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const ID: u32 = 1;
const WAIT: Duration = Duration::from_secs(20);

/// One app's home and its supervisor(s).
struct Supervised {
    home: TempDir,
    files: AppFiles,
    rt: tokio::runtime::Runtime,
}

impl Supervised {
    /// A home with `apps/1.json` for `def`, wished running.
    fn new(tag: &str, def: AppDef) -> Supervised {
        let home = TempDir::new(tag);
        let files = AppFiles::open(&Home::open(home.path()).unwrap(), ID).unwrap();
        files
            .write_app(&AppFile::new(ID, Desired::Running, def))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Supervised { home, files, rt }
    }

    /// `herd supervise --home H --id 1 EXTRA...`, run to its end: it returns
    /// once the detached supervisor serves.
    fn supervise(&self, extra: &[&str]) -> Output {
        let home = self.home.path().to_str().unwrap();
        let mut args = vec!["supervise", "--home", home, "--id", "1"];
        args.extend_from_slice(extra);
        let started = Instant::now();
        let out = Process::new(herd_bin()).args(&args).output().unwrap();
        assert!(
            started.elapsed() < WAIT,
            "herd supervise took {:?}",
            started.elapsed()
        );
        out
    }

    /// Start a supervisor that must come up; its pid.
    fn start(&self, extra: &[&str]) -> u32 {
        let out = self.supervise(extra);
        assert!(
            out.status.success(),
            "herd supervise failed: {}{}\nherd.log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.herd_log()
        );
        self.pid().expect("a pid file")
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.files.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn herd_log(&self) -> String {
        std::fs::read_to_string(self.files.home().daemon_log()).unwrap_or_default()
    }

    fn out_log(&self) -> String {
        std::fs::read_to_string(self.files.home().log_dir().join("web-out.log")).unwrap_or_default()
    }

    fn client(&self) -> Client {
        self.rt
            .block_on(Client::connect(&self.files.socket()))
            .unwrap_or_else(|e| panic!("{e}\nherd.log:\n{}", self.herd_log()))
    }

    fn status(&self) -> Status {
        let mut c = self.client();
        self.rt.block_on(c.status()).unwrap()
    }

    fn command(&self, command: Command) -> Ticket {
        let mut c = self.client();
        self.rt.block_on(c.command(command)).unwrap()
    }

    /// Poll the status until every slot's worker is online; their pids.
    fn wait_online(&self, n: usize) -> Vec<u32> {
        let mut last = None;
        let ok = wait_until(WAIT, || {
            let s = self.status();
            let serving: Vec<u32> = s
                .app
                .info
                .workers
                .iter()
                .filter(|w| w.role == WorkerRole::Current && w.state == WorkerState::Online)
                .filter_map(|w| w.pid)
                .collect();
            let done = s.app.info.state == AppState::Online && serving.len() == n;
            last = Some(s);
            done
        });
        let s = last.unwrap();
        assert!(ok, "not online: {s:#?}\nherd.log:\n{}", self.herd_log());
        serving_pids(&s)
    }
}

impl Drop for Supervised {
    /// SIGKILL the supervisor (its workers die with it), then end the rest
    /// of the app by the supervisor's own record.
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            if is_supervisor(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                wait_until(Duration::from_secs(5), || !is_supervisor(pid));
            }
        }
        if let Ok(record) = Record::read(&self.files) {
            contain::end_leftovers(&record);
        }
    }
}

/// Is `pid` a live `herd supervise` (not a zombie, not a reused pid)?
fn is_supervisor(pid: u32) -> bool {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    !zombie && String::from_utf8_lossy(&cmdline).contains("supervise")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn serving_pids(s: &Status) -> Vec<u32> {
    s.app.info.current_workers().filter_map(|w| w.pid).collect()
}

/// The fixture server, `n` workers on one port of loopback.
fn fixture(n: usize, args: &[&str]) -> AppDef {
    let mut spec = AppSpec::new("web", worker_bin());
    spec.args = args.iter().map(|a| a.to_string()).collect();
    spec.listeners = vec!["127.0.0.1:0".parse().unwrap()];
    spec.instances = n;
    AppDef::from(spec)
}

/// The pids the fixture's workers printed as `child <pid>` in the log.
fn children_in_log(log: &str) -> BTreeSet<i32> {
    log.lines()
        .filter_map(|l| l.strip_prefix("child "))
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

#[test]
fn a_supervisor_started_by_hand_detaches_serves_its_app_and_tells_its_typed_status() {
    let s = Supervised::new("sup-status", fixture(2, &[]));
    let out = s.supervise(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    let pid = s.pid().unwrap();
    assert!(
        said.contains(&format!("supervisor {pid} of app web (id 1): started web")),
        "{said}"
    );

    // Detached: a session of its own, not our child, no terminal, stdin and
    // stdout on /dev/null, stderr into herd.log.
    assert_eq!(
        nix::unistd::getsid(Some(Pid::from_raw(pid as i32)))
            .unwrap()
            .as_raw(),
        pid as i32
    );
    let fd = |n: u32| std::fs::read_link(format!("/proc/{pid}/fd/{n}")).unwrap();
    assert_eq!(fd(0), PathBuf::from("/dev/null"));
    assert_eq!(fd(1), PathBuf::from("/dev/null"));
    assert_eq!(fd(2), s.files.home().daemon_log());
    for file in [s.files.socket(), s.files.pid_file(), s.files.groups_file()] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }

    let pids = s.wait_online(2);
    let status = s.status();
    let addr = status.app.info.listen[0].clone();
    let served = wait_http_ok(&addr, WAIT);
    assert!(pids.contains(&(served as u32)), "{served} not in {pids:?}");

    // The typed status: the app, each worker, the supervisor itself.
    assert_eq!(status.app.info.id, ID);
    assert_eq!(status.app.info.name, "web");
    assert_eq!(status.app.info.instances, 2);
    assert_eq!(status.app.info.online, 2);
    assert_eq!(status.app.info.mode.to_string(), "cluster");
    let slots: Vec<usize> = status.app.info.workers.iter().map(|w| w.slot).collect();
    assert_eq!(slots, vec![0, 1]);
    assert!(status.app.info.workers.iter().all(|w| w.restarts == 0));
    assert_eq!(status.supervisor.pid, pid);
    let herd = std::fs::metadata(herd_bin()).unwrap();
    assert_eq!(status.supervisor.binary.inode, herd.ino());
    assert_eq!(status.supervisor.binary.protocol, VERSION);
    assert_eq!(
        status.app.info.out_log,
        s.files.home().log_dir().join("web-out.log")
    );
    // The sampler fills in CPU and memory within a second or two.
    let sampled = wait_until(WAIT, || {
        let st = s.status();
        st.app
            .info
            .workers
            .iter()
            .all(|w| w.memory_bytes > 0 && w.uptime_ms > 0)
    });
    assert!(sampled, "{:#?}", s.status());
    // It says how it contains the app, and its record agrees.
    let record = Record::read(&s.files).unwrap();
    match &status.supervisor.containment {
        Containment::Cgroup { path } => {
            assert_eq!(record.cgroup.as_ref(), Some(path));
            let procs = contain::cgroup_processes(path);
            assert!(procs.contains(&pid), "{procs:?}");
            assert!(pids.iter().all(|p| procs.contains(p)), "{procs:?}");
        }
        Containment::ProcessGroups => assert_eq!(record.cgroup, None),
    }
    let mut recorded: Vec<u32> = record.groups.iter().map(|g| g.pgid).collect();
    recorded.sort_unstable();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(recorded, expected, "each worker's group is recorded");
    eprintln!("contained by {:?}", status.supervisor.containment);

    // The definition, as written.
    let mut c = s.client();
    let def = s.rt.block_on(c.definition()).unwrap();
    assert_eq!(def, s.files.read_app().unwrap());
    assert!(s
        .herd_log()
        .contains(&format!("app web: supervisor {pid} serves")));

    // A stop is remembered in the app file; a start brings it back.
    assert!(s.command(Command::Stop).is_done());
    assert_eq!(s.status().app.info.state, AppState::Stopped);
    assert_eq!(s.files.read_app().unwrap().desired, Desired::Stopped);
    assert!(s.command(Command::Start).is_done());
    s.wait_online(2);
    assert_eq!(s.files.read_app().unwrap().desired, Desired::Running);
    let new = serving_pids(&s.status());

    // Delete: the workers end, the supervisor exits, the app's files go.
    let ticket = s.command(Command::Delete);
    assert_eq!(
        ticket,
        Ticket::Done {
            message: "deleted web".into()
        }
    );
    assert!(
        wait_until(WAIT, || !is_supervisor(pid)),
        "the supervisor stays"
    );
    for p in new {
        assert!(!process_alive(p as i32), "worker {p} outlived the app");
    }
    for file in [
        s.files.app_file(),
        s.files.socket(),
        s.files.pid_file(),
        s.files.groups_file(),
    ] {
        assert!(!file.exists(), "{} is left", file.display());
    }
    if let Containment::Cgroup { path } = &status.supervisor.containment {
        assert!(!path.exists(), "the cgroup {} is left", path.display());
    }
}

#[test]
fn a_second_supervisor_for_the_same_app_refuses_and_the_first_serves_on() {
    let s = Supervised::new("sup-twice", fixture(1, &[]));
    let pid = s.start(&[]);
    s.wait_online(1);
    let out = s.supervise(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("a supervisor (pid {pid}) already runs app 1"))
            && err.contains("1.sock"),
        "{err}"
    );
    assert_eq!(s.pid(), Some(pid), "the pid file still names the first");
    assert_eq!(s.status().supervisor.pid, pid);
    s.wait_online(1);
}

/// The bug this pins: a command waiting for a reload was answered by the end
/// of *any* reload, here the replacement the memory limit asked for.
#[test]
fn a_reload_is_answered_by_its_own_ticket_while_the_memory_limit_replaces_a_worker() {
    let mut def = fixture(2, &[]);
    // Every worker is over this: the sampler replaces one after two samples.
    def.max_memory_restart = Some(1);
    def.spec.ready.ready_delay = Duration::from_millis(1500);
    let s = Supervised::new("sup-ticket", def);
    s.start(&[]);
    let follower: Follower = s.rt.block_on(s.client().follow()).unwrap();
    let mut follower = follower;
    // Wait until the memory limit's replacement is under way.
    let replacing = s.rt.block_on(async {
        tokio::time::timeout(WAIT, async {
            loop {
                match follower.next().await.unwrap() {
                    Some(Event::Lifecycle {
                        report: Report::Replacing { slot },
                    }) => return slot,
                    Some(_) => {}
                    None => panic!("the stream ended"),
                }
            }
        })
        .await
    });
    let replacing = replacing.unwrap_or_else(|_| panic!("no replacement\n{}", s.herd_log()));
    let before: BTreeSet<u32> = serving_pids(&s.status()).into_iter().collect();

    // Our reload, given while that replacement runs.
    let mut commander = s.client();
    let mut watcher = s.client();
    let (ticket, during) = s.rt.block_on(async {
        let reload = commander.command(Command::Reload { definition: None });
        tokio::pin!(reload);
        // A status on another connection is answered meanwhile.
        let mut during = None;
        let ticket = loop {
            tokio::select! {
                t = &mut reload => break t.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(300)), if during.is_none() => {
                    during = Some(watcher.status().await.unwrap().app.info.state);
                }
            }
        };
        (ticket, during)
    });
    assert_eq!(
        ticket,
        Ticket::Done {
            message: "reloaded web".into()
        }
    );
    assert_eq!(during, Some(AppState::Reloading));
    // Answered at its own end: every slot has a worker started after the
    // command (the replacement alone would have left one slot's old worker).
    let after = serving_pids(&s.status());
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "slot {replacing} was being replaced; old {before:?}, now {after:?}"
    );
    // The follower saw our reload queued behind the replacement, then run.
    let seen = s.rt.block_on(async {
        let mut seen = Vec::new();
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout(Duration::from_millis(200), follower.next()).await
        {
            seen.push(e);
        }
        seen
    });
    let reports: Vec<String> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Lifecycle { report } => Some(report.to_string()),
            _ => None,
        })
        .collect();
    assert!(
        reports.iter().any(|r| r.starts_with("reload queued"))
            && reports.iter().any(|r| r.starts_with("reload started")),
        "{reports:#?}"
    );
}

/// Regression: `sleep 777 &` in a worker survived its SIGKILLed supervisor.
fn kill_9_leaves_nothing_of_the_old_app(contain: &str) {
    let s = Supervised::new("sup-kill9", fixture(2, &["--spawn-child"]));
    let out = s.supervise(&["--contain", contain]);
    if !out.status.success() && text(&out.stderr).contains("cannot contain app") {
        skip_or_fail(&format!(
            "no cgroup can be created here: {}",
            text(&out.stderr)
        ));
        return;
    }
    assert!(out.status.success(), "{}", text(&out.stderr));
    let old = s.pid().unwrap();
    let workers = s.wait_online(2);
    let mut children = BTreeSet::new();
    assert!(wait_until(WAIT, || {
        children = children_in_log(&s.out_log());
        children.len() == 2
    }));
    let lines_before = s.out_log().lines().count();

    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    // Its workers die with it (PDEATHSIG); their children do not, yet.
    assert!(wait_until(WAIT, || workers
        .iter()
        .all(|&p| !process_alive(p as i32))));
    assert!(
        children.iter().all(|&c| process_alive(c)),
        "the grandchildren should still be there for the new supervisor to end"
    );

    let new = s.start(&["--contain", contain]);
    assert_ne!(new, old);
    // It ended them before it served.
    for c in &children {
        assert!(!process_alive(*c), "grandchild {c} of the old app survived");
    }
    assert!(
        s.herd_log()
            .contains("ended 2 process(es) its previous supervisor left"),
        "{}",
        s.herd_log()
    );
    let workers_now = s.wait_online(2);
    assert!(workers_now.iter().all(|p| !workers.contains(p)));
    // The log files carry on: the old lines, then the new workers'.
    assert!(wait_until(WAIT, || children_in_log(&s.out_log()).len() == 4));
    let log = s.out_log();
    assert!(log.lines().count() > lines_before);
    for p in workers.iter().chain(&workers_now) {
        assert!(log.contains(&format!("pid {p} serving")), "{log}");
    }
    let kind = &s.status().supervisor.containment;
    match contain {
        "cgroup" => assert!(matches!(kind, Containment::Cgroup { .. }), "{kind:?}"),
        _ => assert_eq!(*kind, Containment::ProcessGroups),
    }
}

#[test]
fn kill_9_of_the_supervisor_then_a_new_one_leaves_nothing_of_the_old_app_cgroup() {
    kill_9_leaves_nothing_of_the_old_app("cgroup");
}

#[test]
fn kill_9_of_the_supervisor_then_a_new_one_leaves_nothing_of_the_old_app_process_groups() {
    kill_9_leaves_nothing_of_the_old_app("process-groups");
}

#[test]
fn a_process_that_left_its_group_is_ended_too_where_the_app_has_a_cgroup() {
    // The worker's shell starts one child in a session of its own: no
    // process group record can find it, the cgroup does.
    let mut def = fixture(1, &[]);
    let worker = def.spec.program.display().to_string();
    def.spec.program = "/bin/sh".into();
    def.spec.args = vec![
        "-c".into(),
        format!("setsid sleep 777 </dev/null >/dev/null 2>&1 & echo escaped $!; exec {worker}"),
    ];
    let s = Supervised::new("sup-escape", def);
    let out = s.supervise(&["--contain", "cgroup"]);
    if !out.status.success() {
        skip_or_fail(&format!("no cgroup here: {}", text(&out.stderr)));
        return;
    }
    s.wait_online(1);
    let mut escaped = None;
    assert!(wait_until(WAIT, || {
        escaped = s
            .out_log()
            .lines()
            .find_map(|l| l.strip_prefix("escaped ")?.trim().parse::<i32>().ok());
        escaped.is_some()
    }));
    let escaped = escaped.unwrap();
    assert!(wait_until(WAIT, || {
        nix::unistd::getsid(Some(Pid::from_raw(escaped))).ok() == Some(Pid::from_raw(escaped))
    }));
    kill(Pid::from_raw(s.pid().unwrap() as i32), Signal::SIGKILL).unwrap();
    assert!(wait_until(WAIT, || !is_supervisor(s.pid().unwrap())));
    assert!(process_alive(escaped));
    s.start(&["--contain", "cgroup"]);
    assert!(
        !process_alive(escaped),
        "the escaped process {escaped} survived"
    );
}

#[test]
fn a_client_of_another_protocol_version_gets_a_clear_error_not_a_misparse() {
    let s = Supervised::new("sup-version", fixture(1, &[]));
    let pid = s.start(&[]);
    let future = Hello {
        protocol: PROTOCOL.into(),
        version: VERSION + 1,
    };
    let err =
        s.rt.block_on(Client::connect_as(&s.files.socket(), future))
            .err()
            .expect("refused");
    let text = err.to_string();
    assert!(matches!(err, ClientError::Refused(_)), "{text}");
    assert!(
        text.contains(&format!("protocol {VERSION}"))
            && text.contains(&format!("protocol {}", VERSION + 1))
            && text.contains(&pid.to_string()),
        "{text}"
    );
    // The CLI's hello (the daemon's protocol) on this socket: told where to go.
    let raw = s.rt.block_on(async {
        let stream = tokio::net::UnixStream::connect(&s.files.socket())
            .await
            .unwrap();
        let mut conn = herd_protocol::Connection::new(stream);
        conn.send(&herd_protocol::Request::Hello {
            version: herd_protocol::VERSION,
        })
        .await
        .unwrap();
        conn.recv::<serde_json::Value>().await.unwrap()
    });
    let refused = raw["refused"].as_str().unwrap_or_default();
    assert!(refused.contains("talk to the daemon"), "{raw}");
    // And it still serves clients of its own version.
    assert_eq!(s.status().supervisor.pid, pid);
}
