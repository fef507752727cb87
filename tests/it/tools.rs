//! `wspair check-config`, `wspair completions` and `wspair manpage` as users run them: the built
//! binary as a child process, its output and exit code checked.

use std::process::{Command, Output};

fn wspair(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wspair"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the wspair binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("UTF-8 output")
}

/// A file with `contents` in a directory of this test process.
fn file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wspair-tools-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn check_config_prints_the_effective_configuration_with_secrets_redacted() {
    let path = file(
        "good.toml",
        "[outer]\nport = 2000\nmax-frame-size = 65536\n\n[inner]\nsecret = \"a-long-inner-secret\"\nadvertise = \"10.1.2.3:1025\"\n\n[registry]\nredis = \"redis://relay:hunter2hunter2@10.1.2.9:6379\"\n",
    );
    let out = wspair(
        &["check-config", path.to_str().unwrap()],
        // The environment wins over the file, as for `serve`.
        &[("WSPAIR_OUTER_PORT", "2345")],
    );
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}{}", text(&out.stderr));
    assert!(
        !shown.contains("a-long-inner-secret") && !shown.contains("hunter2"),
        "{shown}"
    );
    let table: toml::Table = shown.parse().expect("the output is TOML");
    assert_eq!(table["outer"]["port"].as_integer(), Some(2345));
    assert_eq!(table["outer"]["max-frame-size"].as_integer(), Some(65536));
    assert_eq!(table["inner"]["secret"].as_str(), Some("<redacted>"));
    assert_eq!(
        table["registry"]["redis"].as_str(),
        Some("redis://relay:<redacted>@10.1.2.9:6379")
    );
    // Defaults are shown too: the output is everything a node would run with.
    assert_eq!(table["outer"]["path"].as_str(), Some("/channel"));
}

#[test]
fn check_config_names_the_key_at_fault_and_exits_64() {
    let cases = [
        (
            "typo.toml",
            "[outer]\nprot = 2000\n",
            "unknown key `outer.prot`",
        ),
        (
            "range.toml",
            "[outer]\nport = 70000\n",
            "outer.port: 70000 is out of range",
        ),
        (
            "tls.toml",
            "[outer]\ntls-cert = \"/nonexistent/cert.pem\"\ntls-key = \"/nonexistent/key.pem\"\n",
            "outer.tls-cert: /nonexistent/cert.pem",
        ),
        ("auth.toml", "[auth]\nsecret = \"short\"\n", "auth.secret"),
        (
            "admin.toml",
            "[admin]\nip = \"0.0.0.0\"\n",
            "admin.token: is needed to serve the admin API on 0.0.0.0",
        ),
    ];
    for (name, contents, expected) in cases {
        let path = file(name, contents);
        let out = wspair(&["check-config", path.to_str().unwrap()], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{name}: {stderr}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
    }
    let out = wspair(&["check-config", "/nonexistent/wspair.toml"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/wspair.toml"));
}

#[test]
fn completions_and_the_man_page_cover_every_serve_flag() {
    for shell in ["bash", "zsh", "fish"] {
        let out = wspair(&["completions", shell], &[]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        for key in wspair::config::KEYS {
            assert!(
                script.contains(&key.flag()),
                "{shell} lacks --{}",
                key.flag()
            );
        }
    }
    let out = wspair(&["completions", "tcsh"], &[]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "an unknown shell is a usage error"
    );

    let out = wspair(&["manpage"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let page = text(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH wspair 1"),
        "{}",
        &page[..200]
    );
    assert!(page.contains(".TH wspair-serve"), "serve has its own page");
    // roff escapes dashes.
    assert!(
        page.contains(r"outer\-max\-frame\-size"),
        "serve's flags are listed"
    );
}
