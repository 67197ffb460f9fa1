//! The lines herd and the fixture print, in one place: adjust here when the
//! wording moves; and the tiny matcher the tests read them with.
//!
//! A pattern is literal text in which `{}` captures a run of digits (`\d+`)
//! and `{*}` skips any text (like `.*?`). It matches anywhere in a line.
//! Lifecycle patterns are only tried on lines that herd itself printed (those
//! containing `herd: `), never on worker output.

/// `herd: worker 0 online (pid 1234)` → [slot, pid]
pub const ONLINE: &str = "worker {} online (pid {})";
/// `herd: worker 0 ready (pid 1234)` → [slot, pid]
pub const READY: &str = "worker {} ready (pid {})";
/// `herd: worker 0 (pid 12) exited with code 1 after 5 ms; ...` → [slot, code]
pub const EXITED_CODE: &str = "worker {} {*}exited with code {}";
/// `herd: worker 0 (pid 12) was killed by SIGKILL after 2 s; ...` → [slot]
pub const KILLED_BY: &str = "worker {} {*}killed by";
/// `...; restarting it in 200 ms` → [ms] (delays under a second only)
pub const RESTARTING_IN: &str = "restarting {*}in {} ms";
pub const ERRORED: &str = "errored";
pub const RELOAD_STARTED: &str = "reload started";
pub const RELOAD_FINISHED: &str = "reload finished";
pub const RELOAD_ABORTED: &str = "reload aborted";
pub const STOPPING: &str = "stopping";
/// `herd: listening on 127.0.0.1:8000 (web), balance shared`: the address follows.
pub const LISTENING: &str = "listening on ";
/// The prefix of every lifecycle line.
pub const HERD_PREFIX: &str = "herd: ";

/// Fixture output (re-emitted by herd as `[<id>] <line>`).
pub const W_SERVING: &str = "worker {} pid {} serving";
pub const W_CHILD: &str = "child {}";
pub const W_REQUEST: &str = "request ";
/// The fixture in its herd-cluster mode (`herd-test-worker cluster`),
/// once it serves: `fixture serving id=0 pid=1234 source=... addr=...` → [pid]
pub const CLUSTER_SERVING: &str = "fixture serving {*}pid={} ";

/// Match `pattern` (see the [module docs](self)) against `line`; the captures on success.
pub fn match_pat(pattern: &str, line: &str) -> Option<Vec<String>> {
    let toks = tokenize(pattern);
    // Unanchored: try every start.
    line.char_indices()
        .map(|(i, _)| i)
        .chain([line.len()])
        .find_map(|i| {
            let mut caps = Vec::new();
            match_at(&toks, &line[i..], &mut caps).then_some(caps)
        })
}

#[derive(Debug)]
enum Tok<'a> {
    Lit(&'a str),
    Digits,
    Any,
}

fn tokenize(pattern: &str) -> Vec<Tok<'_>> {
    let mut toks = Vec::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("{}") {
            toks.push(Tok::Digits);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("{*}") {
            toks.push(Tok::Any);
            rest = r;
        } else {
            let end = rest
                .find("{}")
                .into_iter()
                .chain(rest.find("{*}"))
                .min()
                .unwrap_or(rest.len());
            toks.push(Tok::Lit(&rest[..end]));
            rest = &rest[end..];
        }
    }
    toks
}

fn match_at(toks: &[Tok<'_>], s: &str, caps: &mut Vec<String>) -> bool {
    let Some((first, rest)) = toks.split_first() else {
        return true;
    };
    match first {
        Tok::Lit(l) => s.strip_prefix(l).is_some_and(|r| match_at(rest, r, caps)),
        Tok::Digits => {
            let n = s.bytes().take_while(|b| b.is_ascii_digit()).count();
            if n == 0 {
                return false;
            }
            caps.push(s[..n].to_string());
            if match_at(rest, &s[n..], caps) {
                return true;
            }
            caps.pop();
            false
        }
        Tok::Any => s.char_indices().map(|(i, _)| i).chain([s.len()]).any(|i| {
            let before = caps.len();
            match_at(rest, &s[i..], caps) || {
                caps.truncate(before);
                false
            }
        }),
    }
}
