"""The CloudWatch agent's config in the payload, checked against the agent's published schema.

``tests/data/amazon-cloudwatch-agent.schema.json`` is ``translator/config/schema.json`` of
github.com/aws/amazon-cloudwatch-agent, copied verbatim at commit
ab55b8daa204e95c42c0267ee5aa49ec3b3a7317 (the file's last change: 43f25261d28b); the
repository's LICENSE is MIT (Copyright InfluxData Inc. and Amazon.com, Inc. or its affiliates).
It is the schema the agent checks a config against (``config-translator``) before it runs it.
"""

from __future__ import annotations

import copy
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from cmc_relay.userdata.metrics import Monitoring
from cmc_relay.userdata.render import (
    CLOUDWATCH_AGENT_CONFIG_PATH,
    MAIL_LOG,
    cloudwatch_agent_config,
    render_bundle,
)
from cmc_relay.userdata.settings import OS_NAMES, RelaySettings

SCHEMA = json.loads(
    (Path(__file__).parent / "data" / "amazon-cloudwatch-agent.schema.json").read_text()
)
MONITORING = Monitoring(namespace="CMCRelay", relay="mail-prod", log_group="/cmc-relay/mail-prod")


def validate(config: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(SCHEMA).validate(config)


def test_the_schema_is_the_agents() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-04/schema#"
    jsonschema.Draft4Validator.check_schema(SCHEMA)
    assert {"agent", "logs", "metrics"} <= set(SCHEMA["properties"])


def test_the_config_passes_the_agents_schema() -> None:
    validate(cloudwatch_agent_config(MONITORING))


def test_the_mail_log_goes_to_the_relays_log_group_one_stream_per_host() -> None:
    files = cloudwatch_agent_config(MONITORING)["logs"]["logs_collected"]["files"]
    assert files["collect_list"] == [
        {
            "file_path": MAIL_LOG,
            "log_group_name": "/cmc-relay/mail-prod",
            "log_stream_name": "{instance_id}",
        },
        {
            "file_path": "/var/log/cloud-init-output.log",
            "log_group_name": "/cmc-relay/mail-prod",
            "log_stream_name": "{instance_id}/cloud-init",
        },
    ]


def test_the_agent_sends_no_metrics_the_publisher_does() -> None:
    config = cloudwatch_agent_config(MONITORING)
    assert set(config) == {"agent", "logs"}
    assert config["agent"] == {"run_as_user": "root"}  # cloud-init's output is root's, 0640


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c["logs"]["logs_collected"]["files"]["collect_list"][0].pop("file_path"),
        lambda c: c["logs"]["logs_collected"]["files"]["collect_list"][0].update(file_paht="x"),
        lambda c: c["logs"]["logs_collected"]["files"].update(collect_list=[]),
        lambda c: c["logs"]["logs_collected"]["files"]["collect_list"][0].update(log_group_name=""),
        lambda c: c["logs"].update(logs_collected={}),
    ],
    ids=["no file_path", "misspelt key", "nothing to collect", "empty group name", "no logs"],
)
def test_the_schema_check_fails_on_a_broken_config(break_it: Any) -> None:
    config = copy.deepcopy(cloudwatch_agent_config(MONITORING))
    break_it(config)
    with pytest.raises(jsonschema.ValidationError):
        validate(config)


@pytest.mark.parametrize("os_name", OS_NAMES)
def test_the_payload_ships_the_config_where_fetch_config_reads_it(os_name: str) -> None:
    settings = RelaySettings(allowed_cidrs=("10.0.0.0/16",), os=os_name)  # type: ignore[arg-type]
    secret_arn = "arn:aws:secretsmanager:ap-northeast-1:123456789012:secret:cmc/api-AbCdEf"
    bundle = render_bundle(settings, secret_arn, monitoring=MONITORING)
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        member = tar.getmember(CLOUDWATCH_AGENT_CONFIG_PATH.lstrip("/"))
        assert member.mode == 0o644 and member.uname == "root"
        shipped = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    assert shipped == cloudwatch_agent_config(MONITORING)
    validate(shipped)
