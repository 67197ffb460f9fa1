//! `herd startup`: a systemd unit that runs the daemon at boot
//! (`Type=notify`: the daemon sends `READY=1` once it listens) and starts
//! the saved apps (`herd daemon --resurrect`).
//!
//! The apps run under supervisors of their own, which the daemon starts
//! and which outlive it, all in the unit's cgroup. So the unit has systemd
//! signal the daemon alone (`KillMode=process`): `systemctl stop` sends it
//! SIGTERM, and the daemon stops every app gracefully itself before it
//! exits; a daemon that crashes is started again (`Restart=on-failure`)
//! while the apps it left run on, and the new one adopts them. There is
//! deliberately no `ExecStop=`: systemd runs it after a crash too, and it
//! would stop the apps the crash spared. `systemctl reload` runs `herd
//! update`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

#[derive(Args, Debug)]
pub struct StartupArgs {
    /// Write the unit and enable it (systemctl daemon-reload, enable --now) instead of printing it.
    #[arg(long)]
    install: bool,
    /// Where to write it (default: /etc/systemd/system/herd.service for root,
    /// ~/.config/systemd/user/herd.service otherwise).
    #[arg(long, value_name = "PATH")]
    unit_path: Option<PathBuf>,
    /// Have the daemon serve metrics, health probes and the status page at ADDR (e.g. 127.0.0.1:9209).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// With --metrics: allow the status page's reload/restart/stop buttons.
    #[arg(long, requires = "metrics")]
    metrics_admin: bool,
    /// More environment variable names whose values the daemon hides (see `herd daemon --help`).
    #[arg(long, env = herd_protocol::secrets::SECRET_NAMES_ENV, value_name = "NAMES",
          value_parser = herd_protocol::SecretNames::parse)]
    secret_names: Option<herd_protocol::SecretNames>,
    /// With --metrics: a name the listener also answers to in the Host header (NAME or
    /// NAME:PORT); repeatable.
    #[arg(long = "metrics-host", value_name = "NAME", requires = "metrics")]
    metrics_hosts: Vec<herd_daemon::http::AllowedHost>,
}

/// The unit for this binary and home.
/// `daemon_args` follow `daemon --resurrect` on the ExecStart line.
pub fn unit(exe: &str, home: &str, user: &str, system: bool, daemon_args: &str) -> String {
    let user_line = if system {
        format!("User={user}\n")
    } else {
        String::new()
    };
    let wanted = if system {
        "multi-user.target"
    } else {
        "default.target"
    };
    format!(
        "[Unit]
Description=herd: keeps the saved apps running
After=network.target

[Service]
Type=notify
{user_line}Environment=HERD_HOME={home}
ExecStart={exe} daemon --resurrect{daemon_args}
ExecReload={exe} update
# Only the daemon is signalled: on `systemctl stop` its SIGTERM stops every
# app gracefully (each worker by its kill timeout, then SIGKILL of its
# process group); after a crash the apps' supervisors run on, and the daemon
# systemd starts again adopts them.
KillMode=process
TimeoutStopSec=60
Restart=on-failure
RestartSec=100ms

[Install]
WantedBy={wanted}
"
    )
}

pub fn main(args: StartupArgs) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("cannot find the herd binary")?;
    let home = herd_daemon::Home::location()?;
    let root = nix::unistd::geteuid().is_root();
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let text = unit(
        &exe.display().to_string(),
        &home.display().to_string(),
        &user,
        root,
        &daemon_args(
            args.metrics,
            args.metrics_admin,
            &args.metrics_hosts,
            args.secret_names.as_ref(),
        ),
    );
    if !args.install {
        print!("{text}");
        eprintln!(
            "herd: to install it: herd startup --install (writes the unit, then systemctl {}enable --now herd)",
            if root { "" } else { "--user " }
        );
        return Ok(0);
    }
    let path = match args.unit_path {
        Some(p) => p,
        None if root => PathBuf::from("/etc/systemd/system/herd.service"),
        None => {
            let home_dir = std::env::var_os("HOME").context("HOME is not set")?;
            PathBuf::from(home_dir).join(".config/systemd/user/herd.service")
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    let scope: &[&str] = if root { &[] } else { &["--user"] };
    for args in [vec!["daemon-reload"], vec!["enable", "--now", "herd"]] {
        let status = std::process::Command::new("systemctl")
            .args(scope)
            .args(&args)
            .status()
            .context("cannot run systemctl (is this a systemd machine?); the unit is written, enable it by hand")?;
        if !status.success() {
            anyhow::bail!(
                "systemctl {} failed ({status}); the unit is written at {}, enable it by hand",
                args.join(" "),
                path.display()
            );
        }
    }
    println!("enabled herd.service: the saved apps (`herd save`) start at boot");
    Ok(0)
}

/// The daemon's flags for the unit, each with its leading space.
fn daemon_args(
    metrics: Option<std::net::SocketAddr>,
    admin: bool,
    hosts: &[herd_daemon::http::AllowedHost],
    secret_names: Option<&herd_protocol::SecretNames>,
) -> String {
    let mut out = String::new();
    if let Some(addr) = metrics {
        out.push_str(&format!(" --metrics {addr}"));
        if admin {
            out.push_str(" --metrics-admin");
        }
        for host in hosts {
            out.push_str(&format!(" --metrics-host {host}"));
        }
    }
    // The boot-time daemon does not see this shell's HERD_SECRET_NAMES.
    if let Some(names) = secret_names.filter(|n| !n.patterns().is_empty()) {
        out.push_str(&format!(" --secret-names {}", names.patterns().join(",")));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_is_type_notify_and_resurrects() {
        let u = super::unit("/usr/bin/herd", "/home/a/.herd", "a", true, "");
        assert!(u.contains("Type=notify"));
        assert!(u.contains("ExecStart=/usr/bin/herd daemon --resurrect"));
        assert!(u.contains("User=a"));
        assert!(u.contains("Environment=HERD_HOME=/home/a/.herd"));
    }

    #[test]
    fn unit_lets_a_crashed_daemon_come_back_to_apps_that_never_stopped() {
        let u = super::unit("/usr/bin/herd", "/h", "a", false, "");
        // systemd signals the daemon alone; the supervisors survive its crash.
        assert!(u.contains("\nKillMode=process\n"), "{u}");
        assert!(u.contains("\nRestart=on-failure\n"), "{u}");
        // No ExecStop: systemd would run it after a crash and stop the apps.
        assert!(!u.contains("ExecStop="), "{u}");
        assert!(u.contains("\nExecReload=/usr/bin/herd update\n"), "{u}");
    }

    #[test]
    fn unit_passes_the_metrics_flags() {
        let hosts = ["herd.internal".parse().unwrap()];
        let args = super::daemon_args(Some("127.0.0.1:9209".parse().unwrap()), true, &hosts, None);
        let u = super::unit("/usr/bin/herd", "/h", "a", false, &args);
        assert!(u.contains(
            "ExecStart=/usr/bin/herd daemon --resurrect --metrics 127.0.0.1:9209 --metrics-admin \
             --metrics-host herd.internal\n"
        ));
        assert_eq!(super::daemon_args(None, true, &[], None), "");
    }

    #[test]
    fn unit_passes_the_secret_names() {
        let names = herd_protocol::SecretNames::parse("database_url, *_DSN").unwrap();
        let args = super::daemon_args(None, false, &[], Some(&names));
        assert_eq!(args, " --secret-names DATABASE_URL,*_DSN");
        let none = herd_protocol::SecretNames::default();
        assert_eq!(super::daemon_args(None, false, &[], Some(&none)), "");
    }
}
