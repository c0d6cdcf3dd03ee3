//! Storage through the real binary, without an NFS server: the sentinel on local storage, and EFS
//! failing closed (geth never starts when the file system cannot be mounted or something else is mounted
//! at the datadir). The real NFS path is proven in a VM by `tests/qemu/run`.

mod common;
use common::*;
use serde_json::{json, Value};
use std::path::Path;

const SENTINEL: &str = ".node-agent-storage.json";

fn imds(role: &str) -> ImdsEmulator {
    ImdsEmulator::start(&imds_config(
        json!({"Role": role, "Environment": "staging", "EfsFileSystemId": "fs-0123456789abcdef0"}),
    ))
}

/// An rpc host whose chain is on EFS (`[storage.rpc]`) at `<tmp>/efs-data`, with no server at
/// 127.0.0.1 port 1.
fn efs_host(imds: &ImdsEmulator) -> Host {
    Host::new(
        Some(&imds.endpoint()),
        None,
        "[storage]\nkind = \"efs\"\ndatadir = \"efs-data\"\nefs_dns_name = \"127.0.0.1\"\nefs_mount_options = \"nfsvers=4.1,hard,timeo=10,retrans=1,port=1\"\nmount_timeout_secs = 2\n\n[storage.rpc]\nkind = \"efs\"\n",
    )
}

fn is_mountpoint(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = p.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

#[test]
fn local_storage_gets_a_sentinel_naming_its_environment_and_role() {
    let imds = imds("rpc");
    // No ethstats reporting: this rpc host then needs no secrets, and no Secrets Manager.
    let host = Host::new(Some(&imds.endpoint()), None, "[chain]\nethstats = \"\"\n");
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    assert!(agent.terminate().success(), "{}", agent.stderr());
    let text = std::fs::read_to_string(host.path("data/staging/rpc").join(SENTINEL))
        .expect("sentinel written on first use");
    let s: Value = serde_json::from_str(&text).expect("sentinel is JSON");
    assert_eq!(s["environment"], "staging");
    assert_eq!(s["role"], "rpc");
    assert_eq!(s["file_system_id"], Value::Null);
    assert_eq!(s["created_by"], "i-0123456789abcdef0");
}

#[test]
fn a_host_pointed_at_another_roles_data_refuses_to_start() {
    let imds = imds("rpc");
    let host = Host::new(
        Some(&imds.endpoint()),
        None,
        "[storage]\npath_template = \"/{environment}/shared\"\n",
    );
    std::fs::create_dir_all(host.path("data/staging/shared")).unwrap();
    std::fs::write(
        host.path("data/staging/shared").join(SENTINEL),
        r#"{"file_system_id":null,"environment":"staging","role":"sealer"}"#,
    )
    .unwrap();
    let out = host.output(&["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = error_line(&out);
    assert!(
        line.contains("belongs to environment staging, role sealer, file system local disk")
            && line.contains("this host is environment staging, role rpc"),
        "{err}"
    );
    assert!(
        !host.path("data/staging/shared/geth").exists(),
        "geth init ran"
    );
    assert!(host.log("geth").is_empty(), "geth started");
}

#[test]
fn check_shows_the_efs_dns_name_for_the_region_and_the_owner() {
    let imds = imds("sealer");
    let host = Host::new(
        Some(&imds.endpoint()),
        None,
        "[storage]\nkind = \"efs\"\nowner = \"\"\n",
    );
    let out = host.output(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The owner defaults to the service user (users.service; the rig's is numeric).
    let expected = format!(
        "EFS fs-0123456789abcdef0:/staging/sealer mounted at /var/lib/node-agent/data from fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com (created when missing, owner {SERVICE_UID}:{SERVICE_UID} 0750)"
    );
    assert!(stdout.contains(&expected), "{stdout}");
}

#[test]
fn an_access_point_tag_is_mounted_through_efs_utils_and_plain_nfs_is_called_open() {
    let tagged = ImdsEmulator::start(&imds_config(json!({
        "Role": "sealer", "Environment": "staging",
        "EfsFileSystemId": "fs-0123456789abcdef0", "EfsAccessPointId": "fsap-0123456789abcdef0",
    })));
    // Without efs-utils an access point cannot be mounted: refused, naming the key and the fix.
    let host = Host::new(
        Some(&tagged.endpoint()),
        None,
        "[storage]\nkind = \"efs\"\n",
    );
    let out = host.output(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let line = error_line(&out);
    assert!(
        line.contains("storage.efs_access_point_id") && line.contains("storage.efs_utils = true"),
        "{line}"
    );
    host.configure("[storage]\nkind = \"efs\"\nefs_utils = true\n");
    let out = host.output(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("EFS fs-0123456789abcdef0:/staging/sealer mounted at /var/lib/node-agent/data from fs-0123456789abcdef0.efs.eu-central-1.amazonaws.com through access point fsap-0123456789abcdef0 with efs-utils"),
        "{stdout}"
    );
    assert!(!stdout.contains("TCP 2049"), "{stdout}");
    // The same host over plain NFS: check says what that leaves open, in one line.
    let plain = imds("sealer");
    let host = Host::new(Some(&plain.endpoint()), None, "[storage]\nkind = \"efs\"\n");
    let stdout = String::from_utf8_lossy(&host.output(&["check"]).stdout).into_owned();
    let open: Vec<&str> = stdout.lines().filter(|l| l.contains("TCP 2049")).collect();
    assert_eq!(open.len(), 1, "{stdout}");
    assert!(
        open[0].contains("any host that reaches TCP 2049 can mount any path"),
        "{stdout}"
    );
}

#[test]
fn efs_that_cannot_be_mounted_fails_closed_naming_the_target() {
    // Whatever stops the mount here (no NFS client in the kernel, not root, nothing listening on the
    // port), the agent exits 1 naming the target, and geth never runs on the local disk.
    let imds = imds("rpc");
    let host = efs_host(&imds);
    let out = host.output(&["run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = error_line(&out);
    assert!(
        line.contains("storage:") && line.contains("127.0.0.1:/staging/rpc"),
        "{err}"
    );
    let datadir = host.path("efs-data");
    assert!(!is_mountpoint(&datadir));
    assert!(
        !datadir.join("geth").exists(),
        "geth init ran on the local disk"
    );
    assert!(!datadir.join(SENTINEL).exists());
    assert!(host.log("geth").is_empty(), "geth started");
}

#[test]
fn efs_refuses_a_datadir_that_already_holds_another_mount() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let imds = imds("rpc");
    let host = efs_host(&imds);
    let datadir = host.path("efs-data");
    std::fs::create_dir_all(&datadir).unwrap();
    nix::mount::mount(
        Some("impostor"),
        &datadir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount tmpfs");
    let out = host.output(&["run"]);
    let _ = nix::mount::umount2(&datadir, nix::mount::MntFlags::MNT_DETACH);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "storage: {} is a mount of impostor (tmpfs), not of 127.0.0.1:/staging/rpc",
            datadir.display()
        )),
        "{err}"
    );
    assert!(host.log("geth").is_empty(), "geth started");
}
