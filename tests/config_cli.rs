//! The built `weir` binary's command line: `weir config` with a file, the
//! environment and flags, `--version`, `--help`, and start-up refused on a
//! bad file.

use std::path::Path;
use std::process::{Command, Output};

/// `weir` with `args` and only the environment `vars` (plus nothing
/// inherited, so the test's own environment cannot leak in).
fn weir(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weir"));
    cmd.env_clear().args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("cannot run weir")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The line of `weir config`'s output that sets `key`.
fn line<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no {key} line in\n{printed}"))
}

#[test]
fn weir_config_shows_each_value_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(
        &file,
        "# set by the file\n\
         STREAM_MANAGER_SERVER_PORT = 1111\n\
         STREAM_MANAGER_STORE_ROOT_DIR = \"/from/the/file\"\n\
         WEIR_MAX_READ_BYTES = 5000\n\
         JVM_ARGS = \"-Xmx64m\"\n",
    )
    .unwrap();
    let store = dir.path().join("store-from-env");
    let store_str = store.to_str().unwrap();
    let file_str = file.to_str().unwrap();
    let out = weir(
        &[
            "config",
            "--config",
            file_str,
            "--port",
            "2222",
            "--set",
            "WEIR_MAX_CONNECTIONS=7",
        ],
        &[("STREAM_MANAGER_STORE_ROOT_DIR", store_str)],
    );
    let printed = stdout(&out);
    assert!(out.status.success(), "{}{}", printed, stderr(&out));
    let port = line(&printed, "STREAM_MANAGER_SERVER_PORT");
    assert!(
        port.contains("= 2222") && port.ends_with("# command line"),
        "{port}"
    );
    let root = line(&printed, "STREAM_MANAGER_STORE_ROOT_DIR");
    assert!(
        root.contains(store_str) && root.ends_with("# environment"),
        "{root}"
    );
    let read = line(&printed, "WEIR_MAX_READ_BYTES");
    assert!(
        read.contains("= 5000") && read.ends_with(&format!("# file {file_str}")),
        "{read}"
    );
    let conns = line(&printed, "WEIR_MAX_CONNECTIONS");
    assert!(
        conns.contains("= 7") && conns.ends_with("# command line"),
        "{conns}"
    );
    let frame = line(&printed, "WEIR_MAX_FRAME_BYTES");
    assert!(
        frame.contains("= 16777216") && frame.ends_with("# default"),
        "{frame}"
    );
    assert!(
        printed.contains("JVM_ARGS"),
        "the ignored key is reported\n{printed}"
    );
    assert!(
        !Path::new(&store).exists(),
        "weir config must not create or open the store"
    );
}

#[test]
fn the_file_can_be_named_by_weir_config_and_hold_only_comments() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    std::fs::write(
        &file,
        "# STREAM_MANAGER_SERVER_PORT = 8088\n# nothing else\n",
    )
    .unwrap();
    let out = weir(&["config"], &[("WEIR_CONFIG", file.to_str().unwrap())]);
    let printed = stdout(&out);
    assert!(out.status.success(), "{}{}", printed, stderr(&out));
    assert!(printed.contains(file.to_str().unwrap()), "{printed}");
    let port = line(&printed, "STREAM_MANAGER_SERVER_PORT");
    assert!(
        port.contains("= 8088") && port.ends_with("# default"),
        "{port}"
    );
}

#[test]
fn a_bad_file_stops_start_up_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weir.toml");
    let file_str = file.to_str().unwrap();
    let store = dir.path().join("store");
    std::fs::write(&file, "STREAM_MANAGER_SERVER_PROT = 8088\n").unwrap();
    // The server itself (no subcommand), not only `weir config`.
    let out = weir(
        &[
            "--config",
            file_str,
            "--store-root",
            store.to_str().unwrap(),
        ],
        &[],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("STREAM_MANAGER_SERVER_PROT") && err.contains(file_str),
        "{err}"
    );
    assert!(!store.exists(), "refused before the store is opened");
    std::fs::write(&file, "WEIR_MAX_CONNECTIONS = \"many\"\n").unwrap();
    let out = weir(&["config", "--config", file_str], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("WEIR_MAX_CONNECTIONS") && err.contains(file_str),
        "{err}"
    );
    let out = weir(&["config", "--set", "NO_SUCH_SETTING=1"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("NO_SUCH_SETTING"), "{}", stderr(&out));
    let out = weir(&["config"], &[("WEIR_MAX_IN_FLIGHT", "0")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("WEIR_MAX_IN_FLIGHT") && err.contains("environment"),
        "{err}"
    );
}

#[test]
fn version_and_help_exit_zero() {
    let out = weir(&["--version"], &[]);
    assert!(out.status.success());
    assert_eq!(
        stdout(&out).trim(),
        format!("weir {}", env!("CARGO_PKG_VERSION"))
    );
    let out = weir(&["--help"], &[]);
    let help = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    for flag in [
        "--config",
        "--port",
        "--store-root",
        "--bind-address",
        "--log-level",
        "--set",
    ] {
        assert!(help.contains(flag), "{flag} missing from\n{help}");
    }
    assert!(help.contains("config"), "the config subcommand\n{help}");
}
