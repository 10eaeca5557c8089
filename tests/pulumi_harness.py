"""Run Pulumi programs under ``pulumi.runtime.set_mocks`` and record what they register.

No Pulumi CLI or provider plugin runs here: the mock monitor stands in for the engine, so
these tests check the inputs our code gives to AWS resources, not what AWS would do.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import itertools
import json
import runpy
import shlex
import tarfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs

from cmc_relay.userdata.render import POINTER_KEY

STACK_PROGRAM = Path(__file__).resolve().parents[1] / "__main__.py"
ACCOUNT = "123456789012"
REGION = "ap-northeast-1"
CREATED_SECRET_ARN = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:relay-credentials-AbCdEf"
LOOKED_UP_AMI = "ami-0aaaaaaaaaaaaaaaa"


def kms_key_id(name: str) -> str:
    """The key id of the aws.kms.Key of that name: a UUID, as AWS gives (ARN checks want it)."""
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, name))


KMS_KEY_ID = kms_key_id("relay")  # of an aws.kms.Key named relay
NEWER_AMI = "ami-0bbbbbbbbbbbbbbbb"  # published after LOOKED_UP_AMI
HOSTED_ZONES = {"Z0123456789TEAMZONE": "team.example"}  # the user's zones: id -> domain
PRIVATE_ZONE_ID = "Z0PRIVATE0RELAY0ZONE"  # what Route 53 gives the zone the stack creates
BALANCER_ZONE_ID = "Z31USIVHYNEOWT"  # Route 53 zone of ap-northeast-1's Network Load Balancers
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
LOCAL_COMMAND = "command:local:Command"
# What a passing verifier prints; the mocks give it as every verification command's stdout.
VERIFIER_REPORT = '{"ok": true, "checks": [{"name": "postfix", "ok": true, "detail": "active"}]}'
# How the engine marks a secret value on the wire (pulumi.runtime.rpc's signature constants).
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


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
    ignore_changes: list[str] = field(default_factory=list)
    wire_inputs: Any = None  # the inputs as sent (a protobuf Struct), for a later run's state
    # Input name -> URNs its value came from: the engine replaces a dependent whose
    # replace-forcing input comes from a resource deleted before its replacement.
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)  # the names (or URNs) it was known by


@dataclass
class Recorder(pulumi.runtime.Mocks):
    """Mocks that answer like AWS would for the calls our programs make, and record them."""

    resources: list[Registered] = field(default_factory=list)
    calls: list[MockCallArgs] = field(default_factory=list)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by URN
    answered: dict[str, dict[str, Any]] = field(default_factory=dict)  # new_resource's, by name
    stack_outputs: dict[str, Any] = field(default_factory=dict)  # what pulumi.export got
    created: Counter[str] = field(default_factory=Counter)  # by type, to number addresses
    latest_ami: str = LOOKED_UP_AMI  # what the image lookup finds
    # The previous run's registrations, standing for the stack's state: its inputs are what
    # the engine keeps for an ignore_changes property of a resource that already exists.
    state: Recorder | None = None

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
                "zoneId": BALANCER_ZONE_ID,
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
            "aws:kms/key:Key": {
                "arn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{kms_key_id(args.name)}"
            },
            "aws:iam/role:Role": {"arn": f"arn:aws:iam::{ACCOUNT}:role/{args.name}"},
            "aws:ec2/vpc:Vpc": {"cidrBlock": args.inputs.get("cidrBlock")},
            "aws:route53/zone:Zone": {"zoneId": PRIVATE_ZONE_ID},
            "command:local:Command": {"stdout": VERIFIER_REPORT},
            "command:remote:Command": {"stdout": VERIFIER_REPORT},
        }
        provided = computed.get(args.typ, {})
        previous = self.state.answered.get(args.name) if self.state else None
        if previous is not None:  # as the engine does: what the provider made stays as made
            provided = {key: previous.get(key, value) for key, value in provided.items()}
        outputs.update(provided)
        if args.typ == "aws:s3/bucket:Bucket":  # S3's auto-naming; a bucket's id is its name
            outputs["bucket"] = args.inputs.get("bucketPrefix", f"{args.name}-") + "0a1b2c3"
            outputs["arn"] = f"arn:aws:s3:::{outputs['bucket']}"
            return outputs["bucket"], outputs
        if args.typ == "aws:s3/bucketObjectv2:BucketObjectv2":
            outputs["arn"] = f"arn:aws:s3:::{args.inputs['bucket']}/{args.inputs['key']}"
        if args.typ.startswith("aws:iam/"):
            outputs.setdefault("name", f"{args.name}-7f3a2c1")  # Pulumi's auto-naming
        self.answered[args.name] = outputs
        return f"{args.name}-id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        self.calls.append(args)
        token, inputs = args.token, args.args
        if token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "id": "aws"}, []
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            arn = f"arn:aws:iam::{ACCOUNT}:user/deployer"
            return {"accountId": ACCOUNT, "arn": arn, "userId": "AIDA", "id": ACCOUNT}, []
        if token == "aws:index/getRegion:getRegion":
            return {"region": REGION, "name": REGION, "id": REGION}, []
        if token == "aws:ec2/getAmi:getAmi":
            return {"id": self.latest_ami, "architecture": "x86_64"}, []
        if token == "aws:route53/getZone:getZone":
            zone_id = inputs["zoneId"]
            return {"id": zone_id, "zoneId": zone_id, "name": HOSTED_ZONES[zone_id]}, []
        if token == "aws:ec2/getVpc:getVpc":
            vpc = DEFAULT_VPC if inputs.get("default") else VPCS[inputs["id"]]
            return {"id": vpc["id"], "cidrBlock": vpc["cidr_block"]}, []
        if token == "aws:ec2/getSubnets:getSubnets":
            ids = [s for s, subnet in SUBNETS.items() if subnet["vpc_id"] == "vpc-default"]
            return {"ids": ids, "id": "subnets"}, []
        if token == "aws:ec2/getSubnet:getSubnet":
            # A subnet a test names without describing it: in the team's VPC, zone a.
            unlisted = {"id": inputs["id"], "vpc_id": "vpc-team", "zone": f"{REGION}a"}
            subnet = SUBNETS.get(inputs["id"], unlisted)
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

    def in_state(self, type_token: str, name: str) -> Registered | None:
        """The resource of this type and name in the state (the previous run), if any."""
        if self.state is None:
            return None
        found = [r for r in self.state.resources if (r.type, r.name) == (type_token, name)]
        return found[0] if found else None


def host_commands(recorder: Recorder) -> list[Registered]:
    """The local commands that act on hosts (verification, drain): all but the image pin
    (``<name>-image-...``), which only echoes an image id."""
    return [r for r in recorder.of_type(LOCAL_COMMAND) if "-image-" not in r.name]


def apply_ignore_changes(
    inputs: Mapping[str, Any], old_inputs: Mapping[str, Any], ignored: Iterable[str]
) -> dict[str, Any]:
    """The inputs the engine goes on with for a resource already in the state: each ignored
    top-level property takes its old value, or is dropped if it had none (Pulumi's
    processIgnoreChanges; the old value is kept for a replacement too)."""
    kept = dict(inputs)
    for key in ignored:
        assert "." not in key and "[" not in key, f"property paths are not modelled: {key}"
        if key in old_inputs:
            kept[key] = old_inputs[key]
        else:
            kept.pop(key, None)
    return kept


class RecordingMonitor(MockMonitor):
    """Also records each registration's parent and dependencies, which mocks do not see."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder)
        self.recorder = recorder

    def RegisterResource(self, request: Any) -> Any:
        old = self.recorder.in_state(request.type, request.name)
        if old is not None and request.ignoreChanges:
            # As the engine does before it diffs, creates or replaces: the mocks (and so the
            # resource's outputs) see the inputs with the old state's ignored values.
            kept = apply_ignore_changes(
                request.object.fields, old.wire_inputs.fields, request.ignoreChanges
            )
            processed = type(request.object)()
            for key, value in kept.items():
                processed.fields[key].CopyFrom(value)
            request.object.CopyFrom(processed)
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
                    ignore_changes=list(request.ignoreChanges),
                    wire_inputs=_copy_struct(request.object),
                    property_dependencies={
                        name: list(deps.urns) for name, deps in request.propertyDependencies.items()
                    },
                    aliases=[alias.spec.name or alias.urn for alias in request.aliases],
                )
            )
        return response

    def RegisterResourceOutputs(self, request: Any) -> Any:
        self.recorder.outputs[request.urn] = pulumi.runtime.rpc.deserialize_properties(
            request.outputs, keep_unknowns=True
        )
        return super().RegisterResourceOutputs(request)


def _copy_struct(struct: Any) -> Any:
    copy = type(struct)()
    copy.CopyFrom(struct)
    return copy


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


def stored_bundles(recorder: Recorder) -> list[Registered]:
    """The bundles' S3 objects (the other objects are their pointers)."""
    objects = recorder.of_type(BUNDLE_OBJECT)
    return [stored for stored in objects if stored.inputs["key"] != POINTER_KEY]


def stored_bundle(recorder: Recorder) -> Registered:
    """The one bundle's S3 object."""
    (found,) = stored_bundles(recorder)
    return found


def bundle_of(recorder: Recorder) -> dict[str, str]:
    """The files of the bundle the component stores in S3, by absolute path."""
    data = base64.b64decode(stored_bundle(recorder).inputs["contentBase64"])
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


def payload_of(recorder: Recorder, instance: Registered) -> str:
    """Everything a host gets, as text to search: its user data and the bundle's files."""
    return user_data_of(instance) + "".join(bundle_of(recorder).values())


def driver_argv(command: str) -> list[str]:
    """What a deployer-side command (``verification.deployer_python``) runs after the
    interpreter it finds: ``["-m", module, *arguments]``."""
    words = shlex.shlex(command.split('exec "$py" ', 1)[1], posix=True, punctuation_chars=";")
    words.whitespace_split = True
    return list(itertools.takewhile(lambda word: word != ";", words))


def is_secret(value: Any) -> bool:
    """A recorded property value the engine marks secret."""
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


def revealed(value: Any) -> Any:
    """A recorded property value with the engine's secret wrappers removed."""
    if is_secret(value):
        return revealed(value["value"])
    if isinstance(value, dict):
        return {k: revealed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [revealed(v) for v in value]
    return value
