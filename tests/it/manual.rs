//! The manual pages of `sealpipe man --out DIR`: one per subcommand (as `--help` lists them),
//! the main page and `sealpipe.toml(5)`; each one valid roff that `man -l` renders without a
//! warning; every key of the example configs documented; and no page naming a sealpipe page
//! that was not written.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::daemon::*;

/// The subcommands `sealpipe ARGS --help` lists (clap's own help, not the pages).
fn subcommands(args: &[&str]) -> Vec<String> {
    let mut all = args.to_vec();
    all.push("--help");
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Runs `sealpipe man --out DIR` into a new directory; returns it and the files written.
fn write_pages() -> (tempfile::TempDir, BTreeSet<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man");
    let (code, stdout, err) = run_cli(&["man", "--out", out.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let files: BTreeSet<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    // It names every file it wrote.
    let printed: BTreeSet<String> = stdout
        .lines()
        .map(|l| {
            Path::new(l)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(printed, files);
    (dir, files)
}

fn page(dir: &tempfile::TempDir, file: &str) -> String {
    std::fs::read_to_string(dir.path().join("man").join(file)).unwrap()
}

/// The page's text without roff's escaped dashes (`\-`).
fn plain(roff: &str) -> String {
    roff.replace("\\-", "-")
}

#[test]
fn man_out_writes_a_page_per_subcommand_the_main_page_and_the_config_page() {
    let (dir, files) = write_pages();
    let mut expected = BTreeSet::from(["sealpipe.1".to_string(), "sealpipe.toml.5".to_string()]);
    for sub in subcommands(&[]) {
        expected.insert(format!("sealpipe-{sub}.1"));
        for nested in subcommands(&[&sub]) {
            expected.insert(format!("sealpipe-{sub}-{nested}.1"));
        }
    }
    assert!(expected.contains("sealpipe-trust-add.1"), "{expected:?}");
    assert_eq!(files, expected);

    for file in &files {
        let (name, section) = file.rsplit_once('.').unwrap();
        let text = page(&dir, file);
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!(".TH {name} {section} "))),
            "{file} has no .TH {name} {section}:\n{text}"
        );
    }
    let check = plain(&page(&dir, "sealpipe-check.1"));
    assert!(check.contains("sealpipe check"), "{check}");
    assert!(check.contains("--no-bind"), "{check}");

    // The main page has the operator's sections, and `sealpipe man` alone prints it.
    let main = page(&dir, "sealpipe.1");
    for heading in ["SIGNALS", "FILES", "ENVIRONMENT", "EXIT STATUS", "SEE ALSO"] {
        assert!(
            main.contains(&format!(".SH {heading}\n"))
                || main.contains(&format!(".SH \"{heading}\"\n")),
            "no {heading} in sealpipe.1"
        );
    }
    for signal in ["SIGTERM", "SIGINT", "SIGHUP"] {
        assert!(main.contains(signal), "{signal}");
    }
    let (code, stdout, err) = run_cli(&["man"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(stdout, main);
}

/// `man`, with `groff` beside it; fails the test, naming the packages, if either is missing.
fn man_command() -> PathBuf {
    let found = |name: &str| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    match (found("man"), found("groff")) {
        (Some(man), Some(_)) => man,
        _ => panic!("rendering the pages needs `man` and `groff` (Debian: man-db groff-base)"),
    }
}

#[test]
#[ignore = "needs man-db and groff-base; .ci/run installs them and runs it"]
fn every_page_renders_with_man_without_a_warning() {
    let (dir, files) = write_pages();
    let man = man_command();
    for file in &files {
        let path = dir.path().join("man").join(file);
        // `w`: every groff warning; the C locale: the plain ASCII device, the strictest font.
        let out = Command::new(&man)
            .args(["--warnings=w", "-l"])
            .arg(&path)
            .env("LC_ALL", "C")
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "man -l {file} failed: {stderr}");
        assert!(stderr.trim().is_empty(), "man -l {file} warns:\n{stderr}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("NAME") && text.len() > 300, "{file}:\n{text}");
    }
}

/// The keys (`key = …`, commented out or not) and the table headers of a config file.
fn keys_of_example(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut keys = BTreeSet::new();
    let mut tables = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start_matches('#').trim();
        if line.starts_with('[') {
            if let Some(header) = line.split_whitespace().next() {
                tables.insert(header.to_string());
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            keys.insert(key.to_string());
        }
    }
    (keys, tables)
}

#[test]
fn every_key_of_the_example_configs_is_in_sealpipe_toml_5() {
    let (dir, _) = write_pages();
    let toml5 = page(&dir, "sealpipe.toml.5");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for example in ["etc/listener.toml", "etc/connector.toml"] {
        let text = std::fs::read_to_string(root.join(example)).unwrap();
        let (keys, tables) = keys_of_example(&text);
        assert!(
            keys.len() > 10 && tables.len() >= 3,
            "{example}: {keys:?} {tables:?}"
        );
        for key in &keys {
            // Documented as a tagged paragraph: the key in bold, then its type and default.
            assert!(
                toml5.contains(&format!("\n\\fB{key}\\fR (")),
                "{example}: key `{key}` is not documented in sealpipe.toml(5)"
            );
            seen += 1;
        }
        for table in &tables {
            assert!(
                toml5.contains(&format!("\n.SS {table}\n")),
                "{example}: {table} has no subsection in sealpipe.toml(5)"
            );
        }
    }
    assert!(seen > 20);
}

#[test]
fn pages_name_only_sealpipe_pages_that_exist() {
    let (dir, files) = write_pages();
    for file in &files {
        let text = plain(&page(&dir, file));
        let see_also = text
            .split_once(".SH \"SEE ALSO\"\n")
            .unwrap_or_else(|| panic!("{file} has no SEE ALSO"))
            .1;
        assert!(see_also.contains("sealpipe"), "{file}: {see_also}");
        // Every reference NAME(N) to a sealpipe page, anywhere in the page.
        let mut refs = 0;
        for (i, _) in text.match_indices("sealpipe") {
            let rest = &text[i..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                .collect();
            let name = name.trim_end_matches('.');
            let Some(section) = rest[name.len()..]
                .strip_prefix('(')
                .and_then(|r| r.split_once(')'))
                .map(|(n, _)| n)
                .filter(|n| n.len() == 1 && n.chars().all(|c| c.is_ascii_digit()))
            else {
                continue;
            };
            refs += 1;
            assert!(
                files.contains(&format!("{name}.{section}")),
                "{file} names {name}({section}), which `sealpipe man --out` did not write"
            );
        }
        assert!(refs > 0, "{file} names no other page");
    }
}
