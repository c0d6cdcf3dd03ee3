"""deploy/terraform against node-agent's own output, so that the two cannot drift: the ports and security
group rules against `node-agent check --json` per role, the IAM documents against `node-agent iam-policy`,
the tags and the user-data line against the docs, the health check against the endpoint's defaults, the
log groups, retention and secret names against the built-in configuration (resources/config.example.toml,
which a test of the agent keeps equal to its defaults), the alarms against docs/metrics.md's table, the
metric names against agent/src/status/metrics.rs.

Run by tests/deploy/run (which builds node-agent and provides python-hcl2); NODE_AGENT_BIN names the binary.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

import hcl2

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "deploy" / "terraform"
MODULE = TF / "modules" / "node-agent"
sys.path.insert(0, str(TF))
import node_agent_tf as nat  # noqa: E402

AGENT = os.environ.get("NODE_AGENT_BIN") or nat.default_agent()
DEFAULTS = tomllib.loads((ROOT / "resources" / "config.example.toml").read_text())
ROLES = nat.ROLES
GETH_ROLES = ["sealer", "rpc"]

# Values for the environments' ids, other than the sentinels the templates were generated with.
ACCOUNT = "210987654321"
FS = "fs-0fedcba987654321f"
APS = {"sealer": "fsap-0aaaaaaaaaaaaaaa1", "bootnode": "fsap-0bbbbbbbbbbbbbbb2", "ethstats": "fsap-0ccccccccccccccc3"}
BACKUPS_AP = "fsap-0ddddddddddddddd4"


def load(path):
    with open(path) as f:
        return hcl2.load(f)


def one(v):
    """python-hcl2 wraps attribute values and blocks in lists."""
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def module_blocks(kind):
    """{type: {name: body}} of `resource`/`data`, or a merged dict of `locals`/`variable`, over the module."""
    out = {}
    for f in sorted(MODULE.glob("*.tf")):
        for block in load(f).get(kind, []):
            if kind in ("resource", "data"):
                for typ, named in block.items():
                    out.setdefault(typ, {}).update(named)
            elif kind == "locals":
                out.update({k: one(v) for k, v in block.items()})
            else:
                out.update(block)
    return out


RESOURCES = module_blocks("resource")
LOCALS = module_blocks("locals")
VARIABLES = module_blocks("variable")


def default(name):
    return one(VARIABLES[name]["default"])


def port(ref):
    """`${local.ports.NAME}` (or tostring of it) -> the number in local.ports."""
    m = re.fullmatch(r"\$\{(?:tostring\()?local\.ports\.(\w+)\)?\}", str(ref))
    return int(LOCALS["ports"][m.group(1)]) if m else int(ref)


def efs_client_roles():
    """local.efs_client_roles, evaluated: the roles (local.roles' order) in efs_roles or backup_roles."""
    expr = "${[for r in local.roles : r if contains(concat(local.efs_roles,local.backup_roles),r)]}"
    if LOCALS["efs_client_roles"] != expr:
        raise AssertionError(f"local.efs_client_roles changed: {LOCALS['efs_client_roles']} (evaluate it here too)")
    return [r for r in LOCALS["roles"] if r in LOCALS["efs_roles"] + LOCALS["backup_roles"]]


def environments():
    """{environment: tfvars} of the example roots."""
    out = {}
    for root in sorted((TF / "environments").iterdir()):
        tfvars = {k: one(v) for k, v in load(root / "terraform.tfvars").items()}
        out[tfvars["environment"]] = tfvars
    return out


class Agent:
    """node-agent's plan for each role, with the config the module's user-data writes."""

    def __init__(self):
        self.work = Path(tempfile.mkdtemp(prefix="tf-consistency-"))
        self.plans, self.configs = {}, {}

    def config(self, role, environment):
        key = (role, environment)
        if key not in self.configs:
            self.configs[key] = nat.write_config(self.work, role, environment, FS, self.kms(environment), BACKUPS_AP)
        return self.configs[key]

    def kms(self, environment):
        return f"arn:aws:kms:{environments()[environment]['region']}:{ACCOUNT}:key/11111111-2222-4333-8444-555555555555"

    def plan(self, role, environment):
        """`check --json --local` with the fixture secrets copied under this environment's names."""
        key = (role, environment)
        if key not in self.plans:
            secrets = self.work / "secrets"
            if not (secrets / environment).exists():
                shutil.copytree(ROOT / "tests" / "fixtures" / "secrets" / "dev", secrets / environment)
            config = self.work / f"check-{environment}-{role}.toml"
            text = self.config(role, environment).read_text()
            config.write_text(text.replace("[secrets]\n", f'[secrets]\nlocal_dir = "{secrets}"\n', 1))
            out = subprocess.run([AGENT, "check", "--json", "--local", "--role", role, "--environment", environment,
                                  "--config", str(config)], capture_output=True, text=True)
            if out.returncode != 0:
                raise AssertionError(f"node-agent check refused the user-data config of {environment}/{role}: {out.stderr}")
            self.plans[key] = json.loads(out.stdout)
        return self.plans[key]

    def policy(self, role, environment, fs_policy=False):
        region = environments()[environment]["region"]
        if fs_policy:
            return nat.file_system_policy(AGENT, self.work, environment, region, ACCOUNT, FS, APS, BACKUPS_AP,
                                          self.kms(environment))
        return nat.identity_policy(AGENT, self.work, role, environment, region, ACCOUNT, FS,
                                   {role: APS[role]} if role in APS else {}, BACKUPS_AP, self.kms(environment))


AGENT_OUT = None


def setUpModule():
    global AGENT_OUT
    if not Path(AGENT).exists():
        raise unittest.SkipTest(f"no node-agent binary at {AGENT}: run tests/deploy/run, which builds it")
    AGENT_OUT = Agent()


def tearDownModule():
    if AGENT_OUT:
        shutil.rmtree(AGENT_OUT.work, ignore_errors=True)


LOOPBACK = ("127.0.0.1", "::1", "localhost")
FROM = {"nodes", "load balancer", "nodes and load balancer", "this host"}


def listens(plan):
    """{(protocol, port): listen} of `check --json`'s listens: every port the host listens on, and who reaches it."""
    out = {}
    for l in plan["listens"]:
        key = (l["protocol"], l["port"])
        assert key not in out, f"{key} listed twice: {plan['listens']}"
        assert l["from"] in FROM, f"a `from` this test does not know: {l}"
        # Reachable from elsewhere means bound beyond loopback, and the other way round.
        assert (l["from"] == "this host") == (l["address"] in LOOPBACK), l
        out[key] = l
    return out


def reachable(plan):
    """{(protocol, port)} other hosts reach: the ports the role's security group must open."""
    return {k for k, l in listens(plan).items() if l["from"] != "this host"}


def find(plan, what):
    """The one listen whose `what` starts with this (e.g. "geth p2p")."""
    (l,) = [l for l in plan["listens"] if l["what"].startswith(what)]
    return l


def ingress():
    return [{k: (port(v) if k == "port" else v) for k, v in r.items()} for r in one(LOCALS["ingress"])]


def ingress_cidr():
    return [{k: (port(v) if k == "port" else v) for k, v in r.items()} for r in one(LOCALS["ingress_cidr"])]


class SecurityGroups(unittest.TestCase):
    def test_each_role_opens_exactly_the_ports_check_lists(self):
        for role in ROLES:
            plan = AGENT_OUT.plan(role, "production")
            want = reachable(plan)
            have = {(r["protocol"], r["port"]) for r in ingress() if r["sg"] == role}
            self.assertEqual(have, want, f"{role}: security group ports vs node-agent check --json's listens")
            outside = {(r["protocol"], r["port"]) for r in ingress_cidr() if r["sg"] == role}
            self.assertLessEqual(outside, want, f"{role}: a port opened to CIDRs that node-agent does not listen on")

    def test_who_may_reach_each_port(self):
        """listens' `from`: `load balancer` only from the ALB's group, `nodes` only between the nodes' groups,
        `this host` from nowhere (and never to CIDRs but the bootnode's discovery)."""
        rules = ingress()
        plans = {r: AGENT_OUT.plan(r, "production") for r in ROLES}
        for role, plan in plans.items():
            for (proto, num), l in listens(plan).items():
                peers = {r["peer"] for r in rules if r["sg"] == role and (r["protocol"], r["port"]) == (proto, num)}
                cidrs = [r for r in ingress_cidr() if r["sg"] == role and (r["protocol"], r["port"]) == (proto, num)]
                where = f"{role} {num}/{proto} ({l['what']}, from {l['from']})"
                if l["from"] == "this host":
                    self.assertEqual((peers, cidrs), (set(), []), where)
                elif l["from"] == "load balancer":
                    self.assertEqual(peers, {"alb"}, where)
                    self.assertEqual(cidrs, [], where)
                elif l["from"] == "nodes":
                    self.assertTrue(peers and peers <= set(ROLES), where)
                    if role != "bootnode":  # its discovery, also from bootnode_ingress_cidrs on its Elastic IP
                        self.assertEqual(cidrs, [], where)
                else:  # nodes and load balancer
                    self.assertIn("alb", peers, where)
                    self.assertTrue(peers - {"alb"} and peers - {"alb"} <= set(ROLES), where)
                    self.assertEqual(cidrs, [], where)
        # Which nodes: p2p between every pair of geth nodes (the one sealer not from itself, rpc nodes from
        # each other), discovery also from the bootnode.
        for role in GETH_ROLES:
            for what in ("geth p2p", "geth discovery"):
                l = find(plans[role], what)
                peers = {r["peer"] for r in rules if r["sg"] == role and (r["protocol"], r["port"]) == (l["protocol"], l["port"])}
                want = {p for p in GETH_ROLES if p != role or role == "rpc"} | ({"bootnode"} if l["protocol"] == "udp" else set())
                self.assertEqual(peers, want, f"{role}: who reaches {what} {l['port']}/{l['protocol']}")
        b = find(plans["bootnode"], "bootnode discovery")
        self.assertEqual({r["peer"] for r in rules if r["sg"] == "bootnode" and r["port"] == b["port"]}, set(GETH_ROLES))
        # ethstats: the dashboard from the load balancer, reports from the nodes that report (chain.ethstats).
        e = find(plans["ethstats"], "ethstats")
        self.assertEqual(e["from"], "nodes and load balancer")
        reporters = {r for r in GETH_ROLES if plans[r]["children"][0]["probe"].get("ethstats")}
        self.assertEqual(reporters, set(GETH_ROLES), "the user-data sets chain.ethstats: every geth node reports")
        self.assertEqual({r["peer"] for r in rules if r["sg"] == "ethstats" and r["port"] == e["port"]}, {"alb"} | reporters)
        # local.ports names the same numbers.
        self.assertEqual({k: int(v) for k, v in LOCALS["ports"].items() if k in ("p2p", "http", "bootnode", "ethstats", "health")},
                         {"p2p": find(plans["sealer"], "geth p2p")["port"], "http": find(plans["rpc"], "geth JSON-RPC")["port"],
                          "bootnode": b["port"], "ethstats": e["port"],
                          "health": find(plans["rpc"], "node-agent health")["port"]})

    def test_efs_from_exactly_the_roles_that_mount_it(self):
        mounts = {r: [s for s in AGENT_OUT.policy(r, "production")["Statement"] if s["Sid"] == "MountThisRolesFileSystem"]
                  for r in ROLES}
        mounting = {r for r, s in mounts.items() if s}
        self.assertEqual(mounting, set(efs_client_roles()))
        self.assertEqual(nat.MOUNTING_ROLES, efs_client_roles(), "node_agent_tf.py's roles are the module's")
        self.assertEqual({(r["peer"], r["protocol"], r["port"]) for r in ingress() if r["sg"] == "efs"},
                         {(r, "tcp", 2049) for r in mounting})
        # Through which access points: each data role its own, and the backups' exactly on the roles whose
        # plan exports or seeds (check --json's backup).
        for role, statements in mounts.items():
            (s,) = statements or [{"Condition": {"StringEquals": {"elasticfilesystem:AccessPointArn": []}}}]
            arns = s["Condition"]["StringEquals"]["elasticfilesystem:AccessPointArn"]
            aps = {a.rsplit("/", 1)[1] for a in ([arns] if isinstance(arns, str) else arns)}
            backup = AGENT_OUT.plan(role, "production")["backup"]
            uses_backups = bool(backup and (backup["export"] or backup["seed"]))
            want = ({APS[role]} if role in one(LOCALS["efs_roles"]) else set()) | ({BACKUPS_AP} if uses_backups else set())
            self.assertEqual(aps, want, f"{role}: the access points it may mount through")
            self.assertEqual(uses_backups, role in LOCALS["backup_roles"], f"{role}: local.backup_roles")

    def test_every_node_reaches_the_endpoints_and_nothing_else_leaves(self):
        self.assertEqual({r["peer"] for r in ingress() if r["sg"] == "endpoints"}, set(ROLES))
        # Egress rules are the mirror of the ingress rules between groups, and there are no others.
        egress = RESOURCES["aws_vpc_security_group_egress_rule"]
        self.assertEqual(list(egress), ["between"])
        self.assertEqual(one(egress["between"]["for_each"]), "${local.ingress_by_key}")
        self.assertEqual(one(egress["between"]["security_group_id"]), "${aws_security_group.this[each.value.peer].id}")
        for r in ingress_cidr():
            self.assertIn(r["sg"], ("alb", "bootnode"))

    def test_load_balancer_forwards_to_the_ports_check_lists(self):
        """The ports a role lists as reached by the load balancer are exactly its target group's traffic
        and health check ports."""
        tgs = RESOURCES["aws_lb_target_group"]
        for role in ("rpc", "ethstats"):
            tg = tgs[role]
            lb = {k for k, l in listens(AGENT_OUT.plan(role, "production")).items() if "load balancer" in l["from"]}
            self.assertEqual(lb, {("tcp", port(one(tg["port"]))), ("tcp", port(one(one(tg["health_check"])["port"])))}, role)
        for role in ("sealer", "bootnode"):
            self.assertFalse([l for l in AGENT_OUT.plan(role, "production")["listens"] if "load balancer" in l["from"]], role)
        listeners = RESOURCES["aws_lb_listener"]
        self.assertEqual(one(one(listeners["rpc"]["default_action"])["target_group_arn"]), "${aws_lb_target_group.rpc.arn}")
        self.assertEqual(one(one(listeners["ethstats"]["default_action"])["target_group_arn"]), "${aws_lb_target_group.ethstats.arn}")


class HealthChecks(unittest.TestCase):
    def scaling_table(self):
        rows = {}
        for line in (ROOT / "docs" / "scaling.md").read_text().splitlines():
            m = re.match(r"\| (interval|timeout|healthy threshold|unhealthy threshold|deregistration delay) \| `(\d+)`", line)
            if m:
                rows[m.group(1)] = int(m.group(2))
        return rows

    def test_target_groups_check_ready_on_the_health_port(self):
        docs = self.scaling_table()
        self.assertEqual(len(docs), 5, "docs/scaling.md's target group table changed shape")
        self.assertIn("GET /ready", (ROOT / "docs" / "status.md").read_text())
        for role in ("rpc", "ethstats"):
            tg = RESOURCES["aws_lb_target_group"][role]
            hc = one(tg["health_check"])
            listen = AGENT_OUT.plan(role, "production")["health_listen"]
            self.assertEqual(listen, "0.0.0.0:8080", "the endpoint's default for roles behind a load balancer")
            self.assertEqual(port(one(hc["port"])), int(listen.rsplit(":", 1)[1]))
            self.assertEqual(one(hc["path"]), "/ready")
            self.assertEqual(one(hc["matcher"]), "200")
            self.assertEqual(one(hc["protocol"]), "HTTP")
            self.assertEqual(one(hc["interval"]), docs["interval"])
            self.assertEqual(one(hc["timeout"]), docs["timeout"])
            self.assertEqual(one(hc["healthy_threshold"]), docs["healthy threshold"])
            self.assertEqual(one(hc["unhealthy_threshold"]), docs["unhealthy threshold"])
            # The delay is drain_secs itself, whose default is node-agent's and the docs' delay.
            self.assertEqual(one(tg["deregistration_delay"]), "${var.drain_secs}")
        self.assertEqual(default("drain_secs"), DEFAULTS["health"]["drain_secs"])
        self.assertEqual(default("drain_secs"), docs["deregistration delay"])

    def test_rpc_lifecycle_hook_covers_the_drain_and_the_stop(self):
        asg = RESOURCES["aws_autoscaling_group"]["rpc"]
        hook = one(asg["initial_lifecycle_hook"])
        self.assertEqual(one(hook["lifecycle_transition"]), "autoscaling:EC2_INSTANCE_TERMINATING")
        self.assertEqual(one(hook["default_result"]), "CONTINUE")
        self.assertEqual(one(hook["name"]), "${local.rpc_hook_name}")
        self.assertEqual(one(hook["heartbeat_timeout"]), "${local.rpc_hook_heartbeat_secs}")
        self.assertEqual(LOCALS["rpc_hook_heartbeat_secs"], "${var.drain_secs + var.stop_secs + 30}")
        self.assertEqual(default("stop_secs"), DEFAULTS["timeouts"]["stop_secs"])
        self.assertEqual(default("drain_secs") + default("stop_secs") + 30, 180, "docs/scaling.md: heartbeat_timeout = 180")
        self.assertEqual(one(asg["health_check_type"]), "EC2", "docs/scaling.md: EC2, or ELB with a long grace period")
        self.assertEqual(one(asg["name"]), "${local.rpc_group_name}")
        # The agent completes the hook of the group its config names; iam-policy grants it on that group.
        self.assertEqual(LOCALS["rpc_group_name"], "${var.environment}-rpc")
        self.assertEqual(LOCALS["rpc_hook_name"], "${var.environment}-rpc-terminate")
        for env in environments():
            cfg = tomllib.loads(AGENT_OUT.config("rpc", env).read_text())
            self.assertEqual(cfg["health"], {"drain_secs": 30, "lifecycle_hook": f"{env}-rpc-terminate",
                                             "autoscaling_group": f"{env}-rpc"})
            hook_grant = [s for s in AGENT_OUT.policy("rpc", env)["Statement"] if s["Sid"] == "CompleteThisRolesTerminationHook"]
            self.assertEqual(len(hook_grant), 1)
            self.assertTrue(hook_grant[0]["Resource"].endswith(f":autoScalingGroupName/{env}-rpc"))
            for role in ("sealer", "bootnode", "ethstats"):
                self.assertNotIn("health", tomllib.loads(AGENT_OUT.config(role, env).read_text()),
                                 f"{role} has no lifecycle hook")
        # Tagged as iam-policy's tag condition would want, were the group not named.
        tags = one(one(asg["dynamic"])["tag"]["for_each"])
        self.assertEqual((tags["Role"], tags["Environment"]), ("rpc", "${var.environment}"))


class LogsAndSecrets(unittest.TestCase):
    def test_log_groups_and_retention_are_node_agents(self):
        self.assertEqual(LOCALS["log_group_template"], DEFAULTS["logs"]["group_template"])
        self.assertEqual(default("log_retention_days"), DEFAULTS["logs"]["retention_days"])
        for env in environments():
            for role in ROLES:
                plan = AGENT_OUT.plan(role, env)
                group = LOCALS["log_group_template"].replace("{environment}", env).replace("{role}", role)
                self.assertEqual({c["log"]["group"] for c in plan["children"]} | {plan["agent_log"]["group"]}, {group})
                self.assertEqual(plan["log_retention_days"], default("log_retention_days"))
                # The groups are made here: the agent creates none and sets no retention, and may not.
                self.assertIs(tomllib.loads(AGENT_OUT.config(role, env).read_text())["logs"]["create_group"], False)
                actions = {a for s in AGENT_OUT.policy(role, env)["Statement"]
                           for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
                self.assertEqual(actions & {"logs:CreateLogGroup", "logs:PutRetentionPolicy"}, set(), f"{env}/{role}")
        lg = RESOURCES["aws_cloudwatch_log_group"]["node"]
        self.assertEqual(one(lg["for_each"]), "${local.log_groups}")
        self.assertEqual(one(lg["retention_in_days"]), "${var.log_retention_days}")

    def test_secret_names_are_the_ones_node_agent_reads(self):
        self.assertEqual(LOCALS["secret_name_templates"], DEFAULTS["secrets"]["names"])
        for env in environments():
            read = {s["name"] for role in ROLES for s in AGENT_OUT.plan(role, env)["secrets"]}
            made = {t.replace("{environment}", env) for t in LOCALS["secret_name_templates"].values()}
            self.assertEqual(read, made, f"{env}: secrets made vs secrets the roles read")
        secret = RESOURCES["aws_secretsmanager_secret"]["node"]
        self.assertEqual(one(secret["for_each"]), "${local.secret_names}")
        self.assertNotIn("aws_secretsmanager_secret_version", RESOURCES, "values never go into Terraform state")


class Iam(unittest.TestCase):
    def render(self, name, env, **extra):
        region = environments()[env]["region"]
        variables = {"partition": "aws", "region": region, "account_id": ACCOUNT, "environment": env,
                     "environment_title": nat.title(env), "file_system_id": FS,
                     "kms_key_arn": AGENT_OUT.kms(env), "autoscaling_group": f"{env}-rpc",
                     "backups_access_point_id": BACKUPS_AP, **extra}
        return json.loads(nat.render((MODULE / "policies" / name).read_text(), variables))

    def test_templates_are_iam_policys_output(self):
        for name, text in nat.generated(AGENT).items():
            self.assertEqual((MODULE / "policies" / name).read_text(), text,
                             f"policies/{name} is stale: run python3 deploy/terraform/node_agent_tf.py")

    def test_identity_policies_equal_iam_policy_per_environment(self):
        for env in environments():
            for role in ROLES:
                have = self.render(f"{role}.json.tftpl", env, access_point_id=APS.get(role, ""))
                self.assertEqual(have, AGENT_OUT.policy(role, env), f"{env}/{role}")

    def test_file_system_policy_is_the_roles_parts_merged(self):
        for env in environments():
            have = self.render("file-system.json.tftpl", env, access_point_ids=APS,
                               role_arns={r: nat.role_arn(ACCOUNT, env, r) for r in efs_client_roles()})
            self.assertEqual(have, AGENT_OUT.policy(None, env, fs_policy=True), env)

    def test_module_wires_the_templates(self):
        pol = RESOURCES["aws_iam_role_policy"]["node"]
        self.assertIn('templatefile("${path.module}/policies/${each.key}.json.tftpl"', one(pol["policy"]))
        role = RESOURCES["aws_iam_role"]["node"]
        self.assertEqual(one(role["name"]), "${var.environment}-${each.key}", "nat.role_arn's name")
        fsp = RESOURCES["aws_efs_file_system_policy"]["chain"]
        self.assertIn("policies/file-system.json.tftpl", one(fsp["policy"]))
        self.assertEqual(LOCALS["environment_title"].replace(" ", ""), '${join("",[forwinsplit("-",var.environment):title(w)])}')


class Efs(unittest.TestCase):
    def test_access_points_are_the_roles_directories_owned_by_node_agent(self):
        self.assertEqual(LOCALS["path_template"], DEFAULTS["storage"]["path_template"])
        uid = re.search(r"^u node-agent\s+(\d+):(\d+)", (ROOT / "units" / "sysusers.d" / "node-agent.conf").read_text(), re.M)
        for name in ("role", "backups"):
            ap = RESOURCES["aws_efs_access_point"][name]
            user, rootdir = one(ap["posix_user"]), one(ap["root_directory"])
            info = one(rootdir["creation_info"])
            self.assertEqual((one(user["uid"]), one(user["gid"])), (int(uid.group(1)), int(uid.group(2))))
            self.assertEqual((one(info["owner_uid"]), one(info["owner_gid"]), one(info["permissions"])),
                             (int(uid.group(1)), int(uid.group(2)), "0750"))
        self.assertEqual(one(one(RESOURCES["aws_efs_access_point"]["backups"]["root_directory"])["path"]),
                         DEFAULTS["backup"]["path_template"].replace("{environment}", "${var.environment}"))
        fs = RESOURCES["aws_efs_file_system"]["chain"]
        self.assertTrue(one(fs["encrypted"]))
        self.assertEqual(one(RESOURCES["aws_backup_selection"]["chain"]["resources"]), ["${aws_efs_file_system.chain.arn}"])

    def test_backups_export_on_rpc_and_seed_new_rpc_nodes(self):
        self.assertEqual(DEFAULTS["backup"]["role"], "rpc")
        for env in environments():
            for role in ROLES:
                cfg = tomllib.loads(AGENT_OUT.config(role, env).read_text())
                self.assertEqual(cfg["backup"], {"efs_access_point_id": BACKUPS_AP}, f"{env}/{role}: the backups' access point")
                backup = AGENT_OUT.plan(role, env)["backup"]
                if role == "rpc":
                    self.assertIsNotNone(backup["export"], "rpc exports (backup.role)")
                    self.assertIs(backup["seed"], True, "a scaled-out rpc node seeds from the backups")
                else:  # the sealer keeps its chain on EFS across replacements, and stays out of the backups
                    self.assertTrue(backup is None or (backup["export"] is None and backup["seed"] is False), f"{role}: {backup}")
        # Copies of the backups are kept as long as the AWS Backup plan says; node-agent keeps every segment.
        rule = one(RESOURCES["aws_backup_plan"]["chain"]["rule"])
        self.assertEqual(one(one(rule["lifecycle"])["delete_after"]), "${var.backup_retention_days}")
        self.assertIn("backup_retention_days", VARIABLES)


class LaunchTemplates(unittest.TestCase):
    def test_metadata_options(self):
        lt = RESOURCES["aws_launch_template"]["node"]
        md = one(lt["metadata_options"])
        self.assertEqual({k: one(v) for k, v in md.items() if not k.startswith("__")},
                         {"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1,
                          "instance_metadata_tags": "enabled"})

    def test_instance_tags_are_the_ones_node_agent_reads(self):
        docs = (ROOT / "docs" / "configuration.md").read_text()
        documented = set(re.findall(r"^\| `(\w+)` \| (?:yes|no) \|", docs, re.M))
        self.assertEqual(documented, {"Role", "Environment", "EfsFileSystemId", "EfsAccessPointId"})
        expr = LOCALS["instance_tags"]
        for tag in documented:
            self.assertRegex(expr, rf"'{tag}': ", f"the launch templates' instance tags lack {tag}")
        self.assertIn("'Role': '${r}'", expr)
        self.assertIn("'Environment': '${var.environment}'", expr)
        # Instance metadata exposes tags only when every key is letters, digits and + - = . , _ : @.
        keys = set(re.findall(r"'([^']+)': ", expr)) | set(LOCALS["tags"])
        for k in keys:
            self.assertRegex(k, r"^[A-Za-z0-9+\-=.,_:@]+$", f"tag key {k} breaks instance metadata tags")
        spec = [one(t) for t in RESOURCES["aws_launch_template"]["node"]["tag_specifications"]]
        self.assertIn({"resource_type": "instance", "tags": "${local.instance_tags[each.key]}"},
                      [{k: one(v) for k, v in s.items() if not k.startswith("__")} for s in spec])

    def test_user_data_is_the_docs_one_liner(self):
        docs = (ROOT / "docs" / "install-and-bake.md").read_text()
        block = re.search(r"```sh\n(#!/bin/sh\nprintf '.*' > /etc/node-agent/config\.toml)\n```", docs)
        self.assertIsNotNone(block, "docs/install-and-bake.md's user-data block changed shape")
        docs_config = tomllib.loads(nat.config_of_user_data(block.group(1).replace("<node id>", nat.S_ENODE)))
        for env in environments():
            for role in ROLES:
                cfg = tomllib.loads(AGENT_OUT.config(role, env).read_text())
                # Every key of the docs' line, with this deployment's values.
                self.assertEqual(set(docs_config), set(docs_config) & set(cfg))
                for section, keys in docs_config.items():
                    self.assertLessEqual(set(keys), set(cfg[section]))
                self.assertEqual(cfg["chain"]["bootnodes"], [f"enode://{nat.S_ENODE}@bootnode.chain.internal:30301"])
                self.assertEqual(cfg["chain"]["ethstats"], "ethstats.chain.internal:3000")
                self.assertTrue(cfg["storage"]["efs_utils"], "access points need efs-utils")
                self.assertEqual(cfg["logs"]["retention_days"], default("log_retention_days"))
        lt = RESOURCES["aws_launch_template"]["node"]
        self.assertEqual(one(lt["user_data"]), "${base64encode(local.user_data[each.key])}")
        self.assertEqual(default("private_zone_name"), "chain.internal")
        self.assertEqual(RESOURCES["aws_route53_zone"]["private"]["name"], ["${var.private_zone_name}"])


def metrics_source():
    """{EMF name: (unit, kind)} of agent/src/status/metrics.rs's METRICS, read from the source text (node-agent
    has no command that prints them)."""
    text = (ROOT / "agent" / "src" / "status" / "metrics.rs").read_text()
    m = re.search(r"pub const METRICS: \[Metric; (\d+)\] = \[(.*?)\n\];", text, re.S)
    assert m, "agent/src/status/metrics.rs: no `pub const METRICS: [Metric; N] = [...]` (changed shape?)"
    entries = re.findall(r'm\(\s*"(\w+)",\s*"(\w+)",\s*"\w+",\s*Kind::(\w+),', m.group(2))
    assert len(entries) == int(m.group(1)), f"read {len(entries)} of METRICS' {m.group(1)} entries"
    return {name: (unit, kind) for name, unit, kind in entries}


def alarms_table():
    """docs/metrics.md's alarm table: [{alarm, metric, threshold, for, missing}] as written."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("\n## Alarms\n", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 6 and cells[0] not in ("alarm", "---"):
            rows.append(dict(zip(("alarm", "metric", "threshold", "for", "missing", "why"), cells)))
    assert len(rows) >= 6, f"docs/metrics.md's alarm table changed shape: {rows}"
    return rows


def resource_source(typ, name):
    """The text of `resource "typ" "name" { ... }` in the module: python-hcl2 drops parentheses from
    expressions ((a + 1) * b comes back as a + 1 * b), so arithmetic is read from the source."""
    head = f'resource "{typ}" "{name}" {{'
    for f in sorted(MODULE.glob("*.tf")):
        lines = f.read_text().splitlines()
        if head in lines:
            start = lines.index(head)
            return "\n".join(lines[start:lines.index("}", start) + 1])
    raise AssertionError(f"no {head} in the module")


def evaluate(expr):
    """An arithmetic expression over var.NAME, with the variables' defaults."""
    expr = re.sub(r"var\.(\w+)", lambda m: str(default(m.group(1))), expr)
    assert re.fullmatch(r"[\d\s+*/()-]+", expr), f"not plain arithmetic over variables: {expr}"
    return eval(expr)  # digits, operators and parentheses only (checked above)


def attribute(source, name):
    m = re.search(rf"^\s*{name}\s*=\s*(.+?)\s*(?:#.*)?$", source, re.M)
    return m and m.group(1)


COMPARISONS = {"above": "GreaterThanThreshold", "below": "LessThanThreshold", "at least": "GreaterThanOrEqualToThreshold"}
MISSING = {"breaching": "breaching", "not breaching": "notBreaching"}
UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600}


class Alarms(unittest.TestCase):
    """docs/metrics.md's alarm table, alarm by alarm, against the module: metric, statistic, threshold at the
    variables' defaults (node-agent's defaults), period × evaluation periods, missing data, the roles."""

    def setUp(self):
        self.alarms = RESOURCES.get("aws_cloudwatch_metric_alarm", {})
        self.metrics = metrics_source()

    def expected_threshold(self, row, source):
        """The documented threshold's value, from node-agent's defaults; checks the variables it names."""
        text = row["threshold"]
        expr = attribute(source, "threshold")
        if "Clique periods" in text:
            n, secs = re.fullmatch(r"above (\d+) Clique periods \((\d+) s\)", text).groups()
            genesis = json.loads((ROOT / "resources" / "genesis.json").read_text())["config"]["clique"]["period"]
            self.assertEqual(default("clique_period_secs"), genesis, "clique_period_secs: the genesis' period")
            self.assertEqual(int(n) * genesis, int(secs), f"docs: {text}")
            self.assertEqual(DEFAULTS["health"]["max_head_age_secs"], 0, "node-agent's stall limit: six Clique periods")
            self.assertEqual(expr, f"{n} * var.clique_period_secs")
            return int(secs)
        if "secret_rotation_days" in text:
            self.assertIn("plus a day", text)
            self.assertEqual(expr, "(var.secret_rotation_days + 1) * 86400")
            return (default("secret_rotation_days") + 1) * 86400
        if "backup.interval_secs" in text:
            self.assertRegex(text, r"^above twice `backup\.interval_secs`$")
            self.assertEqual(default("backup_interval_secs"), DEFAULTS["backup"]["interval_secs"])
            self.assertEqual(expr, "2 * var.backup_interval_secs")
            return 2 * DEFAULTS["backup"]["interval_secs"]
        return int(re.fullmatch(r"(?:above|below|at least) (\d+)", text).group(1))

    def test_every_documented_alarm_is_in_the_module(self):
        rows = alarms_table()
        self.assertEqual(set(self.alarms), {r["alarm"].replace(" ", "_") for r in rows},
                         "the module's alarms vs docs/metrics.md's table (named after its `alarm` column)")
        for row in rows:
            name = row["alarm"].replace(" ", "_")
            alarm, source = self.alarms[name], resource_source("aws_cloudwatch_metric_alarm", name)
            with self.subTest(alarm=row["alarm"]):
                m = re.fullmatch(r"(?:(\w+) )?`(\w+)`, (\w+)(?:, (every role|roles with secrets))?", row["metric"])
                self.assertIsNotNone(m, f"docs' metric cell: {row['metric']}")
                role, metric, statistic, scope = m.groups()
                # The metric and statistic: node-agent writes it, and a Sum only of a counter (in EMF the
                # increase since the previous event), Maximum/Minimum only of a gauge.
                self.assertEqual(one(alarm["metric_name"]), metric)
                self.assertIn(metric, self.metrics, "not in agent/src/status/metrics.rs's METRICS")
                self.assertEqual(one(alarm["statistic"]), statistic)
                self.assertEqual(self.metrics[metric][1], "Counter" if statistic == "Sum" else "Gauge", metric)
                # Comparison and threshold, at the defaults.
                comparison = re.match(r"above|below|at least", row["threshold"]).group(0)
                self.assertEqual(one(alarm["comparison_operator"]), COMPARISONS[comparison])
                self.assertEqual(evaluate(attribute(source, "threshold")), self.expected_threshold(row, source))
                # Periods of 60 s, over the documented time; "(N × 60 s)" names the evaluation periods too.
                self.assertEqual(one(alarm["period"]), 60, "docs: the periods are 60 s")
                n, unit = re.match(r"(\d+) (minutes?|hours?)", row["for"]).groups()
                periods = evaluate(attribute(source, "evaluation_periods"))
                self.assertEqual(60 * periods, int(n) * UNITS[unit], f"for {row['for']}")
                explicit = re.search(r"\((\d+) × 60 s\)", row["for"])
                if explicit:
                    self.assertEqual(periods, int(explicit.group(1)))
                # Every period breaching, but for a count (Sum above 0): any in the window.
                if statistic == "Sum":
                    self.assertEqual(one(alarm["datapoints_to_alarm"]), 1)
                else:
                    self.assertNotIn("datapoints_to_alarm", alarm)
                self.assertEqual(one(alarm["treat_missing_data"]), MISSING[row["missing"]])
                # The [Environment, Role] series of the namespace, for the documented roles.
                self.assertEqual(one(alarm["namespace"]), "${var.metrics_namespace}")
                dims = one(alarm["dimensions"])
                self.assertEqual(set(dims), {"Environment", "Role"})
                self.assertEqual(dims["Environment"], "${var.environment}")
                self.assertEqual(set(self.roles(alarm, dims)), self.documented_roles(role, metric, scope))
                # Every alarm to the one topic, both ways.
                self.assertIs(one(alarm["actions_enabled"]), True)
                self.assertEqual(one(alarm["alarm_actions"]), ["${local.alarm_topic_arn}"])
                self.assertEqual(one(alarm["ok_actions"]), ["${local.alarm_topic_arn}"])

    def roles(self, alarm, dims):
        """The roles an alarm (or its for_each) watches."""
        if "for_each" in alarm:
            self.assertEqual(dims["Role"], "${each.key}")
            m = re.fullmatch(r"\$\{toset\(local\.(\w+)\)\}", one(alarm["for_each"]))
            return LOCALS[m.group(1)]
        m = re.fullmatch(r"\$\{local\.(\w+)\}", dims["Role"])
        return [LOCALS[m.group(1)] if m else dims["Role"]]

    def documented_roles(self, role, metric, scope):
        if scope == "every role":
            return set(ROLES)
        if scope == "roles with secrets":  # whose agent holds any secret, as check --json says
            return {r for r in ROLES for env in environments() if AGENT_OUT.plan(r, env)["secrets"]}
        if metric == "BackupAgeSeconds":  # the exporting role: backup.role, and check --json agrees
            self.assertEqual(role, DEFAULTS["backup"]["role"])
            for env in environments():
                exporting = {r for r in ROLES if (AGENT_OUT.plan(r, env)["backup"] or {}).get("export")}
                self.assertEqual(exporting, {role}, env)
        return {role}

    def test_namespace_is_node_agents(self):
        self.assertEqual(default("metrics_namespace"), DEFAULTS["metrics"]["namespace"])
        self.assertIs(DEFAULTS["metrics"]["emf"], True)
        for env in environments():
            for role in ROLES:
                # The user-data's config leaves EMF on, in that namespace.
                target, namespace = AGENT_OUT.plan(role, env)["metrics_log"]
                self.assertEqual(namespace, default("metrics_namespace"), f"{env}/{role}")
                self.assertEqual(target["group"], LOCALS["log_group_template"].replace("{environment}", env).replace("{role}", role))

    def test_documented_metrics_are_node_agents(self):
        docs = (ROOT / "docs" / "metrics.md").read_text()
        table = dict(re.findall(r"^\| `(\w+)` \| (\w+) \| `node_agent_", docs, re.M))
        self.assertEqual(table, {name: unit for name, (unit, _) in self.metrics.items()})

    def test_one_topic_made_here_unless_given(self):
        self.assertEqual(default("alarm_topic_arn"), "")
        self.assertEqual(LOCALS["alarm_topic_arn"], '${var.alarm_topic_arn != "" ? var.alarm_topic_arn : aws_sns_topic.alarms[0].arn}')
        topic = RESOURCES["aws_sns_topic"]["alarms"]
        self.assertEqual(one(topic["count"]), '${var.alarm_topic_arn == "" ? 1 : 0}')
        self.assertEqual(one(topic["kms_master_key_id"]), "${aws_kms_key.chain.arn}")
        policy = RESOURCES["aws_sns_topic_policy"]["alarms"]
        self.assertEqual(one(policy["count"]), one(topic["count"]))
        outputs = {k: v for f in MODULE.glob("*.tf") for block in load(f).get("output", []) for k, v in block.items()}
        self.assertEqual(one(outputs["alarm_topic_arn"]["value"]), "${local.alarm_topic_arn}")
        # CloudWatch may use the key the topic is encrypted with, or no notification is sent.
        kms = (MODULE / "kms.tf").read_text()
        self.assertRegex(kms, r'identifiers = \["cloudwatch\.amazonaws\.com"\]')
        # The only SNS topic: every alarm notifies it (test above), no other.
        self.assertEqual(list(RESOURCES["aws_sns_topic"]), ["alarms"])


class Environments(unittest.TestCase):
    def test_roots_differ_only_in_variables(self):
        roots = sorted(p for p in (TF / "environments").iterdir() if p.is_dir())
        self.assertEqual([p.name for p in roots], ["production", "staging"])
        for name in ("main.tf", "variables.tf"):
            self.assertEqual((roots[0] / name).read_text(), (roots[1] / name).read_text(), name)
        self.assertEqual({p.name for p in roots[0].iterdir()}, {"main.tf", "variables.tf", "terraform.tfvars"})
        self.assertEqual({p.name for p in roots[1].iterdir()}, {"main.tf", "variables.tf", "terraform.tfvars"})
        envs = environments()
        self.assertEqual(set(envs), {"staging", "production"})
        self.assertEqual(set(envs["staging"]), set(envs["production"]))
        variables = {k for block in load(roots[0] / "variables.tf")["variable"] for k in block}
        self.assertLessEqual(set(envs["staging"]), variables)


class Parsing(unittest.TestCase):
    def test_every_tf_file_parses(self):
        files = sorted(TF.rglob("*.tf"))
        self.assertGreater(len(files), 10)
        for f in files:
            with self.subTest(file=str(f.relative_to(ROOT))):
                load(f)



class CheckovSkips(unittest.TestCase):
    def test_every_skip_is_inline_with_a_reason(self):
        skips = 0
        for f in sorted(TF.rglob("*.tf")):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if "checkov:skip" in line:
                    skips += 1
                    m = re.fullmatch(r"\s*# checkov:skip=(CKV2?_AWS_\d+):(.{20,})", line)
                    self.assertIsNotNone(m, f"{f.relative_to(ROOT)}:{n}: a skip needs its check id and a reason")
        self.assertGreater(skips, 0)
        # No skips outside the code: no config file, no --skip-check in the runner.
        self.assertEqual([p for p in ROOT.rglob(".checkov*") if "target" not in p.parts], [])
        self.assertNotIn("--skip-check", (ROOT / "tests" / "deploy" / "run").read_text())


if __name__ == "__main__":
    unittest.main()
