"""Keeps the bootnode's and the ethstats server's addresses stable across replacements.

Auto Scaling's "EC2 Instance Launch Successful" event for a group of one names the new instance: point
the group's private DNS record (bootnode.ZONE, ethstats.ZONE) at its private address and, for the
bootnode, move the Elastic IP to it. Node configs name these DNS names (chain.bootnodes, chain.ethstats).
"""

import json
import os

import boto3

ec2 = boto3.client("ec2")
route53 = boto3.client("route53")


def handler(event, _context):
    detail = event["detail"]
    group = detail["AutoScalingGroupName"]
    instance_id = detail["EC2InstanceId"]
    records = json.loads(os.environ["RECORDS"])
    addresses = json.loads(os.environ["ELASTIC_IPS"])
    if group not in records:
        return {"ignored": group}
    reservation = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
    private_ip = reservation["Instances"][0]["PrivateIpAddress"]
    route53.change_resource_record_sets(
        HostedZoneId=os.environ["ZONE_ID"],
        ChangeBatch={
            "Comment": f"{group}: {instance_id}",
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": records[group],
                        "Type": "A",
                        "TTL": 30,
                        "ResourceRecords": [{"Value": private_ip}],
                    },
                }
            ],
        },
    )
    if group in addresses:
        ec2.associate_address(
            AllocationId=addresses[group], InstanceId=instance_id, AllowReassociation=True
        )
    return {"group": group, "instance": instance_id, "private_ip": private_ip}
