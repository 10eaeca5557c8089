"""Run Pulumi programs under ``pulumi.runtime.set_mocks`` and record what they register.

No Pulumi CLI or provider plugin runs here: the mock monitor stands in for the engine, so
these tests check the inputs our code gives to AWS resources, not what AWS would do.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import runpy
import shlex
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs

STACK_PROGRAM = Path(__file__).resolve().parents[1] / "__main__.py"
ACCOUNT = "123456789012"
REGION = "ap-northeast-1"
CREATED_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:relay-credentials-AbCdEf"
LOOKED_UP_AMI = "ami-0aaaaaaaaaaaaaaaa"
KMS_KEY_ID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"  # of every aws.kms.Key created
ELB_ARN = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}"
DEFAULT_VPC = {"id": "vpc-default", "cidr_block": "172.31.0.0/16"}
SUBNETS = {
    "subnet-b": {"id": "subnet-b", "vpc_id": "vpc-default", "zone": f"{REGION}c"},
    "subnet-a": {"id": "subnet-a", "vpc_id": "vpc-default", "zone": f"{REGION}a"},
    "subnet-c": {"id": "subnet-c", "vpc_id": "vpc-default", "zone": f"{REGION}d"},
    "subnet-a2": {"id": "subnet-a2", "vpc_id": "vpc-default", "zone": f"{REGION}a"},
    "subnet-team": {"id": "subnet-team", "vpc_id": "vpc-team", "zone": f"{REGION}a"},
}
VPCS = {"vpc-default": DEFAULT_VPC, "vpc-team": {"id": "vpc-team", "cidr_block": "10.20.0.0/16"}}
BUNDLE_OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"
# What a passing verifier prints; the mocks give it as every verification command's stdout.
VERIFIER_REPORT = '{"ok": true, "checks": [{"name": "postfix", "ok": true, "detail": "active"}]}'


@dataclass
class Registered:
    """One resource registration as the engine would receive it."""

    type: str
    name: str
    inputs: dict[str, Any]
    parent: str
    dependencies: list[str]
    urn: str
    deleted_with: str = ""  # URN of the resource whose deletion removes this one
    create_timeout: str = ""  # the custom create timeout, e.g. "20m"
    delete_before_replace: bool = False


@dataclass
class Recorder(pulumi.runtime.Mocks):
    """Mocks that answer like AWS would for the calls our programs make, and record them."""

    resources: list[Registered] = field(default_factory=list)
    calls: list[MockCallArgs] = field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by URN
    stack_outputs: dict[str, Any] = field(default_factory=dict)  # what pulumi.export got
    created: Counter[str] = field(default_factory=Counter)  # by type, to number addresses

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        n = self.created[args.typ]  # the first of a type gets .10, .25, ... the next .11, .26
        self.created[args.typ] += 1
        computed: dict[str, dict[str, Any]] = {
            "aws:ec2/instance:Instance": {"privateIp": f"10.20.1.{10 + n}", "arn": "arn:instance"},
            "aws:ec2/eip:Eip": {
                "publicIp": f"203.0.113.{25 + n}",
                "allocationId": f"eipalloc-0abc{n or ''}",
            },
            "aws:lb/loadBalancer:LoadBalancer": {
                "arn": f"{ELB_ARN}:loadbalancer/net/{args.name}",
                "arnSuffix": f"net/{args.name}/0123456789abcdef",
                "dnsName": f"internal-{args.name}-0123456789.elb.{REGION}.amazonaws.com",
            },
            "aws:lb/targetGroup:TargetGroup": {
                "arn": f"{ELB_ARN}:targetgroup/{args.name}",
                "arnSuffix": f"targetgroup/{args.name}/fedcba9876543210",
            },
            "aws:cloudwatch/logGroup:LogGroup": {
                "arn": f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{args.inputs.get('name')}"
            },
            "aws:sns/topic:Topic": {"arn": f"arn:aws:sns:{REGION}:{ACCOUNT}:{args.name}-1a2b3c"},
            "aws:secretsmanager/secret:Secret": {"arn": CREATED_SECRET_ARN},
            "aws:iam/role:Role": {"arn": f"arn:aws:iam::{ACCOUNT}:role/{args.name}"},
            "aws:ec2/vpc:Vpc": {"cidrBlock": args.inputs.get("cidrBlock")},
            "aws:kms/key:Key": {"arn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{KMS_KEY_ID}"},
            "command:local:Command": {"stdout": VERIFIER_REPORT},
            "command:remote:Command": {"stdout": VERIFIER_REPORT},
        }
        outputs.update(computed.get(args.typ, {}))
        if args.typ == "aws:s3/bucket:Bucket":  # S3's auto-naming; a bucket's id is its name
            outputs["bucket"] = args.inputs.get("bucketPrefix", f"{args.name}-") + "0a1b2c3"
            outputs["arn"] = f"arn:aws:s3:::{outputs['bucket']}"
            return outputs["bucket"], outputs
        if args.typ == "aws:s3/bucketObjectv2:BucketObjectv2":
            outputs["arn"] = f"arn:aws:s3:::{args.inputs['bucket']}/{args.inputs['key']}"
        if args.typ.startswith("aws:iam/"):
            outputs.setdefault("name", f"{args.name}-7f3a2c1")  # Pulumi's auto-naming
        return f"{args.name}-id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.calls.append(args)
        token, inputs = args.token, args.args
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "id": "aws"}, []
        if token == "aws:index/getRegion:getRegion":
            return {"region": REGION, "name": REGION, "id": REGION}, []
        if token == "aws:ec2/getAmi:getAmi":
            return {"id": LOOKED_UP_AMI, "architecture": "x86_64"}, []
        if token == "aws:ec2/getVpc:getVpc":
            vpc = DEFAULT_VPC if inputs.get("default") else VPCS[inputs["id"]]
            return {"id": vpc["id"], "cidrBlock": vpc["cidr_block"]}, []
        if token == "aws:ec2/getSubnets:getSubnets":
            ids = [s for s, subnet in SUBNETS.items() if subnet["vpc_id"] == "vpc-default"]
            return {"ids": ids, "id": "subnets"}, []
        if token == "aws:ec2/getSubnet:getSubnet":
            subnet = SUBNETS[inputs["id"]]
            return {
                "id": subnet["id"],
                "vpcId": subnet["vpc_id"],
                "availabilityZone": subnet["zone"],
            }, []
        raise AssertionError(f"unexpected invoke {token}")

    def of_type(self, type_token: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_token]

    def one(self, type_token: str) -> Registered:
        (found,) = self.of_type(type_token)
        return found

    def by_name(self, name: str) -> Registered:
        (found,) = [r for r in self.resources if r.name == name]
        return found

    def invoked(self, token: str) -> list[MockCallArgs]:
        return [c for c in self.calls if c.token == token]


class RecordingMonitor(MockMonitor):
    """Also records each registration's parent and dependencies, which mocks do not see."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.recorder = recorder

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.recorder.resources.append(
                Registered(
                    type=request.type,
                    name=request.name,
                    inputs=pulumi.runtime.rpc.deserialize_properties(request.object),
                    parent=request.parent,
                    dependencies=list(request.dependencies),
                    urn=response.urn,
                    deleted_with=request.deletedWith,
                    create_timeout=request.customTimeouts.create,
                    delete_before_replace=request.deleteBeforeReplace,
                )
            )
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:
        self.recorder.outputs[request.urn] = pulumi.runtime.rpc.deserialize_properties(
            request.outputs, keep_unknowns=True
        )
        return super().RegisterResourceOutputs(request)


def run_program(
    program: Callable[[], Any],
    config: dict[str, str] | None = None,
    secret_keys: tuple[str, ...] = (),
    recorder: Recorder | None = None,
) -> Recorder:
    """Run ``program`` on a fresh event loop with fresh mocks; return what it registered.

    ``config`` holds the project's stack config (keys without the ``cmc-relay:`` prefix).
    Raises what the program raises; pass ``recorder`` to inspect what got registered anyway.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    recorder = recorder or Recorder()
    pulumi.runtime.set_all_config(
        {f"cmc-relay:{key}": value for key, value in (config or {}).items()},
        [f"cmc-relay:{key}" for key in secret_keys],
    )
    pulumi.runtime.set_mocks(
        recorder,
        project="cmc-relay",
        stack="test",
        preview=False,
        monitor=RecordingMonitor(recorder),
    )

    def program_and_exports() -> pulumi.Output[None]:
        program()
        # Mocks register the root stack's outputs before the program runs: read them directly.
        root = pulumi.runtime.settings.get_root_resource()
        exports = getattr(root, "outputs", {})
        return pulumi.Output.from_input(exports).apply(recorder.stack_outputs.update)

    try:
        pulumi.runtime.test(program_and_exports)()
    finally:
        loop.close()
        asyncio.set_event_loop(None)
    return recorder


def run_stack(
    config: dict[str, Any], secret_keys: tuple[str, ...] = (), recorder: Recorder | None = None
) -> Recorder:
    """Run the stack program (``__main__.py``) with this stack config, values as ``pulumi config
    set`` stores them (structured ones as JSON)."""
    as_strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    return run_program(
        lambda: runpy.run_path(str(STACK_PROGRAM)), as_strings, secret_keys, recorder
    )


def strings_in(value: Any) -> Iterator[str]:
    """Every string in a (nested) property value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)


def bundle_of(recorder: Recorder) -> dict[str, str]:
    """The files of the bundle the component stores in S3, by absolute path."""
    data = base64.b64decode(recorder.one(BUNDLE_OBJECT).inputs["contentBase64"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {
            f"/{member.name}": tar.extractfile(member).read().decode()  # type: ignore[union-attr]
            for member in tar.getmembers()
        }


def user_data_of(instance: Registered) -> str:
    """The cloud-config an instance boots with, unpacked as cloud-init does."""
    packed = instance.inputs["userDataBase64"]
    assert "userData" not in instance.inputs
    return gzip.decompress(base64.b64decode(packed)).decode()


def driver_argv(command: str) -> list[str]:
    """What a deployer-side command (``verification.deployer_python``) runs after the
    interpreter it finds: ``["-m", module, *arguments]``."""
    run = command.split('exec "$py" ', 1)[1].split(";", 1)[0]
    return shlex.split(run)
