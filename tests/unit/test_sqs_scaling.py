"""esm.sources.sqs.scaling: Lambda's SQS scaling numbers and provisioned_poller_config."""

from __future__ import annotations

import pytest

from esm.sources.sqs.scaling import (
    ProvisionedPollers,
    parse_provisioned_poller_config,
    scaling_plan,
)

PATH = "mappings[0].provisioned_poller_config"


def test_standard_mode_starts_with_five_and_adds_300_a_minute_up_to_1250() -> None:
    plan = scaling_plan(None, None, None)
    assert (plan.mode, plan.initial, plan.ceiling) == ("standard", 5, 1250)
    assert plan.scale_up_interval == pytest.approx(60 / 300)


def test_maximum_concurrency_and_reserved_concurrency_cap_the_receivers() -> None:
    assert scaling_plan(50, None, None).ceiling == 50
    assert scaling_plan(50, 20, None).ceiling == 20
    assert scaling_plan(None, 40, None).ceiling == 40
    two = scaling_plan(2, None, None)
    assert (two.initial, two.ceiling) == (2, 2)  # never more at start than allowed at all


def test_provisioned_mode_keeps_its_minimum_and_scales_three_times_as_fast() -> None:
    plan = scaling_plan(None, None, ProvisionedPollers(10, 300))
    assert (plan.mode, plan.initial, plan.ceiling) == ("provisioned", 10, 300)
    assert plan.scale_up_interval == pytest.approx(60 / 900)
    assert scaling_plan(None, 8, ProvisionedPollers(10, 300)).ceiling == 8


def test_absent_table_is_standard_mode_and_empty_table_takes_aws_defaults() -> None:
    assert parse_provisioned_poller_config(None, PATH) == (None, [])
    assert parse_provisioned_poller_config({}, PATH) == (ProvisionedPollers(2, 200), [])
    assert parse_provisioned_poller_config({"minimum_pollers": 5, "maximum_pollers": 9}, PATH) == (
        ProvisionedPollers(5, 9),
        [],
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"minimum_pollers": 1}, f"{PATH}.minimum_pollers: must be from 2 to 200 for SQS, not 1"),
        ({"maximum_pollers": 2001}, f"{PATH}.maximum_pollers: must be from 2 to 2000 for SQS"),
        ({"minimum_pollers": "3"}, f"{PATH}.minimum_pollers: must be an integer from 2 to 200"),
        ({"maximum_pollers": True}, f"{PATH}.maximum_pollers: must be an integer from 2 to 2000"),
        ({"minimum_pollers": 50, "maximum_pollers": 10}, "minimum_pollers (50) must not exceed"),
        ({"minimum_pollers": 201}, "must be from 2 to 200"),
        ({"pollers": 3}, f"{PATH}.pollers: unknown key"),
        ([], f"{PATH}: must be a table"),
    ],
)
def test_bad_values_name_the_key_and_the_range(raw: object, message: str) -> None:
    config, problems = parse_provisioned_poller_config(raw, PATH)
    assert config is None
    assert any(message in problem for problem in problems), problems


def test_provisioned_mode_and_maximum_concurrency_are_mutually_exclusive() -> None:
    config, problems = parse_provisioned_poller_config({}, PATH, maximum_concurrency=10)
    assert config is None
    assert problems == [
        f"{PATH}: cannot be used with scaling_config.maximum_concurrency "
        "(AWS makes them mutually exclusive: provisioned mode bounds the pollers instead)"
    ]
