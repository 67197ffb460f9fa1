//! Which environment variables hold secrets, the one rule every printer of
//! herd follows: a variable whose name contains `KEY`, `SECRET`, `TOKEN`,
//! `PASS`, `CREDENTIAL` or `PRIVATE` (any case), or matches one of the
//! operator's own patterns (`HERD_SECRET_NAMES` / `herd daemon
//! --secret-names`), has its value replaced by [`HIDDEN`] in everything the
//! daemon answers (`show`, `list`, `jlist`, the status page, the metrics)
//! unless the request asks with `show_secrets`. Saved state keeps the values
//! (resurrect needs them) in owner-only files.

use crate::AppDef;

/// Parts of a name that make it secret, matched anywhere in the name,
/// ignoring case (`*KEY*`, `*SECRET*` …).
pub const SECRET_NAME_PARTS: [&str; 6] =
    ["KEY", "SECRET", "TOKEN", "PASS", "CREDENTIAL", "PRIVATE"];

/// What a hidden value is replaced with.
pub const HIDDEN: &str = "[hidden: --show-secrets shows it]";

/// The environment variable holding the operator's own patterns.
pub const SECRET_NAMES_ENV: &str = "HERD_SECRET_NAMES";

/// The secret-name rule: the built-in parts plus the operator's patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretNames {
    /// Upper-cased glob patterns (`*` matches any run of characters; a
    /// pattern without `*` is an exact name).
    extra: Vec<String>,
}

impl SecretNames {
    /// The built-in rule plus `patterns` (e.g. `DATABASE_URL`, `*_DSN`).
    pub fn new<I, S>(patterns: I) -> SecretNames
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        SecretNames {
            extra: patterns
                .into_iter()
                .map(|p| p.as_ref().trim().to_ascii_uppercase())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    /// Patterns from a list separated by commas or whitespace; each made of
    /// letters, digits, `_` and `*`.
    pub fn parse(list: &str) -> Result<SecretNames, String> {
        let patterns: Vec<&str> = list
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        if let Some(bad) = patterns.iter().find(|p| {
            !p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*')
        }) {
            return Err(format!(
                "invalid secret name pattern '{bad}': use variable names (letters, digits, '_') \
                 with '*' for any run of characters, separated by commas: DATABASE_URL,*_DSN"
            ));
        }
        Ok(SecretNames::new(patterns))
    }

    /// The operator's patterns, upper-cased (the built-in parts are not listed).
    pub fn patterns(&self) -> &[String] {
        &self.extra
    }

    /// Whether `name`'s value is a secret.
    pub fn is_secret(&self, name: &str) -> bool {
        let upper = name.to_ascii_uppercase();
        SECRET_NAME_PARTS.iter().any(|part| upper.contains(part))
            || self
                .extra
                .iter()
                .any(|p| glob(p.as_bytes(), upper.as_bytes()))
    }

    /// Hide the secret values of `env`.
    pub fn redact_env(&self, env: &mut [(String, String)]) {
        for (name, value) in env {
            if self.is_secret(name) {
                *value = HIDDEN.to_string();
            }
        }
    }

    /// `def` as it may be shown: its secret environment values hidden.
    pub fn redact_def(&self, def: &mut AppDef) {
        self.redact_env(&mut def.spec.env);
    }
}

/// `*`-only glob match (no other metacharacters), iterative with one
/// backtrack point: linear in practice, never exponential.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_parts_match_anywhere_in_any_case() {
        let names = SecretNames::default();
        for secret in [
            "SECRET_TOKEN",
            "DATABASE_PASSWORD",
            "api_key",
            "AWS_SECRET_ACCESS_KEY",
            "GithubToken",
            "PGPASS",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "SSH_PRIVATE",
        ] {
            assert!(names.is_secret(secret), "{secret}");
        }
        for plain in ["PORT", "NODE_ENV", "HOME", "PATH", "DATABASE_URL"] {
            assert!(!names.is_secret(plain), "{plain}");
        }
    }

    #[test]
    fn the_operators_patterns_are_exact_names_or_globs() {
        let names = SecretNames::parse("database_url, *_DSN  STRIPE*").unwrap();
        assert!(names.is_secret("DATABASE_URL"));
        assert!(!names.is_secret("DATABASE_URL_RO"));
        assert!(names.is_secret("SENTRY_DSN"));
        assert!(names.is_secret("stripe_live"));
        assert!(!names.is_secret("PORT"));
        assert_eq!(SecretNames::parse(" , ").unwrap(), SecretNames::default());
        let err = SecretNames::parse("OK,$HOME").unwrap_err();
        assert!(err.contains("'$HOME'"), "{err}");
    }

    #[test]
    fn globs() {
        assert!(glob(b"*", b""));
        assert!(glob(b"A*B*C", b"AXXBYYC"));
        assert!(!glob(b"A*B*C", b"AXXBYY"));
        assert!(glob(b"**X", b"ABX"));
        assert!(!glob(b"X", b"XY"));
        // A long adversarial name stays quick.
        let name = vec![b'A'; 10_000];
        assert!(!glob(b"*A*A*A*A*B", &name));
    }

    #[test]
    fn redaction_hides_only_secret_values() {
        let mut env = vec![
            ("PORT".to_string(), "8000".to_string()),
            ("SECRET_TOKEN".to_string(), "s3cr3t".to_string()),
        ];
        SecretNames::default().redact_env(&mut env);
        assert_eq!(env[0].1, "8000");
        assert_eq!(env[1].1, HIDDEN);
    }
}
