//! The sealer's lease, fenced while running (the local-disk version of the QEMU test's scenario): when
//! the lease file stops naming this agent, geth is SIGKILLed at once, status says why, and geth is not
//! started again while someone else holds the lock; once it is free, the agent takes it again and geth
//! starts.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn a_sealer_that_loses_its_lease_kills_geth_and_starts_it_only_once_the_lease_is_held_again() {
    let imds = ImdsEmulator::start(&imds_config(
        json!({"Role": "sealer", "Environment": "dev"}),
    ));
    let host = Host::new(
        Some(&imds.endpoint()),
        None,
        "[secrets]\nsource = \"local\"\n[timeouts]\nlease_check_secs = 1\n",
    );
    let mut agent = host.spawn_run(&[]);
    agent.wait_ready();
    let geth = agent.the_child();
    let lease = host.path("data/dev/sealer/.node-agent-sealer.lease");
    assert!(
        std::fs::read_to_string(&lease).unwrap().contains(" pid "),
        "the lease names its holder"
    );

    // Another sealer took over (as after an EFS outage longer than the NFS lease): the file names it.
    std::fs::write(&lease, "i-0other0000000000 pid 7").unwrap();
    wait_for("geth to be killed", Duration::from_secs(10), || {
        (!alive(geth)).then_some(())
    });
    // ... and it holds the lock: the agent let go of its own, so the other's flock succeeds.
    let file = std::fs::File::open(&lease).unwrap();
    let other = wait_for("the lock to be free", Duration::from_secs(10), || {
        nix::fcntl::Flock::lock(
            file.try_clone().unwrap(),
            nix::fcntl::FlockArg::LockExclusiveNonblock,
        )
        .ok()
    });
    let (code, doc) = host.status();
    let child = &doc["children"][0];
    assert_eq!(child["state"], "fenced", "{doc}");
    assert_eq!(child["pid"], serde_json::Value::Null, "{doc}");
    let reason = child["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("sealer lease not held") && reason.contains("i-0other0000000000 pid 7"),
        "{reason}"
    );
    assert_eq!(code, Some(2), "a fenced sealer is DOWN: {doc}");
    let text = agent.stderr();
    assert!(text.contains("killed (SIGKILL): fenced"), "{text}");
    assert!(text.contains("sealer lease lost"), "{text}");

    // While the other holds it, geth stays down.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        children_of(agent.pid()).is_empty(),
        "geth started beside the lease's holder"
    );

    drop(other);
    let again = wait_for("geth to start again", Duration::from_secs(15), || {
        let kids = children_of(agent.pid());
        (kids.len() == 1).then(|| kids[0])
    });
    assert_ne!(again, geth);
    assert!(!std::fs::read_to_string(&lease)
        .unwrap()
        .contains("i-0other"));
    assert!(agent.stderr().contains("sealer lease held again"));
    assert!(agent.terminate().success(), "{}", agent.stderr());
}
