from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hdsd.replication._policy import policy_met, policy_still_possible

R1 = {"a": ["a1"], "b": ["b1"]}
R2 = {"a": ["a1", "a2"], "b": ["b1", "b2"]}


@pytest.mark.parametrize(("policy", "replicas", "acked", "met"), [
    ("each-site", R1, {"a1"}, False),
    ("each-site", R1, {"a1", "b1"}, True),
    ("each-site", R2, {"a1", "a2"}, False),
    ("each-site", R2, {"a2", "b1"}, True),
    ("majority", R1, {"a1"}, False),
    ("majority", R1, {"a1", "b1"}, True),
    ("majority", R2, {"a1", "a2"}, False),
    ("majority", R2, {"a1", "a2", "b2"}, True),
    ("local", R1, {"b1"}, False),
    ("local", R1, {"a1"}, True),
    ("local", R2, {"a2"}, True),
])
def test_policies(policy: str, replicas: dict[str, list[str]], acked: set[str],
                  met: bool) -> None:
    assert policy_met(policy, replicas, acked, "a") is met


@given(st.sampled_from(["each-site", "majority", "local"]),
       st.sets(st.sampled_from(["a1", "a2", "b1", "b2"])))
def test_more_acks_never_hurt_and_possible_means_reachable(policy: str, acked: set[str]) -> None:
    everyone = {"a1", "a2", "b1", "b2"}
    if policy_met(policy, R2, acked, "a"):
        assert policy_met(policy, R2, everyone, "a")
    # If the policy is still possible with these failures, acks from the rest meet it.
    failed = everyone - acked
    assert policy_still_possible(policy, R2, failed, "a") == policy_met(policy, R2, acked, "a")


def test_each_site_needs_both_sites_under_any_failure_of_one_site() -> None:
    assert not policy_still_possible("each-site", R2, {"b1", "b2"}, "a")
    assert policy_still_possible("local", R2, {"b1", "b2"}, "a")
