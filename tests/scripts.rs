//! The shell around memgate: `.ci/run`, the bench scripts and the commands
//! README.md gives, run or read the way an operator would.

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(REPO).join(path)).unwrap()
}

/// `build_memgate` of bench/lib.sh with a `cargo` on the PATH that only
/// records that it ran; returns (exit code, stderr, whether cargo ran).
fn build_memgate(env: &[(&str, &str)], floors: bool) -> (i32, String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let marker = dir.path().join("cargo-ran");
    let cargo = bin.join("cargo");
    std::fs::write(
        &cargo,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = dir.path().join("target");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; REPO={REPO:?}; . bench/lib.sh; build_memgate test {}; \
             echo \"MEMGATE_BIN=$MEMGATE_BIN\"",
            if floors { "floors" } else { "" }
        ))
        .current_dir(REPO)
        .env_remove("SCENARIOS")
        .env_remove("MEMGATE_BIN")
        .env_remove("BARE_PROXY_BIN")
        .env_remove("TOKIO_FLOOR_BIN")
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("CARGO_TARGET_DIR", &target)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        marker.exists(),
    )
}

/// `MEMGATE_BIN=<binary> bench/run.sh` builds nothing, and says what it
/// needs when a scenario wants a floor binary that is not there.
#[test]
fn bench_with_memgate_bin_builds_nothing() {
    let (code, stderr, built) = build_memgate(
        &[("MEMGATE_BIN", "/bin/true"), ("SCENARIOS", "memgate-get")],
        true,
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(!built, "cargo ran although MEMGATE_BIN was given");

    let (code, stderr, built) = build_memgate(&[("MEMGATE_BIN", "/bin/true")], false);
    assert_eq!(code, 0, "{stderr}");
    assert!(!built, "cargo ran although MEMGATE_BIN was given");

    // Every scenario, floors included, with no floor binary built.
    let (code, stderr, built) = build_memgate(&[("MEMGATE_BIN", "/bin/true")], true);
    assert!(!built, "cargo ran although MEMGATE_BIN was given");
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("BARE_PROXY_BIN") && stderr.contains("cargo build --release --example"),
        "{stderr}"
    );

    let (code, stderr, built) = build_memgate(&[("MEMGATE_BIN", "/nonexistent/memgate")], false);
    assert!(!built);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("/nonexistent/memgate"), "{stderr}");

    // Without MEMGATE_BIN it does build.
    let (code, _, built) = build_memgate(&[], false);
    assert!(built && code != 0, "the stand-in cargo fails the build");
}

/// The programs the tests start themselves are installed by `.ci/run` when
/// missing and named in README.md.
#[test]
fn ci_installs_the_programs_the_tests_start() {
    let ci = read(".ci/run");
    let readme = read("README.md");
    for program in ["redis-server", "promtool", "cmake"] {
        assert!(
            ci.contains(&format!("command -v {program}")),
            ".ci/run does not install {program}"
        );
        assert!(
            readme.contains(program),
            "README.md does not mention {program}"
        );
    }
}

/// The walkthrough's binary is where cargo put it, `CARGO_TARGET_DIR` set
/// or not, and the incident one-liner hands `xargs` a path (it cannot run
/// a shell alias or function).
#[test]
fn readme_commands_find_the_binary_with_or_without_cargo_target_dir() {
    let readme = read("README.md");
    assert!(
        !readme.contains("alias memgate"),
        "xargs cannot see an alias"
    );
    let line = readme
        .lines()
        .find(|l| l.starts_with("MEMGATE="))
        .expect("the walkthrough names the binary in MEMGATE");
    for (target_dir, wanted) in [
        (
            Some("/srv/cache/target"),
            "/srv/cache/target/release/memgate".to_string(),
        ),
        (None, format!("{REPO}/target/release/memgate")),
    ] {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!("{line}\nprintf %s \"$MEMGATE\""))
            .current_dir(REPO)
            .env_remove("CARGO_TARGET_DIR");
        if let Some(dir) = target_dir {
            command.env("CARGO_TARGET_DIR", dir);
        }
        let out = command.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), wanted);
    }
    let incident = readme
        .lines()
        .find(|l| l.contains("xargs"))
        .expect("the incident one-liner");
    assert!(incident.contains("xargs -n1 \"$MEMGATE\""), "{incident}");
}

/// The project explains itself: a license file matching Cargo.toml, a
/// design description every `docs/design.md §N` reference finds a section
/// in, and no pointer at a design file outside the repository.
#[test]
fn the_project_is_self_contained() {
    let license = read("LICENSE");
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
    assert!(read("Cargo.toml").contains("license = \"Apache-2.0\""));

    let design = read("docs/design.md");
    let sections: Vec<String> = design
        .lines()
        .filter(|l| l.starts_with("## ") || l.starts_with("### "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|n| n.trim_end_matches('.').to_string())
        .collect();
    let old_name = ["DESIGN", ".md"].concat();
    let mut dangling = Vec::new();
    let mut old = Vec::new();
    // Migrations are left alone: sqlx checksums their whole text, comments
    // included, and refuses a store whose applied migration changed.
    let skip = |rel: &str| {
        rel.starts_with("target")
            || rel.starts_with(".git")
            || rel.starts_with("migrations/")
            || rel.contains("node_modules")
            || rel.starts_with(".ci/venv")
            || rel == "tests/scripts.rs"
    };
    for path in repo_files(Path::new(REPO)) {
        let rel = path
            .strip_prefix(REPO)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if skip(&rel) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        if text.contains(&old_name) {
            old.push(rel.clone());
        }
        for (at, _) in text.match_indices("docs/design.md §") {
            let rest = &text[at + "docs/design.md §".len()..];
            let section: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if !sections.contains(&section) {
                dangling.push(format!("{rel}: §{section}"));
            }
        }
    }
    assert!(old.is_empty(), "files naming {old_name}: {old:?}");
    assert!(
        dangling.is_empty(),
        "references to missing sections: {dangling:?}"
    );
}

/// Every file under `dir` but the build and dependency folders (which
/// `support::bare::files_under` would walk into, symlinked venvs included).
fn repo_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if matches!(name.to_str(), Some("target" | ".git" | "node_modules")) {
            continue;
        }
        if path.is_dir() && !path.is_symlink() {
            out.extend(repo_files(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}
