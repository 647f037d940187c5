//! `cargo xtask clients-test [go|java|node|rust|grpcurl]...`: the clients of
//! `tests/clients/` (each generates or loads its stubs from `proto/` at
//! test time) and the Rust SDK's example program
//! (`crates/client/examples/quickstart.rs`) against one real
//! `streambus dev` (docs/clients.md).
//!
//! - Go: `buf` (built with `go install` into
//!   `~/.cache/streambus/buf-<version>/bin`) runs protoc-gen-go and
//!   protoc-gen-go-grpc, the module's own tools pinned in its go.mod; then
//!   `go test`.
//! - Java: `mvn test`; the protobuf Maven plugin takes protoc and
//!   protoc-gen-grpc-java from Maven Central (cached in `~/.m2`).
//! - Node.js: `npm ci` of the pinned package-lock.json into
//!   `~/.cache/streambus/node-clients/node_modules` (again only when the lock
//!   file changed), then `node --test` with `NODE_PATH` pointing there.
//! - Rust: the example `quickstart` (built by `cargo test --workspace`),
//!   which checks what it reads.
//! - grpcurl: `grpcurl` (built with `go install` into
//!   `~/.cache/streambus/grpcurl-<version>/bin`) runs
//!   `tests/clients/grpcurl/example.sh`, which checks what it prints.
//!
//! Everything slow is prepared before the server starts and cached outside
//! the clone, so a warm run is a few seconds of compilation per language.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

use crate::peer::root;

/// The languages, in the order they run.
pub const LANGUAGES: &[&str] = &["go", "java", "node", "rust", "grpcurl"];

/// `buf`, which compiles `proto/` and runs the Go plugins (no `protoc`).
const BUF_MODULE: &str = "github.com/bufbuild/buf/cmd/buf";
const BUF_VERSION: &str = "v1.75.0";

/// `grpcurl`, the command-line client of docs/clients.md (by reflection).
const GRPCURL_MODULE: &str = "github.com/fullstorydev/grpcurl/cmd/grpcurl";
const GRPCURL_VERSION: &str = "v1.9.4";

/// The oldest Node.js the client supports (its package.json `engines`).
const NODE_MAJOR: u32 = 18;
/// The Java release the client compiles for (its pom.xml).
pub const JAVA_MAJOR: u32 = 17;

/// `cargo xtask clients-test [go|java|node|rust]...`.
pub fn main(args: &[String]) -> Result<(), String> {
    let languages: Vec<&str> = if args.is_empty() {
        LANGUAGES.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let prepared = prepare(&languages)?;
    crate::devproc::with_dev(|gateway| prepared.test(gateway))
}

/// The clients, ready to run: tools installed, stubs generated, compiled.
pub struct Prepared {
    languages: Vec<&'static str>,
    /// `PATH` with `buf` (Go) and `grpcurl` in front.
    path: OsString,
    /// The Node.js client's installed packages.
    node_modules: PathBuf,
}

/// Where a client's commands run: its directory under tests/clients (the
/// workspace for the Rust example).
fn dir(language: &str) -> PathBuf {
    match language {
        "rust" => root(),
        _ => root().join("tests/clients").join(language),
    }
}

/// `cd DIR && ` as echoed before a command, DIR relative to the workspace.
fn cd(language: &str) -> String {
    match language {
        "rust" => String::new(),
        _ => format!("cd tests/clients/{language} && "),
    }
}

/// Installs what the named clients need and builds them.
pub fn prepare(languages: &[&str]) -> Result<Prepared, String> {
    let mut prepared = Prepared {
        languages: Vec::new(),
        path: std::env::var_os("PATH").unwrap_or_default(),
        node_modules: PathBuf::new(),
    };
    for &language in languages {
        let known = LANGUAGES.iter().find(|&&l| l == language).ok_or_else(|| {
            format!("unknown client {language:?}: expected go, java, node, rust or grpcurl")
        })?;
        match language {
            "go" => {
                require_go()?;
                prepared.prepend_path(go_install(BUF_MODULE, BUF_VERSION, "buf")?)?;
                in_dir("go", &prepared, "buf", &["generate"])?;
                // Compiles the test binary (and vets it) before the server starts.
                in_dir("go", &prepared, "go", &["vet", "."])?;
            }
            "java" => {
                require_version("javac", &["-version"], JAVA_MAJOR)?;
                in_dir(
                    "java",
                    &prepared,
                    "mvn",
                    &["-B", "-q", "--no-transfer-progress", "test-compile"],
                )?;
            }
            "node" => {
                require_version("node", &["--version"], NODE_MAJOR)?;
                prepared.node_modules = install_node_modules()?;
            }
            "grpcurl" => {
                require_go()?;
                prepared.prepend_path(go_install(GRPCURL_MODULE, GRPCURL_VERSION, "grpcurl")?)?;
            }
            // `cargo test --workspace --no-run` (devproc::with_dev) builds it.
            _ => {}
        }
        prepared.languages.push(known);
    }
    Ok(prepared)
}

impl Prepared {
    /// Puts `bin` first in the clients' `PATH`.
    fn prepend_path(&mut self, bin: PathBuf) -> Result<(), String> {
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&self.path));
        self.path = std::env::join_paths(paths).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Runs every prepared client's tests against `gateway`; all of them
    /// run even when one fails.
    pub fn test(&self, gateway: &str) -> Result<(), String> {
        let mut failed = Vec::new();
        for &language in &self.languages {
            let started = std::time::Instant::now();
            let result = match language {
                "go" => self.run(language, gateway, "go", &["test", "-count=1", "-v", "."]),
                "java" => self.run(
                    language,
                    gateway,
                    "mvn",
                    &["-B", "--no-transfer-progress", "test"],
                ),
                "node" => self.run(language, gateway, "node", &["--test", "test/"]),
                "grpcurl" => self.run(language, gateway, "sh", &["example.sh"]),
                _ => {
                    let example = crate::devproc::target_dir().join("debug/examples/quickstart");
                    self.run(language, gateway, &example.to_string_lossy(), &[gateway])
                }
            };
            eprintln!(
                "clients-test {language}: {} in {:.1} s",
                if result.is_ok() { "passed" } else { "FAILED" },
                started.elapsed().as_secs_f64()
            );
            if let Err(e) = result {
                failed.push(e);
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }

    fn run(
        &self,
        language: &str,
        gateway: &str,
        program: &str,
        args: &[&str],
    ) -> Result<(), String> {
        let mut cmd = self.command(language, program);
        cmd.args(args).env("STREAMBUS_GATEWAY", gateway);
        let shown = format!(
            "{}STREAMBUS_GATEWAY={gateway} {program} {}",
            cd(language),
            args.join(" ")
        );
        crate::run_shown(&mut cmd, &shown)
            .map_err(|e| format!("the {language} client tests failed: {e}"))
    }

    fn command(&self, language: &str, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(dir(language)).env("PATH", &self.path);
        if language == "node" {
            cmd.env("NODE_PATH", &self.node_modules);
        }
        cmd
    }
}

/// Runs a preparation step in a client's directory.
fn in_dir(language: &str, prepared: &Prepared, program: &str, args: &[&str]) -> Result<(), String> {
    let mut cmd = prepared.command(language, program);
    cmd.args(args);
    crate::run_shown(
        &mut cmd,
        &format!("{}{program} {}", cd(language), args.join(" ")),
    )
}

/// The first number in `program args`' output (stdout or stderr: `javac
/// -version` prints `javac 17.0.15`, `node --version` `v20.20.2`).
pub fn major_version(program: &str, args: &[&str]) -> Option<u32> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn require_version(program: &str, args: &[&str], major: u32) -> Result<(), String> {
    match major_version(program, args) {
        Some(v) if v >= major => Ok(()),
        Some(v) => Err(format!(
            "{program} {v} found, the client tests need {major} or newer"
        )),
        None => Err(format!(
            "the client tests need {program} {major} or newer (`cargo xtask setup` installs it)"
        )),
    }
}

/// The `go` directive of the Go client's go.mod: the Go it needs.
fn go_mod_version() -> Result<(u32, u32), String> {
    let path = dir("go").join("go.mod");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("go "))
        .and_then(|v| {
            let mut parts = v.trim().split('.');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .ok_or_else(|| format!("{} has no `go` directive", path.display()))
}

/// Checks that `go` is the Go the Go client needs (which also builds the
/// Go tools: `buf`, `grpcurl`).
fn require_go() -> Result<(), String> {
    let needed = go_mod_version()?;
    match crate::k8s::go_version() {
        Some(v) if v >= needed => {}
        found => {
            return Err(format!(
                "the Go client needs Go {}.{} or newer (tests/clients/go/go.mod); found {}",
                needed.0,
                needed.1,
                found.map_or("no `go`".to_string(), |(a, b)| format!("go{a}.{b}"))
            ));
        }
    }
    Ok(())
}

/// Builds the Go program `module@version` (whose binary is `name`) into the
/// version-keyed cache `~/.cache/streambus/NAME-VERSION/bin` unless it is
/// there; returns that directory.
fn go_install(module: &str, version: &str, name: &str) -> Result<PathBuf, String> {
    let bin = crate::cache_root()?.join(format!("{name}-{version}/bin"));
    if bin.join(name).exists() {
        return Ok(bin);
    }
    // Into a temporary directory first, so an interrupted build leaves
    // nothing that looks built.
    let partial = bin.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    let module = format!("{module}@{version}");
    eprintln!("$ GOBIN={} go install {module}", partial.display());
    let status = Command::new("go")
        .args(["install", "-buildvcs=false", &module])
        .env("GOBIN", &partial)
        .status()
        .map_err(|e| format!("cannot run go: {e}"))?;
    if !status.success() {
        return Err(format!("go install {module} failed: {status}"));
    }
    std::fs::rename(&partial, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(bin)
}

/// Installs the Node.js client's locked packages into the cache, once per
/// lock file content, and returns its `node_modules`.
fn install_node_modules() -> Result<PathBuf, String> {
    let cache = crate::cache_root()?.join("node-clients");
    let modules = cache.join("node_modules");
    let stamp = cache.join(".package-lock.json");
    let source = dir("node");
    let lock = std::fs::read_to_string(source.join("package-lock.json"))
        .map_err(|e| format!("tests/clients/node/package-lock.json: {e}"))?;
    if modules.is_dir() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str()) {
        return Ok(modules);
    }
    let _ = std::fs::remove_file(&stamp);
    std::fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(source.join(file), cache.join(file))
            .map_err(|e| format!("{}: {e}", cache.join(file).display()))?;
    }
    eprintln!("$ cd {} && npm ci", cache.display());
    let status = Command::new("npm")
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
        ])
        .current_dir(&cache)
        .status()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !status.success() {
        return Err(format!("npm ci for the Node.js client failed: {status}"));
    }
    std::fs::write(&stamp, lock).map_err(|e| format!("{}: {e}", stamp.display()))?;
    Ok(modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code blocks of `doc` marked `<!-- file: PATH -->` (the block is
    /// the whole file) or `<!-- excerpt: PATH -->` (the block is a run of
    /// whole lines of it): (kind, path, block).
    fn marked_blocks(doc: &str) -> Vec<(String, String, String)> {
        let mut blocks = Vec::new();
        let mut lines = doc.lines();
        while let Some(line) = lines.next() {
            let Some(marker) = line.trim().strip_prefix("<!-- ") else {
                continue;
            };
            let Some((kind, rest)) = marker.split_once(": ") else {
                continue;
            };
            if kind != "file" && kind != "excerpt" {
                continue;
            }
            let path = rest.trim_end_matches("-->").trim().to_string();
            let fence = lines.next().unwrap_or_default();
            assert!(
                fence.starts_with("```"),
                "{path}: no code block after its marker"
            );
            let mut block = String::new();
            for line in lines.by_ref().take_while(|l| !l.starts_with("```")) {
                block.push_str(line);
                block.push('\n');
            }
            blocks.push((kind.to_string(), path, block));
        }
        blocks
    }

    #[test]
    fn the_examples_in_docs_clients_md_are_the_tested_code() {
        let doc_path = root().join("docs/clients.md");
        let doc = std::fs::read_to_string(&doc_path).expect("docs/clients.md");
        let blocks = marked_blocks(&doc);
        for (kind, path, block) in &blocks {
            let source = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| {
                panic!("docs/clients.md shows {path}, which cannot be read: {e}")
            });
            if kind == "file" {
                assert!(
                    source == *block,
                    "docs/clients.md's copy of {path} differs from the file"
                );
            } else {
                let at_line_start = source
                    .match_indices(block.as_str())
                    .any(|(i, _)| i == 0 || source.as_bytes()[i - 1] == b'\n');
                assert!(
                    at_line_start,
                    "docs/clients.md's excerpt of {path} is not in the file:\n{block}"
                );
            }
        }
        // Each tested client program is shown whole.
        for file in [
            "tests/clients/go/example.go",
            "tests/clients/java/src/main/java/streambus/example/StreamBusExample.java",
            "tests/clients/node/example.js",
            "tests/clients/grpcurl/example.sh",
        ] {
            assert!(
                blocks
                    .iter()
                    .any(|(kind, path, _)| kind == "file" && path == file),
                "docs/clients.md does not show {file}"
            );
        }
    }

    #[test]
    fn marked_blocks_are_found() {
        let doc = "text\n<!-- file: a.go -->\n```go\npackage main\n\nfunc main() {}\n```\n\
                   <!-- excerpt: b.py -->\n```python\nx = 1\n```\n<!-- other -->\n";
        assert_eq!(
            marked_blocks(doc),
            vec![
                (
                    "file".into(),
                    "a.go".into(),
                    "package main\n\nfunc main() {}\n".into()
                ),
                ("excerpt".into(), "b.py".into(), "x = 1\n".into()),
            ]
        );
    }
}
