//! Two small rules every app option shares, from the command line and from
//! files alike: how pm2 splits a string of arguments into words
//! ([`split_words`]), and `~` at the start of a path ([`expand_home`]).

use std::path::PathBuf;

/// Splits `args`, `node_args` or `interpreter_args` given as one string, as
/// pm2 does (`lib/tools/Config.js`): words are separated by whitespace; a
/// word wholly in `"…"` or `'…'` loses its quotes (`'c d'` → `c d`);
/// `key="a b"` stays one word with its quotes; there are no backslash
/// escapes; empty words are dropped. So `--x="a b" 'c d' e=f` gives
/// `--x="a b"`, `c d`, `e=f`. (A list in a file is taken word for word.)
pub fn split_words(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let is_space = |c: char| c.is_whitespace() || c == '\u{feff}';
    let mut words = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if is_space(chars[i]) {
            i += 1;
            continue;
        }
        let end = assignment_end(&chars, i, is_space)
            .or_else(|| quoted_end(&chars, i))
            .unwrap_or_else(|| {
                let mut j = i;
                while j < chars.len() && !is_space(chars[j]) {
                    j += 1;
                }
                j
            });
        let word: String = chars[i..end].iter().collect();
        let unquoted = ['"', '\'']
            .iter()
            .find(|q| word.len() >= 2 && word.starts_with(**q) && word.ends_with(**q))
            .map(|_| word[1..word.len() - 1].to_string())
            // A lone quote is a word of nothing.
            .unwrap_or_else(|| {
                if word == "\"" || word == "'" {
                    String::new()
                } else {
                    word
                }
            });
        if !unquoted.trim().is_empty() {
            words.push(unquoted);
        }
        i = end;
    }
    words
}

/// `name="…"` or `name='…'` starting at `start` (name: no space, quote or
/// `=`): where it ends.
fn assignment_end(chars: &[char], start: usize, is_space: impl Fn(char) -> bool) -> Option<usize> {
    let mut j = start;
    while j < chars.len() && !is_space(chars[j]) && !matches!(chars[j], '"' | '\'' | '=') {
        j += 1;
    }
    if j == start || chars.get(j) != Some(&'=') {
        return None;
    }
    quoted_end(chars, j + 1)
}

/// `"…"` or `'…'` starting at `start`: where it ends (after the closing quote).
fn quoted_end(chars: &[char], start: usize) -> Option<usize> {
    let quote = *chars.get(start)?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let close = chars[start + 1..].iter().position(|&c| c == quote)?;
    Some(start + 1 + close + 1)
}

/// `~` → the home directory, `~/x` → inside it, `~user/x` → inside that
/// user's home; anything else as it is. pm2 expands `~` only in its log and
/// pid paths (and reads `~bob` as `$HOME/bob`); herd does it in every path.
pub fn expand_home(path: &str) -> Result<PathBuf, String> {
    let Some(rest) = path.strip_prefix('~') else {
        return Ok(PathBuf::from(path));
    };
    let (user, tail) = match rest.split_once('/') {
        Some((user, tail)) => (user, tail),
        None => (rest, ""),
    };
    let home = if user.is_empty() {
        home_dir().ok_or_else(|| {
            format!("cannot expand '{path}': HOME is not set and this user has no home directory; write the path in full")
        })?
    } else {
        match nix::unistd::User::from_name(user) {
            Ok(Some(u)) => u.dir,
            _ => {
                return Err(format!(
                    "cannot expand '{path}': there is no user '{user}'; write the path in full"
                ))
            }
        }
    };
    Ok(if tail.is_empty() {
        home
    } else {
        home.join(tail)
    })
}

fn home_dir() -> Option<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ => nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.dir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_as_pm2_splits_them() {
        // (text, words): pm2 7's Config._valid, seen under pm2 where marked.
        let table: &[(&str, &[&str])] = &[
            ("", &[]),
            ("   ", &[]),
            ("start", &["start"]),
            ("run start", &["run", "start"]),
            ("  --port   8000\t-v\n", &["--port", "8000", "-v"]),
            // [v] pm2-compat.md §2
            (r#"--x="a b" 'c d' e=f"#, &[r#"--x="a b""#, "c d", "e=f"]),
            ("-r ./pre.js", &["-r", "./pre.js"]),
            ("--max-old-space-size=512", &["--max-old-space-size=512"]),
            (r#""two words""#, &["two words"]),
            ("'two words' x", &["two words", "x"]),
            (r#"k='a b'"#, &["k='a b'"]),
            // No escapes, no joining of quoted parts.
            (r#"a\ b"#, &[r"a\", "b"]),
            (r#"a"b c"d"#, &[r#"a"b"#, r#"c"d"#]),
            (r#""a b"c"#, &["a b", "c"]),
            // An unclosed quote is a plain word.
            (r#""abc def"#, &[r#""abc"#, "def"]),
            // Empty words vanish.
            (r#"x "" ' ' y"#, &["x", "y"]),
            (r#"""#, &[]),
            ("é ü", &["é", "ü"]),
        ];
        for (text, words) in table {
            assert_eq!(split_words(text), *words, "{text:?}");
        }
    }

    #[test]
    fn home_is_expanded_in_paths() {
        let home = home_dir().expect("a home directory");
        let root = nix::unistd::User::from_uid(0.into())
            .unwrap()
            .map(|u| u.dir);
        let table: Vec<(&str, Option<PathBuf>)> = vec![
            ("~", Some(home.clone())),
            ("~/", Some(home.clone())),
            ("~/logs/out.log", Some(home.join("logs/out.log"))),
            ("~root/x", root.map(|r| r.join("x"))),
            ("/abs/~/x", Some(PathBuf::from("/abs/~/x"))),
            ("rel/x", Some(PathBuf::from("rel/x"))),
            ("./~x", Some(PathBuf::from("./~x"))),
        ];
        for (path, want) in table {
            if let Some(want) = want {
                assert_eq!(expand_home(path).unwrap(), want, "{path}");
            }
        }
        let err = expand_home("~no-such-user-here/x").unwrap_err();
        assert!(err.contains("no user 'no-such-user-here'"), "{err}");
    }
}
