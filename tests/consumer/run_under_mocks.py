"""Run this project's program under Pulumi's mocks and print what it registered, as JSON.

    python run_under_mocks.py          # from any directory, with the interpreter of the project

It needs only what the project installs (``cmc-relay-host`` and its dependencies): no Pulumi CLI,
no provider plugin, nothing from the relay's repository. The mocks answer as AWS would for the
few lookups the relay makes; every resource's id is ``<name>-id``.

Printed: where ``components``, ``userdata.metrics`` and ``cmc_relay`` were imported from, the
relay's version, each registered resource (type, name, parent, dependencies, inputs, id, outputs),
the stack's outputs, and the relay arguments that were Outputs with their resolved values.
"""

from __future__ import annotations

import asyncio
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs

PROJECT = Path(__file__).resolve().parent
REGION = "ap-northeast-1"
ACCOUNT = "123456789012"
VERIFIER_REPORT = '{"ok": true, "checks": [{"name": "postfix", "ok": true, "detail": "active"}]}'


def arn(type_token: str, name: str) -> str:
    """An ARN of the shape AWS gives the resource type."""
    service = type_token.split(":")[1].split("/")[0]
    resource = {
        "secretsmanager": f"secret:{name}-AbCdEf",
        "kms": f"key/{name}",
        "sns": name,
    }.get(service, f"{type_token.split(':')[-1].lower()}/{name}")
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{resource}"


class Mocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, Any]] = {}  # by resource name

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = {**args.inputs, "arn": arn(args.typ, args.name)}
        if args.typ == "aws:ec2/instance:Instance":
            outputs["privateIp"] = "10.50.1.10"
        elif args.typ == "aws:ec2/eip:Eip":
            outputs.update(publicIp="203.0.113.25", allocationId="eipalloc-0abc")
        elif args.typ.startswith("command:"):
            outputs["stdout"] = VERIFIER_REPORT
        self.outputs[args.name] = outputs
        return f"{args.name}-id", outputs

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        answers: dict[str, dict[str, Any]] = {
            "aws:index/getPartition:getPartition": {"partition": "aws", "id": "aws"},
            "aws:index/getRegion:getRegion": {"region": REGION, "name": REGION, "id": REGION},
            "aws:ec2/getAmi:getAmi": {"id": "ami-0aaaaaaaaaaaaaaaa", "architecture": "x86_64"},
            # The relay's queue volume is made in its subnet's zone.
            "aws:ec2/getSubnet:getSubnet": {
                "id": args.args.get("id", ""),
                "availabilityZone": f"{REGION}a",
            },
        }
        if args.token not in answers:
            raise AssertionError(f"unexpected invoke {args.token}")
        return answers[args.token], []


class Monitor(MockMonitor):
    """Records each registration's parent and dependencies, which the mocks do not see."""

    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.registered: list[dict[str, Any]] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        self.registered.append(
            {
                "type": request.type,
                "name": request.name,
                "urn": response.urn,
                "parent": request.parent,
                "dependencies": list(request.dependencies),
                "inputs": pulumi.runtime.rpc.deserialize_properties(request.object),
            }
        )
        return response


def holds_output(value: object) -> bool:
    if isinstance(value, pulumi.Output):
        return True
    return isinstance(value, list | tuple) and any(holds_output(v) for v in value)


def main() -> None:
    # As Pulumi's language host runs a program: its own directory first on the path.
    sys.path.insert(0, str(PROJECT))
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = Mocks()
    monitor = Monitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="relay-consumer", stack="ci", monitor=monitor)
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        namespace = runpy.run_path(str(PROJECT / "__main__.py"), run_name="__main__")
        from_outputs = {k: v for k, v in namespace["ARGS"].items() if holds_output(v)}
        root = pulumi.runtime.settings.get_root_resource()
        return pulumi.Output.all(
            pulumi.Output.from_input(from_outputs).apply(lambda v: resolved.update(arguments=v)),
            pulumi.Output.from_input(getattr(root, "outputs", {})).apply(
                lambda v: resolved.update(stack_outputs=v)
            ),
        )

    program()

    import cmc_relay
    import cmc_relay.userdata.metrics

    modules = {
        name: sys.modules[name].__file__
        for name in ("components", "userdata.metrics", "cmc_relay", "cmc_relay.userdata.metrics")
    }
    for resource in monitor.registered:
        resource["outputs"] = mocks.outputs.get(resource["name"], {})
    report = {
        "modules": modules,
        "owner": sys.modules["components"].OWNER,
        "version": cmc_relay.__version__,
        "resources": monitor.registered,
        **resolved,
    }
    json.dump(report, sys.stdout, indent=1, default=str)


if __name__ == "__main__":
    main()
