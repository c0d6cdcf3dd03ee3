//! What this host listens on, and who should reach it: the ports a security group opens, as `check`
//! lists them (and `check --json` carries them, for the reference Terraform's consistency test). Pure.

use crate::config::Settings;
use crate::host::Role;
use serde::Serialize;

/// One listening port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listen {
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The address bound: `0.0.0.0` for every interface, `127.0.0.1` for this host only.
    pub address: String,
    /// What answers there.
    pub what: &'static str,
    /// Who should reach it: `nodes` (the chain's other hosts), `load balancer`, or `this host`.
    pub from: &'static str,
}

fn listen(
    port: u16,
    protocol: &'static str,
    address: &str,
    what: &'static str,
    from: &'static str,
) -> Listen {
    Listen {
        port,
        protocol,
        address: address.to_owned(),
        what,
        from,
    }
}

/// Every port the role's children and the agent listen on.
pub fn listens(settings: &Settings) -> Vec<Listen> {
    let p = &settings.ports;
    let mut out = Vec::new();
    if settings.role.runs_geth() {
        out.push(listen(p.p2p, "tcp", "0.0.0.0", "geth p2p", "nodes"));
        out.push(listen(p.p2p, "udp", "0.0.0.0", "geth discovery", "nodes"));
        // geth 1.13 always binds its Engine API, on loopback (unused by Clique).
        out.push(listen(
            p.authrpc,
            "tcp",
            "127.0.0.1",
            "geth Engine API",
            "this host",
        ));
    }
    match settings.role {
        Role::Rpc => out.push(listen(
            p.http,
            "tcp",
            "0.0.0.0",
            "geth JSON-RPC",
            "load balancer",
        )),
        Role::Bootnode => out.push(listen(
            p.bootnode,
            "udp",
            "0.0.0.0",
            "bootnode discovery",
            "nodes",
        )),
        Role::Ethstats => out.push(listen(
            p.ethstats,
            "tcp",
            "0.0.0.0",
            "ethstats (nodes report, people watch)",
            "nodes and load balancer",
        )),
        Role::Sealer => {}
    }
    if let Some(addr) = settings.health.listen {
        let from = match addr.ip().is_loopback() {
            true => "this host",
            false => "load balancer",
        };
        out.push(Listen {
            port: addr.port(),
            protocol: "tcp",
            address: addr.ip().to_string(),
            what: "node-agent health endpoint (/ready, /live)",
            from,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::tests::settings;
    use super::*;

    fn ports(role: &str) -> Vec<(u16, &'static str, &'static str)> {
        let (_, s) = settings(role, |_| {});
        listens(&s)
            .iter()
            .map(|l| (l.port, l.protocol, l.from))
            .collect()
    }

    #[test]
    fn each_role_lists_what_it_listens_on_and_who_should_reach_it() {
        assert_eq!(
            ports("bootnode"),
            [(30301, "udp", "nodes"), (8080, "tcp", "this host")]
        );
        assert_eq!(
            ports("ethstats"),
            [
                (3000, "tcp", "nodes and load balancer"),
                (8080, "tcp", "load balancer")
            ]
        );
        assert_eq!(
            ports("sealer"),
            [
                (30303, "tcp", "nodes"),
                (30303, "udp", "nodes"),
                (8551, "tcp", "this host"),
                (8080, "tcp", "this host")
            ]
        );
        let (_, mut s) = settings("rpc", |_| {});
        s.health.listen = None;
        assert!(!listens(&s).iter().any(|l| l.port == 8080));
    }
}
