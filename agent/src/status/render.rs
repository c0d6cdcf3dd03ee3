//! The document for people: one compact screen, and text made safe for a terminal.

use super::model::{BackupStatus, Document, EthstatsSample, StorageKind};

/// An age for people: `59s`, `119m`, `47h`, `3d`.
pub fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `12.0 MiB`, `2.0 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `text` safe for a terminal: control characters (escape sequences among them) from the socket or a log
/// file become `?`; line breaks stay.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// The compact human layout. Pure.
pub fn render(doc: &Document) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (h, a) = (&doc.host, &doc.agent);
    // Only geth roles run the pinned geth; the bootnode and ethstats hosts do not.
    let pinned = match h.role.as_str() {
        "bootnode" | "ethstats" => String::new(),
        _ => format!(", geth pinned {}", doc.pinned.geth),
    };
    let _ = writeln!(
        out,
        "{} — {} {} on {} (agent {} up {}{pinned})",
        doc.overall.as_str().to_uppercase(),
        h.environment,
        h.role,
        h.instance_id,
        a.version,
        ago(a.uptime_secs),
    );
    for c in &doc.children {
        let pid = c
            .pid
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(|| "no process".into());
        let up = c
            .uptime_secs
            .map(|u| format!(", up {}", ago(u)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "  {:<9} {:<11} {pid}, user {}{up}, restarts {} (+{} unhealthy)",
            c.name,
            c.state.as_str(),
            c.user,
            c.restarts,
            c.unhealthy_restarts,
        );
        if let Some(e) = &c.last_exit {
            let _ = write!(out, ", last {e}");
        }
        out.push('\n');
        if let Some(r) = &c.reason {
            let _ = writeln!(out, "            why: {r}");
        }
        if let Some(chain) = &c.chain {
            // The genesis' timestamp is when the chain was designed (often 0), not an age worth showing.
            let age = match chain.head {
                0 => "(no block yet)".to_owned(),
                _ => format!("{} old", ago(chain.head_age_secs)),
            };
            let mut line = format!(
                "            chain: head #{} {age}, {} peers{}",
                chain.head,
                chain.peers,
                if chain.syncing { ", syncing" } else { "" }
            );
            match chain.authorised {
                Some(true) => line.push_str(", authorised signer"),
                Some(false) => line.push_str(", NOT an authorised signer"),
                None => {}
            }
            match chain.mining {
                Some(true) => line.push_str(", sealing"),
                Some(false) => line.push_str(", NOT sealing"),
                None => {}
            }
            let _ = writeln!(out, "{line}");
        }
        if let Some(e) = &c.ethstats {
            let _ = writeln!(out, "            ethstats: {}", ethstats(e));
        }
    }
    if let Some(e) = &doc.bootnode_enode {
        let _ = writeln!(out, "  enode     {e}");
    }
    let st = &doc.storage;
    let check = match (st.check_ok, &st.check_error) {
        (true, _) if st.kind == StorageKind::Local => "sentinel ok".to_owned(),
        (true, _) => "mounted, sentinel ok".to_owned(),
        (false, Some(e)) => format!("CHECK FAILED: {e}"),
        (false, None) => "not checked".to_owned(),
    };
    let free = st.free_bytes.map(bytes).unwrap_or_else(|| "?".into());
    let _ = writeln!(
        out,
        "  storage   {} at {}, {check}, {free} free",
        st.source,
        st.datadir.display()
    );
    for sec in &doc.secrets {
        let err = sec
            .error
            .as_ref()
            .map(|e| format!(" — newest version refused: {e}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  secret    {} version {} fetched {} ago{err}",
            sec.name,
            sec.version,
            ago(sec.age_secs)
        );
    }
    for (label, reach, what) in [
        ("rotation", &doc.services.secrets_manager, "Secrets Manager"),
        ("imds", &doc.services.imds, "instance metadata"),
    ] {
        let Some(r) = reach else {
            continue;
        };
        let state = match (r.ok, r.ok_age_secs) {
            (false, _) => format!(
                "{what} FAILING for {}: {}",
                ago(r.failing_secs.unwrap_or(0)),
                r.error.as_deref().unwrap_or("-")
            ),
            (true, Some(age)) => format!("{what} answered {} ago", ago(age)),
            (true, None) => format!("{what} not asked yet"),
        };
        let _ = writeln!(out, "  {label:<9} {state}");
    }
    let logs = doc.logs.as_ref().map_or("-", |l| l.summary.as_str());
    let _ = writeln!(out, "  logs      {logs}");
    if let Some(e) = &doc.endpoint {
        let answer = |ok: bool, why: &Option<String>| match (ok, why) {
            (true, _) => "200".to_owned(),
            (false, Some(why)) => format!("503 ({why})"),
            (false, None) => "503".to_owned(),
        };
        let answers = format!(
            "/ready {}, /live {}",
            answer(e.ready, &e.ready_reason),
            answer(e.live, &e.live_reason)
        );
        match &e.listen {
            Some(addr) => writeln!(out, "  endpoint  {addr}: {answers}"),
            None => writeln!(
                out,
                "  endpoint  off (health.listen): would answer {answers}"
            ),
        }
        .ok();
    }
    if let Some(b) = &doc.backup {
        let now = doc.agent.started_at + doc.agent.uptime_secs;
        let _ = writeln!(out, "  backup    {}", printable(&backup_line(b, now)));
    }
    out
}

/// One line on the ethstats dashboard: on a geth host whether it lists this node, on the ethstats host
/// which nodes report.
fn ethstats(e: &EthstatsSample) -> String {
    let names = |list: &[String]| match list.len() {
        0 => "none".to_owned(),
        _ => list.join(", "),
    };
    match (&e.node, e.answered) {
        (_, false) => format!(
            "dashboard {} NOT answering: {}",
            e.server,
            e.error.as_deref().unwrap_or("no answer")
        ),
        (Some(node), true) if e.listed == Some(true) => {
            format!("reporting as {node} to {} (listed on its dashboard)", e.server)
        }
        (Some(node), true) => format!(
            "{node} NOT listed as reporting on {}'s dashboard (geth's log says why: wrong secret, server unreachable)",
            e.server
        ),
        (None, true) => format!(
            "{} node{} reporting: {}{}",
            e.reporting.len(),
            if e.reporting.len() == 1 { "" } else { "s" },
            names(&e.reporting),
            match e.inactive.len() {
                0 => String::new(),
                _ => format!("; gone: {}", names(&e.inactive)),
            }
        ),
    }
}

/// The `backup` line for people.
pub fn backup_line(b: &BackupStatus, now: u64) -> String {
    let mut out = match &b.newest {
        Some(n) => format!(
            "blocks 1-{} in {} segments, newest #{}-#{} {} old ({})",
            b.covered_to,
            b.segments,
            n.first,
            n.last,
            ago(now.saturating_sub(n.created_at)),
            bytes(n.bytes)
        ),
        None => "no segment yet".to_owned(),
    };
    match (b.exporting, &b.holder) {
        (true, _) => out += "; this node exports",
        (false, Some(h)) => out += &format!("; exported by {h}, this node stands by"),
        (false, None) => out += "; no node exports yet",
    }
    if b.degraded(now) && b.error.is_none() {
        out += &format!(
            " (STALE: older than twice backup.interval_secs, {}s)",
            b.interval_secs
        );
    }
    if let Some(e) = &b.error {
        out += &format!("; last round failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::{parse, FULL, SPARSE};
    use super::super::model::{ReachPart, State};
    use super::*;

    #[test]
    fn the_backup_line_says_range_age_size_and_who_exports() {
        let mut b = BackupStatus {
            exporting: true,
            interval_secs: 60,
            covered_to: 300,
            segments: 3,
            newest: Some(super::super::model::NewestSegment {
                first: 201,
                last: 300,
                bytes: 2048,
                created_at: 1000,
            }),
            ..BackupStatus::default()
        };
        assert_eq!(
            backup_line(&b, 1100),
            "blocks 1-300 in 3 segments, newest #201-#300 100s old (2.0 KiB); this node exports"
        );
        assert!(
            backup_line(&b, 1121).ends_with("(STALE: older than twice backup.interval_secs, 60s)")
        );
        b.error = Some("IPC down".into());
        assert!(backup_line(&b, 1001).ends_with("; last round failed: IPC down"));
        b.exporting = false;
        b.holder = Some("i-0other pid 7".into());
        assert!(backup_line(&b, 5000).contains("exported by i-0other pid 7, this node stands by"));
    }

    /// What `render` showed for these documents before the document had a type.
    const FULL_TEXT: &str = "\
DEGRADED — production sealer on i-0abc (agent 0.1.0 up 66m, geth pinned 1.13.15)
  geth      ready       pid 42, user geth, up 61s, restarts 1 (+2 unhealthy), last exited with code 1
            why: warming up: no peers
            chain: head #120 3s old, 2 peers, syncing, authorised signer, NOT sealing
            ethstats: production-sealer-i-0abc NOT listed as reporting on 10.0.0.9:3000's dashboard (geth's log says why: wrong secret, server unreachable)
  ethstats  backing_off no process, user geth, restarts 3 (+0 unhealthy), last killed by signal 9
            why: backing off 4s
  enode     enode://ab@10.0.0.1:30301
  storage   fs-1:/production/sealer at /var/lib/node-agent/data, mounted, sentinel ok, 7.5 GiB free
  secret    production/sealer/password version v2 fetched 30s ago
  secret    production/sealer/key version v1 fetched 2h ago — newest version refused: bad key
  rotation  Secrets Manager FAILING for 40s: timeout
  imds      instance metadata answered 5s ago
  logs      CloudWatch failing for 31s (ThrottlingException), lag 2.0 KiB, 3 lines not written (disk), 2 events rejected by CloudWatch, 4.0 KiB rotated away unshipped, error: PutRetentionPolicy denied
  endpoint  0.0.0.0:8080: /ready 503 (syncing: head #120, peers at #130), /live 200
";
    const SPARSE_TEXT: &str = "\
DOWN — dev rpc on i-local (agent 0.1.0 up 5s, geth pinned 1.13.15)
  geth      starting    no process, user alice, restarts 0 (+0 unhealthy)
  storage   /tmp/data at /tmp/data, CHECK FAILED: sentinel missing, ? free
  logs      files only (not shipped)
  endpoint  off (health.listen): would answer /ready 503 (geth is starting), /live 200
";

    #[test]
    fn render_shows_the_whole_document_as_it_always_did() {
        assert_eq!(render(&parse(FULL)), FULL_TEXT);
        assert_eq!(render(&parse(SPARSE)), SPARSE_TEXT);
    }

    #[test]
    fn render_shows_state_chain_and_secrets_without_values() {
        let text = render(&parse(FULL));
        assert!(
            !text.contains("password\n") && !text.contains("value"),
            "{text}"
        );
        let mut doc = parse(FULL);
        doc.overall = super::super::model::Overall::Healthy;
        let geth = &mut doc.children[0];
        geth.reason = None;
        geth.chain.as_mut().unwrap().syncing = false;
        geth.chain.as_mut().unwrap().mining = Some(true);
        let text = render(&doc);
        assert!(text.starts_with("HEALTHY — production sealer on i-0abc (agent 0.1.0 up 66m"));
        assert!(
            text.contains("chain: head #120 3s old, 2 peers, authorised signer, sealing\n"),
            "{text}"
        );
        assert!(!text.contains("why: warming"), "{text}");
    }

    #[test]
    fn render_shows_the_ethstats_dashboard_from_either_side() {
        let sample = |node: Option<&str>, answered: bool| EthstatsSample {
            server: "10.0.0.9:3000".into(),
            answered,
            reporting: vec!["dev-rpc-i-1".into(), "dev-sealer-i-2".into()],
            inactive: vec!["old".into()],
            node: node.map(Into::into),
            listed: node.filter(|_| answered).map(|n| n == "dev-rpc-i-1"),
            error: (!answered).then(|| "ws://10.0.0.9:3000/primus: Connection refused".into()),
        };
        assert_eq!(
            ethstats(&sample(None, true)),
            "2 nodes reporting: dev-rpc-i-1, dev-sealer-i-2; gone: old"
        );
        assert_eq!(
            ethstats(&sample(Some("dev-rpc-i-1"), true)),
            "reporting as dev-rpc-i-1 to 10.0.0.9:3000 (listed on its dashboard)"
        );
        assert!(ethstats(&sample(Some("x"), true)).starts_with("x NOT listed as reporting"));
        assert_eq!(
            ethstats(&sample(Some("x"), false)),
            "dashboard 10.0.0.9:3000 NOT answering: ws://10.0.0.9:3000/primus: Connection refused"
        );
    }

    #[test]
    fn render_says_no_block_yet_at_the_genesis_and_names_geth_only_for_geth_roles() {
        let doc = |role: &str, head: u64| {
            let mut doc = parse(SPARSE);
            doc.host.role = role.into();
            let geth = &mut doc.children[0];
            geth.state = State::Ready;
            geth.chain = Some(super::super::model::GethSample {
                head,
                head_age_secs: 1_796_058_877,
                peers: 0,
                syncing: false,
                highest: None,
                authorised: None,
                mining: None,
            });
            doc
        };
        let text = render(&doc("sealer", 0));
        assert!(
            text.contains("chain: head #0 (no block yet), 0 peers\n"),
            "{text}"
        );
        assert!(!text.contains("d old"), "{text}");
        assert!(text.contains(", geth pinned 1.13.15)"), "{text}");
        assert!(render(&doc("rpc", 7)).contains("chain: head #7 20787d old"));
        for role in ["bootnode", "ethstats"] {
            let text = render(&doc(role, 0));
            assert!(!text.contains("geth pinned"), "{role}: {text}");
        }
    }

    #[test]
    fn render_shows_a_service_failing_answered_or_not_asked_yet() {
        let reach = |ok: bool, ok_age_secs: Option<u64>| ReachPart {
            ok,
            ok_at: None,
            ok_age_secs,
            failing_since: None,
            failing_secs: (!ok).then_some(90),
            error: (!ok).then(|| "timeout".into()),
        };
        let mut doc = parse(SPARSE);
        doc.services.secrets_manager = Some(reach(false, Some(100)));
        let text = render(&doc);
        assert!(
            text.contains("  rotation  Secrets Manager FAILING for 90s: timeout\n"),
            "{text}"
        );
        assert!(!text.contains("imds"), "{text}");
        doc.services.secrets_manager = Some(reach(true, Some(2)));
        doc.services.imds = Some(reach(true, None));
        let text = render(&doc);
        assert!(
            text.contains("  rotation  Secrets Manager answered 2s ago\n")
                && text.contains("  imds      instance metadata not asked yet\n"),
            "{text}"
        );
    }

    #[test]
    fn a_document_without_its_optional_parts_renders() {
        let mut doc = parse(SPARSE);
        doc.logs = None;
        doc.endpoint = None;
        doc.storage.check_error = None;
        let text = render(&doc);
        assert!(text.ends_with("  logs      -\n"), "{text}");
        assert!(text.contains(", not checked, ? free\n"), "{text}");
    }

    #[test]
    fn text_for_a_terminal_carries_no_control_characters() {
        let mut doc = parse(SPARSE);
        doc.host.role = "rpc\u{1b}[2J".into();
        doc.host.environment = "a\u{9b}b\r".into();
        let text = printable(&render(&doc));
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains("a?b?") && text.contains("rpc?[2J"),
            "{text:?}"
        );
    }

    #[test]
    fn ages_and_sizes_for_people() {
        assert_eq!(
            [0, 119, 120, 7199, 7200, 172_799, 172_800, u64::MAX].map(ago),
            [
                "0s",
                "119s",
                "2m",
                "119m",
                "2h",
                "47h",
                "2d",
                "213503982334601d"
            ]
        );
        assert_eq!(
            [0, 1023, 1536, 12 << 20, u64::MAX].map(bytes),
            ["0 B", "1023 B", "1.5 KiB", "12.0 MiB", "16777216.0 TiB"]
        );
    }

    proptest::proptest! {
        #[test]
        fn render_never_panics(
            text in "\\PC{0,80}",
            n in proptest::prelude::any::<u64>(),
            pid in proptest::prelude::any::<Option<u32>>(),
        ) {
            let mut doc = parse(FULL);
            doc.host.role = text.clone();
            doc.agent.uptime_secs = n;
            let geth = &mut doc.children[0];
            (geth.name, geth.pid, geth.uptime_secs) = (text.clone(), pid, Some(n));
            let chain = geth.chain.as_mut().unwrap();
            (chain.head, chain.head_age_secs, chain.peers) = (n, n, n);
            doc.storage.free_bytes = Some(n);
            doc.secrets[0].age_secs = n;
            let _ = render(&doc);
        }
    }
}
