//! The value types of a config file's keys, as tolerant as pm2 where pm2 is
//! (a number or a numeric string, `"10s"` or `1000` for a duration, `"200M"`
//! for a size, `"false"` for false, one string or a list of arguments …) and
//! strict elsewhere: each names what it expected, and a value the command
//! line's parser refuses gets that parser's message. Every format (TOML,
//! JSON, YAML, and JS through JSON) goes through these.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use herd_engine::config::{
    check_ignore_glob, Balance, CronSpec, ExecMode, Instances, ListenSpec, RestartMode,
};
use nix::sys::signal::Signal;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::options::{self, split_words};

/// How one scalar key is read: as text (numbers and, if allowed, booleans
/// written out), then parsed.
pub trait Kind {
    type Out;
    const EXPECTING: &'static str;
    /// Numbers are taken (as their text).
    const NUMBERS: bool;
    /// Booleans are taken (as `true`/`false`).
    const BOOLS: bool;
    fn parse(text: &str) -> Result<Self::Out, String>;
}

/// One scalar value of kind `K`.
pub struct V<K: Kind>(pub K::Out);

impl<K: Kind> fmt::Debug for V<K>
where
    K::Out: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, K: Kind> Deserialize<'de> for V<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor::<K>(PhantomData)).map(V)
    }
}

struct ScalarVisitor<K>(PhantomData<K>);

impl<'de, K: Kind> Visitor<'de> for ScalarVisitor<K> {
    type Value = K::Out;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(K::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<K::Out, E> {
        K::parse(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<K::Out, E> {
        if !K::NUMBERS {
            return Err(E::invalid_type(de::Unexpected::Signed(v), &self));
        }
        self.visit_str(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<K::Out, E> {
        if !K::NUMBERS {
            return Err(E::invalid_type(de::Unexpected::Unsigned(v), &self));
        }
        self.visit_str(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<K::Out, E> {
        if !K::NUMBERS {
            return Err(E::invalid_type(de::Unexpected::Float(v), &self));
        }
        self.visit_str(&number_text(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<K::Out, E> {
        if !K::BOOLS {
            return Err(E::invalid_type(de::Unexpected::Bool(v), &self));
        }
        self.visit_str(if v { "true" } else { "false" })
    }
}

/// A float as a person would write it: 12000.0 is "12000".
pub fn number_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        v.to_string()
    }
}

macro_rules! kind {
    ($(#[$doc:meta])* $name:ident -> $out:ty, $expecting:expr, numbers: $n:expr, bools: $b:expr, $parse:expr) => {
        $(#[$doc])*
        pub struct $name;
        impl Kind for $name {
            type Out = $out;
            const EXPECTING: &'static str = $expecting;
            const NUMBERS: bool = $n;
            const BOOLS: bool = $b;
            fn parse(text: &str) -> Result<$out, String> {
                ($parse)(text)
            }
        }
    };
}

kind!(/// A string.
    Text -> String, "a string", numbers: false, bools: false, |s: &str| Ok(s.to_string()));
kind!(/// One word of a command line: numbers and booleans are fine (`["--port", 8000]`).
    Word -> String, "a string", numbers: true, bools: true, |s: &str| Ok(s.to_string()));
kind!(/// A name: a string (a number is taken as its text, as YAML writes `name: 2048`).
    Name -> String, "a name (a string)", numbers: true, bools: false, |s: &str| Ok(s.to_string()));
kind!(/// true or false, also as the strings "true" and "false" (pm2 reads both).
Flag -> bool, "true or false", numbers: false, bools: true, |s: &str| match s {
    "true" => Ok(true),
    "false" => Ok(false),
    _ => Err(format!("invalid value '{s}': use true or false")),
});
kind!(/// A duration: a number of milliseconds (pm2), or "10s", "500ms", "2m", "1h".
    Millis -> Duration, "a duration (a number of milliseconds, or \"10s\", \"500ms\")", numbers: true, bools: false, options::duration);
kind!(/// A size: a number of bytes, or "200M", "1G", "512K" (pm2).
    Bytes -> u64, "a size (a number of bytes, or \"200M\", \"1G\")", numbers: true, bools: false, options::size);
kind!(/// A whole number from 0, or its text.
    Count -> u32, "a whole number", numbers: true, bools: false, |s: &str| s.trim().parse().map_err(|_| format!("invalid count '{s}': use a whole number from 0")));
kind!(/// pm2's `instances`: a number (0 and 'max' are every usable CPU, -N all but N) or its text.
    InstanceCount -> Instances, "a number of instances, or \"max\"", numbers: true, bools: false, options::parsed::<Instances>);
kind!(/// pm2's `exec_mode`.
    Mode -> ExecMode, "cluster or fork", numbers: false, bools: false, options::parsed::<ExecMode>);
kind!(/// A listen address.
    Listen -> ListenSpec, "a listen address (\"127.0.0.1:8000\", a port, or \"unix:PATH\")", numbers: true, bools: false, options::parsed::<ListenSpec>);
kind!(/// herd's balance mode.
    BalanceMode -> Balance, "a balance mode (shared, reuseport or round-robin)", numbers: false, bools: false, options::parsed::<Balance>);
kind!(/// herd's restart mode.
    Restart -> RestartMode, "a restart mode (always, on-failure or never)", numbers: false, bools: false, options::parsed::<RestartMode>);
kind!(/// A graceful stop signal.
    StopSignal -> Signal, "a signal name (SIGINT, SIGTERM, …)", numbers: false, bools: false, options::kill_signal);
kind!(/// A TCP port, 1 to 65535, or its text (pm2's `port`).
Port -> u16, "a port number (1 to 65535)", numbers: true, bools: false, |s: &str| match s.trim().parse::<u16>() {
    Ok(p) if p > 0 => Ok(p),
    _ => Err(format!("invalid port '{s}': use a number from 1 to 65535")),
});
kind!(/// An exit code, 0 to 255 (what a process can exit with), or its text
/// (pm2 parseInts strings).
ExitCode -> i32, "an exit code (a number)", numbers: true, bools: false, |s: &str| match s.trim().parse::<i32>() {
    Ok(c) if (0..=255).contains(&c) => Ok(c),
    _ => Err(format!("invalid exit code '{s}': use a number from 0 to 255, such as 0 or 2")),
});
kind!(/// pm2's `cron_restart`: a 5- or 6-field pattern, checked as pm2 checks it (croner); 0 (or "0") turns it off.
    Cron -> Option<CronSpec>, "a cron pattern (\"0 3 * * *\"), or 0 for none", numbers: true, bools: false, |s: &str| options::cron_arg(s).map(|c| c.0));
kind!(/// pm2's `namespace`: a group of apps that every verb can name.
    Namespace -> String, "a namespace (a name, not 'all', not a number)", numbers: false, bools: false, namespace);
kind!(/// A name of an environment variable.
    VarName -> String, "a variable name", numbers: false, bools: false, env_name);
kind!(/// One `ignore_watch` entry: a name, glob or path.
IgnoreGlob -> String, "a name, glob or path (node_modules, *.log, logs/)", numbers: false, bools: false, |s: &str| {
    check_ignore_glob(s).map(|()| s.to_string()).map_err(|e| e.0)
});

fn namespace(s: &str) -> Result<String, String> {
    if s.trim().is_empty() || s == "all" || s.parse::<u32>().is_ok() {
        Err(format!(
            "invalid namespace '{s}': give a name (not empty, not 'all', not a number)"
        ))
    } else {
        Ok(s.to_string())
    }
}

fn env_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('=') || s.contains('\0') {
        Err(format!(
            "invalid variable name '{s}': it must be non-empty, without '=' or NUL"
        ))
    } else {
        Ok(s.to_string())
    }
}

/// A list of arguments: a list taken word for word, or one string split as
/// pm2 splits it (`"--port 8000 'two words'"`).
#[derive(Debug, Default)]
pub struct ArgList(pub Vec<String>);

impl<'de> Deserialize<'de> for ArgList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = ArgList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of arguments, or one string of them")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ArgList, A::Error> {
                let mut out = Vec::new();
                while let Some(V::<Word>(w)) = seq.next_element()? {
                    out.push(w);
                }
                Ok(ArgList(out))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ArgList, E> {
                Ok(ArgList(split_words(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ArgList, E> {
                Ok(ArgList(vec![v.to_string()]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ArgList, E> {
                Ok(ArgList(vec![v.to_string()]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ArgList, E> {
                Ok(ArgList(vec![number_text(v)]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ArgList, E> {
                Ok(ArgList(vec![v.to_string()]))
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

/// A command: a list (an argv), or one string.
#[derive(Debug)]
pub enum CommandValue {
    Line(String),
    Argv(Vec<String>),
}

impl<'de> Deserialize<'de> for CommandValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CommandVisitor;
        impl<'de> Visitor<'de> for CommandVisitor {
            type Value = CommandValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command: one string, or a list (program, then arguments)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommandValue, E> {
                Ok(CommandValue::Line(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandValue, A::Error> {
                let mut out = Vec::new();
                while let Some(V::<Word>(w)) = seq.next_element()? {
                    out.push(w);
                }
                Ok(CommandValue::Argv(out))
            }
        }
        d.deserialize_any(CommandVisitor)
    }
}

/// One value, or a list of them.
pub struct OneOrMany<K: Kind>(pub Vec<K::Out>);

impl<K: Kind> fmt::Debug for OneOrMany<K>
where
    K::Out: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de, K: Kind> Deserialize<'de> for OneOrMany<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ManyVisitor<K>(PhantomData<K>);
        impl<'de, K: Kind> Visitor<'de> for ManyVisitor<K> {
            type Value = OneOrMany<K>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "{}, or a list of them", K::EXPECTING)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(V::<K>(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(OneOrMany(out))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ScalarVisitor::<K>(PhantomData)
                    .visit_str(v)
                    .map(|v| OneOrMany(vec![v]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                ScalarVisitor::<K>(PhantomData)
                    .visit_i64(v)
                    .map(|v| OneOrMany(vec![v]))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                ScalarVisitor::<K>(PhantomData)
                    .visit_u64(v)
                    .map(|v| OneOrMany(vec![v]))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                ScalarVisitor::<K>(PhantomData)
                    .visit_f64(v)
                    .map(|v| OneOrMany(vec![v]))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                ScalarVisitor::<K>(PhantomData)
                    .visit_bool(v)
                    .map(|v| OneOrMany(vec![v]))
            }
        }
        d.deserialize_any(ManyVisitor::<K>(PhantomData))
    }
}

/// `true`, `false`, one string or a list of strings (pm2's `watch`,
/// `filter_env`, `log_file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switch {
    On(bool),
    One(String),
    Many(Vec<String>),
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SwitchVisitor;
        impl<'de> Visitor<'de> for SwitchVisitor {
            type Value = Switch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, a string, or a list of strings")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Switch, E> {
                Ok(Switch::On(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Switch, E> {
                Ok(match v {
                    "true" => Switch::On(true),
                    "false" => Switch::On(false),
                    _ => Switch::One(v.to_string()),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Switch, A::Error> {
                let mut out = Vec::new();
                while let Some(V::<Text>(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Switch::Many(out))
            }
        }
        d.deserialize_any(SwitchVisitor)
    }
}

/// An environment table: `NAME: value`, values as pm2 passes them (strings;
/// numbers and booleans written out; objects and lists as JSON; null as
/// `null`).
#[derive(Debug, Default, Clone)]
pub struct Env(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Env {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EnvVisitor;
        impl<'de> Visitor<'de> for EnvVisitor {
            type Value = Env;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table of environment variables (NAME: \"value\")")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Env, A::Error> {
                let mut env = Env::default();
                while let Some(V::<VarName>(key)) = map.next_key()? {
                    let EnvValue(value) = map.next_value()?;
                    env.set(key, value);
                }
                Ok(env)
            }
        }
        d.deserialize_map(EnvVisitor)
    }
}

impl Env {
    pub fn set(&mut self, key: String, value: String) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
}

struct EnvValue(String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if !n.is_i64() && !n.is_u64() => number_text(f),
                _ => n.to_string(),
            },
            serde_json::Value::Bool(b) => b.to_string(),
            other => other.to_string(),
        };
        if text.contains('\0') {
            return Err(de::Error::custom(
                "an environment value cannot contain a NUL byte",
            ));
        }
        Ok(EnvValue(text))
    }
}
