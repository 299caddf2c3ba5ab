//! Every binary's `--help` is complete: the binaries are the `[[bin]]` entries of Cargo.toml
//! (so a new binary is checked without being listed here), each with its subcommands; the about
//! text says what the binary does, every argument, option and subcommand has a help text, and a
//! binary that reads a settings file (`--config`, `--file`) points at its example in `configs/`,
//! which exists.

mod common;

use common::{code, direct, run, text};
use std::path::{Path, PathBuf};

/// The `name` of every `[[bin]]` table of the workspace's Cargo.toml.
fn binary_names() -> Vec<String> {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("Cargo.toml");
    let mut names = Vec::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if in_bin && let Some(value) = line.strip_prefix("name") {
            let value = value.trim_start().trim_start_matches('=').trim();
            names.push(value.trim_matches('"').to_string());
        }
    }
    names
}

/// Where Cargo put the binaries of this test run.
fn binary_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_skypipe-sim"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Indentation of clap's help text when it is on the lines below its entry.
const HELP_INDENT: usize = 10;

/// The entries of `--help` (`Arguments:`, `Options:`, `Commands:`) without a help text, and
/// the subcommands listed. An entry is a line indented by fewer than [`HELP_INDENT`] spaces
/// (2, or 6 for a long option without a short one); its help follows on the same line after a
/// gap of two or more spaces, or on the next line, indented by [`HELP_INDENT`].
fn undocumented_entries(help: &str) -> (Vec<String>, Vec<String>) {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let lines: Vec<&str> = help.lines().collect();
    let mut missing = Vec::new();
    let mut commands = Vec::new();
    let mut section = "";
    for (i, line) in lines.iter().enumerate() {
        // A line at the margin is a section heading or ends the section (after_help text).
        if !line.is_empty() && !line.starts_with(' ') {
            section = line;
            continue;
        }
        let in_list = matches!(section, "Arguments:" | "Options:" | "Commands:");
        let entry = line.trim();
        if !in_list || entry.is_empty() || indent(line) >= HELP_INDENT {
            continue;
        }
        let (spec, same_line) = match entry.find("  ") {
            Some(gap) => (&entry[..gap], entry[gap..].trim()),
            None => (entry, ""),
        };
        let next_line = lines
            .get(i + 1)
            .filter(|next| indent(next) >= HELP_INDENT)
            .map_or("", |next| next.trim());
        if same_line.is_empty() && next_line.is_empty() {
            missing.push(spec.to_string());
        }
        if section == "Commands:" && spec != "help" {
            commands.push(spec.to_string());
        }
    }
    (missing, commands)
}

/// Runs `bin ARGS --help`; returns its text.
fn help(bin: &Path, args: &[&str]) -> String {
    let mut all = args.to_vec();
    all.push("--help");
    let out = run(direct(bin, &all));
    assert_eq!(
        code(&out.status),
        0,
        "{} {all:?}: {}",
        bin.display(),
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The problems of one `--help` text (`name`: the command line shown in messages).
fn problems(name: &str, help: &str) -> Vec<String> {
    let mut found = Vec::new();
    let about = help.lines().next().unwrap_or_default();
    if about.starts_with("Usage:") || about.split_whitespace().count() < 4 {
        found.push(format!(
            "{name}: no about text saying what it does (first line {about:?})"
        ));
    }
    let (missing, _) = undocumented_entries(help);
    for entry in missing {
        found.push(format!("{name}: `{entry}` has no help text"));
    }
    let reads_settings = help.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("-c, --config ") || l.starts_with("--config ") || l.starts_with("-f, --file ")
    });
    if reads_settings {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let examples: Vec<&str> = help
            .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '`' | ';' | ','))
            .filter(|w| w.starts_with("configs/") && w.len() > "configs/".len())
            .map(|w| w.trim_end_matches('.'))
            .collect();
        if examples.is_empty() {
            found.push(format!(
                "{name}: reads a settings file but its help names no example in configs/"
            ));
        }
        for example in examples {
            if !root.join(example).is_file() {
                found.push(format!("{name}: names {example}, which does not exist"));
            }
        }
    }
    found
}

#[test]
fn every_binary_and_subcommand_has_a_complete_help() {
    let names = binary_names();
    assert!(names.len() >= 9, "{names:?}");
    let dir = binary_dir();
    let mut found = Vec::new();
    for name in &names {
        let bin = dir.join(name);
        let top = help(&bin, &[]);
        found.extend(problems(name, &top));
        let (_, commands) = undocumented_entries(&top);
        for command in commands {
            let sub = help(&bin, &[&command]);
            found.extend(problems(&format!("{name} {command}"), &sub));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn an_option_without_help_text_is_found() {
    let help = "About this tool\n\nOptions:\n  -c, --config <FILE>\n          TOML file\n\n      --bare\n\n      --inline <N>  Some text\n  -h, --help\n          Print help\n\nCommands:\n  sub   Does a thing\n  other\n  help  Print help\n\nExit codes: 0 done; 1 failed\n";
    let (missing, commands) = undocumented_entries(help);
    assert_eq!(missing, ["--bare", "other"]);
    assert_eq!(commands, ["sub", "other"]);
    let all = problems("tool", help);
    assert!(
        all.iter()
            .any(|p| p.contains("names no example in configs/")),
        "{all:?}"
    );
}
