import pytest

import ember
from ember.exceptions import InvalidOptionError


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(InvalidOptionError, match="num_cpus"):
        ember.remote(num_cpu=1)(lambda: None)


@pytest.mark.parametrize("options", [{"num_cpus": -1}, {"num_cpus": "2"}, {"num_returns": 1.5},
                                     {"max_retries": -2}, {"resources": {"CPU": 1}},
                                     {"retry_exceptions": [int]}, {"resources": ["GPU"]}])
def test_ill_typed_options(options):
    with pytest.raises(InvalidOptionError):
        ember.remote(**options)(lambda: None)


def test_old_num_return_vals_spelling_is_accepted():
    f = ember.remote(num_return_vals=3)(lambda: (1, 2, 3))
    assert f._num_returns == 3


def test_remote_function_cannot_be_called_directly():
    @ember.remote
    def f():
        return 1

    with pytest.raises(ember.exceptions.EmberUserError, match=r"f\.remote"):
        f()


def test_actor_class_cannot_be_instantiated_directly():
    @ember.remote
    class A:
        pass

    with pytest.raises(ember.exceptions.EmberUserError, match=r"A\.remote"):
        A()


def test_api_that_does_not_start_a_cluster_needs_init():
    # A remote call, put, get, wait or get_actor starts one (tests/integration/test_first_contact.py);
    # these only read a cluster's state.
    assert not ember.is_initialized()
    with pytest.raises(ember.exceptions.NotInitializedError, match="ember.init"):
        ember.cluster_resources()
    with pytest.raises(ember.exceptions.NotInitializedError, match="ember.init"):
        ember.get_runtime_context().get_node_id()
    assert not ember.is_initialized()


def test_options_ember_cannot_honour_are_refused_not_ignored():
    from ember._options import validate
    import pytest
    from ember.exceptions import InvalidOptionError

    assert validate({"scheduling_strategy": "DEFAULT"}, "task")["scheduling_strategy"] == "DEFAULT"
    with pytest.raises(InvalidOptionError, match="scheduling_strategy='PACK' is not supported: ember supports.*SPREAD"):
        validate({"scheduling_strategy": "PACK"}, "task")


def test_scheduling_strategies_become_the_specs_plain_tuples_and_the_rest_is_refused_by_name():
    import pytest
    from ember._options import strategy_of, validate
    from ember.exceptions import InvalidOptionError
    from ember.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    assert strategy_of(None) is None and strategy_of("DEFAULT") is None
    assert strategy_of("SPREAD") == ("SPREAD",)
    assert strategy_of(NodeAffinitySchedulingStrategy("ab12", soft=True)) == ("NODE_AFFINITY", "ab12", True)
    assert validate({"scheduling_strategy": "SPREAD"}, "actor")["scheduling_strategy"] == "SPREAD"

    class NodeLabelSchedulingStrategy:  # a Ray strategy ember does not have
        pass

    with pytest.raises(InvalidOptionError, match="a .*NodeLabelSchedulingStrategy is not supported"):
        validate({"scheduling_strategy": NodeLabelSchedulingStrategy()}, "task")
    with pytest.raises(InvalidOptionError, match="node_id must be a node id"):
        NodeAffinitySchedulingStrategy(1234, soft=False)  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="soft must be a bool"):
        NodeAffinitySchedulingStrategy("ab12", soft="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidOptionError, match="_fail_on_unavailable .* is not supported"):
        NodeAffinitySchedulingStrategy("ab12", soft=False, _fail_on_unavailable=True)
def test_namespaces_are_checked_and_a_jobs_anonymous_one_is_its_own():
    import pytest

    from ember._options import NAMESPACE, anonymous_namespace, qualified_name, split_name, validate
    from ember.exceptions import InvalidOptionError

    assert validate({"namespace": "team-a"}, "actor")["namespace"] == "team-a"
    for bad in ("", 3, "a\x1fb"):
        with pytest.raises(InvalidOptionError, match="namespace must be a non-empty string"):
            validate({"namespace": bad}, "actor")
        with pytest.raises(InvalidOptionError, match="ember.init namespace must be a non-empty string"):
            ember.init(namespace=bad)  # refused before anything starts
    assert qualified_name(None, "x") == qualified_name(NAMESPACE, "x") == "x"
    assert split_name(qualified_name("team-a", "x/y")) == ("team-a", "x/y")
    assert split_name("x") == (NAMESPACE, "x")
    assert anonymous_namespace(b"\x01\x02") != anonymous_namespace(b"\x01\x03")
    assert not ember.is_initialized()


def test_concurrency_options_are_checked_by_name():
    from ember._options import validate
    import pytest
    from ember.exceptions import InvalidOptionError

    assert validate({"max_concurrency": 4, "concurrency_groups": {"io": 2}}, "actor")["max_concurrency"] == 4
    assert validate({"concurrency_group": "io"}, "method") == {"concurrency_group": "io"}
    for wrong, message in (({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
                           ({"max_concurrency": 2.5}, "max_concurrency must be an integer"),
                           ({"concurrency_groups": ["io"]}, "concurrency_groups must be a dict"),
                           ({"concurrency_groups": {"io": 0}}, r"concurrency_groups\['io'\] must be an integer >= 1"),
                           ({"concurrency_groups": {"": 1}}, "non-empty string"),
                           ({"concurrency_groups": {"_ember_default": 1}}, "not starting with '_ember'")):
        with pytest.raises(InvalidOptionError, match=message):
            validate(wrong, "actor")
    with pytest.raises(InvalidOptionError, match="concurrency_group must be the name"):
        validate({"concurrency_group": 3}, "method")


def test_a_concurrent_actors_description_travels_and_picks_each_calls_group():
    from ember.scheduler import Concurrency
    from ember.scheduler._actor_concurrency import DEFAULT_GROUP, concurrency_in_meta

    concurrency = Concurrency(False, 3, {"io": 2}, {"fetch": "io"})
    again = Concurrency.from_wire(concurrency.to_wire())
    assert again.sizes() == {DEFAULT_GROUP: 3, "io": 2}
    assert again.group_of("fetch", None) == "io"
    assert again.group_of("compute", None) == DEFAULT_GROUP
    assert again.group_of("compute", "io") == "io"  # .options(concurrency_group="io") on the call
    assert again.group_of("fetch", "unknown") == "io"  # a group the actor lacks: never a new pool
    assert again.describe() == "threaded 3, io=2"
    assert concurrency_in_meta(("A", {}, 0, concurrency.to_wire())) == concurrency.to_wire()
    assert concurrency_in_meta(("A", {}, 0)) is None
