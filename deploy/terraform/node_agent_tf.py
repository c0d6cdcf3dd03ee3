#!/usr/bin/env python3
"""The module's link to node-agent: renders its templates as Terraform would, and regenerates the IAM
policy templates (modules/node-agent/policies/*.json.tftpl) from `node-agent iam-policy`.

    python3 deploy/terraform/node_agent_tf.py [--agent PATH]          # rewrite the policy templates
    python3 deploy/terraform/node_agent_tf.py --check [--agent PATH]  # exit 1 when they are stale

The templates are node-agent's output for sentinel values (an environment, account, region, file system,
access points, key), with each sentinel replaced by the template variable Terraform fills in. tests/deploy
renders them back for real environments and compares with the command's output.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULE = HERE / "modules" / "node-agent"
POLICIES = MODULE / "policies"
USER_DATA = MODULE / "user-data.sh.tftpl"
ROLES = ["sealer", "rpc", "bootnode", "ethstats"]
# Roles that keep their data on EFS, each through an access point of its own (/{environment}/{role}).
EFS_ROLES = ["sealer", "bootnode", "ethstats"]
# Roles that mount the backups' directory (/{environment}/backups, through its access point): rpc exports
# (backup.role, the default) and seeds a new node's empty datadir (storage.seed_from_backup, set for rpc
# only in user-data.sh.tftpl).
BACKUP_ROLES = ["rpc"]
# Every role that mounts the file system, in ROLES' order (the file system policy's order).
MOUNTING_ROLES = [r for r in ROLES if r in EFS_ROLES or r in BACKUP_ROLES]

# Sentinels: values node-agent accepts and that occur nowhere else in its output.
S_ENV = "envsentinel"
S_REGION = "eu-central-1"
S_ACCOUNT = "123456789012"
S_FS = "fs-0123456789abcdef0"
S_AP = {r: f"fsap-0000000000000000{i + 1}" for i, r in enumerate(EFS_ROLES)}
S_AP_BACKUPS = "fsap-0000000000000000b"
S_KMS = f"arn:aws:kms:{S_REGION}:{S_ACCOUNT}:key/00000000-0000-4000-8000-000000000000"
S_ENODE = "9843fd0fa5b2214145b545d3f9c6f12d6e572f2a93ec4c3eb2a42c1c1413418426bfd589f5728e06c07e85de3828607ad1b6acfd5d2f02a727a8f011cf7fdb43"


def role_arn(account, environment, role):
    return f"arn:aws:iam::{account}:role/{environment}-{role}"


def title(environment):
    """locals.environment_title: Terraform's title() of each -separated word, joined."""
    return "".join(w[:1].upper() + w[1:] for w in environment.split("-"))


def render(text, variables):
    """Terraform's templatefile() for what these templates use: ${name}, ${name["key"]} and
    %{ if name == "value" }...%{ endif }. Anything else is an error, so a new construct is noticed."""

    def directive(m):
        name, value, body = m.group(1), m.group(2), m.group(3)
        return body if str(variables[name]) == value else ""

    text = re.sub(r'%\{ if (\w+) == "(\w+)" \}(.*?)%\{ endif \}', directive, text, flags=re.S)

    def interpolate(m):
        value = variables[m.group(1)]
        if m.group(2) is not None:
            value = value[m.group(2)]
        return str(value)

    text = re.sub(r'\$\{(\w+)(?:\["(\w+)"\])?\}', interpolate, text)
    if "${" in text or "%{" in text:
        raise ValueError(f"template construct this renderer does not know: {text}")
    return text


def user_data_vars(role, environment, file_system_id, kms_key_arn, backups_access_point_id, zone="chain.internal",
                   enode=S_ENODE, retention=30, stop_secs=120, drain_secs=30):
    """The variables compute.tf passes to user-data.sh.tftpl (defaults: the module's variable defaults;
    tests/deploy checks that they are)."""
    return {
        "role": role,
        "bootnode_enode_id": enode,
        "bootnode_host": f"bootnode.{zone}",
        "bootnode_port": 30301,
        "ethstats_host": f"ethstats.{zone}",
        "ethstats_port": 3000,
        "file_system_id": file_system_id,
        "backups_access_point_id": backups_access_point_id,
        "kms_key_arn": kms_key_arn,
        "log_retention_days": retention,
        "stop_secs": stop_secs,
        "drain_secs": drain_secs,
        "lifecycle_hook": f"{environment}-rpc-terminate",
        "autoscaling_group": f"{environment}-rpc",
    }


PRINTF = re.compile(r"^printf '(.*)' > /etc/node-agent/config\.toml$")


def config_of_user_data(user_data):
    """The config.toml the user-data's printf line writes."""
    lines = user_data.strip().split("\n")
    m = PRINTF.match(lines[1]) if len(lines) == 2 and lines[0] == "#!/bin/sh" else None
    if not m:
        raise ValueError(f"user-data is not the two lines of docs/install-and-bake.md: {user_data!r}")
    return m.group(1).replace("\\n", "\n")


def write_config(directory, role, environment, file_system_id, kms_key_arn, backups_access_point_id, **kw):
    variables = user_data_vars(role, environment, file_system_id, kms_key_arn, backups_access_point_id, **kw)
    text = config_of_user_data(render(USER_DATA.read_text(), variables))
    path = Path(directory) / f"{environment}-{role}.toml"
    path.write_text(text)
    return path


def iam_policy(agent, config, role, environment, region, account, file_system_id, access_point, fs_policy=False):
    cmd = [agent, "iam-policy", "--config", str(config), "--role", role, "--environment", environment,
           "--region", region, "--account-id", account, "--efs-file-system-id", file_system_id]
    if access_point:
        cmd += ["--efs-access-point-id", access_point]
    if fs_policy:
        cmd += ["--file-system-policy", "--role-arn", role_arn(account, environment, role)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def identity_policy(agent, workdir, role, environment, region, account, fs, aps, backups_ap, kms):
    """aps: {role: its access point} (the roles of EFS_ROLES); backups_ap: the backups' access point."""
    config = write_config(workdir, role, environment, fs, kms, backups_ap)
    return iam_policy(agent, config, role, environment, region, account, fs, aps.get(role))


def file_system_policy(agent, workdir, environment, region, account, fs, aps, backups_ap, kms):
    """The parts of every role that mounts, merged, as docs/secrets-and-iam.md says (the Deny once)."""
    statements = []
    for role in MOUNTING_ROLES:
        config = write_config(workdir, role, environment, fs, kms, backups_ap)
        for s in iam_policy(agent, config, role, environment, region, account, fs, aps.get(role), fs_policy=True)["Statement"]:
            if s not in statements:
                statements.append(s)
    return {"Version": "2012-10-17", "Statement": statements}


def templatize(doc):
    """node-agent's output for the sentinels -> the template, sentinels replaced longest first."""
    text = json.dumps(doc, indent=2) + "\n"
    pairs = [(S_KMS, "${kms_key_arn}")]
    pairs += [(role_arn(S_ACCOUNT, S_ENV, r), '${role_arns["%s"]}' % r) for r in MOUNTING_ROLES]
    pairs += [(ap, '${access_point_ids["%s"]}' % r) for r, ap in S_AP.items()]
    pairs += [(S_AP_BACKUPS, "${backups_access_point_id}")]
    pairs += [(f"{S_ENV}-rpc", "${autoscaling_group}"), (S_FS, "${file_system_id}"),
              ("arn:aws:", "arn:${partition}:"), (S_REGION, "${region}"), (S_ACCOUNT, "${account_id}"),
              (S_ENV, "${environment}"), (title(S_ENV), "${environment_title}")]
    for old, new in pairs:
        text = text.replace(old, new)
    return text


def generated(agent):
    """{file name: text} of every policy template."""
    files = {}
    with tempfile.TemporaryDirectory() as work:
        for role in ROLES:
            # One access point per role: the identity template names it as ${access_point_id}.
            aps = {role: S_AP[role]} if role in EFS_ROLES else {}
            text = templatize(identity_policy(agent, work, role, S_ENV, S_REGION, S_ACCOUNT, S_FS, aps, S_AP_BACKUPS, S_KMS))
            if role in EFS_ROLES:
                text = text.replace('${access_point_ids["%s"]}' % role, "${access_point_id}")
            files[f"{role}.json.tftpl"] = text
        files["file-system.json.tftpl"] = templatize(
            file_system_policy(agent, work, S_ENV, S_REGION, S_ACCOUNT, S_FS, S_AP, S_AP_BACKUPS, S_KMS))
    return files


def default_agent():
    target = os.environ.get("CARGO_TARGET_DIR") or str(HERE.parent.parent / "target")
    return os.environ.get("NODE_AGENT_BIN") or str(Path(target) / "debug" / "node-agent")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agent", default=default_agent(), help="node-agent binary (default: $NODE_AGENT_BIN, else CARGO_TARGET_DIR/debug/node-agent)")
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when stale")
    args = p.parse_args()
    stale = []
    for name, text in generated(args.agent).items():
        path = POLICIES / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"stale policy templates (regenerate with python3 {Path(__file__).relative_to(HERE.parent.parent)}): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
