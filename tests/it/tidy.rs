//! Checks on the source tree itself: every module says what it is, and the README documents
//! every configuration key.

use std::path::Path;

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_a_module_doc_comment() {
    let mut files = Vec::new();
    rust_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    );
    assert!(!files.is_empty());
    let missing: Vec<_> = files
        .iter()
        .filter(|path| !std::fs::read_to_string(path).unwrap().starts_with("//!"))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! doc comment: {missing:?}"
    );
}

#[test]
fn readme_documents_every_config_key_with_its_default() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for spec in wspair::config::KEYS {
        let row = format!("| `{}` |", spec.key);
        let line = readme
            .lines()
            .find(|line| line.starts_with(&row))
            .unwrap_or_else(|| panic!("README has no table row for `{}`", spec.key));
        assert!(
            line.contains(&format!("`{}`", spec.default)),
            "README row of `{}` lacks default `{}`",
            spec.key,
            spec.default
        );
    }
}

#[test]
fn readme_close_code_table_matches_the_codes_the_server_sends() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let table: Vec<u16> = readme
        .split("## Close codes")
        .nth(1)
        .expect("README has a close code section")
        .lines()
        .skip_while(|line| !line.starts_with("| code |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| line.trim_start_matches('|').trim().get(..4)?.parse().ok())
        .collect();
    let mut sent: Vec<u16> = wspair::outer::close::CloseReason::SENT_BY_THE_SERVER
        .iter()
        .filter_map(|reason| reason.code())
        .collect();
    // The echo of a client's close: 1000, or the client's own code.
    sent.push(1000);
    sent.sort_unstable();
    sent.dedup();
    assert_eq!(table, sent, "README close codes against CloseReason");
}
