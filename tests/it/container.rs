//! What keeps `deploy/Dockerfile` buildable where no image registry is
//! reachable, and the container check in step with the image it checks. The
//! build and the check themselves need a Docker engine and run by hand
//! (`deploy/build-offline.sh`, `deploy/container-check.sh`); these tests read
//! the files for what would break them.

use std::path::PathBuf;

fn deploy(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `# syntax=` makes BuildKit fetch its frontend image from Docker Hub, and
/// fixed `FROM` images could not be replaced by the debootstrap-made ones.
#[test]
fn the_dockerfile_needs_no_registry_but_for_its_two_base_image_arguments() {
    let dockerfile = deploy("Dockerfile");
    assert!(
        !dockerfile.lines().any(|l| l.starts_with("# syntax=")),
        "a `# syntax=` line needs Docker Hub at build time"
    );
    for (arg, default) in [
        ("RUST_IMAGE", "rust:1-bookworm"),
        ("NODE_IMAGE", "node:20-bookworm-slim"),
    ] {
        assert!(
            dockerfile.contains(&format!("ARG {arg}={default}\n")),
            "ARG {arg}={default}"
        );
        assert!(
            dockerfile.contains(&format!("FROM ${{{arg}}} AS ")),
            "a stage FROM ${{{arg}}}"
        );
    }
    for from in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let image = from.split_whitespace().nth(1).unwrap();
        assert!(
            image.starts_with("${") || ["build", "app"].contains(&image),
            "`{from}`: a base image that is not a build argument or a stage"
        );
    }
    let offline = deploy("build-offline.sh");
    for arg in ["RUST_IMAGE", "NODE_IMAGE"] {
        assert!(
            offline.contains(&format!("--build-arg {arg}=")),
            "build-offline.sh passes {arg}"
        );
    }
}

/// Each app of the daemon image's list listens on a port the image exposes,
/// and the check's kill timeout is api's.
#[test]
fn the_container_check_agrees_with_the_daemon_image() {
    let herd_toml: toml::Value = toml::from_str(&deploy("herd.toml")).unwrap();
    let apps = herd_toml["apps"].as_array().unwrap();
    assert!(apps.len() >= 2, "the check runs two apps");
    let dockerfile = deploy("Dockerfile");
    let exposed: Vec<u64> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace())
        .map(|p| p.parse().expect("EXPOSE PORT"))
        .collect();
    for app in apps {
        let port = app["env"]["PORT"].as_integer().expect("env.PORT") as u64;
        assert!(exposed.contains(&port), "port {port} is not EXPOSEd");
    }
    assert!(exposed.contains(&9209), "the metrics port");

    let check = deploy("container-check.sh");
    let api = apps
        .iter()
        .find(|a| a["name"].as_str() == Some("api"))
        .expect("deploy/herd.toml: the app `api` the check stops");
    let kill_timeout = api["kill_timeout"].as_str().unwrap().trim_end_matches('s');
    assert!(
        check.contains(&format!("kill_timeout={kill_timeout} ")),
        "container-check.sh's kill_timeout is api's ({kill_timeout} s)"
    );
    for (port, app) in [(8000, "web"), (8001, "api")] {
        assert!(
            apps.iter()
                .any(|a| a["name"].as_str() == Some(app)
                    && a["env"]["PORT"].as_integer() == Some(port)),
            "container-check.sh expects {app} on {port}"
        );
    }
}
