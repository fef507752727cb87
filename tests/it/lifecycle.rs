//! Starting and stopping: shutdown closes sessions with 1001, and the binary refuses a bad
//! configuration naming the key, before binding anything.

use std::process::Command;

use wspair::Role;

use crate::harness::client::Ending;
use crate::harness::{TestNode, random_channel_id};

#[tokio::test]
async fn shutdown_closes_every_session_with_1001() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let shutdown = tokio::spawn(node.shutdown());
    assert_eq!(
        app.ending().await,
        Ending::Close(1001, "server shutting down".into())
    );
    assert_eq!(
        web.ending().await,
        Ending::Close(1001, "server shutting down".into())
    );
    shutdown.await.unwrap();
}

fn wspair() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wspair"))
}

fn config_file(text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("wspair-test-{}.toml", random_channel_id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `wspair serve` on a config file holding `text`, checks it refuses with exit code 64,
/// and returns what it printed on stderr.
fn refused_config(text: &str) -> String {
    let path = config_file(text);
    let output = wspair()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(path).unwrap();
    assert_eq!(output.status.code(), Some(64));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_misspelt_key_in_the_config_file_is_named_and_exits_64() {
    let stderr = refused_config("[outer]\nprot = 2000\n");
    assert!(stderr.contains("unknown key `outer.prot`"), "{stderr}");
}

#[test]
fn a_bad_value_names_the_key_and_the_problem() {
    let stderr = refused_config("[outer]\nmax-frame-size = -5\n");
    assert!(
        stderr.contains("outer.max-frame-size: -5 is out of range 1..=16777216"),
        "{stderr}"
    );
}

#[test]
fn flags_win_over_the_environment_which_wins_over_the_file() {
    // Each layer sets outer.path to something invalid that names its source, so the error
    // shows which layer won without binding anything.
    let path = config_file("[outer]\npath = \"from-file\"\n");
    let run = |env: Option<&str>, flag: Option<&str>| {
        let mut command = wspair();
        command.arg("serve").arg("--config").arg(&path);
        command.env_remove("WSPAIR_OUTER_PATH");
        if let Some(env) = env {
            command.env("WSPAIR_OUTER_PATH", env);
        }
        if let Some(flag) = flag {
            command.arg("--outer-path").arg(flag);
        }
        let output = command.output().unwrap();
        assert_eq!(output.status.code(), Some(64));
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(run(None, None).contains("\"from-file\""));
    assert!(run(Some("from-env"), None).contains("\"from-env\""));
    assert!(run(Some("from-env"), Some("from-flag")).contains("\"from-flag\""));
    std::fs::remove_file(path).unwrap();
}

#[test]
fn help_lists_every_key_with_its_default() {
    let output = wspair().args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for spec in wspair::config::KEYS {
        assert!(
            help.contains(&format!("--{}", spec.flag())),
            "missing --{}",
            spec.flag()
        );
        assert!(
            help.contains(&format!("[default: {}]", spec.default)),
            "missing default of {}",
            spec.key
        );
    }
}
