//! `herd monit`: a terminal dashboard over the daemon (ratatui + crossterm).
//! It owns the screen while it runs: the apps and their workers (status,
//! pid, uptime, restarts, CPU, memory), sparklines of CPU and memory kept
//! here in bounded ring buffers, the selected app's log tail (the files read
//! directly, as `herd logs` does), and keys that reload, restart, scale and
//! stop the selected app (with a confirmation for the disruptive ones).
//!
//! Threads: the UI thread blocks in crossterm's `event::poll` with a
//! timeout (no busy loop) and redraws only when something changed; a poller
//! thread asks the daemon for the list once a second through one reused
//! [`client::Client`]; each action runs on its own short-lived thread, so a
//! reload that takes seconds never freezes the screen. The terminal is
//! restored on every exit path: q, Esc, Ctrl-C, SIGTERM, an error, a panic
//! (ratatui's hook); when the terminal itself hangs up (ssh dropped) monit
//! just exits, rather than spin on a dead terminal as pm2 monit does.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use herd_protocol::{AppInfo, Request, Response, ScaleTo, WorkerRole};
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Row, Sparkline, Table, TableState};
use ratatui::Frame;

use super::client::Client;
use super::list::{memory, uptime, Tone};
use super::tail::Tail;

/// How often the daemon is asked for the list.
const REFRESH: Duration = Duration::from_secs(1);
/// How often the UI wakes to read new log lines (and expire messages).
const TICK: Duration = Duration::from_millis(250);
/// Samples kept per series: 5 minutes at 1 Hz.
const HISTORY: usize = 300;
/// Log lines kept for the selected app.
const LOG_KEEP: usize = 500;
/// Unread log bytes beyond which the tail skips ahead (a flood).
const LOG_SKIP: u64 = 256 * 1024;
/// The part of a log line kept for the screen, in bytes.
const LINE_MAX: usize = 1024;
/// How long an action's outcome stays in the footer.
const MESSAGE_FOR: Duration = Duration::from_secs(8);

pub fn main() -> anyhow::Result<i32> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "herd monit draws on a terminal, and this is not one: run it in a terminal \
             (over ssh: `ssh -t HOST herd monit`); scripts want `herd jlist`"
        );
    }
    // The first list before taking the screen: it starts the daemon when it
    // is not running (as every verb does), and an error prints plainly.
    let client = Client::new()?;
    let first = match client.request(
        Request::List {
            show_secrets: false,
        },
        true,
    )? {
        Some(Response::Apps { apps }) => apps,
        _ => anyhow::bail!("the daemon answered list with something else"),
    };
    let (list_tx, list_rx) = mpsc::channel();
    let (wake_tx, wake_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("monit-poll".into())
        .spawn(move || poll_daemon(client, list_tx, wake_rx))?;

    let mut state = State::new();
    state.update(Ok(first));
    for sig in [libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic (async-signal-safe).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let terminal = ratatui::try_init().context(
        "cannot take over the terminal (raw mode); run herd monit in an interactive terminal",
    )?;
    let _restore = Restore;
    run(terminal, state, list_rx, wake_tx)
}

/// The signal that asked monit to end (SIGTERM, SIGHUP), 0 for none: the
/// loop sees it within a tick and restores the terminal before exiting.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALLED.store(sig, Ordering::Relaxed);
}

/// Has the terminal hung up (ssh dropped, the window closed)? Then there
/// is no one to draw for: monit ends instead of spinning on EOF.
fn terminal_gone() -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0].revents().is_some_and(|r| r.intersects(gone))
}

/// Gives the terminal back (raw mode off, main screen, cursor) however
/// `main` ends; ratatui's panic hook does the same on a panic.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

type ListResult = Result<Vec<AppInfo>, String>;

/// The poller thread: one list a second, or at once when woken (after an
/// action). Never starts the daemon: after `herd kill`, monit says so.
fn poll_daemon(client: Client, tx: Sender<ListResult>, wake: Receiver<()>) {
    loop {
        let started = Instant::now();
        let result = match client.request(
            Request::List {
                show_secrets: false,
            },
            false,
        ) {
            Ok(Some(Response::Apps { apps })) => Ok(apps),
            Ok(None) => Err("the daemon is not running (`herd ping` starts it)".to_string()),
            Ok(Some(other)) => Err(format!("the daemon answered list with {other:?}")),
            Err(e) => Err(format!("{e:#}")),
        };
        if tx.send(result).is_err() {
            return;
        }
        match wake.recv_timeout(REFRESH.saturating_sub(started.elapsed())) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn run(
    mut terminal: ratatui::DefaultTerminal,
    mut state: State,
    list_rx: Receiver<ListResult>,
    wake_tx: Sender<()>,
) -> anyhow::Result<i32> {
    let (done_tx, done_rx) = mpsc::channel::<(String, Result<String, String>)>();
    let mut dirty = true;
    loop {
        if dirty {
            terminal.draw(|f| draw(f, &mut state))?;
            dirty = false;
        }
        let ready = match event::poll(TICK) {
            Ok(ready) => ready,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => false,
            Err(e) => return Err(e.into()),
        };
        if terminal_gone() {
            // No screen to give back, and every write to a hung-up terminal
            // fails (ratatui's restore would report that on the dead stderr
            // and panic): leave at once.
            std::process::exit(128 + libc::SIGHUP);
        }
        match SIGNALLED.load(Ordering::Relaxed) {
            0 => {}
            sig => return Ok(128 + sig),
        }
        if ready {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => {
                    match state.key(key) {
                        Some(Act::Quit) => return Ok(0),
                        Some(Act::Send(label, request)) => {
                            let tx = done_tx.clone();
                            let wake = wake_tx.clone();
                            state.pending = Some(label.clone());
                            std::thread::spawn(move || {
                                let result = match super::client::request(request, false) {
                                    Ok(Some(Response::Done { message })) => Ok(message),
                                    Ok(Some(_)) => Ok(String::new()),
                                    Ok(None) => Err("the daemon is not running".to_string()),
                                    Err(e) => Err(format!("{e:#}")),
                                };
                                let _ = tx.send((label, result));
                                let _ = wake.send(());
                            });
                            let _ = wake_tx.send(());
                        }
                        None => {}
                    }
                    dirty = true;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
        while let Ok(list) = list_rx.try_recv() {
            state.update(list);
            dirty = true;
        }
        while let Ok((label, result)) = done_rx.try_recv() {
            state.pending = None;
            state.message = Some(match result {
                Ok(m) if m.is_empty() => (format!("{label}: done"), false, Instant::now()),
                Ok(m) => (m, false, Instant::now()),
                Err(e) => (format!("{label}: {e}"), true, Instant::now()),
            });
            dirty = true;
        }
        if state.read_logs() {
            dirty = true;
        }
        if state
            .message
            .as_ref()
            .is_some_and(|(_, _, at)| at.elapsed() > MESSAGE_FOR)
        {
            state.message = None;
            dirty = true;
        }
    }
}

/// What a key asks the loop to do.
enum Act {
    Quit,
    /// Send this request to the daemon ("reload web" labels it meanwhile).
    Send(String, Request),
}

/// A disruptive action waiting for y/n.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Confirm {
    Reload,
    Restart,
    Stop,
}

impl Confirm {
    fn verb(self) -> &'static str {
        match self {
            Confirm::Reload => "reload",
            Confirm::Restart => "restart",
            Confirm::Stop => "stop",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Confirm::Reload => "Replace its workers one by one, each once its successor is ready.",
            Confirm::Restart => "Stop all its workers, then start them again (downtime).",
            Confirm::Stop => "Stop its workers gracefully; it stays in the list.",
        }
    }

    fn request(self, app: &str) -> Request {
        let apps = app.to_string();
        match self {
            Confirm::Reload => Request::Reload { apps },
            Confirm::Restart => Request::Restart { apps, slot: None },
            Confirm::Stop => Request::Stop { apps },
        }
    }
}

/// A bounded ring buffer of samples.
#[derive(Default)]
struct Series(VecDeque<u64>);

impl Series {
    fn push(&mut self, v: u64) {
        if self.0.len() == HISTORY {
            self.0.pop_front();
        }
        self.0.push_back(v);
    }

    /// At most `width` columns over the whole history, oldest first: one
    /// sample each while they fit, else the highest of each of `width`
    /// even runs of samples.
    fn columns(&self, width: usize) -> Vec<u64> {
        let all: Vec<u64> = self.0.iter().copied().collect();
        let len = all.len();
        if len <= width {
            return all;
        }
        (0..width)
            .map(|i| {
                let (a, b) = (i * len / width, (i + 1) * len / width);
                all[a..b.max(a + 1)].iter().copied().max().unwrap_or(0)
            })
            .collect()
    }

    /// How long the history spans, in ms (one sample a second).
    fn span_ms(&self) -> u64 {
        self.0.len() as u64 * REFRESH.as_millis() as u64
    }
}

/// CPU (in tenths of a percent) and memory (bytes) over time.
#[derive(Default)]
struct History {
    cpu: Series,
    mem: Series,
}

impl History {
    fn push(&mut self, cpu_percent: f64, mem: u64) {
        self.cpu.push((cpu_percent * 10.0).round().max(0.0) as u64);
        self.mem.push(mem);
    }
}

struct State {
    apps: Vec<AppInfo>,
    /// The selected app's id (kept across refreshes while it exists).
    selected: Option<u32>,
    error: Option<String>,
    apps_history: HashMap<u32, History>,
    /// By app, worker slot and pid: a replacement starts its own history.
    workers_history: HashMap<(u32, usize, Option<u32>), History>,
    /// The selected app's log files and their latest lines (`true`: stderr).
    tails: Vec<Tail>,
    tails_of: Option<(u32, std::path::PathBuf)>,
    log: VecDeque<(bool, String)>,
    confirm: Option<Confirm>,
    pending: Option<String>,
    message: Option<(String, bool, Instant)>,
    table: TableState,
}

impl State {
    fn new() -> State {
        State {
            apps: Vec::new(),
            selected: None,
            error: None,
            apps_history: HashMap::new(),
            workers_history: HashMap::new(),
            tails: Vec::new(),
            tails_of: None,
            log: VecDeque::new(),
            confirm: None,
            pending: None,
            message: None,
            table: TableState::default(),
        }
    }

    fn update(&mut self, list: ListResult) {
        let apps = match list {
            Ok(apps) => apps,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        self.error = None;
        // Sample every app and worker; forget those that are gone.
        let mut seen_apps = HashMap::new();
        let mut seen_workers = HashMap::new();
        for app in &apps {
            let cpu: f64 = app.workers.iter().map(|w| w.cpu_percent).sum();
            let mem: u64 = app.workers.iter().map(|w| w.memory_bytes).sum();
            let mut h = self.apps_history.remove(&app.id).unwrap_or_default();
            h.push(cpu, mem);
            seen_apps.insert(app.id, h);
            for w in &app.workers {
                let key = (app.id, w.slot, w.pid);
                let mut h = self.workers_history.remove(&key).unwrap_or_default();
                h.push(w.cpu_percent, w.memory_bytes);
                seen_workers.insert(key, h);
            }
        }
        self.apps_history = seen_apps;
        self.workers_history = seen_workers;
        self.apps = apps;
        if !self
            .selected
            .is_some_and(|id| self.apps.iter().any(|a| a.id == id))
        {
            let index = self.table.selected().unwrap_or(0);
            let index = index.min(self.apps.len().saturating_sub(1));
            self.selected = self.apps.get(index).map(|a| a.id);
        }
        self.table.select(self.index());
        self.follow_selected();
    }

    fn index(&self) -> Option<usize> {
        let id = self.selected?;
        self.apps.iter().position(|a| a.id == id)
    }

    fn selected_app(&self) -> Option<&AppInfo> {
        self.index().map(|i| &self.apps[i])
    }

    fn move_selection(&mut self, down: bool) {
        if self.apps.is_empty() {
            return;
        }
        let i = self.index().unwrap_or(0);
        let i = if down {
            (i + 1).min(self.apps.len() - 1)
        } else {
            i.saturating_sub(1)
        };
        self.selected = Some(self.apps[i].id);
        self.table.select(Some(i));
        self.follow_selected();
    }

    /// Point the log tail at the selected app's files (its last lines first).
    fn follow_selected(&mut self) {
        let want = self.selected_app().map(|a| (a.id, a.out_log.clone()));
        if want == self.tails_of {
            return;
        }
        self.tails.clear();
        self.log.clear();
        if let Some(app) = self.selected_app() {
            // Its out and err files (each instance's, when not merged).
            let mut tails = Tail::of_app(app, true, true);
            let share = LOG_KEEP / tails.len().max(1);
            let mut past = Vec::new();
            for t in &mut tails {
                let err = t.stream == "err";
                past.extend(t.last_lines(share).into_iter().map(|l| (err, clean(&l))));
            }
            self.tails = tails;
            for line in past {
                self.push_log(line);
            }
        }
        self.tails_of = want;
    }

    fn push_log(&mut self, line: (bool, String)) {
        if self.log.len() == LOG_KEEP {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// New lines in the followed files; whether there were any.
    fn read_logs(&mut self) -> bool {
        let mut new = Vec::new();
        for t in &mut self.tails {
            let err = t.stream == "err";
            t.skip_to_recent(LOG_SKIP);
            new.extend(t.read_new().into_iter().map(|l| (err, l)));
        }
        // Under a flood only the lines that stay on hand are worth cleaning.
        let skip = new.len().saturating_sub(LOG_KEEP);
        for (err, line) in new.iter().skip(skip) {
            self.push_log((*err, clean(line)));
        }
        !new.is_empty()
    }

    fn key(&mut self, key: KeyEvent) -> Option<Act> {
        let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
            && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C'));
        if ctrl_c {
            return Some(Act::Quit);
        }
        if let Some(confirm) = self.confirm.take() {
            // Only `y` goes ahead; anything else cancels.
            if matches!(key.code, KeyCode::Char('y') | KeyCode::Char('Y')) {
                let app = self.selected_app()?.name.clone();
                return Some(Act::Send(
                    format!("{} {app}", confirm.verb()),
                    confirm.request(&app),
                ));
            }
            return None;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Some(Act::Quit),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(false),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(true),
            KeyCode::Char(c @ ('r' | 'R' | 's')) if self.selected_app().is_some() => {
                self.confirm = Some(match c {
                    'r' => Confirm::Reload,
                    'R' => Confirm::Restart,
                    _ => Confirm::Stop,
                });
            }
            KeyCode::Char(c @ ('+' | '=' | '-' | '_')) => {
                let app = self.selected_app()?.name.clone();
                let by = if matches!(c, '+' | '=') { 1 } else { -1 };
                return Some(Act::Send(
                    format!("scale {app} {by:+}"),
                    Request::Scale {
                        app,
                        to: ScaleTo::By(by),
                    },
                ));
            }
            _ => {}
        }
        None
    }
}

/// A log line made safe to draw: no escape sequences or control characters
/// (they would move the cursor), tabs expanded, at most [`LINE_MAX`] bytes
/// of it kept (the screen is narrower anyway).
fn clean(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(LINE_MAX)]);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.trim_end_matches(['\n', '\r']).chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte; otherwise ESC and one char.
                if chars.next_if_eq(&'[').is_some() {
                    for c in chars.by_ref() {
                        if ('\x40'..='\x7e').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// How a series is drawn.
#[derive(Clone, Copy)]
enum Scale {
    /// From 0 to the highest sample, at least 10%.
    Cpu,
    /// From half the lowest sample to a quarter over the highest: a steady
    /// worker draws a two-thirds bar, and growth (a leak) shows.
    Memory,
}

impl Scale {
    /// The samples, shifted to the graph's bottom, and the graph's top.
    fn fit(self, values: &[u64]) -> (Vec<u64>, u64) {
        let max = values.iter().copied().max().unwrap_or(0);
        match self {
            Scale::Cpu => (values.to_vec(), max.max(100)),
            Scale::Memory => {
                // Not sampled yet (0) does not count as the lowest.
                let low = values.iter().copied().filter(|&v| v > 0).min();
                let base = low.unwrap_or(0) / 2;
                let shifted = values.iter().map(|v| v.saturating_sub(base)).collect();
                (shifted, (max + max / 4 - base).max(1))
            }
        }
    }
}

/// `▁▂▃▅▇` for the last `width` samples.
fn spark(values: &[u64], width: usize, scale: Scale) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let values = &values[values.len().saturating_sub(width)..];
    let (values, max) = scale.fit(values);
    let mut s: String = " ".repeat(width - values.len());
    s.extend(
        values
            .iter()
            .map(|&v| BARS[((v * 7 + max / 2) / max).min(7) as usize]),
    );
    s
}

fn status_colour(tone: Tone) -> Color {
    match tone {
        Tone::Good => Color::Green,
        Tone::Bad => Color::Red,
        Tone::Off => Color::DarkGray,
        Tone::Moving => Color::Yellow,
    }
}

fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn draw(f: &mut Frame, state: &mut State) {
    // The tables take what they need (up to 60% of the screen, and room
    // for a few more rows); the log tail gets the rest.
    let workers = state.selected_app().map_or(0, |a| a.workers.len());
    let wanted = (state.apps.len() + 3).max(workers + 7) + 2;
    let most = (f.area().height as usize * 3 / 5).max(9);
    let [header, body, logs, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(wanted.clamp(9, most) as u16),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_header(f, header, state);
    // Narrow terminals (80 columns) get a slimmer app list.
    let wide = body.width >= 100;
    let [apps, detail] = Layout::horizontal([
        Constraint::Length(if wide { 46 } else { 30 }),
        Constraint::Min(30),
    ])
    .areas(body);
    draw_apps(f, apps, state, wide);
    draw_detail(f, detail, state);
    draw_logs(f, logs, state);
    draw_footer(f, footer, state);
    if let Some(confirm) = state.confirm {
        if let Some(app) = state.selected_app() {
            draw_confirm(f, confirm, &app.name);
        }
    }
}

fn draw_header(f: &mut Frame, area: Rect, state: &State) {
    let workers: usize = state.apps.iter().map(|a| a.online).sum();
    let mut spans = vec![
        Span::styled(
            " herd monit ",
            Style::new().fg(Color::Black).bg(Color::Cyan).bold(),
        ),
        Span::raw(format!(
            "  {} app(s), {workers} worker(s) online",
            state.apps.len()
        )),
    ];
    if let Some(e) = &state.error {
        spans.push(Span::styled(
            format!("   {e}"),
            Style::new().fg(Color::Red).bold(),
        ));
    }
    f.render_widget(Line::from(spans), area);
}

fn draw_apps(f: &mut Frame, area: Rect, state: &mut State, wide: bool) {
    let block = Block::bordered().title(" apps ");
    if state.apps.is_empty() {
        let text = vec![
            Line::from("no apps"),
            Line::from(""),
            Line::from(Span::styled(
                "start one: herd start app.js -i 2",
                Style::new().fg(Color::DarkGray),
            )),
        ];
        f.render_widget(
            Paragraph::new(text)
                .alignment(Alignment::Center)
                .block(block),
            area,
        );
        return;
    }
    let rows = state.apps.iter().map(|a| {
        let cpu: f64 = a.workers.iter().map(|w| w.cpu_percent).sum();
        let mem: u64 = a.workers.iter().map(|w| w.memory_bytes).sum();
        let colour = Style::new().fg(status_colour(a.state.into()));
        let mut cells = vec![Span::raw(cut(&a.name, if wide { 14 } else { 12 }))];
        if wide {
            cells.push(Span::styled(a.state.as_str(), colour));
        } else {
            // The status only as the name's colour.
            cells[0] = cells[0].clone().style(colour);
        }
        cells.push(Span::raw(format!("{}/{}", a.online, a.instances)));
        if wide {
            cells.push(Span::raw(format!("{cpu:.0}%")));
        }
        cells.push(Span::raw(memory(mem)));
        Row::new(cells)
    });
    let (widths, header) = if wide {
        (
            vec![14, 9, 5, 4, 7],
            vec!["name", "status", "up", "cpu", "mem"],
        )
    } else {
        (vec![12, 5, 7], vec!["name", "up", "mem"])
    };
    let table = Table::new(rows, widths.into_iter().map(Constraint::Length))
        .header(Row::new(header).style(Style::new().bold()))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("▶")
        .block(block);
    f.render_stateful_widget(table, area, &mut state.table);
}

fn draw_detail(f: &mut Frame, area: Rect, state: &State) {
    let Some(app) = state.selected_app() else {
        f.render_widget(Block::bordered().title(" workers "), area);
        return;
    };
    let listen = if app.listen.is_empty() {
        String::new()
    } else {
        format!(" · {}", app.listen.join(", "))
    };
    let block = Block::bordered().title(Line::from(vec![
        Span::raw(" "),
        Span::styled(app.name.clone(), Style::new().bold()),
        Span::raw(format!(" · {}{listen} ", app.mode)),
    ]));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let [cpu_row, mem_row, workers] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(2),
        Constraint::Min(1),
    ])
    .areas(inner);
    let history = state.apps_history.get(&app.id);
    let cpu_now: f64 = app.workers.iter().map(|w| w.cpu_percent).sum();
    let mem_now: u64 = app.workers.iter().map(|w| w.memory_bytes).sum();
    for (row, label, value, series, colour, scale) in [
        (
            cpu_row,
            "cpu",
            format!("{cpu_now:.1}%"),
            history.map(|h| &h.cpu),
            Color::Cyan,
            Scale::Cpu,
        ),
        (
            mem_row,
            "mem",
            memory(mem_now),
            history.map(|h| &h.mem),
            Color::Magenta,
            Scale::Memory,
        ),
    ] {
        let [text, graph] =
            Layout::horizontal([Constraint::Length(12), Constraint::Min(1)]).areas(row);
        f.render_widget(
            Paragraph::new(vec![
                Line::from(vec![
                    Span::styled(label, Style::new().fg(colour).bold()),
                    Span::styled(
                        format!(" {}", uptime(series.map(|s| s.span_ms()).unwrap_or(0))),
                        Style::new().fg(Color::DarkGray),
                    ),
                ]),
                Line::from(value),
            ]),
            text,
        );
        let samples = series
            .map(|s| s.columns(graph.width as usize))
            .unwrap_or_default();
        let (data, max) = scale.fit(&samples);
        f.render_widget(
            Sparkline::default()
                .data(&data)
                .max(max)
                .style(Style::new().fg(colour)),
            graph,
        );
    }
    // Sparklines per worker when there is room for them.
    let spark_width = (workers.width.saturating_sub(48) / 2).min(16);
    let sparks = spark_width >= 6;
    let w = spark_width as usize;
    let rows = app.workers.iter().map(|worker| {
        let mut cells = vec![
            Span::raw(match worker.role {
                WorkerRole::Current => worker.slot.to_string(),
                WorkerRole::Successor => format!("{}+", worker.slot),
                WorkerRole::Draining => format!("{}-", worker.slot),
            }),
            Span::raw(
                worker
                    .pid
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into()),
            ),
            Span::styled(
                worker.state.as_str(),
                Style::new().fg(status_colour(worker.state.into())),
            ),
            Span::raw(uptime(worker.uptime_ms)),
            Span::raw(worker.restarts.to_string()),
            Span::raw(format!("{:.1}%", worker.cpu_percent)),
        ];
        let h = state
            .workers_history
            .get(&(app.id, worker.slot, worker.pid));
        if sparks {
            let line = h.map(|h| spark(&h.cpu.columns(w), w, Scale::Cpu));
            cells.push(Span::styled(
                line.unwrap_or_default(),
                Style::new().fg(Color::Cyan),
            ));
        }
        cells.push(Span::raw(memory(worker.memory_bytes)));
        if sparks {
            let line = h.map(|h| spark(&h.mem.columns(w), w, Scale::Memory));
            cells.push(Span::styled(
                line.unwrap_or_default(),
                Style::new().fg(Color::Magenta),
            ));
        }
        Row::new(cells)
    });
    let (widths, header) = if sparks {
        (
            vec![2, 7, 9, 6, 3, 6, spark_width, 7, spark_width],
            vec!["id", "pid", "status", "uptime", "↺", "cpu", "", "mem", ""],
        )
    } else {
        (
            vec![2, 7, 9, 6, 3, 6, 7],
            vec!["id", "pid", "status", "uptime", "↺", "cpu", "mem"],
        )
    };
    let table = Table::new(rows, widths.into_iter().map(Constraint::Length))
        .header(Row::new(header).style(Style::new().bold()));
    f.render_widget(table, workers);
}

fn draw_logs(f: &mut Frame, area: Rect, state: &State) {
    let title = match state.selected_app() {
        Some(app) => format!(" logs: {} ", app.name),
        None => " logs ".to_string(),
    };
    let block = Block::bordered().title(title);
    let height = block.inner(area).height as usize;
    let skip = state.log.len().saturating_sub(height);
    let lines: Vec<Line> = state
        .log
        .iter()
        .skip(skip)
        .map(|(err, text)| {
            if *err {
                Line::styled(text.as_str(), Style::new().fg(Color::Red))
            } else {
                Line::raw(text.as_str())
            }
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_footer(f: &mut Frame, area: Rect, state: &State) {
    // An action's progress or outcome replaces the key help while it shows.
    if let Some(p) = &state.pending {
        let text = format!(" {p}…");
        f.render_widget(Span::styled(text, Style::new().fg(Color::Yellow)), area);
        return;
    }
    if let Some((m, err, _)) = &state.message {
        let colour = if *err { Color::Red } else { Color::Green };
        f.render_widget(Span::styled(format!(" {m}"), Style::new().fg(colour)), area);
        return;
    }
    let key = |k: &'static str| Span::styled(k, Style::new().fg(Color::Cyan).bold());
    let spans = vec![
        key(" ↑↓/jk"),
        Span::raw(" select  "),
        key("r"),
        Span::raw(" reload  "),
        key("R"),
        Span::raw(" restart  "),
        key("+/-"),
        Span::raw(" scale  "),
        key("s"),
        Span::raw(" stop  "),
        key("q"),
        Span::raw(" quit"),
    ];
    f.render_widget(Line::from(spans), area);
}

fn draw_confirm(f: &mut Frame, confirm: Confirm, app: &str) {
    let area = f.area();
    let width = 70.min(area.width);
    let height = 6.min(area.height);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let text = vec![
        Line::from(confirm.explain()),
        Line::from(""),
        Line::from(vec![
            Span::styled("y", Style::new().fg(Color::Green).bold()),
            Span::raw(" yes    "),
            Span::styled("n", Style::new().fg(Color::Red).bold()),
            Span::raw(" no"),
        ]),
    ];
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(ratatui::widgets::Wrap { trim: true })
            .block(
                Block::bordered()
                    .title(format!(" {} {app}? ", capitalize(confirm.verb())))
                    .border_style(Style::new().fg(Color::Yellow)),
            ),
        popup,
    );
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|first| first.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_escapes_and_controls() {
        assert_eq!(clean(b"\x1b[31mred\x1b[0m ok\n"), "red ok");
        assert_eq!(clean(b"a\tb\r\n"), "a    b");
        assert_eq!(clean(b"bell\x07 \x1b]x"), "bell x");
        assert_eq!(clean(&[b'a'; 5000]).len(), LINE_MAX);
    }

    #[test]
    fn sparks_scale_and_pad() {
        assert_eq!(spark(&[], 3, Scale::Cpu), "   ");
        assert_eq!(spark(&[0, 500, 1000], 4, Scale::Cpu), " ▁▅█");
        // Under 10%, CPU stays low on the graph.
        assert_eq!(spark(&[0, 10], 2, Scale::Cpu), "▁▂");
        assert_eq!(spark(&[100, 100], 2, Scale::Memory), "▆▆");
        assert_eq!(spark(&[0, 100, 100], 3, Scale::Memory), "▁▆▆");
        assert_eq!(spark(&[1, 100, 100, 200], 3, Scale::Memory), "▃▃▆");
    }

    #[test]
    fn history_is_bounded() {
        let mut s = Series::default();
        for i in 0..(HISTORY as u64 + 10) {
            s.push(i);
        }
        assert_eq!(s.0.len(), HISTORY);
        assert_eq!(s.columns(HISTORY).len(), HISTORY);
        let top = HISTORY as u64 + 9;
        // Runs of samples, each shown as its highest, the newest last.
        let cols = s.columns(HISTORY / 3);
        assert_eq!(cols.len(), HISTORY / 3);
        assert_eq!(cols[cols.len() - 1], top);
        assert_eq!(cols[cols.len() - 2], top - 3);
        assert_eq!(s.columns(16).len(), 16);
        let mut few = Series::default();
        few.push(5);
        few.push(7);
        assert_eq!(few.columns(10), vec![5, 7]);
    }
}
