"""Fixtures over :mod:`tests.support.nodes`: node factories, the `ian` CLI, fault proxies."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.nodes import FaultProxy, NodeFactory, run_ian


@pytest.fixture
def ian_nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def ian_module_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFactory]:
    """One factory for a whole module (share a network between read-mostly tests)."""
    factory = NodeFactory(tmp_path_factory.mktemp("nodes"))
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def ian() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_ian


@pytest.fixture
def fault_proxy() -> Iterator[Callable[..., FaultProxy]]:
    """``fault_proxy(target=None)`` makes proxies that are closed at teardown."""
    made: list[FaultProxy] = []

    def make(target: tuple[str, int] | None = None) -> FaultProxy:
        proxy = FaultProxy(target)
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            proxy.close()
