import importlib

import pytest

MODULES = ["ember", "ember.exceptions", "ember.scheduler", "ember.store", "ember.chaos", "ember.lineage"]


@pytest.mark.parametrize("name", MODULES)
def test_every_exported_name_exists(name):
    module = importlib.import_module(name)
    for exported in module.__all__:
        assert hasattr(module, exported), f"{name}.__all__ names {exported} but it is missing"


def test_ray_core_api_surface():
    import ember

    for name in ["init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "kill", "cancel",
                 "get_actor", "cluster_resources", "available_resources", "ObjectRef", "ActorHandle",
                 "exceptions", "get_runtime_context", "method"]:
        assert name in ember.__all__


def test_the_lineage_packages_lazy_names_are_its_exports():
    import ember.lineage as lineage

    assert set(lineage._HOME) == set(lineage.__all__)
