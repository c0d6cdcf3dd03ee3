//! The README and the manual (docs/) cannot drift: every command in their `sh`/`bash` blocks runs here and must succeed, except the
//! ones listed in `SKIPPED` with the reason each cannot run in a test. `cargo run --` stands for the binary
//! under test (a nested cargo would wait for this build's lock), and `node-agent` is found on PATH.

mod common;
use common::*;
use std::process::Command;

/// Commands (by how they start) that a test cannot run, and why. Each must still appear in the README.
const SKIPPED: &[(&str, &str)] = &[
    (
        "cargo run -- run --local --role sealer --environment dev --config tests/fixtures/local.toml",
        "the quick start runs until Ctrl-C; tests/ux.rs starts it and finds it with `status`",
    ),
    ("tests/run", "the test command itself: it runs this test"),
    (
        "bake/static-build",
        "a release build of several minutes; bake/check runs it in CI",
    ),
    (
        "bake/build",
        "bakes an AMI in an AWS account with packer",
    ),
    (
        "packer validate",
        "needs packer; bake/check runs it in CI",
    ),
    (
        "printf '[storage]",
        "launch user-data: writes the host's /etc/node-agent and holds a placeholder (<node id>)",
    ),
    (
        "tests/boot/run",
        "root-only boot rig under systemd-nspawn (debootstrap, minutes); CI runs it last",
    ),
    (
        "NODE_AGENT_BIN=path tests/boot/run",
        "the boot rig again, with a placeholder binary path",
    ),
];

/// The commands of every `sh`/`bash` block, continuation lines joined, comments removed.
fn readme_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        let fence = line.trim_start();
        if !in_block {
            in_block = fence == "```sh" || fence == "```bash";
            continue;
        }
        if fence.starts_with("```") {
            in_block = false;
            continue;
        }
        let line = strip_comment(line);
        if let Some(part) = line.strip_suffix('\\') {
            pending.push_str(part);
            continue;
        }
        pending.push_str(&line);
        let command = pending.split_whitespace().collect::<Vec<_>>().join(" ");
        pending.clear();
        if !command.is_empty() {
            commands.push(command);
        }
    }
    commands
}

/// `line` without a shell comment (a `#` at the start of a word, outside quotes).
fn strip_comment(line: &str) -> String {
    let (mut single, mut double, mut prev) = (false, false, ' ');
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => {
                return line[..i].trim_end().to_owned()
            }
            _ => {}
        }
        prev = c;
    }
    line.trim_end().to_owned()
}

#[test]
fn comments_and_continuations_are_read_like_a_shell_reads_them() {
    let text = "x\n```sh\n#!/bin/sh\na --b \\\n  c   # note\nprintf '#x' \"#y\" # z\n```\n```hcl\nno\n```\n";
    assert_eq!(readme_commands(text), ["a --b c", "printf '#x' \"#y\""]);
}

#[test]
fn every_command_in_the_readme_runs() {
    let repo = repo();
    // The front page and the manual under docs/.
    let mut readme = std::fs::read_to_string(repo.join("README.md")).expect("README.md");
    let mut docs: Vec<_> = std::fs::read_dir(repo.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    for p in docs {
        readme.push('\n');
        readme.push_str(&std::fs::read_to_string(&p).expect("a docs page"));
    }
    let commands = readme_commands(&readme);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_node-agent"));
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut ran = 0;
    let mut failures = Vec::new();
    for command in &commands {
        if let Some((_, why)) = SKIPPED.iter().find(|(p, _)| command.starts_with(p)) {
            eprintln!("skipped: {command}\n  because {why}");
            continue;
        }
        let shell = command.replace("cargo run --", &bin.display().to_string());
        let out = Command::new("sh")
            .args(["-c", &shell])
            .current_dir(&repo)
            .env("PATH", &path)
            .env_remove("NODE_AGENT_LOG")
            .output()
            .expect("run sh");
        ran += 1;
        if !out.status.success() {
            failures.push(format!(
                "{command}\n  exit {:?}\n  {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "README commands failed:\n{}",
        failures.join("\n")
    );
    assert!(ran >= 3, "only {ran} README commands ran: {commands:?}");
    // The list of exceptions must not outlive the commands it excuses.
    for (prefix, _) in SKIPPED {
        assert!(
            commands.iter().any(|c| c.starts_with(prefix)),
            "SKIPPED lists {prefix:?}, which no README block holds any more"
        );
    }
}
