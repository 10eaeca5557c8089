"""A consumer's project, as a user has it: a fresh virtualenv with the built wheel (its
dependencies from the registry), a project with its own ``components`` and ``userdata``
packages, the relay imported from the distribution and built under Pulumi's mocks with other
resources' Outputs as its inputs. Nothing of this checkout is on the consumer's path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.distributions import REPO, Distributions, project_version
from tests.pulumi_harness import strings_in

CONSUMER = REPO / "tests" / "consumer"
RELAY = "cmc-relay:index:RelayHost"


@dataclass(frozen=True)
class Consumer:
    python: Path  # the virtualenv's interpreter
    site_packages: Path
    project: Path  # a copy of tests/consumer, outside the checkout
    elsewhere: Path  # a working directory that is neither


def clean_environment() -> dict[str, str]:
    """This process's environment without what would point Python at the checkout's venv."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}


@pytest.fixture(scope="module")
def consumer(
    distributions: Distributions, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Consumer]:
    work = tmp_path_factory.mktemp("consumer")
    venv = work / "venv"
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet",
         str(distributions.wheel)],
        capture_output=True, text=True, env=clean_environment(),
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    print(
        f"fresh virtualenv with the wheel and its dependencies: {time.monotonic() - started:.1f}s"
    )
    (site_packages,) = (venv / "lib").glob("python3.*/site-packages")
    project = shutil.copytree(
        CONSUMER, work / "project", ignore=shutil.ignore_patterns("__pycache__")
    )
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    yield Consumer(python, site_packages, project, elsewhere)
    shutil.rmtree(venv)  # pulumi-aws alone is hundreds of MB; pytest keeps its last runs


@pytest.fixture(scope="module")
def report(consumer: Consumer) -> dict[str, Any]:
    """What the consumer's program registered under mocks, run from another directory."""
    started = time.monotonic()
    run = subprocess.run(
        [str(consumer.python), str(consumer.project / "run_under_mocks.py")],
        cwd=consumer.elsewhere, capture_output=True, text=True, env=clean_environment(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    loaded: dict[str, Any] = json.loads(run.stdout)
    relay_children = descendants(loaded["resources"], only(loaded["resources"], RELAY)["urn"])
    print(
        f"consumer program under mocks: {len(loaded['resources'])} resources, "
        f"{len(relay_children)} of them the relay's, {time.monotonic() - started:.1f}s"
    )
    return loaded


def only(resources: list[dict[str, Any]], type_token: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["type"] == type_token]
    return found


def descendants(resources: list[dict[str, Any]], urn: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    parents = {urn}
    for resource in resources:  # registered after their parent
        if resource["parent"] in parents:
            found.append(resource)
            parents.add(resource["urn"])
    return found


def flat(value: Any) -> Iterator[str]:
    yield from value if isinstance(value, list) else [value]


def test_the_project_sees_its_own_packages_and_the_relay_from_the_wheel(
    report: dict[str, Any], consumer: Consumer
) -> None:
    modules = {name: Path(path) for name, path in report["modules"].items()}
    assert modules["components"] == consumer.project / "components" / "__init__.py"
    assert modules["userdata.metrics"] == consumer.project / "userdata" / "metrics.py"
    assert report["owner"] == "relay-consumer"
    for name in ("cmc_relay", "cmc_relay.userdata.metrics"):
        assert modules[name].is_relative_to(consumer.site_packages), name
    assert report["version"] == project_version()


def test_the_relay_and_its_children_are_registered(report: dict[str, Any]) -> None:
    resources = report["resources"]
    relay = only(resources, RELAY)
    assert relay["name"] == "mail-relay"
    children = descendants(resources, relay["urn"])
    types = {r["type"] for r in children}
    assert {
        "aws:ec2/instance:Instance", "aws:ec2/securityGroup:SecurityGroup", "aws:ec2/eip:Eip",
        "aws:s3/bucketObjectv2:BucketObjectv2", "command:local:Command",
        "aws:cloudwatch/metricAlarm:MetricAlarm",
    } <= types  # fmt: skip
    # Every resource the relay creates is its descendant, named after it.
    relays = [r for r in resources if r["name"].startswith("mail-relay-")]
    assert relays and all(r in children for r in relays)
    assert report["stack_outputs"] == {
        "smtpEndpoint": "cmc-relay.internal:25",  # the Route 53 name, not the address
        "sendingIps": ["203.0.113.25"],
    }


def test_each_output_input_reaches_the_relays_resources_with_its_dependency(
    report: dict[str, Any],
) -> None:
    """An argument given as another resource's Output arrives, resolved, in the inputs of a
    resource of the relay that depends on that resource: the engine orders them."""
    resources = report["resources"]
    children = descendants(resources, only(resources, RELAY)["urn"])
    others = [r for r in resources if r not in children]
    arguments = report["arguments"]
    assert {"vpc_id", "subnet_id", "allowed_security_group_ids"} <= set(arguments)
    for name, given in arguments.items():
        for value in flat(given):
            sources = {
                r["urn"]
                for r in others
                if value == f"{r['name']}-id" or value in r["outputs"].values()
            }
            assert sources, f"{name}={value} is no other resource's output"
            users = [r for r in children if any(value in s for s in strings_in(r["inputs"]))]
            assert users, f"{name}={value} reaches none of the relay's resources"
            assert any(sources & set(r["dependencies"]) for r in users), name


def test_the_stored_verification_runs_the_packaged_module(report: dict[str, Any]) -> None:
    (verify,) = [r for r in report["resources"] if r["name"] == "mail-relay-verify"]
    assert "-m cmc_relay.components.ssm_verify" in verify["inputs"]["create"]


def test_the_verification_command_runs_from_the_virtualenv_anywhere(consumer: Consumer) -> None:
    run = subprocess.run(
        [str(consumer.python), "-m", "cmc_relay.components.ssm_verify", "--help"],
        cwd=consumer.elsewhere, capture_output=True, text=True, env=clean_environment(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: python -m cmc_relay.components.ssm_verify")
    assert "--run" in run.stdout  # the drain's delete step uses it
