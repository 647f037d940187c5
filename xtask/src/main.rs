//! Developer workflows, run as `cargo xtask <command>`.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\ncommands:\n  ci    fmt check, clippy -D warnings, all tests (what .ci/run runs)"
            );
            ExitCode::from(2)
        }
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    eprintln!("$ {program} {}", args.join(" "));
    Command::new(program)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ci() -> ExitCode {
    let steps: &[(&str, &[&str])] = &[
        ("cargo", &["fmt", "--all", "--check"]),
        (
            "cargo",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
        ("cargo", &["test", "--workspace"]),
    ];
    for (program, args) in steps {
        if !run(program, args) {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
