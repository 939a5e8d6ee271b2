"""Pure helpers of jobs/run/nodes.py: what fits where, and how a waiting actor is explained."""

from turbobatch.jobs.run.nodes import describe, pending_reason, room, slots


def test_slots_take_the_scarcest_resource_and_allow_fractions():
    assert slots({"CPU": 8, "GPU": 1}, {"CPU": 1, "GPU": 1}) == 1
    assert slots({"CPU": 8, "GPU": 1}, {"CPU": 1, "GPU": 0.5}) == 2
    assert slots({"CPU": 1, "GPU": 1}, {"CPU": 0.3, "GPU": 0.1}) == 3
    assert slots({"CPU": 1}, {"CPU": 1, "GPU": 1}) == 0  # a CPU node holds no GPU actor
    assert slots({"CPU": 3}, {"CPU": 1}) == 3


def test_room_adds_up_per_node_not_per_resource():
    two_half_nodes = [{"CPU": 1, "GPU": 0.5}, {"CPU": 1, "GPU": 0.5}]
    assert room(two_half_nodes, {"CPU": 1, "GPU": 1}) == 0  # one GPU in all, never on one node
    assert room([{"CPU": 2}, {"CPU": 1}], {"CPU": 1}) == 3
    assert room([], {"CPU": 1}) == 0


def test_describe_shows_whole_numbers_without_a_decimal():
    assert describe({"GPU": 1.0, "CPU": 0.5}) == "{'CPU': 0.5, 'GPU': 1}"


def test_pending_reason_tells_too_big_from_busy():
    nodes = [{"CPU": 1.0, "memory": 1e9}, {"CPU": 1.0}]
    assert pending_reason({"CPU": 1}, nodes) == "the cluster has no node with {'CPU': 1} free"
    assert pending_reason({"CPU": 4}, nodes).startswith(
        "no node of the cluster has {'CPU': 4} (its nodes have {'CPU': 1}); add such a node or lower"
    )
    assert "(it has no node)" in pending_reason({"GPU": 1}, [])
