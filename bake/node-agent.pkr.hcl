# Packer template for a node-agent AMI: Debian 12 with the static node-agent, geth + bootnode and the ethstats
# server at the versions pinned in resources/versions.toml (geth checked by sha256 and by its signature,
# ethstats by commit: bake/provision.sh), installed by `node-agent install` (the same step the tests run)
# and the unit enabled. One AMI serves every role: the role comes from the instance's tags.
#
#   bake/build -var genesis=path/to/your-genesis.json          (checks the pins, builds, then packer build)
#   packer validate -var genesis=resources/genesis.json bake/   (offline)
#   bake/build -var genesis=... -var cloud_init=false           (an image without cloud-init: node-agent
#                                                                reads its configuration from user-data)
#
# Stays valid for Debian's packer 1.6.x: no `packer { required_plugins }` block (amazon-ebs is built into
# packer before 1.8; newer packer needs `packer plugins install github.com/hashicorp/amazon` once).

variable "region" {
  type        = string
  default     = "eu-central-1"
  description = "AWS region the AMI is built in (and registered in)."
}

variable "instance_type" {
  type        = string
  default     = "t3.micro"
  description = "Instance type of the temporary builder instance."
}

variable "genesis" {
  type        = string
  description = "Your chain's genesis.json (resources/genesis.json has the public dev signer: never for a real chain)."
}

variable "binary" {
  type        = string
  default     = ""
  description = "The static node-agent binary; empty means target/x86_64-unknown-linux-gnu/release/node-agent."
}

variable "config" {
  type        = string
  default     = ""
  description = "Fleet configuration baked as /etc/node-agent/config.toml; empty means resources/config.example.toml (the defaults)."
}

variable "base_ami_name" {
  type        = string
  default     = "debian-12-amd64-*"
  description = "Name pattern of the base image (Debian's official AMIs)."
}

variable "base_ami_owner" {
  type        = string
  default     = "136693071363"
  description = "Owner of the base image (136693071363 is Debian)."
}

variable "cloud_init" {
  type        = bool
  default     = true
  description = "false: bake an image without cloud-init (purged with what only it needed; the instance's SSH host keys made at its first boot). node-agent reads its configuration from user-data itself."
}

variable "ssh_username" {
  type    = string
  default = "admin"
}

variable "ami_name_prefix" {
  type    = string
  default = "node-agent"
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet for the builder instance; empty means the default VPC."
}

locals {
  binary  = var.binary != "" ? var.binary : "${path.root}/../target/x86_64-unknown-linux-gnu/release/node-agent"
  config  = var.config != "" ? var.config : "${path.root}/../resources/config.example.toml"
  stamp   = regex_replace(timestamp(), "[- TZ:]", "")
  staging = "/tmp/node-agent-bake"
}

source "amazon-ebs" "node_agent" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = var.ssh_username
  ami_name      = "${var.ami_name_prefix}-${local.stamp}"
  # Packer's temporary key leaves the image's authorized_keys: with cloud-init, an instance gets its key
  # pair's key at boot; without it, the image has no key for anyone.
  ssh_clear_authorized_keys = true

  source_ami_filter {
    filters = {
      name                = var.base_ami_name
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = [var.base_ami_owner]
    most_recent = true
  }

  # No metadata_options here: packer 1.6 does not know the block. The hosts launched from the image get
  # IMDSv2-only, hop limit 1 and instance tags from their launch template (README "Launch").

  tags = {
    Name       = "${var.ami_name_prefix}-${local.stamp}"
    node-agent = "baked by bake/node-agent.pkr.hcl; versions: node-agent version"
    cloud-init = var.cloud_init ? "yes" : "no"
  }
}

build {
  sources = ["source.amazon-ebs.node_agent"]

  provisioner "shell" {
    inline = ["mkdir -p ${local.staging}"]
  }

  provisioner "file" {
    source      = local.binary
    destination = "${local.staging}/node-agent"
  }

  provisioner "file" {
    source      = var.genesis
    destination = "${local.staging}/genesis.json"
  }

  provisioner "file" {
    source      = local.config
    destination = "${local.staging}/config.toml"
  }

  # The geth Linux builder's public key (geth.signing_key in resources/versions.toml): provision.sh checks
  # the geth archive's signature against it, and its fingerprint against the pin.
  provisioner "file" {
    source      = "${path.root}/../resources/geth-linux-builder.asc"
    destination = "${local.staging}/geth-linux-builder.asc"
  }

  provisioner "shell" {
    script           = "${path.root}/provision.sh"
    environment_vars = ["STAGING=${local.staging}", "CLOUD_INIT=${var.cloud_init}"]
    execute_command  = "sudo env {{ .Vars }} sh -eu '{{ .Path }}'"
  }
}
