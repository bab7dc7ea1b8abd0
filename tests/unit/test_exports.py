import importlib

import pytest

MODULES = ["ember", "ember.exceptions", "ember.scheduler", "ember.scheduler._owner", "ember.store", "ember.chaos",
           "ember.lineage", "ember.actor", "ember.remote_function", "ember.runtime_context", "ember.util",
           "ember.util.actor_pool", "ember.util.queue", "ember.util.multiprocessing", "ember.dag", "ember.dag.input_node", "ember.dag.output_node",
           "ember.util.scheduling_strategies"]


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_exists(name):
    module = importlib.import_module(name)
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.__all__ names {exported} but it is missing"


def test_ray_core_api_surface():
    import ember

    for name in ["init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "kill", "cancel",
                 "get_actor", "cluster_resources", "available_resources", "ObjectRef", "ActorHandle",
                 "exceptions", "get_runtime_context", "method", "actor", "remote_function", "runtime_context"]:
        assert name in ember.__all__


def test_rays_public_module_names_re_export_the_same_objects():
    import ember
    import ember.actor
    import ember.remote_function
    import ember.runtime_context
    from ember import _actor, _remote_function, _runtime_context

    assert ember.actor.ActorHandle is ember.ActorHandle is _actor.ActorHandle
    assert ember.actor.ActorClass is ember.ActorClass and ember.actor.ActorMethod is _actor.ActorMethod
    assert ember.remote_function.RemoteFunction is _remote_function.RemoteFunction
    assert ember.runtime_context.RuntimeContext is ember.RuntimeContext is _runtime_context.RuntimeContext
    assert ember.runtime_context.get_runtime_context is ember.get_runtime_context


def test_isinstance_and_type_hints_with_rays_module_names():
    import typing

    import ember

    @ember.remote
    def f() -> None: ...

    @ember.remote
    class A:
        def m(self) -> None: ...

    assert isinstance(f, ember.remote_function.RemoteFunction)
    assert isinstance(A, ember.actor.ActorClass)
    assert isinstance(ember.get_runtime_context(), ember.runtime_context.RuntimeContext)

    def use(handle: "ember.actor.ActorHandle", fn: ember.remote_function.RemoteFunction) -> None: ...

    hints = typing.get_type_hints(use, localns={"ember": ember})
    assert hints["handle"] is ember.actor.ActorHandle and hints["fn"] is ember.remote_function.RemoteFunction


def test_the_lineage_packages_lazy_names_are_its_exports():
    import ember.lineage as lineage

    assert set(lineage._HOME) == set(lineage.__all__)
    assert not set(lineage._INTERNAL) & set(lineage.__all__)  # ember's own imports, not the user's API
    for name in lineage._INTERNAL:
        assert getattr(lineage, name) is not None
